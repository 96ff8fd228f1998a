//! What the losses report besides the loss: [`Metrics`] (TRL's logged names → values),
//! [`TokenStats`] (the detached per-token statistics those metrics are computed from) and
//! [`LossOutput`].
//!
//! TRL logs, per step, the mean of each metric over the batch; it averages them again over the
//! logging window. The values here are per batch: average them yourself over a logging window,
//! and sum `num_tokens` over steps to get TRL's cumulative count.

use std::ops::Range;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, DType, FloatDType, Int, Tensor};
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::{ObjectiveError, Result, shift_labels};

/// Metric name → value, in insertion order (the order TRL logs them in).
///
/// Names are TRL's (`rewards/chosen`, `logps/rejected`, `nll_loss`, ...); [`Metrics::with_prefix`]
/// adds TRL's `eval_` prefix for evaluation. Serialises as a JSON object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    entries: Vec<(String, f64)>,
}

impl Metrics {
    /// No metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`; an existing name keeps its position.
    pub fn insert(&mut self, name: impl Into<String>, value: f64) {
        let name = name.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((name, value)),
        }
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| *value)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Number of metrics.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(name, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        self.entries.iter().map(|(n, v)| (n.as_str(), *v))
    }

    /// The names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Inserts every metric of `other` (overwriting equal names).
    pub fn extend(&mut self, other: Metrics) {
        for (name, value) in other.entries {
            self.insert(name, value);
        }
    }

    /// Every name prefixed, e.g. `"eval_"` as TRL does during evaluation.
    #[must_use]
    pub fn with_prefix(self, prefix: &str) -> Self {
        Self {
            entries: self
                .entries
                .into_iter()
                .map(|(n, v)| (format!("{prefix}{n}"), v))
                .collect(),
        }
    }
}

impl FromIterator<(String, f64)> for Metrics {
    fn from_iter<I: IntoIterator<Item = (String, f64)>>(iter: I) -> Self {
        let mut metrics = Self::new();
        for (name, value) in iter {
            metrics.insert(name, value);
        }
        metrics
    }
}

impl IntoIterator for Metrics {
    type Item = (String, f64);
    type IntoIter = std::vec::IntoIter<(String, f64)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl Serialize for Metrics {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (name, value) in &self.entries {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A loss and the metrics TRL logs with it.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The scalar loss, shape `[1]`; call `backward()` on it.
    pub loss: Tensor<1>,
    /// TRL's metrics for this batch (detached values).
    pub metrics: Metrics,
}

/// Detached per-token statistics of a batch, the inputs of TRL's `entropy`,
/// `mean_token_accuracy`, `logits/*` and `num_tokens` metrics.
///
/// These are what TRL 1.16's fused LM head returns next to the log-probs (`entropy`,
/// `mean_logits`, `is_top1`); a chunked log-prob path can fill them without materialising the
/// logits. Shapes for a batch of `B` rows of length `T`:
#[derive(Debug, Clone)]
pub struct TokenStats {
    /// Entropy of the next-token distribution, `[B, T − 1]`, 0 where the target is ignored.
    pub entropy: Tensor<2>,
    /// 1 where the target token is the top-1 prediction (ties go to the lowest index, like
    /// `argmax`), `[B, T − 1]`, 0 where the target is ignored.
    pub is_top1: Tensor<2>,
    /// 1 where the target counts, `[B, T − 1]`.
    pub mask: Tensor<2>,
    /// Mean over the vocabulary of the logits at *every* position (prompt, padding and the last
    /// position included), `[B, T]`: DPO/KTO average it over completion targets, ORPO over all
    /// of the first `T − 1` positions, CPO over all `T` positions.
    pub mean_logit: Tensor<2>,
    /// Σ of the attention mask per row (real tokens, padding excluded), `[B]`.
    pub num_tokens: Tensor<1>,
}

impl TokenStats {
    /// Statistics from dense logits `[B, T, V]`, labels `[B, T]` (aligned with the inputs,
    /// `-100` ignored; the same labels as the log-probs) and the attention mask `[B, T]`
    /// (1 on real tokens). The logits are detached: nothing here takes part in the gradient.
    ///
    /// Cost: a log-softmax and a few `[B, T, V]` temporaries (two of them boolean) on top of
    /// the logits — fine where the dense logits exist anyway; a chunked log-prob path should
    /// fill a `TokenStats` tile by tile instead.
    ///
    /// # Errors
    /// Mismatched shapes, or sequences shorter than two tokens.
    pub fn from_logits(
        logits: Tensor<3>,
        labels: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Result<Self> {
        let [b, t, v] = logits.dims();
        if labels.dims() != [b, t] || attention_mask.dims() != [b, t] {
            return Err(ObjectiveError::Invalid(format!(
                "logits are [{b}, {t}, {v}] but labels are {:?} and the attention mask {:?}",
                labels.dims(),
                attention_mask.dims()
            )));
        }
        let dtype = logits.dtype();
        let device = logits.device();
        let logits = logits.detach();
        let (targets, mask) = shift_labels(labels)?;
        let mask = like(mask, dtype);

        let mean_logit = logits.clone().mean_dim(2).squeeze_dim::<2>(2);
        let shifted = logits.slice([0..b, 0..t - 1, 0..v]);

        // H = −Σ_v p_v log p_v, from the log-softmax (no overflow, no 0·log 0).
        let logp = log_softmax(shifted.clone(), 2);
        let entropy = (logp.clone().exp() * logp)
            .sum_dim(2)
            .squeeze_dim::<2>(2)
            .neg()
            * mask.clone();

        // Top-1 with argmax's tie rule: the target logit is ≥ every logit, and strictly greater
        // than every logit of a smaller index.
        let target_idx = targets.unsqueeze_dim::<3>(2);
        let target_logit = shifted.clone().gather(2, target_idx.clone());
        let at_max = target_logit
            .clone()
            .greater_equal(shifted.clone().max_dim(2));
        let vocab = Tensor::<1, Int>::arange(0..v as i64, &device)
            .reshape([1, 1, v])
            .expand([b, t - 1, v]);
        let earlier = vocab.lower(target_idx.expand([b, t - 1, v]));
        let tied_or_above = shifted.greater_equal(target_logit.expand([b, t - 1, v]));
        let beaten = earlier.bool_and(tied_or_above).any_dim(2);
        let is_top1 = like(at_max.bool_and(beaten.bool_not()).float(), dtype).squeeze_dim::<2>(2)
            * mask.clone();

        let num_tokens = like(attention_mask.float(), dtype)
            .sum_dim(1)
            .squeeze_dim::<1>(1);
        Ok(Self {
            entropy,
            is_top1,
            mask,
            mean_logit,
            num_tokens,
        })
    }

    /// Number of rows `B`.
    pub fn batch(&self) -> usize {
        self.mask.dims()[0]
    }

    /// Rows `range` (e.g. the chosen half of `[chosen; rejected]`).
    pub fn rows(&self, range: Range<usize>) -> Self {
        let [_, t1] = self.mask.dims();
        Self {
            entropy: self.entropy.clone().slice([range.clone(), 0..t1]),
            is_top1: self.is_top1.clone().slice([range.clone(), 0..t1]),
            mask: self.mask.clone().slice([range.clone(), 0..t1]),
            mean_logit: self.mean_logit.clone().slice([range.clone(), 0..t1 + 1]),
            num_tokens: self.num_tokens.clone().slice([range]),
        }
    }

    /// Rows at `indices` (in that order).
    pub fn select(&self, indices: Tensor<1, Int>) -> Self {
        Self {
            entropy: self.entropy.clone().select(0, indices.clone()),
            is_top1: self.is_top1.clone().select(0, indices.clone()),
            mask: self.mask.clone().select(0, indices.clone()),
            mean_logit: self.mean_logit.clone().select(0, indices.clone()),
            num_tokens: self.num_tokens.clone().select(0, indices),
        }
    }

    /// Number of counted targets, `[1]`, at least 1 (so empty batches give 0-valued means).
    fn target_count(&self) -> Tensor<1> {
        self.mask.clone().sum().clamp_min(1.0)
    }

    /// TRL `entropy`: Σ entropy / Σ counted targets, `[1]` (0 with no targets).
    pub fn mean_entropy(&self) -> Tensor<1> {
        self.entropy.clone().sum() / self.target_count()
    }

    /// TRL `mean_token_accuracy`: fraction of counted targets that are the top-1 prediction,
    /// `[1]` (0 with no targets).
    pub fn top1_accuracy(&self) -> Tensor<1> {
        self.is_top1.clone().sum() / self.target_count()
    }

    /// TRL DPO/KTO `logits/*`: the vocabulary-mean logit averaged over counted target
    /// positions (token-weighted over the batch), `[1]` (0 with no targets).
    pub fn completion_logit_mean(&self) -> Tensor<1> {
        let [b, t1] = self.mask.dims();
        let shifted = self.mean_logit.clone().slice([0..b, 0..t1]);
        (shifted * self.mask.clone()).sum() / self.target_count()
    }

    /// TRL ORPO `logits/*`: mean of all logits at positions `0..T − 1` (prompt and padding
    /// included), `[1]`.
    pub fn shifted_logit_mean(&self) -> Tensor<1> {
        let [b, t1] = self.mask.dims();
        self.mean_logit.clone().slice([0..b, 0..t1]).mean()
    }

    /// TRL CPO/SimPO `logits/*`: mean of all logits at every position, `[1]`.
    pub fn logit_mean(&self) -> Tensor<1> {
        self.mean_logit.clone().mean()
    }

    /// TRL `num_tokens` of this batch: Σ attention mask, `[1]`.
    pub fn total_tokens(&self) -> Tensor<1> {
        self.num_tokens.clone().sum()
    }
}

/// `t` in dtype `dtype` (a no-op when it already is).
pub(crate) fn like<const D: usize>(t: Tensor<D>, dtype: DType) -> Tensor<D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(FloatDType::from(dtype))
    }
}

/// `1.0`/`0.0` from a boolean tensor, in `dtype`.
pub(crate) fn bool_as<const D: usize>(b: Tensor<D, Bool>, dtype: DType) -> Tensor<D> {
    like(b.float(), dtype)
}

/// Named `[1]` tensors read back to the host in one transfer.
///
/// The first entry is the loss: it is checked for NaN/∞ and not reported as a metric.
pub(crate) struct Readback {
    loss: Tensor<1>,
    names: Vec<&'static str>,
    values: Vec<Tensor<1>>,
}

impl Readback {
    /// Starts with the loss `[1]`.
    pub(crate) fn new(loss: &Tensor<1>) -> Self {
        Self {
            loss: loss.clone(),
            names: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Adds metric `name` = `value` (`[1]`, detached here).
    pub(crate) fn push(&mut self, name: &'static str, value: Tensor<1>) {
        self.names.push(name);
        self.values.push(value.detach());
    }

    /// Reads everything, checks the loss is finite, and returns the loss output.
    ///
    /// # Errors
    /// The loss (named `what` in the error) is NaN or infinite, or reading back failed.
    pub(crate) fn finish(self, what: &str) -> Result<LossOutput> {
        // f64 stays f64; everything else (f32, and bf16/f16 training) is reported in f32.
        let dtype = match self.loss.dtype() {
            DType::F64 => DType::F64,
            _ => DType::F32,
        };
        let mut all = Vec::with_capacity(self.values.len() + 1);
        all.push(like(self.loss.clone().detach(), dtype));
        all.extend(self.values.into_iter().map(|t| like(t, dtype)));
        let data = Tensor::cat(all, 0)
            .try_into_data()
            .map_err(|e| ObjectiveError::Invalid(format!("reading {what} back: {e:?}")))?;
        let values: Vec<f64> = data.iter::<f64>().collect();
        let loss_value = values.first().copied().unwrap_or(f64::NAN);
        if !loss_value.is_finite() {
            return Err(ObjectiveError::NonFinite {
                what: what.to_string(),
                value: loss_value,
            });
        }
        let metrics = self
            .names
            .into_iter()
            .zip(values.into_iter().skip(1))
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        Ok(LossOutput {
            loss: self.loss,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn metrics_keep_insertion_order_and_replace_in_place() {
        let mut m = Metrics::new();
        m.insert("b", 1.0);
        m.insert("a", 2.0);
        m.insert("b", 3.0);
        assert_eq!(m.names().collect::<Vec<_>>(), vec!["b", "a"]);
        assert_eq!(m.get("b"), Some(3.0));
        let m = m.with_prefix("eval_");
        assert_eq!(m.get("eval_a"), Some(2.0));
        let json = serde_json::to_string(&m).expect("serialise");
        assert_eq!(json, r#"{"eval_b":3.0,"eval_a":2.0}"#);
    }

    #[test]
    fn top1_ties_go_to_the_lowest_index() -> Result<()> {
        let device = Device::flex();
        // Two rows, 2 positions, vocab 3. Row 0 position 0: logits [2, 2, 1], target 1 (tied
        // with index 0 → not top-1). Row 1 position 0: target 0 (tied with index 1 → top-1).
        let logits = Tensor::<3>::from_data(
            TensorData::new(
                vec![
                    2.0f32, 2.0, 1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0,
                ],
                [2, 2, 3],
            ),
            &device,
        );
        let labels =
            Tensor::<2, Int>::from_data(TensorData::new(vec![5i64, 1, 5, 0], [2, 2]), &device);
        let attn =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 1, 1, 0], [2, 2]), &device);
        let stats = TokenStats::from_logits(logits, labels, attn)?;
        let top1: Vec<f32> = stats
            .is_top1
            .into_data()
            .try_to_vec()
            .map_err(|e| ObjectiveError::Invalid(format!("{e:?}")))?;
        assert_eq!(top1, vec![0.0, 1.0]);
        let tokens: Vec<f32> = stats
            .num_tokens
            .into_data()
            .try_to_vec()
            .map_err(|e| ObjectiveError::Invalid(format!("{e:?}")))?;
        assert_eq!(tokens, vec![2.0, 1.0]);
        Ok(())
    }
}
