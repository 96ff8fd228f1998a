//! The trainer's error type: every failure names what it was doing (file, step, key).

use std::path::PathBuf;

/// Errors of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration value is invalid (the message names the key).
    #[error("invalid training config: {0}")]
    Config(String),
    /// A TOML stage file could not be parsed.
    #[error("{path}: {message}")]
    Toml { path: PathBuf, message: String },
    /// JSON (checkpoint state, metrics) could not be (de)serialised.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The loss became NaN or infinite: the run stops, the last good checkpoint is kept.
    #[error(
        "non-finite loss ({value}) at step {step}; stopping. Last good checkpoint: {}",
        last_checkpoint.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string())
    )]
    NonFiniteLoss {
        step: usize,
        value: f64,
        last_checkpoint: Option<PathBuf>,
    },
    /// The run's memory estimate exceeds what the machine has: refused before loading.
    #[error(
        "this run needs about {needed}, and {available} of memory is available: {advice} \
         (or set memory_check = false to start anyway)"
    )]
    WontFit {
        needed: String,
        available: String,
        advice: String,
    },
    /// A checkpoint is missing a file or does not fit this run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// The data has no usable rows, or a batch could not be built.
    #[error("data: {0}")]
    Data(String),
    /// From the objectives crate (losses, collation, tokenisation).
    #[error(transparent)]
    Objective(#[from] temper_objectives::ObjectiveError),
    /// From the model crate (forward, loading, saving).
    #[error(transparent)]
    Arch(#[from] temper_llm_arch::Error),
    /// From the LoRA crate (injection, adapter files, merging).
    #[error(transparent)]
    Lora(#[from] temper_lora::LoraError),
    /// Writing a file or directory atomically (`temper-formats`); names the path.
    #[error(transparent)]
    Format(#[from] temper_formats::FormatsError),
    /// From the backend layer (device, dtype).
    #[error(transparent)]
    Backend(#[from] temper_backend::BackendError),
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
