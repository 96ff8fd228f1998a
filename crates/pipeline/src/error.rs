use std::path::{Path, PathBuf};

/// Everything a pipeline run can fail with; each names the stage, file or variant involved.
/// (The crates' errors are boxed: they are large and errors are rare.)
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The pipeline config (TOML) is malformed or inconsistent.
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },
    #[error("stage `{stage}`: {source}")]
    Train {
        stage: String,
        source: Box<temper_train::TrainError>,
    },
    #[error("merge `{name}`: {source}")]
    Merge {
        name: String,
        source: Box<temper_merge::MergeError>,
    },
    #[error("evaluating `{variant}`: {source}")]
    Eval {
        variant: String,
        source: Box<temper_bench_eval::EvalError>,
    },
    #[error("{path}: {source}")]
    Model {
        path: PathBuf,
        source: Box<temper_llm_arch::Error>,
    },
    #[error(transparent)]
    Backend(#[from] temper_backend::BackendError),
    /// The instruct model is missing and its fetch script could not provide it.
    #[error("instruct model {path} not found: {message}")]
    Fetch { path: PathBuf, message: String },
    #[error("writing the report: {0}")]
    Report(String),
    /// Writing a variant as GGUF (`export_gguf`).
    #[error("exporting `{variant}` as GGUF: {message}")]
    Export { variant: String, message: String },
    /// Writing a file atomically (`temper-formats`); names the file.
    #[error(transparent)]
    Format(#[from] temper_formats::FormatsError),
}

impl PipelineError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn config(origin: &str, message: impl Into<String>) -> Self {
        Self::Config {
            origin: origin.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
