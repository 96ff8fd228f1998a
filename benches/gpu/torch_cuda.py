#!/usr/bin/env python3
"""PyTorch eager on a CUDA GPU, the same work Temper's GPU figures time (docs/gpu.md):

  prefill   1 x 512 forward (no cache), SmolLM2-135M-Instruct dimensions
  decode    128 greedy steps with the KV cache after a 6-token prompt (manual loop, no generate())
  train     one training step, batch 4 x 256 (and 16 x 512), causal-LM loss on every token,
            AdamW: `lora` (PEFT r=16, alpha=32, all seven projections) or `full`

in float32 and bfloat16 (bf16 weights; torch's bf16 matmuls accumulate in f32) and, for the
training step, bf16 autocast (f32 master weights, `torch.autocast("cuda", torch.bfloat16)`:
what Temper's `bf16-mixed` and TRL's `bf16=True` do), weights
randomly initialised from the SmolLM2-135M config (speed does not depend on the values).
Timing: CUDA-synchronised wall clock, median of the timed repetitions after warm-up.
MFU: 6·N·T (full) or 4·N·T (LoRA: no weight gradients) plus attention, over the GPU's
dense peak for the dtype (H100 SXM: 989 TFLOP/s bf16, 67 TFLOP/s f32 without TF32).

Usage: python3 torch_cuda.py [--json-out FILE] [--tf32]
"""
import argparse, json, statistics, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

CFG = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
           num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
           rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, hidden_act="silu",
           attention_bias=False, mlp_bias=False, bos_token_id=0, eos_token_id=0)
PEAK = {"float32": 67e12, "bfloat16": 989e12}


def model_for(dtype):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CFG)).to(device="cuda", dtype=dtype)


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def train_flops(n, batch, seq, lora):
    # Matmul FLOPs (embedding lookup excluded, LM head included) + causal attention.
    per_token = (4 if lora else 6) * n
    attn = 2 * 2 * CFG["num_hidden_layers"] * seq * CFG["num_attention_heads"] * CFG["head_dim"] / 2
    return batch * seq * (per_token + 3 * attn)


def bench_inference(dtype_name):
    dtype = getattr(torch, dtype_name)
    model = model_for(dtype).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 49152, (1, 512), generator=g).cuda()
    with torch.inference_mode():
        med, _ = timed(lambda: model(x, use_cache=False), 3, 10)
        prompt = torch.tensor([[504, 3299, 2590, 282, 20536, 9918]], device="cuda")

        def decode():
            out = model(prompt, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(128):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        dmed, _ = timed(decode, 1, 3)
    return {"dtype": dtype_name, "prefill_tokens_per_s": round(512 / med, 1),
            "prefill_ms": round(med * 1e3, 2), "decode_tokens_per_s": round(128 / dmed, 1)}


def bench_train(mode, dtype_name, batch, seq):
    # "bf16-autocast": f32 weights and optimizer, bf16 products under autocast.
    autocast = dtype_name == "bf16-autocast"
    dtype = torch.float32 if autocast else getattr(torch, dtype_name)
    model = model_for(dtype)
    n = n_params(model)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49152, (batch, seq), generator=g).cuda()
    model.train()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.reset_peak_memory_stats()
    med, times = timed(step, 3, 10)
    flops = train_flops(n, batch, seq, mode == "lora")
    return {"mode": mode, "dtype": dtype_name, "batch": batch, "seq": seq,
            "median_step_ms": round(med * 1e3, 2), "tokens_per_s": round(batch * seq / med, 1),
            "mfu": round(flops / med / PEAK["bfloat16" if autocast else dtype_name], 4),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json-out")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores for f32 matmuls")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    res = {"tool": "torch", "torch": torch.__version__, "gpu": torch.cuda.get_device_name(),
           "tf32": args.tf32, "inference": [], "train": []}
    for dt in ["float32", "bfloat16", "bf16-autocast"]:
        if dt != "bf16-autocast":
            res["inference"].append(bench_inference(dt))
            print(json.dumps(res["inference"][-1]), flush=True)
        for mode in ["lora", "full"]:
            for batch, seq in [(4, 256), (16, 512)]:
                res["train"].append(bench_train(mode, dt, batch, seq))
                print(json.dumps(res["train"][-1]), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
