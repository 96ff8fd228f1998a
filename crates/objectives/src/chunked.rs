//! Per-token log-probabilities straight from the final hidden states and the LM-head weight,
//! computed in vocabulary tiles — the `[batch, seq, vocab]` logits never exist.
//!
//! For each row `n` (one position of one sequence) with hidden state `h_n` and target `y_n`:
//!
//! ```text
//! logp_n = h_n · W[:, y_n] − logsumexp_v (h_n · W[:, v])
//! ```
//!
//! The computation is one fused op of the backend layer,
//! [`temper_backend::kernels::lm_head_logps`] (its maths in [`temper_backend::kernels::lm_head`]):
//! an online log-sum-exp over vocabulary tiles of [`ChunkConfig::vocab_tile`] columns in f32
//! (f64 for f64 inputs, f32 also for bf16/f16 inputs), so only one
//! `[row_block, vocab_tile]` block of logits is alive at a time. This module prepares its inputs:
//! the HF label shift, the rows whose target is `-100` (prompts, padding) dropped before the
//! head and their log-probs put back as 0, the checks that name the bad input, and the TRL
//! statistics.
//!
//! ## Gradients without the logits
//!
//! Naively tiling with differentiable tensor ops would keep every tile's logits (and softmax)
//! alive for the backward pass — all of `[rows, vocab]` again, and burn's gradient
//! checkpointing does not help (it recomputes memory-bound ops but keeps matmul outputs). The
//! op's autodiff node keeps only `h`, `W` (the existing buffers, not copies), the targets and
//! the per-row log-sum-exp (`[rows]`); its backward recomputes each tile's softmax (one extra
//! `h · W_tile` matmul per tile) and accumulates `∂L/∂h` and `∂L/∂W` tile by tile, each only
//! for an input that needs it (with a frozen LM head the weight-gradient matmul is skipped).
//!
//! Cost: 4 `rows × hidden × vocab` matmuls for both gradients (dense: 3), 3 with a frozen head
//! (dense: 2); the dense path's elementwise passes over `[rows, vocab]` and their allocations
//! are gone, so the wall time stays close (figures in `docs/benchmarks.md`).
//!
//! On Flex (f32) the tiles run as Temper's fused kernel, and when the logits of the whole call
//! fit in [`ChunkConfig::max_kept_logits_bytes`] (default 256 MiB: 1,365 rows of a 49,152-word
//! vocabulary) the forward keeps them for the backward, which then skips the recompute matmul
//! — the dense path's matmul count, with one f32 logits buffer instead of the dense path's
//! logits, softmax and gradient tensors. Set it to 0 for strictly tile-bounded memory.
//!
//! The node exists on every backend with Temper's fused ops (Flex, and the CubeCL backends
//! wgpu/cuda), with or without gradient checkpointing; [`bounded_backward`] says whether a
//! device has it. Elsewhere, or with `TEMPER_KERNELS=reference:lm_head`, the same tile loop runs
//! in differentiable tensor ops: values and gradients are identical, but backward memory is
//! again proportional to `rows × vocab`. Without autodiff (e.g. a reference model's forward)
//! every backend takes the bounded-memory path.

use burn::tensor::{DType, Device, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};
use temper_backend::kernels::{self, FusedOp, KernelPath, VocabTiling};

use crate::logprobs::{TokenLogps, shift_labels};
use crate::metrics::TokenStats;
use crate::{ObjectiveError, Result};

/// Tile sizes of the chunked log-prob computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkConfig {
    /// Vocabulary columns per tile (default 4096).
    pub vocab_tile: usize,
    /// Rows (positions) per block (default 4096). One live logits block is
    /// `row_block × vocab_tile` f32 values — 64 MiB with the defaults.
    pub row_block: usize,
    /// Under autodiff on Flex, the forward keeps the `rows × vocab` f32 logits for the
    /// backward pass when they take at most this many bytes (default 256 MiB; 0 never), which
    /// saves the backward's recompute gemm — a third of the head's backward work. Above it,
    /// or on other backends, the tiles are recomputed and memory stays bounded by one block.
    pub max_kept_logits_bytes: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            vocab_tile: 4096,
            row_block: 4096,
            max_kept_logits_bytes: 256 << 20,
        }
    }
}

impl ChunkConfig {
    /// A config with `vocab_tile` columns per tile and the default row block.
    pub fn with_vocab_tile(vocab_tile: usize) -> Self {
        Self {
            vocab_tile,
            ..Self::default()
        }
    }

    /// Whether the logits of `rows × vocab` are kept for the backward (see
    /// [`max_kept_logits_bytes`](Self::max_kept_logits_bytes)).
    fn keeps_logits(&self, rows: usize, vocab: usize) -> bool {
        rows.saturating_mul(vocab).saturating_mul(4) <= self.max_kept_logits_bytes
    }

    /// The tile sizes as the backend op takes them.
    fn tiling(&self) -> VocabTiling {
        VocabTiling::new(self.vocab_tile, self.row_block)
    }

    fn check(&self) -> Result<()> {
        if self.vocab_tile == 0 || self.row_block == 0 {
            return Err(ObjectiveError::Invalid(format!(
                "chunk sizes must be positive, got vocab_tile {} and row_block {}",
                self.vocab_tile, self.row_block
            )));
        }
        Ok(())
    }
}

/// The LM-head weight of a model in the `[hidden, vocab]` layout [`chunked_token_logps`]
/// takes: `lm_head.weight` (burn's `Linear` stores `[in, out]`), or the transposed token
/// embedding when the model ties them (SmolLM2). Gradients flow back to the parameter either
/// way.
pub fn lm_head_weight(model: &temper_llm_arch::LlamaForCausalLM) -> Tensor<2> {
    match &model.lm_head {
        Some(head) => head.weight.val(),
        None => model.model.embed_tokens.weight.val().transpose(),
    }
}

/// Per-token log-probs from final hidden states `[batch, seq, hidden]`, the LM-head weight
/// `[hidden, vocab]` (see [`lm_head_weight`]) and labels `[batch, seq]`, with the HF shift and
/// `-100` ignored — the same [`TokenLogps`] as
/// [`token_logps`](crate::token_logps)`(lm_head(hidden), labels)` (log-probs in f32), without
/// materialising the logits. Rows whose target is ignored are skipped entirely (the labels
/// are read back to the host once for that, and to check every id is inside the vocabulary).
///
/// # Errors
/// Mismatched shapes, sequences shorter than two tokens, a target id outside the vocabulary,
/// zero tile sizes.
pub fn chunked_token_logps(
    hidden: Tensor<3>,
    weight: Tensor<2>,
    labels: Tensor<2, Int>,
    config: &ChunkConfig,
) -> Result<TokenLogps> {
    Ok(chunked(hidden, weight, labels, config, false)?.0)
}

/// [`chunked_token_logps`] plus the detached per-token statistics of TRL's metrics
/// ([`TokenStats`]: entropy, top-1 hit, vocabulary-mean logit, token counts) from the same
/// tiles, so `dpo_loss(.., Some(&stats))` and friends need no dense logits either.
/// `attention_mask` `[batch, seq]` is 1 on real tokens.
///
/// Entropy is accumulated online like the log-sum-exp (`H = log s − Σ e^(z−m)(z−m) / s`);
/// the top-1 prediction is the first maximal logit (as `argmax`); the vocabulary-mean logit at
/// every position is `h · (Σ_v W[:, v]) / V`. All statistics are in f32 (f64 for f64 inputs).
///
/// # Errors
/// See [`chunked_token_logps`]; an attention mask of another shape.
pub fn chunked_token_logps_with_stats(
    hidden: Tensor<3>,
    weight: Tensor<2>,
    labels: Tensor<2, Int>,
    attention_mask: Tensor<2, Int>,
    config: &ChunkConfig,
) -> Result<(TokenLogps, TokenStats)> {
    let [b, t, h] = hidden.dims();
    let v = weight.dims()[1];
    if attention_mask.dims() != [b, t] {
        return Err(ObjectiveError::Invalid(format!(
            "hidden states are [{b}, {t}, {h}] but the attention mask is {:?}",
            attention_mask.dims()
        )));
    }
    let cd = compute_dtype(hidden.dtype(), weight.dtype());
    // Mean logit of every position (prompt, padding and the last one included).
    let col_sum = weight
        .clone()
        .detach()
        .cast(cd)
        .sum_dim(1) // [hidden, 1]
        .div_scalar(v.max(1) as f64);
    let mean_logit = hidden
        .clone()
        .detach()
        .cast(cd)
        .reshape([b * t, h])
        .matmul(col_sum)
        .reshape([b, t]);
    let (logps, rows) = chunked(hidden, weight, labels, config, true)?;
    let (entropy, is_top1) = match rows {
        Some(r) => r,
        None => {
            let zeros = Tensor::<2>::zeros([b, t - 1], (&logps.mask.device(), DType::from(cd)));
            (zeros.clone(), zeros)
        }
    };
    let mask = logps.mask.clone().cast(cd);
    let stats = TokenStats {
        entropy: entropy.detach(),
        is_top1: is_top1.detach(),
        mask,
        mean_logit,
        num_tokens: attention_mask
            .float()
            .cast(cd)
            .sum_dim(1)
            .squeeze_dim::<1>(1),
    };
    Ok((logps, stats))
}

/// Per-row statistics of the forward pass (detached): entropy and the first argmax.
type RowStats = (Tensor<1>, Tensor<1, Int>);

/// The shared body of [`chunked_token_logps`] and [`chunked_token_logps_with_stats`]: the
/// log-probs and, with `with_stats`, entropy and top-1 hit `[batch, seq − 1]`.
fn chunked(
    hidden: Tensor<3>,
    weight: Tensor<2>,
    labels: Tensor<2, Int>,
    config: &ChunkConfig,
    with_stats: bool,
) -> Result<(TokenLogps, Option<(Tensor<2>, Tensor<2>)>)> {
    config.check()?;
    let [b, t, h] = hidden.dims();
    let [wh, v] = weight.dims();
    let [lb, lt] = labels.dims();
    if (b, t) != (lb, lt) || h != wh {
        return Err(ObjectiveError::Invalid(format!(
            "hidden states are [{b}, {t}, {h}], the LM-head weight [{wh}, {v}] (expected \
             [hidden, vocab]) and labels [{lb}, {lt}]"
        )));
    }
    let device = hidden.device();
    let (targets, mask) = shift_labels(labels)?;
    let n = b * (t - 1);
    let mask_host = to_f32_vec(mask.to_data())?;
    let target_host = to_i64_vec(targets.to_data())?;
    let valid: Vec<i64> = (0..n)
        .filter(|&i| mask_host[i] != 0.0)
        .map(|i| i as i64)
        .collect();
    if let Some(&bad) = target_host.iter().find(|&&y| y < 0 || y >= v as i64) {
        return Err(ObjectiveError::Invalid(format!(
            "target id {bad} is outside the vocabulary of {v} (ignored targets must be -100)"
        )));
    }
    let rows = hidden.slice([0..b, 0..t - 1, 0..h]).reshape([n, h]);
    let targets = targets.reshape([n]);
    if valid.is_empty() {
        // Nothing to predict: zeros, still attached to both inputs (zero gradients) so that a
        // loss built on them can be back-propagated like the dense path's.
        let anchor = rows.slice([0..1, 0..1]).reshape([1]) * 0.0
            + weight.slice([0..1, 0..1]).reshape([1]) * 0.0;
        let cd = compute_dtype(anchor.dtype(), anchor.dtype());
        let logps = Tensor::<1>::zeros([n], &device).cast(cd) + anchor.cast(cd);
        let logps = TokenLogps {
            logps: logps.reshape([b, t - 1]),
            mask,
        };
        return Ok((logps, None));
    }
    let all = valid.len() == n;
    let idx = Tensor::<1, Int>::from_data(TensorData::new(valid.clone(), [valid.len()]), &device);
    let (rows, row_targets) = if all {
        (rows, targets)
    } else {
        (rows.select(0, idx.clone()), targets.select(0, idx.clone()))
    };
    let (picked, stats) = target_logps_impl(rows, weight, row_targets.clone(), config, with_stats)?;
    // Back to all `n` rows, 0 where the target is ignored.
    let spread = |x: Tensor<1>| {
        if all {
            x
        } else {
            let zeros = Tensor::<1>::zeros([n], (&x.device(), x.dtype()));
            zeros.select_assign(0, idx.clone(), x, IndexingUpdateOp::Add)
        }
    };
    let stats = stats.map(|(entropy, argmax)| {
        // Constants on the device of the log-probs.
        let lift = |x: Tensor<1>| {
            // Under the log-probs' checkpointing strategy: `autodiff()` alone gives the
            // default one, which refuses to meet a checkpointed tensor.
            let x = x.inner();
            match picked.gradient_checkpointing_strategy() {
                Some(strategy) => x.autodiff().with_gradient_checkpointing_strategy(strategy),
                None => x,
            }
        };
        let hit = argmax
            .inner()
            .equal(row_targets.inner())
            .float()
            .cast(FloatDType::from(picked.dtype()));
        (
            spread(lift(entropy)).reshape([b, t - 1]),
            spread(lift(hit)).reshape([b, t - 1]),
        )
    });
    let logps = TokenLogps {
        logps: spread(picked).reshape([b, t - 1]),
        mask,
    };
    Ok((logps, stats))
}

/// `log softmax(hidden · weight)[n, targets[n]]` for every row: `hidden` `[rows, hidden]`,
/// `weight` `[hidden, vocab]`, `targets` `[rows]` (all valid ids). Returns `[rows]` in f32
/// (f64 for f64 inputs).
///
/// Differentiable with respect to `hidden` and `weight`; see the [module docs](self) for how
/// memory stays bounded under autodiff.
///
/// # Errors
/// Mismatched shapes or zero tile sizes.
pub fn target_logps(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    config: &ChunkConfig,
) -> Result<Tensor<1>> {
    Ok(target_logps_impl(hidden, weight, targets, config, false)?.0)
}

fn target_logps_impl(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    config: &ChunkConfig,
    with_stats: bool,
) -> Result<(Tensor<1>, Option<RowStats>)> {
    config.check()?;
    let [n, h] = hidden.dims();
    let [wh, v] = weight.dims();
    let [tn] = targets.dims();
    if h != wh || n != tn || v == 0 {
        return Err(ObjectiveError::Invalid(format!(
            "hidden [{n}, {h}], weight [{wh}, {v}] (expected [hidden, vocab]) and targets \
             [{tn}] do not fit together"
        )));
    }
    // Keeping the logits pays only for a backward pass.
    let keep = (hidden.is_autodiff() || weight.is_autodiff()) && config.keeps_logits(n, v);
    let out = kernels::lm_head_logps(hidden, weight, targets, config.tiling(), with_stats, keep);
    Ok((out.logps, out.stats))
}

/// Whether [`target_logps`] / [`chunked_token_logps`] keep backward memory bounded on
/// `device`: true without autodiff (there is no backward) and for autodiff devices of the
/// backends with Temper's fused ops (Flex; CubeCL with `temper-backend`'s `wgpu`/`cuda`);
/// false where the differentiable-ops fallback runs (values and gradients are the same, memory
/// is not), including under `TEMPER_KERNELS=reference:lm_head`.
pub fn bounded_backward(device: &Device) -> bool {
    !device.is_autodiff()
        || kernels::kernel_path_for(FusedOp::LmHead, device, DType::F32) == KernelPath::Fused
}

fn to_f32_vec(data: TensorData) -> Result<Vec<f32>> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ObjectiveError::Invalid(format!("reading a mask: {e:?}")))
}

fn to_i64_vec(data: TensorData) -> Result<Vec<i64>> {
    data.convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| ObjectiveError::Invalid(format!("reading targets: {e:?}")))
}

/// The accumulation dtype: f64 for f64 inputs, f32 for everything else (f32, bf16, f16).
fn compute_dtype(a: DType, b: DType) -> FloatDType {
    if a == DType::F64 || b == DType::F64 {
        FloatDType::F64
    } else {
        FloatDType::F32
    }
}
