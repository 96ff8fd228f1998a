//! The merge crate's error type: every variant names the file, tensor, key or model at fault.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while configuring or running a merge.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The merge configuration (YAML) is malformed or inconsistent.
    #[error("merge config: {0}")]
    Config(String),
    /// A method was given a parameter it does not take, or lacks one it needs.
    #[error("merge config: {0}")]
    Parameter(String),
    /// A checkpoint file or directory is malformed (bad header, truncated data, bad index).
    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// A tensor is missing from an input model.
    #[error("tensor {tensor} is missing from model {model}")]
    MissingTensor { tensor: String, model: String },
    /// Input tensors that must agree in shape do not.
    #[error("shape mismatch for tensor {tensor}: {details}")]
    ShapeMismatch { tensor: String, details: String },
    /// Anything else about a specific tensor (unsupported dtype, numeric failure).
    #[error("tensor {tensor}: {msg}")]
    Tensor { tensor: String, msg: String },
    /// A file read or written through `temper-formats` (an adapter config, a map, an atomic
    /// output directory); the message names the file and key.
    #[error(transparent)]
    Format(#[from] temper_formats::FormatsError),
}

impl MergeError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn tensor(tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Tensor {
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }
}

/// `Result` with [`MergeError`].
pub type Result<T, E = MergeError> = std::result::Result<T, E>;
