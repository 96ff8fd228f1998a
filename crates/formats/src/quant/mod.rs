//! Block-quantized weight encodings, one home for each (issue 21), bit-exact with the peer
//! that defines it.
//!
//! A block-quantized tensor splits its values (flattened in row-major order) into blocks of a
//! fixed number of elements; each block is stored as small integer codes plus the scale(s) that
//! map them back to `f32`.
//!
//! * [`ggml`] — the GGUF blocks Q4_0, Q4_1, Q4_K, Q6_K (decoding), as gguf-py / llama.cpp;
//! * [`q8_0`] — Q8_0, quantize and decode, as gguf-py 0.19 (`gguf.quants`) and ggml;
//! * [`q4_0_quantize`] — quantizing to Q4_0 as llama.cpp's `quantize_row_q4_0_ref`;
//! * [`nf4`] — NF4 with double quantization, as bitsandbytes 0.50 `quantize_4bit` /
//!   `dequantize_4bit` on CPU; it builds on [`dynamic8`] (bitsandbytes' 8-bit blockwise
//!   "dynamic" code, which quantizes the NF4 scales) and [`torch_sum`] (the order in which torch
//!   sums `f32` on CPU, which decides the NF4 `offset` to the last bit).
//!
//! The ggml encodings are self-contained — each block carries its own `f16` scale — and share
//! the small [`BlockFormat`] trait, which is what a fused kernel needs: decode a run of whole
//! blocks into an `f32` tile. NF4 is not: bitsandbytes keeps the nibbles of a block apart from
//! its scale, and that scale is itself an 8-bit code of a second, coarser block, so NF4 decodes
//! a run of blocks through [`nf4::Nf4Tensor::dequantize_blocks`] instead.
//!
//! Nothing here allocates more than its output, and nothing panics on bad lengths: every
//! checked entry point returns a [`QuantError`] naming the tensor (or the format and sizes).

use std::fmt;
use std::str::FromStr;

pub mod dynamic8;
mod error;
pub mod ggml;
pub mod nf4;
pub mod q4_0_quantize;
pub mod q8_0;
pub mod torch_sum;

pub use error::QuantError;
pub use ggml::{Q4_0, Q4_1, Q4_K, Q6_K, QK_K};
pub use nf4::{Nf4Options, Nf4Tensor};
pub use q8_0::Q8_0;

/// A block encoding whose blocks carry their own scales, so any block decodes on its own.
///
/// Object safe: a loader can pick `&'static dyn BlockFormat` at run time from
/// [`QuantType::block_format`] and hand it runs of blocks.
pub trait BlockFormat: Send + Sync + fmt::Debug {
    /// ggml's name of the encoding (`Q4_K`).
    fn name(&self) -> &'static str;

    /// Elements per block (32, or [`QK_K`] = 256 for the K-quants).
    fn block_elems(&self) -> usize;

    /// Bytes per block.
    fn block_bytes(&self) -> usize;

    /// Decode one block: `block` holds exactly [`block_bytes`](Self::block_bytes) bytes and
    /// `out` exactly [`block_elems`](Self::block_elems) values.
    ///
    /// # Panics
    /// If either length is wrong; [`dequantize_blocks`](Self::dequantize_blocks) checks them.
    fn dequantize_block(&self, block: &[u8], out: &mut [f32]);

    /// Decode a run of whole blocks (for instance the blocks of one row of a weight, or a tile
    /// of them) into `out`, in storage order.
    ///
    /// # Errors
    /// [`QuantError::BlockRun`] unless `bytes` and `out` hold the same whole number of blocks.
    fn dequantize_blocks(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
        let (bb, be) = (self.block_bytes(), self.block_elems());
        let n_blocks = bytes.len() / bb;
        if !bytes.len().is_multiple_of(bb) || n_blocks.checked_mul(be) != Some(out.len()) {
            return Err(QuantError::BlockRun {
                format: self.name(),
                bytes: bytes.len(),
                elements: out.len(),
                block_bytes: bb,
                block_elems: be,
            });
        }
        for (block, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
            self.dequantize_block(block, y);
        }
        Ok(())
    }
}

/// The block-quantized encodings Temper knows, by the names the CLI uses (`nf4`, `q8_0`, ...).
///
/// `gguf` (keep a GGUF file's own blocks, whatever they are) is a choice of the CLI, not an
/// encoding, and does not parse here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    /// bitsandbytes NF4, 64-element blocks, double-quantized scales.
    Nf4,
    /// ggml Q8_0: 32 `i8` and an `f16` scale.
    Q8_0,
    /// ggml Q4_0: 32 nibbles and an `f16` scale.
    Q4_0,
    /// ggml Q4_1: 32 nibbles, an `f16` scale and an `f16` minimum.
    Q4_1,
    /// ggml Q4_K: 256-element super-blocks with 6-bit sub-block scales and minimums.
    Q4_K,
    /// ggml Q6_K: 256-element super-blocks of 6-bit values with 8-bit sub-block scales.
    Q6_K,
}

impl QuantType {
    /// Every variant, in declaration order.
    pub const ALL: [Self; 6] = [
        Self::Nf4,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q4_K,
        Self::Q6_K,
    ];

    /// The CLI name (`nf4`, `q8_0`, `q4_k`, ...); [`FromStr`] accepts it in any case.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nf4 => "nf4",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q4_K => "q4_k",
            Self::Q6_K => "q6_k",
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::Nf4 => nf4::NF4_BLOCK,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 => 32,
            Self::Q4_K | Self::Q6_K => QK_K,
        }
    }

    /// The self-contained block decoder; `None` for NF4, whose scales live beside its blocks
    /// (see [`Nf4Tensor::dequantize_blocks`]).
    pub fn block_format(self) -> Option<&'static dyn BlockFormat> {
        match self {
            Self::Nf4 => None,
            Self::Q8_0 => Some(&Q8_0),
            Self::Q4_0 => Some(&Q4_0),
            Self::Q4_1 => Some(&Q4_1),
            Self::Q4_K => Some(&Q4_K),
            Self::Q6_K => Some(&Q6_K),
        }
    }

    /// Whether Temper can also quantize to this encoding (not only decode it).
    pub fn can_quantize(self) -> bool {
        matches!(self, Self::Nf4 | Self::Q8_0)
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantType {
    type Err = QuantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| QuantError::UnknownType {
                name: s.to_string(),
                expected: Self::ALL.map(Self::name).join(", "),
            })
    }
}

/// Elements of a tensor of `shape` (1 for a scalar), or [`QuantError::ShapeOverflow`].
pub(crate) fn element_count(tensor: &str, shape: &[usize]) -> Result<usize, QuantError> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| QuantError::ShapeOverflow {
            tensor: tensor.to_string(),
            shape: shape.to_vec(),
        })
}

/// Elements of a tensor of `shape` after checking that `values` holds exactly that many
/// ([`QuantError::ValueCount`], [`QuantError::ShapeOverflow`]).
pub(crate) fn value_count(
    tensor: &str,
    shape: &[usize],
    values: &[f32],
) -> Result<usize, QuantError> {
    let n = element_count(tensor, shape)?;
    if values.len() != n {
        return Err(QuantError::ValueCount {
            tensor: tensor.to_string(),
            shape: shape.to_vec(),
            expected: n,
            actual: values.len(),
        });
    }
    Ok(n)
}

/// The first non-finite value of `values`, as [`QuantError::NonFinite`].
pub(crate) fn check_finite(
    tensor: &str,
    format: &'static str,
    values: &[f32],
) -> Result<(), QuantError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(QuantError::NonFinite {
            tensor: tensor.to_string(),
            format,
            index,
            value: values[index],
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_round_trip_and_gguf_is_not_a_format() {
        for t in QuantType::ALL {
            assert_eq!(t.to_string().parse::<QuantType>().unwrap(), t);
            assert_eq!(t.name().to_uppercase().parse::<QuantType>().unwrap(), t);
            if let Some(f) = t.block_format() {
                assert_eq!(f.block_elems(), t.block_elems());
                assert!(f.name().eq_ignore_ascii_case(t.name()), "{}", f.name());
            }
        }
        let err = "gguf".parse::<QuantType>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown quantized type `gguf` (expected one of nf4, q8_0, q4_0, q4_1, q4_k, q6_k)"
        );
        assert!(QuantType::Nf4.block_format().is_none());
        assert_eq!(QuantType::Nf4.block_elems(), 64);
    }

    #[test]
    fn block_runs_must_be_whole_and_matching() {
        let bytes = [0u8; 36];
        let mut out = [1f32; 64];
        Q8_0.dequantize_blocks(&bytes[..34], &mut out[..32])
            .unwrap();
        assert_eq!(out[..32], [0.0; 32]);
        let err = Q8_0
            .dequantize_blocks(&bytes[..35], &mut out[..32])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Q8_0: 35 bytes and 32 values are not the same whole number of blocks \
             (34 bytes and 32 values each)"
        );
        assert!(Q8_0.dequantize_blocks(&bytes[..34], &mut out).is_err());
    }
}
