//! The GGUF block decoders Q4_0, Q4_1, Q4_K and Q6_K (Q8_0, which Temper also quantizes, has its
//! own file).
//!
//! Block layouts follow llama.cpp's `ggml-quants.c` (`QK_K = 256` for the K-quants). The
//! arithmetic order matches gguf-py's numpy `dequantize` (a separate multiply and add, never a
//! fused multiply-add), so results are bit-identical to what transformers loads from the same
//! file; Rust never contracts `a * b + c` into an FMA on its own.

use half::f16;

use super::BlockFormat;

/// Elements per K-quant super-block.
pub const QK_K: usize = 256;

/// IEEE half at `b[i..i + 2]`, little-endian, widened exactly to `f32`.
#[inline]
pub(crate) fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// ggml Q4_0: `f16 d | u8 qs[16]`; low nibbles are elements 0..16, high nibbles 16..32;
/// `y = (q - 8) * d`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct Q4_0;

impl BlockFormat for Q4_0 {
    fn name(&self) -> &'static str {
        "Q4_0"
    }
    fn block_elems(&self) -> usize {
        32
    }
    fn block_bytes(&self) -> usize {
        18
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        let (b, y) = (&b[..18], &mut y[..32]);
        let d = half_at(b, 0);
        for (j, &q) in b[2..].iter().enumerate() {
            y[j] = f32::from(i16::from(q & 0x0F) - 8) * d;
            y[j + 16] = f32::from(i16::from(q >> 4) - 8) * d;
        }
    }
}

/// ggml Q4_1: `f16 d | f16 m | u8 qs[16]`; `y = q * d + m` (multiply, then add).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct Q4_1;

impl BlockFormat for Q4_1 {
    fn name(&self) -> &'static str {
        "Q4_1"
    }
    fn block_elems(&self) -> usize {
        32
    }
    fn block_bytes(&self) -> usize {
        20
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        let (b, y) = (&b[..20], &mut y[..32]);
        let d = half_at(b, 0);
        let m = half_at(b, 2);
        for (j, &q) in b[4..].iter().enumerate() {
            y[j] = f32::from(q & 0x0F) * d + m;
            y[j + 16] = f32::from(q >> 4) * d + m;
        }
    }
}

/// The `j`-th (scale, min) pair of a Q4_K block: eight 6-bit pairs packed into 12 bytes
/// (`get_scale_min_k4` in llama.cpp).
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// ggml Q4_K super-block (144 bytes): `f16 d | f16 dmin | u8 scales[12] | u8 qs[128]`. Eight
/// sub-blocks of 32; each 64-element chunk uses 32 bytes of `qs`, low nibbles for its first
/// sub-block and high nibbles for its second. `y = (d * sc) * q - dmin * m`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct Q4_K;

impl BlockFormat for Q4_K {
    fn name(&self) -> &'static str {
        "Q4_K"
    }
    fn block_elems(&self) -> usize {
        QK_K
    }
    fn block_bytes(&self) -> usize {
        144
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        let (b, y) = (&b[..144], &mut y[..QK_K]);
        let d = half_at(b, 0);
        let dmin = half_at(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for chunk in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * chunk, scales);
            let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let q = &qs[chunk * 32..chunk * 32 + 32];
            let y = &mut y[chunk * 64..chunk * 64 + 64];
            for l in 0..32 {
                y[l] = d1 * f32::from(q[l] & 0x0F) - m1;
                y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

/// ggml Q6_K super-block (210 bytes): `u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d`. Each
/// 128-element half uses 64 bytes of `ql` (4 low bits), 32 of `qh` (2 high bits, four values
/// per byte) and 8 scales; `y = (d * scale) * (q - 32)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct Q6_K;

impl BlockFormat for Q6_K {
    fn name(&self) -> &'static str {
        "Q6_K"
    }
    fn block_elems(&self) -> usize {
        QK_K
    }
    fn block_bytes(&self) -> usize {
        210
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        let (b, y) = (&b[..210], &mut y[..QK_K]);
        let d = half_at(b, 208);
        for half in 0..2 {
            let ql = &b[half * 64..half * 64 + 64];
            let qh = &b[128 + half * 32..128 + half * 32 + 32];
            let sc = &b[192 + half * 8..192 + half * 8 + 8];
            let y = &mut y[half * 128..half * 128 + 128];
            for l in 0..32 {
                let is = l / 16;
                let h = qh[l];
                let q1 = i16::from((ql[l] & 0x0F) | ((h & 3) << 4)) - 32;
                let q2 = i16::from((ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) - 32;
                let q3 = i16::from((ql[l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
                let q4 = i16::from((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
                let scale = |k: usize| d * f32::from(sc[is + k] as i8);
                y[l] = scale(0) * f32::from(q1);
                y[l + 32] = scale(2) * f32::from(q2);
                y[l + 64] = scale(4) * f32::from(q3);
                y[l + 96] = scale(6) * f32::from(q4);
            }
        }
    }
}
