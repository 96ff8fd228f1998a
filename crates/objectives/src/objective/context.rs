//! What an objective's loss is computed from: the policy, the log-prob tiling, the
//! accumulation window and the reference.

use burn::tensor::{Int, Tensor};
use temper_llm_arch::LlamaForCausalLM;

use super::reference::ReferenceLogps;
use crate::Result;
use crate::chunked::{
    ChunkConfig, chunked_token_logps, chunked_token_logps_with_stats, lm_head_weight,
};
use crate::data::Batch;
use crate::logprobs::TokenLogps;
use crate::metrics::TokenStats;

/// The inputs of [`TrainObjective::loss`](super::TrainObjective::loss) besides the batch.
#[derive(Clone, Copy)]
pub struct LossContext<'a> {
    /// The model being trained (on an autodiff device while training; evaluation passes its
    /// inner, gradient-free model).
    pub policy: &'a LlamaForCausalLM,
    /// Vocabulary tiling of the log-probs (no `[batch, seq, vocab]` logits).
    pub chunk: &'a ChunkConfig,
    /// [`LossScaling::TokenSum`](super::LossScaling::TokenSum) objectives: the target tokens
    /// of the whole accumulation window, to divide the token-loss sum by; `None`: this
    /// micro-batch's own targets (evaluation, or no accumulation).
    pub num_items: Option<usize>,
    /// Where reference log-probs come from ([`NoReference`](super::NoReference) when there is
    /// none).
    pub reference: &'a dyn ReferenceLogps,
}

impl std::fmt::Debug for LossContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossContext")
            .field("chunk", self.chunk)
            .field("num_items", &self.num_items)
            .finish_non_exhaustive()
    }
}

/// The policy's forward pass over a batch: final hidden states, per-token log-probs of the
/// batch's labels and TRL's token statistics.
#[derive(Debug, Clone)]
pub struct PolicyForward {
    /// Final hidden states `[batch, seq, hidden]` (before the LM head).
    pub hidden: Tensor<3>,
    /// Per-token log-probs of the labels (HF shift, `-100` ignored).
    pub logps: TokenLogps,
    /// Entropy, top-1 hits, mean logits and token counts (detached).
    pub stats: TokenStats,
}

impl LossContext<'_> {
    /// Runs the policy over `batch`: hidden states, then the label log-probs and statistics
    /// in vocabulary tiles.
    ///
    /// # Errors
    /// Forward failures (shapes, ids outside the vocabulary).
    pub fn policy_forward(&self, batch: &Batch) -> Result<PolicyForward> {
        let device = self.policy.device();
        let tensors = batch.to_tensors(&device);
        let hidden =
            self.policy
                .forward_hidden(tensors.input_ids, &batch.forward_options(&device), None)?;
        let (logps, stats) = chunked_token_logps_with_stats(
            hidden.clone(),
            lm_head_weight(self.policy),
            tensors.labels,
            tensors.attention_mask,
            self.chunk,
        )?;
        Ok(PolicyForward {
            hidden,
            logps,
            stats,
        })
    }

    /// The policy's per-token log-probs of `batch`'s labels, without statistics (e.g. KTO's
    /// KL batch).
    ///
    /// # Errors
    /// Forward failures.
    pub fn policy_logps(&self, batch: &Batch) -> Result<TokenLogps> {
        let device = self.policy.device();
        let tensors = batch.to_tensors(&device);
        let hidden =
            self.policy
                .forward_hidden(tensors.input_ids, &batch.forward_options(&device), None)?;
        self.token_logps(hidden, tensors.labels)
    }

    /// Per-token log-probs of `labels` `[batch, seq]` from policy hidden states (e.g. other
    /// labels than the batch's own, as ORPO's NLL over prompt and completion).
    ///
    /// # Errors
    /// See [`chunked_token_logps`].
    pub fn token_logps(&self, hidden: Tensor<3>, labels: Tensor<2, Int>) -> Result<TokenLogps> {
        chunked_token_logps(hidden, lm_head_weight(self.policy), labels, self.chunk)
    }
}
