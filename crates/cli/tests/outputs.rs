//! What commands leave on disk (issue 23, class 4): temporary outputs of interrupted
//! processes are removed by the next run writing beside them (a live process's are kept), a
//! model is never overwritten without `--overwrite`, and side outputs are checked before the
//! model is committed — a failed run leaves nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::smollm2_gguf;
use std::path::{Path, PathBuf};
use std::process::Command;

// The tiny base model writer shared with the trainer tests.
#[path = "../../train/tests/common/tiny_base.rs"]
mod tiny_base;

/// Above Linux's largest pid (2^22): the name of a process that cannot be running.
const DEAD_PID: u32 = 999_999_999;

fn temper(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_temper"))
        .current_dir(dir)
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Names in `dir` carrying the temporary marker.
fn temporaries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("temper-tmp") || n.contains(".tmp-"))
        .collect();
    names.sort();
    names
}

/// A merge config over the mergekit fixtures, written into `dir` with absolute model paths.
fn merge_config(dir: &Path) -> PathBuf {
    let fixtures = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../merge/tests/fixtures/mergekit"
    ));
    let config = dir.join("slerp.yml");
    let text = std::fs::read_to_string(fixtures.join("slerp_gradient_bf16/config.yml"))
        .unwrap()
        .replace("models/", &format!("{}/models/", fixtures.display()));
    std::fs::write(&config, text).unwrap();
    config
}

/// A `kill -9` during a merge leaves its staging directory; the next merge into the same
/// folder removes it (and a dead writer's temporary file), logging each, and keeps the
/// temporary output of a live process (this test's own pid).
#[cfg(target_os = "linux")]
#[test]
fn the_next_run_removes_what_dead_processes_left() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    merge_config(d);
    let dead_dir = d.join(format!(".merged.temper-tmp-{DEAD_PID}-0"));
    std::fs::create_dir(&dead_dir).unwrap();
    std::fs::write(
        dead_dir.join("model-00001-of-00002.safetensors"),
        [0u8; 4096],
    )
    .unwrap();
    let dead_file = format!(".report.json.temper-tmp-{DEAD_PID}-3");
    std::fs::write(d.join(&dead_file), b"{").unwrap();
    let live = format!(".merged.temper-tmp-{}-0", std::process::id());
    std::fs::create_dir(d.join(&live)).unwrap();

    let (ok, err) = temper(
        d,
        &[
            "merge",
            "slerp.yml",
            "merged",
            "--report",
            "report.json",
            "--quiet",
        ],
    );
    assert!(ok, "{err}");
    assert!(d.join("merged/model.safetensors").is_file());
    assert!(d.join("report.json").is_file());
    assert_eq!(temporaries(d), std::slice::from_ref(&live));
    assert!(
        err.contains(&format!(".merged.temper-tmp-{DEAD_PID}-0"))
            && err.contains(&dead_file)
            && err.contains("interrupted"),
        "the removals are logged: {err}"
    );
    assert!(!err.contains(&live), "{err}");
}

/// `merge --report` into a missing folder (or onto a directory) fails before the merge: no
/// model, no temporary directory.
#[test]
fn a_report_that_cannot_be_written_fails_before_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    merge_config(d);
    let (ok, err) = temper(
        d,
        &[
            "merge",
            "slerp.yml",
            "merged",
            "--report",
            "no/such/report.json",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("no/such/report.json") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!d.join("merged").exists());
    assert!(temporaries(d).is_empty(), "{:?}", temporaries(d));

    std::fs::create_dir(d.join("taken")).unwrap();
    let (ok, err) = temper(d, &["merge", "slerp.yml", "merged", "--report", "taken"]);
    assert!(!ok && err.contains("is a directory"), "{err}");
    assert!(!d.join("merged").exists());

    // Inside the output directory it would be replaced with it.
    std::fs::create_dir(d.join("merged")).unwrap();
    std::fs::write(d.join("merged/old"), b"x").unwrap();
    let (ok, err) = temper(
        d,
        &[
            "merge",
            "slerp.yml",
            "merged",
            "--overwrite",
            "--report",
            "merged/r.json",
        ],
    );
    assert!(!ok && err.contains("inside the output directory"), "{err}");
    assert!(
        d.join("merged/old").is_file(),
        "the old output is untouched"
    );
    assert!(temporaries(d).is_empty(), "{:?}", temporaries(d));
}

/// `convert` refuses an existing model folder before loading anything, replaces it with
/// `--overwrite`, and writes the folder as a whole (no temporary name left).
#[test]
fn convert_refuses_to_overwrite_without_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let gguf = smollm2_gguf();
    let gguf = gguf.to_str().unwrap();
    std::fs::create_dir(d.join("out")).unwrap();
    std::fs::write(d.join("out/config.json"), b"{\"mine\": true}").unwrap();
    let (ok, err) = temper(d, &["convert", gguf, "out", "--dtype", "bf16"]);
    assert!(!ok);
    assert!(err.contains("out") && err.contains("--overwrite"), "{err}");
    assert_eq!(
        std::fs::read(d.join("out/config.json")).unwrap(),
        b"{\"mine\": true}"
    );

    let (ok, err) = temper(
        d,
        &["convert", gguf, "out", "--dtype", "bf16", "--overwrite"],
    );
    assert!(ok, "{err}");
    let config = std::fs::read_to_string(d.join("out/config.json")).unwrap();
    assert!(config.contains("\"bfloat16\""), "{config}");
    assert!(d.join("out/model.safetensors").is_file());
    assert!(temporaries(d).is_empty(), "{:?}", temporaries(d));
    assert!(temporaries(&d.join("out")).is_empty());

    // An empty folder (made by the user beforehand) is fine without the flag.
    std::fs::create_dir(d.join("empty")).unwrap();
    let (ok, err) = temper(d, &["convert", gguf, "empty", "--dtype", "bf16"]);
    assert!(ok, "{err}");
    assert!(d.join("empty/model.safetensors").is_file());
}

fn write_model_and_data(dir: &Path) {
    tiny_base::write_tiny_base(&dir.join("base"), 32, 64);
    let rows = [
        r#"{"prompt": "the cat", "completion": " sat on the mat"}"#,
        r#"{"prompt": "a dog", "completion": " ran on a mat"}"#,
    ];
    std::fs::write(dir.join("train.jsonl"), rows.join("\n")).unwrap();
}

fn train(dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "train",
        "sft",
        "--model",
        "base",
        "--data",
        "train.jsonl",
        "--out",
        "out",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    temper(dir, &args)
}

/// Training: a fresh run into a used output folder is refused (`--resume` continues it,
/// `--overwrite` replaces it); a checkpoint that cannot be written leaves no temporary folder;
/// a dead run's staged checkpoints (today's name and the older `.checkpoint-N.tmp-PID`) are
/// removed by the next run.
#[cfg(target_os = "linux")]
#[test]
fn training_refuses_a_used_folder_and_leaves_no_checkpoint_debris() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_model_and_data(d);
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("model.safetensors"), b"an earlier run's model").unwrap();
    let (ok, err) = train(d, &[]);
    assert!(!ok);
    assert!(
        err.contains("--overwrite") && err.contains("--resume") && err.contains("out"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        b"an earlier run's model"
    );

    // The final checkpoint's place is taken by a dangling link: the checkpoint is staged
    // completely, its rename into place fails, and the staging folder goes with the error.
    std::os::unix::fs::symlink("nowhere", out.join("checkpoint-2")).unwrap();
    let (ok, err) = train(d, &["--overwrite"]);
    assert!(!ok);
    assert!(err.contains("checkpoint-2"), "{err}");
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    std::fs::remove_file(out.join("checkpoint-2")).unwrap();

    // What a `kill -9` during a save leaves: removed by the next run, a live one kept.
    let dead = [
        format!(".checkpoint-1.temper-tmp-{DEAD_PID}-0"),
        format!(".checkpoint-1.tmp-{DEAD_PID}"),
    ];
    for name in &dead {
        std::fs::create_dir(out.join(name)).unwrap();
    }
    let live = format!(".checkpoint-1.temper-tmp-{}-0", std::process::id());
    std::fs::create_dir(out.join(&live)).unwrap();
    let (ok, err) = train(d, &["--overwrite"]);
    assert!(ok, "{err}");
    assert!(out.join("checkpoint-2/trainer_state.json").is_file());
    assert_eq!(temporaries(&out), [live]);
}
