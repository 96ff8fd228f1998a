//! Portable implementations in burn tensor ops: they run on every backend, are differentiable
//! under autodiff, and are the reference the fused kernels are tested against.

use burn::backend::Dispatch;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Int, Tensor};

use super::lm_head::{self, TargetLogps, VocabTiling};

/// See [`super::rms_norm`]. Computes in f32 whatever the input dtype, like HF.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x32 = if dtype == DType::F32 {
        x
    } else {
        x.cast(DType::F32)
    };
    let variance = x32.clone().powi_scalar(2).mean_dim(D - 1);
    let normed = x32 * (variance + eps).sqrt().recip();
    let normed = if dtype == DType::F32 {
        normed
    } else {
        normed.cast(dtype)
    };
    let d = weight.dims()[0];
    let mut shape = [1usize; D];
    shape[D - 1] = d;
    normed * weight.reshape(shape)
}

/// See [`super::rotary`].
pub fn rotary(x: Tensor<4>, cos: Tensor<3>, sin: Tensor<3>) -> Tensor<4> {
    let [_, _, _, head_dim] = x.dims();
    let half = head_dim / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    // [batch, seq, half] -> [batch, seq, 1, half], broadcast over heads.
    let cos = cos.unsqueeze_dim::<4>(2);
    let sin = sin.unsqueeze_dim::<4>(2);
    let out1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let out2 = x2 * cos + x1 * sin;
    Tensor::cat(vec![out1, out2], 3)
}

/// See [`super::causal_attention`]: repeat the KV heads for their query groups and use burn's
/// attention op with bottom-right-aligned causal masking.
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let [_, _, h, _] = q.dims();
    let kvh = k.dims()[2];
    let q = q.swap_dims(1, 2);
    let k = repeat_kv(k.swap_dims(1, 2), h / kvh);
    let v = repeat_kv(v.swap_dims(1, 2), h / kvh);
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: true,
    };
    attention(q, k, v, None, None, options).swap_dims(1, 2)
}

/// `[b, kv_heads, t, d]` → `[b, kv_heads * n_rep, t, d]`, each KV head repeated for its group
/// of query heads (burn's attention op has no grouped-query support).
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kvh, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kvh, n_rep, t, d])
        .reshape([b, kvh * n_rep, t, d])
}

/// See [`super::swiglu`]: `silu(gate) * up`.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::silu(gate) * up
}

/// Gradients of [`swiglu`] wrt `gate` and `up`: with `σ = sigmoid(gate)`,
/// `∂gate = grad·up·σ·(1 + gate·(1 − σ))` and `∂up = grad·gate·σ`.
pub fn swiglu_backward<const D: usize>(
    gate: Tensor<D>,
    up: Tensor<D>,
    grad: Tensor<D>,
) -> (Tensor<D>, Tensor<D>) {
    let sig = burn::tensor::activation::sigmoid(gate.clone());
    let silu = gate.clone() * sig.clone();
    let dsilu = sig.clone() * (gate * (sig.neg() + 1.0) + 1.0);
    (grad.clone() * up * dsilu, grad * silu)
}

/// Gradients of [`rms_norm`] (f32) wrt `x` `[rows, d]` and `weight` `[d]`: with
/// `r = 1/sqrt(mean(x²) + eps)` and `gw = grad·weight`,
/// `∂x = r·gw − x·r³·mean(gw·x)` and `∂weight = Σ_rows grad·x·r`.
pub fn rms_norm_backward(
    x: Tensor<2>,
    weight: Tensor<1>,
    grad: Tensor<2>,
    eps: f64,
) -> (Tensor<2>, Tensor<1>) {
    let d = weight.dims()[0];
    let r = (x.clone().powi_scalar(2).mean_dim(1) + eps).sqrt().recip(); // [rows, 1]
    let gw = grad.clone() * weight.reshape([1, d]);
    let dot = (gw.clone() * x.clone()).mean_dim(1); // [rows, 1]
    let r3 = r.clone().powi_scalar(3);
    let dx = gw * r.clone() - x.clone() * (r3 * dot);
    let dw = (grad * x * r).sum_dim(0).reshape([d]);
    (dx, dw)
}

/// Causal GQA attention (see [`super::causal_attention`]) that also returns the row
/// log-sum-exp of the scaled scores, `[b, h, s]` (f32). Materialises the scores: a reference.
pub fn causal_attention_lse(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<3>) {
    let [b, s, h, d] = q.dims();
    let [_, t, kvh, _] = k.dims();
    let q = q.swap_dims(1, 2); // [b, h, s, d]
    let k = repeat_kv(k.swap_dims(1, 2), h / kvh);
    let v = repeat_kv(v.swap_dims(1, 2), h / kvh);
    let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt()); // [b, h, s, t]
    let mask = causal_mask(s, t, &scores.device());
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    let max = scores.clone().max_dim(3);
    let lse = (scores.clone() - max.clone()).exp().sum_dim(3).log() + max; // [b, h, s, 1]
    let p = (scores - lse.clone()).exp();
    let out = p.matmul(v).swap_dims(1, 2);
    (out, lse.reshape([b, h, s]))
}

/// `[s, t]` → broadcastable `[1, 1, s, t]` mask, true where key `j > t - s + i` (hidden).
fn causal_mask(s: usize, t: usize, device: &burn::tensor::Device) -> Tensor<4, burn::tensor::Bool> {
    let rows = Tensor::<1, burn::tensor::Int>::arange(0..s as i64, device)
        .reshape([s, 1])
        .add_scalar((t - s) as i64);
    let cols = Tensor::<1, burn::tensor::Int>::arange(0..t as i64, device).reshape([1, t]);
    cols.greater(rows).reshape([1, 1, s, t])
}

/// Gradients of [`causal_attention_lse`] wrt `q`, `k`, `v` (reference, materialised scores):
/// `P = exp(S − lse)`, `∂V = Pᵀ·∂O`, `∂S = P·(∂O·Vᵀ − rowsum(∂O·O))`, `∂Q = ∂S·K·scale`,
/// `∂K = ∂Sᵀ·Q·scale`, summed over the query heads of each KV group.
pub fn causal_attention_backward(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    out: Tensor<4>,
    lse: Tensor<3>,
    grad: Tensor<4>,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [b, s, h, d] = q.dims();
    let [_, t, kvh, _] = k.dims();
    let rep = h / kvh;
    let scale = 1.0 / (d as f64).sqrt();
    let qh = q.swap_dims(1, 2);
    let kh = repeat_kv(k.swap_dims(1, 2), rep);
    let vh = repeat_kv(v.swap_dims(1, 2), rep);
    let go = grad.swap_dims(1, 2);
    let oh = out.swap_dims(1, 2);
    let scores = qh.clone().matmul(kh.clone().swap_dims(2, 3)) * scale;
    let mask = causal_mask(s, t, &scores.device());
    let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
    let p = (scores - lse.reshape([b, h, s, 1])).exp(); // [b, h, s, t]
    let dv = p.clone().swap_dims(2, 3).matmul(go.clone()); // [b, h, t, d]
    let dp = go.clone().matmul(vh.swap_dims(2, 3));
    let delta = (go * oh).sum_dim(3); // [b, h, s, 1]
    let ds = p * (dp - delta) * scale;
    let dq = ds.clone().matmul(kh).swap_dims(1, 2);
    let dk = ds.swap_dims(2, 3).matmul(qh); // [b, h, t, d]
    // Sum the query heads of each group back onto their KV head.
    let fold = |x: Tensor<4>| {
        x.reshape([b, kvh, rep, t, d])
            .sum_dim(2)
            .reshape([b, kvh, t, d])
    };
    (dq, fold(dk).swap_dims(1, 2), fold(dv).swap_dims(1, 2))
}

/// See [`super::lm_head_logps`]: the tile loop in burn tensor ops (its primitives on burn's
/// `Dispatch` backend), so burn's autodiff differentiates it — keeping every tile's logits and
/// softmax for the backward. Never keeps logits of its own.
pub fn lm_head_logps(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    tiling: VocabTiling,
    with_stats: bool,
) -> TargetLogps {
    let (logps, lse, stats) = lm_head::forward::<Dispatch>(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        targets.into_dispatch(),
        tiling,
        with_stats,
    );
    TargetLogps::from_dispatch((logps, lse, stats, None))
}

/// Gradients of [`lm_head_logps`] wrt `hidden` and `weight` (see
/// [`super::lm_head_logps_backward`]), every tile recomputed.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_logps_backward(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    lse: Tensor<1>,
    grad: Tensor<1>,
    tiling: VocabTiling,
    need_hidden: bool,
    need_weight: bool,
) -> (Option<Tensor<2>>, Option<Tensor<2>>) {
    let (dh, dw) = lm_head::backward::<Dispatch>(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        targets.into_dispatch(),
        lse.into_dispatch(),
        grad.into_dispatch(),
        tiling,
        need_hidden,
        need_weight,
    );
    (dh.map(Tensor::from_dispatch), dw.map(Tensor::from_dispatch))
}
