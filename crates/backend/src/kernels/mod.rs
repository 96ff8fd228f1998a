//! Per-backend choice of the fused ops of the Llama family.
//!
//! Model code calls [`rms_norm`], [`rotary_qk`], [`swiglu`] and [`causal_attention`]; this
//! module picks the implementation:
//!
//! | device                                   | path                                             |
//! |------------------------------------------|--------------------------------------------------|
//! | wgpu / cuda (feature `gpu-kernels`), with or without autodiff | `#[cube]` kernels ([`FusedOps`] on `Cube`), custom backward nodes under autodiff |
//! | Flex, f32, no autodiff                   | fused CPU kernels ([`FusedOps`] on `Flex`)        |
//! | Flex under autodiff, other dtypes on Flex | [`reference`] (burn tensor ops, differentiable)  |
//!
//! `TEMPER_KERNELS=reference` forces the reference everywhere (for A/B measurements).
//! Adding a kernel means a method on [`FusedOps`], its implementations, and a wrapper here; no
//! model code changes.

pub mod reference;

mod autodiff;
#[cfg(feature = "gpu-kernels")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
mod ops;

pub use ops::FusedOps;

use burn::backend::Dispatch;
use burn::tensor::{DType, Device, Tensor};

/// Which implementation a fused op runs with on a given device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// A backend-specific fused kernel registered through the backend extension.
    Fused,
    /// The portable tensor-op composition in [`reference`].
    Reference,
}

/// Whether `TEMPER_KERNELS=reference` is set (read once).
fn forced_reference() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        std::env::var("TEMPER_KERNELS").is_ok_and(|v| v.eq_ignore_ascii_case("reference"))
    })
}

/// The implementation the fused ops use for tensors of `dtype` on `device`.
pub fn kernel_path(device: &Device, dtype: DType) -> KernelPath {
    if forced_reference() {
        return KernelPath::Reference;
    }
    let inner = device.clone().inner();
    #[cfg(feature = "gpu-kernels")]
    if matches!(inner.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
    {
        return KernelPath::Fused;
    }
    #[cfg(feature = "flex")]
    if !device.is_autodiff()
        && dtype == DType::F32
        && matches!(inner.as_dispatch(), burn::backend::DispatchDevice::Flex(_))
    {
        return KernelPath::Fused;
    }
    let _ = (inner, dtype);
    KernelPath::Reference
}

/// Root-mean-square normalisation over the last dimension, as HF's `LlamaRMSNorm`:
/// `weight * x / sqrt(mean(x²) + eps)`.
///
/// Shapes: `x` `[..., d]`, `weight` `[d]`, output like `x`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    match kernel_path(&x.device(), x.dtype()) {
        KernelPath::Fused if weight.dtype() == x.dtype() => {
            let shape = x.dims();
            let d = shape[D - 1];
            let rows = shape.iter().product::<usize>() / d.max(1);
            let out = <Dispatch as FusedOps>::rms_norm(
                x.reshape([rows, d]).into_dispatch(),
                weight.into_dispatch(),
                eps,
            );
            Tensor::<2>::from_dispatch(out).reshape(shape)
        }
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
        KernelPath::Fused => Tensor::from_dispatch(<Dispatch as FusedOps>::causal_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
        )),
        KernelPath::Reference => reference::causal_attention(q, k, v),
    }
}

/// Rotary position embedding in the half-split (`rotate_half`, GPT-NeoX) layout that HF
/// Llama/Mistral checkpoints use: element `i` of a head pairs with element `i + head_dim/2`.
///
/// Shapes: `x` `[batch, seq, heads, head_dim]`, `cos`/`sin` `[batch, seq, head_dim/2]`
/// (per row, so left-padded rows can have their own positions); output like `x`.
pub fn rotary(x: Tensor<4>, cos: Tensor<3>, sin: Tensor<3>) -> Tensor<4> {
    match kernel_path(&x.device(), x.dtype()) {
        KernelPath::Fused if cos.dtype() == x.dtype() => {
            Tensor::from_dispatch(<Dispatch as FusedOps>::rotary(
                x.into_dispatch(),
                cos.into_dispatch(),
                sin.into_dispatch(),
            ))
        }
        _ => reference::rotary(x, cos, sin),
    }
}

/// [`rotary`] of the queries `[batch, seq, heads, head_dim]` and keys
/// `[batch, seq, kv_heads, head_dim]` with the same angles (one launch on GPU backends).
pub fn rotary_qk(q: Tensor<4>, k: Tensor<4>, cos: Tensor<3>, sin: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
    match kernel_path(&q.device(), q.dtype()) {
        KernelPath::Fused if cos.dtype() == q.dtype() && k.dtype() == q.dtype() => {
            let (q, k) = <Dispatch as FusedOps>::rotary_qk(
                q.into_dispatch(),
                k.into_dispatch(),
                cos.into_dispatch(),
                sin.into_dispatch(),
            );
            (Tensor::from_dispatch(q), Tensor::from_dispatch(k))
        }
        _ => (
            reference::rotary(q, cos.clone(), sin.clone()),
            reference::rotary(k, cos, sin),
        ),
    }
}

/// SwiGLU activation `silu(gate) * up` (the Llama MLP), shapes equal.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    match kernel_path(&gate.device(), gate.dtype()) {
        KernelPath::Fused if up.dtype() == gate.dtype() => {
            let shape = gate.dims();
            let n = shape.iter().product::<usize>();
            let out = <Dispatch as FusedOps>::swiglu(
                gate.reshape([n]).into_dispatch(),
                up.reshape([n]).into_dispatch(),
            );
            Tensor::<1>::from_dispatch(out).reshape(shape)
        }
        _ => reference::swiglu(gate, up),
    }
}
