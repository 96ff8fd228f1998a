//! CPO (contrastive preference optimisation, arXiv:2401.08417) and SimPO (arXiv:2405.14734),
//! as TRL 1.16's `trl.experimental.cpo.CPOTrainer` computes them — reference-free.
//!
//! With `ℓ_c`, `ℓ_r` the policy's completion log-probs — **sums** for `sigmoid`/`hinge`,
//! **averages** for `ipo`/`simpo` — and `x = ℓ_c − ℓ_r` (or, with AlphaPO's `alpha ≠ 0`,
//! `x = ρ(ℓ_c) − ρ(ℓ_r)` with the reward `ρ(ℓ) = (1 − e^{−αℓ})/α = (1 − p^{−α})/α`):
//!
//! | loss type | per-pair loss |
//! |---|---|
//! | `sigmoid` | `−(1−ε) ls(βx) − ε ls(−βx)` |
//! | `hinge` | `relu(1 − βx)` |
//! | `ipo` | `(x − 1/(2β))²` |
//! | `simpo` | `−(1−ε) ls(βx − γ) − ε ls(−(βx − γ))` (γ = `simpo_gamma`) |
//!
//! `loss = mean_pairs(loss) + cpo_alpha · NLL`, the NLL being the token-mean cross-entropy of
//! the chosen **completion** tokens pooled over the batch (prompt masked, unlike ORPO); with
//! `cpo_alpha = 0` it is not computed (logged as 0). CPO is `sigmoid` with `cpo_alpha = 1`;
//! SimPO is `simpo` with `cpo_alpha = 0` ([`CpoConfig::simpo`]).
//!
//! Metrics: `rewards/chosen|rejected` = mean β·ℓ (β·ρ with AlphaPO), `rewards/accuracies`,
//! `rewards/margins`, `logps/rejected|chosen` = mean ℓ, `logits/rejected|chosen` = mean of all
//! logits at every position (needs [`TokenStats`]), `nll_loss`.

use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

use crate::dpo::{check_stacked, push_reward_metrics};
use crate::metrics::{LossOutput, Readback, TokenStats};
use crate::objective::{LossContext, MicroBatch, RowKind, TrainObjective};
use crate::preference::PairLogps;
use crate::stable::log_sigmoid;
use crate::{ObjectiveError, Result};

/// CPO loss type (TRL `CPOConfig.loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpoLossType {
    /// CPO's (label-smoothed) sigmoid on summed log-probs.
    #[default]
    Sigmoid,
    /// `relu(1 − βx)` on summed log-probs.
    Hinge,
    /// `(x − 1/(2β))²` on average log-probs.
    Ipo,
    /// SimPO: sigmoid of `βx − γ` on average log-probs.
    Simpo,
}

impl CpoLossType {
    /// Every type.
    pub const ALL: [Self; 4] = [Self::Sigmoid, Self::Hinge, Self::Ipo, Self::Simpo];

    /// TRL's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sigmoid => "sigmoid",
            Self::Hinge => "hinge",
            Self::Ipo => "ipo",
            Self::Simpo => "simpo",
        }
    }

    /// Whether the loss uses average (rather than summed) completion log-probs.
    pub fn uses_average_logps(self) -> bool {
        matches!(self, Self::Ipo | Self::Simpo)
    }
}

crate::named::impl_named!(CpoLossType, "CPO loss type");

/// CPO/SimPO hyper-parameters (TRL `CPOConfig` defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpoConfig {
    /// β. Default 0.1 (the SimPO paper uses 2–2.5).
    pub beta: f64,
    /// Loss type. Default `sigmoid`.
    pub loss_type: CpoLossType,
    /// ε of the label-smoothed sigmoid (`sigmoid`, `simpo`). Default 0.
    pub label_smoothing: f64,
    /// Weight of the NLL term. Default 1.
    pub cpo_alpha: f64,
    /// SimPO's target margin γ. Default 0.5.
    pub simpo_gamma: f64,
    /// AlphaPO's α (0 = plain log-prob rewards). Default 0.
    pub alpha: f64,
}

impl Default for CpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: CpoLossType::Sigmoid,
            label_smoothing: 0.0,
            cpo_alpha: 1.0,
            simpo_gamma: 0.5,
            alpha: 0.0,
        }
    }
}

impl CpoConfig {
    /// TRL's CPO defaults: `sigmoid`, β 0.1, `cpo_alpha` 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// SimPO as TRL runs it: `loss_type = simpo`, `cpo_alpha = 0`, with β and γ.
    pub fn simpo(beta: f64, gamma: f64) -> Self {
        Self {
            beta,
            loss_type: CpoLossType::Simpo,
            cpo_alpha: 0.0,
            simpo_gamma: gamma,
            ..Self::default()
        }
    }

    /// Sets β.
    #[must_use]
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Sets the loss type.
    #[must_use]
    pub fn with_loss_type(mut self, loss_type: CpoLossType) -> Self {
        self.loss_type = loss_type;
        self
    }

    /// Sets ε.
    #[must_use]
    pub fn with_label_smoothing(mut self, label_smoothing: f64) -> Self {
        self.label_smoothing = label_smoothing;
        self
    }

    /// Sets the NLL weight.
    #[must_use]
    pub fn with_cpo_alpha(mut self, cpo_alpha: f64) -> Self {
        self.cpo_alpha = cpo_alpha;
        self
    }

    /// Sets γ.
    #[must_use]
    pub fn with_simpo_gamma(mut self, gamma: f64) -> Self {
        self.simpo_gamma = gamma;
        self
    }

    /// Sets AlphaPO's α.
    #[must_use]
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// # Errors
    /// β not positive, ε outside [0, 1), or a non-finite coefficient.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(ObjectiveError::Invalid(msg));
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return invalid(format!("beta must be positive, got {}", self.beta));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return invalid(format!(
                "label_smoothing must lie in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        for (name, v) in [
            ("cpo_alpha", self.cpo_alpha),
            ("simpo_gamma", self.simpo_gamma),
            ("alpha", self.alpha),
        ] {
            if !v.is_finite() {
                return invalid(format!("{name} must be finite, got {v}"));
            }
        }
        Ok(())
    }
}

/// The CPO/SimPO loss of a batch and TRL's metrics.
///
/// `policy`: completion log-prob sums and counts of the `B` pairs (prompt masked); `stats`:
/// optional statistics of the `[chosen; rejected]` rows for `logits/*`.
///
/// # Errors
/// An invalid config, `stats` without `2B` rows, or a non-finite loss.
pub fn cpo_loss(
    config: &CpoConfig,
    policy: &PairLogps,
    stats: Option<&TokenStats>,
) -> Result<LossOutput> {
    config.validate()?;
    policy.check()?;
    let b = policy.pairs();
    let (beta, eps) = (config.beta, config.label_smoothing);
    let (logp_c, logp_r) = if config.loss_type.uses_average_logps() {
        policy.means()
    } else {
        (policy.chosen.clone(), policy.rejected.clone())
    };
    // AlphaPO reward ρ(ℓ) = (1 − p^{−α})/α = (1 − e^{−αℓ})/α (TRL computes p first; same value).
    let reward = |l: Tensor<1>| -> Tensor<1> {
        if config.alpha == 0.0 {
            l
        } else {
            l.mul_scalar(-config.alpha)
                .exp()
                .neg()
                .add_scalar(1.0)
                .div_scalar(config.alpha)
        }
    };
    let (rho_c, rho_r) = (reward(logp_c.clone()), reward(logp_r.clone()));
    let x = rho_c.clone() - rho_r.clone();
    let smoothed = |z: Tensor<1>| -> Tensor<1> {
        log_sigmoid(z.clone())
            .mul_scalar(-(1.0 - eps))
            .sub(log_sigmoid(z.neg()).mul_scalar(eps))
    };
    let per_pair = match config.loss_type {
        CpoLossType::Sigmoid => smoothed(x.mul_scalar(beta)),
        // β·(x − γ/β) = βx − γ.
        CpoLossType::Simpo => smoothed(x.mul_scalar(beta).sub_scalar(config.simpo_gamma)),
        CpoLossType::Hinge => relu(x.mul_scalar(-beta).add_scalar(1.0)),
        CpoLossType::Ipo => x.sub_scalar(1.0 / (2.0 * beta)).powi_scalar(2),
    };
    let nll = if config.cpo_alpha == 0.0 {
        policy.chosen.clone().detach().sum().zeros_like()
    } else {
        policy.chosen_nll()
    };
    let loss = per_pair.mean() + nll.clone().mul_scalar(config.cpo_alpha);

    let mut out = Readback::new(&loss);
    let reward_c = rho_c.detach().mul_scalar(beta);
    let reward_r = rho_r.detach().mul_scalar(beta);
    push_reward_metrics(&mut out, &reward_c, &reward_r);
    out.push("logps/rejected", logp_r.mean());
    out.push("logps/chosen", logp_c.mean());
    if let Some(stats) = stats {
        check_stacked(stats, b)?;
        out.push("logits/rejected", stats.rows(b..2 * b).logit_mean());
        out.push("logits/chosen", stats.rows(0..b).logit_mean());
    }
    out.push("nll_loss", nll);
    out.finish("CPO loss")
}

/// CPO as a [`TrainObjective`]: preference pairs, no reference, [`cpo_loss`] averaged over
/// micro-batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cpo(pub CpoConfig);

/// SimPO as TRL runs it: the CPO trainer with `loss_type = simpo`, forced whatever the config
/// says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Simpo(pub CpoConfig);

impl Simpo {
    /// The CPO config actually used.
    pub fn config(&self) -> CpoConfig {
        CpoConfig {
            loss_type: CpoLossType::Simpo,
            ..self.0.clone()
        }
    }
}

fn cpo_objective_loss(
    name: &str,
    config: &CpoConfig,
    context: &LossContext<'_>,
    batch: &MicroBatch,
) -> Result<LossOutput> {
    let pairs = batch.preference(name)?;
    let forward = context.policy_forward(&pairs.batch)?;
    let policy = PairLogps::from_stacked(&forward.logps)?;
    cpo_loss(config, &policy, Some(&forward.stats))
}

impl TrainObjective for Cpo {
    fn name(&self) -> &str {
        "cpo"
    }
    fn row_kind(&self) -> RowKind {
        RowKind::PreferencePairs
    }
    fn validate(&self) -> Result<()> {
        self.0.validate()
    }
    fn loss(&self, context: &LossContext<'_>, batch: &MicroBatch) -> Result<LossOutput> {
        cpo_objective_loss(self.name(), &self.0, context, batch)
    }
}

impl TrainObjective for Simpo {
    fn name(&self) -> &str {
        "simpo"
    }
    fn row_kind(&self) -> RowKind {
        RowKind::PreferencePairs
    }
    fn validate(&self) -> Result<()> {
        self.config().validate()
    }
    fn loss(&self, context: &LossContext<'_>, batch: &MicroBatch) -> Result<LossOutput> {
        cpo_objective_loss(self.name(), &self.config(), context, batch)
    }
}
