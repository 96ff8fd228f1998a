//! The bf16 product on CPUs with AVX512-BF16: operands packed into bf16 panels
//! ([`super::pack`]) and an `MR × NR` micro-kernel of `vdpbf16ps` (`_mm512_dpbf16_ps`),
//! cache-blocked the classic way (Goto/BLIS loop order).
//!
//! `vdpbf16ps` multiplies 32 bf16 pairs into 16 f32 lanes per instruction: products of two
//! bf16 are exact in f32 and each lane adds its two products into the f32 accumulator in
//! turn, rounding to nearest even. It treats subnormal inputs and results as zero (whatever
//! MXCSR says), so values below 2⁻¹²⁶ ≈ 1.2·10⁻³⁸ count as 0 on this path.
//!
//! Loop order: column blocks of [`NC`] → depth blocks of [`KC`] (the right-hand block packed
//! once per block) → row blocks of [`MC`] (the left-hand block packed) → `NR`-column panels →
//! `MR`-row panels → the kernel over the depth block. The output takes `alpha · Σ` of each
//! depth block in order (the first one stored or added to the old value, the rest added), so
//! each element's summation order depends on `k` only, not on the tiling of rows and columns
//! or on threads.

use std::arch::x86_64::*;

use super::pack::pack;
use super::small_m::store16;
use super::view::HalfView;
use super::{Out, Threads};
use crate::kernels::flex::half_gemm::lanes::mask16;

/// Output rows of one micro-tile (one broadcast left-hand word each): 12 × 2 accumulators
/// plus two right-hand registers and a broadcast fit AVX-512's 32. With `vdpbf16ps` the
/// bottleneck (one every ≈ 2 cycles on Emerald Rapids), 4, 8 and 12 rows ran within noise of
/// each other (8 and 12 a few percent ahead); 12 loads the least per instruction.
pub(super) const MR: usize = 12;
/// Output columns of one micro-tile: two registers of 16 f32.
pub(super) const NR: usize = 32;
/// Depth of one block (even, so that blocks split no pair).
const KC: usize = 384;
/// Rows of one packed left-hand block (a multiple of `MR`).
const MC: usize = 96;
/// Columns of one packed right-hand block (a multiple of `NR`).
const NC: usize = 2048;

// Whole panels per block, whole pairs per depth block (the packed buffers are sized so).
const _: () = assert!(MC.is_multiple_of(MR) && NC.is_multiple_of(NR) && KC.is_multiple_of(2));

/// Products below this many multiply-adds run on the calling thread (as `gemm.rs`).
const PARALLEL_WORK: usize = 192 * 192 * 192;
/// The fewest output rows one thread takes in a row split (as `gemm.rs`).
const MIN_ROWS: usize = 64;

/// `out = (accumulate ? out : 0) + alpha · lhs · rhs` with bf16-rounded operands, `k ≥ 1`,
/// split over threads as `gemm.rs` splits: rows first (the threads share one packing of each
/// right-hand block, [`blocks`]), else columns in whole panels, else on the calling
/// thread.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and BF16; `out` addresses `m` rows of `n` f32 (rows
/// `out.rs` apart) that nothing else touches during the call, initialised when
/// `accumulate` is set; `lhs` and `rhs` were checked to hold `m × k` and `k × n` elements.
#[allow(unsafe_code)]
pub(super) unsafe fn run(
    threads: Threads,
    out: Out,
    accumulate: bool,
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
) {
    use rayon::prelude::*;
    let threads_n = match threads {
        Threads::Calling => 1,
        Threads::Rayon => rayon::current_num_threads(),
    };
    let work = m.saturating_mul(k).saturating_mul(n);
    if threads_n < 2 || work < PARALLEL_WORK {
        // SAFETY: forwarded.
        return unsafe { blocks(1, out, accumulate, lhs, rhs, [m, k, n], alpha) };
    } else if m / threads_n >= MIN_ROWS {
        // SAFETY: forwarded.
        return unsafe { blocks(threads_n, out, accumulate, lhs, rhs, [m, k, n], alpha) };
    } else if n / threads_n < NR {
        // SAFETY: forwarded.
        return unsafe { blocks(1, out, accumulate, lhs, rhs, [m, k, n], alpha) };
    }
    let size = n.div_ceil(threads_n).next_multiple_of(NR);
    (0..n.div_ceil(size)).into_par_iter().for_each(|t| {
        let (s, e) = (t * size, ((t + 1) * size).min(n));
        // SAFETY: block `t` is columns `s..e` of the caller's block, disjoint from every other
        // task's; views and output move together so the bounds still hold.
        unsafe {
            blocks(
                1,
                out.at(0, s),
                accumulate,
                lhs,
                rhs.cols_from(s),
                [m, k, e - s],
                alpha,
            )
        }
    });
}

/// [`run`] split by rows over `parts` tasks (on the calling thread for 1) that share one
/// packing of each right-hand block: the panels are packed (in parallel), then each task packs
/// its own rows and runs its tiles. (Each task packing the whole right-hand side itself cost as
/// much packing as a `1024 × 576 · 576 × 1536` product's compute left room for.) Every element
/// still sums its depth blocks in order, on whichever thread.
///
/// # Safety
/// As [`run`].
#[allow(unsafe_code, clippy::too_many_arguments)]
unsafe fn blocks(
    parts: usize,
    out: Out,
    accumulate: bool,
    lhs: HalfView<'_>,
    rhs: HalfView<'_>,
    [m, k, n]: [usize; 3],
    alpha: f32,
) {
    use rayon::prelude::*;
    let kc_max = KC.min(k.next_multiple_of(2));
    let nc_max = NC.min(n.next_multiple_of(NR));
    let mut bp = vec![0u32; nc_max * kc_max / 2];
    let rhs_t = rhs.t();
    let rows = m.div_ceil(parts.max(1)).max(1);
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let pairs = kc.div_ceil(2);
            let panels = nc.div_ceil(NR);
            let pack_panel = |(panel, words): (usize, &mut [u32])| {
                let j0 = jc + panel * NR;
                // SAFETY: columns `j0..j0 + lines` and depths `pc..pc + kc` of the checked
                // right-hand side; the CPU has AVX-512 (the caller's contract).
                unsafe { pack::<NR>(rhs_t.rows_from(j0).cols_from(pc), NR.min(n - j0), kc, words) };
            };
            if parts > 1 {
                let chunks = bp.par_chunks_mut(NR * pairs).take(panels);
                chunks.enumerate().for_each(pack_panel);
            } else {
                bp.chunks_mut(NR * pairs)
                    .take(panels)
                    .enumerate()
                    .for_each(pack_panel);
            }
            let bp = &bp[..];
            let run_rows = |t: usize| {
                let (s, e) = (t * rows, ((t + 1) * rows).min(m));
                // SAFETY: rows `s..e` of the caller's block, disjoint from every other task's;
                // the panels hold depths `pc..pc + kc` of columns `jc..jc + nc`.
                unsafe {
                    row_block(
                        out.at(s, 0),
                        lhs.rows_from(s),
                        bp,
                        [e - s, pc, kc, jc, nc],
                        alpha,
                        accumulate || pc > 0,
                    )
                };
            };
            if parts > 1 {
                (0..m.div_ceil(rows)).into_par_iter().for_each(run_rows);
            } else {
                run_rows(0);
            }
        }
    }
}

/// Rows `0..m` of `lhs` (depths `pc..pc + kc`) times the packed right-hand block `bp`
/// (columns `jc..jc + nc`), written to (or, with `add`, added to) `out`, whose column 0 is the
/// product's.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and BF16; `out` addresses the `m` rows of the product's
/// columns, ours alone; `lhs` holds those rows over the depths; `bp` is the packed block.
#[allow(unsafe_code)]
unsafe fn row_block(
    out: Out,
    lhs: HalfView<'_>,
    bp: &[u32],
    [m, pc, kc, jc, nc]: [usize; 5],
    alpha: f32,
    add: bool,
) {
    let pairs = kc.div_ceil(2);
    let mut ap = vec![0u32; MC.min(m.next_multiple_of(MR)) * pairs];
    for ic in (0..m).step_by(MC) {
        let mc = MC.min(m - ic);
        for (panel, words) in ap.chunks_mut(MR * pairs).take(mc.div_ceil(MR)).enumerate() {
            let i0 = ic + panel * MR;
            // SAFETY: rows `i0..` and depths `pc..pc + kc` of the checked left side.
            unsafe { pack::<MR>(lhs.rows_from(i0).cols_from(pc), MR.min(m - i0), kc, words) };
        }
        for jr in (0..nc).step_by(NR) {
            let b = &bp[jr / NR * NR * pairs..][..NR * pairs];
            for ir in (0..mc).step_by(MR) {
                let a = &ap[ir / MR * MR * pairs..][..MR * pairs];
                let (i, j) = (ic + ir, jc + jr);
                // SAFETY: the tile's rows `i..` and columns `j..`, clipped to the block, are
                // the caller's; the panels hold `pairs` depth pairs.
                unsafe {
                    tile(
                        pairs,
                        a,
                        b,
                        out.at(i, j),
                        [MR.min(m - i), NR.min(jc + nc - j)],
                        alpha,
                        add,
                    )
                };
            }
        }
    }
}

/// One `MR × NR` tile over `pairs` depth pairs: writes `alpha · a·b` to (or, with `add`,
/// adds it to) the `rows × cols` corner of the tile at `c`.
///
/// # Safety
/// The CPU has AVX-512 F, BW, VL and BF16; `a` holds `pairs · MR` and `b` `pairs · NR`
/// words; `c` addresses `rows ≤ MR` rows of `cols ≤ NR` f32 (`c.rs` apart), ours alone and
/// initialised when `add` is set.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(unsafe_code)]
unsafe fn tile(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    c: Out,
    [rows, cols]: [usize; 2],
    alpha: f32,
    add: bool,
) {
    debug_assert!(a.len() >= pairs * MR && b.len() >= pairs * NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for q in 0..pairs {
        // SAFETY: word `q·NR..q·NR + 32` of `b`, `q·MR + i` of `a`, by the sizes above. The
        // words are bf16 pairs; `__m512bh` is 32 bf16s, any bit pattern valid.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(q * NR + 16).cast()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(q * MR + i) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
        }
    }
    let masks = [mask16(cols), mask16(cols.saturating_sub(16))];
    for (i, acc) in acc.iter().enumerate().take(rows) {
        for h in 0..2 {
            // SAFETY: row `i < rows`, the masked columns `< cols` (the caller's contract);
            // `wrapping_add` because the second half may start past the block's end.
            unsafe {
                store16(
                    c.at(i, 0).ptr.wrapping_add(16 * h),
                    masks[h],
                    acc[h],
                    alpha,
                    add,
                )
            };
        }
    }
}
