//! Half-split rotary embedding: one unit per `(x[i], x[i + hd/2])` pair, queries and keys in
//! one launch.

use burn::cubecl;
use burn::cubecl::prelude::*;

/// Rotates pair `p` of `x` `[b, s, h, hd]` by the angle of its `(b, s, i)` in `cos`/`sin`
/// `[b, s, hd/2]`.
#[cube]
fn rotate_pair<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    out: &mut Tensor<F>,
    p: usize,
) {
    let h = x.shape(2);
    let half = x.shape(3) / 2;
    let i = p % half;
    let bsh = p / half;
    let bs = bsh / h;
    let xo = bsh * 2 * half + i;
    let co = bs * half + i;
    let c = f32::cast_from(cos[co]);
    let s = f32::cast_from(sin[co]);
    let x1 = f32::cast_from(x[xo]);
    let x2 = f32::cast_from(x[xo + half]);
    out[xo] = F::cast_from(x1 * c - x2 * s);
    out[xo + half] = F::cast_from(x2 * c + x1 * s);
}

#[cube(launch)]
pub(super) fn rotary_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let p = ABSOLUTE_POS;
    if p >= x.len() / 2 {
        terminate!();
    }
    rotate_pair::<F>(x, cos, sin, out, p);
}

/// Units `0..len(q)/2` rotate `q`, the next `len(k)/2` rotate `k`.
#[cube(launch)]
pub(super) fn rotary_qk_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    q_out: &mut Tensor<F>,
    k_out: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let p = ABSOLUTE_POS;
    let q_pairs = q.len() / 2;
    if p < q_pairs {
        rotate_pair::<F>(q, cos, sin, q_out, p);
    } else if p < q_pairs + k.len() / 2 {
        rotate_pair::<F>(k, cos, sin, k_out, p - q_pairs);
    }
}
