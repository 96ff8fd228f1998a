//! # temper-merge
//!
//! mergekit's merge methods for Llama-family checkpoints, as a library: the same YAML, the same
//! numbers, streamed tensor by tensor through mmap with rayon, and written atomically.
//!
//! # Quick start
//!
//! SLERP of two vectors at `t = 0.5`: orthogonal unit vectors meet halfway along the arc,
//! at `(cos 45°, sin 45°)`, not at the chord's midpoint `(0.5, 0.5)`:
//!
//! ```
//! use temper_merge::methods::slerp;
//!
//! let mid = slerp(0.5, &[1.0, 0.0], &[0.0, 1.0]);
//! let h = std::f32::consts::FRAC_1_SQRT_2;
//! assert!((mid[0] - h).abs() < 1e-6 && (mid[1] - h).abs() < 1e-6);
//! ```
//!
//! The same through a mergekit YAML, with the two models' tensors held in memory
//! ([`merge_in_memory`]):
//!
//! ```
//! use std::collections::BTreeMap;
//! use temper_merge::{DType, HostTensor, MergeConfig, MergeOptions, merge_in_memory};
//!
//! # fn main() -> temper_merge::Result<()> {
//! let yaml = "merge_method: slerp
//! base_model: a
//! models:
//!   - model: a
//!   - model: b
//! parameters:
//!   t: 0.5
//! ";
//! let config = MergeConfig::from_yaml(yaml, "quick-start.yml")?;
//! let name = "model.layers.0.mlp.down_proj.weight";
//! let model = |v: Vec<f32>| {
//!     let tensor = HostTensor::new(vec![2], DType::F32, v);
//!     (None, BTreeMap::from([(name.to_string(), tensor)]))
//! };
//! let models = BTreeMap::from([
//!     ("a".to_string(), model(vec![1.0, 0.0])),
//!     ("b".to_string(), model(vec![0.0, 1.0])),
//! ]);
//! let (merged, _report) = merge_in_memory(&config, models, &MergeOptions::default())?;
//! let h = std::f32::consts::FRAC_1_SQRT_2;
//! assert!(merged[name].data.iter().all(|x| (x - h).abs() < 1e-6));
//! # Ok(()) }
//! ```
//!
//! And over two checkpoint folders (HF safetensors) named in a YAML file, written to `out`:
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
//! The public API is what this file re-exports (plus the [`methods`] catalogue); the modules
//! below are internal, and each one uses only the ones listed above it:
//!
//! ```text
//! error, dtype, files, threads            leaves: errors, tensor dtypes, small helpers
//! linalg                                  randomized truncated SVD and its products
//! config                                  the mergekit YAML (MergeConfig)
//! source                                  input checkpoints: mmap'd safetensors, tensors
//! lora                                    PEFT adapters applied to a source (`base+adapter`)
//! method, methods                         the MergeMethod trait and the methods
//! vocab                                   output vocabularies: building, row permutation,
//!                                         tokenizer files
//! plan                                    MergePlan: every output tensor, all checks done
//!                                         before anything is written
//! writer                                  ShardedWriter: positioned writes into shards laid
//!                                         out up front
//! sink                                    TensorSink: the writer, or buffers in memory
//! execute                                 runs a plan into a sink (rayon, deterministic)
//! api                                     entry points: run_merge, plan_merge, write_plan,
//!                                         merge_in_memory, open_models
//! extract_lora                            entry point: a LoRA adapter from a fine-tune
//! delta                                   entry point: how far a fine-tune moved from its
//!                                         parent (cosine, relative change per tensor/layer)
//! ```
//!
//! No burn: this crate builds in seconds and can be used alone.

mod api;
mod config;
mod delta;
mod dtype;
mod error;
mod execute;
mod extract_lora;
mod files;
mod linalg;
mod lora;
mod method;
pub mod methods;
mod plan;
mod sink;
mod source;
mod threads;
mod vocab;
mod writer;

pub use api::{
    MergeOptions, MergeSummary, merge_in_memory, open_models, plan_merge, run_merge, write_plan,
};
pub use config::{
    Condition, InputModel, MergeConfig, ModelRef, OutputSlice, ParamValue, Parameters, SliceSource,
    TokenizerConfig,
};
pub use delta::{GroupDelta, ModuleGroup, TensorDelta, WeightDelta, weight_delta};
pub use dtype::DType;
pub use error::{MergeError, Result};
pub use execute::{NoProgress, Progress, TensorReport, execute};
pub use extract_lora::{
    DEFAULT_MODULES, ExtractOptions, ExtractProgress, ExtractSummary, ModuleKind, ModuleReport,
    extract_lora,
};
pub use linalg::{Svd, SvdOptions, jacobi_svd, truncated_svd};
pub use lora::{
    Adapter, AdapterConfig, AppliedAdapter, LoraKind, LoraModule, SavedTensor, apply_adapter,
    lora_delta,
};
pub use method::{
    BaseModel, CHUNK, ElementwiseKernel, MergeMethod, MergeOutput, Merged, MethodReport,
    MethodSpec, ParamSpec, ResolvedParams, TensorJob,
};
pub use methods::method_by_name;
pub use plan::{MergePlan, PlanOptions, PlannedInput, PlannedTensor};
pub use sink::TensorSink;
pub use source::{HostTensor, InputTensor, ModelSource};
pub use temper_formats::peft::TargetModules;
pub use vocab::{VocabPlan, VocabSource};
