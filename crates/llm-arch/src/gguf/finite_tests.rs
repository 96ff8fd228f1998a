//! Broken numbers in a GGUF are refused with the key or tensor named: NaN weights, a NaN
//! block scale, NaN or out-of-range hyper-parameters (which go through `ModelConfig::validate`). A `#[cfg(test)]` module of
//! `gguf/mod.rs`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::test_writer::GgufBuilder;
use super::{GgufFile, for_each_hf_tensor_keeping_blocks, hf_config, load_hf_tensors};
use crate::ModelConfig;

/// A one-layer toy llama (hidden 4, 2 heads, 1 kv head), `eps` and `theta` as given, whose
/// `blk.0.attn_v.weight` holds `v`.
fn toy(eps: f32, theta: f32, v: &[f32]) -> GgufBuilder {
    GgufBuilder::new(3)
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.context_length", 128)
        .kv_u32("llama.embedding_length", 4)
        .kv_u32("llama.feed_forward_length", 8)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.attention.head_count_kv", 1)
        .kv_f32("llama.rope.freq_base", theta)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", eps)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "c"])
        .f32_tensor("token_embd.weight", &[4, 3], &[0.0; 12])
        .f32_tensor("blk.0.attn_v.weight", &[4, 2], v)
}

fn config_err(b: &GgufBuilder) -> String {
    let file = GgufFile::from_bytes(b.build(), "toy.gguf").unwrap();
    match hf_config(&file) {
        Err(e) => e.to_string(),
        Ok(v) => ModelConfig::from_json(&v, Path::new("toy.gguf"))
            .unwrap_err()
            .to_string(),
    }
}

#[test]
fn nan_or_negative_hyper_parameters_are_refused() {
    let ok = [0.5f32; 8];
    let file = GgufFile::from_bytes(toy(1e-5, 1e4, &ok).build(), "toy.gguf").unwrap();
    ModelConfig::from_json(&hf_config(&file).unwrap(), Path::new("toy.gguf")).unwrap();

    let err = config_err(&toy(f32::NAN, 1e4, &ok));
    assert!(
        err.contains("`llama.attention.layer_norm_rms_epsilon`") && err.contains("finite"),
        "{err}"
    );
    let err = config_err(&toy(1e-5, f32::INFINITY, &ok));
    assert!(err.contains("`llama.rope.freq_base`"), "{err}");
    let err = config_err(&toy(-1.0, 1e4, &ok));
    assert!(
        err.contains("toy.gguf") && err.contains("`rms_norm_eps`") && err.contains("> 0"),
        "{err}"
    );
    let err = config_err(&toy(1e-5, 0.0, &ok));
    assert!(err.contains("`rope_theta`") && err.contains("> 0"), "{err}");
}

#[test]
fn a_nan_weight_names_the_tensor_and_index() {
    let mut v = [0.5f32; 8];
    v[5] = f32::NAN;
    let file = GgufFile::from_bytes(toy(1e-5, 1e4, &v).build(), "toy.gguf").unwrap();
    let err = load_hf_tensors(&file).unwrap_err().to_string();
    assert!(
        err.contains("toy.gguf")
            && err.contains("`blk.0.attn_v.weight`")
            && err.contains("NaN at element 5"),
        "{err}"
    );
}

#[test]
fn a_nan_block_scale_is_refused_when_blocks_are_kept() {
    // One Q8_0 block per row of a [2, 32] q projection; the second block's scale is NaN.
    let mut bytes = Vec::new();
    for scale in [half::f16::from_f32(0.1), half::f16::NAN] {
        bytes.extend_from_slice(&scale.to_le_bytes());
        bytes.extend_from_slice(&[1u8; 32]);
    }
    let b = toy(1e-5, 1e4, &[0.5; 8]).tensor("blk.0.attn_q.weight", &[32, 2], 8, bytes);
    let file = GgufFile::from_bytes(b.build(), "toy.gguf").unwrap();
    let err = for_each_hf_tensor_keeping_blocks::<super::GgufError>(&file, |_| Ok(()), |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`blk.0.attn_q.weight`")
            && err.contains("NaN at element 32")
            && err.contains("scale of its quantized block"),
        "{err}"
    );
    // Decoded, the same block is found value by value.
    let err = load_hf_tensors(&file).unwrap_err().to_string();
    assert!(
        err.contains("`blk.0.attn_q.weight`") && err.contains("NaN at element 32"),
        "{err}"
    );
}
