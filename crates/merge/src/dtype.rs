//! Float storage types of checkpoints and the rounding rules between them.

use std::fmt;
use std::str::FromStr;

use half::f16;

use crate::{MergeError, Result};

/// A floating-point storage type of a checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::BF16 | Self::F16 => 2,
        }
    }

    /// The safetensors header name (`F32`, `BF16`, `F16`).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::BF16 => "BF16",
            Self::F16 => "F16",
        }
    }

    /// The name transformers writes into `config.json` (`float32`, `bfloat16`, `float16`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::BF16 => "bfloat16",
            Self::F16 => "float16",
        }
    }

    /// From a safetensors dtype; other dtypes (integers, f64, f8) are not mergeable weights.
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Option<Self> {
        match dtype {
            safetensors::Dtype::F32 => Some(Self::F32),
            safetensors::Dtype::BF16 => Some(Self::BF16),
            safetensors::Dtype::F16 => Some(Self::F16),
            _ => None,
        }
    }

    /// Round an f32 to the nearest value of this dtype (ties to even), returned as f32.
    ///
    /// This is how computing "in bf16" is reproduced: torch evaluates each bf16 operation in
    /// f32 and rounds the result, so `round(op(a, b))` is bit-identical to it.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Self::F32 => x,
            Self::BF16 => f32::from_bits(u32::from(bf16_bits(x)) << 16),
            Self::F16 => f16::from_f32(x).to_f32(),
        }
    }

    /// Decode little-endian elements of this dtype into f32 (`out.len()` elements).
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(bytes.len(), out.len() * self.size());
        match self {
            Self::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Self::BF16 => {
                // bf16 is the top half of an f32: a shift, which vectorises.
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
                }
            }
            Self::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
        }
    }

    /// Encode f32 values into little-endian elements of this dtype (round to nearest even).
    pub fn encode(self, values: &[f32], out: &mut [u8]) {
        debug_assert_eq!(out.len(), values.len() * self.size());
        match self {
            Self::F32 => {
                for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            Self::BF16 => {
                for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                    o.copy_from_slice(&bf16_bits(*v).to_le_bytes());
                }
            }
            Self::F16 => {
                for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                    o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
                }
            }
        }
    }
}

/// f32 → bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
///
/// Branch-free so loops over it vectorise (`half`'s conversion is a per-element call); gives
/// the same bits as `half::bf16::from_f32` (tested).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let nan = (b >> 16) as u16 | 0x0040;
    if (b & 0x7fff_ffff) > 0x7f80_0000 {
        nan
    } else {
        rounded
    }
}

impl FromStr for DType {
    type Err = MergeError;

    /// Accepts mergekit's spellings: `float32`/`fp32`, `bfloat16`/`bf16`, `float16`/`fp16`/`half`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "float32" | "fp32" | "f32" | "float" => Ok(Self::F32),
            "bfloat16" | "bf16" => Ok(Self::BF16),
            "float16" | "fp16" | "f16" | "half" => Ok(Self::F16),
            other => Err(MergeError::Config(format!(
                "unknown dtype `{other}` (expected float32, bfloat16 or float16)"
            ))),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.torch_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn bf16_round_trip_is_exact_and_rounds_to_even() {
        let values = [0.0f32, -1.5, 3.140625, 1.0e-30, 65504.0];
        let mut bytes = vec![0u8; values.len() * 2];
        DType::BF16.encode(&values, &mut bytes);
        let mut back = vec![0f32; values.len()];
        DType::BF16.decode(&bytes, &mut back);
        for (v, b) in values.iter().zip(&back) {
            assert_eq!(DType::BF16.round(*v), *b);
        }
        // 1 + 2^-8 lies exactly between two bf16 values: ties go to the even mantissa (1.0).
        assert_eq!(DType::BF16.round(1.0 + 1.0 / 256.0), 1.0);
    }

    #[test]
    fn bf16_bits_match_half_everywhere_that_matters() {
        let mut x = 0x1234_5678u32;
        for _ in 0..200_000 {
            // xorshift: bit patterns across the whole f32 range, NaNs and infinities included.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x);
            let ours = bf16_bits(v);
            let theirs = bf16::from_f32(v).to_bits();
            if v.is_nan() {
                assert!(bf16::from_bits(ours).is_nan());
            } else {
                assert_eq!(ours, theirs, "{v:e}");
            }
        }
        for v in [
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            -0.0,
            1.0e-40,
            3.3895314e38,
        ] {
            assert_eq!(bf16_bits(v), bf16::from_f32(v).to_bits(), "{v:e}");
        }
    }

    #[test]
    fn parses_mergekit_names() {
        assert_eq!("bfloat16".parse::<DType>().ok(), Some(DType::BF16));
        assert_eq!("float16".parse::<DType>().ok(), Some(DType::F16));
        let err = "int8".parse::<DType>().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("int8")));
    }
}
