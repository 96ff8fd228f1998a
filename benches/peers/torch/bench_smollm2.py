#!/usr/bin/env python3
"""CPU speed anchors for SmolLM2-135M (float32, transformers) with 2 torch threads.
Usage: $PYTHON bench_smollm2.py [HF_DIR] [OUT_JSON] [THREADS=2] [ATTN=sdpa]
  HF_DIR default: $SMOLLM2_HF_DIR (an HF directory of the model: `temper convert` or
  crates/llm-arch/tests/fixtures/smollm2/convert.py writes one); OUT_JSON default: ./bench_torch.json
Note: on a loaded 2-core box, 2 OpenMP threads suffer badly from oversubscription (each parallel
region waits for a descheduled thread); record os.getloadavg() next to the numbers."""
import json, os, resource, sys, time
import torch, transformers
from transformers import AutoModelForCausalLM

HF = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("SMOLLM2_HF_DIR", "")
if not HF or not os.path.isdir(HF):
    sys.exit("usage: bench_smollm2.py HF_DIR [OUT_JSON] [THREADS] [ATTN]  (or set SMOLLM2_HF_DIR); HF_DIR not found: %r" % HF)
OUT = sys.argv[2] if len(sys.argv) > 2 else "bench_torch.json"
THREADS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
ATTN = sys.argv[4] if len(sys.argv) > 4 else "sdpa"
torch.set_num_threads(THREADS)

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
def load():
    return os.getloadavg()

res = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
       "loadavg_start": load()}
rss0 = rss_mb()
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32, attn_implementation=ATTN).eval()
res["load_s"] = time.perf_counter() - t0
res["attn_implementation"] = model.config._attn_implementation
res["peak_rss_mb_after_load"] = rss_mb()

g = torch.Generator().manual_seed(0)
x = torch.randint(3, 49152, (1, 512), generator=g)
fw_wall, fw_cpu = [], []
with torch.inference_mode():
    model(x[:, :64], use_cache=False)                        # warm-up
    for _ in range(5):
        c0, w0 = cpu_s(), time.perf_counter()
        model(x, use_cache=False)
        fw_wall.append(time.perf_counter() - w0); fw_cpu.append(cpu_s() - c0)
res["forward_1x512"] = {"wall_s": fw_wall, "median_wall_s": sorted(fw_wall)[2],
                        "tokens_per_s_median": 512 / sorted(fw_wall)[2], "tokens_per_s_best": 512 / min(fw_wall),
                        "cpu_s_median": sorted(fw_cpu)[2]}
res["peak_rss_mb_after_forward"] = rss_mb()

prompt = torch.tensor([[504, 3299, 2590, 282, 20536, 9918]])  # "The mechanical properties of spider silk"
gen_wall, dec_wall, gen_cpu = [], [], []
with torch.inference_mode():
    model.generate(prompt, do_sample=False, max_new_tokens=8, attention_mask=torch.ones_like(prompt), pad_token_id=2)
    for _ in range(3):
        c0, w0 = cpu_s(), time.perf_counter()
        out = model.generate(prompt, do_sample=False, max_new_tokens=128, min_new_tokens=128, use_cache=True,
                             attention_mask=torch.ones_like(prompt), pad_token_id=2)
        gen_wall.append(time.perf_counter() - w0); gen_cpu.append(cpu_s() - c0)
        assert out.shape[1] == prompt.shape[1] + 128
    # manual decode loop (no generate() overhead): prefill then 128 single-token steps
    for _ in range(3):
        o = model(prompt, use_cache=True); past = o.past_key_values; nxt = o.logits[:, -1:].argmax(-1)
        w0 = time.perf_counter()
        for _ in range(128):
            o = model(nxt, past_key_values=past, use_cache=True); past = o.past_key_values
            nxt = o.logits[:, -1:].argmax(-1)
        dec_wall.append(time.perf_counter() - w0)
med = sorted(gen_wall)[1]
res["generate_greedy_128"] = {"prompt_tokens": 6, "wall_s": gen_wall, "tokens_per_s_median": 128 / med,
                              "tokens_per_s_best": 128 / min(gen_wall), "cpu_s_median": sorted(gen_cpu)[1]}
res["manual_decode_128"] = {"wall_s": dec_wall, "tokens_per_s_median": 128 / sorted(dec_wall)[1],
                            "tokens_per_s_best": 128 / min(dec_wall)}
res["peak_rss_mb"] = rss_mb()
res["loadavg_end"] = load()
print(json.dumps(res, indent=1))
json.dump(res, open(OUT, "w"), indent=1)
