//! RMSNorm forward and backward: one cube per row, units stride over the row, a shared-memory
//! tree sums the squares. Accumulates in f32 whatever the storage dtype.

use burn::cubecl;
use burn::cubecl::prelude::*;

/// Sums `partial[0..block]` across the cube (every unit must call it); returns the total to
/// every unit.
#[cube]
pub(super) fn cube_sum(partial: &mut Shared<[f32]>, #[comptime] block: usize) -> f32 {
    sync_cube();
    let unit = UNIT_POS as usize;
    let mut active = comptime!(block).runtime();
    while active > 1 {
        active /= 2;
        if unit < active {
            let other = partial[unit + active];
            partial[unit] += other;
        }
        sync_cube();
    }
    let total = partial[0];
    sync_cube();
    total
}

/// `1/sqrt(mean(x²) + eps)` in f32 of the row `CUBE_POS` of `x` `[rows, d]`, and the row's
/// start, over the cube (every unit must call it; `partial` holds `block` values); ends the
/// cubes past the last row.
#[cube]
fn row_inv_rms<F: Float>(
    x: &Tensor<F>,
    partial: &mut Shared<[f32]>,
    eps: f32,
    #[comptime] block: usize,
) -> (f32, usize) {
    let d = x.shape(1);
    let row = CUBE_POS;
    if row >= x.shape(0) {
        terminate!();
    }
    let base = row * d;
    let mut acc = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < d {
        let v = f32::cast_from(x[base + i]);
        acc += v * v;
        i += block;
    }
    partial[UNIT_POS as usize] = acc;
    let total = cube_sum(partial, block);
    let inv = 1.0f32 / f32::sqrt(total / f32::cast_from(d as u32) + eps);
    (inv, base)
}

/// `out = weight · x / sqrt(mean(x²) + eps)` for `x` `[rows, d]`, `weight` `[d]`.
#[cube(launch)]
pub(super) fn rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    out: &mut Tensor<F>,
    eps: f32,
    #[comptime] block: usize,
    #[define(F)] _dtype: ElemType,
) {
    let d = x.shape(1);
    let mut partial = Shared::<[f32]>::new_slice(block);
    let (inv, base) = row_inv_rms::<F>(x, &mut partial, eps, block);
    let mut i = UNIT_POS as usize;
    while i < d {
        // HF order: normalise in f32, cast to the storage dtype, then scale by the weight.
        out[base + i] = F::cast_from(f32::cast_from(x[base + i]) * inv) * weight[i];
        i += block;
    }
}

/// With `r = 1/sqrt(mean(x²) + eps)` and `gw = grad·weight`:
/// `dx = r·gw − x·r³·mean(gw·x)`, and `gxr = grad·x·r` (f32) whose column sums are the
/// weight gradient.
#[cube(launch)]
pub(super) fn rms_norm_backward_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    grad: &Tensor<F>,
    dx: &mut Tensor<F>,
    gxr: &mut Tensor<f32>,
    eps: f32,
    #[comptime] block: usize,
    #[define(F)] _dtype: ElemType,
) {
    let d = x.shape(1);
    let unit = UNIT_POS as usize;
    let mut partial = Shared::<[f32]>::new_slice(block);
    let (r, base) = row_inv_rms::<F>(x, &mut partial, eps, block);
    let mut dot = 0.0f32;
    let mut i = unit;
    while i < d {
        dot += f32::cast_from(grad[base + i])
            * f32::cast_from(weight[i])
            * f32::cast_from(x[base + i]);
        i += block;
    }
    partial[unit] = dot;
    let dot = cube_sum(&mut partial, block);
    let coef = r * r * r * dot / f32::cast_from(d as u32);
    let mut i = unit;
    while i < d {
        let v = f32::cast_from(x[base + i]);
        let g = f32::cast_from(grad[base + i]);
        dx[base + i] = F::cast_from(r * g * f32::cast_from(weight[i]) - v * coef);
        gxr[base + i] = g * v * r;
        i += block;
    }
}
