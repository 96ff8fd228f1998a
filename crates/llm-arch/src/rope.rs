//! Rotary position embedding tables (the frequencies; the rotation itself is
//! [`temper_backend::kernels::rotary`]).

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{ModelConfig, RopeScaling};

/// Inverse frequencies of a Llama-family RoPE, computed like HF in f32 (`1 / theta^(2i/d)`),
/// with Llama 3.1 or linear scaling applied.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    /// Frequencies for `config.head_dim`, `config.rope_theta` and `config.rope_scaling`.
    pub fn new(config: &ModelConfig) -> Self {
        let dim = config.head_dim;
        let base = config.rope_theta;
        let mut inv_freq: Vec<f64> = (0..dim / 2)
            // HF: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), in f32.
            .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / dim as f32) as f64)
            .collect();
        match &config.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv_freq.iter_mut().for_each(|f| *f /= factor),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in &mut inv_freq {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    *f = if wavelen < high_wavelen {
                        *f
                    } else if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * *f / factor + smooth * *f
                    };
                }
            }
        }
        Self {
            inv_freq: inv_freq.into_iter().map(|f| f as f32).collect(),
        }
    }

    /// `cos` and `sin` tables `[batch, seq, head_dim/2]` for the given positions
    /// (`positions[b][s]`), on `device`.
    pub fn tables(&self, positions: &[Vec<usize>], device: &Device) -> (Tensor<3>, Tensor<3>) {
        let batch = positions.len();
        let seq = positions.first().map_or(0, Vec::len);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(batch * seq * half);
        let mut sin = Vec::with_capacity(batch * seq * half);
        for row in positions {
            for &p in row {
                for &f in &self.inv_freq {
                    // f32 product like HF's `inv_freq @ position_ids` in float32.
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [batch, seq, half];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// The inverse frequencies.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_matches_the_hf_piecewise_rule() {
        let mut c = ModelConfig::tiny(16, 128, 1, 1, 1);
        c.rope_theta = 500000.0;
        let plain = RotaryEmbedding::new(&c);
        c.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let scaled = RotaryEmbedding::new(&c);
        // Highest frequency (wavelength 2π < 2048): unchanged. Lowest: divided by 8.
        assert_eq!(plain.inv_freq()[0], scaled.inv_freq()[0]);
        let last = plain.inv_freq().len() - 1;
        assert!((scaled.inv_freq()[last] - plain.inv_freq()[last] / 8.0).abs() < 1e-12);
        // Medium band lies between the two.
        for (p, s) in plain.inv_freq().iter().zip(scaled.inv_freq()) {
            assert!(*s <= *p && *s >= *p / 8.0 - 1e-12);
        }
    }
}
