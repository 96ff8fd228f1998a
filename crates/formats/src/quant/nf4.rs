//! NF4 (4-bit NormalFloat, QLoRA) with double quantization, bit-exact with bitsandbytes 0.50 on
//! CPU: `bitsandbytes.functional.quantize_4bit(W, blocksize=64, quant_type="nf4",
//! compress_statistics=True)` and `dequantize_4bit`.
//!
//! Quantizing (bnb's pure-torch CPU kernel, `backends/default/ops.py`, in `f32`):
//!
//! * the tensor is flattened and cut into blocks of 64 ([`NF4_BLOCK`]); the last block may be
//!   short;
//! * a full block stores `absmax = max |x|` and scales by `x * (1 / max(absmax, 1e-38))`; the
//!   short last block divides instead, `x / max(absmax, 1e-38)`, and stores the clamped absmax
//!   (1e-38 for an all-zero tail, 0 for an all-zero full block);
//! * the scaled value, clamped to [-1, 1], gets the index of the first of the 15 midpoints
//!   between the [`NF4_CODE`] values that is `>= x` (`torch.bucketize`, so a value exactly on a
//!   midpoint takes the lower code);
//! * two indices per byte, the first element in the high nibble; an odd count is padded with
//!   the index of 0.0 (7).
//!
//! Double quantization of the scales: `offset = mean(absmax)` in torch's summation order
//! ([`torch_sum`]; from 32768 blocks on it depends on torch's thread count,
//! [`Nf4Options::torch_threads`]), then `absmax - offset` is quantized to 8 bits in blocks of
//! 256 ([`NESTED_BLOCK`]) with the dynamic code ([`dynamic8`]), keeping one `f32` absmax per
//! 256 blocks.
//!
//! Decoding (`dequantize_4bit`): `scale = code[q] * nested_absmax + offset` (two roundings, as
//! bnb's `dequantize_blockwise(...)` then `+= offset`), then `NF4_CODE[nibble] * scale` in
//! `f32`, over the same flat blocks.
//!
//! bnb 0.50.2's AVX-512 CPU decoder differs on one family of shapes: when the last dimension is
//! a multiple of 16 but not of 64 it looks scales up per row (`row * (cols / 64) + col / 64`)
//! rather than per flat block, which does not invert its own quantization. Temper decodes over
//! flat blocks, as bnb's pure-torch decoder, its scalar CPU path and its CUDA kernels do; the
//! fixture `nf4_row80` records both.

use std::ops::Range;

use super::dynamic8::{self, CODE_SIZE};
use super::{QuantError, check_finite, element_count, torch_sum, value_count};

/// Elements per NF4 block (bitsandbytes' default `blocksize`, QLoRA's choice).
pub const NF4_BLOCK: usize = 64;
/// NF4 blocks per block of the 8-bit quantized scales.
pub const NESTED_BLOCK: usize = 256;

/// The 16 NF4 values (`get_4bit_type("nf4")`): quantiles of N(0, 1) scaled to [-1, 1], with an
/// exact 0 (QLoRA, Dettmers et al. 2023, appendix E).
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The smallest divisor bnb uses for a block's scale (`absmax.clamp(min=1e-38)`).
const MIN_ABSMAX: f32 = 1e-38;

/// The 15 midpoints between neighbouring NF4 values, `(a + b) / 2` in `f32`.
fn midpoints() -> [f32; 15] {
    std::array::from_fn(|i| (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0)
}

/// The NF4 index of a scaled value: how many midpoints lie strictly below it.
#[inline]
fn nf4_index(bounds: &[f32; 15], x: f32) -> u8 {
    bounds.partition_point(|&b| b < x) as u8 // <= 15
}

/// What decides the last bit of an NF4 tensor beyond its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Options {
    /// `torch.get_num_threads()` of the bnb run to match: the `offset` is a torch mean, whose
    /// summation order depends on it from 32768 blocks (2 Mi elements) on. Default 1.
    pub torch_threads: usize,
}

impl Default for Nf4Options {
    fn default() -> Self {
        Self { torch_threads: 1 }
    }
}

/// The stored parts of an NF4 tensor, named after bitsandbytes' `QuantState`.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Parts {
    /// The tensor's shape (`QuantState.shape`).
    pub shape: Vec<usize>,
    /// `⌈n / 2⌉` bytes, two indices each, the first element in the high nibble (the packed
    /// weight, `[(n + 1) / 2, 1]` `uint8` in bnb).
    pub packed: Vec<u8>,
    /// One 8-bit code per block of 64 (`QuantState.absmax`, `uint8`).
    pub absmax: Vec<u8>,
    /// One `f32` per 256 blocks (`QuantState.state2.absmax`).
    pub nested_absmax: Vec<f32>,
    /// The 256 codes of the scales (`QuantState.state2.code`, the dynamic map).
    pub nested_code: Vec<f32>,
    /// The mean absmax subtracted before the scales were quantized (`QuantState.offset`).
    pub offset: f32,
}

/// A tensor in NF4 with double-quantized scales (see the [module](self) docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    shape: Vec<usize>,
    len: usize,
    packed: Vec<u8>,
    absmax: Vec<u8>,
    nested_absmax: Vec<f32>,
    nested_code: Box<[f32; CODE_SIZE]>,
    offset: f32,
}

impl Nf4Tensor {
    /// Quantize the tensor `tensor` (the name is for errors) of `shape` from its row-major
    /// `values`, as `quantize_4bit(..., blocksize=64, quant_type="nf4",
    /// compress_statistics=True)`. An empty tensor has no blocks and offset 0.
    ///
    /// # Errors
    /// [`QuantError::ValueCount`] if `values` does not match `shape`, [`QuantError::NonFinite`]
    /// for NaN or infinite values, [`QuantError::ShapeOverflow`].
    pub fn quantize(
        tensor: &str,
        shape: &[usize],
        values: &[f32],
        options: &Nf4Options,
    ) -> Result<Self, QuantError> {
        let n = value_count(tensor, shape, values)?;
        check_finite(tensor, "NF4", values)?;

        let bounds = midpoints();
        let mut packed = vec![0u8; n.div_ceil(2)];
        let mut put =
            |i: usize, q: u8| packed[i / 2] |= if i.is_multiple_of(2) { q << 4 } else { q };
        let mut absmax = Vec::with_capacity(n.div_ceil(NF4_BLOCK));
        let full = n - n % NF4_BLOCK;
        for (b, x) in values[..full].chunks_exact(NF4_BLOCK).enumerate() {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let recip = 1.0 / amax.max(MIN_ABSMAX);
            for (k, &v) in x.iter().enumerate() {
                put(
                    b * NF4_BLOCK + k,
                    nf4_index(&bounds, (v * recip).clamp(-1.0, 1.0)),
                );
            }
            absmax.push(amax);
        }
        if full < n {
            let tail = &values[full..];
            let amax = tail
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(MIN_ABSMAX);
            for (k, &v) in tail.iter().enumerate() {
                put(full + k, nf4_index(&bounds, (v / amax).clamp(-1.0, 1.0)));
            }
            absmax.push(amax);
        }
        if n % 2 == 1 {
            put(n, nf4_index(&bounds, 0.0));
        }

        let offset = if absmax.is_empty() {
            0.0
        } else {
            torch_sum::mean(&absmax, options.torch_threads)
        };
        let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let code = dynamic8::dynamic_map();
        let (absmax, nested_absmax) = dynamic8::quantize_blockwise(&code, &centered, NESTED_BLOCK);
        Ok(Self {
            shape: shape.to_vec(),
            len: n,
            packed,
            absmax,
            nested_absmax,
            nested_code: Box::new(code),
            offset,
        })
    }

    /// Assemble a tensor from stored parts (a bitsandbytes `QuantState`, a file), checking
    /// every length against the shape.
    ///
    /// # Errors
    /// [`QuantError::PartLength`] naming `tensor` and the part of the wrong length.
    pub fn from_parts(tensor: &str, parts: Nf4Parts) -> Result<Self, QuantError> {
        let n = element_count(tensor, &parts.shape)?;
        let blocks = n.div_ceil(NF4_BLOCK);
        let checks = [
            ("packed bytes", n.div_ceil(2), parts.packed.len()),
            ("absmax codes", blocks, parts.absmax.len()),
            (
                "nested absmax values",
                blocks.div_ceil(NESTED_BLOCK),
                parts.nested_absmax.len(),
            ),
            ("nested code values", CODE_SIZE, parts.nested_code.len()),
        ];
        for (part, expected, actual) in checks {
            if expected != actual {
                return Err(QuantError::PartLength {
                    tensor: tensor.to_string(),
                    format: "NF4",
                    shape: parts.shape,
                    blocks,
                    part,
                    expected,
                    actual,
                });
            }
        }
        let mut code = Box::new([0f32; CODE_SIZE]);
        code.copy_from_slice(&parts.nested_code);
        Ok(Self {
            shape: parts.shape,
            len: n,
            packed: parts.packed,
            absmax: parts.absmax,
            nested_absmax: parts.nested_absmax,
            nested_code: code,
            offset: parts.offset,
        })
    }

    /// The stored parts, for writing out.
    pub fn into_parts(self) -> Nf4Parts {
        Nf4Parts {
            shape: self.shape,
            packed: self.packed,
            absmax: self.absmax,
            nested_absmax: self.nested_absmax,
            nested_code: self.nested_code.to_vec(),
            offset: self.offset,
        }
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of 64-element blocks (the last may be short).
    pub fn n_blocks(&self) -> usize {
        self.absmax.len()
    }

    /// The packed indices, two per byte, first element in the high nibble.
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// The 8-bit codes of the block scales.
    pub fn absmax_codes(&self) -> &[u8] {
        &self.absmax
    }

    /// The `f32` absmax of each group of 256 block scales.
    pub fn nested_absmax(&self) -> &[f32] {
        &self.nested_absmax
    }

    /// The 256-entry code of the block scales.
    pub fn nested_code(&self) -> &[f32; CODE_SIZE] {
        &self.nested_code
    }

    /// The mean absmax subtracted before quantizing the scales.
    pub fn offset(&self) -> f32 {
        self.offset
    }

    /// The decoded scale of block `block`: `code[q] * nested_absmax + offset`.
    ///
    /// # Panics
    /// If `block >= self.n_blocks()`.
    #[inline]
    pub fn scale(&self, block: usize) -> f32 {
        let q = usize::from(self.absmax[block]);
        self.nested_code[q] * self.nested_absmax[block / NESTED_BLOCK] + self.offset
    }

    /// Every block's decoded scale (bnb: `dequantize_blockwise(absmax, state2) + offset`).
    pub fn scales(&self) -> Vec<f32> {
        (0..self.n_blocks()).map(|b| self.scale(b)).collect()
    }

    /// Decode the blocks `blocks` (for instance the blocks of one row, or a tile) into `out`,
    /// which must hold exactly their values (the tensor's last block may be short).
    ///
    /// # Errors
    /// [`QuantError::BlockRange`] if the run leaves the tensor or `out` has another length.
    pub fn dequantize_blocks(
        &self,
        blocks: Range<usize>,
        out: &mut [f32],
    ) -> Result<(), QuantError> {
        let first = blocks.start.saturating_mul(NF4_BLOCK);
        let last = blocks.end.saturating_mul(NF4_BLOCK).min(self.len);
        if blocks.start > blocks.end
            || blocks.end > self.n_blocks()
            || out.len() != last.saturating_sub(first)
        {
            return Err(QuantError::BlockRange {
                format: "NF4",
                start: blocks.start,
                end: blocks.end,
                blocks: self.n_blocks(),
                actual: out.len(),
            });
        }
        self.decode(blocks.start, out);
        Ok(())
    }

    /// Decode the whole tensor, row-major (bnb `dequantize_4bit` to `float32`).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.len];
        self.decode(0, &mut out);
        out
    }

    /// Decode consecutive blocks from `first_block` into `out`; the caller has checked that they
    /// lie in the tensor.
    fn decode(&self, first_block: usize, out: &mut [f32]) {
        for (k, y) in out.chunks_mut(NF4_BLOCK).enumerate() {
            let block = first_block + k;
            let scale = self.scale(block);
            let base = block * NF4_BLOCK;
            for (j, y) in y.iter_mut().enumerate() {
                let i = base + j;
                let byte = self.packed[i / 2];
                let q = if i.is_multiple_of(2) {
                    byte >> 4
                } else {
                    byte & 0x0F
                };
                *y = NF4_CODE[usize::from(q)] * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn midpoint_ties_take_the_lower_code() {
        let bounds = midpoints();
        assert_eq!(nf4_index(&bounds, -1.0), 0);
        assert_eq!(nf4_index(&bounds, 0.0), 7);
        assert_eq!(nf4_index(&bounds, 1.0), 15);
        for (i, &m) in bounds.iter().enumerate() {
            assert_eq!(nf4_index(&bounds, m), i as u8, "midpoint {i}");
            assert_eq!(
                nf4_index(&bounds, m.next_up()),
                i as u8 + 1,
                "above midpoint {i}"
            );
        }
    }

    #[test]
    fn packing_order_and_odd_padding() {
        // Block absmax 1: values are their own scaled values. -1 -> 0, 1 -> 15, 0 -> 7.
        let t = Nf4Tensor::quantize("w", &[3], &[-1.0, 1.0, 0.0], &Nf4Options::default()).unwrap();
        assert_eq!(t.packed(), [0x0F, 0x77]);
        assert_eq!(t.n_blocks(), 1);
        // One block: offset = absmax, so the centered scale is 0 and decodes to exactly offset.
        assert_eq!(t.offset(), 1.0);
        assert_eq!(t.dequantize(), [-1.0, 1.0, 0.0]);
    }

    #[test]
    fn zero_tensor_decodes_to_zero() {
        let t = Nf4Tensor::quantize("w", &[2, 70], &[0.0; 140], &Nf4Options::default()).unwrap();
        assert!(t.packed().iter().all(|&b| b == 0x77));
        assert!(t.dequantize().iter().all(|&v| v == 0.0));
        let empty = Nf4Tensor::quantize("w", &[0, 4], &[], &Nf4Options::default()).unwrap();
        assert!(empty.is_empty() && empty.dequantize().is_empty() && empty.offset() == 0.0);
    }

    #[test]
    fn runs_must_stay_in_the_tensor() {
        let values: Vec<f32> = (0..150).map(|i| (i as f32 - 75.0) / 10.0).collect();
        let t = Nf4Tensor::quantize("w", &[150], &values, &Nf4Options::default()).unwrap();
        let all = t.dequantize();
        let mut tail = [0f32; 86];
        t.dequantize_blocks(1..3, &mut tail).unwrap();
        assert_eq!(tail[..], all[64..]);
        let mut out = [0f32; 64];
        let err = t.dequantize_blocks(2..4, &mut out).unwrap_err().to_string();
        assert!(
            err.contains("cannot decode blocks 2..4 of 3 into 64 values"),
            "{err}"
        );
        assert!(t.dequantize_blocks(0..1, &mut out[..63]).is_err());
    }
}
