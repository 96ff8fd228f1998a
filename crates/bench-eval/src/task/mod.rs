//! lm-evaluation-harness 0.4 task YAMLs over local data (issue 24).
//!
//! * [`config`]: the YAML (with `include`), refusing what Temper does not run;
//! * [`dataset`]: the splits from local JSON lines / JSON / CSV files or a dataset folder;
//! * [`chat`]: contexts through the model's chat template (`--apply-chat-template`);
//! * [`provenance`]: the files a task read, with their SHA-256;
//! * [`prompt`]: `doc_to_text` / `doc_to_choice` / `doc_to_target` (Jinja) and the few-shot
//!   context;
//! * [`sampler`]: few-shot examples as lm-eval draws them (`first_n`, and the default seeded
//!   sampler with CPython's generator);
//! * [`run`]: requests, lm-eval's metrics and its results JSON;
//! * [`rolling`]: `loglikelihood_rolling` (rolling windows, perplexities);
//! * [`generate`]: `generate_until` (greedy answers cut at stop strings), with [`filter`]'s
//!   pipelines and [`exact_match`];
//! * [`parquet`]: Parquet splits (`dataset_path: parquet`, Hub dataset folders);
//! * [`registry`]: `--include-path` indexes and task / group / tag names;
//! * [`group`]: group YAMLs' aggregate scores and their part of the results JSON.

pub mod chat;
pub mod config;
pub mod dataset;
pub mod exact_match;
pub mod filter;
pub mod generate;
pub mod group;
pub mod parquet;
pub mod prompt;
pub mod provenance;
pub mod registry;
pub mod rolling;
pub mod run;
pub mod sampler;

pub use config::TaskConfig;
pub use group::GroupSpec;
pub use registry::{Selection, TaskIndex};
pub use run::{TaskResult, TaskSettings, evaluate_task};
