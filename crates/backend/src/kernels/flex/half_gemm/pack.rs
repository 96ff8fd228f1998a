//! Packing for the bf16 dot-product kernel ([`super::packed`]): a panel of `W` lines (rows of
//! the left-hand side, or columns of the right-hand one) over a run of depths, rounded to
//! bf16 on the way (f32 master weights need no bf16 copy) and laid out as the kernel reads it.
//!
//! `vdpbf16ps` multiplies bf16 pairs: lane `l` of the result gains `a[2l]·b[2l] +
//! a[2l+1]·b[2l+1]`. So the kernel wants, for each pair of consecutive depths `(2q, 2q+1)`,
//! the `W` lines' pairs side by side as u32 words (low half the even depth): `out[q·W + l] =
//! bf16(x(l, 2q)) | bf16(x(l, 2q+1)) << 16`. A right-hand panel is then loaded 16 lines at a
//! time, a left-hand word broadcast to all lanes. Lines past the panel's end and the partner
//! of an odd last depth are zero, so edge tiles run the full kernel and add nothing.

use std::arch::x86_64::*;

use burn::tensor::{bf16, f16};

use super::lanes::{Lanes, mask16};
use super::view::{HalfData, HalfView, bf16_bits};

/// Packs `lines` lines (`lines ≤ W`) by `kc` depths of `src` — line `l`, depth `p` at
/// `src.get(l, p)` — into `out[..kc.div_ceil(2) · W]`, zero-padded as the module describes.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VL; `src` was checked to hold `lines × kc` elements.
#[allow(unsafe_code)]
pub(super) unsafe fn pack<const W: usize>(
    src: HalfView<'_>,
    lines: usize,
    kc: usize,
    out: &mut [u32],
) {
    let out = &mut out[..kc.div_ceil(2) * W];
    // SAFETY: forwarded.
    unsafe {
        match src.data() {
            HalfData::F32(d) => pack_from::<f32, W>(d, src, lines, kc, out),
            HalfData::Bf16(d) => pack_from::<bf16, W>(d, src, lines, kc, out),
            HalfData::F16(d) => pack_from::<f16, W>(d, src, lines, kc, out),
        }
    }
}

/// [`pack`] for one storage type: vector loops when lines or depths are contiguous,
/// element by element otherwise.
///
/// # Safety
/// As [`pack`]; `data` is `src`'s.
#[allow(unsafe_code)]
unsafe fn pack_from<E: Lanes, const W: usize>(
    data: &[E],
    src: HalfView<'_>,
    lines: usize,
    kc: usize,
    out: &mut [u32],
) {
    let [ls, ps] = src.strides();
    // SAFETY (all three): forwarded; every element index below is (l, p) with l < lines,
    // p < kc, inside the data by the caller's check.
    if ls == 1 {
        unsafe { across_lines::<E, W>(data.as_ptr(), ps, lines, kc, out) }
    } else if ps == 1 {
        unsafe { along_depth::<E, W>(data.as_ptr(), ls, lines, kc, out) }
    } else {
        for (q, words) in out.chunks_exact_mut(W).enumerate() {
            for (l, w) in words.iter_mut().enumerate() {
                let bits = |p: usize| {
                    if l < lines && p < kc {
                        u32::from(bf16_bits(src.get(l, p)))
                    } else {
                        0
                    }
                };
                *w = bits(2 * q) | bits(2 * q + 1) << 16;
            }
        }
    }
}

/// Lines contiguous (`x(l, p)` at `l + p·ps`): two depths' 16 lines interleave into 16 words.
///
/// # Safety
/// As [`pack_from`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn across_lines<E: Lanes, const W: usize>(
    data: *const E,
    ps: usize,
    lines: usize,
    kc: usize,
    out: &mut [u32],
) {
    let hi = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    for (q, words) in out.chunks_exact_mut(W).enumerate() {
        for l0 in (0..W).step_by(16) {
            let load = lines.saturating_sub(l0);
            let depth = |p: usize| {
                if p < kc {
                    // SAFETY: lines `l0..lines` of depth `p < kc`; the rest masked off.
                    let v =
                        unsafe { E::load16::<true>(data.wrapping_add(l0 + p * ps), mask16(load)) };
                    _mm512_castps_si512(v)
                } else {
                    _mm512_setzero_si512()
                }
            };
            let even = _mm512_srli_epi32::<16>(depth(2 * q));
            let odd = _mm512_and_si512(depth(2 * q + 1), hi);
            // SAFETY: words `l0..min(W, l0 + 16)` of this depth pair's `W`.
            unsafe {
                _mm512_mask_storeu_epi32(
                    words.as_mut_ptr().add(l0).cast(),
                    mask16(W - l0),
                    _mm512_or_si512(even, odd),
                )
            };
        }
    }
}

/// Depths contiguous (`x(l, p)` at `l·ls + p`): for each group of 16 lines, 32 depths of each
/// line become 16 words in a register, and a 16 × 16 transpose in registers turns them into
/// 16 rows of `W` words, each stored with one instruction. (Storing each line's words one by
/// one, `W` apart, made this packing ≈ 12 % of a bf16 SmolLM2 training step on Zen 5.)
///
/// # Safety
/// As [`pack_from`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(unsafe_code)]
unsafe fn along_depth<E: Lanes, const W: usize>(
    data: *const E,
    ls: usize,
    lines: usize,
    kc: usize,
    out: &mut [u32],
) {
    // The high halves (the bf16s) of 16 + 16 u32 lanes, in order: 16-bit elements 1, 3, …, 63
    // of the two registers.
    let odd_halves = _mm512_set_epi16(
        63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25, 23, 21, 19,
        17, 15, 13, 11, 9, 7, 5, 3, 1,
    );
    let pairs = kc.div_ceil(2);
    for l0 in (0..W).step_by(16) {
        // Lines of this group in the panel, and those of them that hold data (the rest, and
        // every word of a missing line, stay zero).
        let group = (W - l0).min(16);
        let live = lines.saturating_sub(l0).min(group);
        for p0 in (0..kc).step_by(32) {
            let mut words = [_mm512_setzero_si512(); 16];
            for (i, w) in words.iter_mut().enumerate().take(live) {
                let line = data.wrapping_add((l0 + i) * ls + p0);
                // SAFETY: depths `p0..kc` of line `l0 + i < lines`, masked to them.
                let (lo, up) = unsafe {
                    (
                        E::load16::<true>(line, mask16(kc - p0)),
                        E::load16::<true>(
                            line.wrapping_add(16),
                            mask16((kc - p0).saturating_sub(16)),
                        ),
                    )
                };
                *w = _mm512_permutex2var_epi16(
                    _mm512_castps_si512(lo),
                    odd_halves,
                    _mm512_castps_si512(up),
                );
            }
            // Now `words[t]` lane `i` is pair `p0 / 2 + t` of line `l0 + i`.
            let words = transpose16(words);
            let q0 = p0 / 2;
            for (t, w) in words.iter().enumerate().take(pairs - q0) {
                // SAFETY: words `l0..l0 + group ≤ W` of pair `q0 + t < pairs`, inside `out`
                // (`pairs · W` words).
                unsafe {
                    _mm512_mask_storeu_epi32(
                        out.as_mut_ptr().add((q0 + t) * W + l0).cast(),
                        mask16(group),
                        *w,
                    )
                };
            }
        }
    }
}

/// The transpose of a 16 × 16 matrix of 32-bit words held as 16 rows: row `j` of the result
/// is column `j` of `r`. Unpacks of 32- and 64-bit elements gather 4 × 4 blocks within each
/// 128-bit lane, two rounds of lane shuffles put the blocks in place.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut a = [_mm512_setzero_si512(); 16];
    for i in (0..16).step_by(2) {
        // Lane L: r[i][4L], r[i+1][4L], r[i][4L+1], r[i+1][4L+1] (lo); +2, +3 (hi).
        a[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        a[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    let mut b = [_mm512_setzero_si512(); 16];
    for g in (0..16).step_by(4) {
        // b[g + c] lane L: column 4L + c of rows g..g + 4.
        b[g] = _mm512_unpacklo_epi64(a[g], a[g + 2]);
        b[g + 1] = _mm512_unpackhi_epi64(a[g], a[g + 2]);
        b[g + 2] = _mm512_unpacklo_epi64(a[g + 1], a[g + 3]);
        b[g + 3] = _mm512_unpackhi_epi64(a[g + 1], a[g + 3]);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        // Lanes 0, 2 (0x88) or 1, 3 (0xdd) of each operand.
        let e0 = _mm512_shuffle_i32x4::<0x88>(b[c], b[4 + c]);
        let e1 = _mm512_shuffle_i32x4::<0xdd>(b[c], b[4 + c]);
        let f0 = _mm512_shuffle_i32x4::<0x88>(b[8 + c], b[12 + c]);
        let f1 = _mm512_shuffle_i32x4::<0xdd>(b[8 + c], b[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0x88>(e0, f0);
        out[8 + c] = _mm512_shuffle_i32x4::<0xdd>(e0, f0);
        out[4 + c] = _mm512_shuffle_i32x4::<0x88>(e1, f1);
        out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(e1, f1);
    }
    out
}
