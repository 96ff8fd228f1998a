//! The error type of `temper-formats`: every variant names the file (and the key) at fault.

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading or writing one of Temper's file formats.
#[derive(Debug, thiserror::Error)]
pub enum FormatsError {
    /// Reading, writing, renaming or mapping a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A key of a JSON file has the wrong type or an unusable value.
    #[error("{path}: `{key}`: {reason}")]
    InvalidKey {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// An output path that cannot be written as asked (a file where a directory should be, a
    /// non-empty directory that may not be replaced).
    #[error("{path}: {reason}")]
    Output { path: PathBuf, reason: String },
}

impl FormatsError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn key(
        path: impl AsRef<Path>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidKey {
            path: path.as_ref().to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// `Result` with [`FormatsError`].
pub type Result<T, E = FormatsError> = std::result::Result<T, E>;
