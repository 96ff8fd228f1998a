//! Finding NaN and infinite weights as tensors are converted on the host, so a corrupted or
//! diverged checkpoint is refused at load with the tensor and index named, instead of loading
//! and generating empty text. Cost: one pass over each tensor's f32 values while they are
//! still in cache from the conversion; quantized blocks only have their f16 scales read.

use crate::gguf::GgmlType;

/// Index of the first NaN or ±∞ in `data`, if any.
pub(crate) fn first_non_finite(data: &[f32]) -> Option<usize> {
    // A branch-free OR over a chunk vectorizes; only a chunk that holds one is searched.
    const CHUNK: usize = 1024;
    data.chunks(CHUNK)
        .position(|c| c.iter().fold(false, |bad, x| bad | !x.is_finite()))
        .and_then(|chunk| {
            let start = chunk * CHUNK;
            data[start..]
                .iter()
                .position(|x| !x.is_finite())
                .map(|i| start + i)
        })
}

/// Byte offsets of the f16 scales inside one block of `ty`, with the block's bytes and
/// values (ggml's layouts: `d` first, Q4_1's `m` and Q4_K's `dmin` next, Q6_K's `d` last).
/// Every other field is an integer and cannot be non-finite.
fn block_scales(ty: GgmlType) -> Option<(&'static [usize], usize, usize)> {
    Some(match ty {
        GgmlType::Q4_0 => (&[0], 18, 32),
        GgmlType::Q4_1 => (&[0, 2], 20, 32),
        GgmlType::Q8_0 => (&[0], 34, 32),
        GgmlType::Q4_K => (&[0, 2], 144, 256),
        GgmlType::Q6_K => (&[208], 210, 256),
        _ => return None,
    })
}

/// The first block of `bytes` (blocks of `ty`) with a NaN or infinite scale: its first
/// element's index and the scale. A scale that is not finite makes its whole block so.
pub(crate) fn first_non_finite_block(ty: GgmlType, bytes: &[u8]) -> Option<(usize, f32)> {
    let (offsets, block_bytes, block_values) = block_scales(ty)?;
    bytes
        .chunks_exact(block_bytes)
        .enumerate()
        .find_map(|(b, block)| {
            offsets.iter().find_map(|&o| {
                let s = half::f16::from_le_bytes([block[o], block[o + 1]]).to_f32();
                (!s.is_finite()).then_some((b * block_values, s))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_bad_value_across_chunks() {
        let mut v = vec![1.0f32; 5000];
        assert_eq!(first_non_finite(&v), None);
        v[4097] = f32::INFINITY;
        v[4500] = f32::NAN;
        assert_eq!(first_non_finite(&v), Some(4097));
        v[3] = f32::NAN;
        assert_eq!(first_non_finite(&v), Some(3));
    }

    #[test]
    fn finds_a_nan_scale_in_q8_0_and_q6_k_blocks() {
        let one = half::f16::from_f32(1.0).to_le_bytes();
        let nan = half::f16::NAN.to_le_bytes();
        let mut q8 = vec![0u8; 34 * 3];
        for b in 0..3 {
            q8[b * 34..b * 34 + 2].copy_from_slice(&one);
        }
        assert_eq!(first_non_finite_block(GgmlType::Q8_0, &q8), None);
        q8[68..70].copy_from_slice(&nan);
        let (index, scale) = first_non_finite_block(GgmlType::Q8_0, &q8).unwrap_or_default();
        assert_eq!(index, 64);
        assert!(scale.is_nan());

        let mut q6 = vec![0u8; 210 * 2];
        q6[208..210].copy_from_slice(&one);
        q6[418..420].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        assert_eq!(
            first_non_finite_block(GgmlType::Q6_K, &q6),
            Some((256, f32::INFINITY))
        );
    }
}
