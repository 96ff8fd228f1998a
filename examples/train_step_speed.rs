//! Speed of one training step on SmolLM2-135M dimensions (f32, CPU) — the Temper side of
//! `benches/peers/torch/train_step.py` (torch + PEFT), printed as one JSON line per mode.
//!
//! Workload (same as the anchor): a randomly initialised Llama with SmolLM2-135M dimensions
//! (hidden 576, 30 layers, 9 / 3 heads, head_dim 64, intermediate 1536, vocab 49152, tied
//! embeddings, RoPE θ 1e5; 134,515,008 params), batch 4 × 256 random token ids, labels =
//! input ids (every token a target), f32, AdamW (lr 1e-4, betas 0.9 / 0.999, ε 1e-8, weight
//! decay 0) on the trainable parameters only. Median of 5 timed steps after 2 warm-ups.
//!
//! Modes (run each in its own process so the peak RSS is per mode):
//! * `lora` — LoRA r 16, α 32, dropout 0 on all seven projections
//!   (`LoraConfig::new(16, 32.0)`), base frozen: 4,884,480 trainable params;
//! * `full` — every parameter trained;
//! * `forward` — forward + loss only, no autodiff.
//!
//! Step = `forward_hidden` → `chunked_token_logps` (vocabulary tiles, no `[b, s, vocab]`
//! logits; the tied LM head's gradient is computed only in `full`) → token-mean NLL →
//! backward → AdamW step.
//!
//! Weights are random (`RandomSource`: uniform, std 0.02), made tensor by tensor through the
//! checkpoint loader. `--quant nf4|q8_0` (lora only): QLoRA, each projection encoded as it is
//! made (`QuantizingSource`, as `temper train` with `quantize_base` loads a checkpoint), the
//! anchor's `--quant nf4`; no dense copy of the model ever exists, so an 8B shape fits.
//! `--shape smollm2-135m|smollm-1.7b|llama-3.1-8b` and `--layers N` pick the anchor's
//! dimensions, `--gradient-checkpointing` recomputes activations in the backward. The report
//! holds the memory estimate `temper train` prints (`estimate_mib`) beside the measured peak.
//!
//! `--precision f32|bf16-mixed|f16-mixed|bf16|f16` (or `TEMPER_PRECISION`): the trainer's
//! policy (`TrainPrecision`) — the mixed modes keep f32 master weights (a LoRA base stored in
//! the half type, f32 adapters) and run the step under `autocast`; pure `bf16` stores every
//! weight in bf16. The anchor's `--precision bf16-autocast|bf16` are torch's counterparts.
//!
//! Like `temper train`, it first sets [`retain_freed_memory`](temper_llm::backend::alloc) (glibc
//! keeps freed buffers for the next step); `TEMPER_RETAIN_FREED_MEMORY=0` measures without it.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release --example train_step_speed -- lora
//! RAYON_NUM_THREADS=2 cargo run --release --example train_step_speed -- full [WARMUP TIMED]
//! RAYON_NUM_THREADS=2 cargo run --release --example train_step_speed -- lora --precision bf16-mixed
//! ```

use std::time::Instant;

#[path = "common/shapes.rs"]
mod shapes;

use shapes::shape_config;
use temper_llm::backend::{DeviceSpec, TrainPrecision, autocast};
use temper_llm::burn::module::Module;
use temper_llm::burn::optim::{
    AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer,
};
use temper_llm::burn::tensor::{Int, Tensor, TensorData};
use temper_llm::llm_arch::checkpoint::load_weights;
use temper_llm::llm_arch::{CheckpointTape, ForwardOptions, QuantizingSource, RandomSource};
use temper_llm::lora::{LoraConfig, num_trainable_params};
use temper_llm::objectives::{ChunkConfig, chunked_token_logps, lm_head_weight, token_mean_nll};
use temper_llm::train::{FusedAdamWConfig, MemoryEstimate, MemoryPlan, ProjectionBytes};

/// The anchor's shape; `TEMPER_BATCH` / `TEMPER_SEQ` override it (larger shapes on a GPU).
const BATCH: usize = 4;
const SEQ: usize = 256;

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    std::env::var(name).map_or(Ok(default), |v| Ok(v.parse()?))
}
const LR: f64 = 1e-4;

/// A field of `/proc/self/status` in KiB, as MiB.
fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Process CPU time (user + sys, all threads) in seconds, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15 (1-based).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // `rest` starts at field 3, so field k is f[k - 3]. USER_HZ is 100 on Linux.
    (ticks(14 - 3) + ticks(15 - 3)) / 100.0
}

fn loadavg1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Removes `--name VALUE` from `args`, returning the value.
fn take_flag(args: &mut Vec<String>, name: &str) -> anyhow::Result<Option<String>> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    anyhow::ensure!(i + 1 < args.len(), "{name} needs a value");
    let value = args.remove(i + 1);
    args.remove(i);
    Ok(Some(value))
}

/// Deterministic pseudo-random token ids in `[0, vocab)` (splitmix64).
fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<i64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % vocab as u64) as i64
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    // What `temper train` does: freed activation buffers are reused, not re-faulted each step.
    let alloc_policy = temper_llm::backend::alloc::retain_freed_memory();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut precision: TrainPrecision = std::env::var("TEMPER_PRECISION")
        .unwrap_or_else(|_| "f32".into())
        .parse()?;
    if let Some(p) = take_flag(&mut args, "--precision")? {
        precision = p.parse()?;
    }
    let quant = take_flag(&mut args, "--quant")?
        .map(|q| q.parse::<temper_llm::lora::QuantType>())
        .transpose()?;
    let shape = take_flag(&mut args, "--shape")?.unwrap_or_else(|| "smollm2-135m".into());
    let layers = take_flag(&mut args, "--layers")?
        .map(|n| n.parse::<usize>())
        .transpose()?;
    let checkpointing = match args.iter().position(|a| a == "--gradient-checkpointing") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let mode = args.first().map_or("lora", String::as_str).to_string();
    let warmup: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let timed: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
    anyhow::ensure!(
        matches!(mode.as_str(), "lora" | "full" | "forward"),
        "mode must be lora, full or forward, got {mode:?}"
    );
    anyhow::ensure!(timed > 0, "need at least one timed step");
    let load1_start = loadavg1();

    let train = mode != "forward";
    // `TEMPER_DEVICE=wgpu` (with `--features wgpu`) runs the same step on a GPU.
    let spec: DeviceSpec = std::env::var("TEMPER_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()?;
    let device = spec.with_autodiff(train).device()?;
    anyhow::ensure!(
        quant.is_none() || mode == "lora",
        "--quant applies to the lora mode only (a quantized base is frozen)"
    );
    let config = shape_config(&shape, layers)?;
    let t_init = Instant::now();
    // Storage as `temper train` loads it: a LoRA base (and a forward-only model) in the compute
    // dtype, trained weights in the master dtype.
    let storage = if mode == "full" {
        precision.master()
    } else {
        precision.frozen()
    };
    // Random weights generated tensor by tensor through the checkpoint loader; with `--quant`
    // each projection is encoded as it is made (QLoRA's load_in_4bit), so an 8B shape never
    // exists densely.
    let random = RandomSource::new(&config, 0);
    let mut model = match quant {
        Some(ty) => load_weights(
            &config,
            &mut QuantizingSource::new(random, ty).rounding_to(storage),
            &device,
            storage,
        )?,
        None => load_weights(&config, &mut { random }, &device, storage)?,
    };
    // Gradient checkpointing as the trainer does it: layer-wise, each layer's input kept.
    let tape = (checkpointing && train).then(CheckpointTape::new);
    model = model.with_layer_checkpointing(tape.clone());
    if mode == "lora" {
        let adapters = precision
            .is_mixed()
            .then_some(temper_llm::burn::tensor::DType::F32);
        model = temper_llm::lora::inject_with_dtype(
            model,
            &LoraConfig::new(16, 32.0),
            &device,
            adapters,
        )?;
    } else if mode == "forward" {
        model = model.no_grad();
    }
    let init_s = t_init.elapsed().as_secs_f64();
    // The base model's parameters, as the anchor counts them (before PEFT).
    let params_total = config.num_parameters();
    let params_trainable = num_trainable_params(&model);

    let (batch, seq) = (
        env_usize("TEMPER_BATCH", BATCH)?,
        env_usize("TEMPER_SEQ", SEQ)?,
    );
    // What `temper train` would print before this run.
    let rank16 = |_: &str| Some(16usize);
    let estimate = MemoryEstimate::new(&MemoryPlan {
        config: &config,
        precision,
        projections: quant.map_or(ProjectionBytes::Dense, ProjectionBytes::Quantized),
        lora_rank: (mode == "lora").then_some(&rank16 as &dyn Fn(&str) -> Option<usize>),
        sequences: batch,
        seq_len: seq,
        gradient_checkpointing: checkpointing,
        reference_model: false,
        save_merged: false,
        load_decodes_whole_file: false,
    });
    eprintln!("memory estimate: {estimate}");
    let ids = random_ids(batch * seq, config.vocab_size, 1);
    let input_ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq]), &device);
    let options = ForwardOptions::default();
    let chunk = ChunkConfig::default();
    // The trainer's optimizer (`FusedAdamW`); `TEMPER_OPTIMIZER=burn` times burn's `AdamW`
    // (same hyper-parameters, same bits) for comparison.
    let burn_adamw = std::env::var("TEMPER_OPTIMIZER").is_ok_and(|v| v == "burn");
    let mut optim: ModuleOptimizer = if burn_adamw {
        AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .with_weight_decay(0.0)
            .init()
    } else {
        FusedAdamWConfig::default().init()
    };

    let (mut times, mut cpu_times, mut losses) = (vec![], vec![], vec![]);
    let mut phases: Vec<[f64; 5]> = vec![];
    let _autocast = autocast(precision.compute());
    for i in 0..warmup + timed {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let hidden = model.forward_hidden(input_ids.clone(), &options, None)?;
        let logps = chunked_token_logps(hidden, lm_head_weight(&model), input_ids.clone(), &chunk)?;
        let loss = token_mean_nll(&logps, None)?;
        let loss_value = loss.clone().into_scalar::<f32>();
        let t_fwd = t0.elapsed().as_secs_f64();
        let c_fwd = cpu_seconds() - c0;
        let (mut t_bwd, mut t_opt, mut c_bwd) = (0.0, 0.0, 0.0);
        if train {
            let (t1, c1) = (Instant::now(), cpu_seconds());
            let mut grads = loss.backward();
            let mut accumulator = GradientsAccumulator::new();
            if let Some(tape) = &tape {
                tape.backward(&model, &mut grads, |mut layer| {
                    accumulator
                        .accumulate(&model, GradientsParams::from_module(&mut layer, &model));
                })?;
            }
            accumulator.accumulate(&model, GradientsParams::from_module(&mut grads, &model));
            let grads = accumulator.grads();
            t_bwd = t1.elapsed().as_secs_f64();
            c_bwd = cpu_seconds() - c1;
            let t2 = Instant::now();
            model = optim.step(LR, model, grads);
            // Force the lazy update so the step's time is all inside the step.
            let _ = lm_head_weight(&model)
                .slice([0..1, 0..1])
                .into_scalar::<f32>();
            t_opt = t2.elapsed().as_secs_f64();
        }
        let dt = t0.elapsed().as_secs_f64();
        let dc = cpu_seconds() - c0;
        eprintln!(
            "{mode} step {i}: {dt:.3} s (forward+loss {t_fwd:.3}, backward {t_bwd:.3}, \
             adamw {t_opt:.3}), cpu {dc:.2} s (forward+loss {c_fwd:.2}, backward {c_bwd:.2}), \
             loss {loss_value:.5}, rss {:.0} MiB",
            status_mib("VmRSS:")
        );
        losses.push(loss_value as f64);
        if i >= warmup {
            times.push(dt);
            cpu_times.push(dc);
            phases.push([t_fwd, t_bwd, t_opt, c_fwd, c_bwd]);
        }
    }
    let med = median(times.clone());
    let phase_median = |k: usize| median(phases.iter().map(|p| p[k]).collect());
    let round = |x: f64, d: i32| (x * 10f64.powi(d)).round() / 10f64.powi(d);
    let report = serde_json::json!({
        "tool": "temper",
        "mode": mode,
        "params_total": params_total,
        "params_trainable": params_trainable,
        "batch": batch,
        "seq": seq,
        "device": spec.to_string(),
        "precision": precision.to_string(),
        "quant": quant.map(|q| q.to_string()),
        "shape": shape,
        "layers": config.num_hidden_layers,
        "gradient_checkpointing": checkpointing,
        "warmup": warmup,
        "timed": timed,
        "init_s": round(init_s, 3),
        "step_times_s": times.iter().map(|t| round(*t, 4)).collect::<Vec<_>>(),
        "median_step_s": round(med, 4),
        "tokens_per_s": round((batch * seq) as f64 / med, 1),
        "median_step_cpu_s": round(median(cpu_times), 4),
        "median_forward_loss_s": round(phase_median(0), 4),
        "median_backward_s": round(phase_median(1), 4),
        "median_adamw_s": round(phase_median(2), 4),
        "median_forward_loss_cpu_s": round(phase_median(3), 3),
        "median_backward_cpu_s": round(phase_median(4), 3),
        "peak_rss_mib": round(status_mib("VmHWM:"), 1),
        "estimate_mib": round(estimate.total() as f64 / f64::from(1u32 << 20), 1),
        "first_loss": round(losses[0], 5),
        "last_loss": round(losses[losses.len() - 1], 5),
        "rayon_threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "alloc_policy": format!("{alloc_policy:?}"),
        "optimizer": if burn_adamw { "burn AdamW" } else { "FusedAdamW" },
        "loadavg_1m_start": load1_start,
        "loadavg_1m_end": loadavg1(),
    });
    println!("{report}");
    Ok(())
}
