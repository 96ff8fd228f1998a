//! ORPO (odds-ratio preference optimisation, arXiv:2403.07691), as TRL 1.16's
//! `trl.experimental.orpo.ORPOTrainer` computes it — reference-free.
//!
//! With `a_c`, `a_r` the policy's **average** completion log-probs of the chosen and rejected
//! rows (`Σ log p / n`, [`PairLogps::means`]):
//!
//! * `log_odds = (a_c − a_r) − (log1mexp(a_c) − log1mexp(a_r))` — the log of the odds ratio
//!   `odds(c)/odds(r)` with `odds(y) = p/(1 − p)`, `p = e^a`, written with logs only and the
//!   stable [`log1mexp`] (`log(1 − eᵃ)`, which needs care as `a → 0`);
//! * the odds-ratio term per pair `β·ls(log_odds)` (β = the paper's λ, default 0.1);
//! * `loss = NLL − mean_pairs(β·ls(log_odds))`.
//!
//! The NLL ([`OrpoNll`]) is by default TRL's: cross-entropy of the chosen rows over **prompt
//! and completion** tokens (every target whose attention mask is 1, padding excluded),
//! token-mean pooled over the batch — as the original ORPO code does (TRL masked the prompt
//! briefly in #2502 and reverted it in #2527). Completion-only is an option, and so is
//! LLaMA-Factory's per-sequence mean of the chosen average log-probs.
//!
//! Metrics: `rewards/chosen|rejected` = mean β·a (average log-probs, no reference),
//! `rewards/accuracies` = the fraction of pairs with β a_c > β a_r, `rewards/margins`,
//! `logps/rejected|chosen` = mean a, `logits/rejected|chosen` = mean of all logits at positions
//! `0..T − 1` (prompt and padding included, needs [`TokenStats`]), `nll_loss`,
//! `log_odds_ratio` = mean ls(log_odds), `log_odds_chosen` = mean log_odds.
//!
//! Gradient accumulation: average the micro-batch losses, as TRL does.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::dpo::{check_stacked, push_reward_metrics};
use crate::metrics::{LossOutput, Readback, TokenStats};
use crate::objective::{LossContext, MicroBatch, RowKind, TrainObjective};
use crate::preference::PairLogps;
use crate::stable::log_sigmoid;
pub use crate::stable::log1mexp;
use crate::{ObjectiveError, Result, TokenLogps};
use burn::tensor::{Device, Int, TensorData};

/// Which NLL term ORPO adds to the odds-ratio term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrpoNll {
    /// TRL's default: token-mean cross-entropy of the chosen rows over prompt and completion
    /// targets (attention mask 1), pooled over the batch. Needs the chosen rows' log-probs
    /// with those labels (the `chosen_full` argument of [`orpo_loss`]).
    #[default]
    PromptAndCompletion,
    /// Token-mean cross-entropy over the chosen completion tokens only, pooled over the batch.
    Completion,
    /// LLaMA-Factory's ORPO: mean over pairs of each chosen row's average completion NLL
    /// (`−a_c`).
    CompletionPerSequence,
}

impl OrpoNll {
    /// Every variant.
    pub const ALL: [Self; 3] = [
        Self::PromptAndCompletion,
        Self::Completion,
        Self::CompletionPerSequence,
    ];

    /// The name used in configs (`prompt_and_completion`, `completion`,
    /// `completion_per_sequence`).
    pub fn name(self) -> &'static str {
        match self {
            Self::PromptAndCompletion => "prompt_and_completion",
            Self::Completion => "completion",
            Self::CompletionPerSequence => "completion_per_sequence",
        }
    }
}

crate::named::impl_named!(OrpoNll, "ORPO NLL variant");

/// ORPO hyper-parameters (TRL `ORPOConfig` defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrpoConfig {
    /// β, the weight λ of the odds-ratio term. Default 0.1.
    pub beta: f64,
    /// The NLL term. Default prompt + completion (TRL).
    pub nll: OrpoNll,
}

impl Default for OrpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            nll: OrpoNll::PromptAndCompletion,
        }
    }
}

impl OrpoConfig {
    /// TRL's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets β.
    #[must_use]
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Sets the NLL term.
    #[must_use]
    pub fn with_nll(mut self, nll: OrpoNll) -> Self {
        self.nll = nll;
        self
    }

    /// # Errors
    /// β not finite and positive.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(ObjectiveError::Invalid(format!(
                "beta must be positive, got {}",
                self.beta
            )));
        }
        Ok(())
    }
}

/// The log odds ratio of each pair and its log-sigmoid, `[B]` each.
#[derive(Debug, Clone)]
pub struct OddsRatio {
    /// `log(odds(chosen) / odds(rejected))`.
    pub log_odds: Tensor<1>,
    /// `ls(log_odds)`; ORPO's per-pair odds-ratio term is `β` times this.
    pub log_sigmoid: Tensor<1>,
}

/// The odds ratio of average log-probs `a_c`, `a_r` (`[B]` each, ≤ 0):
/// `log_odds = (a_c − a_r) − (log1mexp(a_c) − log1mexp(a_r))`.
///
/// Finite for every pair of finite negative inputs, from `a → 0⁻` (where the naive
/// `log(1 − eᵃ)` gives −∞/NaN in f32) to very negative values.
pub fn odds_ratio(chosen_avg: Tensor<1>, rejected_avg: Tensor<1>) -> OddsRatio {
    let log_odds = (chosen_avg.clone() - rejected_avg.clone())
        - (log1mexp(chosen_avg) - log1mexp(rejected_avg));
    OddsRatio {
        log_sigmoid: log_sigmoid(log_odds.clone()),
        log_odds,
    }
}

/// The ORPO loss of a batch and TRL's metrics.
///
/// * `policy`: completion log-prob sums and counts of the `B` pairs (labels masked to the
///   completions);
/// * `chosen_full`: per-token log-probs of the `B` chosen rows with every non-padding token
///   as a target (labels = `input_ids` where the attention mask is 1) — required by
///   [`OrpoNll::PromptAndCompletion`], ignored otherwise;
/// * `stats`: optional statistics of the `[chosen; rejected]` rows for `logits/*`.
///
/// # Errors
/// An invalid config, a missing or mis-sized `chosen_full`, `stats` without `2B` rows, or a
/// non-finite loss.
pub fn orpo_loss(
    config: &OrpoConfig,
    policy: &PairLogps,
    chosen_full: Option<&TokenLogps>,
    stats: Option<&TokenStats>,
) -> Result<LossOutput> {
    config.validate()?;
    policy.check()?;
    let b = policy.pairs();
    let beta = config.beta;
    let (avg_c, avg_r) = policy.means();
    let odds = odds_ratio(avg_c.clone(), avg_r.clone());

    let nll = match config.nll {
        OrpoNll::PromptAndCompletion => {
            let full = chosen_full.ok_or_else(|| {
                ObjectiveError::Invalid(
                    "ORPO's prompt+completion NLL needs the chosen rows' log-probs over all \
                     non-padding targets (or choose OrpoNll::Completion)"
                        .into(),
                )
            })?;
            if full.logps.dims()[0] != b {
                return Err(ObjectiveError::Invalid(format!(
                    "ORPO NLL log-probs of {} rows for {b} chosen rows",
                    full.logps.dims()[0]
                )));
            }
            full.logps.clone().sum().neg() / full.mask.clone().sum().clamp_min(1.0)
        }
        OrpoNll::Completion => policy.chosen_nll(),
        OrpoNll::CompletionPerSequence => avg_c.clone().neg().mean(),
    };
    let loss = nll.clone() - odds.log_sigmoid.clone().mul_scalar(beta).mean();

    let mut out = Readback::new(&loss);
    let reward_c = avg_c.clone().detach().mul_scalar(beta);
    let reward_r = avg_r.clone().detach().mul_scalar(beta);
    push_reward_metrics(&mut out, &reward_c, &reward_r);
    out.push("logps/rejected", avg_r.mean());
    out.push("logps/chosen", avg_c.mean());
    if let Some(stats) = stats {
        check_stacked(stats, b)?;
        out.push("logits/rejected", stats.rows(b..2 * b).shifted_logit_mean());
        out.push("logits/chosen", stats.rows(0..b).shifted_logit_mean());
    }
    out.push("nll_loss", nll);
    out.push("log_odds_ratio", odds.log_sigmoid.mean());
    out.push("log_odds_chosen", odds.log_odds.mean());
    out.finish("ORPO loss")
}

/// ORPO as a [`TrainObjective`]: preference pairs, no reference, [`orpo_loss`] averaged over
/// micro-batches. With [`OrpoNll::PromptAndCompletion`] the NLL term scores the chosen rows'
/// prompt and completion tokens from the same forward pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Orpo(pub OrpoConfig);

impl TrainObjective for Orpo {
    fn name(&self) -> &str {
        "orpo"
    }
    fn row_kind(&self) -> RowKind {
        RowKind::PreferencePairs
    }
    fn validate(&self) -> Result<()> {
        self.0.validate()
    }
    fn loss(&self, context: &LossContext<'_>, batch: &MicroBatch) -> Result<LossOutput> {
        let pairs = batch.preference(self.name())?;
        let forward = context.policy_forward(&pairs.batch)?;
        let policy = PairLogps::from_stacked(&forward.logps)?;
        let full = if self.0.nll == OrpoNll::PromptAndCompletion {
            // The chosen rows are the first `num_pairs`; every attended token is a target.
            let b = pairs.num_pairs;
            let labels = pairs.batch.attended_labels();
            let [_, t, h] = forward.hidden.dims();
            let labels = labels_tensor(&labels, &forward.hidden.device()).slice([0..b, 0..t]);
            let hidden = forward.hidden.clone().slice([0..b, 0..t, 0..h]);
            Some(context.token_logps(hidden, labels)?)
        } else {
            None
        };
        orpo_loss(&self.0, &policy, full.as_ref(), Some(&forward.stats))
    }
}

/// `[rows, seq]` labels on `device`.
fn labels_tensor(labels: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let (b, t) = (labels.len(), labels.first().map_or(0, Vec::len));
    let flat: Vec<i64> = labels.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}
