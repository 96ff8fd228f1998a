//! A Llama with `attention_bias` and `mlp_bias` (biases on q, k, v, o and gate, up, down)
//! against transformers itself: `tests/fixtures/tiny_biased_llama` (random weights and
//! biases, made by its `make_fixture.py`) gives the same logits here, keeps its biases
//! through a save, and is counted right by the memory estimate; a checkpoint with bias
//! tensors its config does not announce is refused naming the tensor.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use temper_backend::FloatPrecision;
use temper_llm_arch::ModelConfig;
use temper_llm_arch::checkpoint::{SafetensorsSource, load_weights, save_safetensors};

use common::{device, forward_plain};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_biased_llama")
}

fn expected() -> (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    (
        serde_json::from_value(v["input_ids"].clone()).unwrap(),
        serde_json::from_value(v["logits"].clone()).unwrap(),
    )
}

fn max_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    a.iter()
        .flatten()
        .flatten()
        .zip(b.iter().flatten().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn biased_llama_matches_transformers_and_keeps_its_biases() {
    let config = ModelConfig::from_file(fixture().join("config.json")).unwrap();
    assert!(config.attention_bias && config.mlp_bias);
    let mut source = SafetensorsSource::open_dir(fixture()).unwrap();
    let model = load_weights(&config, &mut source, &device(), FloatPrecision::F32).unwrap();
    let (ids, want) = expected();
    let got = forward_plain(&model, &ids);
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "largest |logit − transformers'|: {diff}");

    // 14 bias vectors in, 14 out, and the reloaded model computes the same logits.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("model.safetensors");
    save_safetensors(&model, &saved, FloatPrecision::F32).unwrap();
    let bytes = std::fs::read(&saved).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let biases = st
        .names()
        .into_iter()
        .filter(|n| n.ends_with(".bias"))
        .count();
    assert_eq!(biases, 2 * 7);
    let elements: usize = st
        .tensors()
        .iter()
        .map(|(_, t)| t.shape().iter().product::<usize>())
        .sum();
    assert_eq!(config.checked_num_parameters(), Some(elements));
    let mut source = SafetensorsSource::open_file(&saved).unwrap();
    let reloaded = load_weights(&config, &mut source, &device(), FloatPrecision::F32).unwrap();
    assert_eq!(max_diff(&forward_plain(&reloaded, &ids), &got), 0.0);
}

#[test]
fn bias_tensors_the_config_does_not_announce_are_refused() {
    let mut config = ModelConfig::from_file(fixture().join("config.json")).unwrap();
    config.mlp_bias = false;
    let mut source = SafetensorsSource::open_dir(fixture()).unwrap();
    let err = load_weights(&config, &mut source, &device(), FloatPrecision::F32)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("mlp.down_proj.bias"), "{err}");
}
