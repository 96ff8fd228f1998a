//! [`FusedOps`] under autodiff: each forward registers a custom backward node that calls the
//! inner backend's backward entry.
//!
//! What a node keeps is the point: the tensor-op composition of RMSNorm keeps four
//! `[rows, d]` intermediates, SwiGLU three, attention the `[b, h, s, t]` probabilities; these
//! nodes keep the inputs (and for attention the output and a `[b, h, s]` log-sum-exp) and
//! recompute the rest. `cos`/`sin` are treated as constants (positions carry no gradient).
//!
//! The `*_backward` and `causal_attention_lse` entries are not differentiable themselves:
//! called on autodiff tensors they compute on the inner backend and return untracked tensors.

use burn::backend::AutodiffBackend;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::FloatTensor;

use super::FusedOps;

type Ad<B, C> = Autodiff<B, C>;

fn untracked<B: FusedOps, C: CheckpointStrategy>(x: FloatTensor<B>) -> FloatTensor<Ad<B, C>> {
    <Ad<B, C> as AutodiffBackend>::from_inner(x)
}

/// Registers `grad` for a parent when that parent is tracked.
macro_rules! register {
    ($B:ty, $grads:expr, $parent:expr, $grad:expr) => {
        if let Some(node) = &$parent {
            $grads.register::<$B>(node.id, $grad);
        }
    };
}

#[derive(Debug)]
struct RmsNormBackward;

impl<B: FusedOps> Backward<B, 2> for RmsNormBackward {
    type State = (NodeId, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, weight, eps) = ops.state;
        let x: FloatTensor<B> = cp.retrieve_node_output(x_id);
        let (dx, dw) = B::rms_norm_backward(x, weight, grad, eps);
        register!(B, grads, node_x, dx);
        register!(B, grads, node_w, dw);
    }
}

#[derive(Debug)]
struct RotaryBackward;

impl<B: FusedOps> Backward<B, 1> for RotaryBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _cp: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        // A rotation's transpose is the rotation by the opposite angle.
        register!(B, grads, node_x, B::rotary(grad, cos, B::float_neg(sin)));
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl<B: FusedOps> Backward<B, 2> for SwigluBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (gate_id, up_id) = ops.state;
        let gate: FloatTensor<B> = cp.retrieve_node_output(gate_id);
        let up: FloatTensor<B> = cp.retrieve_node_output(up_id);
        let (dg, du) = B::swiglu_backward(gate, up, grad);
        register!(B, grads, node_gate, dg);
        register!(B, grads, node_up, du);
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl<B: FusedOps> Backward<B, 3> for AttentionBackward {
    type State = (NodeId, NodeId, NodeId, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (q_id, k_id, v_id, out, lse) = ops.state;
        let q: FloatTensor<B> = cp.retrieve_node_output(q_id);
        let k: FloatTensor<B> = cp.retrieve_node_output(k_id);
        let v: FloatTensor<B> = cp.retrieve_node_output(v_id);
        let (dq, dk, dv) = B::causal_attention_backward(q, k, v, out, lse, grad);
        register!(B, grads, node_q, dq);
        register!(B, grads, node_k, dk);
        register!(B, grads, node_v, dv);
    }
}

impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        match RmsNormBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let weight = weight.into_primitive();
                let out = B::rms_norm(x.into_primitive(), weight.clone(), eps);
                prep.finish((x_id, weight, eps), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(
                x.into_primitive(),
                weight.into_primitive(),
                eps,
            )),
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dw) = B::rms_norm_backward(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            eps,
        );
        (untracked::<B, C>(dx), untracked::<B, C>(dw))
    }

    fn rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match RotaryBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::rotary(x.into_primitive(), cos.clone(), sin.clone());
                prep.finish((cos, sin), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rotary(x.into_primitive(), cos, sin)),
        }
    }

    fn rotary_qk(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        (
            Self::rotary(q, cos.clone(), sin.clone()),
            Self::rotary(k, cos, sin),
        )
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwigluBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&gate), prep.checkpoint(&up));
                prep.finish(state, B::swiglu(gate.into_primitive(), up.into_primitive()))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::swiglu(gate.into_primitive(), up.into_primitive()))
            }
        }
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dg, du) = B::swiglu_backward(
            gate.into_primitive(),
            up.into_primitive(),
            grad.into_primitive(),
        );
        (untracked::<B, C>(dg), untracked::<B, C>(du))
    }

    fn causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match AttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (q_id, k_id, v_id) = (
                    prep.checkpoint(&q),
                    prep.checkpoint(&k),
                    prep.checkpoint(&v),
                );
                let (out, lse) = B::causal_attention_lse(
                    q.into_primitive(),
                    k.into_primitive(),
                    v.into_primitive(),
                );
                prep.finish((q_id, k_id, v_id, out.clone(), lse), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::causal_attention(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
            )),
        }
    }

    fn causal_attention_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, lse) =
            B::causal_attention_lse(q.into_primitive(), k.into_primitive(), v.into_primitive());
        (untracked::<B, C>(out), untracked::<B, C>(lse))
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dq, dk, dv) = B::causal_attention_backward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            out.into_primitive(),
            lse.into_primitive(),
            grad.into_primitive(),
        );
        (
            untracked::<B, C>(dq),
            untracked::<B, C>(dk),
            untracked::<B, C>(dv),
        )
    }
}
