//! Per-token log-probabilities of the target tokens, with the HF causal-LM shift.
//!
//! `logits[b, t]` predicts `labels[b, t + 1]`; targets equal to [`IGNORE_INDEX`] contribute
//! nothing (their log-prob is 0 and their mask 0). The last position's logits are never used.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

use crate::{IGNORE_INDEX, ObjectiveError, Result};

/// Masked per-token log-probs of a batch, `[batch, seq − 1]`.
#[derive(Debug, Clone)]
pub struct TokenLogps {
    /// `log p(y_{t+1} | x_{≤t})`, 0 where the target is ignored.
    pub logps: Tensor<2>,
    /// 1.0 where the target counts, 0.0 where it is ignored.
    pub mask: Tensor<2>,
}

impl TokenLogps {
    /// Σ over valid targets per sequence, `[batch]`.
    pub fn sum(&self) -> Tensor<1> {
        self.logps.clone().sum_dim(1).squeeze_dim(1)
    }

    /// Number of valid targets per sequence, `[batch]` (as floats).
    pub fn count(&self) -> Tensor<1> {
        self.mask.clone().sum_dim(1).squeeze_dim(1)
    }

    /// Mean over valid targets per sequence, `[batch]` (0 for a sequence with none).
    pub fn mean(&self) -> Tensor<1> {
        self.sum() / self.count().clamp_min(1.0)
    }

    /// Rows `range` of the batch (e.g. the chosen half of `[chosen; rejected]`).
    pub fn rows(&self, range: std::ops::Range<usize>) -> Self {
        let t = self.logps.dims()[1];
        Self {
            logps: self.logps.clone().slice([range.clone(), 0..t]),
            mask: self.mask.clone().slice([range, 0..t]),
        }
    }
}

/// Shifted targets and their mask: `labels[:, 1:]` with ignored entries replaced by 0 (a valid
/// index for `gather`), and the float mask of valid targets. Shapes `[batch, seq − 1]`.
///
/// # Errors
/// Sequences shorter than two tokens (nothing to predict).
pub fn shift_labels(labels: Tensor<2, Int>) -> Result<(Tensor<2, Int>, Tensor<2>)> {
    let [b, t] = labels.dims();
    if t < 2 {
        return Err(ObjectiveError::Invalid(format!(
            "labels of length {t}: need at least 2 positions to predict a next token"
        )));
    }
    let targets = labels.slice([0..b, 1..t]);
    let ignored = targets.clone().equal_elem(IGNORE_INDEX);
    let mask = ignored.clone().bool_not().float();
    Ok((targets.mask_fill(ignored, 0), mask))
}

/// Per-token log-probs from dense logits `[batch, seq, vocab]` and labels `[batch, seq]`.
///
/// # Errors
/// Mismatched batch/sequence sizes, or sequences shorter than two tokens.
pub fn token_logps(logits: Tensor<3>, labels: Tensor<2, Int>) -> Result<TokenLogps> {
    let [b, t, v] = logits.dims();
    let [lb, lt] = labels.dims();
    if (b, t) != (lb, lt) {
        return Err(ObjectiveError::Invalid(format!(
            "logits are [{b}, {t}, {v}] but labels are [{lb}, {lt}]"
        )));
    }
    let (targets, mask) = shift_labels(labels)?;
    let logp = log_softmax(logits.slice([0..b, 0..t - 1, 0..v]), 2);
    let picked = logp
        .gather(2, targets.unsqueeze_dim::<3>(2))
        .squeeze_dim::<2>(2);
    Ok(TokenLogps {
        logps: picked * mask.clone(),
        mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn log_probs_follow_the_shift_and_ignore_masked_targets() -> Result<()> {
        let device = Device::flex();
        // One sequence of 3 positions over a vocabulary of 2.
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 0.0, 5.0, 5.0], [1, 3, 2]),
            &device,
        );
        let labels =
            Tensor::<2, Int>::from_data(TensorData::new(vec![7i64, 1, -100], [1, 3]), &device);
        let out = token_logps(logits, labels)?;
        let got: Vec<f32> = out
            .logps
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| ObjectiveError::Invalid(format!("{e:?}")))?;
        // Position 0 predicts label 1 with logits [0, 1]: 1 − ln(1 + e) ; position 1 is ignored.
        let want = 1.0 - (1.0f32 + 1.0f32.exp()).ln();
        assert!((got[0] - want).abs() < 1e-6, "{got:?}");
        assert_eq!(got[1], 0.0);
        let mask: Vec<f32> = out
            .mask
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| ObjectiveError::Invalid(format!("{e:?}")))?;
        assert_eq!(mask, vec![1.0, 0.0]);
        Ok(())
    }
}
