//! `qwen3` (HF `Qwen3ForCausalLM`): Llama with an RMSNorm over each query and key head
//! (`self_attn.q_norm`, `self_attn.k_norm`, weights `[head_dim]`, applied before RoPE), a
//! `head_dim` of its own (default 128 whatever `hidden_size / num_attention_heads` is), and
//! `attention_bias` on q, k, v and o (no MLP bias). The sliding-window keys read as Qwen2's.

use serde_json::{Map, Value, json};

use super::qwen2::{read_sliding, write_sliding};
use super::{Biases, FamilyKeys, Spec};
use crate::Result;
use crate::config::{Keys, ModelConfig};

pub(super) static SPEC: Spec = Spec {
    model_type: "qwen3",
    architecture: "Qwen3ForCausalLM",
    // `Qwen3Config.head_dim: int = 128`.
    default_head_dim: Some(128),
    qk_norm: true,
    biases: |c| Biases {
        qkv: c.attention_bias,
        o: c.attention_bias,
        mlp: false,
    },
    read,
    write,
};

fn read(k: &Keys<'_>, layers: usize) -> Result<FamilyKeys> {
    Ok(FamilyKeys {
        attention_bias: k.bool_opt("attention_bias")?.unwrap_or(false),
        ..read_sliding(k, layers)?
    })
}

fn write(c: &ModelConfig, obj: &mut Map<String, Value>) {
    obj.insert("attention_bias".into(), json!(c.attention_bias));
    write_sliding(c, obj);
}
