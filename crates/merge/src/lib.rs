//! # temper-merge
//!
//! mergekit's merge methods for Llama-family checkpoints, as a library: the same YAML, the same
//! numbers, streamed tensor by tensor through mmap with rayon, and written atomically.
//!
//! ```no_run
//! use temper_merge::{MergeConfig, MergeOptions, NoProgress, run_merge};
//! # fn main() -> temper_merge::Result<()> {
//! let config = MergeConfig::from_file("gradient-slerp.yml".as_ref())?;
//! let summary = run_merge(&config, None, "out".as_ref(), &MergeOptions::default(), &NoProgress)?;
//! println!("{} tensors", summary.tensors);
//! # Ok(()) }
//! ```
//!
//! Layers: [`config`] (YAML) → [`plan`] (what each output tensor is made of, every check done
//! before writing) → [`execute`] (methods from [`methods`], in parallel) → [`writer`]
//! (positioned writes into pre-laid-out shards) inside [`output`] (temporary directory, rename).
//!
//! No burn: this crate builds in seconds and can be used alone.

pub mod config;
pub mod dtype;
pub mod error;
pub mod execute;
pub mod extract_lora;
pub mod lora;
pub mod method;
pub mod methods;
pub mod output;
pub mod plan;
pub mod source;
mod staging;
pub mod vocab;
pub mod writer;

pub use config::{MergeConfig, ModelRef, ParamValue};
pub use dtype::DType;
pub use error::{MergeError, Result};
pub use execute::{NoProgress, Progress, TensorReport, execute};
pub use extract_lora::{ExtractOptions, ExtractSummary, extract_lora};
pub use lora::{apply_adapter, lora_delta};
pub use method::{MergeMethod, MethodSpec, TensorJob};
pub use methods::method_by_name;
pub use output::{MergeOptions, MergeSummary, merge_in_memory, open_models, plan_merge, run_merge};
pub use plan::{MergePlan, PlanOptions};
pub use source::{HostTensor, InputTensor, ModelSource};
