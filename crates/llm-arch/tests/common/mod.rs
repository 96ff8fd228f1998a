//! What the tiny-model test binaries share: the device, a random model with sharp attention,
//! and a plain forward pass returning host logits.
#![allow(dead_code, clippy::unwrap_used)]

use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM, ModelConfig, RopeScaling};

pub fn device() -> Device {
    Device::flex()
}

/// Llama 3.1-style scaling with a tiny original context, so it changes frequencies at the
/// head dims used here.
pub fn llama3_scaling() -> RopeScaling {
    RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    }
}

/// A random model whose attention is sharp enough for positions and masks to matter: HF's
/// std 0.02 init gives near-uniform attention, so q/k projections are scaled up.
pub fn random_model(config: &ModelConfig) -> LlamaForCausalLM {
    let mut m = LlamaForCausalLM::init(config, &device());
    for layer in &mut m.model.layers {
        let attn = &mut layer.self_attn;
        attn.q_proj.weight = Param::from_tensor(attn.q_proj.weight.val() * 10.0);
        attn.k_proj.weight = Param::from_tensor(attn.k_proj.weight.val() * 10.0);
    }
    m
}

pub fn ids(rows: &[Vec<u32>]) -> Tensor<2, Int> {
    let b = rows.len();
    let s = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == s));
    let data: Vec<i64> = rows.iter().flatten().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(data, [b, s]), &device())
}

/// Logits as `[batch][seq][vocab]`.
pub fn host(t: Tensor<3>) -> Vec<Vec<Vec<f32>>> {
    let [b, s, v] = t.dims();
    let flat: Vec<f32> = t.into_data().convert::<f32>().try_into_vec().unwrap();
    (0..b)
        .map(|i| {
            (0..s)
                .map(|j| flat[(i * s + j) * v..(i * s + j + 1) * v].to_vec())
                .collect()
        })
        .collect()
}

pub fn forward(
    m: &LlamaForCausalLM,
    rows: &[Vec<u32>],
    options: &ForwardOptions,
) -> Vec<Vec<Vec<f32>>> {
    host(m.forward(ids(rows), options).unwrap())
}

pub fn forward_plain(m: &LlamaForCausalLM, rows: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    forward(m, rows, &ForwardOptions::default())
}
