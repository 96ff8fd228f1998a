//! [`super`]'s row dot on AVX-512 VNNI: one `vpdpbusd` (`_mm512_dpbusd_epi32`) per pair of
//! blocks multiplies their 64 unsigned weight codes by the 64 input codes and adds each four
//! products to one of 16 i32 lanes (started from the lanes' corrections), then one
//! `vfmadd` adds the lanes times `d·e` (the first block's in lanes 0..8, the second's in
//! 8..16) to 16 f32 accumulators, and for Q4_1 a second one adds the lanes' code sums times
//! `m·e` to 16 more — the order [`super::portable_row`] follows. The pair's f16 scales are
//! widened by one `vcvtph2ps` (exact, as [`super::half`]).
//!
//! `unsafe` is confined to this file: the intrinsics need the CPU features (the caller
//! checks them at run time), and the loads read whole 64-byte groups of the input's buffers
//! (padded to whole pairs of blocks by `Q8Input::new`) and the scales and codes inside each
//! block, through pointers (bounds checks and slicing were most of the loop's instructions).

use std::arch::x86_64::*;

use super::{LANES_PER_BLOCK, Q8Input, QK, finish};
use temper_formats::quant::QuantType;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// `Σ x·W[row]` for one row of `x.ty` blocks, as [`super::portable_row`] computes it.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `row` holds `x.blocks ≥ 1` whole blocks of `x.ty`
/// (`row.len() = x.blocks · block_bytes`), and `x`'s buffers hold whole pairs of blocks (as
/// `Q8Input::new` makes them).
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn dot_row(row: &[u8], x: &Q8Input) -> f32 {
    // SAFETY: forwarded.
    unsafe {
        match x.ty {
            QuantType::Q4_0 => row_of::<Q4_0>(row, x),
            QuantType::Q4_1 => row_of::<Q4_1>(row, x),
            _ => row_of::<Q8_0>(row, x),
        }
    }
}

/// [`dot_row`] for one format (`F`), so the loop holds no format test.
///
/// # Safety
/// As [`dot_row`].
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn row_of<const F: u8>(row: &[u8], x: &Q8Input) -> f32 {
    let blocks = x.blocks;
    let bb = row.len() / blocks;
    debug_assert!(x.codes.len() >= blocks.next_multiple_of(2) * QK);
    let (mut acc, mut acc_m) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut b = 0;
    while b + 1 < blocks {
        // SAFETY: blocks `b` and `b + 1` are in `row` and in `x`'s buffers.
        unsafe { step::<F, true>(row.as_ptr(), bb, x, b, &mut acc, &mut acc_m) };
        b += 2;
    }
    if b < blocks {
        // SAFETY: block `b` is in `row`; `x`'s buffers hold its pair.
        unsafe { step::<F, false>(row.as_ptr(), bb, x, b, &mut acc, &mut acc_m) };
    }
    let (mut lanes, mut lanes_m) = ([0.0f32; 16], [0.0f32; 16]);
    // SAFETY: each array holds 16 f32.
    unsafe {
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
        _mm512_storeu_ps(lanes_m.as_mut_ptr(), acc_m);
    }
    finish(&lanes, &lanes_m)
}

/// Blocks `b` and (when `PAIR`) `b + 1` of `row` (blocks of `bb` bytes) into the accumulators;
/// without `PAIR` lanes 8..16 keep their values.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VNNI; `row` points at blocks `b` (and `b + 1` when `PAIR`)
/// of format `F`; `x`'s buffers hold blocks `b` and `b + 1`.
#[allow(unsafe_code)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn step<const F: u8, const PAIR: bool>(
    row: *const u8,
    bb: usize,
    x: &Q8Input,
    b: usize,
    acc: &mut __m512,
    acc_m: &mut __m512,
) {
    // SAFETY: the caller's contract: every pointer below is inside `row`'s blocks or `x`'s
    // (pair-padded) buffers.
    unsafe {
        let b0 = row.add(b * bb);
        // The second block's header is read only when it exists; an unpaired block takes
        // its own header again, and `e = 0` there (padding) makes its scale 0 (masked off).
        let b1 = if PAIR { row.add((b + 1) * bb) } else { b0 };
        let h = |p: *const u8, at: usize| p.add(at).cast::<i16>().read_unaligned();
        let (m0, m1) = if F == Q4_1 {
            (h(b0, 2), h(b1, 2))
        } else {
            (0, 0)
        };
        // [d0, d1, m0, m1] · [e0, e1, e0, e1]: `d·e` and `m·e` per block, rounded as the
        // portable path rounds them.
        let f = _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, m1, m0, h(b1, 0), h(b0, 0)));
        let e = _mm_castpd_ps(_mm_load1_pd(x.scale.as_ptr().add(b).cast()));
        let prod = _mm512_castps128_ps512(_mm_mul_ps(f, e));
        let scale = _mm512_permutexvar_ps(
            _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
            prod,
        );
        let codes = _mm512_loadu_si512(x.codes.as_ptr().add(b * QK).cast());
        let corr = _mm512_loadu_si512(x.corr.as_ptr().add(b * LANES_PER_BLOCK).cast());
        let weights = if F == Q8_0 {
            // A Q8_0 block is `d | 32 × i8`.
            let lo = _mm256_loadu_si256(b0.add(2).cast());
            let hi = if PAIR {
                _mm256_loadu_si256(b1.add(2).cast())
            } else {
                _mm256_setzero_si256()
            };
            let w = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            // `q + 128` as an unsigned byte (the lanes' corrections take the 128 off).
            _mm512_xor_si512(w, _mm512_set1_epi8(i8::MIN))
        } else {
            // A Q4 block ends with its 16 bytes of nibbles.
            let a = _mm_loadu_si128(b0.add(bb - 16).cast());
            let c = if PAIR {
                _mm_loadu_si128(b1.add(bb - 16).cast())
            } else {
                _mm_setzero_si128()
            };
            let v = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(a), c);
            let mask = _mm256_set1_epi8(0x0F);
            let lo = _mm256_and_si256(v, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
            // [a_lo, c_lo, a_hi, c_hi] → [a_lo, a_hi, c_lo, c_hi]: each block's values
            // 0..16 (low nibbles), then 16..32 (high).
            let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z)
        };
        let sumi = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, weights, codes));
        // Lanes 8..16 of an unpaired block keep their value (a zero product would turn −0
        // into +0 where the portable path adds nothing).
        let keep = if PAIR { 0xFFFF } else { 0x00FF };
        *acc = _mm512_mask3_fmadd_ps(sumi, scale, *acc, keep);
        if F == Q4_1 {
            let me = _mm512_permutexvar_ps(
                _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2),
                prod,
            );
            let sums = _mm512_loadu_ps(x.lane_sum.as_ptr().add(b * LANES_PER_BLOCK));
            *acc_m = _mm512_mask3_fmadd_ps(sums, me, *acc_m, keep);
        }
    }
}
