//! The error type of [`quant`](super): every variant names the tensor, or the format and the
//! sizes at fault when no tensor is known (a bare run of blocks).

/// Everything that can go wrong quantizing, decoding or assembling a block-quantized tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    /// A name that is not a [`QuantType`](super::QuantType).
    #[error("unknown quantized type `{name}` (expected one of {expected})")]
    UnknownType { name: String, expected: String },

    /// The element count of a shape does not fit in `usize`.
    #[error("tensor `{tensor}`: shape {shape:?} has more elements than fit in memory")]
    ShapeOverflow { tensor: String, shape: Vec<usize> },

    /// The values handed over do not match the shape.
    #[error("tensor `{tensor}`: shape {shape:?} has {expected} elements, got {actual} values")]
    ValueCount {
        tensor: String,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },

    /// A format whose rows must be whole blocks, given a row length that is not.
    #[error(
        "tensor `{tensor}`: {format} needs rows of whole {block}-element blocks, \
         shape {shape:?} has rows of {row}"
    )]
    NotBlockMultiple {
        tensor: String,
        format: &'static str,
        shape: Vec<usize>,
        row: usize,
        block: usize,
    },

    /// A part of a stored quantized tensor (packed codes, scales, ...) of the wrong length.
    #[error(
        "tensor `{tensor}`: {format} shape {shape:?} ({blocks} blocks) needs {expected} {part}, \
         got {actual}"
    )]
    PartLength {
        tensor: String,
        format: &'static str,
        shape: Vec<usize>,
        blocks: usize,
        part: &'static str,
        expected: usize,
        actual: usize,
    },

    /// Quantizing a NaN or an infinity (no peer gives them a meaningful code).
    #[error(
        "tensor `{tensor}`: value {value} at index {index} is not finite; {format} quantizes finite values only"
    )]
    NonFinite {
        tensor: String,
        format: &'static str,
        index: usize,
        value: f32,
    },

    /// A block whose scale does not fit the format's `f16` (ggml would store an infinity).
    #[error(
        "tensor `{tensor}`: block {block} has |x| up to {amax}; its {format} scale overflows f16"
    )]
    ScaleOverflow {
        tensor: String,
        format: &'static str,
        block: usize,
        amax: f32,
    },

    /// A bare run of blocks whose byte and value counts are not the same whole number of
    /// blocks.
    #[error(
        "{format}: {bytes} bytes and {elements} values are not the same whole number of blocks \
         ({block_bytes} bytes and {block_elems} values each)"
    )]
    BlockRun {
        format: &'static str,
        bytes: usize,
        elements: usize,
        block_bytes: usize,
        block_elems: usize,
    },

    /// A run of blocks that leaves the tensor, or an output of the wrong length for it.
    #[error(
        "{format}: cannot decode blocks {start}..{end} of {blocks} into {actual} values \
         (the run must lie in the tensor and the output hold exactly its values)"
    )]
    BlockRange {
        format: &'static str,
        start: usize,
        end: usize,
        blocks: usize,
        actual: usize,
    },
}
