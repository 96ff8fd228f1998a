//! The projections' matmul as a backend extension, forward and both gradients.
//!
//! burn-flex allocates every matmul output through a path that copies the fresh buffer once
//! more on the calling thread (a byte vector re-aligned into a new allocation): for the
//! `[tokens, 1536]` outputs of a training step that serial copy and its page faults were a
//! sixth of the main thread's time. Flex's implementation here calls gemm directly, reads
//! transposed operands through strides (no copies for `Wᵀ` or `xᵀ`) and writes into a buffer it
//! hands over without a copy. Under autodiff a custom node computes only the gradients of
//! tracked inputs (a frozen LoRA base weight gets none).

// `backend_extension` expands the signatures into dispatch arms for compiled-out backends
// that ignore their arguments.
#![allow(unused_variables)]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::{
    AutodiffBackend, Backend, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{DType, FloatDType};

use crate::HalfType;

/// `op(lhs) · op(rhs)` for 2-D tensors.
///
/// `half`: the operands are rounded to this type and the products accumulated in f32
/// (autocast); an operand stored in a half type implies it. The result is f32 unless both
/// operands are stored in the same half type.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait MatmulOps: Backend {
    /// `op(lhs) · op(rhs)` where `op` transposes when its flag is set: `lhs` is `[m, k]` (or
    /// `[k, m]` with `transpose_lhs`), `rhs` `[k, n]` (or `[n, k]`) → `[m, n]`.
    fn matmul_t(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        transpose_lhs: bool,
        transpose_rhs: bool,
        half: Option<HalfType>,
    ) -> FloatTensor<Self>;

    /// `acc + alpha · op(lhs) · op(rhs)` (flags as in [`MatmulOps::matmul_t`]), accumulated in
    /// place where `acc`'s buffer allows. Not differentiable: under autodiff it computes on
    /// the inner backend and returns an untracked tensor.
    fn matmul_t_add(
        acc: FloatTensor<Self>,
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        transpose_lhs: bool,
        transpose_rhs: bool,
        alpha: f64,
        half: Option<HalfType>,
    ) -> FloatTensor<Self>;

    /// A projection with a LoRA adapter, `x·W + scale·(x·A)·B`: `x` `[rows, in]`, `w`
    /// `[in, out]`, `a` `[in, r]`, `b` `[r, out]` → `[rows, out]`, the update accumulated into
    /// the base product (no `[rows, out]` sum pass). Under autodiff one node computes the
    /// gradients of the tracked inputs only (with a frozen base: `x`, `A`, `B`).
    fn lora_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        half: Option<HalfType>,
    ) -> FloatTensor<Self> {
        let xa = Self::matmul_t(x.clone(), a, false, false, half);
        let base = Self::matmul_t(x, w, false, false, half);
        Self::matmul_t_add(base, xa, b, false, false, scale, half)
    }
}

#[derive(Debug)]
struct LoraLinearBackward;

/// What the LoRA node keeps: `x` (for `∂W`, `∂A`), `w`, `a` (for `∂x`), `b` (for `∂x`, `∂A`),
/// `x·A` (for `∂B`), each only when a gradient needs it, the scale, the forward's half type
/// and the inputs' dtypes (each gradient is returned in its input's dtype).
type LoraState<B> = (
    Option<NodeId>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
    f64,
    Option<HalfType>,
    [DType; 4],
);

/// `t` in `dtype` (a gradient in its input's dtype: an f32 product of a bf16 weight's
/// backward is rounded once, here).
fn in_dtype<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        return t;
    }
    let float = match dtype {
        DType::BF16 => FloatDType::BF16,
        DType::F16 => FloatDType::F16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    };
    B::float_cast(t, float)
}

impl<B: MatmulOps> Backward<B, 4> for LoraLinearBackward {
    type State = LoraState<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_x, node_w, node_a, node_b] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (x, w, a, b, xa, scale, half, [tx, tw, ta, tb]) = ops.state;
        let x: Option<FloatTensor<B>> = x.map(|id| cp.retrieve_node_output(id));
        // ∂(x·A) = scale · G·Bᵀ, shared by ∂x and ∂A.
        let g_xa = b.map(|b| {
            B::float_mul_scalar(B::matmul_t(g.clone(), b, false, true, half), scale.into())
        });
        if let (Some(node), Some(xa)) = (&node_b, xa) {
            let db = B::matmul_t(xa, g.clone(), true, false, half);
            let db = B::float_mul_scalar(db, scale.into());
            grads.register::<B>(node.id, in_dtype::<B>(db, tb));
        }
        if let (Some(node), Some(x), Some(g_xa)) = (&node_a, &x, &g_xa) {
            let da = B::matmul_t(x.clone(), g_xa.clone(), true, false, half);
            grads.register::<B>(node.id, in_dtype::<B>(da, ta));
        }
        if let (Some(node), Some(x)) = (&node_w, &x) {
            let dw = B::matmul_t(x.clone(), g.clone(), true, false, half);
            grads.register::<B>(node.id, in_dtype::<B>(dw, tw));
        }
        if let (Some(node), Some(w), Some(a), Some(g_xa)) = (&node_x, w, a, g_xa) {
            let dx = B::matmul_t(g, w, false, true, half);
            let dx = B::matmul_t_add(dx, g_xa, a, false, true, 1.0, half);
            grads.register::<B>(node.id, in_dtype::<B>(dx, tx));
        }
    }
}

#[derive(Debug)]
struct MatmulBackward;

impl<B: MatmulOps> Backward<B, 2> for MatmulBackward {
    /// The flags, `lhs` when `rhs` needs a gradient, `rhs` when `lhs` does (checkpointed, so
    /// gradient checkpointing can recompute instead of keeping them), the forward's half type
    /// and the inputs' dtypes.
    type State = (
        bool,
        bool,
        Option<NodeId>,
        Option<NodeId>,
        Option<HalfType>,
        [DType; 2],
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_lhs, node_rhs] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (tl, tr, lhs, rhs, half, [dtype_lhs, dtype_rhs]) = ops.state;
        let lhs: Option<FloatTensor<B>> = lhs.map(|id| cp.retrieve_node_output(id));
        let rhs: Option<FloatTensor<B>> = rhs.map(|id| cp.retrieve_node_output(id));
        // out = A·B with A = op(lhs), B = op(rhs): ∂A = G·Bᵀ, ∂B = Aᵀ·G; a transposed operand
        // takes the transpose of its gradient.
        if let (Some(node), Some(rhs)) = (&node_lhs, rhs) {
            let d = if tl {
                B::matmul_t(rhs, grad.clone(), tr, true, half)
            } else {
                B::matmul_t(grad.clone(), rhs, false, !tr, half)
            };
            grads.register::<B>(node.id, in_dtype::<B>(d, dtype_lhs));
        }
        if let (Some(node), Some(lhs)) = (&node_rhs, lhs) {
            let d = if tr {
                B::matmul_t(grad, lhs, true, tl, half)
            } else {
                B::matmul_t(lhs, grad, !tl, false, half)
            };
            grads.register::<B>(node.id, in_dtype::<B>(d, dtype_rhs));
        }
    }
}

impl<B: MatmulOps, C: CheckpointStrategy> MatmulOps for Autodiff<B, C> {
    fn matmul_t(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        transpose_lhs: bool,
        transpose_rhs: bool,
        half: Option<HalfType>,
    ) -> FloatTensor<Self> {
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let dtypes = [lhs.primitive().dtype(), rhs.primitive().dtype()];
        match MatmulBackward
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (
                    transpose_lhs,
                    transpose_rhs,
                    rhs_tracked.then(|| prep.checkpoint(&lhs)),
                    lhs_tracked.then(|| prep.checkpoint(&rhs)),
                    half,
                    dtypes,
                );
                let out = B::matmul_t(
                    lhs.into_primitive(),
                    rhs.into_primitive(),
                    transpose_lhs,
                    transpose_rhs,
                    half,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::matmul_t(
                lhs.into_primitive(),
                rhs.into_primitive(),
                transpose_lhs,
                transpose_rhs,
                half,
            )),
        }
    }

    fn matmul_t_add(
        acc: FloatTensor<Self>,
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        transpose_lhs: bool,
        transpose_rhs: bool,
        alpha: f64,
        half: Option<HalfType>,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::matmul_t_add(
            acc.into_primitive(),
            lhs.into_primitive(),
            rhs.into_primitive(),
            transpose_lhs,
            transpose_rhs,
            alpha,
            half,
        ))
    }

    fn lora_linear(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        scale: f64,
        half: Option<HalfType>,
    ) -> FloatTensor<Self> {
        let [x_t, w_t, a_t, b_t] = [&x, &w, &a, &b].map(|t| t.is_tracked());
        let dtypes = [&x, &w, &a, &b].map(|t| t.primitive().dtype());
        match LoraLinearBackward
            .prepare::<C>([x.node(), w.node(), a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = (w_t || a_t).then(|| prep.checkpoint(&x));
                let (x, w, a, b) = (
                    x.into_primitive(),
                    w.into_primitive(),
                    a.into_primitive(),
                    b.into_primitive(),
                );
                let xa = B::matmul_t(x.clone(), a.clone(), false, false, half);
                let base = B::matmul_t(x, w.clone(), false, false, half);
                let out = B::matmul_t_add(base, xa.clone(), b.clone(), false, false, scale, half);
                let state = (
                    x_id,
                    x_t.then_some(w),
                    x_t.then_some(a),
                    (x_t || a_t).then_some(b),
                    b_t.then_some(xa),
                    scale,
                    half,
                    dtypes,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::lora_linear(
                x.into_primitive(),
                w.into_primitive(),
                a.into_primitive(),
                b.into_primitive(),
                scale,
                half,
            )),
        }
    }
}
