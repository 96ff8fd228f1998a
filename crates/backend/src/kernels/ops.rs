//! The fused ops of the Llama family as one burn backend extension.
//!
//! Each op has a forward and, where autodiff needs one, a backward entry. Backends implement
//! them as follows:
//!
//! * `Flex` ([`super::flex`]): fused CPU kernels (f32), the portable tensor-op reference
//!   ([`super::reference`]) for other dtypes;
//! * `Cube` ([`super::cube`], feature `gpu-kernels`): `#[cube]` kernels, one source for wgpu
//!   (Vulkan/Metal/DX12), CUDA and ROCm; `Fusion` wraps them lazily so they join burn's fused
//!   stream. The LM head's log-softmax runs as the default bodies here: its tile loop in the
//!   backend's own primitives ([`super::lm_head`]), which `Fusion` fuses like any tensor ops;
//! * `Autodiff<B, C>` ([`super::autodiff`]): custom backward nodes that call the backward
//!   entries of the inner backend, so no intermediate of the tensor-op composition is kept.
//!
//! Shapes are fixed per method (the public wrappers in [`super`] reshape): row-major,
//! contiguous or not (implementations make inputs contiguous as needed).

// `backend_extension` expands the signatures into dispatch arms for compiled-out backends
// that ignore their arguments.
#![allow(unused_variables)]

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};

use super::lm_head::{self, VocabTiling};
use crate::HalfType;

/// What [`FusedOps::lm_head_logps`] returns: log-probs, log-sum-exp, the optional
/// (entropy, argmax) statistics and the optional kept logits.
pub(crate) type LmHeadOutput<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    Option<(FloatTensor<B>, IntTensor<B>)>,
    Option<FloatTensor<B>>,
);

/// Fused RMSNorm, rotary embedding, SwiGLU, causal attention and the LM head's log-softmax.
/// See the module docs.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(feature = "gpu-kernels"),
    Fusion: cfg(all(feature = "gpu-kernels", feature = "fusion")),
    Autodiff
)]
pub trait FusedOps: Backend {
    /// RMSNorm: `x` `[rows, d]`, `weight` `[d]` → `[rows, d]`.
    #[fusion(dtype = x, shape = x)]
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;

    /// Gradients of [`FusedOps::rms_norm`] wrt `x` (`[rows, d]`) and `weight` (`[d]`) given
    /// the output gradient `grad` `[rows, d]`.
    #[fusion(meta = |x, weight, _grad, _eps| (x.clone(), weight.clone()))]
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Half-split rotary embedding: `x` `[b, s, h, hd]`, `cos`/`sin` `[b, s, hd/2]` → like `x`.
    /// Its gradient is the same rotation with `-sin`.
    #[fusion(dtype = x, shape = x)]
    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// [`FusedOps::rotary`] of queries `[b, s, h, hd]` and keys `[b, s, kv_heads, hd]` in one
    /// launch.
    #[fusion(meta = |q, k, _cos, _sin| (q.clone(), k.clone()))]
    fn rotary_qk(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// SwiGLU `silu(gate) * up`, elementwise over equal shapes.
    #[fusion(dtype = gate, shape = gate)]
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradients of [`FusedOps::swiglu`] wrt `gate` and `up` given the output gradient.
    #[fusion(meta = |gate, up, _grad| (gate.clone(), up.clone()))]
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Causal grouped-query attention, sequence-major, scale `1/sqrt(d)`: `q` `[b, s, h, d]`,
    /// `k`/`v` `[b, t, kv_heads, d]` with `t ≥ s` (query `i` sees keys `0..=t-s+i`) →
    /// `[b, s, h, d]`.
    ///
    /// `half`: the two products (`Q·Kᵀ`, `P·V`) round their operands to this type and
    /// accumulate in f32, the softmax stays in f32 (autocast; the probabilities are rounded
    /// as flash attention rounds them for its second product). Backends without half-type
    /// products (the GPU kernels: f32 there) may ignore it.
    #[fusion(dtype = q, shape = q)]
    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        half: Option<HalfType>,
    ) -> FloatTensor<Self>;

    /// [`FusedOps::causal_attention`] that also returns each query row's log-sum-exp of its
    /// scaled scores, `[b, h, s]` in f32: all the backward pass needs besides the inputs.
    #[fusion(meta = |q, _k, _v, _half| {
        let [b, s, h, _] = q.shape.dims::<4>();
        (
            q.clone(),
            burn::backend::fusion::custom::TensorSpec::new(
                burn::tensor::Shape::new([b, h, s]),
                burn::tensor::DType::F32,
            ),
        )
    })]
    fn causal_attention_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        half: Option<HalfType>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`FusedOps::causal_attention`] wrt `q`, `k`, `v`, recomputing the scores
    /// from the inputs, the forward output `out` and its `lse`; `grad` is the output gradient.
    /// `half` as in the forward: its five products round their operands (the recomputed
    /// probabilities and the score gradient included) and accumulate in f32.
    #[allow(clippy::too_many_arguments)]
    #[fusion(meta = |q, k, v, _out, _lse, _grad, _half| (q.clone(), k.clone(), v.clone()))]
    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        half: Option<HalfType>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The LM head's per-token log-softmax in vocabulary tiles (see [`super::lm_head`]):
    /// `hidden` `[rows, hidden]`, `weight` `[hidden, vocab]` (any strides: a tied embedding's
    /// transposed view is not copied), `targets` `[rows]` (ids inside the vocabulary) →
    /// `(log softmax(h·W)[target], logsumexp(h·W))`, both `[rows]` in f32 (f64 for f64
    /// inputs), never materialising `[rows, vocab]`.
    ///
    /// `with_stats` adds each row's softmax entropy and first argmax (detached). With
    /// `keep_logits` a backend may keep the `rows × vocab` logits (f32) for
    /// [`FusedOps::lm_head_logps_backward`] to skip its recompute gemm: Flex's kernel does (or
    /// under autodiff its node keeps them); the tile loop never does.
    ///
    /// The default body is the tile loop in this backend's primitives; under `Autodiff` the
    /// custom node keeps the inputs and the log-sum-exp, not the tiles.
    // The macro needs the output tuple spelled out: it reads an alias (`LmHeadOutput<Self>`)
    // as an extension type.
    #[allow(clippy::type_complexity)]
    #[fusion(default)]
    fn lm_head_logps(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        tiling: VocabTiling,
        with_stats: bool,
        keep_logits: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        Option<(FloatTensor<Self>, IntTensor<Self>)>,
        Option<FloatTensor<Self>>,
    ) {
        let (logps, lse, stats) =
            lm_head::forward::<Self>(hidden, weight, targets, tiling, with_stats);
        (logps, lse, stats, None)
    }

    /// Gradients of [`FusedOps::lm_head_logps`] wrt `hidden` and `weight` (in their dtypes),
    /// each only when asked for, given the forward's `lse` and the upstream gradient `grad`
    /// (both `[rows]`). `logits` are the forward's kept logits (same tiling), or an empty
    /// tensor (`[0]`) to recompute them tile by tile.
    #[allow(clippy::too_many_arguments)]
    #[fusion(default)]
    fn lm_head_logps_backward(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        logits: FloatTensor<Self>,
        tiling: VocabTiling,
        need_hidden: bool,
        need_weight: bool,
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        lm_head::backward::<Self>(
            hidden,
            weight,
            targets,
            lse,
            grad,
            tiling,
            need_hidden,
            need_weight,
        )
    }
}
