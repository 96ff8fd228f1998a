//! How per-vector methods (nuslerp, model_stock with `filter_wise`) split a tensor into
//! vectors, and deterministic reductions over those vectors.
//!
//! Reductions accumulate in f64 in a fixed order (fixed chunks for whole tensors, element
//! order within a row or column), so results do not depend on the thread count.

use rayon::prelude::*;

use crate::method::CHUNK;

/// The vectors of a row-major tensor of `n` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vectors {
    /// The whole flattened tensor is one vector.
    Whole,
    /// Vectors along the last axis (the rows of a matrix), `len` contiguous elements each.
    LastAxis { len: usize },
    /// Vectors along the first axis (the columns of a matrix): `len = shape[0]` elements
    /// `stride` apart, one vector per index of the other axes.
    FirstAxis { len: usize, stride: usize },
}

impl Vectors {
    /// Vectors along the last axis; a tensor of rank ≤ 1 is one vector.
    pub(crate) fn last_axis(shape: &[usize]) -> Self {
        match shape {
            [] | [_] => Self::Whole,
            [.., last] => Self::LastAxis { len: *last },
        }
    }

    /// Vectors along the first axis; a tensor of rank ≤ 1 is one vector.
    pub(crate) fn first_axis(shape: &[usize]) -> Self {
        match shape {
            [] | [_] => Self::Whole,
            [first, rest @ ..] => Self::FirstAxis {
                len: *first,
                stride: rest.iter().product(),
            },
        }
    }

    /// Number of vectors in a tensor of `n` elements.
    pub(crate) fn count(&self, n: usize) -> usize {
        match *self {
            Self::Whole => 1,
            Self::LastAxis { len } => n.checked_div(len).unwrap_or(0),
            Self::FirstAxis { stride, .. } => stride,
        }
    }

    /// The vector flat element `j` belongs to.
    pub(crate) fn vector_of(&self, j: usize) -> usize {
        match *self {
            Self::Whole => 0,
            Self::LastAxis { len } => j.checked_div(len).unwrap_or(0),
            Self::FirstAxis { stride, .. } => j.checked_rem(stride).unwrap_or(0),
        }
    }

    /// For each vector, `k` sums: `f(j, acc)` adds element `j`'s terms into `acc`.
    pub(crate) fn reduce(
        &self,
        n: usize,
        k: usize,
        f: impl Fn(usize, &mut [f64]) + Sync,
    ) -> Vec<Vec<f64>> {
        match *self {
            Self::Whole => {
                let parts: Vec<Vec<f64>> = (0..n.div_ceil(CHUNK))
                    .into_par_iter()
                    .map(|c| {
                        let mut acc = vec![0f64; k];
                        for j in c * CHUNK..((c + 1) * CHUNK).min(n) {
                            f(j, &mut acc);
                        }
                        acc
                    })
                    .collect();
                let mut total = vec![0f64; k];
                for p in parts {
                    total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
                }
                vec![total]
            }
            Self::LastAxis { len } => (0..self.count(n))
                .into_par_iter()
                .map(|v| {
                    let mut acc = vec![0f64; k];
                    for j in v * len..(v + 1) * len {
                        f(j, &mut acc);
                    }
                    acc
                })
                .collect(),
            Self::FirstAxis { len, stride } => (0..stride)
                .into_par_iter()
                .map(|v| {
                    let mut acc = vec![0f64; k];
                    for i in 0..len {
                        f(v + i * stride, &mut acc);
                    }
                    acc
                })
                .collect(),
        }
    }
}

/// `out[j] = f(j)` for every element, in parallel.
pub(crate) fn fill(out: &mut [f32], f: impl Fn(usize) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = f(c * CHUNK + i);
            }
        });
}

/// `v[j] = f(j, v[j])` for every element, in parallel.
pub(crate) fn update(v: &mut [f32], f: impl Fn(usize, f32) -> f32 + Sync) {
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        for (i, x) in chunk.iter_mut().enumerate() {
            *x = f(c * CHUNK + i, *x);
        }
    });
}

/// Σ `f(j)` over `0..n` in f64, over fixed chunks (deterministic).
pub(crate) fn sum(n: usize, f: impl Fn(usize) -> f64 + Sync) -> f64 {
    let parts: Vec<f64> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| (c * CHUNK..((c + 1) * CHUNK).min(n)).map(&f).sum::<f64>())
        .collect();
    parts.into_iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_of_a_matrix() {
        let rows = Vectors::last_axis(&[2, 3]);
        assert_eq!(rows.count(6), 2);
        assert_eq!(rows.vector_of(4), 1);
        let cols = Vectors::first_axis(&[2, 3]);
        assert_eq!(cols.count(6), 3);
        assert_eq!(cols.vector_of(4), 1);
        assert_eq!(Vectors::last_axis(&[5]), Vectors::Whole);
        let x = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let sums = |v: Vectors| v.reduce(6, 1, |j, acc| acc[0] += x[j]);
        assert_eq!(sums(rows), vec![vec![6.0], vec![15.0]]);
        assert_eq!(sums(cols), vec![vec![5.0], vec![7.0], vec![9.0]]);
        assert_eq!(sums(Vectors::Whole), vec![vec![21.0]]);
        assert_eq!(sum(6, |j| x[j]), 21.0);
    }
}
