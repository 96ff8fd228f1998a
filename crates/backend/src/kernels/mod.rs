//! Per-backend choice of the fused ops of the Llama family.
//!
//! Model code calls [`rms_norm`], [`rotary_qk`], [`swiglu`] and [`causal_attention`], the
//! objectives [`lm_head_logps`]; this module picks the implementation:
//!
//! | device                                    | path                                            |
//! |-------------------------------------------|-------------------------------------------------|
//! | wgpu / cuda (feature `gpu-kernels`)       | `#[cube]` kernels ([`FusedOps`] on `Cube`); under autodiff with custom backward nodes (attention: see [`flash_pays_under_autodiff`]) |
//! | Flex, f32 (with or without autodiff)      | fused, parallel CPU kernels ([`FusedOps`] on `Flex`); under autodiff the same custom backward nodes |
//! | other dtypes on Flex                      | [`reference`](mod@reference) (burn tensor ops, differentiable)  |
//!
//! The LM head's log-softmax ([`lm_head_logps`]) takes [`FusedOps`] in every dtype on Flex and
//! the CubeCL backends (their implementations choose between kernel and tile loop, see
//! [`mod@lm_head`]), so that training keeps its bounded-memory backward node everywhere.
//!
//! The products ([`linear`], [`lora_linear`], [`matmul`]) take [`MatmulOps`] on Flex and burn's
//! matmul on GPU backends, there with operands cast to the half type under
//! [`autocast`](crate::autocast) (f32 accumulation in both, see [`gpu_autocast`]).
//!
//! The products with a block-quantized frozen weight ([`quant_linear`]) take [`QuantOps`] on Flex
//! (fused CPU decode-and-multiply) and the CubeCL backends (`#[cube]` kernels decoding in
//! shared-memory tiles), a dense decoded copy of the weight elsewhere.
//!
//! `TEMPER_KERNELS=reference` forces the reference everywhere, `TEMPER_KERNELS=reference:attention,swiglu`
//! for the named ops only (A/B measurements, kernel by kernel).
//! Adding a kernel means a method on [`FusedOps`], its implementations, and a wrapper here; no
//! model code changes.

pub mod reference;

mod autodiff;
#[cfg(feature = "gpu-kernels")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
pub mod lm_head;
mod matmul;
mod ops;
mod optim;
mod quant;

pub use lm_head::{TargetLogps, VocabTiling, target_logps_backward, target_logps_forward};
pub use matmul::MatmulOps;
pub use ops::FusedOps;
pub use optim::{AdamWStep, adamw_update, reference_adamw_update};
pub use quant::{QuantOps, quant_linear};

use burn::backend::Dispatch;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor};

use crate::HalfType;

/// Which implementation a fused op runs with on a given device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// A backend-specific fused kernel registered through the backend extension.
    Fused,
    /// The portable tensor-op composition in [`reference`](mod@reference).
    Reference,
}

/// The fused ops, for [`kernel_path_for`] and `TEMPER_KERNELS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedOp {
    /// [`linear`]: Flex only (GPU backends keep burn's matmul, with casts under autocast).
    Linear,
    RmsNorm,
    Rotary,
    Swiglu,
    Attention,
    /// [`adamw_update`]: Flex only.
    AdamW,
    /// [`lm_head_logps`] / [`lm_head_logps_backward`]: Flex and the CubeCL backends, every
    /// dtype.
    LmHead,
}

impl FusedOp {
    const ALL: [FusedOp; 7] = [
        Self::Linear,
        Self::RmsNorm,
        Self::Rotary,
        Self::Swiglu,
        Self::Attention,
        Self::AdamW,
        Self::LmHead,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::RmsNorm => "rms_norm",
            Self::Rotary => "rotary",
            Self::Swiglu => "swiglu",
            Self::Attention => "attention",
            Self::AdamW => "adamw",
            Self::LmHead => "lm_head",
        }
    }
}

/// Which ops `TEMPER_KERNELS` sends to the reference (read once): `reference` for all of
/// them, `reference:attention,swiglu` for some (names as in [`FusedOp`], snake case).
fn forced_reference(op: FusedOp) -> bool {
    static FORCED: std::sync::OnceLock<Vec<FusedOp>> = std::sync::OnceLock::new();
    FORCED
        .get_or_init(|| parse_forced(&std::env::var("TEMPER_KERNELS").unwrap_or_default()))
        .contains(&op)
}

fn parse_forced(value: &str) -> Vec<FusedOp> {
    let value = value.trim().to_ascii_lowercase();
    match value.strip_prefix("reference") {
        Some("") => FusedOp::ALL.to_vec(),
        Some(list) => {
            let names: Vec<&str> = list
                .trim_start_matches(':')
                .split(',')
                .map(str::trim)
                .collect();
            FusedOp::ALL
                .into_iter()
                .filter(|op| names.contains(&op.name()))
                .collect()
        }
        None => Vec::new(),
    }
}

/// [`kernel_path`] for one op, honouring `TEMPER_KERNELS`. The LM head takes the fused path
/// on Flex and the CubeCL backends whatever the dtype (see [`lm_head_logps`]).
pub fn kernel_path_for(op: FusedOp, device: &Device, dtype: DType) -> KernelPath {
    if forced_reference(op) {
        return KernelPath::Reference;
    }
    if op == FusedOp::LmHead {
        return if on_fused_ops_backend(device) {
            KernelPath::Fused
        } else {
            KernelPath::Reference
        };
    }
    kernel_path(device, dtype)
}

/// Whether `device` runs on a backend that implements [`FusedOps`] (Flex, CubeCL).
fn on_fused_ops_backend(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    ) {
        return true;
    }
    is_gpu(device)
}

/// The implementation the fused ops use for tensors of `dtype` on `device`.
pub fn kernel_path(device: &Device, dtype: DType) -> KernelPath {
    let inner = device.clone().inner();
    #[cfg(feature = "gpu-kernels")]
    if matches!(inner.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
        && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
    {
        return KernelPath::Fused;
    }
    #[cfg(feature = "flex")]
    if dtype == DType::F32 && matches!(inner.as_dispatch(), burn::backend::DispatchDevice::Flex(_))
    {
        return KernelPath::Fused;
    }
    let _ = (inner, dtype);
    KernelPath::Reference
}

/// The half type a product on `device` of operands of `dtypes` runs with through
/// [`MatmulOps`] (`Some(None)`: f32), or `None` for burn's matmul.
///
/// Flex takes [`MatmulOps`] under autodiff (gemm called directly, gradients only for tracked
/// inputs), under [`autocast`](crate::autocast) and whenever an operand is stored in a half type
/// (operands rounded, f32 accumulation). f32 inference keeps burn's matmul: the numerics the
/// parity and PEFT-merge tests were measured with (burn-flex's output copy costs little next
/// to the forward's own gemms). GPU backends keep burn's matmul (under autocast with casts
/// around it, see [`gpu_autocast`]).
///
/// `always`: take [`MatmulOps`] for f32 inference too.
fn flex_product(device: &Device, dtypes: &[DType], always: bool) -> Option<Option<HalfType>> {
    if is_gpu(device)
        || !on_fused_ops_backend(device)
        || forced_reference(FusedOp::Linear)
        || !dtypes
            .iter()
            .all(|d| matches!(d, DType::F32 | DType::BF16 | DType::F16))
    {
        return None;
    }
    let half = crate::autocast_type();
    let needed =
        always || device.is_autodiff() || half.is_some() || dtypes.iter().any(|d| *d != DType::F32);
    needed.then_some(half)
}

/// `t` in `dtype` (a no-op when it already is).
fn cast_to<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype {
        return t;
    }
    match dtype {
        DType::BF16 => t.cast(FloatDType::BF16),
        DType::F16 => t.cast(FloatDType::F16),
        DType::F64 => t.cast(FloatDType::F64),
        _ => t.cast(FloatDType::F32),
    }
}

/// The half dtype a product on a GPU (CubeCL) device runs in under
/// [`autocast`](crate::autocast), or `None` (not a GPU, no autocast, or a half type the device
/// cannot compute in: bf16 on wgpu, whose WGSL has no bf16 type — there the product stays in
/// the operands' dtype; `TrainPrecision::check` refuses `bf16-mixed` on such a device before
/// training starts).
///
/// The products then cast their operands to this dtype and run burn's matmul, whose CubeCL
/// kernels (cubek-matmul 0.3.1, `MatmulElems::from_globals`) accumulate f16/bf16 outputs in
/// f32; the output is rounded to the half type once and cast back to the activation's dtype
/// (torch's autocast rounds the same way). Gradients flow back through burn's autodiff casts,
/// so an f32 master weight gets an f32 gradient.
fn gpu_autocast(device: &Device) -> Option<DType> {
    let half = crate::autocast_type()?;
    if !is_gpu(device) {
        return None;
    }
    let dtype = half.precision().dtype();
    device.supports_dtype(dtype).then_some(dtype)
}

/// burn's `linear` with the weight (and bias) in `x`'s dtype.
fn burn_linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let dtype = x.dtype();
    burn::tensor::module::linear(x, cast_to(weight, dtype), bias.map(|b| cast_to(b, dtype)))
}

/// `out + bias` (broadcast over the last dimension), the bias in `out`'s dtype.
fn add_bias<const D: usize>(out: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
    match bias {
        Some(b) => {
            let dtype = out.dtype();
            out + cast_to(b, dtype).unsqueeze::<D>()
        }
        None => out,
    }
}

/// `x · weight + bias` over the last dimension, as burn's `linear` (`weight` `[in, out]`, the
/// transpose of PyTorch's): `x` `[..., in]` → `[..., out]`.
///
/// On Flex see [`flex_product`]: under [`autocast`](crate::autocast) or with a bf16/f16 weight
/// the operands are rounded to the half type and accumulated in f32 (an f32 `x` gives an f32
/// output). On a GPU under autocast (see [`gpu_autocast`]): burn's `linear` on operands cast
/// to the half type (f32 accumulation), the output cast back to `x`'s dtype before the bias is
/// added. Elsewhere burn's `linear`, the weight cast to `x`'s dtype if they differ.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let device = x.device();
    if let Some(half) = gpu_autocast(&device) {
        let dtype = x.dtype();
        let out = burn_linear(cast_to(x, half), weight, None);
        return add_bias(cast_to(out, dtype), bias);
    }
    let Some(half) = flex_product(&device, &[x.dtype(), weight.dtype()], false) else {
        return burn_linear(x, weight, bias);
    };
    let mut shape = x.dims();
    let d_in = shape[D - 1];
    let d_out = weight.dims()[1];
    let rows = shape.iter().product::<usize>() / d_in.max(1);
    let out = Tensor::<2>::from_dispatch(<Dispatch as MatmulOps>::matmul_t(
        x.reshape([rows, d_in]).into_dispatch(),
        weight.into_dispatch(),
        false,
        false,
        half,
    ));
    shape[D - 1] = d_out;
    add_bias(out.reshape(shape), bias)
}

/// A projection with a LoRA adapter, `x·W + bias + scale·(x·A)·B` (`weight` `[in, out]`,
/// `lora_a` `[in, r]`, `lora_b` `[r, out]`): `x` `[..., in]` → `[..., out]`.
///
/// On Flex (see [`flex_product`]): one [`MatmulOps::lora_linear`] node, the update accumulated
/// into the base product by gemm and the backward computing only what tracked inputs need.
/// On a GPU under autocast both products take the half type as in [`linear`]. Elsewhere the
/// composition of burn ops (same values up to rounding).
pub fn lora_linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    lora_a: Tensor<2>,
    lora_b: Tensor<2>,
    scale: f64,
) -> Tensor<D> {
    let device = x.device();
    if let Some(half) = gpu_autocast(&device) {
        // Both products' outputs are widened before the sum, so the update is added in the
        // activation's dtype (Flex accumulates it into the base product in f32).
        let dtype = x.dtype();
        let xh = cast_to(x, half);
        let update = burn_linear(burn_linear(xh.clone(), lora_a, None), lora_b, None);
        let base = burn_linear(xh, weight, None);
        return add_bias(cast_to(base, dtype) + cast_to(update, dtype) * scale, bias);
    }
    let dtypes = [x.dtype(), weight.dtype(), lora_a.dtype(), lora_b.dtype()];
    let Some(half) = flex_product(&device, &dtypes, false) else {
        let update = burn_linear(burn_linear(x.clone(), lora_a, None), lora_b, None) * scale;
        return burn_linear(x, weight, bias) + update;
    };
    let mut shape = x.dims();
    let d_in = shape[D - 1];
    let d_out = weight.dims()[1];
    let rows = shape.iter().product::<usize>() / d_in.max(1);
    let out = Tensor::<2>::from_dispatch(<Dispatch as MatmulOps>::lora_linear(
        x.reshape([rows, d_in]).into_dispatch(),
        weight.into_dispatch(),
        lora_a.into_dispatch(),
        lora_b.into_dispatch(),
        scale,
        half,
    ));
    shape[D - 1] = d_out;
    add_bias(out.reshape(shape), bias)
}

/// `lhs · rhs` of 2-D tensors: on Flex through [`MatmulOps`] (transposed views are read
/// through their strides, not copied; half types as in [`linear`]), on a GPU under autocast
/// burn's matmul of the operands cast to the half type (output in `lhs`'s dtype), elsewhere
/// burn's matmul (`rhs` cast to `lhs`'s dtype if they differ). Differentiable.
pub fn matmul(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    let device = lhs.device();
    if let Some(half) = gpu_autocast(&device) {
        let dtype = lhs.dtype();
        return cast_to(cast_to(lhs, half).matmul(cast_to(rhs, half)), dtype);
    }
    let Some(half) = flex_product(&device, &[lhs.dtype(), rhs.dtype()], true) else {
        let dtype = lhs.dtype();
        return lhs.matmul(cast_to(rhs, dtype));
    };
    Tensor::from_dispatch(<Dispatch as MatmulOps>::matmul_t(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
        false,
        false,
        half,
    ))
}

/// Root-mean-square normalisation over the last dimension, as HF's `LlamaRMSNorm`:
/// `weight * x / sqrt(mean(x²) + eps)`.
///
/// Shapes: `x` `[..., d]`, `weight` `[d]`, output like `x`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    let weight = cast_to(weight, x.dtype());
    match kernel_path_for(FusedOp::RmsNorm, &x.device(), x.dtype()) {
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
///
/// `half`: the products (`Q·Kᵀ`, `P·V` and their gradients) round their operands to this
/// type and accumulate in f32, the softmax in f32 — model code passes
/// [`autocast_type`](crate::autocast_type) (or its weights' half type at inference). Flex
/// honours it; the GPU kernels and the reference compute in their inputs' dtype.
pub fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    half: Option<crate::HalfType>,
) -> Tensor<4> {
    let [b, s, h, _] = q.dims();
    let t = k.dims()[1];
    let path = match kernel_path_for(FusedOp::Attention, &q.device(), q.dtype()) {
        KernelPath::Fused
            if q.device().is_autodiff()
                && is_gpu(&q.device())
                && !flash_pays_under_autodiff(b, h, s, t) =>
        {
            KernelPath::Reference
        }
        path => path,
    };
    match path {
        KernelPath::Fused => Tensor::from_dispatch(<Dispatch as FusedOps>::causal_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            half,
        )),
        KernelPath::Reference => reference::causal_attention(q, k, v),
    }
}

/// The dtype activations flow in between the products when the weights are stored in
/// `weights`: f32 on the CPU whatever the storage (Temper's fused CPU kernels compute in f32;
/// products with half-type weights round their operands and accumulate in f32, see
/// [`crate::TrainPrecision`]); on GPU backends f32 inside an [`autocast`](crate::autocast)
/// scope that keeps activations in f32 (the mixed modes: only the products run in the half
/// type, so a frozen half-type LoRA base does not make the norms, attention and losses half),
/// the storage dtype otherwise (inference, pure `bf16`/`f16` training).
pub fn activation_dtype(device: &Device, weights: DType) -> DType {
    let cpu_kernels =
        on_fused_ops_backend(device) && !is_gpu(device) && !forced_reference(FusedOp::Linear);
    let mixed_on_gpu = is_gpu(device) && crate::precision::autocast_keeps_f32_activations();
    if cpu_kernels || mixed_on_gpu {
        DType::F32
    } else {
        weights
    }
}

/// Whether `device` runs on a CubeCL (GPU) backend.
fn is_gpu(device: &Device) -> bool {
    #[cfg(feature = "gpu-kernels")]
    if matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Cube(_)
    ) {
        return true;
    }
    let _ = device;
    false
}

/// Whether training (autodiff) on a GPU should take the flash kernel for attention of `b × h` heads,
/// `s` queries over `t` keys.
///
/// Measured on an H100 (docs/gpu.md): the flash kernel makes the SmolLM2 training step 24 %
/// faster at 4 × 256 and 11 % slower at 16 × 512 than burn's matmul attention, whose
/// backward keeps the `[b, h, s, t]` probabilities of every layer. So: the kernel for short
/// contexts, burn's attention in between, and the kernel again wherever those
/// probabilities would take 256 MiB per layer or more (memory, not speed, decides there).
pub fn flash_pays_under_autodiff(b: usize, h: usize, s: usize, t: usize) -> bool {
    const FAST_UP_TO_KEYS: usize = 384;
    const MATERIALISED_LIMIT_BYTES: usize = 256 << 20;
    t <= FAST_UP_TO_KEYS || b * h * s * t * 4 >= MATERIALISED_LIMIT_BYTES
}

/// Rotary position embedding in the half-split (`rotate_half`, GPT-NeoX) layout that HF
/// Llama/Mistral checkpoints use: element `i` of a head pairs with element `i + head_dim/2`.
///
/// Shapes: `x` `[batch, seq, heads, head_dim]`, `cos`/`sin` `[batch, seq, head_dim/2]`
/// (per row, so left-padded rows can have their own positions); output like `x`.
pub fn rotary(x: Tensor<4>, cos: Tensor<3>, sin: Tensor<3>) -> Tensor<4> {
    match kernel_path_for(FusedOp::Rotary, &x.device(), x.dtype()) {
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
pub fn rotary_qk(
    q: Tensor<4>,
    k: Tensor<4>,
    cos: Tensor<3>,
    sin: Tensor<3>,
) -> (Tensor<4>, Tensor<4>) {
    let (cos, sin) = (cast_to(cos, q.dtype()), cast_to(sin, q.dtype()));
    match kernel_path_for(FusedOp::Rotary, &q.device(), q.dtype()) {
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
    match kernel_path_for(FusedOp::Swiglu, &gate.device(), gate.dtype()) {
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

/// The LM head's per-token log-softmax in vocabulary tiles, `log softmax(hidden · weight)` at
/// each row's target, without ever materialising the `[rows, vocab]` logits (see
/// [`mod@lm_head`] for the maths and where each backend runs what).
///
/// Shapes: `hidden` `[rows, hidden]`, `weight` `[hidden, vocab]` (e.g. a tied embedding's
/// transposed view, read through its strides), `targets` `[rows]` with ids inside the
/// vocabulary; every [`TargetLogps`] field is `[rows]`, in f32 (f64 for f64 inputs, f32 for
/// bf16/f16). `tiling` sizes must be positive.
///
/// Differentiable wrt `hidden` and `weight`: under autodiff one custom node keeps the inputs
/// and the `[rows]` log-sum-exp, and its backward recomputes each tile (an extra gemm per
/// tile) — unless `keep_logits`, where Flex's kernel keeps the `rows × vocab` f32 logits for
/// the backward instead. `with_stats` adds the detached entropy and first argmax per row.
/// `TEMPER_KERNELS=reference:lm_head` takes the tile loop in differentiable tensor ops instead
/// (backward memory ∝ `rows × vocab`), as do backends without [`FusedOps`].
pub fn lm_head_logps(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    tiling: VocabTiling,
    with_stats: bool,
    keep_logits: bool,
) -> TargetLogps {
    let tiling = with_autocast(tiling);
    let weight = lm_head_weight(weight, &hidden);
    match kernel_path_for(FusedOp::LmHead, &hidden.device(), hidden.dtype()) {
        KernelPath::Fused => TargetLogps::from_dispatch(<Dispatch as FusedOps>::lm_head_logps(
            hidden.into_dispatch(),
            weight.into_dispatch(),
            targets.into_dispatch(),
            tiling,
            with_stats,
            keep_logits,
        )),
        KernelPath::Reference => {
            reference::lm_head_logps(hidden, weight, targets, tiling, with_stats)
        }
    }
}

/// `tiling` with the [`autocast`](crate::autocast) scope's half type where it names none.
fn with_autocast(tiling: VocabTiling) -> VocabTiling {
    VocabTiling {
        half: tiling.half.or_else(crate::autocast_type),
        ..tiling
    }
}

/// The LM head's weight as its kernel takes it: Flex's reads f32, bf16 and f16 storage in
/// place (a half-type weight makes its products half-precision, as in [`linear`]); elsewhere
/// the weight is cast to `hidden`'s dtype.
fn lm_head_weight(weight: Tensor<2>, hidden: &Tensor<2>) -> Tensor<2> {
    let device = hidden.device();
    let in_place = on_fused_ops_backend(&device)
        && !is_gpu(&device)
        && !forced_reference(FusedOp::LmHead)
        && [hidden.dtype(), weight.dtype()]
            .iter()
            .all(|d| matches!(d, DType::F32 | DType::BF16 | DType::F16));
    if in_place {
        weight
    } else {
        cast_to(weight, hidden.dtype())
    }
}

/// The backward of [`lm_head_logps`] as a function, for callers outside autodiff:
/// `(∂hidden [rows, hidden], ∂weight [hidden, vocab])` for upstream gradient `grad` `[rows]`,
/// each only when asked for, from the forward's `lse`. `logits` are the forward's
/// [`TargetLogps::logits`] (same tiling), or `None` to recompute them. Not differentiable.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_logps_backward(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    lse: Tensor<1>,
    grad: Tensor<1>,
    logits: Option<Tensor<1>>,
    tiling: VocabTiling,
    need_hidden: bool,
    need_weight: bool,
) -> (Option<Tensor<2>>, Option<Tensor<2>>) {
    let tiling = with_autocast(tiling);
    if kernel_path_for(FusedOp::LmHead, &hidden.device(), hidden.dtype()) == KernelPath::Reference {
        return reference::lm_head_logps_backward(
            hidden,
            weight,
            targets,
            lse,
            grad,
            tiling,
            need_hidden,
            need_weight,
        );
    }
    let logits = logits.unwrap_or_else(|| Tensor::<1>::empty([0], (&lse.device(), lse.dtype())));
    let (dh, dw) = <Dispatch as FusedOps>::lm_head_logps_backward(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        targets.into_dispatch(),
        lse.into_dispatch(),
        grad.into_dispatch(),
        logits.into_dispatch(),
        tiling,
        need_hidden,
        need_weight,
    );
    (dh.map(Tensor::from_dispatch), dw.map(Tensor::from_dispatch))
}

#[cfg(test)]
mod tests {
    use super::{FusedOp, parse_forced};

    #[test]
    fn temper_kernels_names_all_or_some_ops() {
        assert!(parse_forced("").is_empty());
        assert!(parse_forced("fused").is_empty());
        assert_eq!(parse_forced(" Reference "), FusedOp::ALL.to_vec());
        assert_eq!(
            parse_forced("reference:swiglu, attention"),
            vec![FusedOp::Swiglu, FusedOp::Attention]
        );
        assert!(parse_forced("reference:nothing").is_empty());
    }
}
