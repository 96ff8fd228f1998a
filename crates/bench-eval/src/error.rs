//! Errors of benchmark evaluation.

use std::path::PathBuf;

/// Everything that can go wrong while loading or scoring a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A benchmark line that is not a valid question.
    #[error("{}:{line}: {reason}", path.display())]
    Malformed {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        reason: String,
    },
    /// A benchmark file without a single question (empty, or only blank lines).
    #[error("{}: no questions (the file is empty or holds only blank lines)", path.display())]
    NoQuestions { path: PathBuf },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The model, tokenizer or chat template failed.
    #[error(transparent)]
    Model(#[from] temper_llm_arch::Error),
    /// Log-prob computation failed.
    #[error(transparent)]
    Objective(#[from] temper_objectives::ObjectiveError),
    /// Inconsistent arguments (empty inputs, mismatched record sets, ...).
    #[error("{0}")]
    Invalid(String),
    /// An lm-evaluation-harness task YAML (or its dataset) that cannot be used as written.
    #[error("{}: `{key}`: {reason}", path.display())]
    Task {
        path: PathBuf,
        /// The YAML key (or dataset field) at fault.
        key: String,
        reason: String,
    },
    /// A `--task` name that no task, group or tag under the include paths has.
    #[error("unknown task, group or tag `{name}` (searched: {searched}){close}")]
    UnknownTask {
        name: String,
        /// The include paths (and files) searched.
        searched: String,
        /// `"; close matches: a, b"`, or empty.
        close: String,
    },
    /// Writing a file atomically (`temper-formats`); names the file.
    #[error(transparent)]
    Format(#[from] temper_formats::FormatsError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;
