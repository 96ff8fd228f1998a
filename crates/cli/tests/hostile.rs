//! The `temper` binary on hostile files generated here (issue 23): truncated and inflated
//! GGUF / safetensors files, a FIFO and a device named as a model, bad JSON, shard indexes
//! pointing outside the model folder, a closed stdout. Each run has a time limit (a hang is a
//! failure, not a stuck test) and an address-space limit (`ulimit -v`, so a blow-up fails with
//! an allocation error instead of taking the machine), and must exit non-zero without a panic,
//! name the file at fault, and leave nothing behind in the output folder.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Address space allowed to one run: the binary maps its own code and thread stacks, so this
/// is generous, but far below what an unbounded allocation from a file's count would take.
const MEMORY_KIB: u64 = 4 * 1024 * 1024;
const TIME_LIMIT: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `temper args…` under the limits; `close_stdout` closes the pipe before it prints.
fn temper_limited(args: &[&str], close_stdout: bool) -> Run {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {MEMORY_KIB}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_temper"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout_pipe = child.stdout.take().unwrap();
    let stdout_reader = if close_stdout {
        drop(stdout_pipe);
        None
    } else {
        Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout_pipe.read_to_string(&mut s);
            s
        }))
    };
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("temper {args:?} ran past {TIME_LIMIT:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: stdout_reader.map(|r| r.join().unwrap()).unwrap_or_default(),
        stderr: stderr_reader.join().unwrap(),
    }
}

/// A hostile input must be refused: exit 1 (not 101, a panic; not a signal), no panic text,
/// and the message names `needle` (the file, and the tensor or key where there is one).
fn assert_refused(args: &[&str], needles: &[&str]) {
    let run = temper_limited(args, false);
    assert_eq!(run.code, Some(1), "temper {args:?}: {}", run.stderr);
    assert!(
        !run.stderr.contains("panicked"),
        "temper {args:?}: {}",
        run.stderr
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "temper {args:?}: `{needle}` not in: {}",
            run.stderr
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// A model folder with a valid `config.json` (so `inspect` reaches the weights).
fn model_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.json"), temper_fuzz::seeds::CONFIG_JSON).unwrap();
    dir
}

#[test]
fn truncated_and_inflated_gguf_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let seed = temper_fuzz::seeds::gguf();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &seed[..seed.len() - 40]).unwrap();
    assert_refused(&["inspect", s(&truncated)], &["truncated.gguf"]);
    // A metadata count of 2^63: nothing may be allocated from it.
    let mut inflated = seed.clone();
    inflated[16..24].copy_from_slice(&(1u64 << 63).to_le_bytes());
    let path = dir.path().join("inflated.gguf");
    std::fs::write(&path, &inflated).unwrap();
    assert_refused(&["inspect", s(&path)], &["inflated.gguf"]);
    // `convert` of a broken file leaves no output folder and no temporary file behind.
    let out = dir.path().join("out");
    assert_refused(&["convert", s(&truncated), s(&out)], &["truncated.gguf"]);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".gguf"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_fifo_or_a_device_named_as_a_model_file_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    // No writer ever opens these FIFOs: reading them would block until the time limit.
    let fifo = dir.path().join("model.gguf");
    mkfifo(&fifo);
    assert_refused(&["inspect", s(&fifo)], &["model.gguf", "FIFO"]);
    let model = dir.path().join("m");
    std::fs::create_dir(&model).unwrap();
    mkfifo(&model.join("config.json"));
    assert_refused(&["inspect", s(&model)], &["config.json", "FIFO"]);
    let model = model_dir(dir.path(), "m2");
    mkfifo(&model.join("model.safetensors"));
    assert_refused(&["inspect", s(&model)], &["model.safetensors", "FIFO"]);
    // A device reads without end.
    let model = model_dir(dir.path(), "m3");
    std::os::unix::fs::symlink("/dev/zero", model.join("model.safetensors")).unwrap();
    assert_refused(&["inspect", s(&model)], &["model.safetensors", "device"]);
}

#[test]
fn bad_safetensors_headers_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, header: &str, data: usize| {
        let model = model_dir(dir.path(), name);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        std::fs::write(model.join("model.safetensors"), bytes).unwrap();
        model
    };
    let wrong_size = write(
        "size",
        r#"{"model.norm.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        8,
    );
    assert_refused(
        &["inspect", s(&wrong_size)],
        &["model.safetensors", "model.norm.weight", "needs 12 bytes"],
    );
    let gap = write(
        "gap",
        r#"{"a.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b.weight":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}"#,
        24,
    );
    assert_refused(&["inspect", s(&gap)], &["b.weight", "`a.weight` ends at 8"]);
    let huge = write(
        "huge",
        r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
        8,
    );
    assert_refused(&["inspect", s(&huge)], &["model.safetensors", "`a`"]);
}

#[test]
fn bad_json_and_missing_files_name_the_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("config.json"), "{\"hidden_size\": 64,").unwrap();
    assert_refused(&["inspect", s(&model)], &["config.json"]);
    let missing = dir.path().join("absent");
    std::fs::create_dir(&missing).unwrap();
    let run = temper_limited(&["inspect", s(&missing)], false);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("config.json"), "{}", run.stderr);
    // The OS error is printed once, not once per layer of the error chain.
    assert_eq!(
        run.stderr.matches("No such file or directory").count(),
        1,
        "{}",
        run.stderr
    );
    // A control character in a path is passed through as written, not a crash.
    let odd = dir.path().join("odd\u{1}\u{1b}[2J.gguf");
    std::fs::write(&odd, b"GGUF").unwrap();
    assert_refused(&["inspect", s(&odd)], &["odd"]);
}

#[test]
fn a_shard_index_cannot_point_outside_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.safetensors");
    std::fs::write(&secret, temper_fuzz::seeds::safetensors()).unwrap();
    let model = model_dir(dir.path(), "m");
    let index = format!(
        r#"{{"weight_map":{{"model.embed_tokens.weight":{:?}}}}}"#,
        s(&secret)
    );
    std::fs::write(model.join("model.safetensors.index.json"), index).unwrap();
    let config = dir.path().join("merge.yaml");
    std::fs::write(
        &config,
        format!(
            "merge_method: linear\nmodels:\n  - model: {}\n    parameters:\n      weight: 1.0\ndtype: float32\n",
            s(&model)
        ),
    )
    .unwrap();
    let out = dir.path().join("merged");
    assert_refused(
        &["merge", s(&config), s(&out)],
        &[
            "model.safetensors.index.json",
            "weight_map.model.embed_tokens.weight",
        ],
    );
    assert!(!out.exists(), "merge left {}", out.display());
}

#[test]
fn a_closed_stdout_ends_inspect_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path(), "m");
    std::fs::write(
        model.join("model.safetensors"),
        temper_fuzz::seeds::safetensors(),
    )
    .unwrap();
    // The pipe is closed before temper writes: `println!` would panic here.
    let run = temper_limited(&["inspect", s(&model)], true);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}
