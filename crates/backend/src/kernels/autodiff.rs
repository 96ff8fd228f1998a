//! [`FusedOps`] under autodiff: each forward registers a custom backward node that calls the
//! inner backend's backward entry.
//!
//! What a node keeps is the point: the tensor-op composition of RMSNorm keeps four
//! `[rows, d]` intermediates, SwiGLU three, attention the `[b, h, s, t]` probabilities, the LM
//! head's tile loop every `[rows, vocab_tile]` tile of logits and softmax; these nodes keep the
//! inputs (for attention also the output and a `[b, h, s]` log-sum-exp, for the LM head a
//! `[rows]` log-sum-exp and, when asked to, its kernel's logits) and recompute the rest.
//! `cos`/`sin` and the LM head's targets are treated as constants.
//!
//! The `*_backward` and `causal_attention_lse` entries are not differentiable themselves:
//! called on autodiff tensors they compute on the inner backend and return untracked tensors;
//! so are the LM head's statistics and log-sum-exp.

use burn::backend::AutodiffBackend;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::Shape;

use super::FusedOps;
use super::lm_head::VocabTiling;
use super::ops::LmHeadOutput;
use crate::HalfType;

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
    /// `q`, `k`, `v`, the output and its log-sum-exp, and the forward's half type (the
    /// backward rounds as the forward did: autocast's scope has ended by then).
    type State = (
        NodeId,
        NodeId,
        NodeId,
        FloatTensor<B>,
        FloatTensor<B>,
        Option<HalfType>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, cp: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (q_id, k_id, v_id, out, lse, half) = ops.state;
        let q: FloatTensor<B> = cp.retrieve_node_output(q_id);
        let k: FloatTensor<B> = cp.retrieve_node_output(k_id);
        let v: FloatTensor<B> = cp.retrieve_node_output(v_id);
        let (dq, dk, dv) = B::causal_attention_backward(q, k, v, out, lse, grad, half);
        register!(B, grads, node_q, dq);
        register!(B, grads, node_k, dk);
        register!(B, grads, node_v, dv);
    }
}

/// The LM head's node (see [`super::lm_head`]): no `[rows, vocab]` tensor unless the forward
/// was asked to keep its kernel's logits.
#[derive(Debug)]
struct LmHeadBackward;

/// The inputs (inner primitives: the existing buffers, not copies), the targets, the per-row
/// log-sum-exp, the kept logits (or an empty tensor) and the tiling.
type LmHeadState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    IntTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    VocabTiling,
);

impl<B: FusedOps> Backward<B, 2> for LmHeadBackward {
    type State = LmHeadState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _cp: &mut Checkpointer) {
        let [node_hidden, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (hidden, weight, targets, lse, logits, tiling) = ops.state;
        let (dh, dw) = B::lm_head_logps_backward(
            hidden,
            weight,
            targets,
            lse,
            grad,
            logits,
            tiling,
            node_hidden.is_some(),
            node_weight.is_some(),
        );
        if let Some(dh) = dh {
            register!(B, grads, node_hidden, dh);
        }
        if let Some(dw) = dw {
            register!(B, grads, node_weight, dw);
        }
    }
}

/// An empty `[0]` tensor like `like`: "no kept logits" for the backward entry.
fn no_logits<B: Backend>(like: &FloatTensor<B>) -> FloatTensor<B> {
    B::float_empty(Shape::new([0]), &like.device(), like.dtype().into())
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
        half: Option<HalfType>,
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
                    half,
                );
                prep.finish((q_id, k_id, v_id, out.clone(), lse, half), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::causal_attention(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                half,
            )),
        }
    }

    fn causal_attention_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        half: Option<HalfType>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, lse) = B::causal_attention_lse(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            half,
        );
        (untracked::<B, C>(out), untracked::<B, C>(lse))
    }

    fn causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        half: Option<HalfType>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dq, dk, dv) = B::causal_attention_backward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            out.into_primitive(),
            lse.into_primitive(),
            grad.into_primitive(),
            half,
        );
        (
            untracked::<B, C>(dq),
            untracked::<B, C>(dk),
            untracked::<B, C>(dv),
        )
    }

    fn lm_head_logps(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        tiling: VocabTiling,
        with_stats: bool,
        keep_logits: bool,
    ) -> LmHeadOutput<Self> {
        let detached = |(entropy, argmax): (FloatTensor<B>, IntTensor<B>)| {
            (untracked::<B, C>(entropy), argmax)
        };
        match LmHeadBackward
            .prepare::<C>([hidden.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (hidden, weight) = (hidden.into_primitive(), weight.into_primitive());
                let (logps, lse, stats, logits) = B::lm_head_logps(
                    hidden.clone(),
                    weight.clone(),
                    targets.clone(),
                    tiling,
                    with_stats,
                    keep_logits,
                );
                // The kept logits stay in the node: only its backward reads them.
                let logits = logits.unwrap_or_else(|| no_logits::<B>(&lse));
                let state = (hidden, weight, targets, lse.clone(), logits, tiling);
                let logps = prep.finish(state, logps);
                (logps, untracked::<B, C>(lse), stats.map(detached), None)
            }
            OpsKind::UnTracked(prep) => {
                let (logps, lse, stats, logits) = B::lm_head_logps(
                    hidden.into_primitive(),
                    weight.into_primitive(),
                    targets,
                    tiling,
                    with_stats,
                    keep_logits,
                );
                (
                    prep.finish(logps),
                    untracked::<B, C>(lse),
                    stats.map(detached),
                    logits.map(untracked::<B, C>),
                )
            }
        }
    }

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
        let (dh, dw) = B::lm_head_logps_backward(
            hidden.into_primitive(),
            weight.into_primitive(),
            targets,
            lse.into_primitive(),
            grad.into_primitive(),
            logits.into_primitive(),
            tiling,
            need_hidden,
            need_weight,
        );
        (dh.map(untracked::<B, C>), dw.map(untracked::<B, C>))
    }
}
