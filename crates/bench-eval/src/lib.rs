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
//!
//! # Quick start
//!
//! Parse a JSONL benchmark, score one model output per question with the generative
//! protocol's parser, and summarise with lm-eval's standard error:
//!
//! ```
//! use std::path::Path;
//! use temper_bench_eval::generative::record_for_output;
//! use temper_bench_eval::parse_questions;
//! use temper_bench_eval::results::{Metric, summarize};
//!
//! # fn main() -> temper_bench_eval::Result<()> {
//! let jsonl = r#"{"id": "q1", "category": "fibres", "question": "Wool is made of?", "choices": ["cellulose", "keratin"], "answer": 1}
//! {"id": "q2", "question": "Silk is a protein fibre.", "answer": true}
//! {"id": "q3", "question": "The protein of hair?", "answer": "keratin"}
//! "#;
//! let questions = parse_questions(jsonl, Path::new("quick-start.jsonl"))?;
//! assert_eq!(questions.len(), 3);
//!
//! // What a model answered (`evaluate_model` produces these by greedy decoding).
//! let outputs = ["The answer is B.", "False", "Keratin"];
//! let records: Vec<_> = questions
//!     .iter()
//!     .zip(outputs)
//!     .map(|(q, out)| record_for_output(q, out))
//!     .collect();
//! assert_eq!(records.iter().map(|r| r.correct).collect::<Vec<_>>(), [true, false, true]);
//!
//! let summary = summarize(&records, Metric::Acc);
//! assert_eq!((summary.overall.correct, summary.overall.n), (2, 3));
//! // √(p(1 − p)/(n − 1)) with p = 2/3, n = 3: exactly 1/3.
//! assert!((summary.overall.stderr - 1.0 / 3.0).abs() < 1e-12);
//! assert_eq!(summary.per_category["fibres"].accuracy, 1.0);
//! assert_eq!(summary.per_category["uncategorized"].accuracy, 0.5);
//! # Ok(()) }
//! ```

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
