//! Products with at most [`MAX_M`] output rows (decode: a token's activations times a weight),
//! streaming the right-hand side once without packing it (AVX-512).
//!
//! Such a product is memory-bound: each weight element takes part in `m ≤ 4` multiply-adds,
//! so its speed is the rate the weight is read at, and a bf16 weight (2 bytes an element) is
//! read in half the time of an f32 one. The left-hand side is rounded once into an f32
//! scratch; weight elements are widened (and rounded, when stored wider than the half type)
//! in registers, then multiplied and summed with f32 FMAs — the products of two half values
//! are exact in f32, so only the summation rounds. Both weight layouts stream contiguously:
//!
//! - rows contiguous (`cs = 1`, `x·W` with `W: [k, n]`): the rows in order, four at a time
//!   added into an f32 accumulator row;
//! - columns contiguous (`rs = 1`, `x·Wᵀ` with `W: [n, k]`): dot products along `k` in 16
//!   lanes, summed by a fixed tree at the end.
//!
//! Each output element's summation order depends only on `k` (and on its layout), never on
//! how the columns are split over threads.

use std::arch::x86_64::*;

use burn::tensor::{bf16, f16};

use super::lanes::{Lanes, mask16};
use super::view::{HalfData, HalfType, HalfView};
use super::{Out, Threads};

/// The most output rows this path takes.
pub(super) const MAX_M: usize = 4;

/// Products with fewer weight elements than this stay on the calling thread.
const PARALLEL_WEIGHT: usize = 1 << 16;

/// Whether this path streams `rhs`: its rows or its columns must be contiguous.
pub(super) fn supports(rhs: HalfView<'_>) -> bool {
    let [rs, cs] = rhs.strides();
    cs == 1 || rs == 1
}

/// `out = (accumulate ? out : 0) + alpha · lhs · rhs` for `m ≤ MAX_M`, `k ≥ 1`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VL; `out` addresses `m` rows of `n` f32 (rows `out.rs`
/// apart) that nothing else touches during the call, initialised when `accumulate` is set;
/// `lhs` and `rhs` were checked to hold `m × k` and `k × n` elements; [`supports`]`(rhs)`.
#[allow(unsafe_code)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run(
    threads: Threads,
    out: Out,
    accumulate: bool,
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
    half: HalfType,
) {
    debug_assert!((1..=MAX_M).contains(&m) && k >= 1 && supports(rhs));
    let x: Vec<f32> = (0..m)
        .flat_map(|i| (0..k).map(move |p| half.round(lhs.get(i, p))))
        .collect();
    let run_cols = |j0: usize, j1: usize| {
        // SAFETY: columns `j0..j1` of the caller's block and of `rhs`; the caller's contract
        // for the rest.
        unsafe {
            columns(
                out.at(0, j0),
                accumulate,
                &x,
                rhs.cols_from(j0),
                [m, k, j1 - j0],
                alpha,
                half,
            )
        }
    };
    let threads_n = rayon::current_num_threads();
    if threads == Threads::Calling || threads_n < 2 || k.saturating_mul(n) < PARALLEL_WEIGHT {
        return run_cols(0, n);
    }
    // Whole 64-column blocks per thread (cache lines of output and weight stay whole).
    use rayon::prelude::*;
    let size = n.div_ceil(threads_n).next_multiple_of(64);
    (0..n.div_ceil(size))
        .into_par_iter()
        .for_each(|t| run_cols(t * size, ((t + 1) * size).min(n)));
}

/// [`run`] on one thread, dispatched on the weight's storage and the half type.
///
/// # Safety
/// As [`run`]; `x` holds `m × k` rounded values.
#[allow(unsafe_code)]
unsafe fn columns(
    out: Out,
    accumulate: bool,
    x: &[f32],
    rhs: HalfView<'_>,
    mkn: [usize; 3],
    alpha: f32,
    half: HalfType,
) {
    let bf = half == HalfType::Bf16;
    // SAFETY: forwarded.
    unsafe {
        match (rhs.data(), bf) {
            (HalfData::F32(d), true) => by_m::<f32, true>(out, accumulate, x, d, rhs, mkn, alpha),
            (HalfData::F32(d), false) => by_m::<f32, false>(out, accumulate, x, d, rhs, mkn, alpha),
            (HalfData::Bf16(d), true) => by_m::<bf16, true>(out, accumulate, x, d, rhs, mkn, alpha),
            (HalfData::Bf16(d), false) => {
                by_m::<bf16, false>(out, accumulate, x, d, rhs, mkn, alpha)
            }
            (HalfData::F16(d), true) => by_m::<f16, true>(out, accumulate, x, d, rhs, mkn, alpha),
            (HalfData::F16(d), false) => by_m::<f16, false>(out, accumulate, x, d, rhs, mkn, alpha),
        }
    }
}

/// The loop nest for this `m` and layout, with its register blocking: accumulators
/// (`m` × columns) plus the weight registers stay within AVX-512's 32.
///
/// # Safety
/// As [`columns`]; `w` is `rhs`'s data.
#[allow(unsafe_code)]
unsafe fn by_m<E: Lanes, const BF16: bool>(
    out: Out,
    accumulate: bool,
    x: &[f32],
    w: &[E],
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
) {
    let [rs, cs] = rhs.strides();
    let a = Args {
        out,
        accumulate,
        alpha,
        x: x.as_ptr(),
        w: w.as_ptr(),
        k,
        n,
    };
    // SAFETY: forwarded; `check` (by the caller) bounds every index the loops form.
    unsafe {
        if cs == 1 {
            match m {
                1 => rows::<E, BF16, 1>(a, rs),
                2 => rows::<E, BF16, 2>(a, rs),
                3 => rows::<E, BF16, 3>(a, rs),
                _ => rows::<E, BF16, 4>(a, rs),
            }
        } else {
            match m {
                1 => dots::<E, BF16, 1, 8>(a, cs),
                2 => dots::<E, BF16, 2, 8>(a, cs),
                3 => dots::<E, BF16, 3, 4>(a, cs),
                _ => dots::<E, BF16, 4, 4>(a, cs),
            }
        }
    }
}

/// What every loop nest reads: raw pointers, bounds established by the caller.
#[derive(Clone, Copy)]
struct Args<E> {
    out: Out,
    accumulate: bool,
    alpha: f32,
    /// `m × k` rounded left-hand values, row-major.
    x: *const f32,
    /// The weight: element `(p, j)` at `p·rs + j·cs`.
    w: *const E,
    k: usize,
    n: usize,
}

/// Rows-contiguous weight: the rows are read in order, [`ROWS`] at a time, each chunk of 16
/// columns added into an f32 accumulator row (`M × n`, L1-resident for decode widths) — so
/// the weight streams linearly, as the prefetchers like it. Each column's sum still runs over
/// `p` in order.
///
/// # Safety
/// As [`by_m`]: the CPU's features; `w` holds element `(p, j)` at `p·rs + j` for `p < k`,
/// `j < n`; `x` holds `M × k` values; `out` the caller's block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn rows<E: Lanes, const BF16: bool, const M: usize>(a: Args<E>, rs: usize) {
    let n = a.n;
    let mut acc = vec![0.0f32; M * n];
    let mut p0 = 0;
    // SAFETY (both): rows `p0..p0 + ROWS` (or `p0`) are `< k`.
    while p0 + ROWS <= a.k {
        unsafe { add_rows::<E, BF16, M, ROWS>(a, rs, p0, &mut acc) };
        p0 += ROWS;
    }
    while p0 < a.k {
        unsafe { add_rows::<E, BF16, M, 1>(a, rs, p0, &mut acc) };
        p0 += 1;
    }
    for i in 0..M {
        for c0 in (0..n).step_by(16) {
            let mask = mask16(n - c0);
            // SAFETY: columns `c0..n` (masked) of row `i < M`, in the caller's block and in
            // `acc`.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, acc.as_ptr().add(i * n + c0));
                store16(a.out.at(i, c0).ptr, mask, v, a.alpha, a.accumulate);
            }
        }
    }
}

/// Weight rows used per pass over the accumulator row.
const ROWS: usize = 4;

/// `acc[i][j] += Σ_{r < R} x[i][p0 + r] · w[p0 + r][j]`, `r` in order.
///
/// # Safety
/// As [`rows`]; `p0 + R ≤ k`; `acc` holds `M × n`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn add_rows<E: Lanes, const BF16: bool, const M: usize, const R: usize>(
    a: Args<E>,
    rs: usize,
    p0: usize,
    acc: &mut [f32],
) {
    let n = a.n;
    // SAFETY: `i < M`, `p0 + r < k`.
    let xs: [[__m512; R]; M] = std::array::from_fn(|i| {
        std::array::from_fn(|r| _mm512_set1_ps(unsafe { *a.x.add(i * a.k + p0 + r) }))
    });
    for c0 in (0..n).step_by(16) {
        let mask = mask16(n - c0);
        if starts_line::<E>(c0) {
            // The next pass's rows, at this column: a few kB ahead of the loads, enough for
            // DRAM's latency, as the hardware prefetchers alone fall short on these streams.
            for r in 0..R {
                prefetch(a.w.wrapping_add((p0 + R + r) * rs + c0));
            }
        }
        // SAFETY: columns `c0..n` (masked) of rows `p0 + r < k`; of `acc`'s rows `i < M`.
        unsafe {
            let w: [__m512; R] =
                std::array::from_fn(|r| E::load16::<BF16>(a.w.add((p0 + r) * rs + c0), mask));
            for (i, x) in xs.iter().enumerate() {
                let dst = acc.as_mut_ptr().add(i * n + c0);
                let mut v = _mm512_maskz_loadu_ps(mask, dst);
                for r in 0..R {
                    v = _mm512_fmadd_ps(x[r], w[r], v);
                }
                _mm512_mask_storeu_ps(dst, mask, v);
            }
        }
    }
}

/// Columns-contiguous weight: `J` columns at a time, each a dot product along `k` with
/// `x`'s `M` rows in 16 lanes; the last `n mod J` columns one by one.
///
/// # Safety
/// As [`rows`], with element `(p, j)` at `p + j·cs`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn dots<E: Lanes, const BF16: bool, const M: usize, const J: usize>(a: Args<E>, cs: usize) {
    let mut j0 = 0;
    // SAFETY (both loops): columns `j0..j0 + J` (or `j0`) are `< n`.
    while j0 + J <= a.n {
        unsafe { dot_block::<E, BF16, M, J>(a, cs, j0) };
        j0 += J;
    }
    while j0 < a.n {
        unsafe { dot_block::<E, BF16, M, 1>(a, cs, j0) };
        j0 += 1;
    }
}

/// Columns `j0..j0 + J` of a [`dots`] product.
///
/// # Safety
/// As [`dots`]; `j0 + J ≤ n`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn dot_block<E: Lanes, const BF16: bool, const M: usize, const J: usize>(
    a: Args<E>,
    cs: usize,
    j0: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); J]; M];
    let mut p0 = 0;
    while p0 < a.k {
        let mask = mask16(a.k - p0);
        if starts_line::<E>(p0) {
            // The next block's columns, at this depth (as in `add_rows`).
            for j in 0..J {
                prefetch(a.w.wrapping_add((j0 + J + j) * cs + p0));
            }
        }
        // SAFETY: depths `p0..` selected by `mask` are `< k`, columns `< n`.
        let wv: [__m512; J] = std::array::from_fn(|j| unsafe {
            E::load16::<BF16>(a.w.add((j0 + j) * cs + p0), mask)
        });
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row `i < M` of `x`, the same depths.
            let xv = unsafe { _mm512_maskz_loadu_ps(mask, a.x.add(i * a.k + p0)) };
            for j in 0..J {
                acc[j] = _mm512_fmadd_ps(xv, wv[j], acc[j]);
            }
        }
        p0 += 16;
    }
    for (i, acc) in acc.iter().enumerate() {
        for (j, v) in acc.iter().enumerate() {
            let s = hsum(*v);
            // SAFETY: element `(i, j0 + j)` of the caller's block.
            unsafe {
                let o = a.out.at(i, j0 + j).ptr;
                *o = if a.accumulate {
                    a.alpha.mul_add(s, *o)
                } else {
                    a.alpha * s
                };
            }
        }
    }
}

/// Whether element `i` of a line starts a new 64-byte cache line (for lines that start on
/// one; elsewhere it only shifts which element prefetches).
#[inline(always)]
fn starts_line<E>(i: usize) -> bool {
    (i * size_of::<E>()).is_multiple_of(64)
}

/// A hint to bring the line at `p` into the caches. It never faults and reads nothing the
/// program sees, so `p` may lie past the data (computed with `wrapping_add`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn prefetch<E>(p: *const E) {
    _mm_prefetch::<_MM_HINT_T0>(p.cast());
}

/// The sum of 16 lanes by a fixed tree (halves added until one lane is left).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn hsum(v: __m512) -> f32 {
    let mut l: [f32; 16] = bytemuck_cast(v);
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            l[i] += l[i + w];
        }
    }
    l[0]
}

/// The lanes of a register as an array.
#[inline(always)]
fn bytemuck_cast(v: __m512) -> [f32; 16] {
    // SAFETY: both are 64 bytes of plain f32 bits; every bit pattern is valid for each.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::transmute::<__m512, [f32; 16]>(v)
    }
}

/// `dst[..] = (accumulate ? dst : 0) + alpha · acc` on the lanes `mask` selects.
///
/// # Safety
/// The selected lanes at `dst` are writable (and initialised when `accumulate`); the
/// others are not touched (masked), so `dst` may be computed with `wrapping_add`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
pub(super) unsafe fn store16(
    dst: *mut f32,
    mask: __mmask16,
    acc: __m512,
    alpha: f32,
    accumulate: bool,
) {
    if mask == 0 {
        return;
    }
    let al = _mm512_set1_ps(alpha);
    // SAFETY: the caller's contract.
    unsafe {
        let v = if accumulate {
            _mm512_fmadd_ps(al, acc, _mm512_maskz_loadu_ps(mask, dst))
        } else {
            _mm512_mul_ps(al, acc)
        };
        _mm512_mask_storeu_ps(dst, mask, v);
    }
}
