//! The one error type of the GGUF reader.
//!
//! GGUF files come from many converters and are often truncated by interrupted downloads, so
//! every failure is a value, never a panic. Each message starts with the file path (or the name
//! given to [`GgufFile::from_bytes`](super::GgufFile::from_bytes)) and names the tensor, the
//! metadata key and/or the byte offset involved, so a user can tell what is wrong without a hex
//! editor.

use super::ggml_type::GgmlType;

/// Everything that can go wrong while reading, decoding or converting a GGUF file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The first four bytes are not `GGUF`.
    #[error("{path}: not a GGUF file (magic {magic:02x?}, expected \"GGUF\")")]
    BadMagic { path: String, magic: Vec<u8> },

    /// A version this reader does not understand (v1 used 32-bit counts; v2 and v3 are supported).
    #[error("{path}: unsupported GGUF version {version}{hint} (versions 2 and 3 are supported)")]
    UnsupportedVersion {
        path: String,
        version: u32,
        /// Extra explanation, e.g. that the file looks big-endian.
        hint: &'static str,
    },

    /// A read ran past the end of the file.
    #[error("{path}: truncated: {what} needs bytes {start}..{end} but the file has {len}")]
    Truncated {
        path: String,
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },

    /// A count read from the file cannot possibly fit in the bytes that remain; rejected before
    /// anything is allocated.
    #[error(
        "{path}: count {count} of {what} exceeds the file size (count at offset {offset}; \
         {remaining} bytes remain, each entry needs at least {min_size})"
    )]
    CountTooLarge {
        path: String,
        what: String,
        count: u64,
        offset: u64,
        remaining: u64,
        min_size: u64,
    },

    /// Metadata would take memory out of proportion with its size in the file (a huge array
    /// of small elements).
    #[error(
        "{path}: metadata key `{key}` brings the metadata to {bytes} bytes in memory, over the \
         limit of {limit} for the bytes read (8 times their size plus 64 MiB)"
    )]
    MetadataTooLarge {
        path: String,
        key: String,
        bytes: u64,
        limit: u64,
    },

    /// A string (key, value or tensor name) is not UTF-8.
    #[error("{path}: {what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        path: String,
        what: String,
        offset: u64,
    },

    /// A metadata value type id outside 0..=12.
    #[error("{path}: metadata key `{key}` has unknown value type {value_type} at offset {offset}")]
    UnknownValueType {
        path: String,
        key: String,
        value_type: u32,
        offset: u64,
    },

    /// Arrays of arrays nested deeper than the reader allows.
    #[error("{path}: metadata key `{key}` nests arrays deeper than {max_depth} at offset {offset}")]
    NestingTooDeep {
        path: String,
        key: String,
        max_depth: usize,
        offset: u64,
    },

    /// The same metadata key appears twice.
    #[error("{path}: duplicate metadata key `{key}`")]
    DuplicateKey { path: String, key: String },

    /// The same tensor name appears twice.
    #[error("{path}: duplicate tensor `{name}`")]
    DuplicateTensor { path: String, name: String },

    /// `general.alignment` is zero or not a power of two.
    #[error(
        "{path}: metadata key `general.alignment` is {alignment}, expected a non-zero power of two"
    )]
    BadAlignment { path: String, alignment: u64 },

    /// A required metadata key is absent.
    #[error("{path}: metadata key `{key}` missing")]
    MissingKey { path: String, key: String },

    /// A metadata key holds a value of the wrong type.
    #[error("{path}: metadata key `{key}` has type {found}, expected {expected}")]
    WrongType {
        path: String,
        key: String,
        found: &'static str,
        expected: &'static str,
    },

    /// A metadata value has the right type but an unusable value (out of range, negative, ...).
    #[error("{path}: metadata key `{key}`: {reason}")]
    BadValue {
        path: String,
        key: String,
        reason: String,
    },

    /// A tensor has more than four dimensions.
    #[error(
        "{path}: tensor `{name}` has {n_dims} dimensions at offset {offset} (at most 4 are allowed)"
    )]
    TooManyDims {
        path: String,
        name: String,
        n_dims: u32,
        offset: u64,
    },

    /// The product of a tensor's dimensions overflows.
    #[error("{path}: tensor `{name}`: element count of dims {dims:?} overflows")]
    ShapeOverflow {
        path: String,
        name: String,
        dims: Vec<u64>,
    },

    /// A quantised tensor whose element count is not a whole number of blocks.
    #[error(
        "{path}: tensor `{name}`: {n_elements} elements is not a multiple of the {ggml_type} block size {block_size}"
    )]
    NotBlockMultiple {
        path: String,
        name: String,
        ggml_type: GgmlType,
        n_elements: u64,
        block_size: u64,
    },

    /// A tensor offset that is not a multiple of the file's alignment.
    #[error(
        "{path}: tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        path: String,
        name: String,
        offset: u64,
        alignment: u64,
    },

    /// A tensor stored in a ggml type this reader cannot decode (or whose layout is unknown).
    #[error("{path}: unsupported ggml type {ggml_type} for tensor `{name}`")]
    UnsupportedType {
        path: String,
        name: String,
        ggml_type: GgmlType,
    },

    /// A byte buffer handed to the dequantiser does not have the size its type and element count imply.
    #[error(
        "{path}: tensor `{name}`: {n_elements} elements of {ggml_type} need {expected} bytes, got {actual}"
    )]
    DataSize {
        path: String,
        name: String,
        ggml_type: GgmlType,
        n_elements: u64,
        expected: u64,
        actual: u64,
    },

    /// No tensor of that name exists.
    #[error("{path}: tensor `{name}` not found")]
    TensorNotFound { path: String, name: String },

    /// A tensor name with no Hugging Face counterpart.
    #[error("{path}: tensor `{name}` has no Hugging Face name mapping")]
    UnmappedTensor { path: String, name: String },

    /// A tensor whose shape does not fit what the metadata says (e.g. q rows vs head count).
    #[error("{path}: tensor `{name}`: {reason}")]
    BadTensorShape {
        path: String,
        name: String,
        reason: String,
    },

    /// `general.architecture` is not one this crate can convert.
    #[error(
        "{path}: unsupported architecture `{arch}` (general.architecture); supported: llama, mistral, qwen2, qwen3"
    )]
    UnsupportedArchitecture { path: String, arch: String },

    /// `tokenizer.ggml.model` is not byte-level BPE.
    #[error(
        "{path}: unsupported tokenizer model `{model}` (tokenizer.ggml.model); only `gpt2` byte-level BPE is supported"
    )]
    UnsupportedTokenizer { path: String, model: String },

    /// Tokenizer metadata that is present but inconsistent.
    #[error("{path}: tokenizer metadata: {reason}")]
    BadTokenizer { path: String, reason: String },

    /// A tensor's element count does not fit in memory on this platform.
    #[error("{path}: tensor `{name}`: {n_elements} elements do not fit in memory on this platform")]
    TooLarge {
        path: String,
        name: String,
        n_elements: u64,
    },

    /// A NaN or infinite value in a tensor (or in the scale of one of its quantized blocks,
    /// which makes the whole block so); `index` is the first bad element in file order.
    #[error(
        "{path}: tensor `{name}` holds {value} at element {index}{what} (weights must be finite)"
    )]
    NonFiniteTensor {
        path: String,
        name: String,
        index: usize,
        value: f32,
        /// Empty, or " (the scale of its quantized block)".
        what: &'static str,
    },
}
