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

/// `Σ x[base..base + d]²` in f32 over the cube (every unit must call it).
#[cube]
fn row_sum_squares<F: Float>(
    x: &Tensor<F>,
    base: usize,
    d: usize,
    partial: &mut Shared<[f32]>,
    #[comptime] block: usize,
) -> f32 {
    let mut acc = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < d {
        let v = f32::cast_from(x[base + i]);
        acc += v * v;
        i += block;
    }
    partial[UNIT_POS as usize] = acc;
    cube_sum(partial, block)
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
    let rows = x.shape(0);
    let d = x.shape(1);
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let base = row * d;
    let mut partial = Shared::<[f32]>::new_slice(block);
    let total = row_sum_squares::<F>(x, base, d, &mut partial, block);
    let inv = 1.0f32 / f32::sqrt(total / f32::cast_from(d as u32) + eps);
    let mut i = unit;
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
    let rows = x.shape(0);
    let d = x.shape(1);
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let base = row * d;
    let mut partial = Shared::<[f32]>::new_slice(block);
    let squares = row_sum_squares::<F>(x, base, d, &mut partial, block);
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
    let dn = f32::cast_from(d as u32);
    let r = 1.0f32 / f32::sqrt(squares / dn + eps);
    let coef = r * r * r * dot / dn;
    let mut i = unit;
    while i < d {
        let v = f32::cast_from(x[base + i]);
        let g = f32::cast_from(grad[base + i]);
        dx[base + i] = F::cast_from(r * g * f32::cast_from(weight[i]) - v * coef);
        gxr[base + i] = g * v * r;
        i += block;
    }
}
