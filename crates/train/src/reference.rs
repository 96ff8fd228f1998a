//! Where a run's reference log-probs come from, and the objectives' view of it.

use burn::tensor::Device;
use temper_llm_arch::LlamaForCausalLM;
use temper_objectives::data::{Batch, PreferenceBatch};
use temper_objectives::objective::{ReferenceLogps, stacked_pair_logps};
use temper_objectives::{
    ChunkConfig, ModelReference, NoReference, ObjectiveError, RefCache, RefLogps,
    chunked_token_logps, lm_head_weight,
};

use crate::TrainError;
use crate::finetune::FineTuning;

/// Where DPO/KTO reference log-probs come from.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per trainer; boxing buys nothing
pub enum Reference {
    /// The objective needs no reference (CPT, SFT, ORPO, SimPO, CPO).
    None,
    /// A frozen model (a copy of the initial policy, or another checkpoint); run without
    /// autodiff, its log-probs go through the host to the policy's device.
    Model(LlamaForCausalLM),
    /// Precomputed reference log-probs of the training pairs, indexed like the training rows
    /// (preference pairs only). Evaluation then needs a model reference and is skipped
    /// otherwise.
    Cache(RefCache),
    /// The fine-tuning method's own reference (LoRA with adapters disabled).
    FromFineTuning,
}

/// A [`Reference`] as the objectives see it during one loss computation.
pub(crate) struct RunReference<'a> {
    pub(crate) reference: &'a Reference,
    pub(crate) fine_tuning: &'a dyn FineTuning,
    /// The policy (for [`Reference::FromFineTuning`]).
    pub(crate) policy: &'a LlamaForCausalLM,
    pub(crate) chunk: &'a ChunkConfig,
}

fn reference_error(e: TrainError) -> ObjectiveError {
    match e {
        TrainError::Objective(e) => e,
        other => ObjectiveError::Reference(Box::new(other)),
    }
}

impl ReferenceLogps for RunReference<'_> {
    fn sequence_logps(&self, batch: &Batch) -> temper_objectives::Result<Vec<f32>> {
        match self.reference {
            Reference::Model(model) => ModelReference::new(model, self.chunk).sequence_logps(batch),
            Reference::FromFineTuning => {
                let device = self.policy.device();
                let tensors = batch.to_tensors(&device);
                let options = batch.forward_options(&device);
                let hidden = self
                    .fine_tuning
                    .reference_hidden(self.policy, tensors.input_ids, &options)
                    .ok_or_else(|| {
                        ObjectiveError::Invalid(format!(
                            "fine-tuning method `{}` has no built-in reference",
                            self.fine_tuning.name()
                        ))
                    })?
                    .map_err(reference_error)?
                    .detach();
                let logps = chunked_token_logps(
                    hidden,
                    lm_head_weight(self.policy).detach(),
                    tensors.labels,
                    self.chunk,
                )?;
                Ok(logps.sum().into_data().iter::<f32>().collect())
            }
            Reference::Cache(cache) => cache.sequence_logps(batch),
            Reference::None => NoReference.sequence_logps(batch),
        }
    }

    fn pair_logps(
        &self,
        batch: &PreferenceBatch,
        rows: &[usize],
        device: &Device,
    ) -> temper_objectives::Result<RefLogps> {
        match self.reference {
            Reference::Cache(cache) => cache.pair_logps(batch, rows, device),
            _ => stacked_pair_logps(&self.sequence_logps(&batch.batch)?, device),
        }
    }
}
