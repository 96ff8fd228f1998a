//! `llama` (HF `LlamaForCausalLM`; Llama 2/3.x, SmolLM/SmolLM2): the reference the other
//! families differ from. `attention_bias` puts biases on q, k, v and o; `mlp_bias` on gate, up
//! and down. No sliding window: HF's `LlamaAttention` ignores a `sliding_window` key.

use serde_json::{Map, Value, json};

use super::{Biases, FamilyKeys, Spec};
use crate::Result;
use crate::config::{Keys, ModelConfig};

pub(super) static SPEC: Spec = Spec {
    model_type: "llama",
    architecture: "LlamaForCausalLM",
    default_head_dim: None,
    qk_norm: false,
    biases,
    read,
    write,
};

fn biases(c: &ModelConfig) -> Biases {
    Biases {
        qkv: c.attention_bias,
        o: c.attention_bias,
        mlp: c.mlp_bias,
    }
}

fn read(k: &Keys<'_>, _layers: usize) -> Result<FamilyKeys> {
    Ok(FamilyKeys {
        attention_bias: k.bool_opt("attention_bias")?.unwrap_or(false),
        mlp_bias: k.bool_opt("mlp_bias")?.unwrap_or(false),
        ..FamilyKeys::default()
    })
}

fn write(c: &ModelConfig, obj: &mut Map<String, Value>) {
    obj.insert("attention_bias".into(), json!(c.attention_bias));
    obj.insert("mlp_bias".into(), json!(c.mlp_bias));
}
