//! The projections' matmul as a backend extension, forward and both gradients.
//!
//! burn-flex allocates every matmul output through a path that copies the fresh buffer once
//! more on the calling thread (a byte vector re-aligned into a new allocation): for the
//! `[tokens, 1536]` outputs of a training step that serial copy and its page faults were a
//! sixth of the main thread's time. Flex's implementation here calls gemm directly, reads
//! transposed operands through strides (no copies for `Wᵀ` or `xᵀ`) and writes into a buffer it
//! hands over without a copy. Under autodiff a custom node computes only the gradients of
//! tracked inputs (a frozen LoRA base weight gets none).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::{Backend, backend_extension, tensor::FloatTensor};

/// `op(lhs) · op(rhs)` for 2-D tensors.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait MatmulOps: Backend {
    /// `op(lhs) · op(rhs)` where `op` transposes when its flag is set: `lhs` is `[m, k]` (or
    /// `[k, m]` with `transpose_lhs`), `rhs` `[k, n]` (or `[n, k]`) → `[m, n]`.
    fn matmul_t(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        transpose_lhs: bool,
        transpose_rhs: bool,
    ) -> FloatTensor<Self>;
}

#[derive(Debug)]
struct MatmulBackward;

impl<B: MatmulOps> Backward<B, 2> for MatmulBackward {
    /// The flags, `lhs` when `rhs` needs a gradient, `rhs` when `lhs` does (checkpointed, so
    /// gradient checkpointing can recompute instead of keeping them).
    type State = (bool, bool, Option<NodeId>, Option<NodeId>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_lhs, node_rhs] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (tl, tr, lhs, rhs) = ops.state;
        let lhs: Option<FloatTensor<B>> = lhs.map(|id| cp.retrieve_node_output(id));
        let rhs: Option<FloatTensor<B>> = rhs.map(|id| cp.retrieve_node_output(id));
        // out = A·B with A = op(lhs), B = op(rhs): ∂A = G·Bᵀ, ∂B = Aᵀ·G; a transposed operand
        // takes the transpose of its gradient.
        if let (Some(node), Some(rhs)) = (&node_lhs, rhs) {
            let d = if tl {
                B::matmul_t(rhs, grad.clone(), tr, true)
            } else {
                B::matmul_t(grad.clone(), rhs, false, !tr)
            };
            grads.register::<B>(node.id, d);
        }
        if let (Some(node), Some(lhs)) = (&node_rhs, lhs) {
            let d = if tr {
                B::matmul_t(grad, lhs, true, tl)
            } else {
                B::matmul_t(lhs, grad, !tl, false)
            };
            grads.register::<B>(node.id, d);
        }
    }
}

impl<B: MatmulOps, C: CheckpointStrategy> MatmulOps for Autodiff<B, C> {
    fn matmul_t(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        transpose_lhs: bool,
        transpose_rhs: bool,
    ) -> FloatTensor<Self> {
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
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
                );
                let out = B::matmul_t(
                    lhs.into_primitive(),
                    rhs.into_primitive(),
                    transpose_lhs,
                    transpose_rhs,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::matmul_t(
                lhs.into_primitive(),
                rhs.into_primitive(),
                transpose_lhs,
                transpose_rhs,
            )),
        }
    }
}
