//! SwiGLU `silu(gate) · up` and its gradient on contiguous f32 slices, in parallel chunks.
//!
//! As burn tensor ops the forward is four element-wise passes (sigmoid = exp, add, recip, two
//! products) and the backward seven, each single-threaded on Flex; here each is one parallel
//! pass with a vectorised `exp`.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::simd::{dispatch, exp};

/// Elements per rayon task: large enough to amortise the split, small enough to balance.
const CHUNK: usize = 16 * 1024;

/// `out = gate · sigmoid(gate) · up`, every element of `out` written (it may start
/// uninitialised).
pub(super) fn swiglu(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(
        gate.len() == out.len() && up.len() == out.len(),
        "swiglu: gate {}, up {}, out {} elements",
        gate.len(),
        up.len(),
        out.len()
    );
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            dispatch(|| {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    o.write(g * u / (1.0 + exp(-g)));
                }
            })
        });
}

/// With `σ = sigmoid(gate)`: `∂gate = grad·up·σ·(1 + gate·(1 − σ))`, `∂up = grad·gate·σ`;
/// every element of both outputs written (they may start uninitialised).
pub(super) fn swiglu_backward(
    gate: &[f32],
    up: &[f32],
    grad: &[f32],
    d_gate: &mut [MaybeUninit<f32>],
    d_up: &mut [MaybeUninit<f32>],
) {
    let n = d_gate.len();
    assert!(
        [gate.len(), up.len(), grad.len(), d_up.len()]
            .iter()
            .all(|&l| l == n),
        "swiglu_backward: gate {}, up {}, grad {}, outputs {n} and {} elements",
        gate.len(),
        up.len(),
        grad.len(),
        d_up.len()
    );
    d_gate
        .par_chunks_mut(CHUNK)
        .zip(d_up.par_chunks_mut(CHUNK))
        .zip(
            gate.par_chunks(CHUNK)
                .zip(up.par_chunks(CHUNK))
                .zip(grad.par_chunks(CHUNK)),
        )
        .for_each(|((dg, du), ((g, u), gr))| {
            dispatch(|| {
                for ((((dg, du), &g), &u), &gr) in
                    dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(gr)
                {
                    let sig = 1.0 / (1.0 + exp(-g));
                    du.write(gr * g * sig);
                    dg.write(gr * u * sig * (1.0 + g * (1.0 - sig)));
                }
            })
        });
}
