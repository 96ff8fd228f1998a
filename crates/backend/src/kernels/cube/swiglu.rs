//! SwiGLU `silu(gate) · up` and its backward, elementwise in f32.

use burn::cubecl;
use burn::cubecl::prelude::*;

#[cube]
fn sigmoid(x: f32) -> f32 {
    1.0f32 / (1.0f32 + f32::exp(-x))
}

#[cube(launch)]
pub(super) fn swiglu_kernel<F: Float>(
    gate: &Tensor<F>,
    up: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let g = f32::cast_from(gate[i]);
    out[i] = F::cast_from(g * sigmoid(g) * f32::cast_from(up[i]));
}

/// `dgate = grad·up·σ·(1 + gate·(1 − σ))`, `dup = grad·gate·σ`.
#[cube(launch)]
pub(super) fn swiglu_backward_kernel<F: Float>(
    gate: &Tensor<F>,
    up: &Tensor<F>,
    grad: &Tensor<F>,
    dgate: &mut Tensor<F>,
    dup: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i >= grad.len() {
        terminate!();
    }
    let g = f32::cast_from(gate[i]);
    let u = f32::cast_from(up[i]);
    let go = f32::cast_from(grad[i]);
    let sig = sigmoid(g);
    dgate[i] = F::cast_from(go * u * sig * (1.0f32 + g * (1.0f32 - sig)));
    dup[i] = F::cast_from(go * g * sig);
}
