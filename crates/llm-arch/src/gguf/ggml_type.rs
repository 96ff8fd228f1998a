//! Tensor element encodings (`enum ggml_type`): ids, names and block layouts.
//!
//! A leaf module: the tensor table, the header parser, the dequantiser and the error type all
//! name a [`GgmlType`], and it needs none of them.

use std::fmt;

/// Element encoding of a tensor (`enum ggml_type`). Only the variants named here can be
/// dequantised; any other id is kept as [`GgmlType::Other`] so the rest of the file stays readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
    /// Any other `ggml_type` id.
    Other(u32),
}

impl GgmlType {
    /// Decode a `ggml_type` id as stored in the tensor table.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The `ggml_type` id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q6_K => 14,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// ggml's name for the type (`Q4_1`, `Q5_K`, ...), also for some ids without a variant.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.id() {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            30 => "BF16",
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)` for every type whose layout is known, including
    /// some this reader cannot dequantise: knowing the size still lets the header parser
    /// bounds-check such tensors.
    pub(super) fn layout(self) -> Option<(usize, usize)> {
        Some(match self.id() {
            0 => (1, 4),
            1 | 30 => (1, 2),
            2 => (32, 18),
            3 => (32, 20),
            6 => (32, 22),
            7 => (32, 24),
            8 => (32, 34),
            9 => (32, 36),
            10 => (256, 84),
            11 => (256, 110),
            12 => (256, 144),
            13 => (256, 176),
            14 => (256, 210),
            15 => (256, 292),
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 | 28 => (1, 8),
            _ => return None,
        })
    }

    /// Elements per block (1 for plain float types, 32 or 256 for quantised ones); `None` when
    /// the layout of this id is unknown.
    pub fn block_size(self) -> Option<usize> {
        self.layout().map(|(elements, _)| elements)
    }

    /// Bytes per block; `None` when the layout of this id is unknown.
    pub fn type_size(self) -> Option<usize> {
        self.layout().map(|(_, bytes)| bytes)
    }

    /// Whether [`dequantize`](super::dequantize) can decode this type.
    pub fn is_supported(self) -> bool {
        !matches!(self, Self::Other(_))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.name()) {
            (Self::Other(id), Some(name)) => write!(f, "{id} ({name})"),
            (Self::Other(id), None) => write!(f, "{id}"),
            (_, Some(name)) => f.write_str(name),
            (_, None) => write!(f, "{}", self.id()),
        }
    }
}
