//! `temper train --resume` after a SIGKILL: a run killed mid-training (right after one of its
//! checkpoints lands) and resumed with `--resume` ends with the same `model.safetensors`, byte
//! for byte, and the same `metrics.jsonl` (every step, every value) as an uninterrupted run
//! with the same seed. Tiny random model built here, no downloads.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The tiny base model writer shared with the trainer tests.
#[path = "../../train/tests/common/tiny_base.rs"]
mod tiny_base;

const VOCAB: usize = 32;
const MAX_STEPS: usize = 120;
/// No single `temper train` may take longer than this.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Writes `base/` (tiny HF model + WordLevel tokenizer) and `train.jsonl` under `dir`.
fn write_model_and_data(dir: &Path) {
    tiny_base::write_tiny_base(&dir.join("base"), VOCAB, 64);
    let rows = [
        r#"{"prompt": "the cat", "completion": " sat on the mat"}"#,
        r#"{"prompt": "a dog", "completion": " ran on a mat"}"#,
        r#"{"prompt": "the dog", "completion": " sat on a mat"}"#,
        r#"{"prompt": "a cat", "completion": " ran on the mat"}"#,
        r#"{"prompt": "the mat", "completion": " sat on a dog"}"#,
        r#"{"prompt": "a mat", "completion": " ran on the cat"}"#,
    ];
    std::fs::write(dir.join("train.jsonl"), rows.join("\n")).unwrap();
}

/// A stage file training into `output_dir`, checkpointing every step.
fn write_stage(path: &Path, output_dir: &str) {
    std::fs::write(
        path,
        format!(
            r#"
model = "base"
train_file = "train.jsonl"

[trainer]
learning_rate = 1e-2
max_steps = {MAX_STEPS}
batch_size = 2
seed = 1234
logging_steps = 1
save_steps = 1
lr_scheduler_type = "linear"
warmup_ratio = 0.1
max_length = 16
vocab_tile = 16
output_dir = "{output_dir}"

[trainer.objective]
type = "sft"
"#
        ),
    )
    .unwrap();
}

fn spawn_train(dir: &Path, stage: &str, resume: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_temper"));
    cmd.current_dir(dir)
        .args(["train", "--config", stage, "--quiet"])
        .env("RAYON_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if resume {
        cmd.arg("--resume");
    }
    cmd.spawn().unwrap()
}

/// Waits for `child` to exit (killing it and panicking after `TIMEOUT`); panics on failure.
fn wait_ok(mut child: Child, what: &str) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).unwrap();
            }
            assert!(status.success(), "{what} failed ({status}):\n{err}");
            return;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The newest complete `checkpoint-K` (its `trainer_state.json` present) under `out`.
fn newest_checkpoint(out: &Path) -> Option<usize> {
    std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name();
            let step = name
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse::<usize>()
                .ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then_some(step)
        })
        .max()
}

/// `(step, loss)` of every training row of `metrics.jsonl`.
fn losses(metrics: &str) -> Vec<(u64, f64)> {
    metrics
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?))
        })
        .collect()
}

#[test]
fn sigkilled_run_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_model_and_data(d);
    write_stage(&d.join("stage_a.toml"), "out_a");
    write_stage(&d.join("stage_b.toml"), "out_b");

    // A: uninterrupted.
    let t0 = Instant::now();
    wait_ok(spawn_train(d, "stage_a.toml", false), "uninterrupted run");
    let uninterrupted_secs = t0.elapsed().as_secs_f64();

    // B: SIGKILLed right after checkpoint-K (2 <= K < MAX_STEPS) is complete, then resumed.
    let out_b = d.join("out_b");
    let mut child = spawn_train(d, "stage_b.toml", false);
    let start = Instant::now();
    let killed_after = loop {
        if let Some(k) = newest_checkpoint(&out_b).filter(|&k| k >= 2) {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            break k;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "run B exited ({status}) before a checkpoint-K with K >= 2 was seen; \
                 the uninterrupted run took {uninterrupted_secs:.2}s"
            );
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run B wrote no checkpoint-K with K >= 2 within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // The kill must have landed mid-run: no final model yet, and not at the last step.
    let newest = newest_checkpoint(&out_b).unwrap();
    assert!(
        newest < MAX_STEPS && !out_b.join("model.safetensors").exists(),
        "run B had finished (newest checkpoint-{newest}) before the SIGKILL after \
         checkpoint-{killed_after}; the uninterrupted run took {uninterrupted_secs:.2}s"
    );
    eprintln!(
        "uninterrupted run: {uninterrupted_secs:.2}s; run B SIGKILLed after checkpoint-{killed_after} \
         (newest checkpoint-{newest} of {MAX_STEPS})"
    );
    wait_ok(spawn_train(d, "stage_b.toml", true), "resumed run");

    let out_a = d.join("out_a");
    let weights_a = std::fs::read(out_a.join("model.safetensors")).unwrap();
    let weights_b = std::fs::read(out_b.join("model.safetensors")).unwrap();
    assert!(
        weights_a == weights_b,
        "resumed weights differ from the uninterrupted run's (killed after \
         checkpoint-{killed_after}, newest checkpoint-{newest})"
    );
    let metrics_a = std::fs::read_to_string(out_a.join("metrics.jsonl")).unwrap();
    let metrics_b = std::fs::read_to_string(out_b.join("metrics.jsonl")).unwrap();
    let (la, lb) = (losses(&metrics_a), losses(&metrics_b));
    assert_eq!(
        la.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=MAX_STEPS as u64).collect::<Vec<_>>(),
        "uninterrupted run logged the wrong steps"
    );
    assert_eq!(
        la, lb,
        "loss curves differ (killed after checkpoint-{killed_after})"
    );
    assert_eq!(metrics_a, metrics_b, "metrics.jsonl differ");
}

/// `temper train` prints its memory estimate before training (a `tracing` line on stderr),
/// without a terminal a plain line per logging step instead of the progress bar, and the
/// measured peak after; `--gradient-checkpointing` lowers the estimate's activations.
#[test]
fn train_prints_its_memory_estimate_first_and_its_peak_last() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_model_and_data(d);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_temper"))
            .current_dir(d)
            .args([
                "train",
                "sft",
                "--model",
                "base",
                "--data",
                "train.jsonl",
                "--out",
                "out",
            ])
            .args([
                "--max-steps",
                "2",
                "--batch-size",
                "2",
                "--logging-steps",
                "1",
            ])
            .args(extra)
            .env("RAYON_NUM_THREADS", "1")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        err
    };
    let err = run(&[]);
    let estimate = err
        .find("memory estimate: ")
        .unwrap_or_else(|| panic!("{err}"));
    let done = err
        .find("2 steps of sft")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(estimate < done, "{err}");
    let step1 = err
        .find("step 1/2  loss ")
        .unwrap_or_else(|| panic!("{err}"));
    let step2 = err
        .find("step 2/2  loss ")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(estimate < step1 && step1 < step2 && step2 < done, "{err}");
    assert!(err.contains(" tok/s  eta "), "{err}");
    assert!(err.contains("without checkpointing ["), "{err}");
    assert!(err.contains("peak memory "), "{err}");
    let err = run(&[
        "--gradient-checkpointing",
        "--no-memory-check",
        "--overwrite",
    ]);
    assert!(err.contains("with checkpointing ["), "{err}");
}
