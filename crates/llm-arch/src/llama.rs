//! The Llama-family decoder (Llama 2/3.x, Mistral, SmolLM/SmolLM2, Qwen2/Qwen2.5, Qwen3), named
//! after the HF keys: `model.embed_tokens`, `model.layers.N.{input_layernorm,
//! self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm (Qwen3), post_attention_layernorm,
//! mlp.{gate,up,down}_proj}`, `model.norm`, `lm_head`. What differs between the families
//! (biases, per-head norms, which layers slide) is read from [`crate::family`].
//!
//! Linear weights are stored burn-style, `[in, out]` (the transpose of PyTorch's `[out, in]`);
//! [`crate::checkpoint`] transposes on load and save.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};
use temper_backend::kernels;
use temper_backend::kernels::reference::repeat_kv;
use temper_backend::{HalfType, QuantizedWeight, autocast_type};

use crate::cache::{KvCache, LayerCache};
use crate::config::ModelConfig;
use crate::layer_checkpointing::CheckpointTape;
use crate::projection::Projection;
use crate::rope::RotaryEmbedding;
use crate::{Error, Result};

/// RMSNorm with HF's parameter name (`weight`, burn calls it `gamma`).
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    /// `[..., d]` → `[..., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kernels::rms_norm(x, self.weight.val(), self.eps)
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Projection,
    pub up_proj: Projection,
    pub down_proj: Projection,
}

impl Mlp {
    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = self.gate_proj.forward(x.clone());
        self.down_proj
            .forward(kernels::swiglu(gate, self.up_proj.forward(x)))
    }
}

/// Grouped-query self-attention with half-split RoPE.
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Projection,
    pub k_proj: Projection,
    pub v_proj: Projection,
    pub o_proj: Projection,
    /// Qwen3's RMSNorm over each query head (`[head_dim]`), before RoPE.
    pub q_norm: Option<RmsNorm>,
    /// Qwen3's RMSNorm over each key head (`[head_dim]`), before RoPE.
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// `x` `[batch, seq, hidden]`, `cos`/`sin` `[batch, seq, head_dim/2]`, `mask`
    /// `[batch, 1, seq, past + seq]` (true = masked; `None` = plain causal).
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: Tensor<3>,
        sin: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let mut q = self.q_proj.forward(x.clone()).reshape([b, s, h, hd]);
        let mut k = self.k_proj.forward(x.clone()).reshape([b, s, kvh, hd]);
        if let Some(norm) = &self.q_norm {
            q = norm.forward(q);
        }
        if let Some(norm) = &self.k_norm {
            k = norm.forward(k);
        }
        let v = self.v_proj.forward(x).reshape([b, s, kvh, hd]);
        // Sequence-major `[b, s, heads, hd]` throughout: the fused kernels read it directly and
        // the output reshapes to `[b, s, hidden]` without a transpose.
        let (q, k) = kernels::rotary_qk(q, k, cos, sin);
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        let out = match mask {
            None => {
                // Training sets the products' type through autocast; a model loaded in a
                // half type computes attention's products in it too (as torch's would).
                let half = autocast_type().or(HalfType::of(self.o_proj.weight.val().dtype()));
                kernels::causal_attention(q, k, v, half)
            }
            Some(mask) => {
                let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
                let (k, v) = (repeat_kv(k, h / kvh), repeat_kv(v, h / kvh));
                let options = AttentionModuleOptions {
                    scale: None,
                    softcap: None,
                    is_causal: false,
                };
                attention(q, k, v, Some(mask), None, options).swap_dims(1, 2)
            }
        };
        self.o_proj.forward(out.reshape([b, s, h * hd]))
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        cos: Tensor<3>,
        sin: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), cos, sin, mask, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// The decoder stack without the LM head (HF `LlamaModel`).
#[derive(Module, Debug)]
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

/// Inputs of a forward pass besides the token ids.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// `[batch, past + seq]`, 1 for real tokens and 0 for padding (left or right). `None`: no
    /// padding.
    pub attention_mask: Option<Vec<Vec<u8>>>,
    /// `[batch, seq]` explicit positions. `None`: derived from the attention mask
    /// (`cumsum - 1`, like HF `generate`) or `past..past + seq`.
    pub position_ids: Option<Vec<Vec<usize>>>,
    /// `[batch, 1, seq, past + seq]`, true = masked: who attends to whom, given whole (HF's
    /// 4-D custom attention mask, inverted). It replaces the mask built from causality and
    /// `attention_mask`, so several sequences can share one row (packed continuations of one
    /// context); give `position_ids` with it. Every query must see at least one key. Not
    /// combined with a sliding window in reach (an error).
    pub custom_mask: Option<Tensor<4, Bool>>,
}

/// A decoder with its language-model head (HF `LlamaForCausalLM` / `MistralForCausalLM`).
///
/// With `tie_word_embeddings` (SmolLM2) there is no `lm_head` and logits use the transposed
/// token embedding.
#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    pub model: LlamaModel,
    pub lm_head: Option<Linear>,
    #[module(skip)]
    config: ModelConfig,
    #[module(skip)]
    rope: RotaryEmbedding,
    /// Layer-wise gradient checkpointing, when enabled (see [`CheckpointTape`]).
    #[module(skip)]
    checkpoint_tape: Option<CheckpointTape>,
    /// The tied embedding in a GGUF's own blocks, for decode ([`Self::lm_head`]).
    #[module(skip)]
    decode_head: Option<QuantizedWeight>,
}

fn linear(w: Tensor<2>) -> Linear {
    Linear {
        weight: Param::from_tensor(w),
        bias: None,
    }
}

/// A random `[in, out]` projection with a zero bias when `bias`.
fn projection(w: Tensor<2>, bias: bool) -> Projection {
    let out = w.dims()[1];
    let device = w.device();
    Linear {
        weight: Param::from_tensor(w),
        bias: bias.then(|| Param::from_tensor(Tensor::zeros([out], &device))),
    }
    .into()
}

/// The attention masks of one forward pass: one for full-attention layers and, when some
/// layer slides, one with the window (`None`: plain causal masking is exact).
#[derive(Debug, Clone)]
pub(crate) struct LayerMasks {
    full: Option<Tensor<4, Bool>>,
    sliding: Option<Tensor<4, Bool>>,
}

impl LayerMasks {
    /// The mask of decoder layer `layer`.
    pub(crate) fn of(&self, config: &ModelConfig, layer: usize) -> Option<Tensor<4, Bool>> {
        if config.layer_window(layer).is_some() {
            self.sliding.clone()
        } else {
            self.full.clone()
        }
    }
}

impl LlamaForCausalLM {
    /// A randomly initialised model (normal, std 0.02 like HF's `initializer_range`; norms 1).
    pub fn init(config: &ModelConfig, device: &Device) -> Self {
        let rand =
            |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 0.02), device);
        let norm_of = |d: usize| RmsNorm {
            weight: Param::from_tensor(Tensor::ones([d], device)),
            eps: config.rms_norm_eps,
        };
        let norm = || norm_of(config.hidden_size);
        let (hs, hd) = (config.hidden_size, config.head_dim);
        let (bias, qk_norm) = (config.biases(), config.qk_norm());
        let (q, kv) = (
            config.num_attention_heads * hd,
            config.num_key_value_heads * hd,
        );
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: projection(rand([hs, q]), bias.qkv),
                    k_proj: projection(rand([hs, kv]), bias.qkv),
                    v_proj: projection(rand([hs, kv]), bias.qkv),
                    o_proj: projection(rand([q, hs]), bias.o),
                    q_norm: qk_norm.then(|| norm_of(hd)),
                    k_norm: qk_norm.then(|| norm_of(hd)),
                    num_heads: config.num_attention_heads,
                    num_kv_heads: config.num_key_value_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: projection(rand([hs, config.intermediate_size]), bias.mlp),
                    up_proj: projection(rand([hs, config.intermediate_size]), bias.mlp),
                    down_proj: projection(rand([config.intermediate_size, hs]), bias.mlp),
                },
            })
            .collect();
        let model = LlamaModel {
            embed_tokens: Embedding {
                weight: Param::from_tensor(rand([config.vocab_size, hs])),
            },
            layers,
            norm: norm(),
        };
        let lm_head = (!config.tie_word_embeddings).then(|| linear(rand([hs, config.vocab_size])));
        Self::from_parts(config.clone(), model, lm_head)
    }

    /// Assemble a model from loaded modules.
    pub fn from_parts(config: ModelConfig, model: LlamaModel, lm_head: Option<Linear>) -> Self {
        let rope = RotaryEmbedding::new(&config);
        Self {
            model,
            lm_head,
            config,
            rope,
            checkpoint_tape: None,
            decode_head: None,
        }
    }

    /// The model with `head` (the tied token embedding `[vocab, hidden]` in ggml blocks, as a
    /// GGUF stores it) as its LM head for decode steps: up to 4 positions whose hidden states
    /// need no gradient, while the embedding is frozen, outside autocast (whose products
    /// decode the blocks row by row). The f32 embedding (113 MB for SmolLM2-135M) was read
    /// whole for every token; its Q8_0 blocks are 30 MB, dotted with 8-bit inputs as
    /// llama.cpp does (logits differ by the input rounding). Prefill and training keep the
    /// f32 head.
    pub fn with_decode_head(mut self, head: QuantizedWeight) -> Self {
        self.decode_head = Some(head);
        self
    }

    /// The LM head decode steps read ([`Self::with_decode_head`]), if any.
    pub fn decode_head(&self) -> Option<&QuantizedWeight> {
        self.decode_head.as_ref()
    }

    /// Layer-wise gradient checkpointing (HF's `gradient_checkpointing_enable()`): training
    /// forwards keep only each decoder layer's input in `tape`, and the caller finishes every
    /// `loss.backward()` with [`CheckpointTape::backward`]. `None` turns it off. Inference (no
    /// autodiff) and cached forwards are not affected.
    pub fn with_layer_checkpointing(mut self, tape: Option<CheckpointTape>) -> Self {
        self.checkpoint_tape = tape;
        self
    }

    /// The tape of [`with_layer_checkpointing`](Self::with_layer_checkpointing), if on.
    pub fn checkpoint_tape(&self) -> Option<&CheckpointTape> {
        self.checkpoint_tape.as_ref()
    }

    /// The token embeddings of `input_ids` `[batch, seq]` in the activation dtype.
    pub(crate) fn embed(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        let x = self.model.embed_tokens.forward(input_ids);
        let dtype = temper_backend::kernels::activation_dtype(
            &x.device(),
            self.model.embed_tokens.weight.val().dtype(),
        );
        if x.dtype() == dtype { x } else { x.cast(dtype) }
    }

    /// The architecture config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.model.embed_tokens.weight.val().device()
    }

    /// Logits for every position: `input_ids` `[batch, seq]` → `[batch, seq, vocab]`.
    ///
    /// # Errors
    /// Inconsistent mask / position shapes.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        options: &ForwardOptions,
    ) -> Result<Tensor<3>> {
        let hidden = self.forward_hidden(input_ids, options, None)?;
        Ok(self.lm_head(hidden))
    }

    /// Like [`forward`](Self::forward), appending to `cache` (prefill or decode steps). The
    /// attention mask, when given, covers the cached positions and the new ones.
    ///
    /// # Errors
    /// Inconsistent mask / position shapes or a cache built for another model.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<2, Int>,
        options: &ForwardOptions,
        cache: &mut KvCache,
    ) -> Result<Tensor<3>> {
        let hidden = self.forward_hidden(input_ids, options, Some(cache))?;
        Ok(self.lm_head(hidden))
    }

    /// The final-norm hidden states `[batch, seq, hidden]` (no LM head).
    ///
    /// # Errors
    /// See [`forward_cached`](Self::forward_cached).
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<2, Int>,
        options: &ForwardOptions,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        let [b, s] = input_ids.dims();
        if b == 0 || s == 0 {
            return Err(Error::InvalidInput(format!(
                "input_ids must be non-empty, got [{b}, {s}]"
            )));
        }
        // An id past the vocabulary would index out of the embedding table (a panic in the
        // backend); the ids are few, so checking them on the host is cheap.
        let max_id = input_ids.clone().max().into_scalar::<i64>();
        let min_id = input_ids.clone().min().into_scalar::<i64>();
        if min_id < 0 || max_id >= self.config.vocab_size as i64 {
            let bad = if min_id < 0 { min_id } else { max_id };
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let past = cache.as_ref().map_or(0, |c| c.len);
        if let Some(c) = cache.as_ref()
            && c.layers.len() != self.model.layers.len()
        {
            return Err(Error::InvalidInput(format!(
                "KV cache has {} layers, the model {}",
                c.layers.len(),
                self.model.layers.len()
            )));
        }
        let device = self.device();
        let positions = self.positions(b, s, past, options)?;
        let (cos, sin) = self.rope.tables(&positions, &device);
        // Activations are f32 on the CPU whatever the weights' storage (see
        // `temper_backend::kernels::activation_dtype`).
        let dtype = temper_backend::kernels::activation_dtype(
            &device,
            self.model.embed_tokens.weight.val().dtype(),
        );
        let (cos, sin) = (cos.cast(dtype), sin.cast(dtype));
        let padding = options.attention_mask.as_deref();
        let layers = self.model.layers.len();
        // One window for every sliding layer (HF's config has one `sliding_window`).
        let window = (0..layers).find_map(|i| self.config.layer_window(i));
        let masks = match &options.custom_mask {
            Some(mask) => {
                let mask = check_custom_mask(mask, b, s, past, window)?;
                LayerMasks {
                    full: Some(mask.clone()),
                    sliding: Some(mask),
                }
            }
            None => LayerMasks {
                full: match (0..layers).any(|i| self.config.layer_window(i).is_none()) {
                    true => build_mask(b, s, past, padding, None, &device)?,
                    false => None,
                },
                sliding: match window {
                    Some(w) => build_mask(b, s, past, padding, Some(w), &device)?,
                    None => None,
                },
            },
        };
        if let Some(tape) = &self.checkpoint_tape
            && cache.is_none()
            && device.is_autodiff()
        {
            let x = self.embed(input_ids.clone());
            let x = tape.record(self, input_ids, x, cos, sin, masks);
            return Ok(self.model.norm.forward(x));
        }
        let mut x = self.embed(input_ids);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
            let mask = masks.of(&self.config, i);
            x = layer.forward(x, cos.clone(), sin.clone(), mask, layer_cache);
        }
        if let Some(c) = cache {
            c.len += s;
        }
        Ok(self.model.norm.forward(x))
    }

    /// Logits for hidden states `[batch, seq, hidden]` → `[batch, seq, vocab]`.
    pub fn lm_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, s, h] = hidden.dims();
                if let Some(head) = &self.decode_head
                    && b * s <= 4
                    && autocast_type().is_none()
                    && !hidden.is_require_grad()
                    && !self.model.embed_tokens.weight.val().is_require_grad()
                {
                    let v = head.shape()[0];
                    return kernels::quant_linear(hidden.reshape([b * s, h]), head, None)
                        .reshape([b, s, v]);
                }
                let w = self.model.embed_tokens.weight.val();
                let v = w.dims()[0];
                temper_backend::kernels::matmul(hidden.reshape([b * s, h]), w.transpose())
                    .reshape([b, s, v])
            }
        }
    }

    fn positions(
        &self,
        b: usize,
        s: usize,
        past: usize,
        options: &ForwardOptions,
    ) -> Result<Vec<Vec<usize>>> {
        if let Some(p) = &options.position_ids {
            if p.len() != b || p.iter().any(|r| r.len() != s) {
                return Err(Error::InvalidInput(format!(
                    "position_ids must be [{b}, {s}]"
                )));
            }
            return Ok(p.clone());
        }
        match &options.attention_mask {
            None => Ok(vec![(past..past + s).collect(); b]),
            Some(mask) => {
                check_mask_shape(mask, b, past + s)?;
                Ok(mask
                    .iter()
                    .map(|row| {
                        let mut seen = 0usize;
                        let all: Vec<usize> = row
                            .iter()
                            .map(|&m| {
                                seen += usize::from(m != 0);
                                seen.saturating_sub(1)
                            })
                            .collect();
                        all[past..].to_vec()
                    })
                    .collect())
            }
        }
    }
}

fn check_mask_shape(mask: &[Vec<u8>], b: usize, total: usize) -> Result<()> {
    if mask.len() != b || mask.iter().any(|r| r.len() != total) {
        return Err(Error::InvalidInput(format!(
            "attention_mask must be [batch {b}, past + seq {total}], got [{}, {}]",
            mask.len(),
            mask.first().map_or(0, Vec::len)
        )));
    }
    Ok(())
}

/// A caller's whole mask, checked against the input's shape (a wrong shape would fail deep in
/// the attention kernel) and refused where the model's sliding window would also apply.
fn check_custom_mask(
    mask: &Tensor<4, Bool>,
    b: usize,
    s: usize,
    past: usize,
    window: Option<usize>,
) -> Result<Tensor<4, Bool>> {
    let dims = mask.dims();
    if dims != [b, 1, s, past + s] {
        return Err(Error::InvalidInput(format!(
            "custom_mask must be [batch {b}, 1, seq {s}, past + seq {}], got {dims:?}",
            past + s
        )));
    }
    if let Some(w) = window
        && w < past + s
    {
        return Err(Error::InvalidInput(format!(
            "custom_mask with a sliding window of {w} in reach ({} positions) is not supported",
            past + s
        )));
    }
    Ok(mask.clone())
}

/// The boolean attention mask `[batch, 1, seq, past + seq]` (true = masked), or `None` when
/// plain causal masking is exact (no padding, no sliding window in reach).
fn build_mask(
    b: usize,
    s: usize,
    past: usize,
    padding: Option<&[Vec<u8>]>,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor<4, Bool>>> {
    let total = past + s;
    let window = window.filter(|&w| w < total);
    let padding = match padding {
        Some(p) => {
            check_mask_shape(p, b, total)?;
            // Right padding alone (training batches) needs no mask when nothing is cached:
            // causal masking already hides the trailing padding from every real token, and
            // what padded positions compute is never read (their labels are ignored). That
            // keeps training on the fused causal kernel.
            let right_only = past == 0
                && p.iter()
                    .all(|r| !r.windows(2).any(|w| w[0] == 0 && w[1] != 0));
            Some(p).filter(|p| !right_only && p.iter().any(|r| r.contains(&0)))
        }
        None => None,
    };
    if padding.is_none() && window.is_none() {
        return Ok(None);
    }
    let mut data = Vec::with_capacity(b * s * total);
    for row in 0..b {
        for q in 0..s {
            let qi = past + q;
            for k in 0..total {
                let future = k > qi;
                // A padded query attends to itself only, so its softmax row is never empty.
                let pad = padding.is_some_and(|p| p[row][k] == 0 && k != qi);
                let out_of_window = window.is_some_and(|w| qi - k.min(qi) >= w);
                data.push(future || pad || out_of_window);
            }
        }
    }
    Ok(Some(Tensor::from_data(
        TensorData::new(data, [b, 1, s, total]),
        device,
    )))
}
