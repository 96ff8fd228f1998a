//! Per-backend choice of the fused ops of the Llama family.
//!
//! Model code calls [`rms_norm`], [`rotary`] and [`causal_attention`]; this module picks the implementation:
//!
//! | device                         | path                                           |
//! |--------------------------------|------------------------------------------------|
//! | Flex, f32, no autodiff         | fused CPU kernel ([`FusedOps`] on `Flex`)      |
//! | anything under autodiff        | [`reference`] (burn tensor ops, differentiable)|
//! | wgpu / cuda (until CubeCL kernels land), bf16/f16 | [`reference`]               |
//!
//! Adding a GPU kernel means implementing [`FusedOps`] for burn's `Cube` backend, adding the
//! selector to the extension and a row to [`kernel_path`]; no model code changes.

pub mod reference;

#[cfg(feature = "flex")]
mod flex;

#[cfg(feature = "flex")]
pub use flex::FusedOps;

use burn::tensor::{DType, Device, Tensor};

/// Which implementation a fused op runs with on a given device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// A backend-specific fused kernel registered through the backend extension.
    Fused,
    /// The portable tensor-op composition in [`reference`].
    Reference,
}

/// The implementation the fused ops use for tensors of `dtype` on `device`.
pub fn kernel_path(device: &Device, dtype: DType) -> KernelPath {
    if device.is_autodiff() || dtype != DType::F32 {
        return KernelPath::Reference;
    }
    #[cfg(feature = "flex")]
    if matches!(device.as_dispatch(), burn::backend::DispatchDevice::Flex(_)) {
        return KernelPath::Fused;
    }
    KernelPath::Reference
}

/// Root-mean-square normalisation over the last dimension, as HF's `LlamaRMSNorm`:
/// `weight * x / sqrt(mean(x²) + eps)`.
///
/// Shapes: `x` `[..., d]`, `weight` `[d]`, output like `x`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    match kernel_path(&x.device(), x.dtype()) {
        #[cfg(feature = "flex")]
        KernelPath::Fused => flex::rms_norm(x, weight, eps),
        _ => reference::rms_norm(x, weight, eps),
    }
}

/// Causal grouped-query attention in sequence-major layout, scale `1/sqrt(head_dim)`.
///
/// Shapes: `q` `[batch, seq, heads, head_dim]`, `k`/`v` `[batch, total, kv_heads, head_dim]`
/// with `total ≥ seq` (the cached keys first); query `i` sees keys `0..=total - seq + i`.
/// `heads` must be a multiple of `kv_heads`. Output `[batch, seq, heads, head_dim]`.
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    match kernel_path(&q.device(), q.dtype()) {
        #[cfg(feature = "flex")]
        KernelPath::Fused => flex::causal_attention(q, k, v),
        _ => reference::causal_attention(q, k, v),
    }
}

/// Rotary position embedding in the half-split (`rotate_half`, GPT-NeoX) layout that HF
/// Llama/Mistral checkpoints use: element `i` of a head pairs with element `i + head_dim/2`.
///
/// Shapes: `x` `[batch, seq, heads, head_dim]`, `cos`/`sin` `[batch, seq, head_dim/2]`
/// (per row, so left-padded rows can have their own positions); output like `x`.
pub fn rotary(x: Tensor<4>, cos: Tensor<3>, sin: Tensor<3>) -> Tensor<4> {
    match kernel_path(&x.device(), x.dtype()) {
        #[cfg(feature = "flex")]
        KernelPath::Fused => flex::rotary(x, cos, sin),
        _ => reference::rotary(x, cos, sin),
    }
}
