//! `qwen2` (HF `Qwen2ForCausalLM`; Qwen2 and Qwen2.5): Llama with biases on q, k and v (none on
//! o, none in the MLP; there is no `attention_bias` key), and a sliding window on some layers.
//!
//! The window follows transformers 5.25's `Qwen2Config.__post_init__` and `Qwen2Attention`:
//! `sliding_window` (default 4096) counts only when `use_sliding_window` is true; the layers
//! that use it are those `layer_types` lists as `sliding_attention`, or, without that key, the
//! layers `i ≥ max_window_layers` (default 28). A layer listed as sliding while
//! `use_sliding_window` is false is an error in transformers (at the first forward), and here
//! (at load), naming the key.

use serde_json::{Map, Value, json};

use super::{Biases, FamilyKeys, SlidingLayers, Spec};
use crate::Result;
use crate::config::{Keys, ModelConfig};

pub(super) static SPEC: Spec = Spec {
    model_type: "qwen2",
    architecture: "Qwen2ForCausalLM",
    default_head_dim: None,
    qk_norm: false,
    biases: |_| Biases {
        qkv: true,
        o: false,
        mlp: false,
    },
    read: |k, layers| read_sliding(k, layers),
    write: write_sliding,
};

/// HF's defaults for the window keys (`Qwen2Config`, `Qwen3Config`).
const DEFAULT_SLIDING_WINDOW: usize = 4096;
const DEFAULT_MAX_WINDOW_LAYERS: usize = 28;

/// `use_sliding_window`, `sliding_window`, `max_window_layers` and `layer_types`, shared with
/// Qwen3 (whose config reads them the same way).
pub(super) fn read_sliding(k: &Keys<'_>, layers: usize) -> Result<FamilyKeys> {
    let use_window = k.bool_opt("use_sliding_window")?.unwrap_or(false);
    // A missing key is HF's default; an explicit `null` is no window.
    let window = if k.present("sliding_window") {
        k.window("sliding_window")?
    } else {
        Some(DEFAULT_SLIDING_WINDOW)
    };
    let sliding_window = window.filter(|_| use_window);
    let sliding_layers = match k.layer_types(layers)? {
        Some(listed) => {
            if sliding_window.is_none() && listed.iter().any(|&s| s) {
                return Err(k.invalid(
                    "layer_types",
                    "lists `sliding_attention` layers but `use_sliding_window` is false or \
                     `sliding_window` is null (transformers refuses this too)",
                ));
            }
            SlidingLayers::Listed(listed)
        }
        None => SlidingLayers::From(
            k.usize_opt("max_window_layers")?
                .unwrap_or(DEFAULT_MAX_WINDOW_LAYERS),
        ),
    };
    Ok(FamilyKeys {
        sliding_window,
        sliding_layers,
        ..FamilyKeys::default()
    })
}

/// The window keys as transformers 5 saves them: `layer_types` spelled out per layer.
pub(super) fn write_sliding(c: &ModelConfig, obj: &mut Map<String, Value>) {
    obj.insert(
        "use_sliding_window".into(),
        json!(c.sliding_window.is_some()),
    );
    obj.insert("sliding_window".into(), json!(c.sliding_window));
    if let SlidingLayers::From(n) = c.sliding_layers {
        obj.insert("max_window_layers".into(), json!(n));
    }
    let types: Vec<&str> = (0..c.num_hidden_layers)
        .map(|i| {
            if c.layer_window(i).is_some() {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    obj.insert("layer_types".into(), json!(types));
}
