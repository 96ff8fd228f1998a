//! # temper-objectives
//!
//! Training objectives as plain functions over burn tensors, the data preparation that feeds
//! them, and one trait over both — for users who write their own training loop or their own
//! objective. Nothing here owns a loop.
//!
//! * Losses ([`causal_lm_loss`], [`dpo_loss`], [`orpo_loss`], [`cpo_loss`], [`kto_loss`]) take
//!   log-prob tensors and return [`LossOutput`] with TRL's metric names.
//! * [`TrainObjective`] ([`objective`]) wraps each of them with what a loop needs: the rows it
//!   reads ([`RowKind`]), whether it needs a reference, how it scales under gradient
//!   accumulation, how a micro-batch is collated and its loss from a policy
//!   ([`LossContext`]). Implemented by [`Cpt`], [`Sft`], [`Dpo`], [`Orpo`], [`Cpo`],
//!   [`Simpo`], [`Kto`]; [`ObjectiveConfig`] maps their TOML/CLI names to them.
//! * Log-probs straight from hidden states in vocabulary tiles ([`chunked`]), a reference
//!   log-prob cache ([`ref_cache`]), TRL-shaped JSONL → token rows → batches ([`data`]).
//!
//! Conventions (HF/TRL): logits `[batch, seq, vocab]` at position `t` predict token `t+1`;
//! labels are aligned with `input_ids` (not pre-shifted) and `-100` marks ignored targets;
//! preference batches are `[chosen rows; rejected rows]`.
//!
//! # Quick start
//!
//! The DPO loss of one preference pair from its completion log-prob sums, checked against
//! the formula `−log σ(β·((π_c − ref_c) − (π_r − ref_r)))` with TRL's default β = 0.1:
//!
//! ```
//! use burn::tensor::{Tensor, TensorData};
//! use temper_backend::DeviceSpec;
//! use temper_objectives::{DpoConfig, PairLogps, RefLogps, dpo_loss};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = DeviceSpec::CPU.device()?;
//! let t = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &device);
//! // Σ log p of the chosen and rejected completions (4 and 5 tokens) under the policy...
//! let policy = PairLogps::new(t(-1.0), t(-3.0), t(4.0), t(5.0))?;
//! // ... and under the frozen reference model.
//! let reference = RefLogps::from_values(&[-2.0f32], &[-2.0], &device)?;
//!
//! let out = dpo_loss(&DpoConfig::default(), &policy, &reference, None)?;
//! let loss = out.loss.into_scalar::<f32>();
//! let want = (1.0 + (-0.1f32 * ((-1.0 + 2.0) - (-3.0 + 2.0))).exp()).ln(); // softplus(−0.2)
//! assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
//! // TRL's metric names: the implicit reward of the chosen completion is β·(π_c − ref_c).
//! let reward = out.metrics.get("rewards/chosen").unwrap_or(f64::NAN);
//! assert!((reward - 0.1).abs() < 1e-6);
//! # Ok(()) }
//! ```
//!
//! `examples/custom_trainer.rs` (workspace root) drives these losses from a training loop of
//! its own.

pub mod causal_lm;
pub mod chunked;
pub mod cpo;
pub mod data;
pub mod dpo;
pub mod error;
pub mod kto;
pub mod logprobs;
pub mod metrics;
mod named;
pub mod objective;
pub mod orpo;
pub mod preference;
pub mod ref_cache;
pub mod stable;

pub use causal_lm::{CausalLmConfig, CausalLmLossType, Cpt, Sft, causal_lm_loss, token_mean_nll};
pub use chunked::{
    ChunkConfig, bounded_backward, chunked_token_logps, chunked_token_logps_with_stats,
    lm_head_weight, target_logps,
};
pub use cpo::{Cpo, CpoConfig, CpoLossType, Simpo, cpo_loss};
pub use dpo::{
    Dpo, DpoConfig, DpoLossType, FDivergenceType, dpo_loss, dpo_per_pair_loss, dpo_rewards,
};
pub use error::{ObjectiveError, Result};
pub use kto::{KlLogps, Kto, KtoBatch, KtoConfig, KtoLossType, kto_loss};
pub use logprobs::{TokenLogps, shift_labels, token_logps};
pub use metrics::{LossOutput, Metrics, TokenStats};
pub use objective::{
    BatchData, CollateOptions, LossContext, LossScaling, MicroBatch, ModelReference, NoReference,
    ObjectiveConfig, PolicyForward, ReferenceLogps, RowKind, TrainObjective,
};
pub use orpo::{Orpo, OrpoConfig, OrpoNll, odds_ratio, orpo_loss};
pub use preference::{PairLogps, RefLogps};
pub use ref_cache::{
    RefCache, RefCacheOptions, dataset_fingerprint, files_fingerprint, model_fingerprint,
    precompute_reference,
};

/// Label value of ignored targets (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;
