//! Sequence log-probabilities of a preference batch, the common input of DPO, ORPO, CPO and
//! SimPO.
//!
//! A preference batch stacks `[chosen rows; rejected rows]` (`2B` rows for `B` pairs). The
//! losses need, per row, the Σ of the completion-token log-probs and the number of completion
//! tokens: DPO uses the sums, ORPO/SimPO/IPO the means `sum / count`.

use std::ops::Range;

use burn::tensor::{Device, Element, Tensor, TensorData};

use crate::metrics::like;
use crate::{ObjectiveError, Result, TokenLogps};

/// Policy log-probs of `B` preference pairs: per-row Σ over completion tokens and the token
/// counts, all `[B]`. The sums carry the autodiff graph.
#[derive(Debug, Clone)]
pub struct PairLogps {
    /// Σ_t log p(chosen completion token t), `[B]`.
    pub chosen: Tensor<1>,
    /// Σ_t log p(rejected completion token t), `[B]`.
    pub rejected: Tensor<1>,
    /// Completion tokens of each chosen row, `[B]` (as floats).
    pub chosen_tokens: Tensor<1>,
    /// Completion tokens of each rejected row, `[B]` (as floats).
    pub rejected_tokens: Tensor<1>,
}

impl PairLogps {
    /// From the four `[B]` tensors.
    ///
    /// # Errors
    /// Shapes that differ.
    pub fn new(
        chosen: Tensor<1>,
        rejected: Tensor<1>,
        chosen_tokens: Tensor<1>,
        rejected_tokens: Tensor<1>,
    ) -> Result<Self> {
        let b = chosen.dims()[0];
        for (name, t) in [
            ("rejected", &rejected),
            ("chosen_tokens", &chosen_tokens),
            ("rejected_tokens", &rejected_tokens),
        ] {
            if t.dims()[0] != b {
                return Err(ObjectiveError::Invalid(format!(
                    "{} chosen sequences but {} {name}",
                    b,
                    t.dims()[0]
                )));
            }
        }
        if b == 0 {
            return Err(ObjectiveError::Invalid("an empty preference batch".into()));
        }
        Ok(Self {
            chosen,
            rejected,
            chosen_tokens,
            rejected_tokens,
        })
    }

    /// From the per-token log-probs of a stacked `[chosen; rejected]` batch (`2B` rows, labels
    /// masked to the completion tokens).
    ///
    /// # Errors
    /// An odd or zero number of rows.
    pub fn from_stacked(all: &TokenLogps) -> Result<Self> {
        let rows = all.logps.dims()[0];
        if rows == 0 || !rows.is_multiple_of(2) {
            return Err(ObjectiveError::Invalid(format!(
                "a [chosen; rejected] batch needs an even, non-zero number of rows, got {rows}"
            )));
        }
        let b = rows / 2;
        Self::from_halves(&all.rows(0..b), &all.rows(b..rows))
    }

    /// From the per-token log-probs of the chosen rows and of the rejected rows (`B` each).
    ///
    /// # Errors
    /// Different row counts.
    pub fn from_halves(chosen: &TokenLogps, rejected: &TokenLogps) -> Result<Self> {
        Self::new(
            chosen.sum(),
            rejected.sum(),
            chosen.count(),
            rejected.count(),
        )
    }

    /// Number of pairs `B`.
    pub fn pairs(&self) -> usize {
        self.chosen.dims()[0]
    }

    /// Checks the four tensors have the same, non-zero length (the fields are public, so a
    /// hand-built value is checked again by every loss).
    ///
    /// # Errors
    /// Lengths that differ, or no pairs.
    pub fn check(&self) -> Result<()> {
        let b = self.pairs();
        let lengths = [
            self.rejected.dims()[0],
            self.chosen_tokens.dims()[0],
            self.rejected_tokens.dims()[0],
        ];
        if b == 0 || lengths.iter().any(|&n| n != b) {
            return Err(ObjectiveError::Invalid(format!(
                "preference log-probs of inconsistent lengths: chosen {b}, rejected / chosen \
                 tokens / rejected tokens {lengths:?}"
            )));
        }
        Ok(())
    }

    /// Pairs `range` only.
    pub fn slice(&self, range: Range<usize>) -> Self {
        Self {
            chosen: self.chosen.clone().slice([range.clone()]),
            rejected: self.rejected.clone().slice([range.clone()]),
            chosen_tokens: self.chosen_tokens.clone().slice([range.clone()]),
            rejected_tokens: self.rejected_tokens.clone().slice([range]),
        }
    }

    /// Per-token means `Σ / count` of the chosen and rejected rows, `[B]` each (what ORPO,
    /// SimPO, IPO and `sigmoid_norm` use). A row without completion tokens gives 0.
    pub fn means(&self) -> (Tensor<1>, Tensor<1>) {
        (
            self.chosen.clone() / self.chosen_tokens.clone().clamp_min(1.0),
            self.rejected.clone() / self.rejected_tokens.clone().clamp_min(1.0),
        )
    }

    /// The token-mean NLL of the chosen completions pooled over the batch,
    /// `−Σ_b chosen_b / Σ_b chosen_tokens_b`, `[1]` — cross-entropy over every chosen
    /// completion token (DPO `sft`, CPO's NLL, ORPO's completion-only NLL).
    pub fn chosen_nll(&self) -> Tensor<1> {
        self.chosen.clone().sum().neg() / self.chosen_tokens.clone().sum().clamp_min(1.0)
    }
}

/// Reference-model log-probs of `B` pairs: Σ over completion tokens, `[B]` each, without
/// gradient. They come from a reference forward ([`RefLogps::from_forward`]) or from a
/// precomputed cache ([`RefLogps::from_values`]); the losses detach them either way.
#[derive(Debug, Clone)]
pub struct RefLogps {
    /// Σ_t log p_ref(chosen completion token t), `[B]`.
    pub chosen: Tensor<1>,
    /// Σ_t log p_ref(rejected completion token t), `[B]`.
    pub rejected: Tensor<1>,
}

impl RefLogps {
    /// From two `[B]` tensors (detached here).
    ///
    /// # Errors
    /// Shapes that differ.
    pub fn new(chosen: Tensor<1>, rejected: Tensor<1>) -> Result<Self> {
        if chosen.dims() != rejected.dims() {
            return Err(ObjectiveError::Invalid(format!(
                "reference log-probs of {} chosen but {} rejected sequences",
                chosen.dims()[0],
                rejected.dims()[0]
            )));
        }
        Ok(Self {
            chosen: chosen.detach(),
            rejected: rejected.detach(),
        })
    }

    /// The sums of a reference forward (its [`PairLogps`], detached).
    pub fn from_forward(reference: &PairLogps) -> Self {
        Self {
            chosen: reference.chosen.clone().detach(),
            rejected: reference.rejected.clone().detach(),
        }
    }

    /// Values read from a precomputed cache, put on `device` (in its default float dtype; the
    /// losses cast them to the policy's dtype).
    ///
    /// # Errors
    /// Slices of different lengths.
    pub fn from_values<E: Element>(chosen: &[E], rejected: &[E], device: &Device) -> Result<Self> {
        if chosen.len() != rejected.len() {
            return Err(ObjectiveError::Invalid(format!(
                "reference log-probs of {} chosen but {} rejected sequences",
                chosen.len(),
                rejected.len()
            )));
        }
        let n = chosen.len();
        Ok(Self {
            chosen: Tensor::from_data(TensorData::new(chosen.to_vec(), [n]), device),
            rejected: Tensor::from_data(TensorData::new(rejected.to_vec(), [n]), device),
        })
    }

    /// Number of pairs.
    pub fn pairs(&self) -> usize {
        self.chosen.dims()[0]
    }

    /// Pairs `range` only.
    pub fn slice(&self, range: Range<usize>) -> Self {
        Self {
            chosen: self.chosen.clone().slice([range.clone()]),
            rejected: self.rejected.clone().slice([range]),
        }
    }

    /// Detached, in the policy's dtype, after checking both have the same number of pairs.
    pub(crate) fn aligned(&self, policy: &PairLogps) -> Result<(Tensor<1>, Tensor<1>)> {
        policy.check()?;
        if self.pairs() != policy.pairs() || self.rejected.dims()[0] != policy.pairs() {
            return Err(ObjectiveError::Invalid(format!(
                "{} policy pairs but {} reference pairs",
                policy.pairs(),
                self.pairs()
            )));
        }
        let dtype = policy.chosen.dtype();
        Ok((
            like(self.chosen.clone().detach(), dtype),
            like(self.rejected.clone().detach(), dtype),
        ))
    }
}
