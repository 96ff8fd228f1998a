//! LoRA adapters: merging PEFT adapters into a base (`apply_adapter`) and extracting them
//! from a fine-tune (`extract_lora`), on tiny HF directories written here. This file holds
//! what the three parts share: a deterministic generator and the safetensors/model writers.

mod apply;
mod extract;
mod svd;

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use serde_json::json;
use temper_merge::{DType, ModelSource};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Deterministic values in [-1, 1) (xorshift: no test depends on a generator's version).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
    }
}

/// Write `tensors` (name → shape, values) as one safetensors file in `dtype`.
fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    dtype: DType,
) -> TestResult {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let mut bytes = vec![0u8; values.len() * dtype.size()];
            dtype.encode(values, &mut bytes);
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.clone(),
                TensorView::new(st_dtype(dtype), shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, None, path)?;
    Ok(())
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn write_model(dir: &Path, tensors: &Tensors, dtype: DType) -> TestResult {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("config.json"),
        json!({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1}).to_string(),
    )?;
    write_safetensors(&dir.join("model.safetensors"), tensors, dtype)
}

fn read(source: &ModelSource, name: &str) -> Result<Vec<f32>, temper_merge::MergeError> {
    Ok(source.tensor(name)?.to_vec())
}

fn t<'a>(map: &'a Tensors, key: &str) -> &'a [f32] {
    map.get(key).map(|(_, v)| v.as_slice()).unwrap_or(&[])
}
