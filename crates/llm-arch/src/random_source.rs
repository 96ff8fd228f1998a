//! [`RandomSource`]: random weights of a model shape, generated tensor by tensor as the loader
//! asks for them — the way to build a Llama-3.1-8B-shaped model on a machine that cannot hold
//! it in f32 (and that reaches no model hub): wrapped in a
//! [`QuantizingSource`](crate::quantizing_source::QuantizingSource), each projection is
//! generated, encoded and dropped before the next exists.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::checkpoint::{HostTensor, TensorSource};
use crate::{ModelConfig, Result};

/// Values per independently seeded stream: the values depend on the seed and the tensor name
/// only, never on the number of threads generating them.
const CHUNK: usize = 1 << 16;

/// HF-named tensors of `config`'s shape: norms 1, biases 0, every other weight uniform with
/// standard deviation 0.02 (HF's `initializer_range`; uniform rather than normal because eight
/// billion normal draws take minutes, and a benchmark's weights need the scale, not the law).
#[derive(Debug, Clone)]
pub struct RandomSource {
    config: ModelConfig,
    seed: u64,
    origin: PathBuf,
}

impl RandomSource {
    /// Random tensors for `config`, reproducible from `seed`.
    pub fn new(config: &ModelConfig, seed: u64) -> Self {
        Self {
            config: config.clone(),
            seed,
            origin: PathBuf::from(format!("<random {} weights>", config.model_type)),
        }
    }

    /// The PyTorch shape of tensor `name` and whether it is a norm weight (ones), a bias
    /// (zeros) or a random weight; `None` for a name this config has no tensor for.
    fn spec(&self, name: &str) -> Option<(Vec<usize>, Fill)> {
        let c = &self.config;
        let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        match name {
            "model.embed_tokens.weight" => return Some((vec![v, h], Fill::Random)),
            "model.norm.weight" => return Some((vec![h], Fill::Ones)),
            "lm_head.weight" if !c.tie_word_embeddings => {
                return Some((vec![v, h], Fill::Random));
            }
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (layer, tensor) = rest.split_once('.')?;
        if layer.parse::<usize>().ok()? >= c.num_hidden_layers {
            return None;
        }
        let (b, qk_norm) = (c.biases(), c.qk_norm());
        let (bias, o_bias, mlp_bias) = (b.qkv, b.o, b.mlp);
        Some(match tensor {
            "input_layernorm.weight" | "post_attention_layernorm.weight" => (vec![h], Fill::Ones),
            "self_attn.q_norm.weight" | "self_attn.k_norm.weight" if qk_norm => {
                (vec![c.head_dim], Fill::Ones)
            }
            "self_attn.q_proj.weight" => (vec![q, h], Fill::Random),
            "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => (vec![kv, h], Fill::Random),
            "self_attn.o_proj.weight" => (vec![h, q], Fill::Random),
            "self_attn.q_proj.bias" if bias => (vec![q], Fill::Zeros),
            "self_attn.k_proj.bias" | "self_attn.v_proj.bias" if bias => (vec![kv], Fill::Zeros),
            "self_attn.o_proj.bias" if o_bias => (vec![h], Fill::Zeros),
            "mlp.gate_proj.bias" | "mlp.up_proj.bias" if mlp_bias => (vec![i], Fill::Zeros),
            "mlp.down_proj.bias" if mlp_bias => (vec![h], Fill::Zeros),
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => (vec![i, h], Fill::Random),
            "mlp.down_proj.weight" => (vec![h, i], Fill::Random),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Fill {
    Ones,
    Zeros,
    Random,
}

/// SplitMix64: a tiny, fast generator whose streams are independent enough for random
/// weights; seeded per chunk so that generation parallelises deterministically.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of the name, mixed with the seed: each tensor its own stream.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn uniform(n: usize, seed: u64, std: f32) -> Vec<f32> {
    // Uniform on [-a, a) has standard deviation a / √3.
    let a = std * 3f32.sqrt();
    let scale = 2.0 * a / (1u64 << 24) as f32;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, values)| {
            let mut state = seed ^ (chunk as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
            for v in values {
                *v = (splitmix(&mut state) >> 40) as f32 * scale - a;
            }
        });
    out
}

impl TensorSource for RandomSource {
    fn origin(&self) -> &Path {
        &self.origin
    }

    fn take(&mut self, name: &str) -> Result<Option<HostTensor>> {
        let Some((shape, fill)) = self.spec(name) else {
            return Ok(None);
        };
        let n = shape.iter().product();
        let data = match fill {
            Fill::Ones => vec![1.0; n],
            Fill::Zeros => vec![0.0; n],
            Fill::Random => uniform(n, tensor_seed(self.seed, name), 0.02),
        };
        Ok(Some(HostTensor { shape, data }))
    }

    /// Nothing is ever left over: the source makes what is asked for and nothing else.
    fn remaining(&self) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_have_the_stated_scale_and_do_not_depend_on_the_thread_count() {
        let config = ModelConfig::tiny(300, 64, 2, 4, 2);
        let mut source = RandomSource::new(&config, 7);
        let t = source
            .take("model.layers.1.mlp.down_proj.weight")
            .unwrap()
            .unwrap();
        assert_eq!(t.shape, vec![64, 128]);
        let n = t.data.len() as f64;
        let mean = t.data.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let std = (t
            .data
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        assert!(
            mean.abs() < 2e-3 && (std - 0.02).abs() < 1e-3,
            "mean {mean}, std {std}"
        );

        // The same tensor from a one-thread pool; another name or seed differs.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let again = pool.install(|| {
            RandomSource::new(&config, 7)
                .take("model.layers.1.mlp.down_proj.weight")
                .unwrap()
                .unwrap()
        });
        assert_eq!(t, again);
        let other = RandomSource::new(&config, 8)
            .take("model.layers.1.mlp.down_proj.weight")
            .unwrap()
            .unwrap();
        assert_ne!(t.data, other.data);
        assert_eq!(
            source.take("model.norm.weight").unwrap().unwrap().data,
            vec![1.0; 64]
        );
        assert!(
            source
                .take("model.layers.2.mlp.up_proj.weight")
                .unwrap()
                .is_none()
        );
        assert!(source.take("lm_head.bias").unwrap().is_none());
    }
}
