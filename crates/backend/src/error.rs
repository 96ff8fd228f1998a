use crate::cuda_probe::CudaMissing;

/// Errors of the backend layer: bad device strings, backends not compiled in, unsupported dtypes.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device string is not one of the accepted forms.
    #[error("invalid device `{spec}`: {reason} (expected `cpu`, `wgpu`, `wgpu:N` or `cuda:N`)")]
    InvalidDevice { spec: String, reason: String },
    /// The backend exists but this build does not include it.
    #[error(
        "device `{spec}` needs the `{feature}` cargo feature, which this build of Temper was compiled without (rebuild with `cargo install --path crates/cli --features {feature}`)"
    )]
    NotCompiled { spec: String, feature: &'static str },
    /// A CUDA device whose driver, NVRTC or headers are not on this machine (found before
    /// cudarc would panic on them).
    #[error("device `{spec}` cannot start:{}\n(if they are there and this check is wrong, TEMPER_CUDA_SKIP_PROBE=1 skips it)", bullets(.missing))]
    CudaUnavailable {
        spec: String,
        missing: Vec<CudaMissing>,
    },
    /// The dtype string is not known.
    #[error("invalid dtype `{0}` (expected `f32`, `bf16` or `f16`)")]
    InvalidDType(String),
    /// The training precision string is not known.
    #[error("invalid precision `{0}` (expected `f32`, `bf16`, `f16`, `bf16-mixed` or `f16-mixed`)")]
    InvalidPrecision(String),
    /// The device cannot compute in this dtype.
    #[error("device {device} does not support {dtype} arithmetic; use f32")]
    UnsupportedDType { device: String, dtype: String },
    /// The device cannot compute in a training precision's half type (bf16 on wgpu).
    #[error(
        "training precision `{precision}` computes in {half}, which device {device} does not support; use {instead}"
    )]
    UnsupportedPrecision {
        precision: String,
        device: String,
        half: String,
        instead: &'static str,
    },
    /// A quantized encoding refused a tensor (its shape, a value, the bytes).
    #[error(transparent)]
    Quant(#[from] temper_formats::quant::QuantError),
    /// Temper cannot produce this encoding (the ggml K-quants are read from GGUF files only).
    #[error(
        "tensor `{tensor}`: cannot quantize to {ty} (Temper quantizes to nf4 and q8_0; the other ggml types are read from GGUF files)"
    )]
    QuantizeTo {
        tensor: String,
        ty: temper_formats::quant::QuantType,
    },
    /// Stored blocks that do not make up the weight's shape.
    #[error(
        "tensor `{tensor}`: {bytes} bytes of {ty} blocks do not make a {shape:?} weight ({block_elems} values in {block_bytes} bytes a block, rows a whole number of blocks)"
    )]
    QuantLayout {
        tensor: String,
        ty: temper_formats::quant::QuantType,
        shape: [usize; 2],
        bytes: usize,
        block_elems: usize,
        block_bytes: usize,
    },
}

fn bullets(items: &[CudaMissing]) -> String {
    items.iter().map(|m| format!("\n  - {m}")).collect()
}
