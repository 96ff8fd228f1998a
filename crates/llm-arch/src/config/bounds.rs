//! The ranges a `config.json`'s numbers must fall in, checked once when the config is read so
//! a model with `rms_norm_eps: -1` or `rope_theta: 0` is refused at load instead of producing
//! NaN logits and empty text. Sizes are multiplied with checked arithmetic: release builds
//! have no overflow checks, and a parameter count that wraps would be printed as if real.

use std::path::Path;

use super::{ModelConfig, RopeScaling};
use crate::{Error, Result};

fn invalid(origin: &Path, key: &str, reason: String) -> Error {
    Error::InvalidConfig {
        path: origin.to_path_buf(),
        key: key.to_string(),
        reason,
    }
}

/// `value` must be finite and strictly positive.
fn positive_f64(origin: &Path, key: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(
            origin,
            key,
            format!("{value} is out of range (must be a finite number > 0)"),
        ))
    }
}

fn positive_usize(origin: &Path, key: &str, value: usize) -> Result<()> {
    if value > 0 {
        Ok(())
    } else {
        Err(invalid(
            origin,
            key,
            "0 is out of range (must be ≥ 1)".into(),
        ))
    }
}

impl ModelConfig {
    /// Check every number against the range a Llama-family model can run with; `origin`
    /// names the file in errors. [`ModelConfig::from_json`] calls it, so a config read from a
    /// file has passed; call it again after editing the fields by hand.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the key and its allowed range.
    pub fn validate(&self, origin: &Path) -> Result<()> {
        if crate::family::Family::from_model_type(&self.model_type).is_none() {
            return Err(Error::UnsupportedModelType {
                path: origin.to_path_buf(),
                model_type: self.model_type.clone(),
                supported: crate::family::supported_model_types(),
            });
        }
        // `num_hidden_layers` may be 0: embedding, norm and head alone still run (HF allows
        // it, and the trainer's stand-in model is one).
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            positive_usize(origin, key, value)?;
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(invalid(
                origin,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(invalid(
                origin,
                "head_dim",
                format!("{} is out of range (must be even and ≥ 2)", self.head_dim),
            ));
        }
        if let Some(w) = self.sliding_window {
            positive_usize(origin, "sliding_window", w)?;
        }
        positive_f64(origin, "rms_norm_eps", self.rms_norm_eps)?;
        positive_f64(origin, "rope_theta", self.rope_theta)?;
        match &self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                positive_f64(origin, "rope_scaling.factor", *factor)?;
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                positive_f64(origin, "rope_scaling.factor", *factor)?;
                positive_f64(origin, "rope_scaling.low_freq_factor", *low_freq_factor)?;
                positive_f64(origin, "rope_scaling.high_freq_factor", *high_freq_factor)?;
                // The smoothing divides by their difference (NaN frequencies when equal).
                if high_freq_factor <= low_freq_factor {
                    return Err(invalid(
                        origin,
                        "rope_scaling.high_freq_factor",
                        format!(
                            "{high_freq_factor} is out of range (must be > low_freq_factor \
                             {low_freq_factor})"
                        ),
                    ));
                }
                positive_usize(
                    origin,
                    "rope_scaling.original_max_position_embeddings",
                    *original_max_position_embeddings,
                )?;
            }
        }
        if self
            .num_attention_heads
            .checked_mul(self.head_dim)
            .is_none()
        {
            return Err(invalid(
                origin,
                "head_dim",
                format!(
                    "num_attention_heads {} × head_dim {} overflows",
                    self.num_attention_heads, self.head_dim
                ),
            ));
        }
        if self.checked_num_parameters().is_none() {
            return Err(invalid(
                origin,
                "vocab_size",
                format!(
                    "the sizes (vocab_size {}, hidden_size {}, intermediate_size {}, \
                     num_hidden_layers {}, head_dim {}) give a parameter count that overflows \
                     (past {})",
                    self.vocab_size,
                    self.hidden_size,
                    self.intermediate_size,
                    self.num_hidden_layers,
                    self.head_dim,
                    usize::MAX
                ),
            ));
        }
        Ok(())
    }

    /// Bias elements of one decoder layer (those [`ModelConfig::biases`] names: q, k, v; o;
    /// gate, up, down), or `None` when it overflows `usize`.
    pub fn checked_bias_per_layer(&self) -> Option<usize> {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads.checked_mul(hd)?;
        let kv = self.num_key_value_heads.checked_mul(hd)?;
        let b = self.biases();
        let qkv = if b.qkv {
            q.checked_add(kv.checked_mul(2)?)?
        } else {
            0
        };
        let o = if b.o { h } else { 0 };
        let mlp = if b.mlp {
            i.checked_mul(2)?.checked_add(h)?
        } else {
            0
        };
        qkv.checked_add(o)?.checked_add(mlp)
    }

    /// Elements of one decoder layer's vectors: its two norms, its biases and Qwen3's
    /// per-head `q_norm` / `k_norm`; `None` when it overflows `usize`.
    pub fn checked_vectors_per_layer(&self) -> Option<usize> {
        let qk_norm = if self.qk_norm() {
            self.head_dim.checked_mul(2)?
        } else {
            0
        };
        self.hidden_size
            .checked_mul(2)?
            .checked_add(self.checked_bias_per_layer()?)?
            .checked_add(qk_norm)
    }

    /// Parameter count of a model with this config, or `None` when it overflows `usize`.
    pub fn checked_num_parameters(&self) -> Option<usize> {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads.checked_mul(hd)?;
        let kv = self.num_key_value_heads.checked_mul(hd)?;
        let vectors = self.checked_vectors_per_layer()?;
        // q, k, v, o projections; gate, up, down; norms and biases.
        let attn = h.checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?)?;
        let mlp = h.checked_mul(i)?.checked_mul(3)?;
        let layer = attn.checked_add(mlp)?.checked_add(vectors)?;
        let embed = self.vocab_size.checked_mul(h)?;
        let heads = if self.tie_word_embeddings { 1 } else { 2 };
        embed
            .checked_mul(heads)?
            .checked_add(self.num_hidden_layers.checked_mul(layer)?)?
            .checked_add(h)
    }
}
