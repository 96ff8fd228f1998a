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

/// Depths contiguous (`x(l, p)` at `l·ls + p`): 32 depths of a line become 16 words, stored
/// `W` apart.
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
    for l in 0..W {
        if l >= lines {
            for q in 0..pairs {
                out[q * W + l] = 0;
            }
            continue;
        }
        for p0 in (0..kc).step_by(32) {
            let line = data.wrapping_add(l * ls + p0);
            // SAFETY: depths `p0..kc` of line `l < lines`, masked to them.
            let (lo, up) = unsafe {
                (
                    E::load16::<true>(line, mask16(kc - p0)),
                    E::load16::<true>(line.wrapping_add(16), mask16((kc - p0).saturating_sub(16))),
                )
            };
            let words = _mm512_permutex2var_epi16(
                _mm512_castps_si512(lo),
                odd_halves,
                _mm512_castps_si512(up),
            );
            let words: [u32; 16] = to_words(words);
            for (t, w) in words.iter().enumerate().take(pairs - p0 / 2) {
                out[(p0 / 2 + t) * W + l] = *w;
            }
        }
    }
}

#[inline(always)]
fn to_words(v: __m512i) -> [u32; 16] {
    // SAFETY: 64 bytes of integer lanes either way; every bit pattern is valid.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::transmute::<__m512i, [u32; 16]>(v)
    }
}
