//! # temper-objectives
//!
//! Training objectives as plain functions over burn tensors, and the data preparation that
//! feeds them — for users who write their own training loop. Nothing here owns a loop.
//!
//! Conventions (HF/TRL): logits `[batch, seq, vocab]` at position `t` predict token `t+1`;
//! labels are aligned with `input_ids` (not pre-shifted) and `-100` marks ignored targets;
//! preference batches are `[chosen rows; rejected rows]`.

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
pub mod orpo;
pub mod preference;
pub mod ref_cache;
pub mod stable;

pub use causal_lm::{CausalLmConfig, CausalLmLossType, causal_lm_loss, token_mean_nll};
pub use chunked::{
    ChunkConfig, bounded_backward, chunked_token_logps, chunked_token_logps_with_stats,
    lm_head_weight, target_logps,
};
pub use cpo::{CpoConfig, CpoLossType, cpo_loss};
pub use dpo::{DpoConfig, DpoLossType, FDivergenceType, dpo_loss, dpo_per_pair_loss, dpo_rewards};
pub use error::{ObjectiveError, Result};
pub use kto::{KlLogps, KtoBatch, KtoConfig, KtoLossType, kto_loss};
pub use logprobs::{TokenLogps, shift_labels, token_logps};
pub use metrics::{LossOutput, Metrics, TokenStats};
pub use orpo::{OrpoConfig, OrpoNll, odds_ratio, orpo_loss};
pub use preference::{PairLogps, RefLogps};
pub use ref_cache::{
    RefCache, RefCacheOptions, dataset_fingerprint, files_fingerprint, model_fingerprint,
    precompute_reference,
};

/// Label value of ignored targets (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;
