use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Device, FloatDType};

use crate::BackendError;

/// The float dtype a model computes in.
///
/// Checkpoints are converted to it on load whatever their stored dtype; f32 is the reference
/// (and the only choice for the deprecated NdArray-class CPU backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FloatPrecision {
    #[default]
    F32,
    BF16,
    F16,
}

impl FloatPrecision {
    /// burn's dtype for this precision.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::BF16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// burn's float dtype for this precision.
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::BF16 => FloatDType::BF16,
            Self::F16 => FloatDType::F16,
        }
    }

    /// Check that `device` can do arithmetic in this dtype (not only store it).
    ///
    /// # Errors
    /// [`BackendError::UnsupportedDType`] naming the device and dtype.
    pub fn check(self, device: &Device) -> Result<(), BackendError> {
        if device.supports_dtype(self.dtype()) {
            Ok(())
        } else {
            Err(BackendError::UnsupportedDType {
                device: format!("{device:?}"),
                dtype: self.to_string(),
            })
        }
    }
}

impl FromStr for FloatPrecision {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            "f16" | "float16" | "fp16" | "half" => Ok(Self::F16),
            _ => Err(BackendError::InvalidDType(s.to_string())),
        }
    }
}

impl fmt::Display for FloatPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::BF16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_and_displays() {
        for p in [
            FloatPrecision::F32,
            FloatPrecision::BF16,
            FloatPrecision::F16,
        ] {
            assert_eq!(p.to_string().parse::<FloatPrecision>().unwrap(), p);
        }
        assert_eq!(
            "bfloat16".parse::<FloatPrecision>().unwrap(),
            FloatPrecision::BF16
        );
        let err = "f8".parse::<FloatPrecision>().unwrap_err().to_string();
        assert!(err.contains("invalid dtype `f8`"), "{err}");
    }

    #[cfg(feature = "flex")]
    #[test]
    fn flex_computes_in_every_precision() {
        let device = Device::flex();
        for p in [
            FloatPrecision::F32,
            FloatPrecision::BF16,
            FloatPrecision::F16,
        ] {
            p.check(&device).unwrap();
        }
    }
}
