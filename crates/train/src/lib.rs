//! # temper-train
//!
//! A resumable trainer for `temper-llm-arch` models and any objective implementing
//! `temper_objectives::TrainObjective` — Temper's own (CPT, SFT, DPO family, ORPO, SimPO/CPO,
//! KTO, named in TOML through [`ObjectiveConfig`]) or yours ([`Trainer::with_objective`]).
//!
//! * [`TrainerConfig`] — HF/TRL hyper-parameter names and defaults, set explicitly where
//!   burn's differ (AdamW ε 1e-8 and weight decay 0; global-norm clipping).
//! * [`FusedAdamW`] — burn's AdamW arithmetic and record, one fused parallel update per
//!   parameter.
//! * [`Trainer`] — the loop, objective-agnostic: seeded shuffled data order, gradient accumulation with
//!   token-correct scaling, [`clip_grad_norm`], LR schedules with warm-up ([`LrSchedule`]),
//!   evaluation, atomic checkpoints and exact resume, a NaN guard, `metrics.jsonl` with TRL's
//!   names, a progress bar and a loss-curve SVG.
//! * [`FineTuning`] — what trains and whether the method brings its own reference forward:
//!   [`FullFineTuning`], or [`LoraFineTuning`] (adapters only, base frozen, DPO/KTO reference =
//!   adapters disabled).
//! * [`run_stage`] — one call from a [`StageConfig`] (TOML) to a saved HF directory.
//!
//! # Quick start
//!
//! A LoRA SFT stage as `temper train` reads it (HF/TRL names; what is left out takes TRL's
//! defaults):
//!
//! ```
//! use temper_train::StageConfig;
//!
//! # fn main() -> temper_train::Result<()> {
//! let stage = StageConfig::from_toml_str(r#"
//!     model = ".cache/smollm2/SmolLM2-135M-Instruct"
//!     train_file = "data/sft.jsonl"
//!
//!     [lora]
//!     r = 16
//!
//!     [trainer]
//!     learning_rate = 2e-4
//!     max_steps = 100
//!     output_dir = "runs/sft"
//!
//!     [trainer.objective]
//!     type = "sft"
//! "#)?;
//! assert_eq!(stage.trainer.max_steps, Some(100));
//! // `lora_alpha` defaults to 2·r; the adapters go on all seven projections.
//! let lora = stage.lora.as_ref().map(|l| l.to_lora_config());
//! assert_eq!(lora.map(|c| (c.r, c.lora_alpha)), Some((16, 32.0)));
//! # Ok(()) }
//! ```
//!
//! Running a stage file loads the model, trains, and saves the result as an HF directory:
//!
//! ```no_run
//! # fn main() -> temper_train::Result<()> {
//! let stage = temper_train::StageConfig::from_toml_file("sft.toml")?;
//! let summary = temper_train::run_stage(&stage, true)?;
//! println!("{} steps, final loss {:?}", summary.steps, summary.final_loss);
//! # Ok(()) }
//! ```

pub mod adamw;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod data;
pub mod error;
pub mod finetune;
pub mod grad_checkpointing;
mod log_record_serde;
pub mod loss_scale;
pub mod memory;
pub mod metrics;
pub mod reference;
pub mod schedule;
pub mod stage;
pub mod trainer;

pub use adamw::{FusedAdamW, FusedAdamWConfig};
pub use checkpoint::{TrainerState, assign_param_ids, latest_checkpoint};
pub use clip::{clip_grad_norm, global_grad_norm};
pub use config::{
    BaseQuantization, LoraSettings, ReferenceConfig, SaveStrategy, ScheduleKind, StageConfig,
    TrainerConfig,
};
pub use data::DataOrder;
pub use error::{Result, TrainError};
pub use finetune::{FineTuning, FullFineTuning, LoraFineTuning, adapter_param_ids, param_ids};
pub use grad_checkpointing::with_gradient_checkpointing;
pub use loss_scale::{GradScaler, LossScaleConfig, LossScaleState};
pub use memory::{MemoryEstimate, MemoryPlan, ProjectionBytes, available_memory};
pub use metrics::{LogRecord, plot_loss_curve};
pub use reference::Reference;
pub use schedule::LrSchedule;
pub use stage::{run_stage, save_checkpoint_as_model};
pub use temper_backend::TrainPrecision;
/// The objective table, rows and reader `temper-train` uses, re-exported for convenience.
pub use temper_objectives::data::{RowOptions, TrainRows, read_train_rows};
pub use temper_objectives::{ObjectiveConfig, RowKind, TrainObjective};
pub use trainer::{METRICS_FILE, PLOT_FILE, TrainData, TrainSummary, Trainer};
