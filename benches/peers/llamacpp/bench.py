"""llama.cpp (through llama-cpp-python) on the SmolLM2 GGUF: the peer of
`examples/smollm2_speed.rs --dtype gguf`, on the same file and thread count.

Prints one JSON line: prompt processing of 512 pseudo-random tokens (tokens/s, median of 5,
the KV cache cleared each time) and greedy decode of 128 new tokens after a short prompt
(tokens/s, median of 3), with the peak RSS.

    python -m venv /work/llamacpp && /work/llamacpp/bin/pip install llama-cpp-python
    /work/llamacpp/bin/python benches/peers/llamacpp/bench.py MODEL.gguf --threads 2
"""

import argparse
import json
import resource
import statistics
import time

import llama_cpp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=1024,
        n_batch=512,
        logits_all=False,
        verbose=False,
    )
    # 512 pseudo-random ids in [3, 49152), the same xorshift as smollm2_speed.rs.
    state, ids = 0x2545F4914F6CDD1D, []
    mask = (1 << 64) - 1
    for _ in range(512):
        state ^= (state << 13) & mask
        state ^= state >> 7
        state ^= (state << 17) & mask
        ids.append(3 + state % (49152 - 3))
    prefill = []
    for _ in range(5):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        prefill.append(time.perf_counter() - t)
    prompt = llm.tokenize(b"The mechanical properties of spider silk")
    decode = []
    for _ in range(3):
        llm.reset()
        llm.eval(prompt)
        t = time.perf_counter()
        n = 0
        for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=False):
            n += 1
            if n == 128:
                break
        decode.append((time.perf_counter() - t) / n)
    print(
        json.dumps(
            {
                "tool": "llama.cpp",
                "llama_cpp_python": llama_cpp.__version__,
                "threads": args.threads,
                "prefill_512_tokens_per_s": 512 / statistics.median(prefill),
                "decode_128_tokens_per_s": 1 / statistics.median(decode),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
