//! Benchmark evaluation for Temper.
//!
//! * [`question`]: the JSONL benchmark format (multiple choice, true/false, short answer).
//! * [`loglik`]: lm-evaluation-harness log-likelihood multiple choice (`acc`, `acc_norm`,
//!   `acc_bytes`), batched with right padding.
//! * [`generative`]: the paper's generative protocol (one word or letter, greedy decoding) and
//!   the answer parser.
//! * [`results`]: accuracy with standard errors, per-question records, McNemar and paired
//!   bootstrap tests, merge analysis.

pub mod error;
pub mod generative;
pub mod loglik;
pub mod question;
pub mod results;

pub use error::{EvalError, Result};
pub use question::{Question, QuestionKind, load_questions, parse_questions};
