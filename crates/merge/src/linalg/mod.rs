//! Dense linear algebra in f64 for LoRA extraction: a randomized truncated SVD
//! ([`truncated_svd`]), the exact Jacobi SVD it finishes with ([`jacobi_svd`]), and the
//! blocked products they spend their time in. No linear-algebra dependency: every reduction
//! runs in a fixed order, so results are bit-for-bit reproducible on any thread count.

mod gemm;
mod svd;

use rayon::prelude::*;

pub use svd::{Svd, SvdOptions, jacobi_svd, truncated_svd};

/// `a·b`, summed in order.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y += a·x`.
pub(crate) fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Transpose a row-major `[rows, cols]` matrix.
pub(crate) fn transpose<T: Copy + Default + Send + Sync>(
    x: &[T],
    rows: usize,
    cols: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); rows * cols];
    if rows == 0 || cols == 0 {
        return out;
    }
    out.par_chunks_mut(rows).enumerate().for_each(|(j, dst)| {
        for (i, d) in dst.iter_mut().enumerate() {
            *d = x[i * cols + j];
        }
    });
    out
}
