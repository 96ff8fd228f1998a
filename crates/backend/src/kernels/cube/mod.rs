//! [`FusedOps`] for burn's CubeCL backend: `#[cube]` kernels, one source for wgpu
//! (Vulkan/Metal/DX12), CUDA and ROCm. The kernels read contiguous inputs in their storage
//! dtype (f32, f16, bf16 where the device has it) and accumulate in f32.

mod attention;
mod quant;
mod rms_norm;
mod rotary;
mod swiglu;

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::FusedOps;
use crate::HalfType;

/// Units per cube of the row kernels (RMSNorm): a power of two.
const ROW_BLOCK: usize = 128;

/// An uninitialised contiguous tensor on `like`'s device.
fn empty(like: &CubeTensor, shape: Shape, dtype: DType) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, dtype)
}

/// `n` cubes, spread over x and y when `n` exceeds a dimension's limit; kernels recover the
/// flat index from `CUBE_POS` and drop the extra cubes.
fn cube_count(n: usize) -> CubeCount {
    const MAX: usize = 65_535;
    let x = n.clamp(1, MAX);
    CubeCount::Static(x as u32, n.div_ceil(x).max(1) as u32, 1)
}

fn elementwise(like: &CubeTensor, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(&like.client, n.max(1));
    (
        calculate_cube_count_elemwise(&like.client, n.max(1), dim),
        dim,
    )
}

/// Whether the attention kernels unroll their loops over the head dimension. On a GPU that
/// keeps the per-row accumulators in registers; on CPU Vulkan drivers (Mesa lavapipe, which
/// report no plane/subgroup support through wgpu) LLVM then takes minutes to compile a
/// `head_dim = 64` kernel, so they get the rolled loops.
fn unroll_head_dim(like: &CubeTensor) -> bool {
    use burn::cubecl::ir::features::Plane;
    like.client.properties().features.plane.contains(Plane::Ops)
}

fn dims<const D: usize>(x: &CubeTensor) -> [usize; D] {
    x.meta.shape().dims::<D>()
}

/// The attention kernels' shape contract, checked on the host: a violation would make the
/// kernels index out of range or loop past the keys (`t − s` underflowing), not fail.
fn check_attention_shapes(q: &CubeTensor, k: &CubeTensor, v: &CubeTensor) {
    let ([b, s, h, d], [kb, t, kvh, kd]) = (dims::<4>(q), dims::<4>(k));
    assert!(
        kb == b && kd == d && dims::<4>(v) == [b, t, kvh, d] && kvh > 0 && h % kvh == 0 && t >= s,
        "causal_attention: q [{b}, {s}, {h}, {d}], k [{kb}, {t}, {kvh}, {kd}], v {:?} \
         (expected k = v = [batch, keys ≥ queries, kv_heads dividing heads, head_dim])",
        dims::<4>(v)
    );
}

impl FusedOps for CubeBackend {
    fn rms_norm(x: CubeTensor, weight: CubeTensor, eps: f64) -> CubeTensor {
        let (x, weight) = (into_contiguous(x), into_contiguous(weight));
        let [rows, _] = dims::<2>(&x);
        let out = empty(&x, x.meta.shape().clone(), x.dtype);
        rms_norm::rms_norm_kernel::launch(
            &x.client,
            cube_count(rows),
            CubeDim::new_1d(ROW_BLOCK as u32),
            x.clone().into_tensor_arg(),
            weight.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            eps as f32,
            ROW_BLOCK,
            dtype_to_storage_type(x.dtype),
        );
        out
    }

    fn rms_norm_backward(
        x: CubeTensor,
        weight: CubeTensor,
        grad: CubeTensor,
        eps: f64,
    ) -> (CubeTensor, CubeTensor) {
        let (x, weight, grad) = (
            into_contiguous(x),
            into_contiguous(weight),
            into_contiguous(grad),
        );
        let [rows, d] = dims::<2>(&x);
        let dx = empty(&x, x.meta.shape().clone(), x.dtype);
        let gxr = empty(&x, x.meta.shape().clone(), DType::F32);
        rms_norm::rms_norm_backward_kernel::launch(
            &x.client,
            cube_count(rows),
            CubeDim::new_1d(ROW_BLOCK as u32),
            x.clone().into_tensor_arg(),
            weight.clone().into_tensor_arg(),
            grad.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            gxr.clone().into_tensor_arg(),
            eps as f32,
            ROW_BLOCK,
            dtype_to_storage_type(x.dtype),
        );
        // The weight gradient is a column sum: burn's reduction kernels do it well.
        let dw = Self::float_reshape(Self::float_sum_dim(gxr, 0), Shape::new([d]));
        let dw = if weight.dtype == DType::F32 {
            dw
        } else {
            Self::float_cast(dw, weight.dtype.into())
        };
        (dx, dw)
    }

    fn rotary(x: CubeTensor, cos: CubeTensor, sin: CubeTensor) -> CubeTensor {
        let (x, cos, sin) = (
            into_contiguous(x),
            into_contiguous(cos),
            into_contiguous(sin),
        );
        let out = empty(&x, x.meta.shape().clone(), x.dtype);
        let pairs = x.meta.shape().num_elements() / 2;
        let (count, dim) = elementwise(&x, pairs);
        rotary::rotary_kernel::launch(
            &x.client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            dtype_to_storage_type(x.dtype),
        );
        out
    }

    fn rotary_qk(
        q: CubeTensor,
        k: CubeTensor,
        cos: CubeTensor,
        sin: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        let (q, k) = (into_contiguous(q), into_contiguous(k));
        let (cos, sin) = (into_contiguous(cos), into_contiguous(sin));
        let q_out = empty(&q, q.meta.shape().clone(), q.dtype);
        let k_out = empty(&k, k.meta.shape().clone(), k.dtype);
        let pairs = (q.meta.shape().num_elements() + k.meta.shape().num_elements()) / 2;
        let (count, dim) = elementwise(&q, pairs);
        rotary::rotary_qk_kernel::launch(
            &q.client,
            count,
            dim,
            q.clone().into_tensor_arg(),
            k.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            q_out.clone().into_tensor_arg(),
            k_out.clone().into_tensor_arg(),
            dtype_to_storage_type(q.dtype),
        );
        (q_out, k_out)
    }

    fn swiglu(gate: CubeTensor, up: CubeTensor) -> CubeTensor {
        let (gate, up) = (into_contiguous(gate), into_contiguous(up));
        let out = empty(&gate, gate.meta.shape().clone(), gate.dtype);
        let (count, dim) = elementwise(&gate, gate.meta.shape().num_elements());
        swiglu::swiglu_kernel::launch(
            &gate.client,
            count,
            dim,
            gate.clone().into_tensor_arg(),
            up.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            dtype_to_storage_type(gate.dtype),
        );
        out
    }

    fn swiglu_backward(
        gate: CubeTensor,
        up: CubeTensor,
        grad: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        let (gate, up, grad) = (
            into_contiguous(gate),
            into_contiguous(up),
            into_contiguous(grad),
        );
        let dgate = empty(&gate, gate.meta.shape().clone(), gate.dtype);
        let dup = empty(&gate, gate.meta.shape().clone(), gate.dtype);
        let (count, dim) = elementwise(&gate, gate.meta.shape().num_elements());
        swiglu::swiglu_backward_kernel::launch(
            &gate.client,
            count,
            dim,
            gate.clone().into_tensor_arg(),
            up.into_tensor_arg(),
            grad.into_tensor_arg(),
            dgate.clone().into_tensor_arg(),
            dup.clone().into_tensor_arg(),
            dtype_to_storage_type(gate.dtype),
        );
        (dgate, dup)
    }

    // `half` is not used: the kernels compute in their storage type (f32 activations under
    // autocast on a GPU, see `activation_dtype`), as burn's own attention would.
    fn causal_attention(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        half: Option<HalfType>,
    ) -> CubeTensor {
        Self::causal_attention_lse(q, k, v, half).0
    }

    fn causal_attention_lse(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        _half: Option<HalfType>,
    ) -> (CubeTensor, CubeTensor) {
        check_attention_shapes(&q, &k, &v);
        let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
        let [b, s, h, d] = dims::<4>(&q);
        let out = empty(&q, q.meta.shape().clone(), q.dtype);
        let lse = empty(&q, Shape::new([b, h, s]), DType::F32);
        attention::attention_forward_kernel::launch(
            &q.client,
            cube_count(b * h * s.div_ceil(attention::BLOCK)),
            CubeDim::new_1d(attention::BLOCK as u32),
            q.clone().into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            1.0 / (d as f32).sqrt(),
            d,
            unroll_head_dim(&q),
            dtype_to_storage_type(q.dtype),
        );
        (out, lse)
    }

    fn causal_attention_backward(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        out: CubeTensor,
        lse: CubeTensor,
        grad: CubeTensor,
        _half: Option<HalfType>,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        check_attention_shapes(&q, &k, &v);
        let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
        let (out, lse, grad) = (
            into_contiguous(out),
            into_contiguous(lse),
            into_contiguous(grad),
        );
        let [b, s, h, d] = dims::<4>(&q);
        let [_, t, kvh, _] = dims::<4>(&k);
        let scale = 1.0 / (d as f32).sqrt();
        let dq = empty(&q, q.meta.shape().clone(), q.dtype);
        // Per query head, in f32; summed over each KV group below.
        let dk = empty(&k, Shape::new([b, t, h, d]), DType::F32);
        let dv = empty(&k, Shape::new([b, t, h, d]), DType::F32);
        let delta = empty(&q, Shape::new([b, h, s]), DType::F32);
        attention::attention_dq_kernel::launch(
            &q.client,
            cube_count(b * h * s.div_ceil(attention::BLOCK)),
            CubeDim::new_1d(attention::BLOCK as u32),
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            out.into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            dq.clone().into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            scale,
            d,
            unroll_head_dim(&q),
            dtype_to_storage_type(q.dtype),
        );
        attention::attention_dkv_kernel::launch(
            &q.client,
            cube_count(b * h * t.div_ceil(attention::BLOCK)),
            CubeDim::new_1d(attention::BLOCK as u32),
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            lse.into_tensor_arg(),
            delta.into_tensor_arg(),
            grad.into_tensor_arg(),
            dk.clone().into_tensor_arg(),
            dv.clone().into_tensor_arg(),
            scale,
            d,
            unroll_head_dim(&q),
            dtype_to_storage_type(q.dtype),
        );
        let fold = |x: CubeTensor, like: &CubeTensor| {
            let x = if h == kvh {
                x
            } else {
                let x = Self::float_reshape(x, Shape::new([b, t, kvh, h / kvh, d]));
                Self::float_reshape(Self::float_sum_dim(x, 3), Shape::new([b, t, kvh, d]))
            };
            if like.dtype == DType::F32 {
                x
            } else {
                Self::float_cast(x, like.dtype.into())
            }
        };
        let (dk, dv) = (fold(dk, &k), fold(dv, &v));
        (dq, dk, dv)
    }
}
