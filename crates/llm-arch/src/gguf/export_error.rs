//! The one error type of the GGUF writing side: the container writer ([`super::writer`]) and
//! the HF → GGUF export ([`super::from_hf`]). Every message names what it is about: the output
//! file, the tensor, the metadata key or the dtype.

use std::path::PathBuf;

use temper_formats::FormatsError;
use temper_formats::quant::QuantError;

use super::ggml_type::GgmlType;

/// Everything that can go wrong while writing a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufExportError {
    /// Writing the output failed (a missing directory, no permission, a full disk); nothing is
    /// left at the output path.
    #[error("{}: cannot write GGUF file: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Creating or committing the atomic output file failed.
    #[error(transparent)]
    Output(#[from] FormatsError),

    /// Reading the source model failed.
    #[error("reading the source model: {0}")]
    Source(#[from] Box<crate::Error>),

    /// A `--dtype` that is not an export dtype.
    #[error("unknown GGUF export dtype `{name}` (expected f32, f16, bf16, q8_0 or q4_0)")]
    UnknownDtype { name: String },

    /// A model family Temper cannot name in llama.cpp's terms.
    #[error("model_type `{model_type}` cannot be exported to GGUF (supported: {supported})")]
    UnsupportedArchitecture {
        model_type: String,
        supported: String,
    },

    /// An HF tensor with no llama.cpp name for this architecture.
    #[error("tensor `{name}` has no llama.cpp name for architecture `{arch}`")]
    UnmappedTensor { name: String, arch: String },

    /// A tokenizer llama.cpp's `gpt2` (byte-level BPE) vocabulary cannot hold.
    #[error("tokenizer cannot be exported to GGUF: {reason}")]
    UnsupportedTokenizer { reason: String },

    /// The pre-tokenizer's fingerprint (llama.cpp's `chkhsh`) is not one Temper knows, so
    /// `tokenizer.ggml.pre` cannot be chosen: guessing would make llama.cpp split text
    /// differently from the model's own tokenizer.
    #[error(
        "unknown BPE pre-tokenizer (llama.cpp chkhsh {hash}): cannot choose \
         tokenizer.ggml.pre; known: {known}"
    )]
    UnknownPreTokenizer { hash: String, known: String },

    /// A metadata array whose elements are not all of one type, or two keys with one name.
    #[error("metadata key `{key}`: {reason}")]
    Metadata { key: String, reason: String },

    /// Two tensors with one name.
    #[error("tensor `{name}` is listed twice")]
    DuplicateTensor { name: String },

    /// A tensor whose type has no known block layout, or whose first dimension is not a
    /// whole number of blocks.
    #[error(
        "tensor `{name}`: {ggml_type} cannot hold dims {dims:?} (ne0 must be a multiple of {block})"
    )]
    Layout {
        name: String,
        ggml_type: GgmlType,
        dims: Vec<u64>,
        block: usize,
    },

    /// A q/k tensor whose rows do not split into the config's heads of even size, so llama.cpp's
    /// rotary permutation cannot be applied.
    #[error("tensor `{name}`: {rows} rows do not split into {heads} heads of even size")]
    HeadSplit {
        name: String,
        rows: usize,
        heads: usize,
    },

    /// The bytes produced for a tensor are not the size its table entry promised.
    #[error("tensor `{name}`: {actual} data bytes, the header promised {expected}")]
    TensorSize {
        name: String,
        expected: u64,
        actual: u64,
    },

    /// Encoding a tensor's values failed (a non-finite value, a scale overflow).
    #[error(transparent)]
    Quant(#[from] QuantError),
}

impl From<crate::Error> for GgufExportError {
    fn from(e: crate::Error) -> Self {
        Self::Source(Box::new(e))
    }
}
