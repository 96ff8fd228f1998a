//! One strided f32 gemm call behind a bounds-checked view, for the CPU kernels, and its split
//! over rayon's threads.

use std::mem::MaybeUninit;

/// A strided read-only matrix: element `(i, j)` at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    pub(super) fn new(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }

    /// The same matrix read transposed.
    pub(super) fn t(self) -> Self {
        Self {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// The view starting at row `r0` (`r0` inside the data).
    pub(super) fn rows_from(self, r0: usize) -> Self {
        Self {
            data: &self.data[r0 * self.rs..],
            ..self
        }
    }

    /// The view starting at column `c0` (`c0` inside the data).
    pub(super) fn cols_from(self, c0: usize) -> Self {
        Self {
            data: &self.data[c0 * self.cs..],
            ..self
        }
    }

    /// Panics unless every element of a `rows × cols` view lies inside `data`.
    fn check(&self, rows: usize, cols: usize) {
        assert!(
            (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len(),
            "gemm: a {rows}×{cols} view (strides {}, {}) overruns {} elements",
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// `dst[m, n]` (row-major, contiguous) `= (accumulate ? dst : 0) + alpha · lhs[m, k] · rhs[k, n]`
/// on this thread (callers that run many in parallel tasks).
pub(super) fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
) {
    let out = Out::over(dst, [m, n]);
    // SAFETY: `out` covers a unique borrow of at least `m × n` initialised elements.
    #[allow(unsafe_code)]
    unsafe {
        gemm_into(
            out,
            accumulate,
            lhs,
            rhs,
            [m, k, n],
            alpha,
            gemm::Parallelism::None,
        )
    }
}

/// [`matmul`] split over rayon's threads when the product is large enough to pay for it
/// (burn-flex's threshold: 192³ multiply-adds).
pub(super) fn matmul_parallel(
    dst: &mut [f32],
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
) {
    let out = Out::over(dst, [m, n]);
    // SAFETY: `out` covers a unique borrow of at least `m × n` initialised elements.
    #[allow(unsafe_code)]
    unsafe {
        split_over_threads(out, accumulate, lhs, rhs, [m, k, n], alpha)
    }
}

/// [`matmul_parallel`] without accumulation into memory that need not be initialised: the
/// product is written, never read, so a fresh output skips the zero-filling pass (a serial
/// `memset` of the whole output on the calling thread). Returns `dst[..m·n]`, initialised.
pub(super) fn matmul_parallel_uninit<'d>(
    dst: &'d mut [MaybeUninit<f32>],
    lhs: View<'_>,
    rhs: View<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
) -> &'d mut [f32] {
    assert!(dst.len() >= m * n, "gemm: output buffer too small");
    let dst = &mut dst[..m * n];
    let out = Out::over(dst, [m, n]);
    #[allow(unsafe_code)]
    // SAFETY: `dst` is a unique borrow of `m × n` elements; without accumulation gemm writes
    // every one of them and reads none (`gemm_into` zero-fills when `k` is 0), so afterwards
    // they are initialised f32s.
    unsafe {
        split_over_threads(out, false, lhs, rhs, [m, k, n], alpha);
        &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32])
    }
}

/// A fresh row-major `m × n` product `alpha · lhs · rhs`, computed on all threads into a
/// buffer that is never zero-filled first.
pub(super) fn product(lhs: View<'_>, rhs: View<'_>, [m, k, n]: [usize; 3], alpha: f32) -> Vec<f32> {
    let mut data = Vec::with_capacity(m * n);
    matmul_parallel_uninit(data.spare_capacity_mut(), lhs, rhs, [m, k, n], alpha);
    #[allow(unsafe_code)]
    // SAFETY: `matmul_parallel_uninit` initialised the first `m × n` elements.
    unsafe {
        data.set_len(m * n)
    };
    data
}

/// Products below this many multiply-adds run on the calling thread (burn-flex's threshold).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// The fewest output rows one thread takes in a row split.
const MIN_ROWS: usize = 64;

/// The width of gemm's f32 micro-tile along the output's columns, as gemm runs a product with
/// a row-major output (it computes the transposed product, so our columns are its rows): 64
/// with AVX-512, 16 with AVX2 (and used as the default elsewhere). A column block narrower
/// than this, or not a multiple of it, leaves work to gemm's slower edge kernels.
fn micro_tile_cols() -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return 64;
    }
    16
}

/// How one product is spread over rayon's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// On the calling thread: too small to pay for a split.
    None,
    /// One single-threaded gemm per thread on disjoint blocks of output rows.
    Rows,
    /// One single-threaded gemm per thread on disjoint blocks of output columns.
    Cols,
    /// gemm's own rayon mode.
    Gemm,
}

/// The split for an `m × k × n` product on `threads` threads.
///
/// Rows first: every thread runs gemm's full-width micro-tiles and packs its own operands,
/// with no synchronisation inside the product. gemm's own rayon mode synchronises the threads
/// at every block of the inner dimension and packs a transposed right-hand side (`∂x = ∂y·Wᵀ`
/// in every backward) on the calling thread first; on a 2-core AVX2 machine it ran the
/// products of a training step at 34–45 GFLOP/s where the row split ran them at 67–69 (one
/// core: 33). Each thread packing the whole right-hand side costs `threads / m` of the work.
/// Outputs with too few rows split by columns, in whole micro-tiles; only products too narrow
/// both ways are left to gemm.
fn split_for(threads: usize, [m, k, n]: [usize; 3], tile: usize) -> Split {
    let work = m.saturating_mul(k).saturating_mul(n);
    if threads < 2 || work < PARALLEL_WORK {
        Split::None
    } else if m / threads >= MIN_ROWS {
        Split::Rows
    } else if n / threads >= tile {
        Split::Cols
    } else {
        Split::Gemm
    }
}

/// A row-major output block: element `(i, j)` at `ptr + i·rs + j`.
/// Shared with the half-precision products (`half_gemm`), whose kernels write through it too.
#[derive(Clone, Copy)]
pub(super) struct Out {
    pub(super) ptr: *mut f32,
    pub(super) rs: usize,
}

impl Out {
    /// The row-major `m × n` block at the start of `dst` (f32s, initialised or not).
    pub(super) fn over<T>(dst: &mut [T], [m, n]: [usize; 2]) -> Self {
        assert!(
            size_of::<T>() == size_of::<f32>() && dst.len() >= m * n,
            "gemm: output buffer too small"
        );
        Self {
            ptr: dst.as_mut_ptr().cast::<f32>(),
            rs: n,
        }
    }

    /// The block starting at element `(row, col)`.
    ///
    /// # Safety
    /// The element lies inside the caller's block.
    #[allow(unsafe_code)]
    pub(super) unsafe fn at(self, row: usize, col: usize) -> Self {
        Self {
            // SAFETY: forwarded from the caller.
            ptr: unsafe { self.ptr.add(row * self.rs + col) },
            ..self
        }
    }
}

// SAFETY: an `Out` is only a position; the blocks handed to different threads are disjoint
// (see `split_over_threads`, and the splits in `half_gemm`'s `packed` and `small_m`), so no
// two threads write the same element.
#[allow(unsafe_code)]
unsafe impl Send for Out {}
#[allow(unsafe_code)]
unsafe impl Sync for Out {}

/// Runs one product on rayon's threads as [`split_for`] decides: one single-threaded gemm
/// per thread over disjoint blocks of output rows (or columns), else gemm's own split.
///
/// # Safety
/// `out` addresses a block of `m` rows of `n` elements (rows `out.rs` apart) that nothing
/// else reads or writes during the call, initialised when `accumulate` is set.
#[allow(unsafe_code)]
unsafe fn split_over_threads(
    out: Out,
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let tile = micro_tile_cols();
    let (by_cols, len, size) = match split_for(threads, [m, k, n], tile) {
        Split::Rows => (false, m, m.div_ceil(threads)),
        Split::Cols => (true, n, n.div_ceil(threads).next_multiple_of(tile)),
        split => {
            let parallelism = if split == Split::Gemm {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: forwarded from the caller.
            return unsafe { gemm_into(out, accumulate, lhs, rhs, [m, k, n], alpha, parallelism) };
        }
    };
    (0..len.div_ceil(size)).into_par_iter().for_each(|i| {
        let (s, e) = (i * size, ((i + 1) * size).min(len));
        // SAFETY: block `i` is columns (or rows) `s..e` of the caller's block, disjoint from
        // every other task's; views and output move together so element bounds still hold.
        unsafe {
            let (block, lhs, rhs, mkn) = if by_cols {
                (out.at(0, s), lhs, rhs.cols_from(s), [m, k, e - s])
            } else {
                (out.at(s, 0), lhs.rows_from(s), rhs, [e - s, k, n])
            };
            gemm_into(
                block,
                accumulate,
                lhs,
                rhs,
                mkn,
                alpha,
                gemm::Parallelism::None,
            );
        }
    });
}

/// # Safety
/// As [`split_over_threads`].
#[allow(unsafe_code)]
unsafe fn gemm_into(
    out: Out,
    accumulate: bool,
    lhs: View<'_>,
    rhs: View<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row `i` of the caller's block.
                unsafe { std::ptr::write_bytes(out.at(i, 0).ptr, 0, n) };
            }
        }
        return;
    }
    lhs.check(m, k);
    rhs.check(k, n);
    // SAFETY: `check` proved every element the strides address lies inside `lhs.data` and
    // `rhs.data`; the caller guarantees the output block, which cannot alias the inputs (they
    // are shared borrows, it is exclusively ours).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.ptr,
            1,
            out.rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Deterministic values in [-1, 1) (an LCG: no test-only dependency needed).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `op(lhs)·op(rhs)` by the definition, accumulated in f64.
    fn naive(lhs: View<'_>, rhs: View<'_>, [m, k, n]: [usize; 3]) -> Vec<f32> {
        let at = |v: View<'_>, i: usize, j: usize| v.data[i * v.rs + j * v.cs] as f64;
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| at(lhs, i, p) * at(rhs, p, j)).sum::<f64>() as f32;
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn split_for_takes_rows_then_columns() {
        let cases = [
            (2, [256, 112, 256], Split::Rows),
            (2, [520, 140, 100], Split::Rows),
            (3, [520, 140, 100], Split::Rows),
            (2, [40, 300, 700], Split::Cols),
            (2, [60, 8000, 24], Split::Gemm),
            (3, [40, 300, 700], Split::Cols),
            (1, [1024, 576, 1536], Split::None),
            (2, [97, 31, 75], Split::None),
            (2, [130, 0, 200], Split::None),
        ];
        for (threads, mkn, want) in cases {
            assert_eq!(
                split_for(threads, mkn, 16),
                want,
                "{threads} threads, {mkn:?}"
            );
        }
        // With AVX-512's 64-wide tile, 100 columns on two threads are too narrow.
        assert_eq!(split_for(2, [60, 8000, 100], 64), Split::Gemm);
        assert_eq!(split_for(2, [60, 8000, 100], 16), Split::Cols);
    }

    /// Every way a product is split over threads (by column, by row, gemm's own split, on the
    /// calling thread) and every operand layout gives the product by the definition; the
    /// uninitialised-output path never reads its (NaN-filled) destination, and accumulation
    /// adds to it.
    #[test]
    fn split_products_equal_the_definition() {
        // Row split, column split (few rows), gemm's own split (few rows and columns), below
        // the threshold (one thread), odd sizes, k = 0; `split_for_takes_rows_then_columns`
        // checks which shape takes which split.
        let shapes = [
            [256, 112, 256],
            [520, 140, 100],
            [40, 300, 700],
            [60, 8000, 24],
            [97, 31, 75],
            [130, 0, 200],
        ];
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                for (si, &[m, k, n]) in shapes.iter().enumerate() {
                    let a = values(m * k, si as u64);
                    let b = values(k * n, 100 + si as u64);
                    for (tl, tr) in [(false, false), (true, false), (false, true), (true, true)] {
                        let lhs = if tl {
                            View::new(&a, 1, m)
                        } else {
                            View::new(&a, k, 1)
                        };
                        let rhs = if tr {
                            View::new(&b, 1, k)
                        } else {
                            View::new(&b, n, 1)
                        };
                        let what =
                            format!("{threads} threads, [{m}, {k}]·[{k}, {n}], tl {tl} tr {tr}");
                        let want = naive(lhs, rhs, [m, k, n]);

                        let fresh = product(lhs, rhs, [m, k, n], 1.0);
                        assert_close(&fresh, &want, &format!("product, {what}"));

                        let mut garbage = vec![MaybeUninit::new(f32::NAN); m * n + 3];
                        let got = matmul_parallel_uninit(&mut garbage, lhs, rhs, [m, k, n], 1.0);
                        assert_close(got, &want, &format!("uninit, {what}"));

                        let mut acc = values(m * n, 7);
                        let expect: Vec<f32> =
                            acc.iter().zip(&want).map(|(x, p)| x - 0.5 * p).collect();
                        matmul_parallel(&mut acc, true, lhs, rhs, [m, k, n], -0.5);
                        assert_close(&acc, &expect, &format!("accumulate, {what}"));
                    }
                }
            });
        }
    }
}
