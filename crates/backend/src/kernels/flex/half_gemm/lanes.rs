//! Sixteen operand elements at a time as f32 lanes rounded to the half type (AVX-512), for
//! the streaming and packing loops of the native paths.
//!
//! Every function here is `#[target_feature(enable = "avx512f,avx512bw,avx512vl")]`: callers
//! reach them only from functions compiled for the same features, which the dispatch in
//! `half_gemm.rs` enters only on CPUs that have them.

use std::arch::x86_64::*;

use burn::tensor::{bf16, f16};

/// A storage element type the native paths read.
#[allow(unsafe_code)]
pub(super) trait Lanes: Copy {
    /// `mask`'s elements of the 16 at `ptr` (the others 0), widened to f32 and rounded to
    /// bf16 (`BF16`) or f16: f32 lanes whose values are exactly representable in the half
    /// type (for bf16: the low 16 bits are 0).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VL; every element `mask` selects is readable. Elements
    /// it leaves out are not accessed (a masked load), so `ptr` may point near the end of
    /// the data (compute it with `wrapping_add`).
    unsafe fn load16<const BF16: bool>(ptr: *const Self, mask: __mmask16) -> __m512;
}

impl Lanes for f32 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(unsafe_code)]
    unsafe fn load16<const BF16: bool>(ptr: *const Self, mask: __mmask16) -> __m512 {
        // SAFETY: the caller's contract: the selected elements are readable.
        let v = unsafe { _mm512_maskz_loadu_ps(mask, ptr) };
        if BF16 { round_bf16(v) } else { round_f16(v) }
    }
}

impl Lanes for bf16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(unsafe_code)]
    unsafe fn load16<const BF16: bool>(ptr: *const Self, mask: __mmask16) -> __m512 {
        // SAFETY: the caller's contract; bf16 is a 16-bit `repr(transparent)` integer.
        let h = unsafe { _mm256_maskz_loadu_epi16(mask, ptr.cast()) };
        // A bf16 is the high half of the f32 with the same value.
        let v = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
        if BF16 { v } else { round_f16(v) }
    }
}

impl Lanes for f16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(unsafe_code)]
    unsafe fn load16<const BF16: bool>(ptr: *const Self, mask: __mmask16) -> __m512 {
        // SAFETY: the caller's contract; f16 is a 16-bit `repr(transparent)` integer.
        let h = unsafe { _mm256_maskz_loadu_epi16(mask, ptr.cast()) };
        let v = _mm512_cvtph_ps(h);
        if BF16 { round_bf16(v) } else { v }
    }
}

/// The mask of the first `len` of 16 lanes (all of them for `len ≥ 16`).
#[inline(always)]
pub(super) fn mask16(len: usize) -> __mmask16 {
    if len >= 16 {
        !0
    } else {
        ((1u32 << len) - 1) as __mmask16
    }
}

/// Each lane rounded to bf16, nearest with ties to even, as `view::bf16_bits` does it (NaN
/// quietened, overflow to ±inf, subnormals kept): `vcvtneps2bf16` would flush subnormals.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn round_bf16(v: __m512) -> __m512 {
    let b = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let up = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    let quiet = _mm512_or_si512(b, _mm512_set1_epi32(0x0040_0000));
    let r = _mm512_mask_blend_epi32(nan, up, quiet);
    _mm512_castsi512_ps(_mm512_and_si512(
        r,
        _mm512_set1_epi32(0xffff_0000_u32 as i32),
    ))
}

/// Each lane rounded to f16 (nearest, ties to even, by the instruction's immediate rather
/// than MXCSR) and widened back.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn round_f16(v: __m512) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtps_ph::<
        { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
    >(v))
}
