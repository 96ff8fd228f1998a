//! CPT and SFT: the causal-LM cross-entropy, as TRL 1.16's `SFTTrainer.compute_loss` and
//! transformers' `ForCausalLMLoss` compute it.
//!
//! `loss = Σ_valid −log p(y_{t+1} | x_{≤t}) / N`, where the sum runs over every valid target
//! of the batch (label ≠ −100: all real tokens for CPT, the completion or assistant tokens for
//! SFT) and `N` is
//! * the number of valid targets of this batch — a **token-level mean pooled over the
//!   batch**, not a mean of per-sequence means (long sequences weigh more), or
//! * `num_items`, the valid targets of the whole gradient-accumulation window (and of every
//!   data-parallel rank): then summing the micro-batch losses gives exactly the loss of the
//!   big batch, which averaging micro-batch means does not (HF's `num_items_in_batch`).
//!
//! [`CausalLmLossType::Dft`] is TRL's `loss_type="dft"` (Dynamic Fine-Tuning,
//! arXiv:2508.05629): each token's `−log p` weighted by `p` (detached).
//!
//! Metrics ([`causal_lm_loss`] with [`TokenStats`]): `entropy` (mean next-token entropy over
//! valid targets), `mean_token_accuracy` (fraction of valid targets predicted top-1) and
//! `num_tokens` (Σ attention mask of the batch; TRL logs the running total).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::metrics::{LossOutput, Readback, TokenStats};
use crate::objective::{LossContext, MicroBatch, RowKind, TrainObjective};
use crate::{ObjectiveError, Result, TokenLogps};
use burn::tensor::Tensor;

/// Per-token loss of SFT/CPT (TRL `SFTConfig.loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CausalLmLossType {
    /// Negative log-likelihood `−log p` (TRL's default).
    #[default]
    Nll,
    /// `−p·log p` with `p` detached (DFT).
    Dft,
}

impl CausalLmLossType {
    /// TRL's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nll => "nll",
            Self::Dft => "dft",
        }
    }
}

impl fmt::Display for CausalLmLossType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CausalLmLossType {
    type Err = ObjectiveError;

    /// `nll`, `dft` (and TRL's deprecated alias `chunked_nll` = `nll`).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "nll" | "chunked_nll" => Ok(Self::Nll),
            "dft" => Ok(Self::Dft),
            other => Err(ObjectiveError::Invalid(format!(
                "unknown SFT loss type `{other}`; expected one of: nll, dft"
            ))),
        }
    }
}

/// SFT/CPT options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CausalLmConfig {
    /// Per-token loss. Default `nll`.
    pub loss_type: CausalLmLossType,
}

impl CausalLmConfig {
    /// TRL's default (`nll`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the per-token loss.
    #[must_use]
    pub fn with_loss_type(mut self, loss_type: CausalLmLossType) -> Self {
        self.loss_type = loss_type;
        self
    }
}

/// The denominator: `num_items` or the valid-target count of `logps` (at least 1, so a batch
/// without targets gives 0 rather than NaN).
fn denominator(logps: &TokenLogps, num_items: Option<usize>) -> Result<Tensor<1>> {
    match num_items {
        Some(0) => Err(ObjectiveError::Invalid(
            "num_items must be positive (it is the number of target tokens)".into(),
        )),
        Some(n) => Ok(logps.mask.clone().sum().zeros_like().add_scalar(n as f64)),
        None => Ok(logps.mask.clone().sum().clamp_min(1.0)),
    }
}

/// Token-mean negative log-likelihood `−Σ_valid log p / N`, `[1]`, with `N` = `num_items`
/// when given (gradient accumulation) or the number of valid targets in `logps`.
///
/// # Errors
/// `num_items == Some(0)`.
pub fn token_mean_nll(logps: &TokenLogps, num_items: Option<usize>) -> Result<Tensor<1>> {
    Ok(logps.logps.clone().sum().neg() / denominator(logps, num_items)?)
}

/// The SFT/CPT loss of a batch and TRL's SFT metrics.
///
/// `logps`: per-token log-probs with the labels of the objective (`-100` on padding, and on
/// prompts for completion-only SFT); `num_items`: see the module docs; `stats`: per-token
/// statistics computed with the same labels, for `entropy`, `mean_token_accuracy`,
/// `num_tokens`.
///
/// # Errors
/// `num_items == Some(0)`, `stats` with a different batch size, or a non-finite loss.
pub fn causal_lm_loss(
    config: &CausalLmConfig,
    logps: &TokenLogps,
    num_items: Option<usize>,
    stats: Option<&TokenStats>,
) -> Result<LossOutput> {
    let loss = match config.loss_type {
        CausalLmLossType::Nll => token_mean_nll(logps, num_items)?,
        CausalLmLossType::Dft => {
            // −p·log p per token with p = e^{log p} detached; 0 at ignored targets (log p = 0
            // there, and the mask keeps the weight e^0 = 1 from mattering).
            let weight = logps.logps.clone().detach().exp() * logps.mask.clone();
            (weight * logps.logps.clone()).sum().neg() / denominator(logps, num_items)?
        }
    };
    let mut out = Readback::new(&loss);
    if let Some(stats) = stats {
        if stats.batch() != logps.logps.dims()[0] {
            return Err(ObjectiveError::Invalid(format!(
                "token statistics of {} rows for a batch of {}",
                stats.batch(),
                logps.logps.dims()[0]
            )));
        }
        out.push("entropy", stats.mean_entropy());
        out.push("mean_token_accuracy", stats.top1_accuracy());
        out.push("num_tokens", stats.total_tokens());
    }
    out.finish("causal-LM loss")
}

/// Continued pre-training as a [`TrainObjective`]: packed documents, every token a target,
/// the [`causal_lm_loss`] divided by the targets of the accumulation window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cpt(pub CausalLmConfig);

/// Supervised fine-tuning as a [`TrainObjective`]: prompt/completion rows or conversations,
/// completion (or assistant) tokens as targets, the [`causal_lm_loss`] divided by the targets
/// of the accumulation window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sft(pub CausalLmConfig);

fn causal_lm_objective_loss(
    name: &str,
    config: &CausalLmConfig,
    context: &LossContext<'_>,
    batch: &MicroBatch,
) -> Result<LossOutput> {
    let forward = context.policy_forward(batch.sequences(name)?)?;
    causal_lm_loss(
        config,
        &forward.logps,
        context.num_items,
        Some(&forward.stats),
    )
}

impl TrainObjective for Cpt {
    fn name(&self) -> &str {
        "cpt"
    }
    fn row_kind(&self) -> RowKind {
        RowKind::Documents
    }
    fn loss(&self, context: &LossContext<'_>, batch: &MicroBatch) -> Result<LossOutput> {
        causal_lm_objective_loss(self.name(), &self.0, context, batch)
    }
}

impl TrainObjective for Sft {
    fn name(&self) -> &str {
        "sft"
    }
    fn row_kind(&self) -> RowKind {
        RowKind::Sequences
    }
    fn loss(&self, context: &LossContext<'_>, batch: &MicroBatch) -> Result<LossOutput> {
        causal_lm_objective_loss(self.name(), &self.0, context, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_logps;
    use burn::tensor::{Device, Int, TensorData};

    fn scalar(t: Tensor<1>) -> f64 {
        t.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
    }

    #[test]
    fn pooled_token_mean_and_num_items() -> Result<()> {
        let device = Device::flex();
        // Vocab 2, uniform logits: every valid target has log p = −ln 2.
        let logits = Tensor::<3>::zeros([2, 4, 2], &device);
        // Row 0: 3 targets, row 1: 1 target → pooled mean = ln 2 (a mean of row means would
        // also be ln 2 here, so check the sum through num_items).
        let labels = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, 1, 0, 1, 0, 1, -100, -100], [2, 4]),
            &device,
        );
        let lp = token_logps(logits, labels)?;
        let ln2 = std::f64::consts::LN_2;
        assert!((scalar(token_mean_nll(&lp, None)?) - ln2).abs() < 1e-6);
        assert!((scalar(token_mean_nll(&lp, Some(8))?) - 4.0 * ln2 / 8.0).abs() < 1e-6);
        assert!(token_mean_nll(&lp, Some(0)).is_err());
        // DFT weights each −log p by p = ½.
        let dft = causal_lm_loss(
            &CausalLmConfig::new().with_loss_type(CausalLmLossType::Dft),
            &lp,
            None,
            None,
        )?;
        assert!((scalar(dft.loss) - 0.5 * ln2).abs() < 1e-6);
        assert_eq!(
            "chunked_nll".parse::<CausalLmLossType>().ok(),
            Some(CausalLmLossType::Nll)
        );
        assert!("ce".parse::<CausalLmLossType>().is_err());
        Ok(())
    }
}
