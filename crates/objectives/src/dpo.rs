//! DPO and the whole TRL 1.16 `DPOTrainer` loss family.
//!
//! Notation (per pair `i` of a batch of `B`): `s` = Σ of completion-token log-probs
//! ([`PairLogps`], [`RefLogps`]), `rc = s_pol(chosen) − s_ref(chosen)`,
//! `rr = s_pol(rejected) − s_ref(rejected)`, `Δ = rc − rr`, `n_c`/`n_r` the completion token
//! counts, `σ` the sigmoid, `ls = log σ` ([`log_sigmoid`]), β [`DpoConfig::beta`],
//! ε [`DpoConfig::label_smoothing`].
//!
//! Each loss type gives a per-pair loss; the batch loss is `Σ_k w_k · mean_i(loss_k,i)`
//! (TRL's multi-loss combination, e.g. `["sigmoid", "sft"]` with weights `[1, α]` is the old
//! `rpo_alpha`, MPO is `["sigmoid", "bco_pair", "sft"]` with `[0.8, 0.2, 1.0]`).
//!
//! | loss type | per-pair loss | paper |
//! |---|---|---|
//! | `sigmoid` | `−ls(βΔ)` | DPO, arXiv:2305.18290 |
//! | `hinge` | `relu(1 − βΔ)` | SLiC, 2305.10425 |
//! | `ipo` | `(rc/n_c − rr/n_r − 1/(2β))²` (β is IPO's τ) | IPO, 2310.12036 |
//! | `exo_pair` | `σ(βΔ)(ls(βΔ) − log(1−ε)) + σ(−βΔ)(ls(−βΔ) − log ε)`, ε > 0 | EXO, 2402.00856 |
//! | `nca_pair` | `−ls(β rc) − ½ ls(−β rc) − ½ ls(−β rr)` | NCA, 2402.05369 |
//! | `robust` | `(−(1−ε) ls(βΔ) + ε ls(−βΔ)) / (1 − 2ε)`, ε ∈ [0, ½) | rDPO, 2403.00409 |
//! | `bco_pair` | `−ls(β rc) − ls(−β rr)` (no running-mean baseline since TRL 0.29) | BCO, 2404.04656 |
//! | `sppo_hard` | `(rc − 1/(2β))² + (rr + 1/(2β))²` | SPPO, 2405.00675 |
//! | `aot` | `d = sort_B(s_pol_c − s_pol_r) − sort_B(s_ref_c − s_ref_r)`: `−(1−ε) ls(βd) − ε ls(−βd)` | AOT, 2406.05882 |
//! | `aot_unpaired` | `d = sort_B(rc) − sort_B(rr)`, same form | AOT |
//! | `apo_zero` | `1 − σ(β rc) + σ(β rr)` | APO, 2408.06266 |
//! | `apo_down` | `σ(β rc) + 1 − σ(βΔ)` | APO |
//! | `discopop` | `z = βΔ`, `m = σ(z/τ)`: `−ls(z)(1 − m) + e^{−z} m` | DiscoPOP, 2406.08414 |
//! | `sft` | `−Σ_i s_pol_c,i / Σ_i n_c,i` for every pair (token-mean NLL of the chosen completions) | RPO/MPO term |
//! | `sigmoid_norm` | `−ls(β(rc/n_c − rr/n_r))` | length-normalised DPO |
//! | `cdpo` (not a TRL 1.16 name) | `−(1−ε) ls(βΔ) − ε ls(−βΔ)` | cDPO: TRL ≤ 0.28's label-smoothed `sigmoid` |
//!
//! TRL ≥ 0.29's `sigmoid` ignores `label_smoothing`; the conservative-DPO form it used to have is
//! kept here as the explicit `cdpo` type so old configs can be reproduced.
//!
//! **f-divergences** (f-DPO, arXiv:2309.16240): with [`FDivergenceType`] other than
//! `reverse_kl`, the log-ratios `r ∈ {rc, rr}` are replaced by the scores `f'(eʳ)` before
//! `sigmoid`, `sigmoid_norm`, `hinge`, `ipo`, `exo_pair`, `robust`, `discopop` (and `cdpo`):
//! `forward_kl` → `1 − e^{−r}`, `js_divergence` → `ln 2 + ls(r)`, `alpha_divergence` →
//! `(e^{(α−1) r} − 1)/(α − 1)` (the exponent clamped at 80, 11 in f16; `α = 1` is
//! `reverse_kl`). The reparameterisation leaves a `β·log Z(x)` term that cancels only in a
//! chosen−rejected difference, so TRL 1.16 rejects the other loss types with an
//! f-divergence (huggingface/trl#6559), and so does [`DpoConfig::validate`]. `sft` ignores it.
//!
//! Logged metrics (TRL's names, [`dpo_loss`]): `rewards/chosen|rejected` = mean β·rc / β·rr
//! (raw log-ratios, whatever the f-divergence), `rewards/accuracies` = the fraction of pairs
//! with β rc > β rr (strict), `rewards/margins`, `logps/chosen|rejected` = mean Σ-log-probs; with
//! [`TokenStats`] of the `[chosen; rejected]` rows also `entropy` (all completion targets),
//! `num_tokens`, `logits/chosen|rejected` (vocab-mean logit over completion targets) and
//! `mean_token_accuracy` (chosen completion targets).
//!
//! Not implemented: `ld_alpha` (LD-DPO weighting of the tail tokens — compute the sums with it
//! yourself), `use_weighting` (WPO), the MoE router loss.

use std::fmt;
use std::str::FromStr;

use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::metrics::{LossOutput, Readback, TokenStats, bool_as};
use crate::objective::{LossContext, MicroBatch, RowKind, TrainObjective};
use crate::preference::{PairLogps, RefLogps};
use crate::stable::log_sigmoid;
use crate::{ObjectiveError, Result};

/// One DPO loss type, named as in TRL 1.16's `DPOConfig.loss_type` (plus `cdpo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLossType {
    /// `−ls(βΔ)` — the DPO loss.
    Sigmoid,
    /// `relu(1 − βΔ)` — SLiC.
    Hinge,
    /// `(rc/n_c − rr/n_r − 1/(2β))²` — IPO, length-normalised.
    Ipo,
    /// EXO-pref, needs `label_smoothing > 0`.
    ExoPair,
    /// Noise-contrastive alignment.
    NcaPair,
    /// Robust DPO with flip probability ε = `label_smoothing`.
    Robust,
    /// Binary classifier optimisation, paired.
    BcoPair,
    /// SPPO with hard (0/1) win probabilities.
    SppoHard,
    /// Alignment via optimal transport, paired (sorts over the batch).
    Aot,
    /// Alignment via optimal transport, unpaired (sorts over the batch).
    AotUnpaired,
    /// Anchored preference optimisation, chosen better than the model.
    ApoZero,
    /// Anchored preference optimisation, chosen worse than the model.
    ApoDown,
    /// DiscoPOP's log-ratio-modulated loss, temperature [`DpoConfig::discopop_tau`].
    Discopop,
    /// Token-mean NLL of the chosen completions.
    Sft,
    /// `−ls(β(rc/n_c − rr/n_r))`.
    SigmoidNorm,
    /// Conservative DPO, TRL ≤ 0.28's `sigmoid` with `label_smoothing`:
    /// `−(1−ε) ls(βΔ) − ε ls(−βΔ)`. Not a TRL 1.16 name.
    Cdpo,
}

impl DpoLossType {
    /// Every loss type, TRL's fifteen first.
    pub const ALL: [Self; 16] = [
        Self::Sigmoid,
        Self::Hinge,
        Self::Ipo,
        Self::ExoPair,
        Self::NcaPair,
        Self::Robust,
        Self::BcoPair,
        Self::SppoHard,
        Self::Aot,
        Self::AotUnpaired,
        Self::ApoZero,
        Self::ApoDown,
        Self::Discopop,
        Self::Sft,
        Self::SigmoidNorm,
        Self::Cdpo,
    ];

    /// TRL's spelling (`"exo_pair"`, `"sigmoid_norm"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sigmoid => "sigmoid",
            Self::Hinge => "hinge",
            Self::Ipo => "ipo",
            Self::ExoPair => "exo_pair",
            Self::NcaPair => "nca_pair",
            Self::Robust => "robust",
            Self::BcoPair => "bco_pair",
            Self::SppoHard => "sppo_hard",
            Self::Aot => "aot",
            Self::AotUnpaired => "aot_unpaired",
            Self::ApoZero => "apo_zero",
            Self::ApoDown => "apo_down",
            Self::Discopop => "discopop",
            Self::Sft => "sft",
            Self::SigmoidNorm => "sigmoid_norm",
            Self::Cdpo => "cdpo",
        }
    }

    /// Whether the loss only depends on a chosen−rejected score difference, so that an
    /// f-divergence other than reverse KL is meaningful (TRL 1.16's allow-list, plus `cdpo`).
    pub fn supports_f_divergence(self) -> bool {
        matches!(
            self,
            Self::Sigmoid
                | Self::SigmoidNorm
                | Self::Hinge
                | Self::Ipo
                | Self::ExoPair
                | Self::Robust
                | Self::Discopop
                | Self::Sft
                | Self::Cdpo
        )
    }

    /// Whether per-pair values depend on the other pairs of the batch (`aot*` sort over it,
    /// `sft` pools its tokens).
    pub fn couples_the_batch(self) -> bool {
        matches!(self, Self::Aot | Self::AotUnpaired | Self::Sft)
    }
}

impl fmt::Display for DpoLossType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DpoLossType {
    type Err = ObjectiveError;

    /// Parses TRL's spelling; an unknown name is an error listing the known ones.
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s.trim())
            .ok_or_else(|| {
                ObjectiveError::Invalid(format!(
                    "unknown DPO loss type `{s}`; expected one of: {}",
                    Self::ALL.map(Self::name).join(", ")
                ))
            })
    }
}

/// The f-divergence regulariser of f-DPO (TRL `f_divergence_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FDivergenceType {
    /// Standard DPO: the scores are the log-ratios.
    #[default]
    ReverseKl,
    /// Score `1 − e^{−r}`.
    ForwardKl,
    /// Jensen–Shannon: score `ln 2 + ls(r)`.
    JsDivergence,
    /// α-divergence with α = [`DpoConfig::f_alpha_divergence_coef`]:
    /// score `(e^{(α−1) r} − 1)/(α − 1)`.
    AlphaDivergence,
}

impl FDivergenceType {
    /// Every type.
    pub const ALL: [Self; 4] = [
        Self::ReverseKl,
        Self::ForwardKl,
        Self::JsDivergence,
        Self::AlphaDivergence,
    ];

    /// TRL's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReverseKl => "reverse_kl",
            Self::ForwardKl => "forward_kl",
            Self::JsDivergence => "js_divergence",
            Self::AlphaDivergence => "alpha_divergence",
        }
    }
}

crate::named::impl_named!(FDivergenceType, "f-divergence");

/// TRL's `loss_type` is one name (`"ipo"`) or a list (`["sigmoid", "sft"]`).
fn one_or_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<DpoLossType>, D::Error> {
    struct OneOrList;
    impl<'de> serde::de::Visitor<'de> for OneOrList {
        type Value = Vec<DpoLossType>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a DPO loss type or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Self::Value, E> {
            use serde::de::IntoDeserializer;
            DpoLossType::deserialize(s.into_deserializer()).map(|t| vec![t])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut types = Vec::new();
            while let Some(t) = seq.next_element()? {
                types.push(t);
            }
            Ok(types)
        }
    }
    d.deserialize_any(OneOrList)
}

/// DPO hyper-parameters, with TRL 1.16's defaults and names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpoConfig {
    /// β, the inverse temperature of the implicit reward (IPO's τ). Default 0.1.
    pub beta: f64,
    /// The loss types to combine; one name or a list, as TRL takes it. Default `[sigmoid]`.
    #[serde(deserialize_with = "one_or_list")]
    pub loss_type: Vec<DpoLossType>,
    /// One weight per loss type; `None` = all 1. Default `None`.
    pub loss_weights: Option<Vec<f64>>,
    /// ε of `robust` (flip probability, in [0, ½)), `exo_pair` (> 0; the paper uses 1e-3),
    /// `aot`, `aot_unpaired` and `cdpo`. Ignored by `sigmoid`. Default 0.
    pub label_smoothing: f64,
    /// f-divergence of f-DPO. Default `reverse_kl`.
    pub f_divergence_type: FDivergenceType,
    /// α of `alpha_divergence`. Default 0.5.
    pub f_alpha_divergence_coef: f64,
    /// τ of `discopop`. Default 0.05.
    pub discopop_tau: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: vec![DpoLossType::Sigmoid],
            loss_weights: None,
            label_smoothing: 0.0,
            f_divergence_type: FDivergenceType::ReverseKl,
            f_alpha_divergence_coef: 0.5,
            discopop_tau: 0.05,
        }
    }
}

impl DpoConfig {
    /// TRL's defaults: β 0.1, `[sigmoid]`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets β.
    #[must_use]
    pub fn with_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Sets the loss types.
    #[must_use]
    pub fn with_loss_type(mut self, loss_type: Vec<DpoLossType>) -> Self {
        self.loss_type = loss_type;
        self
    }

    /// Sets the loss types from TRL's names (`["sigmoid", "sft"]`).
    ///
    /// # Errors
    /// An unknown name.
    pub fn with_loss_type_names<S: AsRef<str>>(mut self, names: &[S]) -> Result<Self> {
        self.loss_type = names
            .iter()
            .map(|n| n.as_ref().parse())
            .collect::<Result<_>>()?;
        Ok(self)
    }

    /// Sets one weight per loss type.
    #[must_use]
    pub fn with_loss_weights(mut self, weights: Vec<f64>) -> Self {
        self.loss_weights = Some(weights);
        self
    }

    /// Sets ε.
    #[must_use]
    pub fn with_label_smoothing(mut self, label_smoothing: f64) -> Self {
        self.label_smoothing = label_smoothing;
        self
    }

    /// Sets the f-divergence.
    #[must_use]
    pub fn with_f_divergence_type(mut self, f_divergence_type: FDivergenceType) -> Self {
        self.f_divergence_type = f_divergence_type;
        self
    }

    /// Sets α of `alpha_divergence`.
    #[must_use]
    pub fn with_f_alpha_divergence_coef(mut self, alpha: f64) -> Self {
        self.f_alpha_divergence_coef = alpha;
        self
    }

    /// Sets τ of `discopop`.
    #[must_use]
    pub fn with_discopop_tau(mut self, tau: f64) -> Self {
        self.discopop_tau = tau;
        self
    }

    /// The weights, defaulted to 1 per loss type.
    pub fn weights(&self) -> Vec<f64> {
        self.loss_weights
            .clone()
            .unwrap_or_else(|| vec![1.0; self.loss_type.len()])
    }

    /// Checks the options fit together, as TRL's `DPOTrainer.__init__` does (TRL only warns
    /// for `robust` outside [0, ½); it is an error here, the loss divides by `1 − 2ε`).
    ///
    /// # Errors
    /// No loss type, weights of the wrong length, β ≤ 0, ε outside what a loss type accepts,
    /// τ ≤ 0, or an f-divergence with a loss type that does not support it.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(ObjectiveError::Invalid(msg));
        if self.loss_type.is_empty() {
            return invalid("DPO needs at least one loss type".into());
        }
        if let Some(w) = &self.loss_weights {
            if w.len() != self.loss_type.len() {
                return invalid(format!(
                    "{} loss weights for {} loss types",
                    w.len(),
                    self.loss_type.len()
                ));
            }
            if w.iter().any(|w| !w.is_finite()) {
                return invalid(format!("loss weights must be finite, got {w:?}"));
            }
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return invalid(format!("beta must be positive, got {}", self.beta));
        }
        let eps = self.label_smoothing;
        if !(0.0..1.0).contains(&eps) {
            return invalid(format!("label_smoothing must lie in [0, 1), got {eps}"));
        }
        if self.loss_type.contains(&DpoLossType::Robust) && eps >= 0.5 {
            return invalid(format!(
                "the `robust` loss needs label_smoothing in [0, 0.5), got {eps}"
            ));
        }
        if self.loss_type.contains(&DpoLossType::ExoPair) && eps <= 0.0 {
            return invalid(
                "label_smoothing must be greater than 0 for the `exo_pair` loss (the EXO paper \
                 recommends 1e-3)"
                    .into(),
            );
        }
        if self.loss_type.contains(&DpoLossType::Discopop)
            && !(self.discopop_tau.is_finite() && self.discopop_tau > 0.0)
        {
            return invalid(format!(
                "discopop_tau must be positive, got {}",
                self.discopop_tau
            ));
        }
        if self.f_divergence_type == FDivergenceType::AlphaDivergence
            && !self.f_alpha_divergence_coef.is_finite()
        {
            return invalid(format!(
                "f_alpha_divergence_coef must be finite, got {}",
                self.f_alpha_divergence_coef
            ));
        }
        if self.f_divergence_type != FDivergenceType::ReverseKl
            && let Some(t) = self.loss_type.iter().find(|t| !t.supports_f_divergence())
        {
            return invalid(format!(
                "f_divergence_type `{}` is only meaningful for loss types whose value depends on a \
                 chosen−rejected difference (sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, \
                 discopop, sft, cdpo), not `{t}`",
                self.f_divergence_type
            ));
        }
        Ok(())
    }
}

/// The implicit rewards `β·rc` and `β·rr`, `[B]` each, detached (TRL's `rewards/*`).
///
/// # Errors
/// Policy and reference batches of different sizes.
pub fn dpo_rewards(
    config: &DpoConfig,
    policy: &PairLogps,
    reference: &RefLogps,
) -> Result<(Tensor<1>, Tensor<1>)> {
    let (ref_c, ref_r) = reference.aligned(policy)?;
    Ok((
        (policy.chosen.clone().detach() - ref_c).mul_scalar(config.beta),
        (policy.rejected.clone().detach() - ref_r).mul_scalar(config.beta),
    ))
}

/// `f'(eʳ)` of the configured f-divergence, applied to a log-ratio `r`.
fn f_divergence_score(config: &DpoConfig, r: Tensor<1>) -> Tensor<1> {
    match config.f_divergence_type {
        FDivergenceType::ReverseKl => r,
        // f'(t) = 1 − 1/t.
        FDivergenceType::ForwardKl => r.neg().exp().neg().add_scalar(1.0),
        // f'(t) = log(2t / (t + 1)) = ln 2 + log σ(r).
        FDivergenceType::JsDivergence => log_sigmoid(r).add_scalar(std::f64::consts::LN_2),
        // f'(t) = (t^{α−1} − 1)/(α − 1); α → 1 is log t.
        FDivergenceType::AlphaDivergence => {
            let alpha = config.f_alpha_divergence_coef;
            if (alpha - 1.0).abs() < 1e-6 {
                r
            } else {
                // Clamped so e^t stays representable (TRL: 11 in f16, 80 otherwise).
                let clamp = if r.dtype() == DType::F16 { 11.0 } else { 80.0 };
                r.mul_scalar(alpha - 1.0)
                    .clamp_max(clamp)
                    .exp()
                    .sub_scalar(1.0)
                    .div_scalar(alpha - 1.0)
            }
        }
    }
}

/// `−(1−ε)·ls(βx) − ε·ls(−βx)`: the label-smoothed sigmoid of `aot`, `aot_unpaired`, `cdpo`.
fn smoothed_sigmoid(x: Tensor<1>, beta: f64, eps: f64) -> Tensor<1> {
    let z = x.mul_scalar(beta);
    log_sigmoid(z.clone())
        .mul_scalar(-(1.0 - eps))
        .sub(log_sigmoid(z.neg()).mul_scalar(eps))
}

/// Per-pair loss `Σ_k w_k · loss_k`, `[B]`; the batch loss is its mean.
///
/// (`mean_i Σ_k w_k loss_k,i = Σ_k w_k mean_i loss_k,i`, TRL's combination.) For the
/// batch-coupled types (`aot`, `aot_unpaired` sort over the batch, `sft` is a batch scalar) the
/// per-pair values are only meaningful together.
///
/// # Errors
/// An invalid config ([`DpoConfig::validate`]) or batches of different sizes.
pub fn dpo_per_pair_loss(
    config: &DpoConfig,
    policy: &PairLogps,
    reference: &RefLogps,
) -> Result<Tensor<1>> {
    config.validate()?;
    let (ref_c, ref_r) = reference.aligned(policy)?;
    let b = policy.pairs();
    let beta = config.beta;
    let eps = config.label_smoothing;

    let lr_c = policy.chosen.clone() - ref_c.clone();
    let lr_r = policy.rejected.clone() - ref_r.clone();
    let score_c = f_divergence_score(config, lr_c.clone());
    let score_r = f_divergence_score(config, lr_r.clone());
    let delta = score_c.clone() - score_r.clone();
    let n_c = policy.chosen_tokens.clone().clamp_min(1.0);
    let n_r = policy.rejected_tokens.clone().clamp_min(1.0);

    let mut total: Option<Tensor<1>> = None;
    for (loss_type, weight) in config.loss_type.iter().zip(config.weights()) {
        let per_pair = match loss_type {
            DpoLossType::Sigmoid => log_sigmoid(delta.clone().mul_scalar(beta)).neg(),
            DpoLossType::Hinge => relu(delta.clone().mul_scalar(-beta).add_scalar(1.0)),
            DpoLossType::Ipo => {
                let d = score_c.clone() / n_c.clone() - score_r.clone() / n_r.clone();
                d.sub_scalar(1.0 / (2.0 * beta)).powi_scalar(2)
            }
            DpoLossType::ExoPair => {
                let z = delta.clone().mul_scalar(beta);
                let win = sigmoid(z.clone()) * log_sigmoid(z.clone()).sub_scalar((-eps).ln_1p());
                let lose = sigmoid(z.clone().neg()) * log_sigmoid(z.neg()).sub_scalar(eps.ln());
                win + lose
            }
            DpoLossType::NcaPair => {
                let zc = lr_c.clone().mul_scalar(beta);
                let zr = lr_r.clone().mul_scalar(beta);
                log_sigmoid(zc.clone()).neg()
                    - log_sigmoid(zc.neg()).mul_scalar(0.5)
                    - log_sigmoid(zr.neg()).mul_scalar(0.5)
            }
            DpoLossType::Robust => {
                let z = delta.clone().mul_scalar(beta);
                (log_sigmoid(z.clone()).mul_scalar(-(1.0 - eps))
                    + log_sigmoid(z.neg()).mul_scalar(eps))
                .div_scalar(1.0 - 2.0 * eps)
            }
            DpoLossType::BcoPair => {
                log_sigmoid(lr_c.clone().mul_scalar(beta)).neg()
                    - log_sigmoid(lr_r.clone().mul_scalar(-beta))
            }
            DpoLossType::SppoHard => {
                lr_c.clone().sub_scalar(0.5 / beta).powi_scalar(2)
                    + lr_r.clone().add_scalar(0.5 / beta).powi_scalar(2)
            }
            DpoLossType::Aot => {
                let policy_margin = (policy.chosen.clone() - policy.rejected.clone()).sort(0);
                let ref_margin = (ref_c.clone() - ref_r.clone()).sort(0);
                smoothed_sigmoid(policy_margin - ref_margin, beta, eps)
            }
            DpoLossType::AotUnpaired => {
                let d = lr_c.clone().sort(0) - lr_r.clone().sort(0);
                smoothed_sigmoid(d, beta, eps)
            }
            DpoLossType::ApoZero => {
                sigmoid(lr_c.clone().mul_scalar(beta)).neg().add_scalar(1.0)
                    + sigmoid(lr_r.clone().mul_scalar(beta))
            }
            DpoLossType::ApoDown => {
                let raw_delta = lr_c.clone() - lr_r.clone();
                sigmoid(lr_c.clone().mul_scalar(beta))
                    + sigmoid(raw_delta.mul_scalar(beta)).neg().add_scalar(1.0)
            }
            DpoLossType::Discopop => {
                let z = delta.clone().mul_scalar(beta);
                let mix = sigmoid(z.clone().div_scalar(config.discopop_tau));
                let logistic = log_sigmoid(z.clone()).neg();
                let exponential = z.neg().exp();
                logistic * mix.clone().neg().add_scalar(1.0) + exponential * mix
            }
            DpoLossType::Sft => policy.chosen_nll().expand([b]),
            DpoLossType::SigmoidNorm => {
                let d = score_c.clone() / n_c.clone() - score_r.clone() / n_r.clone();
                log_sigmoid(d.mul_scalar(beta)).neg()
            }
            DpoLossType::Cdpo => smoothed_sigmoid(delta.clone(), beta, eps),
        };
        let weighted = per_pair.mul_scalar(weight);
        total = Some(match total {
            None => weighted,
            Some(acc) => acc + weighted,
        });
    }
    total.ok_or_else(|| ObjectiveError::Invalid("DPO needs at least one loss type".into()))
}

/// The DPO loss of a batch and TRL's metrics.
///
/// `policy`: the policy's completion log-prob sums (with gradient); `reference`: the
/// reference's (from a forward or a cache, detached here); `stats`: optional per-token
/// statistics of the stacked `[chosen; rejected]` rows (`2B` rows) for `entropy`,
/// `num_tokens`, `logits/*` and `mean_token_accuracy`.
///
/// Gradient accumulation: like TRL (`loss_is_scaled_for_ga = False`), average the loss over
/// micro-batches (divide each by the number of micro-batches).
///
/// # Errors
/// An invalid config, mismatched sizes, `stats` without `2B` rows, or a non-finite loss.
pub fn dpo_loss(
    config: &DpoConfig,
    policy: &PairLogps,
    reference: &RefLogps,
    stats: Option<&TokenStats>,
) -> Result<LossOutput> {
    let loss = dpo_per_pair_loss(config, policy, reference)?.mean();
    let b = policy.pairs();
    let (reward_c, reward_r) = dpo_rewards(config, policy, reference)?;

    let mut out = Readback::new(&loss);
    if let Some(stats) = stats {
        check_stacked(stats, b)?;
        let (chosen, rejected) = (stats.rows(0..b), stats.rows(b..2 * b));
        out.push("entropy", stats.mean_entropy());
        out.push("num_tokens", stats.total_tokens());
        out.push("logits/chosen", chosen.completion_logit_mean());
        out.push("logits/rejected", rejected.completion_logit_mean());
        out.push("mean_token_accuracy", chosen.top1_accuracy());
    }
    push_reward_metrics(&mut out, &reward_c, &reward_r);
    out.push("logps/chosen", policy.chosen.clone().mean());
    out.push("logps/rejected", policy.rejected.clone().mean());
    out.finish("DPO loss")
}

/// `rewards/chosen`, `rewards/rejected`, `rewards/accuracies` (strict `>`), `rewards/margins`.
pub(crate) fn push_reward_metrics(out: &mut Readback, reward_c: &Tensor<1>, reward_r: &Tensor<1>) {
    let dtype = reward_c.dtype();
    out.push("rewards/chosen", reward_c.clone().mean());
    out.push("rewards/rejected", reward_r.clone().mean());
    out.push(
        "rewards/accuracies",
        bool_as(reward_c.clone().greater(reward_r.clone()), dtype).mean(),
    );
    out.push(
        "rewards/margins",
        (reward_c.clone() - reward_r.clone()).mean(),
    );
}

/// Checks `stats` covers the `[chosen; rejected]` rows of `pairs` pairs.
pub(crate) fn check_stacked(stats: &TokenStats, pairs: usize) -> Result<()> {
    if stats.batch() != 2 * pairs {
        return Err(ObjectiveError::Invalid(format!(
            "token statistics of {} rows for {pairs} pairs (expected [chosen; rejected] = {} rows)",
            stats.batch(),
            2 * pairs
        )));
    }
    Ok(())
}

/// The DPO family as a [`TrainObjective`]: preference pairs against reference log-probs,
/// [`dpo_loss`] averaged over micro-batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dpo(pub DpoConfig);

impl TrainObjective for Dpo {
    fn name(&self) -> &str {
        "dpo"
    }
    fn row_kind(&self) -> RowKind {
        RowKind::PreferencePairs
    }
    fn needs_reference(&self) -> bool {
        true
    }
    fn validate(&self) -> Result<()> {
        self.0.validate()
    }
    fn loss(&self, context: &LossContext<'_>, batch: &MicroBatch) -> Result<LossOutput> {
        let pairs = batch.preference(self.name())?;
        let forward = context.policy_forward(&pairs.batch)?;
        let policy = PairLogps::from_stacked(&forward.logps)?;
        let device = forward.hidden.device();
        let reference = context.reference.pair_logps(pairs, &batch.rows, &device)?;
        dpo_loss(&self.0, &policy, &reference, Some(&forward.stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(values: &[f32]) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Device::flex(),
        )
    }

    #[test]
    fn loss_type_names_round_trip_and_unknown_names_fail() {
        for lt in DpoLossType::ALL {
            assert_eq!(lt.name().parse::<DpoLossType>().ok(), Some(lt));
            let json = serde_json::to_string(&lt).expect("serialise");
            assert_eq!(json, format!("\"{}\"", lt.name()));
        }
        let err = "sigmoidd".parse::<DpoLossType>().expect_err("unknown");
        assert!(err.to_string().contains("sigmoid_norm"), "{err}");
        for f in FDivergenceType::ALL {
            assert_eq!(f.name().parse::<FDivergenceType>().ok(), Some(f));
        }
        assert!("kl".parse::<FDivergenceType>().is_err());
    }

    #[test]
    fn config_validation_follows_trl() {
        assert!(DpoConfig::new().validate().is_ok());
        let exo = DpoConfig::new().with_loss_type(vec![DpoLossType::ExoPair]);
        assert!(exo.validate().is_err());
        assert!(exo.with_label_smoothing(1e-3).validate().is_ok());
        let weights = DpoConfig::new().with_loss_weights(vec![1.0, 2.0]);
        assert!(weights.validate().is_err());
        let fdiv = DpoConfig::new()
            .with_loss_type(vec![DpoLossType::Sigmoid, DpoLossType::BcoPair])
            .with_f_divergence_type(FDivergenceType::ForwardKl);
        assert!(fdiv.validate().is_err());
        assert!(
            DpoConfig::new()
                .with_loss_type(vec![DpoLossType::Robust])
                .with_label_smoothing(0.5)
                .validate()
                .is_err()
        );
        let cfg: DpoConfig =
            serde_json::from_str(r#"{"loss_type": ["sigmoid", "sft"], "loss_weights": [1, 0.5]}"#)
                .expect("config");
        assert_eq!(cfg.loss_type, vec![DpoLossType::Sigmoid, DpoLossType::Sft]);
        assert_eq!(cfg.beta, 0.1);
        // One name, as TRL also takes it; an unknown one names the valid ones.
        let one: DpoConfig = serde_json::from_str(r#"{"loss_type": "ipo"}"#).expect("config");
        assert_eq!(one.loss_type, vec![DpoLossType::Ipo]);
        let err = serde_json::from_str::<DpoConfig>(r#"{"loss_type": "nope"}"#)
            .expect_err("unknown loss type")
            .to_string();
        assert!(err.contains("unknown variant `nope`"), "{err}");
        assert!(
            DpoConfig::new()
                .with_loss_type_names(&["sigmoid", "nope"])
                .is_err()
        );
    }

    #[test]
    fn f_divergence_scores_keep_their_constants() -> Result<()> {
        // rc = 0.3, rr = −0.2, n_c = 2, n_r = 4: ipo sees the scores divided by different
        // counts, so the additive constants of forward_kl / js / alpha matter (TRL#6559).
        let policy = PairLogps::new(t(&[-1.0]), t(&[-2.0]), t(&[2.0]), t(&[4.0]))?;
        let reference = RefLogps::new(t(&[-1.3]), t(&[-1.8]))?;
        let (rc, rr) = (0.3f64, -0.2f64);
        let beta = 0.1;
        let ls = |x: f64| -(-x).exp().ln_1p();
        type Score = fn(f64) -> f64;
        let cases: [(FDivergenceType, Score); 4] = [
            (FDivergenceType::ReverseKl, |r| r),
            (FDivergenceType::ForwardKl, |r| 1.0 - (-r).exp()),
            (FDivergenceType::JsDivergence, |r| {
                std::f64::consts::LN_2 - (-r).exp().ln_1p()
            }),
            (FDivergenceType::AlphaDivergence, |r| {
                ((-0.5 * r).exp() - 1.0) / -0.5
            }),
        ];
        for (f, score) in cases {
            for lt in [DpoLossType::Ipo, DpoLossType::Sigmoid] {
                let cfg = DpoConfig::new()
                    .with_loss_type(vec![lt])
                    .with_f_divergence_type(f);
                let got: f64 = dpo_per_pair_loss(&cfg, &policy, &reference)?
                    .into_data()
                    .iter::<f64>()
                    .next()
                    .unwrap_or(f64::NAN);
                let want = match lt {
                    DpoLossType::Ipo => (score(rc) / 2.0 - score(rr) / 4.0 - 5.0).powi(2),
                    _ => -ls(beta * (score(rc) - score(rr))),
                };
                assert!(
                    (got - want).abs() < 1e-5 * want.abs().max(1.0),
                    "{f} {lt}: {got} vs {want}"
                );
            }
        }
        Ok(())
    }
}
