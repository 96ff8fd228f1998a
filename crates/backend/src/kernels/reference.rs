//! Portable implementations in burn tensor ops: they run on every backend, are differentiable
//! under autodiff, and are the reference the fused kernels are tested against.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Tensor};

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
