//! KTO (Kahneman–Tversky optimisation, arXiv:2402.01306), as TRL 1.16's `KTOTrainer`
//! computes it: **unpaired** completions, each labelled desirable or undesirable.
//!
//! With `r = s_pol − s_ref` the completion log-ratio of a sequence (Σ of completion-token
//! log-probs, as in DPO) and `z₀` the KL baseline:
//!
//! * desirable: `w_d · (1 − σ(β(r − z₀)))`;
//! * undesirable: `w_u · (1 − σ(β(z₀ − r)))`;
//! * `loss` = mean over **all** sequences of the batch (desirable and undesirable together).
//!
//! The KL baseline is TRL's batch estimate of `KL(π‖π_ref)`: each prompt is paired with a
//! *mismatched* completion — the batch's completions shifted by one, prompt `i` with completion
//! `i − 1` ([`kl_mismatch_indices`]) — both models score those sequences, and
//! `z₀ = max(0, mean(s_pol(KL) − s_ref(KL)))`, **detached** (no gradient flows through it).
//! That needs the batch to hold more than one example.
//!
//! `apo_zero_unpaired` (APO-zero, arXiv:2408.06266, unpaired) uses no baseline: desirable
//! `1 − σ(β r)`, undesirable `σ(β r)`.
//!
//! Metrics (TRL's names): `kl`, with [`TokenStats`] `entropy`, `num_tokens`, `logits/chosen`,
//! `logits/rejected` (vocab-mean logit over the completion targets of the desirable /
//! undesirable rows), then `rewards/chosen` = mean β·r and `logps/chosen` = mean s_pol over the
//! desirable rows, the same `/rejected` over the undesirable ones, and `rewards/margins` when
//! the batch has both. A group that is absent from the batch has no metrics (TRL skips them
//! too).

use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::TrainRows;
use crate::metrics::{LossOutput, Readback, TokenStats, like};
use crate::objective::{CollateOptions, LossContext, MicroBatch, RowKind, TrainObjective};
use crate::{ObjectiveError, Result};

/// KTO loss type (TRL `KTOConfig.loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KtoLossType {
    /// KTO with the KL baseline.
    #[default]
    Kto,
    /// Unpaired APO-zero, no KL baseline.
    ApoZeroUnpaired,
}

impl KtoLossType {
    /// Every type.
    pub const ALL: [Self; 2] = [Self::Kto, Self::ApoZeroUnpaired];

    /// TRL's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kto => "kto",
            Self::ApoZeroUnpaired => "apo_zero_unpaired",
        }
    }

    /// Whether the loss needs the KL baseline (and so the mismatched-pair log-probs).
    pub fn needs_kl(self) -> bool {
        self == Self::Kto
    }
}

crate::named::impl_named!(KtoLossType, "KTO loss type");

/// KTO hyper-parameters (TRL `KTOConfig` defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KtoConfig {
    /// β. Default 0.1.
    pub beta: f64,
    /// Loss type. Default `kto`.
    pub loss_type: KtoLossType,
    /// Weight of desirable losses (to balance unequal counts). Default 1.
    pub desirable_weight: f64,
    /// Weight of undesirable losses. Default 1.
    pub undesirable_weight: f64,
}

impl Default for KtoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: KtoLossType::Kto,
            desirable_weight: 1.0,
            undesirable_weight: 1.0,
        }
    }
}

impl KtoConfig {
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

    /// Sets the loss type.
    #[must_use]
    pub fn with_loss_type(mut self, loss_type: KtoLossType) -> Self {
        self.loss_type = loss_type;
        self
    }

    /// Sets the desirable and undesirable weights.
    #[must_use]
    pub fn with_weights(mut self, desirable: f64, undesirable: f64) -> Self {
        self.desirable_weight = desirable;
        self.undesirable_weight = undesirable;
        self
    }

    /// # Errors
    /// β not positive or weights not finite.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(ObjectiveError::Invalid(format!(
                "beta must be positive, got {}",
                self.beta
            )));
        }
        if !(self.desirable_weight.is_finite() && self.undesirable_weight.is_finite()) {
            return Err(ObjectiveError::Invalid(format!(
                "desirable/undesirable weights must be finite, got {} / {}",
                self.desirable_weight, self.undesirable_weight
            )));
        }
        Ok(())
    }
}

/// Σ completion log-probs of the mismatched (prompt `i`, completion `i − 1`) sequences under
/// the policy and the reference, `[M]` each. Both are detached by the loss.
#[derive(Debug, Clone)]
pub struct KlLogps {
    /// Policy sums.
    pub policy: Tensor<1>,
    /// Reference sums (forward or precomputed cache).
    pub reference: Tensor<1>,
}

/// An unpaired KTO batch of `N` sequences.
#[derive(Debug, Clone)]
pub struct KtoBatch {
    /// Policy Σ completion log-probs, `[N]`, with gradient.
    pub policy: Tensor<1>,
    /// Reference Σ completion log-probs, `[N]` (detached by the loss).
    pub reference: Tensor<1>,
    /// Label of each sequence: `true` = desirable.
    pub desirable: Vec<bool>,
    /// Mismatched-pair log-probs for the KL baseline; required by `kto`.
    pub kl: Option<KlLogps>,
}

/// For a batch of `n` examples, the completion paired with each prompt to estimate the KL
/// baseline: prompt `i` gets completion `(i − 1) mod n` (TRL's
/// `[completions[-1]] + completions[:-1]`).
pub fn kl_mismatch_indices(n: usize) -> Vec<usize> {
    (0..n).map(|i| (i + n - 1) % n).collect()
}

/// The KL baseline `z₀ = max(0, mean(policy − reference))`, `[1]`, detached.
pub fn kto_kl_baseline(kl: &KlLogps) -> Result<Tensor<1>> {
    if kl.policy.dims() != kl.reference.dims() || kl.policy.dims()[0] == 0 {
        return Err(ObjectiveError::Invalid(format!(
            "KL log-probs of {} policy and {} reference sequences",
            kl.policy.dims()[0],
            kl.reference.dims()[0]
        )));
    }
    let reference = like(kl.reference.clone(), kl.policy.dtype());
    Ok((kl.policy.clone().detach() - reference.detach())
        .mean()
        .clamp_min(0.0))
}

/// The KTO loss of an unpaired batch and TRL's metrics.
///
/// `stats`: optional statistics of the `N` rows (same order as the batch) for `entropy`,
/// `num_tokens`, `logits/*`.
///
/// # Errors
/// An invalid config, an empty batch, sizes that disagree, `kto` without KL log-probs, or a
/// non-finite loss.
pub fn kto_loss(
    config: &KtoConfig,
    batch: &KtoBatch,
    stats: Option<&TokenStats>,
) -> Result<LossOutput> {
    config.validate()?;
    let n = batch.desirable.len();
    if n == 0 {
        return Err(ObjectiveError::Invalid("an empty KTO batch".into()));
    }
    if batch.policy.dims() != [n] || batch.reference.dims() != [n] {
        return Err(ObjectiveError::Invalid(format!(
            "{n} labels but policy log-probs {:?} and reference log-probs {:?}",
            batch.policy.dims(),
            batch.reference.dims()
        )));
    }
    if let Some(stats) = stats
        && stats.batch() != n
    {
        return Err(ObjectiveError::Invalid(format!(
            "token statistics of {} rows for a batch of {n}",
            stats.batch()
        )));
    }
    let beta = config.beta;
    let dtype = batch.policy.dtype();
    let device = batch.policy.device();
    let kl = match (config.loss_type.needs_kl(), &batch.kl) {
        (true, Some(kl)) => kto_kl_baseline(kl)?,
        (true, None) => {
            return Err(ObjectiveError::Invalid(
                "the `kto` loss needs the KL log-probs of mismatched pairs".into(),
            ));
        }
        (false, _) => batch.policy.clone().detach().sum().zeros_like(),
    };
    let log_ratio = batch.policy.clone() - like(batch.reference.clone(), dtype).detach();

    let indices = |want: bool| -> Vec<i64> {
        (0..n)
            .filter(|&i| batch.desirable[i] == want)
            .map(|i| i as i64)
            .collect()
    };
    let select = |idx: &[i64]| -> Tensor<1, Int> {
        Tensor::from_data(TensorData::new(idx.to_vec(), [idx.len()]), &device)
    };
    let (chosen_idx, rejected_idx) = (indices(true), indices(false));

    let mut losses = Vec::with_capacity(2);
    let mut chosen = None;
    let mut rejected = None;
    if !chosen_idx.is_empty() {
        let idx = select(&chosen_idx);
        let lr = log_ratio.clone().select(0, idx.clone());
        let k = lr.dims()[0];
        let loss = match config.loss_type {
            KtoLossType::Kto => sigmoid((lr.clone() - kl.clone().expand([k])).mul_scalar(beta)),
            KtoLossType::ApoZeroUnpaired => sigmoid(lr.clone().mul_scalar(beta)),
        }
        .neg()
        .add_scalar(1.0);
        losses.push(loss.mul_scalar(config.desirable_weight));
        chosen = Some((idx, lr));
    }
    if !rejected_idx.is_empty() {
        let idx = select(&rejected_idx);
        let lr = log_ratio.clone().select(0, idx.clone());
        let k = lr.dims()[0];
        let loss = match config.loss_type {
            KtoLossType::Kto => sigmoid((kl.clone().expand([k]) - lr.clone()).mul_scalar(beta))
                .neg()
                .add_scalar(1.0),
            KtoLossType::ApoZeroUnpaired => sigmoid(lr.clone().mul_scalar(beta)),
        };
        losses.push(loss.mul_scalar(config.undesirable_weight));
        rejected = Some((idx, lr));
    }
    let loss = Tensor::cat(losses, 0).mean();

    let mut out = Readback::new(&loss);
    out.push("kl", kl);
    if let Some(stats) = stats {
        out.push("entropy", stats.mean_entropy());
        out.push("num_tokens", stats.total_tokens());
        if let Some((idx, _)) = &chosen {
            out.push(
                "logits/chosen",
                stats.select(idx.clone()).completion_logit_mean(),
            );
        }
        if let Some((idx, _)) = &rejected {
            out.push(
                "logits/rejected",
                stats.select(idx.clone()).completion_logit_mean(),
            );
        }
    }
    let mut group_metrics = |reward: &'static str,
                             logps: &'static str,
                             group: &Option<(Tensor<1, Int>, Tensor<1>)>|
     -> Option<Tensor<1>> {
        let (idx, lr) = group.as_ref()?;
        let mean_reward = lr.clone().detach().mul_scalar(beta).mean();
        out.push(reward, mean_reward.clone());
        out.push(
            logps,
            batch.policy.clone().detach().select(0, idx.clone()).mean(),
        );
        Some(mean_reward)
    };
    let reward_c = group_metrics("rewards/chosen", "logps/chosen", &chosen);
    let reward_r = group_metrics("rewards/rejected", "logps/rejected", &rejected);
    if let (Some(c), Some(r)) = (reward_c, reward_r) {
        out.push("rewards/margins", c - r);
    }
    out.finish("KTO loss")
}

/// KTO as a [`TrainObjective`]: unpaired rows against reference log-probs, [`kto_loss`]
/// averaged over micro-batches. Loss types that need TRL's KL baseline collate a mismatched
/// KL batch (each prompt with another row's completion) and score it under both models.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kto(pub KtoConfig);

impl TrainObjective for Kto {
    fn name(&self) -> &str {
        "kto"
    }
    fn row_kind(&self) -> RowKind {
        RowKind::Unpaired
    }
    fn needs_reference(&self) -> bool {
        true
    }
    fn validate(&self) -> Result<()> {
        self.0.validate()
    }
    fn collate(
        &self,
        rows: &TrainRows,
        indices: &[usize],
        options: &CollateOptions,
    ) -> Result<MicroBatch> {
        MicroBatch::collate(rows, indices, options, self.0.loss_type.needs_kl())
    }
    fn loss(&self, context: &LossContext<'_>, batch: &MicroBatch) -> Result<LossOutput> {
        let rows = batch.unpaired(self.name())?;
        let forward = context.policy_forward(&rows.batch)?;
        let device = forward.hidden.device();
        let on_device = |values: Vec<f32>| {
            let n = values.len();
            Tensor::<1>::from_data(TensorData::new(values, [n]), &device)
        };
        let reference = on_device(context.reference.sequence_logps(&rows.batch)?);
        let kl = match &rows.kl {
            Some(kl_batch) => Some(KlLogps {
                policy: context.policy_logps(kl_batch)?.sum().detach(),
                reference: on_device(context.reference.sequence_logps(kl_batch)?),
            }),
            None => None,
        };
        let kto = KtoBatch {
            policy: forward.logps.sum(),
            reference,
            desirable: rows.label.clone(),
            kl,
        };
        kto_loss(&self.0, &kto, Some(&forward.stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t(values: &[f64]) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(
                values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                [values.len()],
            ),
            &Device::flex(),
        )
    }

    fn sigma(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-5 * b.abs().max(1.0)
    }

    fn scalar(t: Tensor<1>) -> f64 {
        t.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
    }

    #[test]
    fn kto_matches_the_formula() -> Result<()> {
        let policy = [-5.0, -7.0, -3.0, -9.0];
        let reference = [-6.0, -6.5, -4.0, -8.0];
        let desirable = vec![true, false, true, false];
        // KL sequences: mean(policy − reference) = mean([0.5, 1.5, −0.4]) = 0.5333…
        let kl_pol = [-10.0, -8.0, -12.4];
        let kl_ref = [-10.5, -9.5, -12.0];
        let z0: f64 = (0.5 + 1.5 - 0.4) / 3.0;
        let (beta, wd, wu) = (0.1, 1.0, 1.33);
        let batch = KtoBatch {
            policy: t(&policy),
            reference: t(&reference),
            desirable: desirable.clone(),
            kl: Some(KlLogps {
                policy: t(&kl_pol),
                reference: t(&kl_ref),
            }),
        };
        let cfg = KtoConfig::new().with_beta(beta).with_weights(wd, wu);
        let out = kto_loss(&cfg, &batch, None)?;
        let mut losses = Vec::new();
        let (mut rc, mut rr) = (Vec::new(), Vec::new());
        for i in 0..4 {
            let r = policy[i] - reference[i];
            if desirable[i] {
                losses.push(wd * (1.0 - sigma(beta * (r - z0))));
                rc.push(beta * r);
            } else {
                losses.push(wu * (1.0 - sigma(beta * (z0 - r))));
                rr.push(beta * r);
            }
        }
        let want = losses.iter().sum::<f64>() / 4.0;
        assert!(close(scalar(out.loss), want), "loss");
        let m = &out.metrics;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(close(m.get("kl").unwrap_or(f64::NAN), z0));
        assert!(close(
            m.get("rewards/chosen").unwrap_or(f64::NAN),
            mean(&rc)
        ));
        assert!(close(
            m.get("rewards/rejected").unwrap_or(f64::NAN),
            mean(&rr)
        ));
        assert!(close(
            m.get("rewards/margins").unwrap_or(f64::NAN),
            mean(&rc) - mean(&rr)
        ));
        assert!(close(m.get("logps/chosen").unwrap_or(f64::NAN), -4.0));
        assert!(close(m.get("logps/rejected").unwrap_or(f64::NAN), -8.0));
        assert_eq!(
            m.names().collect::<Vec<_>>(),
            vec![
                "kl",
                "rewards/chosen",
                "logps/chosen",
                "rewards/rejected",
                "logps/rejected",
                "rewards/margins"
            ]
        );
        Ok(())
    }

    #[test]
    fn kl_baseline_is_clamped_at_zero_and_apo_needs_none() -> Result<()> {
        let kl = KlLogps {
            policy: t(&[-10.0, -9.0]),
            reference: t(&[-8.0, -8.0]),
        };
        assert_eq!(scalar(kto_kl_baseline(&kl)?), 0.0);
        // With z₀ = 0 KTO reduces to 1 − σ(βr) / 1 − σ(−βr).
        let batch = KtoBatch {
            policy: t(&[-2.0, -3.0]),
            reference: t(&[-2.5, -2.0]),
            desirable: vec![true, false],
            kl: Some(kl),
        };
        let out = kto_loss(&KtoConfig::new(), &batch, None)?;
        let want = ((1.0 - sigma(0.05)) + (1.0 - sigma(0.1))) / 2.0;
        assert!(close(scalar(out.loss), want));
        // apo_zero_unpaired: 1 − σ(βr) and σ(βr), no KL needed.
        let batch = KtoBatch { kl: None, ..batch };
        assert!(kto_loss(&KtoConfig::new(), &batch, None).is_err());
        let apo = KtoConfig::new().with_loss_type(KtoLossType::ApoZeroUnpaired);
        let out = kto_loss(&apo, &batch, None)?;
        let want = ((1.0 - sigma(0.05)) + sigma(-0.1)) / 2.0;
        assert!(close(scalar(out.loss), want));
        assert_eq!(out.metrics.get("kl"), Some(0.0));
        Ok(())
    }

    #[test]
    fn only_desirable_examples_and_the_kl_gets_no_gradient() -> Result<()> {
        let device = Device::flex().autodiff();
        let policy = Tensor::<1>::from_data(TensorData::new(vec![-2.0f32, -1.0], [2]), &device)
            .require_grad();
        let kl_policy = Tensor::<1>::from_data(TensorData::new(vec![-1.0f32, -1.0], [2]), &device)
            .require_grad();
        let batch = KtoBatch {
            policy: policy.clone(),
            reference: Tensor::from_data(TensorData::new(vec![-2.0f32, -2.0], [2]), &device),
            desirable: vec![true, true],
            kl: Some(KlLogps {
                policy: kl_policy.clone(),
                reference: Tensor::from_data(TensorData::new(vec![-2.0f32, -2.0], [2]), &device),
            }),
        };
        let out = kto_loss(&KtoConfig::new(), &batch, None)?;
        assert!(!out.metrics.contains("rewards/rejected"));
        assert!(!out.metrics.contains("rewards/margins"));
        let grads = out.loss.backward();
        assert!(policy.grad(&grads).is_some());
        assert!(kl_policy.grad(&grads).is_none());
        assert_eq!(kl_mismatch_indices(3), vec![2, 0, 1]);
        Ok(())
    }
}
