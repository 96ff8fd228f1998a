//! Quantizing to ggml Q4_0 (the block decoder is [`super::Q4_0`] in `ggml.rs`): blocks of 32
//! values stored as `f16 d | u8 qs[16]`, low nibbles elements 0..16, high nibbles 16..32.
//!
//! Reproduces `quantize_row_q4_0_ref` in llama.cpp's `ggml-quants.c`, which gguf-py 0.19's
//! `gguf.quants.Q4_0.quantize_blocks` mirrors bit for bit:
//!
//! * `max` is the block's value of largest magnitude **with its sign** (the first one when two
//!   tie, as `argmax` and the C loop's strict `>` both pick), `d = max / -8` in `f32`;
//! * `id = 1 / d` (0 for an all-zero block), `q = min(15, trunc(x * id + 8.5))` — a truncation,
//!   not a rounding, so the code of `max` itself is 0 and the other extreme clamps to 15;
//! * the codes use the `f32` `d`; only the stored scale is rounded to `f16`.
//!
//! As for Q8_0 ([`super::q8_0`]), a non-finite input and a scale that overflows `f16`
//! (`|max| > 65504 · 8`) are refused where ggml would store an infinite scale.

use half::f16;

use super::{QuantError, check_finite, value_count};

/// Elements per Q4_0 block.
pub const Q4_0_BLOCK: usize = 32;
/// Bytes per Q4_0 block.
pub const Q4_0_BYTES: usize = 18;

/// Quantize one block of 32 values into `out` (18 bytes); `Err(max)` when the scale overflows
/// `f16`.
fn quantize_block(x: &[f32], out: &mut [u8]) -> Result<(), f32> {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let d16 = f16::from_f32(d);
    if d16.is_infinite() {
        return Err(max);
    }
    out[..2].copy_from_slice(&d16.to_le_bytes());
    let half = Q4_0_BLOCK / 2;
    for j in 0..half {
        // `x * id + 8.5` lies in [0.5, 16.5] up to rounding; `as u8` truncates like C's cast.
        let q0 = ((x[j] * id + 8.5) as u8).min(15);
        let q1 = ((x[j + half] * id + 8.5) as u8).min(15);
        out[2 + j] = q0 | (q1 << 4);
    }
    Ok(())
}

/// Quantize the tensor `tensor` of `shape` (row-major `values`) to Q4_0 blocks, in GGUF's byte
/// layout: `n / 32` blocks of 18 bytes.
///
/// # Errors
/// [`QuantError::ValueCount`] if `values` does not match `shape`,
/// [`QuantError::NotBlockMultiple`] unless the last dimension is a multiple of 32 (gguf-py's
/// `can_quantize`), [`QuantError::NonFinite`], [`QuantError::ScaleOverflow`].
pub fn quantize(tensor: &str, shape: &[usize], values: &[f32]) -> Result<Vec<u8>, QuantError> {
    let n = value_count(tensor, shape, values)?;
    let row = shape.last().copied().unwrap_or(1);
    if !row.is_multiple_of(Q4_0_BLOCK) {
        return Err(QuantError::NotBlockMultiple {
            tensor: tensor.to_string(),
            format: "Q4_0",
            shape: shape.to_vec(),
            row,
            block: Q4_0_BLOCK,
        });
    }
    check_finite(tensor, "Q4_0", values)?;
    let mut out = vec![0u8; n / Q4_0_BLOCK * Q4_0_BYTES];
    for (block, (x, o)) in values
        .chunks_exact(Q4_0_BLOCK)
        .zip(out.chunks_exact_mut(Q4_0_BYTES))
        .enumerate()
    {
        quantize_block(x, o).map_err(|max| QuantError::ScaleOverflow {
            tensor: tensor.to_string(),
            format: "Q4_0",
            block,
            amax: max.abs(),
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::{BlockFormat, Q4_0};
    use super::*;

    #[test]
    fn block_layout_truncation_and_sign_of_max() {
        // max = -8 (the signed extreme) -> d = 1, id = 1: codes are trunc(x + 8.5).
        let mut x = [0f32; 32];
        x[0] = -8.0; // code 0
        x[1] = 7.0; // 15.5 -> 15
        x[2] = 0.49; // 8.99 -> 8
        x[16] = 0.5; // 9.0 -> 9 (high nibble of byte 0)
        x[17] = -0.6; // 7.9 -> 7
        let b = quantize("w", &[32], &x).unwrap();
        assert_eq!(b.len(), 18);
        assert_eq!(f16::from_le_bytes([b[0], b[1]]).to_f32(), 1.0);
        assert_eq!(b[2], 9 << 4);
        assert_eq!(b[3], 15 | (7 << 4));
        assert_eq!(b[4], 8 | (8 << 4));
        let mut y = [0f32; 32];
        Q4_0.dequantize_blocks(&b, &mut y).unwrap();
        assert_eq!(y[..3], [-8.0, 7.0, 0.0]);
        assert_eq!(y[16..18], [1.0, -1.0]);
    }

    #[test]
    fn a_positive_max_clamps_to_15() {
        // max = +8 -> d = -1: x = 8 gives trunc(-8 + 8.5) = 0, x = -8 gives 16.5 -> 15.
        let mut x = [0f32; 32];
        x[0] = 8.0;
        x[1] = -8.0;
        let b = quantize("w", &[32], &x).unwrap();
        assert_eq!(f16::from_le_bytes([b[0], b[1]]).to_f32(), -1.0);
        assert_eq!(b[2] & 0x0F, 0);
        assert_eq!(b[3] & 0x0F, 15);
    }

    #[test]
    fn zero_block_and_refusals() {
        // d = 0 / -8 is -0.0, stored as the f16 bits 0x8000 (as ggml and gguf-py store it).
        let b = quantize("w", &[32], &[0.0; 32]).unwrap();
        assert_eq!(&b[..2], &[0, 0x80]);
        assert!(b[2..].iter().all(|&q| q == 0x88));
        let err = quantize("blk.0.ffn_up", &[2, 48], &[0.0; 96]).unwrap_err();
        assert!(
            err.to_string()
                .contains("Q4_0 needs rows of whole 32-element blocks")
        );
        let err = quantize("w", &[32], &[1e7; 32]).unwrap_err().to_string();
        assert!(err.contains("block 0"), "{err}");
        let mut x = [1f32; 32];
        x[3] = f32::INFINITY;
        assert!(quantize("w", &[32], &x).is_err());
    }
}
