//! Benchmark evaluation for Temper.
//!
//! * [`question`]: the JSONL benchmark format (multiple choice, true/false, short answer).
//! * [`loglik`]: lm-evaluation-harness log-likelihood multiple choice (`acc`, `acc_norm`,
//!   `acc_bytes`), batched with right padding.
//! * [`shared_context`]: the same scores with each shared context prefilled once and all its
//!   choices run from its KV cache.
//! * [`generative`]: the paper's generative protocol (one word or letter, greedy decoding) and
//!   the answer parser.
//! * [`run`]: [`evaluate_model`], either mode with the special tokens read off the model.
//! * [`task`]: lm-evaluation-harness task YAMLs over local data (multiple choice), with
//!   lm-eval's few-shot contexts, metrics and results JSON.
//! * [`compare`]: two runs side by side (McNemar, paired bootstrap, Holm across categories).
//! * [`results`]: accuracy with standard errors, per-question records, McNemar and paired
//!   bootstrap tests, merge analysis.

pub mod compare;
pub mod error;
pub mod generative;
pub mod loglik;
pub mod question;
mod record;
pub mod results;
pub mod run;
pub mod shared_context;
pub mod task;

pub use error::{EvalError, Result};
pub use question::{Question, QuestionKind, load_questions, parse_questions};
pub use run::{EvalMode, EvalSettings, evaluate_model};
