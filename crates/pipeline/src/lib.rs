//! The paper's whole study as one call (Lu, Luu & Buehler, arXiv 2409.03444): an instruct
//! model, continued pre-training, supervised fine-tuning and preference optimisation in a
//! chain, each result SLERP-merged with the instruct parent, every variant benchmarked, the
//! merges tested against their parents (is the merge better than both?), and a report.
//!
//! * [`config`]: the pipeline TOML and the built-in presets (`default`, `smoke`).
//! * [`run`]: [`run_pipeline`], step by step with fingerprints so a re-run resumes.
//! * `export`: the `export_gguf` option, each variant also as a GGUF file for llama.cpp.
//! * [`report`]: the results and their rendering as `report.{json,md,html}` (the HTML through a
//!   minijinja template); [`plots`]: the SVG figures; [`rerender_report`] renders a finished
//!   run's report again from its `report.json`.
//!
//! ```no_run
//! use std::path::Path;
//! use temper_pipeline::{PipelineConfig, PipelineOptions, Preset, run_pipeline};
//!
//! let config = PipelineConfig::preset(Preset::Smoke, Path::new("."))?;
//! let report = run_pipeline(&config, &PipelineOptions { out_dir: "runs/smoke".into(), progress: true })?;
//! println!("{} variants, synergy: {}", report.variants.len(), !report.synergies().is_empty());
//! # Ok::<(), temper_pipeline::PipelineError>(())
//! ```

pub mod config;
pub mod error;
mod export;
pub mod fingerprint;
pub mod plots;
pub mod report;
pub mod run;
pub mod schedules;
mod steps;

pub use config::{PipelineConfig, Preset, StageSpec};
pub use error::{PipelineError, Result};
pub use report::PipelineReport;
pub use run::{PipelineOptions, rerender_report, run_pipeline};
