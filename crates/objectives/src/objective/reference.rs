//! Where reference log-probs come from: a frozen model, a precomputed cache, or a trainer's
//! own source (`temper-train`'s LoRA runs use the policy with its adapters disabled).

use burn::tensor::{Device, Tensor};
use temper_llm_arch::LlamaForCausalLM;

use crate::chunked::{ChunkConfig, chunked_token_logps, lm_head_weight};
use crate::data::{Batch, PreferenceBatch};
use crate::preference::RefLogps;
use crate::ref_cache::RefCache;
use crate::{ObjectiveError, Result};

/// Reference log-probs for objectives that compare against a reference (DPO, KTO).
pub trait ReferenceLogps {
    /// Σ of the label log-probs of every row of `batch` under the reference, on the host, in
    /// row order (no gradient).
    ///
    /// # Errors
    /// A source that cannot score arbitrary sequences, forward failures.
    fn sequence_logps(&self, batch: &Batch) -> Result<Vec<f32>>;

    /// The reference log-probs of a preference micro-batch; `rows` are the indices of its
    /// pairs in the training data. Default: [`sequence_logps`](Self::sequence_logps) of the
    /// `[chosen; rejected]` rows, split in halves.
    ///
    /// # Errors
    /// See [`sequence_logps`](Self::sequence_logps); pairs a cache does not hold.
    fn pair_logps(
        &self,
        batch: &PreferenceBatch,
        rows: &[usize],
        device: &Device,
    ) -> Result<RefLogps> {
        let _ = rows;
        stacked_pair_logps(&self.sequence_logps(&batch.batch)?, device)
    }
}

/// The reference log-probs of `[chosen; rejected]` row sums (what
/// [`ReferenceLogps::pair_logps`] does by default, for sources that override it only in part).
///
/// # Errors
/// An odd number of sums.
pub fn stacked_pair_logps(sums: &[f32], device: &Device) -> Result<RefLogps> {
    if !sums.len().is_multiple_of(2) {
        return Err(ObjectiveError::Invalid(format!(
            "{} reference sums for a [chosen; rejected] batch",
            sums.len()
        )));
    }
    let b = sums.len() / 2;
    RefLogps::from_values(&sums[..b], &sums[b..], device)
}

/// No reference: every request is an error (objectives that need one are refused earlier by
/// trainers that check [`TrainObjective::needs_reference`](super::TrainObjective::needs_reference)).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReference;

impl ReferenceLogps for NoReference {
    fn sequence_logps(&self, _batch: &Batch) -> Result<Vec<f32>> {
        Err(ObjectiveError::Invalid(
            "this objective needs reference log-probs (a frozen model or a reference cache)".into(),
        ))
    }
}

/// A frozen reference model, run on its own device (typically without autodiff); its
/// log-probs come back through the host.
#[derive(Debug, Clone, Copy)]
pub struct ModelReference<'a> {
    model: &'a LlamaForCausalLM,
    chunk: &'a ChunkConfig,
}

impl<'a> ModelReference<'a> {
    /// `model` scored with the vocabulary tiling `chunk`.
    pub fn new(model: &'a LlamaForCausalLM, chunk: &'a ChunkConfig) -> Self {
        Self { model, chunk }
    }
}

impl ReferenceLogps for ModelReference<'_> {
    fn sequence_logps(&self, batch: &Batch) -> Result<Vec<f32>> {
        let device = self.model.device();
        let tensors = batch.to_tensors(&device);
        let hidden =
            self.model
                .forward_hidden(tensors.input_ids, &batch.forward_options(&device), None)?;
        let logps = chunked_token_logps(
            hidden,
            lm_head_weight(self.model),
            tensors.labels,
            self.chunk,
        )?;
        host_values(logps.sum())
    }
}

/// A precomputed cache holds pairs only (indexed like the training pairs), so it answers
/// [`pair_logps`](ReferenceLogps::pair_logps) and nothing else.
impl ReferenceLogps for RefCache {
    fn sequence_logps(&self, _batch: &Batch) -> Result<Vec<f32>> {
        Err(ObjectiveError::Invalid(
            "the reference cache holds preference pairs only; this objective needs a reference \
             model"
                .into(),
        ))
    }

    fn pair_logps(
        &self,
        _batch: &PreferenceBatch,
        rows: &[usize],
        device: &Device,
    ) -> Result<RefLogps> {
        let pick = |v: &[f32]| -> Result<Vec<f32>> {
            rows.iter()
                .map(|&i| {
                    v.get(i).copied().ok_or_else(|| {
                        ObjectiveError::Invalid(format!("pair {i} is not in the reference cache"))
                    })
                })
                .collect()
        };
        RefLogps::from_values(
            &pick(&self.chosen_logps)?,
            &pick(&self.rejected_logps)?,
            device,
        )
    }
}

/// A `[n]` tensor's values on the host.
pub(crate) fn host_values(t: Tensor<1>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ObjectiveError::Invalid(format!("reading log-probs back: {e:?}")))
}
