//! Errors of `temper-lora`.

use std::path::PathBuf;

/// Everything that can go wrong injecting, loading, saving or merging an adapter. Variants
/// name the file, key or module involved: an adapter that silently loads half its weights
/// would look fine and not be the fine-tune.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: safetensors: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error(transparent)]
    Arch(#[from] temper_llm_arch::Error),
    /// Quantizing a base weight (QLoRA).
    #[error(transparent)]
    Backend(#[from] temper_backend::BackendError),
    /// Reading or writing an adapter file (`adapter_config.json`, atomic writes).
    #[error(transparent)]
    Format(#[from] temper_formats::FormatsError),
    #[error("invalid LoRA config: {0}")]
    InvalidConfig(String),
    #[error("not supported by temper-lora: {0}")]
    Unsupported(String),
    #[error("target_modules {0} matches no projection of the model")]
    NoTargets(String),
    #[error("the model already has an adapter on `{0}` (one adapter at a time)")]
    AlreadyInjected(String),
    #[error("the model has no LoRA adapter")]
    NotInjected,
    #[error("the adapter on `{0}` is merged into its base weight: unmerge it first")]
    Merged(String),
    #[error("{path}: adapter tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: adapter tensor `{name}` matches no module the config targets")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{path}: adapter tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

impl LoraError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`LoraError`].
pub type Result<T> = std::result::Result<T, LoraError>;
