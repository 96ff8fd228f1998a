//! `mistral` (HF `MistralForCausalLM`): Llama without biases (HF's `MistralAttention` ignores
//! `attention_bias`), with `sliding_window` on every layer (`null`: full attention).

use serde_json::{Map, Value, json};

use super::{Biases, FamilyKeys, SlidingLayers, Spec};
use crate::Result;
use crate::config::{Keys, ModelConfig};

pub(super) static SPEC: Spec = Spec {
    model_type: "mistral",
    architecture: "MistralForCausalLM",
    default_head_dim: None,
    qk_norm: false,
    biases: |_| Biases::default(),
    read,
    write,
};

fn read(k: &Keys<'_>, _layers: usize) -> Result<FamilyKeys> {
    Ok(FamilyKeys {
        sliding_window: k.window("sliding_window")?,
        sliding_layers: SlidingLayers::All,
        ..FamilyKeys::default()
    })
}

fn write(c: &ModelConfig, obj: &mut Map<String, Value>) {
    obj.insert("sliding_window".into(), json!(c.sliding_window));
}
