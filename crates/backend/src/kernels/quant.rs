//! Linear layers over a block-quantized frozen weight ([`QuantizedWeight`]): `x·Wᵀ` forward
//! and `∂x = ∂y·W` backward, decoded tile by tile inside the product (QLoRA's base layer).
//!
//! [`QuantOps`] is the backend extension: Flex runs the fused CPU products
//! (`kernels/flex/quant_matmul.rs`); the CubeCL backends (wgpu, cuda; feature `gpu-kernels`)
//! run `#[cube]` kernels (`kernels/cube/quant.rs`) that decode the weight in shared-memory
//! tiles from a copy uploaded once per device and kept with the weight (codes packed in `u32`
//! words plus an f32 scale, and for Q4_1/Q4_K an offset, per group: 4.5 bits a weight for NF4,
//! 5–6 for Q4_0/Q4_1/Q4_K, 9 for Q8_0, 10 for Q6_K; see `crate::quant::groups`), in f32 (they
//! ignore `half`); `Fusion` wraps them lazily. Under autodiff one node keeps the weight
//! (shared, not copied) and computes `∂x` only — a frozen base has no gradient. Backends
//! without the extension take [`quant_linear`]'s fallback: the weight decoded to a dense
//! tensor for the call, then burn's `linear`.

// `backend_extension` expands the signatures into dispatch arms for compiled-out backends
// that ignore their arguments.
#![allow(unused_variables)]

use burn::backend::Dispatch;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{AutodiffBackend, Backend, backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Tensor, TensorData};

use crate::HalfType;
use crate::quant::QuantizedWeight;

/// Products with a quantized frozen weight `W` `[out, in]`; outputs in f32.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(feature = "gpu-kernels"),
    Fusion: cfg(all(feature = "gpu-kernels", feature = "fusion")),
    Autodiff
)]
pub trait QuantOps: Backend {
    /// `x·Wᵀ`: `x` `[m, in]` → `[m, out]`, operands rounded to `half` when given (autocast;
    /// the CubeCL kernels ignore it and compute in f32), f32 accumulation.
    #[fusion(meta = |x, weight, _half| burn::backend::fusion::custom::TensorSpec::new(
        burn::tensor::Shape::new([x.shape.dims::<2>()[0], weight.shape()[0]]),
        DType::F32,
    ))]
    fn quant_matmul(
        x: FloatTensor<Self>,
        weight: QuantizedWeight,
        half: Option<HalfType>,
    ) -> FloatTensor<Self>;

    /// `∂y·W`: `grad` `[m, out]` → `[m, in]` (the input gradient of
    /// [`QuantOps::quant_matmul`]). Not differentiable.
    #[fusion(meta = |grad, weight, _half| burn::backend::fusion::custom::TensorSpec::new(
        burn::tensor::Shape::new([grad.shape.dims::<2>()[0], weight.shape()[1]]),
        DType::F32,
    ))]
    fn quant_matmul_backward(
        grad: FloatTensor<Self>,
        weight: QuantizedWeight,
        half: Option<HalfType>,
    ) -> FloatTensor<Self>;
}

#[derive(Debug)]
struct QuantMatmulBackward;

impl<B: QuantOps> Backward<B, 1> for QuantMatmulBackward {
    /// The weight (its blocks shared), the forward's half type and `x`'s dtype.
    type State = (QuantizedWeight, Option<HalfType>, DType);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _cp: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (weight, half, dtype) = ops.state;
        if let Some(node) = node_x {
            let dx = B::quant_matmul_backward(grad, weight, half);
            let dx = if dtype == DType::F32 {
                dx
            } else {
                B::float_cast(dx, float_dtype(dtype))
            };
            grads.register::<B>(node.id, dx);
        }
    }
}

fn float_dtype(dtype: DType) -> burn::tensor::FloatDType {
    match dtype {
        DType::BF16 => burn::tensor::FloatDType::BF16,
        DType::F16 => burn::tensor::FloatDType::F16,
        DType::F64 => burn::tensor::FloatDType::F64,
        _ => burn::tensor::FloatDType::F32,
    }
}

impl<B: QuantOps, C: CheckpointStrategy> QuantOps for Autodiff<B, C> {
    fn quant_matmul(
        x: FloatTensor<Self>,
        weight: QuantizedWeight,
        half: Option<HalfType>,
    ) -> FloatTensor<Self> {
        let dtype = burn::backend::TensorMetadata::dtype(x.primitive());
        match QuantMatmulBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::quant_matmul(x.into_primitive(), weight.clone(), half);
                prep.finish((weight, half, dtype), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::quant_matmul(x.into_primitive(), weight, half))
            }
        }
    }

    fn quant_matmul_backward(
        grad: FloatTensor<Self>,
        weight: QuantizedWeight,
        half: Option<HalfType>,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::quant_matmul_backward(
            grad.into_primitive(),
            weight,
            half,
        ))
    }
}

/// `x·Wᵀ + bias` over the last dimension for a quantized frozen `weight` `[out, in]`:
/// `x` `[..., in]` → `[..., out]` in f32, differentiable in `x` (never in the weight).
///
/// On Flex and the CubeCL backends the weight is decoded tile by tile inside the product; on
/// other backends it is decoded whole for the call (a dense temporary: correct, not
/// memory-saving). Under [`autocast`](crate::autocast) Flex's products round their operands
/// (the decoded weight included, as bitsandbytes' `dequantize_4bit` to the compute dtype does)
/// and accumulate in f32; the GPU kernels multiply in f32.
///
/// # Panics
/// If `x`'s last dimension is not the weight's `in`.
pub fn quant_linear<const D: usize>(
    x: Tensor<D>,
    weight: &QuantizedWeight,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let [d_out, d_in] = weight.shape();
    let mut shape = x.dims();
    assert_eq!(
        shape[D - 1],
        d_in,
        "{weight:?}: input's last dimension {} is not the weight's {d_in}",
        shape[D - 1]
    );
    let device = x.device();
    let rows = shape.iter().product::<usize>() / d_in.max(1);
    let x = x.reshape([rows, d_in]);
    let x = if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(burn::tensor::FloatDType::F32)
    };
    let out = if super::on_fused_ops_backend(&device) {
        Tensor::<2>::from_dispatch(<Dispatch as QuantOps>::quant_matmul(
            x.into_dispatch(),
            weight.clone(),
            crate::autocast_type(),
        ))
    } else {
        let dense =
            Tensor::<2>::from_data(TensorData::new(weight.dequantize(), [d_out, d_in]), &device);
        super::linear(x, dense.transpose(), None)
    };
    shape[D - 1] = d_out;
    let out = out.reshape(shape);
    match bias {
        Some(b) => out + b.cast(burn::tensor::FloatDType::F32).unsqueeze(),
        None => out,
    }
}
