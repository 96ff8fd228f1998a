//! ggml Q8_0: blocks of 32 values stored as `f16 d | i8 qs[32]`, `y = q * d`.
//!
//! Quantizing reproduces gguf-py 0.19 `gguf.quants.quantize(x, GGMLQuantizationType.Q8_0)`,
//! which is bit-exact with `quantize_row_q8_0_ref` in llama.cpp's `ggml-quants.c`:
//!
//! * `amax = max |x|` over the block, `d = amax / 127` in `f32`;
//! * `id = 1 / d` (0 for an all-zero block), `q = round(x * id)` with halves rounded away from
//!   zero (gguf-py's `np_roundf`, C's `roundf` — Rust's [`f32::round`]);
//! * the codes use the `f32` `d`; only the stored scale is rounded to `f16` (to nearest, ties to
//!   even, subnormals kept).
//!
//! Decoding widens `d` and `q` to `f32` and multiplies once, as gguf-py does.
//!
//! Two choices where the peers have none: a non-finite input is refused
//! ([`QuantError::NonFinite`]) and so is a block whose `d` overflows `f16`
//! (`amax > 65504 · 127`, [`QuantError::ScaleOverflow`]), where ggml would store an infinite
//! scale and decode the block to NaN and ±inf.

use half::f16;

use super::ggml::half_at;
use super::{BlockFormat, QuantError, check_finite, element_count, value_count};

/// Elements per Q8_0 block.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes per Q8_0 block.
pub const Q8_0_BYTES: usize = 34;

/// The Q8_0 encoding (see the [module](self) docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub struct Q8_0;

impl BlockFormat for Q8_0 {
    fn name(&self) -> &'static str {
        "Q8_0"
    }
    fn block_elems(&self) -> usize {
        Q8_0_BLOCK
    }
    fn block_bytes(&self) -> usize {
        Q8_0_BYTES
    }
    fn dequantize_block(&self, b: &[u8], y: &mut [f32]) {
        let (b, y) = (&b[..Q8_0_BYTES], &mut y[..Q8_0_BLOCK]);
        let d = half_at(b, 0);
        for (y, &q) in y.iter_mut().zip(&b[2..]) {
            *y = f32::from(q as i8) * d;
        }
    }
}

/// Quantize one block of 32 values into `out` (34 bytes); `Err(amax)` when the scale
/// overflows `f16`.
fn quantize_block(x: &[f32], out: &mut [u8]) -> Result<(), f32> {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let d16 = f16::from_f32(d);
    if d16.is_infinite() {
        return Err(amax);
    }
    out[..2].copy_from_slice(&d16.to_le_bytes());
    for (q, &v) in out[2..Q8_0_BYTES].iter_mut().zip(x) {
        // |v * id| <= 127 up to a few ulps, so the rounded value fits an i8.
        *q = (v * id).round() as i8 as u8;
    }
    Ok(())
}

/// Quantize the tensor `tensor` of `shape` (row-major `values`) to Q8_0 blocks, in GGUF's byte
/// layout: `n / 32` blocks of 34 bytes.
///
/// # Errors
/// [`QuantError::ValueCount`] if `values` does not match `shape`,
/// [`QuantError::NotBlockMultiple`] unless the last dimension is a multiple of 32 (gguf-py's
/// `can_quantize`), [`QuantError::NonFinite`], [`QuantError::ScaleOverflow`].
pub fn quantize(tensor: &str, shape: &[usize], values: &[f32]) -> Result<Vec<u8>, QuantError> {
    let n = value_count(tensor, shape, values)?;
    check_rows(tensor, shape)?;
    check_finite(tensor, "Q8_0", values)?;
    let mut out = vec![0u8; n / Q8_0_BLOCK * Q8_0_BYTES];
    for (block, (x, o)) in values
        .chunks_exact(Q8_0_BLOCK)
        .zip(out.chunks_exact_mut(Q8_0_BYTES))
        .enumerate()
    {
        quantize_block(x, o).map_err(|amax| QuantError::ScaleOverflow {
            tensor: tensor.to_string(),
            format: "Q8_0",
            block,
            amax,
        })?;
    }
    Ok(out)
}

/// Decode Q8_0 bytes of the tensor `tensor` with `shape` (the inverse layout of [`quantize`]).
///
/// # Errors
/// [`QuantError::NotBlockMultiple`] as for [`quantize`]; [`QuantError::PartLength`] when
/// `bytes` is not exactly the tensor's blocks.
pub fn dequantize(tensor: &str, shape: &[usize], bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    let n = element_count(tensor, shape)?;
    check_rows(tensor, shape)?;
    let blocks = n / Q8_0_BLOCK;
    if blocks.checked_mul(Q8_0_BYTES) != Some(bytes.len()) {
        return Err(QuantError::PartLength {
            tensor: tensor.to_string(),
            format: "Q8_0",
            shape: shape.to_vec(),
            blocks,
            part: "bytes",
            expected: blocks.saturating_mul(Q8_0_BYTES),
            actual: bytes.len(),
        });
    }
    let mut out = vec![0f32; n];
    Q8_0.dequantize_blocks(bytes, &mut out)?;
    Ok(out)
}

/// Rows (the last dimension) must be whole blocks, as gguf-py's `can_quantize` requires.
fn check_rows(tensor: &str, shape: &[usize]) -> Result<(), QuantError> {
    let row = shape.last().copied().unwrap_or(1);
    if row.is_multiple_of(Q8_0_BLOCK) {
        return Ok(());
    }
    Err(QuantError::NotBlockMultiple {
        tensor: tensor.to_string(),
        format: "Q8_0",
        shape: shape.to_vec(),
        row,
        block: Q8_0_BLOCK,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn block_layout_and_rounding() {
        // amax 127 -> d = 1 and id = 1, so x * id is exact and 2.5 shows the rounding of halves.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.49;
        let b = quantize("w", &[32], &x).unwrap();
        assert_eq!(b.len(), 34);
        assert_eq!(half_at(&b, 0), 1.0);
        assert_eq!(b[2..6], [127, 3, (-3i8) as u8, 0]);
        assert_eq!(
            dequantize("w", &[32], &b).unwrap()[..4],
            [127.0, 3.0, -3.0, 0.0]
        );
    }

    #[test]
    fn zero_block_has_zero_scale() {
        let b = quantize("w", &[2, 32], &[0.0; 64]).unwrap();
        assert!(b.iter().all(|&v| v == 0));
    }

    #[test]
    fn refusals_name_the_tensor() {
        let err = quantize("blk.0.ffn_up", &[2, 48], &[0.0; 96]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `blk.0.ffn_up`: Q8_0 needs rows of whole 32-element blocks, shape [2, 48] \
             has rows of 48"
        );
        let mut x = [1f32; 32];
        x[7] = f32::NAN;
        let err = quantize("w", &[32], &x).unwrap_err().to_string();
        assert!(err.contains("value NaN at index 7 is not finite"), "{err}");
        let err = quantize("w", &[32], &[1e7; 32]).unwrap_err().to_string();
        assert!(err.contains("block 0 has |x| up to 10000000"), "{err}");
        let err = quantize("w", &[64], &[0.0; 32]).unwrap_err().to_string();
        assert!(err.contains("has 64 elements, got 32 values"), "{err}");
        let err = dequantize("w", &[64], &[0; 67]).unwrap_err().to_string();
        assert_eq!(
            err,
            "tensor `w`: Q8_0 shape [64] (2 blocks) needs 68 bytes, got 67"
        );
    }
}
