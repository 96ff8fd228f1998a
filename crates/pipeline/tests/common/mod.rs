//! What the end-to-end pipeline tests share: the repository root and the smoke preset on the
//! real SmolLM2 (`TEMPER_SMOLLM2_GGUF` or the fetched file).
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};

use temper_pipeline::{PipelineConfig, Preset};

pub fn repo_root() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap()
}

/// The smoke preset, its instruct model taken from `TEMPER_SMOLLM2_GGUF` when set.
pub fn smoke_config() -> PipelineConfig {
    let mut config = PipelineConfig::preset(Preset::Smoke, &repo_root()).unwrap();
    if let Some(gguf) = std::env::var_os("TEMPER_SMOLLM2_GGUF") {
        config.instruct = gguf.into();
    }
    assert!(
        config.instruct.exists(),
        "{} not found: run scripts/fetch-smollm2.sh or set TEMPER_SMOLLM2_GGUF",
        config.instruct.display()
    );
    config
}
