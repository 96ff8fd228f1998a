//! One entry of the GGUF tensor table: name, dims, element type and data offset.

use super::ggml_type::GgmlType;

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// `ne0` first, as in the file; `ne0` is the contiguous dimension, so the PyTorch shape is
    /// this list reversed.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset relative to the start of the tensor data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Product of the dimensions (`None` on overflow, which the parser already rejected).
    pub fn n_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Size of the tensor data in bytes, when the type's layout is known.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, bytes) = self.ggml_type.layout()?;
        let n = self.n_elements()?;
        (n / block as u64).checked_mul(bytes as u64)
    }

    /// The PyTorch / Hugging Face shape: the GGUF dims reversed.
    pub fn hf_shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }
}
