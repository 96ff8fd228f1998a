//! What an architecture is called in llama.cpp: `general.architecture`, the tensor names, the
//! q/k row permutation, and the `<arch>.*` hyper-parameters — from an HF `config.json`.
//!
//! One table row per family ([`ARCHS`]), mirroring llama.cpp's `convert_hf_to_gguf.py`:
//! `LlamaForCausalLM` and `MistralForCausalLM` both become `llama` and have their q/k rows
//! permuted (`LlamaModel.permute`); `qwen2` (q/k/v biases) and `qwen3` (`attn_q_norm` /
//! `attn_k_norm`) keep HF's row order. The tensor names are `gguf-py`'s `TENSOR_NAMES`
//! (constants.py); a family with more tensors adds them to [`gguf_tensor_name`]'s module table.

use serde_json::Value;

use super::export_error::GgufExportError;
use super::value::GgufValue;
use crate::config::{ModelConfig, RopeScaling};

/// One exportable family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchSpec {
    /// HF `model_type`s that export as this architecture.
    pub model_types: &'static [&'static str],
    /// llama.cpp's `general.architecture` (and the prefix of its hyper-parameter keys).
    pub gguf_arch: &'static str,
    /// Whether q/k weight rows are permuted into llama.cpp's rotary layout (llama.cpp's
    /// `LlamaModel.permute`; its rope for `llama` rotates adjacent pairs, HF's halves).
    pub permute_qk: bool,
}

/// The families Temper exports, in llama.cpp's terms.
pub const ARCHS: &[ArchSpec] = &[
    ArchSpec {
        model_types: &["llama", "mistral"],
        gguf_arch: "llama",
        permute_qk: true,
    },
    ArchSpec {
        model_types: &["qwen2"],
        gguf_arch: "qwen2",
        permute_qk: false,
    },
    ArchSpec {
        model_types: &["qwen3"],
        gguf_arch: "qwen3",
        permute_qk: false,
    },
];

/// The table row for an HF `model_type`.
///
/// # Errors
/// [`GgufExportError::UnsupportedArchitecture`] naming the type and the supported ones.
pub fn arch_spec(model_type: &str) -> Result<&'static ArchSpec, GgufExportError> {
    ARCHS
        .iter()
        .find(|a| a.model_types.contains(&model_type))
        .ok_or_else(|| GgufExportError::UnsupportedArchitecture {
            model_type: model_type.to_string(),
            supported: ARCHS
                .iter()
                .flat_map(|a| a.model_types.iter().copied())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// llama.cpp's name of an HF tensor (`model.layers.3.self_attn.q_proj.weight` →
/// `blk.3.attn_q.weight`); `None` for a name outside the table.
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    match hf_name {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (module, suffix) = rest.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{suffix}"))
}

/// The `<arch>.*` keys llama.cpp's converter writes for these families (`TextModel.
/// set_gguf_parameters` and `LlamaModel`'s additions), in its order.
pub fn hparams_metadata(spec: &ArchSpec, c: &ModelConfig) -> Vec<(String, GgufValue)> {
    let k = |name: &str| format!("{}.{name}", spec.gguf_arch);
    let u = |n: usize| GgufValue::U32(n as u32);
    let mut out = vec![
        (k("vocab_size"), u(c.vocab_size)),
        (k("context_length"), u(c.max_position_embeddings)),
        (k("embedding_length"), u(c.hidden_size)),
        (k("block_count"), u(c.num_hidden_layers)),
        (k("feed_forward_length"), u(c.intermediate_size)),
        (k("rope.dimension_count"), u(c.head_dim)),
        (k("attention.head_count"), u(c.num_attention_heads)),
        (k("attention.head_count_kv"), u(c.num_key_value_heads)),
        (k("rope.freq_base"), GgufValue::F32(c.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(c.rms_norm_eps as f32),
        ),
    ];
    // The converter writes the head size whenever config.json names `head_dim`; llama.cpp
    // then uses it instead of hidden / heads (Qwen3, Gemma-like configs).
    if c.raw.get("head_dim").is_some_and(|v| !v.is_null()) {
        out.push((k("attention.key_length"), u(c.head_dim)));
        out.push((k("attention.value_length"), u(c.head_dim)));
    }
    if let Some(RopeScaling::Linear { factor }) = c.rope_scaling {
        out.push((k("rope.scaling.type"), GgufValue::String("linear".into())));
        out.push((k("rope.scaling.factor"), GgufValue::F32(factor as f32)));
    }
    out
}

/// Llama 3.1's rope scaling as llama.cpp stores it: not as metadata but as the tensor
/// `rope_freqs.weight`, one divisor per rotary frequency (`LlamaModel.generate_extra_tensors`).
/// `None` without Llama 3 scaling.
pub fn llama3_rope_factors(c: &ModelConfig) -> Option<Vec<f32>> {
    let Some(RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    }) = c.rope_scaling
    else {
        return None;
    };
    let dim = c.head_dim;
    let old_context_len = original_max_position_embeddings as f64;
    let low_freq_wavelen = old_context_len / low_freq_factor;
    let high_freq_wavelen = old_context_len / high_freq_factor;
    let factors = (0..dim)
        .step_by(2)
        .map(|i| {
            // torch computes the frequency in f32: `1 / base ** (arange(0, dim, 2) / dim)`.
            let freq = 1.0f32 / (c.rope_theta as f32).powf(i as f32 / dim as f32);
            let wavelen = 2.0 * std::f64::consts::PI / f64::from(freq);
            if wavelen < high_freq_wavelen {
                1.0
            } else if wavelen > low_freq_wavelen {
                factor as f32
            } else {
                let smooth = (old_context_len / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect();
    Some(factors)
}

/// `general.name`: the config's `_name_or_path` when it has one, else `fallback` (the source's
/// file or folder name), as gguf-py's `Metadata` falls back to the model directory's name.
pub fn model_name(c: &ModelConfig, fallback: &str) -> String {
    c.raw
        .get("_name_or_path")
        .and_then(Value::as_str)
        .and_then(|p| p.rsplit('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or(fallback)
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::to_hf::hf_tensor_name;
    use super::*;

    #[test]
    fn names_invert_the_readers_table() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.12.self_attn.q_proj.weight",
            "model.layers.12.self_attn.q_proj.bias",
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.1.self_attn.v_proj.weight",
            "model.layers.1.self_attn.o_proj.weight",
            "model.layers.1.post_attention_layernorm.weight",
            "model.layers.1.mlp.gate_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
        ] {
            let gguf = gguf_tensor_name(hf).unwrap();
            assert_eq!(hf_tensor_name(&gguf).as_deref(), Some(hf), "{gguf}");
        }
        assert_eq!(
            gguf_tensor_name("model.layers.2.self_attn.k_norm.weight").unwrap(),
            "blk.2.attn_k_norm.weight"
        );
        assert_eq!(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_tensor_name("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn llama3_rope_factors_match_the_converter() {
        // Llama 3.1 8B's scaling; reference values from the converter's formula run in numpy
        // (float32 frequencies, float64 arithmetic): 1 for the high frequencies, 8 for the
        // low ones, and a smooth ramp over pairs 29..=34.
        let v = serde_json::json!({
            "model_type": "llama", "vocab_size": 8, "hidden_size": 4096,
            "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 32,
            "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192},
        });
        let c = ModelConfig::from_json(&v, std::path::Path::new("<t>")).unwrap();
        let f = llama3_rope_factors(&c).unwrap();
        assert_eq!(f.len(), 64);
        assert!(f[..29].iter().all(|&x| x == 1.0));
        assert!(f[35..].iter().all(|&x| x == 8.0));
        let want = [
            1.207_484,
            1.553_414_6,
            2.026_313,
            2.694_53,
            3.684_253,
            5.257_326_6,
        ];
        for (got, want) in f[29..35].iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        assert_eq!(llama3_rope_factors(&ModelConfig::tiny(8, 8, 1, 2, 1)), None);
    }

    #[test]
    fn arch_table() {
        assert_eq!(arch_spec("mistral").unwrap().gguf_arch, "llama");
        assert!(arch_spec("llama").unwrap().permute_qk);
        assert!(!arch_spec("qwen2").unwrap().permute_qk);
        assert_eq!(
            arch_spec("gemma").unwrap_err().to_string(),
            "model_type `gemma` cannot be exported to GGUF (supported: llama, mistral, qwen2, qwen3)"
        );
    }
}
