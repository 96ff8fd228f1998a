//! Decoding ggml tensor encodings to `f32`.
//!
//! The plain float types are widened here; the block encodings (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)
//! have one home, [`temper_formats::quant`], bit-identical to gguf-py's numpy `dequantize` (so
//! to what transformers loads from the same file). This module adds what a GGUF file needs on
//! top: errors that name the file and the tensor, and the work split over rayon in chunks of
//! whole blocks (blocks are independent).

use half::f16;
use rayon::prelude::*;
use temper_formats::quant::{BlockFormat, QuantType};

use super::error::GgufError;
use super::ggml_type::GgmlType;

/// Elements per K-quant super-block.
pub use temper_formats::quant::QK_K;

/// Roughly how many output values one rayon task decodes: large enough to amortise scheduling,
/// small enough to spread a single 576×576 matrix over several cores.
const ELEMENTS_PER_TASK: usize = 16 * 1024;

/// How one chunk of whole blocks is decoded.
#[derive(Clone, Copy)]
enum Decoder {
    /// A plain float type, element by element.
    Plain(fn(&[u8], &mut [f32])),
    /// A block encoding of `temper_formats::quant`.
    Blocks(&'static dyn BlockFormat),
}

impl Decoder {
    fn for_type(ty: GgmlType) -> Option<Self> {
        let quant = match ty {
            GgmlType::F32 => return Some(Self::Plain(f32_le)),
            GgmlType::F16 => return Some(Self::Plain(f16_le)),
            GgmlType::BF16 => return Some(Self::Plain(bf16_le)),
            GgmlType::Q4_0 => QuantType::Q4_0,
            GgmlType::Q4_1 => QuantType::Q4_1,
            GgmlType::Q8_0 => QuantType::Q8_0,
            GgmlType::Q4_K => QuantType::Q4_K,
            GgmlType::Q6_K => QuantType::Q6_K,
            GgmlType::Other(_) => return None,
        };
        quant.block_format().map(Self::Blocks)
    }
}

/// Decode `n_elements` values of type `ty` from `bytes`, in storage order.
///
/// `bytes` must hold exactly `n_elements / block_size` blocks. Errors name no file; use
/// [`GgufFile::dequantize`](super::GgufFile::dequantize) for messages with path and tensor name.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>, GgufError> {
    dequantize_named(ty, bytes, n_elements, "<bytes>", "<unnamed>")
}

/// [`dequantize`] with the file path and tensor name used in error messages.
pub(crate) fn dequantize_named(
    ty: GgmlType,
    bytes: &[u8],
    n_elements: usize,
    path: &str,
    name: &str,
) -> Result<Vec<f32>, GgufError> {
    let unsupported = || GgufError::UnsupportedType {
        path: path.to_string(),
        name: name.to_string(),
        ggml_type: ty,
    };
    let decoder = Decoder::for_type(ty).ok_or_else(unsupported)?;
    let (Some(block), Some(block_bytes)) = (ty.block_size(), ty.type_size()) else {
        return Err(unsupported());
    };
    if !n_elements.is_multiple_of(block) {
        return Err(GgufError::NotBlockMultiple {
            path: path.to_string(),
            name: name.to_string(),
            ggml_type: ty,
            n_elements: n_elements as u64,
            block_size: block as u64,
        });
    }
    let expected = (n_elements / block).checked_mul(block_bytes);
    let size_error = || GgufError::DataSize {
        path: path.to_string(),
        name: name.to_string(),
        ggml_type: ty,
        n_elements: n_elements as u64,
        expected: expected.map_or(u64::MAX, |e| e as u64),
        actual: bytes.len() as u64,
    };
    if expected != Some(bytes.len()) {
        return Err(size_error());
    }
    let mut out = vec![0f32; n_elements];
    let blocks_per_task = (ELEMENTS_PER_TASK / block).max(1);
    out.par_chunks_mut(block * blocks_per_task)
        .zip(bytes.par_chunks(block_bytes * blocks_per_task))
        .try_for_each(|(dst, src)| match decoder {
            Decoder::Plain(kernel) => {
                kernel(src, dst);
                Ok(())
            }
            // Both chunks hold the same whole number of blocks (checked above), so this only
            // fails if `GgmlType`'s layout and the format's disagree.
            Decoder::Blocks(format) => format.dequantize_blocks(src, dst).map_err(|_| size_error()),
        })?;
    Ok(out)
}

/// IEEE half at `b[i..i + 2]`, little-endian.
#[inline]
fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn f32_le(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn f16_le(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = half_at(b, 0);
    }
}

/// bf16 is the top half of an f32: widening is a shift, exact for every bit pattern.
fn bf16_le(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn f32_f16_bf16() {
        let vals = [1.0f32, -2.5, 0.0, 65504.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dequantize(GgmlType::F32, &bytes, 4).unwrap(), vals);

        let bytes: Vec<u8> = vals.iter().flat_map(|&v| h(v)).collect();
        assert_eq!(dequantize(GgmlType::F16, &bytes, 4).unwrap(), vals);
        // 0x3C00 = 1.0, 0xC000 = -2.0, 0x3555 ≈ 1/3
        let bytes = [0x00, 0x3C, 0x00, 0xC0, 0x55, 0x35];
        let got = dequantize(GgmlType::F16, &bytes, 3).unwrap();
        assert_eq!(got[..2], [1.0, -2.0]);
        assert_eq!(got[2], 0.333_251_95);

        // bf16 0x3FC0 = 1.5, 0xC120 = -10.0, 0x3F80 = 1.0
        let bytes = [0xC0, 0x3F, 0x20, 0xC1, 0x80, 0x3F];
        assert_eq!(
            dequantize(GgmlType::BF16, &bytes, 3).unwrap(),
            [1.5, -10.0, 1.0]
        );
    }

    #[test]
    fn q4_0_block() {
        let mut b = h(0.5).to_vec();
        // element j: low nibble j (j < 16); element j + 16: high nibble 15 - j.
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(y[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(y[8], 0.0);
        assert_eq!(y[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(y[16], 3.5); // high nibble of byte 0 = 15
        assert_eq!(y[31], -4.0);
    }

    #[test]
    fn q4_1_block() {
        let mut b = h(0.1).to_vec();
        b.extend(h(-0.7));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        let d = f16::from_f32(0.1).to_f32();
        let m = f16::from_f32(-0.7).to_f32();
        for j in 0..16 {
            // Not fused: rounding after the multiply, then after the add.
            let lo = (j as f32) * d;
            let hi = ((15 - j) as f32) * d;
            assert_eq!(y[j].to_bits(), (lo + m).to_bits());
            assert_eq!(y[j + 16].to_bits(), (hi + m).to_bits());
        }
        assert_eq!(y[0], m);
    }

    #[test]
    fn q8_0_blocks() {
        let mut b = Vec::new();
        for d in [0.25f32, -2.0] {
            b.extend(h(d));
            b.extend((0..32).map(|j: i32| (j * 8 - 128) as i8 as u8));
        }
        let y = dequantize(GgmlType::Q8_0, &b, 64).unwrap();
        assert_eq!(y[0], -32.0); // -128 * 0.25
        assert_eq!(y[16], 0.0);
        assert_eq!(y[31], 30.0); // 120 * 0.25
        assert_eq!(y[32], 256.0); // -128 * -2
        assert_eq!(y[63], -240.0);
    }

    /// Q4_K by the format description, one element at a time.
    fn q4_k_reference(b: &[u8]) -> Vec<f32> {
        let d = half_at(b, 0);
        let dmin = half_at(b, 2);
        let s = &b[4..16];
        let qs = &b[16..144];
        // 8 six-bit scales and mins: sub-blocks 0..4 in the low 6 bits of s[0..4] / s[4..8];
        // sub-blocks 4..8 take 4 low bits from s[8..12] and 2 high bits from the top of s[0..8].
        let mut sc = [0u32; 8];
        let mut mn = [0u32; 8];
        for j in 0..8 {
            if j < 4 {
                sc[j] = u32::from(s[j]) % 64;
                mn[j] = u32::from(s[j + 4]) % 64;
            } else {
                sc[j] = u32::from(s[j + 4]) % 16 + (u32::from(s[j - 4]) / 64) * 16;
                mn[j] = u32::from(s[j + 4]) / 16 + (u32::from(s[j]) / 64) * 16;
            }
        }
        (0..256)
            .map(|e| {
                let sub = e / 32;
                let byte = qs[(e / 64) * 32 + e % 32];
                let q = if sub % 2 == 0 { byte % 16 } else { byte / 16 };
                (d * sc[sub] as f32) * q as f32 - dmin * mn[sub] as f32
            })
            .collect()
    }

    #[test]
    fn q4_k_block() {
        let mut b = h(0.5).to_vec();
        b.extend(h(0.25));
        // scales[0..4] = 1,2,3,4 with top bits 0b01, 0, 0b10, 0 (the high bits of sub-blocks 4..8's scales)
        // mins[0..4]   = 5,6,7,8 with top bits 0, 0b11, 0, 0
        // s[8..12]: low nibble = low 4 bits of scale 4..8, high nibble = low 4 bits of min 4..8
        let scales = [
            1 | (1 << 6),
            2,
            3 | (2 << 6),
            4,
            5,
            6 | (3 << 6),
            7,
            8,
            0x21,
            0x43,
            0x65,
            0x87,
        ];
        b.extend(scales);
        b.extend((0..128u32).map(|i| ((i * 37 + 11) % 256) as u8));
        assert_eq!(b.len(), 144);
        let y = dequantize(GgmlType::Q4_K, &b, 256).unwrap();
        assert_eq!(y, q4_k_reference(&b));
        // Element 0: sub-block 0, scale 1, min 5, q = low nibble of qs[0] = 11.
        assert_eq!(y[0], 0.5 * 1.0 * 11.0 - 0.25 * 5.0);
        // Element 32: sub-block 1, scale 2, min 6, q = high nibble of qs[0] = 0.
        assert_eq!(y[32], -0.25 * 6.0);
        // Element 128: sub-block 4: scale = 1 | (1 << 4) = 17, min = 2 | (0 << 4) = 2,
        // q = low nibble of qs[64] = (64*37+11) % 256 = 75 -> 0xB = 11.
        assert_eq!(y[128], 0.5 * 17.0 * 11.0 - 0.25 * 2.0);
        // Element 224: sub-block 7: scale = 7 | (0 << 4) = 7, min = 8 | (0 << 4) = 8,
        // q = high nibble of qs[96] = (96*37+11) % 256 = 235 -> 0xE = 14.
        assert_eq!(y[224], 0.5 * 7.0 * 14.0 - 0.25 * 8.0);
    }

    /// Q6_K by the format description, one element at a time.
    fn q6_k_reference(b: &[u8]) -> Vec<f32> {
        let d = half_at(b, 208);
        (0..256)
            .map(|e| {
                let half = e / 128;
                let r = e % 128;
                let quarter = r / 32;
                let l = r % 32;
                let ql = b[half * 64 + l + (quarter % 2) * 32];
                let low = if quarter < 2 { ql % 16 } else { ql / 16 };
                let high = (b[128 + half * 32 + l] >> (2 * quarter)) % 4;
                let q = i32::from(low) + 16 * i32::from(high) - 32;
                let scale = b[192 + half * 8 + quarter * 2 + l / 16] as i8;
                (d * f32::from(scale)) * q as f32
            })
            .collect()
    }

    #[test]
    fn q6_k_block() {
        let mut b: Vec<u8> = (0..128u32).map(|i| ((i * 53 + 7) % 256) as u8).collect();
        b.extend((0..64u32).map(|i| ((i * 29 + 3) % 256) as u8));
        b.extend(
            [
                1i8, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15, -16,
            ]
            .map(|s| s as u8),
        );
        b.extend(h(0.125));
        assert_eq!(b.len(), 210);
        let y = dequantize(GgmlType::Q6_K, &b, 256).unwrap();
        assert_eq!(y, q6_k_reference(&b));
        // Element 0: ql[0] = 7 -> low 7; qh[0] = 3 -> bits 0..2 = 3; q = 7 + 48 - 32 = 23; scale 1.
        assert_eq!(y[0], 0.125 * 23.0);
        // Element 200: half 1, r = 72, quarter 2, l = 8: ql[64 + 8] = (72*53+7)%256 = 239 -> high 14;
        // qh[32 + 8] = (40*29+3)%256 = 139 = 0b10001011 -> bits 4..6 = 0; q = 14 - 32 = -18;
        // scale index 8 + 4 + 0 = 12 -> 13.
        assert_eq!(y[200], 0.125 * 13.0 * -18.0);
    }

    #[test]
    fn many_blocks_in_parallel_match_one_by_one() {
        let n_blocks = 3000;
        let bytes: Vec<u8> = (0..n_blocks * 20)
            .map(|i| (i * 7 % 251) as u8 & 0x3F | 0x20)
            .collect();
        let all = dequantize(GgmlType::Q4_1, &bytes, n_blocks * 32).unwrap();
        for (i, block) in bytes.chunks_exact(20).enumerate().step_by(97) {
            let one = dequantize(GgmlType::Q4_1, block, 32).unwrap();
            assert_eq!(all[i * 32..i * 32 + 32], one[..]);
        }
    }

    #[test]
    fn size_errors() {
        let err = dequantize(GgmlType::Q8_0, &[0; 34], 31)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("31 elements is not a multiple of the Q8_0 block size 32"),
            "{err}"
        );
        let err = dequantize(GgmlType::Q8_0, &[0; 33], 32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("need 34 bytes, got 33"), "{err}");
        let err = dequantize(GgmlType::Other(6), &[0; 22], 32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported ggml type 6 (Q5_0)"), "{err}");
        assert!(dequantize(GgmlType::Q6_K, &[], 0).unwrap().is_empty());
    }
}
