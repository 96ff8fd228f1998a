//! Peak memory and time of per-token log-probs, forward + backward, on SmolLM2-135M shapes:
//! dense (`lm_head` logits `[4, 512, 49152]` then `token_logps`) against chunked
//! (`chunked_token_logps` from the hidden states and the tied LM-head weight).
//!
//! Peak RSS is per process, so each path runs in its own child process:
//!
//! ```sh
//! cargo run --release --example logprob_memory            # both, one child each, prints a table
//! cargo run --release --example logprob_memory -- dense   # one path in this process (JSON line)
//! cargo run --release --example logprob_memory -- chunked [VOCAB_TILE]
//! ```
//!
//! Environment: `LOGPROB_BATCH` (4), `LOGPROB_SEQ` (512), `LOGPROB_REPS` (3),
//! `LOGPROB_FROZEN_HEAD=1` (no gradient for the LM-head weight, as with LoRA on a tied head).
//! Every target counts (no `-100`), the worst case for the chunked path: with prompt tokens
//! masked, as in DPO, it skips those rows entirely.

use std::process::Command;
use std::time::Instant;

use temper_llm::burn::tensor::{Device, Distribution, Int, Tensor};
use temper_llm::objectives::{ChunkConfig, bounded_backward, chunked_token_logps, token_logps};

const HIDDEN: usize = 576;
const VOCAB: usize = 49152;

fn status_mb(key: &str) -> f64 {
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

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One path in this process; prints one JSON line.
fn run_one(mode: &str, vocab_tile: usize) -> anyhow::Result<()> {
    let (b, t, reps) = (
        env_usize("LOGPROB_BATCH", 4),
        env_usize("LOGPROB_SEQ", 512),
        env_usize("LOGPROB_REPS", 3),
    );
    let frozen = env_usize("LOGPROB_FROZEN_HEAD", 0) != 0;
    let device = Device::flex().autodiff();
    anyhow::ensure!(
        bounded_backward(&device),
        "no custom backward on this device"
    );
    // SmolLM2 ties the LM head to the token embedding `[vocab, hidden]`.
    let embed = Tensor::<2>::random([VOCAB, HIDDEN], Distribution::Normal(0.0, 0.02), &device);
    let embed = if frozen { embed } else { embed.require_grad() };
    let labels =
        Tensor::<2, Int>::random([b, t], Distribution::Uniform(0.0, VOCAB as f64), &device);
    let config = ChunkConfig::with_vocab_tile(vocab_tile);
    let baseline = status_mb("VmRSS:");
    let mut times = Vec::new();
    let mut checksum = 0.0f32;
    for _ in 0..reps {
        let hidden = Tensor::<3>::random([b, t, HIDDEN], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let t0 = Instant::now();
        let out = match mode {
            "dense" => {
                let logits = hidden
                    .clone()
                    .reshape([b * t, HIDDEN])
                    .matmul(embed.clone().transpose())
                    .reshape([b, t, VOCAB]);
                token_logps(logits, labels.clone())?
            }
            _ => chunked_token_logps(
                hidden.clone(),
                embed.clone().transpose(),
                labels.clone(),
                &config,
            )?,
        };
        let loss = out.sum().sum();
        checksum = loss.clone().into_scalar::<f32>();
        let grads = loss.backward();
        let gh = hidden.grad(&grads);
        let ge = embed.grad(&grads);
        anyhow::ensure!(gh.is_some() && ge.is_some() != frozen, "missing gradients");
        // Force the gradients (the backend may be lazy on other devices).
        let _ = gh.map(|g| g.sum().into_scalar::<f32>());
        let _ = ge.map(|g| g.sum().into_scalar::<f32>());
        times.push(t0.elapsed().as_secs_f64());
    }
    let peak = status_mb("VmHWM:");
    println!(
        "{{\"mode\":\"{mode}\",\"frozen_head\":{frozen},\"vocab_tile\":{vocab_tile},\"batch\":{b},\"seq\":{t},\"hidden\":{HIDDEN},\"vocab\":{VOCAB},\"reps\":{reps},\"median_s\":{:.3},\"best_s\":{:.3},\"baseline_rss_mb\":{baseline:.0},\"peak_rss_mb\":{peak:.0},\"extra_mb\":{:.0},\"loss\":{checksum}}}",
        median(times.clone()),
        times.iter().copied().fold(f64::INFINITY, f64::min),
        peak - baseline,
    );
    Ok(())
}

fn field(json: &str, key: &str) -> f64 {
    json.split(&format!("\"{key}\":"))
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tile = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4096);
    match args.first().map(String::as_str) {
        Some(mode @ ("dense" | "chunked")) => return run_one(mode, tile),
        Some(other) => anyhow::bail!("unknown mode {other:?} (dense | chunked [VOCAB_TILE])"),
        None => {}
    }
    let exe = std::env::current_exe()?;
    let mut lines = Vec::new();
    for mode in ["dense", "chunked"] {
        let out = Command::new(&exe)
            .arg(mode)
            .arg(tile.to_string())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{mode} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("{line}");
        lines.push(line);
    }
    let (d, c) = (&lines[0], &lines[1]);
    println!(
        "chunked / dense: peak RSS {:.2}x, extra memory {:.2}x, median time {:.2}x",
        field(c, "peak_rss_mb") / field(d, "peak_rss_mb"),
        field(c, "extra_mb") / field(d, "extra_mb"),
        field(c, "median_s") / field(d, "median_s"),
    );
    Ok(())
}
