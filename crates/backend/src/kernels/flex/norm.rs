//! RMSNorm forward and backward on contiguous f32 rows, rows in parallel.
//!
//! Each row is read once and written once (the tensor-op chain reads and writes it four to six
//! times). The weight gradient is summed per fixed block of rows and the block sums are added
//! in order, so the result does not depend on the thread count or on scheduling (resumed
//! training runs stay bit-identical).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::simd::{dispatch, dot};

/// Rows per rayon task and per partial weight-gradient sum.
const ROWS_PER_BLOCK: usize = 16;

/// `1 / sqrt(mean(row²) + eps)`, the squares summed in order as PyTorch's CPU reduction of
/// a short row does (the forward feeds inference parity; a lane-split sum moves logits by ulps).
#[inline(always)]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let sum: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (sum / row.len() as f32 + eps).sqrt()
}

/// `out = weight · x / sqrt(mean(x²) + eps)` per row of `d` (HF's order: normalise, then scale),
/// every element of `out` written (it may start uninitialised).
pub(super) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    let d = weight.len().max(1);
    assert!(
        x.len() == out.len() && x.len().is_multiple_of(d) && (weight.len() == d || x.is_empty()),
        "rms_norm: {} inputs, {} outputs, rows of {d}",
        x.len(),
        out.len()
    );
    out.par_chunks_mut(d * ROWS_PER_BLOCK)
        .zip(x.par_chunks(d * ROWS_PER_BLOCK))
        .for_each(|(o, xs)| {
            dispatch(|| {
                for (o, row) in o.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                    let inv = inv_rms(row, eps);
                    for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
                        o.write(w * (v * inv));
                    }
                }
            })
        });
}

/// With `r = 1/sqrt(mean(x²) + eps)` and `gw = grad·weight`: `∂x = r·gw − x·r³·mean(gw·x)`,
/// `∂weight = Σ_rows grad·x·r`. Every element of `dx` is written (it may start
/// uninitialised).
pub(super) fn rms_norm_backward(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    eps: f32,
    dx: &mut [MaybeUninit<f32>],
    dweight: &mut [f32],
) {
    let d = weight.len().max(1);
    assert!(
        x.len() == dx.len()
            && grad.len() == dx.len()
            && x.len().is_multiple_of(d)
            && (weight.len() == d || x.is_empty()),
        "rms_norm_backward: {} inputs, {} gradients, {} outputs, rows of {d}",
        x.len(),
        grad.len(),
        dx.len()
    );
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(d * ROWS_PER_BLOCK)
        .zip(
            x.par_chunks(d * ROWS_PER_BLOCK)
                .zip(grad.par_chunks(d * ROWS_PER_BLOCK)),
        )
        .map(|(dxs, (xs, gs))| {
            dispatch(|| {
                let mut dw = vec![0.0f32; d];
                let mut gw = vec![0.0f32; d];
                for ((dx, row), g) in dxs
                    .chunks_exact_mut(d)
                    .zip(xs.chunks_exact(d))
                    .zip(gs.chunks_exact(d))
                {
                    let r = inv_rms(row, eps);
                    for ((gw, gv), w) in gw.iter_mut().zip(g).zip(weight) {
                        *gw = gv * w;
                    }
                    let c = r * r * r * dot(&gw, row) / d as f32;
                    for ((dx, (gw, v)), (gv, dw)) in dx
                        .iter_mut()
                        .zip(gw.iter().zip(row))
                        .zip(g.iter().zip(&mut dw))
                    {
                        dx.write(r * gw - v * c);
                        *dw += gv * v * r;
                    }
                }
                dw
            })
        })
        .collect();
    dweight.iter_mut().for_each(|v| *v = 0.0);
    for part in partials {
        for (acc, v) in dweight.iter_mut().zip(part) {
            *acc += v;
        }
    }
}
