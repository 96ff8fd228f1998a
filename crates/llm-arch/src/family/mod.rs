//! Model families: what a `config.json`'s `model_type` means for the one decoder in
//! [`crate::llama`]. A family is the small set of differences from Llama — which projections
//! carry biases, per-head q/k norms, which layers attend through a sliding window, the
//! `head_dim` default and the config keys it reads and writes. Rotary embeddings, grouped-query
//! attention, SwiGLU and the RMSNorms are shared by all of them.
//!
//! Each family is one file holding its [`Spec`] (`llama.rs`, `mistral.rs`, `qwen2.rs`,
//! `qwen3.rs`); [`Family::spec`] is the one place that lists them. Adding a family is a file
//! and a line there, plus its GGUF names in [`crate::gguf`] when llama.cpp has them.

use serde_json::{Map, Value};

use crate::Result;
use crate::config::{Keys, ModelConfig};

mod llama;
mod mistral;
mod qwen2;
mod qwen3;

/// A supported HF `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `llama` (Llama 2/3.x, SmolLM/SmolLM2), optionally with `attention_bias` / `mlp_bias`.
    Llama,
    /// `mistral`: Llama with a sliding window on every layer, no biases.
    Mistral,
    /// `qwen2` (Qwen2, Qwen2.5): biases on q, k and v; sliding window on the upper layers.
    Qwen2,
    /// `qwen3`: per-head RMSNorm on q and k, `head_dim` independent of the hidden size.
    Qwen3,
}

/// Every family, in the order error messages list them.
pub const FAMILIES: [Family; 4] = [Family::Llama, Family::Mistral, Family::Qwen2, Family::Qwen3];

/// The `model_type`s Temper loads, for error messages (`llama, mistral, qwen2, qwen3`).
pub fn supported_model_types() -> String {
    FAMILIES
        .iter()
        .map(|f| f.spec().model_type)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which projections of a decoder layer carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Biases {
    /// `q_proj`, `k_proj` and `v_proj`.
    pub qkv: bool,
    /// `o_proj`.
    pub o: bool,
    /// `gate_proj`, `up_proj` and `down_proj`.
    pub mlp: bool,
}

/// Which decoder layers use the sliding window (when [`ModelConfig::sliding_window`] is set).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SlidingLayers {
    /// Every layer (Mistral).
    #[default]
    All,
    /// Layers `i ≥ n` (Qwen2's `max_window_layers`, when the config lists no `layer_types`).
    From(usize),
    /// Layer `i` slides when entry `i` is true (`layer_types`: `sliding_attention`).
    Listed(Vec<bool>),
}

/// The config fields a family reads its own way.
#[derive(Debug, Clone, Default)]
pub(crate) struct FamilyKeys {
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub sliding_window: Option<usize>,
    pub sliding_layers: SlidingLayers,
}

/// One family's differences from the shared decoder.
pub(crate) struct Spec {
    /// HF `model_type`.
    pub model_type: &'static str,
    /// HF architecture class (`config.json`'s `architectures`).
    pub architecture: &'static str,
    /// `head_dim` when the config has none; `None`: `hidden_size / num_attention_heads`.
    pub default_head_dim: Option<usize>,
    /// `self_attn.q_norm` / `self_attn.k_norm`: RMSNorm over each head before RoPE.
    pub qk_norm: bool,
    /// Which projections have biases, given the config's flags.
    pub biases: fn(&ModelConfig) -> Biases,
    /// Reads the family's own keys; `num_hidden_layers` checks per-layer lists.
    pub read: fn(&Keys<'_>, usize) -> Result<FamilyKeys>,
    /// Writes the family's own keys into a `config.json` object.
    pub write: fn(&ModelConfig, &mut Map<String, Value>),
}

impl Family {
    /// The family of an HF `model_type`, or `None` when Temper does not support it.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        FAMILIES
            .into_iter()
            .find(|f| f.spec().model_type == model_type)
    }

    pub(crate) fn spec(self) -> &'static Spec {
        match self {
            Family::Llama => &llama::SPEC,
            Family::Mistral => &mistral::SPEC,
            Family::Qwen2 => &qwen2::SPEC,
            Family::Qwen3 => &qwen3::SPEC,
        }
    }

    /// HF `model_type`.
    pub fn model_type(self) -> &'static str {
        self.spec().model_type
    }

    /// HF architecture class, e.g. `Qwen2ForCausalLM`.
    pub fn architecture(self) -> &'static str {
        self.spec().architecture
    }

    /// Whether attention normalises each query and key head (Qwen3's `q_norm` / `k_norm`).
    pub fn qk_norm(self) -> bool {
        self.spec().qk_norm
    }
}
