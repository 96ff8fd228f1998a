//! The encodings a GGUF export writes (`--dtype f32|f16|bf16|q8_0|q4_0`), which tensors keep
//! `f32`, and the element encoders.
//!
//! The choice per tensor follows llama.cpp's `convert_hf_to_gguf.py` (`ModelBase.prepare_tensors`):
//!
//! * 1-D tensors (norm weights, biases) and every `*_norm.weight` stay **F32** whatever the
//!   dtype; so does `rope_freqs.weight`;
//! * other tensors take the dtype; for Q8_0 and Q4_0 a tensor whose rows (ne0) are not whole
//!   32-element blocks falls back to **F16**, as the converter does when gguf-py's quantizer
//!   refuses a shape;
//! * with `q4_0` the output matrix (`output.weight`, or `token_embd.weight` when the embeddings
//!   are tied and it doubles as the output) is written **Q8_0**: llama.cpp's `llama-quantize`
//!   gives that matrix a finer type than the rest (Q6_K), which Temper cannot encode.
//!
//! Encoders: F16 rounds to nearest, ties to even (numpy's `astype(np.float16)`); BF16 is
//! gguf-py's `BF16.quantize_blocks` (= `ggml_compute_fp32_to_bf16`): NaN forced quiet keeping
//! its sign and top payload bits, everything else rounded to nearest, ties to even (so values
//! past bf16's largest finite round to ±inf); Q8_0 / Q4_0 as `quantize_row_q8_0_ref` /
//! `quantize_row_q4_0_ref` ([`temper_formats::quant`]).

use std::fmt;
use std::str::FromStr;

use temper_formats::quant::{q4_0_quantize, q8_0};

use super::export_error::GgufExportError;
use super::ggml_type::GgmlType;

/// An export dtype: the type of the model's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgufDtype {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
}

impl GgufDtype {
    /// Every dtype, in CLI order.
    pub const ALL: [Self; 5] = [Self::F32, Self::F16, Self::BF16, Self::Q8_0, Self::Q4_0];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
        }
    }

    /// `general.file_type` (`enum llama_ftype`: `ALL_F32` 0, `MOSTLY_F16` 1, `MOSTLY_Q4_0` 2,
    /// `MOSTLY_Q8_0` 7, `MOSTLY_BF16` 32).
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 7,
            Self::BF16 => 32,
        }
    }

    /// The encoding of the GGUF tensor `name` with PyTorch `shape` (see the module docs);
    /// `is_output` marks the output matrix (`output.weight`, or a tied `token_embd.weight`).
    pub fn tensor_type(self, name: &str, shape: &[usize], is_output: bool) -> GgmlType {
        if shape.len() <= 1 || name.ends_with("_norm.weight") {
            return GgmlType::F32;
        }
        let whole_blocks = shape.last().is_some_and(|r| r.is_multiple_of(32));
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::BF16 => GgmlType::BF16,
            Self::Q8_0 | Self::Q4_0 if !whole_blocks => GgmlType::F16,
            Self::Q4_0 if is_output => GgmlType::Q8_0,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
        }
    }
}

impl fmt::Display for GgufDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgufDtype {
    type Err = GgufExportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| GgufExportError::UnknownDtype {
                name: s.to_string(),
            })
    }
}

/// gguf-py's `BF16.quantize_blocks`, one value.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let mut n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((u64::from(n) + (0x7fff + u64::from((n >> 16) & 1))) >> 16) as u16
}

/// Encode the values of the tensor `name` (PyTorch `shape`, row-major) as `ty`, in GGUF's byte
/// layout.
///
/// # Errors
/// [`GgufExportError::Quant`] from the block quantizers (a non-finite value, a scale that
/// overflows `f16`); [`GgufExportError::Layout`] for a type this module does not write.
pub fn encode_tensor(
    name: &str,
    shape: &[usize],
    values: &[f32],
    ty: GgmlType,
) -> Result<Vec<u8>, GgufExportError> {
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|v| f32_to_bf16_bits(*v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => q8_0::quantize(name, shape, values)?,
        GgmlType::Q4_0 => q4_0_quantize::quantize(name, shape, values)?,
        other => {
            return Err(GgufExportError::Layout {
                name: name.to_string(),
                ggml_type: other,
                dims: shape.iter().rev().map(|&d| d as u64).collect(),
                block: other.block_size().unwrap_or(0),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn which_tensors_stay_f32() {
        let q = GgufDtype::Q4_0;
        assert_eq!(
            q.tensor_type("blk.0.attn_norm.weight", &[64], false),
            GgmlType::F32
        );
        assert_eq!(
            q.tensor_type("blk.0.attn_q.bias", &[64], false),
            GgmlType::F32
        );
        assert_eq!(
            q.tensor_type("blk.0.attn_q.weight", &[64, 64], false),
            GgmlType::Q4_0
        );
        assert_eq!(
            q.tensor_type("blk.0.attn_q.weight", &[64, 48], false),
            GgmlType::F16
        );
        assert_eq!(
            q.tensor_type("token_embd.weight", &[10, 64], true),
            GgmlType::Q8_0
        );
        assert_eq!(
            GgufDtype::BF16.tensor_type("output.weight", &[10, 64], true),
            GgmlType::BF16
        );
        assert_eq!(
            GgufDtype::Q8_0.tensor_type("blk.0.attn_q_norm.weight", &[8, 8], false),
            GgmlType::F32
        );
    }

    #[test]
    fn names_and_file_types() {
        assert_eq!("Q8_0".parse::<GgufDtype>().unwrap(), GgufDtype::Q8_0);
        assert_eq!(
            "q5_k".parse::<GgufDtype>().unwrap_err().to_string(),
            "unknown GGUF export dtype `q5_k` (expected f32, f16, bf16, q8_0 or q4_0)"
        );
        let ft: Vec<u32> = GgufDtype::ALL.iter().map(|d| d.file_type()).collect();
        assert_eq!(ft, [0, 1, 32, 7, 2]);
    }

    #[test]
    fn bf16_rounding_and_nan() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        // Ties to even: 1 + 2^-8 sits halfway between two bf16 values.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0xffc0_0001)), 0xffc0);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
    }
}
