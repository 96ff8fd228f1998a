//! What the interop tests share: loading a fixture model directory and reading the peers'
//! safetensors outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use safetensors::{Dtype, SafeTensors};
use temper_backend::FloatPrecision;
use temper_llm_arch::checkpoint::{SafetensorsSource, load_weights};
use temper_llm_arch::{LlamaForCausalLM, ModelConfig};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A HF model directory (`config.json` + safetensors) in f32.
pub fn load_dir(dir: &Path, device: &Device) -> LlamaForCausalLM {
    let config = ModelConfig::from_file(dir.join("config.json")).expect("config");
    let mut source = SafetensorsSource::open_dir(dir).expect("weights");
    load_weights(&config, &mut source, device, FloatPrecision::F32).expect("load")
}

/// The raw little-endian bytes, shape and dtype of tensor `name` of the safetensors `file`.
pub fn read_raw(file: &Path, name: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name} in {}: {e}", file.display()));
    (t.shape().to_vec(), t.dtype(), t.data().to_vec())
}

/// `(shape, values)` of tensor `name` of `file`, as f32 (int64 ids and u8 codes converted).
pub fn read_f32(file: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let (shape, dtype, data) = read_raw(file, name);
    let values = match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::U8 => data.iter().map(|&b| f32::from(b)).collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    (shape, values)
}

/// Whether `file` holds a tensor `name`.
pub fn has_tensor(file: &Path, name: &str) -> bool {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensor(name).is_ok()
}

pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let max = max_abs_diff(got, want);
    assert!(max <= tol, "{what}: max |diff| {max} > {tol}");
}
