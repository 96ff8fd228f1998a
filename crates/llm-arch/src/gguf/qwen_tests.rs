//! `qwen2` and `qwen3` GGUFs, built with [`GgufBuilder`] from the tiny transformers fixtures
//! (`tests/fixtures/tiny_qwen2*`, `tiny_qwen3`) the way llama.cpp's `convert_hf_to_gguf.py`
//! lays them out: tensors renamed, q/k rows *not* permuted (`Qwen2Model` / `Qwen3Model` are
//! plain `TextModel`s there), hyper-parameters under `qwen2.*` / `qwen3.*` with the head size
//! in `attention.key_length`. Read back, they give the fixture's tensors and config, and the
//! logits transformers computed.
//! (A `#[cfg(test)]` module of `gguf/mod.rs`.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde_json::Value;

use super::test_writer::GgufBuilder;
use super::{GgufFile, hf_config, hf_tensor_name, load_hf_tensors};
use crate::checkpoint::{MemorySource, load_weights};
use crate::{ForwardOptions, ModelConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The llama.cpp name of an HF tensor: the exporter's table (checked against llama.cpp and
/// gguf-py's `tensor_mapping.py` in `tests/gguf_export*.rs`).
fn gguf_name(hf: &str) -> String {
    super::export_arch::gguf_tensor_name(hf).unwrap_or_else(|| panic!("no GGUF name for {hf}"))
}

/// The fixture's f32 tensors, sorted by HF name: (name, PyTorch shape, values).
fn fixture_tensors(name: &str) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (n, t.shape().to_vec(), data)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The fixture as llama.cpp's converter would write it (f32 tensors).
fn gguf_of(name: &str, arch: &str) -> GgufFile {
    let c = json(fixture(name).join("config.json"));
    let u = |k: &str| c[k].as_u64().unwrap() as u32;
    let key = |k: &str| format!("{arch}.{k}");
    let mut b = GgufBuilder::new(3)
        .kv_str("general.architecture", arch)
        .kv_u32(&key("block_count"), u("num_hidden_layers"))
        .kv_u32(&key("context_length"), u("max_position_embeddings"))
        .kv_u32(&key("embedding_length"), u("hidden_size"))
        .kv_u32(&key("feed_forward_length"), u("intermediate_size"))
        .kv_u32(&key("attention.head_count"), u("num_attention_heads"))
        .kv_u32(&key("attention.head_count_kv"), u("num_key_value_heads"))
        .kv_f32(
            &key("rope.freq_base"),
            c["rope_parameters"]["rope_theta"].as_f64().unwrap() as f32,
        )
        .kv_f32(
            &key("attention.layer_norm_rms_epsilon"),
            c["rms_norm_eps"].as_f64().unwrap() as f32,
        )
        .kv_u32("tokenizer.ggml.bos_token_id", 1)
        .kv_u32("tokenizer.ggml.eos_token_id", 2);
    if let Some(hd) = c.get("head_dim").and_then(Value::as_u64) {
        b = b
            .kv_u32(&key("attention.key_length"), hd as u32)
            .kv_u32(&key("attention.value_length"), hd as u32);
    }
    for (hf, shape, data) in fixture_tensors(name) {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        b = b.f32_tensor(&gguf_name(&hf), &dims, &data);
    }
    GgufFile::from_bytes(b.build(), &format!("{name}.gguf")).unwrap()
}

/// The fixture's prompts and transformers' logits for them.
fn logits_parity(name: &str, config: &ModelConfig, file: &GgufFile) {
    let device = Device::flex();
    let mut source = MemorySource::from_gguf(file).unwrap();
    let model = load_weights(
        config,
        &mut source,
        &device,
        temper_backend::FloatPrecision::F32,
    )
    .unwrap();
    let expected = json(fixture(name).join("expected.json"));
    let ids: Vec<Vec<i64>> = serde_json::from_value(expected["input_ids"].clone()).unwrap();
    let want: Vec<Vec<Vec<f32>>> = serde_json::from_value(expected["logits"].clone()).unwrap();
    let (b, s) = (ids.len(), ids[0].len());
    let input = Tensor::<2, Int>::from_data(
        TensorData::new(ids.into_iter().flatten().collect::<Vec<_>>(), [b, s]),
        &device,
    );
    let got: Vec<f32> = model
        .forward(input, &ForwardOptions::default())
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap();
    let diff = got
        .iter()
        .zip(want.iter().flatten().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-4,
        "{name}: largest |logit − transformers'| {diff}"
    );
}

/// Every GGUF tensor comes back under the fixture's name with its values, rows unmoved.
fn same_tensors(name: &str, file: &GgufFile) {
    let got = load_hf_tensors(file).unwrap();
    let mut got: Vec<_> = got.into_iter().map(|t| (t.name, t.shape, t.data)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want = fixture_tensors(name);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            hf_tensor_name(&gguf_name(&w.0)).as_deref(),
            Some(w.0.as_str())
        );
        assert_eq!((&g.0, &g.1), (&w.0, &w.1));
        assert!(g.2 == w.2, "{}: values differ", g.0);
    }
}

#[test]
fn qwen2_gguf_reads_as_the_hf_checkpoint_without_a_window() {
    let file = gguf_of("tiny_qwen2", "qwen2");
    same_tensors("tiny_qwen2", &file);
    let config = ModelConfig::from_json(&hf_config(&file).unwrap(), Path::new("q.gguf")).unwrap();
    assert_eq!(config.model_type, "qwen2");
    assert_eq!(config.architecture(), "Qwen2ForCausalLM");
    assert!(!config.tie_word_embeddings);
    // llama.cpp's qwen2 attends to every position on every layer; so does the loaded model.
    assert!((0..3).all(|i| config.layer_window(i).is_none()));
    let hf = ModelConfig::from_file(fixture("tiny_qwen2").join("config.json")).unwrap();
    assert_eq!(
        (
            config.hidden_size,
            config.num_key_value_heads,
            config.head_dim
        ),
        (hf.hidden_size, hf.num_key_value_heads, hf.head_dim)
    );
    assert_eq!(config.checked_num_parameters(), hf.checked_num_parameters());
    // Without the window the logits are not the fixture's, but the weights load whole.
    let mut source = MemorySource::from_gguf(&file).unwrap();
    load_weights(
        &config,
        &mut source,
        &Device::flex(),
        temper_backend::FloatPrecision::F32,
    )
    .unwrap();
}

#[test]
fn tied_qwen2_gguf_gives_transformers_logits() {
    let file = gguf_of("tiny_qwen2_tied", "qwen2");
    same_tensors("tiny_qwen2_tied", &file);
    let config = ModelConfig::from_json(&hf_config(&file).unwrap(), Path::new("q.gguf")).unwrap();
    assert!(config.tie_word_embeddings);
    assert_eq!(config.rope_theta, 1_000_000.0);
    logits_parity("tiny_qwen2_tied", &config, &file);
}

#[test]
fn qwen3_gguf_gives_transformers_logits() {
    let file = gguf_of("tiny_qwen3", "qwen3");
    same_tensors("tiny_qwen3", &file);
    let config = ModelConfig::from_json(&hf_config(&file).unwrap(), Path::new("q.gguf")).unwrap();
    assert_eq!(config.model_type, "qwen3");
    // `qwen3.attention.key_length`, not embedding_length / head_count.
    assert_eq!(config.head_dim, 16);
    assert!(config.qk_norm() && config.attention_bias);
    logits_parity("tiny_qwen3", &config, &file);
}
