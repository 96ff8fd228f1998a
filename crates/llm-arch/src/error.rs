use std::path::PathBuf;

use crate::gguf::GgufError;

/// Everything that can go wrong loading, running or saving a model. Each message names the
/// file, the config key or the tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: required config key `{key}` is missing")]
    MissingConfigKey { path: PathBuf, key: String },
    #[error("{path}: config key `{key}`: {reason}")]
    InvalidConfig {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: unsupported model_type `{model_type}` (supported: {supported})")]
    UnsupportedModelType {
        path: PathBuf,
        model_type: String,
        /// The supported `model_type`s, comma-separated.
        supported: String,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: unexpected tensor `{name}` (not part of a {arch} model with this config)")]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        arch: String,
    },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {dtype}, expected F32, BF16 or F16")]
    UnsupportedTensorDType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// A NaN or infinite weight; `index` is the first bad element (row-major, as stored).
    #[error("{path}: tensor `{name}` holds {value} at element {index} (weights must be finite)")]
    NonFiniteWeight {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    #[error("{path}: no model.safetensors, model.safetensors.index.json or .gguf file found")]
    NoWeights { path: PathBuf },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// Reading or writing a file through `temper-formats` (atomic writes, maps, tokenizer
    /// config); the message names the file and key.
    #[error(transparent)]
    Format(#[from] temper_formats::FormatsError),
    #[error("tokenizer {origin}: {reason}")]
    Tokenizer { origin: String, reason: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Backend(#[from] temper_backend::BackendError),
    /// A setting (a generation flag such as `temperature`) outside its range.
    #[error("`{field}`: {reason}")]
    InvalidSetting { field: String, reason: String },
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
