//! The objectives crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong preparing data or computing a loss.
#[derive(Debug, thiserror::Error)]
pub enum ObjectiveError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A dataset line is malformed: names the file, the 1-based line and the field.
    #[error("{path}:{line}: {msg}")]
    Data {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// Tensors or options that do not fit together (shapes, lengths, an unknown loss type).
    #[error("{0}")]
    Invalid(String),
    /// A loss or log-prob came out NaN or infinite.
    #[error("non-finite {what}: {value}")]
    NonFinite { what: String, value: f64 },
    /// A reference source outside this crate failed (e.g. a trainer's own reference forward).
    #[error("reference log-probs: {0}")]
    Reference(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Tokenizer or chat-template failure from `temper-llm-arch`.
    #[error(transparent)]
    Arch(#[from] temper_llm_arch::Error),
    /// Writing a file atomically (`temper-formats`); names the file.
    #[error(transparent)]
    Format(#[from] temper_formats::FormatsError),
}

/// `Result` with [`ObjectiveError`].
pub type Result<T, E = ObjectiveError> = std::result::Result<T, E>;
