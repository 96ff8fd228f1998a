//! Per-token log-probabilities straight from the final hidden states and the LM-head weight,
//! computed in vocabulary tiles — the `[batch, seq, vocab]` logits never exist.
//!
//! For each row `n` (one position of one sequence) with hidden state `h_n` and target `y_n`:
//!
//! ```text
//! logp_n = h_n · W[:, y_n] − logsumexp_v (h_n · W[:, v])
//! ```
//!
//! The log-sum-exp runs over vocabulary tiles of `vocab_tile` columns with the *online* update
//! `m' = max(m, max_tile)`, `s' = s·e^(m − m') + Σ_tile e^(z − m')` in f32 (f64 for f64 inputs),
//! also for bf16/f16 inputs, so only one `[rows, vocab_tile]` block of logits is alive at a time.
//!
//! ## Gradients without the logits
//!
//! With upstream gradient `g_n` and `p_n = softmax(h_n W)`:
//!
//! ```text
//! ∂L/∂z_n   = g_n (e_{y_n} − p_n)                    (z = h W, never stored)
//! ∂L/∂h     = Σ_tiles (∂L/∂z)_tile · W_tileᵀ
//! ∂L/∂W_tile = hᵀ · (∂L/∂z)_tile
//! ```
//!
//! Naively tiling with differentiable tensor ops would keep every tile's logits (and softmax)
//! alive for the backward pass — all of `[rows, vocab]` again, and burn's gradient
//! checkpointing does not help (it recomputes memory-bound ops but keeps matmul outputs).
//! Instead this module registers its own autodiff node through burn-autodiff's public API
//! (`Backward`, `OpsPrep`, reached with `Tensor::try_into_primitive::<Autodiff<B, C>>`, no
//! backend-extension macro needed): the node keeps only `h`, `W` (the existing buffers, not
//! copies), the targets and the per-row log-sum-exp (`[rows]`), and its backward pass
//! recomputes each tile's softmax from them (one extra `h · W_tile` matmul per tile) and
//! accumulates the two gradients above tile by tile. Gradients are only computed for the inputs
//! that need them (with a frozen LM head the weight-gradient matmul is skipped).
//!
//! Cost: 4 `rows × hidden × vocab` matmuls for both gradients (dense: 3), 3 with a frozen head
//! (dense: 2); the dense path's elementwise passes over `[rows, vocab]` and their allocations
//! are gone, so the wall time stays close (figures in `docs/benchmarks.md`). Rows whose target
//! is `-100` (prompts, padding) are not computed at all.
//!
//! On Flex (f32) the tiles run as Temper's fused kernel
//! ([`temper_backend::kernels::target_logps_forward`]), and when the logits of the whole call
//! fit in [`ChunkConfig::max_kept_logits_bytes`] (default 256 MiB: 1,365 rows of a 49,152-word
//! vocabulary) the forward keeps them for the backward, which then skips the recompute matmul
//! — the dense path's matmul count, with one f32 logits buffer instead of the dense path's
//! logits, softmax and gradient tensors. Set it to 0 for strictly tile-bounded memory.
//!
//! The custom node is available for autodiff tensors of the backends this crate is compiled
//! for (cargo feature `flex`: burn's Flex CPU backend; `wgpu`/`cuda`: burn's CubeCL backend;
//! with or without gradient checkpointing). On any other backend under autodiff, [`target_logps`] falls back to the same
//! tiled computation with ordinary differentiable ops: values and gradients are identical, but
//! backward memory is again proportional to `rows × vocab`. Without autodiff (e.g. a reference
//! model's forward) every backend takes the bounded-memory path.

use burn::tensor::{DType, Device, FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};
use temper_backend::kernels::{VocabTiling, matmul, target_logps_backward, target_logps_forward};

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
#[derive(Debug, Clone)]
struct RowStats {
    entropy: Tensor<1>,
    argmax: Tensor<1, Int>,
}

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
    let stats = stats.map(|s| {
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
        let hit = s
            .argmax
            .inner()
            .equal(row_targets.inner())
            .float()
            .cast(FloatDType::from(picked.dtype()));
        (
            spread(lift(s.entropy)).reshape([b, t - 1]),
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
    if !hidden.is_autodiff() && !weight.is_autodiff() {
        let f = forward_values(hidden, weight, targets.inner(), *config, with_stats, false);
        return Ok((f.logps, f.stats));
    }
    #[cfg(feature = "flex")]
    let (hidden, weight, targets) = match custom::tracked_any::<burn::backend::Flex>(
        hidden, weight, targets, *config, with_stats,
    ) {
        Ok(out) => return Ok(out),
        Err(inputs) => *inputs,
    };
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let (hidden, weight, targets) = match custom::tracked_any::<burn::backend::Cube>(
        hidden, weight, targets, *config, with_stats,
    ) {
        Ok(out) => return Ok(out),
        Err(inputs) => *inputs,
    };
    // No custom node for this backend: differentiable tile ops (same values and gradients,
    // backward memory ∝ rows × vocab).
    let f = forward_values(hidden, weight, targets, *config, with_stats, false);
    Ok((f.logps, f.stats))
}

/// Whether [`target_logps`] / [`chunked_token_logps`] keep backward memory bounded on
/// `device`: true without autodiff (there is no backward) and for autodiff devices of the
/// backends the custom node is compiled for (Flex with `flex`, CubeCL with `wgpu`/`cuda`); false where the
/// differentiable-ops fallback runs (values and gradients are the same, memory is not).
pub fn bounded_backward(device: &Device) -> bool {
    if !device.is_autodiff() {
        return true;
    }
    let probe = Tensor::<1>::zeros([1], device);
    #[cfg(feature = "flex")]
    if custom::is_on::<burn::backend::Flex>(&probe) {
        return true;
    }
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if custom::is_on::<burn::backend::Cube>(&probe) {
        return true;
    }
    let _ = probe;
    false
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

/// Row blocks `[start, end)` of `n` rows.
fn blocks(n: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n.div_ceil(size)).map(move |i| (i * size, ((i + 1) * size).min(n)))
}

/// Where each target falls in the tile `[v0, v1)`: the in-tile column (clamped into range) and
/// 1.0 / 0.0 for inside / outside, both `[rows]`.
fn tile_targets(
    targets: &Tensor<1, Int>,
    v0: usize,
    v1: usize,
    dtype: FloatDType,
) -> (Tensor<1, Int>, Tensor<1>) {
    let local = targets.clone().sub_scalar(v0 as i64);
    let inside = local
        .clone()
        .greater_equal_elem(0)
        .bool_and(local.clone().lower_elem((v1 - v0) as i64))
        .float()
        .cast(dtype);
    (local.clamp(0, (v1 - v0 - 1) as i64), inside)
}

/// What the forward pass produces, all `[rows]`.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
struct Forward {
    logps: Tensor<1>,
    lse: Tensor<1>,
    stats: Option<RowStats>,
    /// The fused kernel's kept logits (see [`ChunkConfig::max_kept_logits_bytes`]).
    logits: Option<Tensor<1>>,
}

/// Online accumulators of one row block.
struct Online {
    /// Running max `[rows, 1]`.
    max: Tensor<2>,
    /// Σ e^(z − max) `[rows, 1]`.
    sum: Tensor<2>,
    /// Target logit (summed over the tile that holds it) `[rows]`.
    picked: Tensor<1>,
    /// Σ e^(z − max)(z − max) `[rows, 1]` and the best (value, index) so far, with stats.
    stats: Option<(Tensor<2>, Tensor<2>, Tensor<2, Int>)>,
}

/// Forward pass: per-row target log-prob and log-sum-exp (and, with `with_stats`, entropy and
/// first argmax), in the accumulation dtype.
///
/// Works on any tensors; on autodiff tensors it is the (memory-unbounded) differentiable
/// fallback, and the statistics are detached.
fn forward_values(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    config: ChunkConfig,
    with_stats: bool,
    keep_logits: bool,
) -> Forward {
    let tiling = VocabTiling {
        vocab_tile: config.vocab_tile,
        row_block: config.row_block,
    };
    if let Some(f) =
        target_logps_forward(&hidden, &weight, &targets, tiling, with_stats, keep_logits)
    {
        // Flex, f32: the same computation as one fused kernel per tile.
        return Forward {
            logps: f.logps,
            lse: f.lse,
            stats: f
                .stats
                .map(|(entropy, argmax)| RowStats { entropy, argmax }),
            logits: f.logits,
        };
    }
    let [n, h] = hidden.dims();
    let v = weight.dims()[1];
    let cd = compute_dtype(hidden.dtype(), weight.dtype());
    let hidden = hidden.cast(cd);
    let (mut logps, mut lses, mut entropies, mut argmaxes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (r0, r1) in blocks(n, config.row_block) {
        let hb = hidden.clone().slice([r0..r1, 0..h]);
        let tb = targets.clone().slice(r0..r1);
        let mut state: Option<Online> = None;
        for (v0, v1) in blocks(v, config.vocab_tile) {
            let wt = weight.clone().slice([0..h, v0..v1]).cast(cd);
            let logits = matmul(hb.clone(), wt); // [rows, tile]
            let (col, inside) = tile_targets(&tb, v0, v1, cd);
            let pick = logits
                .clone()
                .gather(1, col.unsqueeze_dim::<2>(1))
                .squeeze_dim::<1>(1)
                * inside;
            let tile_max = logits.clone().max_dim(1); // [rows, 1]
            let tile_best = with_stats.then(|| {
                let (val, idx) = logits.clone().detach().max_dim_with_indices(1);
                (val, idx.add_scalar(v0 as i64))
            });
            state = Some(match state {
                None => {
                    let shifted = logits - tile_max.clone();
                    let e = shifted.clone().exp();
                    let stats = tile_best.map(|(val, idx)| {
                        let u = (e.clone().detach() * shifted.detach()).sum_dim(1);
                        (u, val, idx)
                    });
                    Online {
                        sum: e.sum_dim(1),
                        max: tile_max,
                        picked: pick,
                        stats,
                    }
                }
                Some(Online {
                    max,
                    sum,
                    picked,
                    stats,
                }) => {
                    let m_new = max.clone().max_pair(tile_max);
                    let dm = max - m_new.clone(); // ≤ 0
                    let scale = dm.clone().exp();
                    let shifted = logits - m_new.clone();
                    let e = shifted.clone().exp();
                    let stats = match (stats, tile_best) {
                        (Some((u, best, best_idx)), Some((val, idx))) => {
                            // u' = e^(m − m')(u + (m − m')·s) + Σ_tile e^(z − m')(z − m').
                            let (sc, s) = (scale.clone().detach(), sum.clone().detach());
                            let u = sc * (u + dm.detach() * s)
                                + (e.clone().detach() * shifted.detach()).sum_dim(1);
                            // Strictly greater: on ties the earlier tile (lower index) wins.
                            let better = val.clone().greater(best.clone());
                            let best_idx = best_idx.mask_where(better, idx);
                            Some((u, best.max_pair(val), best_idx))
                        }
                        _ => None,
                    };
                    Online {
                        sum: sum * scale + e.sum_dim(1),
                        max: m_new,
                        picked: picked + pick,
                        stats,
                    }
                }
            });
        }
        if let Some(Online {
            max,
            sum,
            picked,
            stats,
        }) = state
        {
            if let Some((u, _, idx)) = stats {
                let s = sum.clone().detach();
                entropies.push((s.clone().log() - u / s).squeeze_dim::<1>(1));
                argmaxes.push(idx.squeeze_dim::<1>(1));
            }
            let lse = (max + sum.log()).squeeze_dim::<1>(1);
            logps.push(picked - lse.clone());
            lses.push(lse);
        }
    }
    let stats = (with_stats && !entropies.is_empty()).then(|| RowStats {
        entropy: Tensor::cat(entropies, 0),
        argmax: Tensor::cat(argmaxes, 0),
    });
    Forward {
        logps: Tensor::cat(logps, 0),
        lse: Tensor::cat(lses, 0),
        stats,
        logits: None,
    }
}

/// Backward pass from the saved inputs and log-sum-exp: `(∂L/∂hidden, ∂L/∂weight)` for
/// upstream gradient `grad` `[rows]`, each only when asked for, in the input dtypes.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
fn backward_values(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: Tensor<1, Int>,
    lse: Tensor<1>,
    grad: Tensor<1>,
    config: ChunkConfig,
    need_hidden: bool,
    need_weight: bool,
    logits: Option<Tensor<1>>,
) -> (Option<Tensor<2>>, Option<Tensor<2>>) {
    let tiling = VocabTiling {
        vocab_tile: config.vocab_tile,
        row_block: config.row_block,
    };
    if let Some(grads) = target_logps_backward(
        &hidden,
        &weight,
        &targets,
        &lse,
        &grad,
        tiling,
        need_hidden,
        need_weight,
        logits,
    ) {
        return grads;
    }
    let [n, h] = hidden.dims();
    let v = weight.dims()[1];
    let (h_dtype, w_dtype) = (hidden.dtype(), weight.dtype());
    let device: Device = hidden.device();
    let cd = compute_dtype(h_dtype, w_dtype);
    let hidden = hidden.cast(cd);
    let grad = grad.cast(cd);
    let row_blocks: Vec<(usize, usize)> = blocks(n, config.row_block).collect();
    let mut grad_hidden: Vec<Tensor<2>> = if need_hidden {
        row_blocks
            .iter()
            .map(|&(r0, r1)| Tensor::<2>::zeros([r1 - r0, h], (&device, DType::from(cd))))
            .collect()
    } else {
        Vec::new()
    };
    let mut grad_weight =
        need_weight.then(|| Tensor::<2>::zeros([h, v], (&device, DType::from(cd))));
    for (v0, v1) in blocks(v, config.vocab_tile) {
        let wt = weight.clone().slice([0..h, v0..v1]).cast(cd);
        let mut gw_tile: Option<Tensor<2>> = None;
        for (bi, &(r0, r1)) in row_blocks.iter().enumerate() {
            let hb = hidden.clone().slice([r0..r1, 0..h]);
            let gb = grad.clone().slice(r0..r1);
            let lb = lse.clone().slice(r0..r1);
            let (col, inside) = tile_targets(&targets.clone().slice(r0..r1), v0, v1, cd);
            let logits = matmul(hb.clone(), wt.clone());
            // ∂L/∂z = g·(onehot − p) = −g·p, plus g at the target column.
            let dz = (logits - lb.unsqueeze_dim::<2>(1)).exp() * gb.clone().neg().unsqueeze_dim(1);
            let dz = dz.scatter(
                1,
                col.unsqueeze_dim::<2>(1),
                (gb * inside).unsqueeze_dim(1),
                IndexingUpdateOp::Add,
            );
            if need_hidden {
                let update = matmul(dz.clone(), wt.clone().transpose());
                grad_hidden[bi] = grad_hidden[bi].clone() + update;
            }
            if need_weight {
                let update = matmul(hb.transpose(), dz);
                gw_tile = Some(match gw_tile {
                    None => update,
                    Some(acc) => acc + update,
                });
            }
        }
        if let (Some(gw), Some(tile)) = (grad_weight.take(), gw_tile) {
            grad_weight = Some(gw.slice_assign([0..h, v0..v1], tile));
        }
    }
    let grad_hidden = need_hidden.then(|| Tensor::cat(grad_hidden, 0).cast(h_dtype));
    (grad_hidden, grad_weight.map(|g| g.cast(w_dtype)))
}

/// The custom autodiff node (see the module docs). Generic over the backend; instantiated for
/// the backends enabled by this crate's features.
#[cfg_attr(
    not(any(feature = "flex", feature = "wgpu", feature = "cuda")),
    allow(dead_code)
)]
mod custom {
    use super::{ChunkConfig, Forward, RowStats, backward_values, forward_values};

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::{
        BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
    };
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::{Autodiff, Backend, DispatchKindConversion, DispatchTensor};
    use burn::tensor::{Int, Tensor};

    /// What the backward pass needs: the inputs (no autodiff), the targets and the per-row
    /// log-sum-exp. No `[rows, vocab]` tensor.
    #[derive(Debug, Clone)]
    pub(super) struct State {
        hidden: Tensor<2>,
        weight: Tensor<2>,
        targets: Tensor<1, Int>,
        lse: Tensor<1>,
        config: ChunkConfig,
        /// The forward's logits when [`ChunkConfig::max_kept_logits_bytes`] allowed keeping
        /// them (Flex only).
        logits: Option<Tensor<1>>,
    }

    #[derive(Debug)]
    pub(super) struct ChunkedLogpsBackward;

    impl<B: Backend> Backward<B, 2> for ChunkedLogpsBackward
    where
        DispatchTensor: DispatchKindConversion<B>,
    {
        type State = State;

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_hidden, node_weight] = ops.parents;
            let grad = Tensor::<1>::from_primitive::<B>(grads.consume::<B>(&ops.node));
            let State {
                hidden,
                weight,
                targets,
                lse,
                config,
                logits,
            } = ops.state;
            let (grad_hidden, grad_weight) = backward_values(
                hidden,
                weight,
                targets,
                lse,
                grad,
                config,
                node_hidden.is_some(),
                node_weight.is_some(),
                logits,
            );
            for (node, grad) in [(node_hidden, grad_hidden), (node_weight, grad_weight)] {
                if let (Some(node), Some(grad)) = (node, grad) {
                    match grad.try_into_primitive::<B>() {
                        Ok(grad) => grads.register::<B>(node.id, grad),
                        // Cannot happen: every tensor here was computed on backend `B`.
                        Err(e) => debug_assert!(false, "chunked log-prob gradient: {e:?}"),
                    }
                }
            }
        }
    }

    type Inputs = (Tensor<2>, Tensor<2>, Tensor<1, Int>);

    /// [`tracked`] for backend `B` under either checkpointing strategy the trainer uses.
    pub(super) fn tracked_any<B: Backend>(
        hidden: Tensor<2>,
        weight: Tensor<2>,
        targets: Tensor<1, Int>,
        config: ChunkConfig,
        with_stats: bool,
    ) -> Result<(Tensor<1>, Option<RowStats>), Box<Inputs>>
    where
        DispatchTensor: DispatchKindConversion<B>
            + DispatchKindConversion<Autodiff<B, NoCheckpointing>>
            + DispatchKindConversion<Autodiff<B, BalancedCheckpointing>>,
    {
        let (hidden, weight, targets) =
            match tracked::<B, NoCheckpointing>(hidden, weight, targets, config, with_stats) {
                Ok(out) => return Ok(out),
                Err(inputs) => *inputs,
            };
        tracked::<B, BalancedCheckpointing>(hidden, weight, targets, config, with_stats)
    }

    /// Whether `probe` is an autodiff tensor of backend `B` (either strategy).
    pub(super) fn is_on<B: Backend>(probe: &Tensor<1>) -> bool
    where
        DispatchTensor: DispatchKindConversion<Autodiff<B, NoCheckpointing>>
            + DispatchKindConversion<Autodiff<B, BalancedCheckpointing>>,
    {
        probe
            .clone()
            .try_into_primitive::<Autodiff<B, NoCheckpointing>>()
            .is_ok()
            || probe
                .clone()
                .try_into_primitive::<Autodiff<B, BalancedCheckpointing>>()
                .is_ok()
    }

    /// Runs the tiled forward on `Autodiff<B, C>` tensors and registers the custom backward.
    /// Gives the inputs back when they do not live on that backend / strategy.
    pub(super) fn tracked<B: Backend, C: CheckpointStrategy>(
        hidden: Tensor<2>,
        weight: Tensor<2>,
        targets: Tensor<1, Int>,
        config: ChunkConfig,
        with_stats: bool,
    ) -> Result<(Tensor<1>, Option<RowStats>), Box<Inputs>>
    where
        DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B, C>>,
    {
        let weight = if weight.is_autodiff() {
            weight
        } else {
            // A frozen (plain) weight joins the hidden states' checkpointing strategy.
            match hidden.gradient_checkpointing_strategy() {
                Some(strategy) => weight
                    .autodiff()
                    .with_gradient_checkpointing_strategy(strategy),
                None => weight.autodiff(),
            }
        };
        let Ok(hidden_ad) = hidden.clone().try_into_primitive::<Autodiff<B, C>>() else {
            return Err(Box::new((hidden, weight, targets)));
        };
        let Ok(weight_ad) = weight.clone().try_into_primitive::<Autodiff<B, C>>() else {
            return Err(Box::new((hidden, weight, targets)));
        };
        let inner_hidden = Tensor::<2>::from_primitive::<B>(hidden_ad.primitive().clone());
        let inner_weight = Tensor::<2>::from_primitive::<B>(weight_ad.primitive().clone());
        let inner_targets = targets.clone().inner();
        let [rows, _] = inner_hidden.dims();
        let keep = config.keeps_logits(rows, inner_weight.dims()[1]);
        let Forward {
            logps,
            lse,
            stats,
            logits,
        } = forward_values(
            inner_hidden.clone(),
            inner_weight.clone(),
            inner_targets.clone(),
            config,
            with_stats,
            keep,
        );
        let Ok(output) = logps.try_into_primitive::<B>() else {
            return Err(Box::new((hidden, weight, targets)));
        };
        let (hidden, weight, targets) = (inner_hidden, inner_weight, inner_targets);
        let output = match ChunkedLogpsBackward
            .prepare::<C>([hidden_ad.node(), weight_ad.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                State {
                    hidden,
                    weight,
                    targets,
                    lse,
                    config,
                    logits,
                },
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        Ok((Tensor::<1>::from_primitive::<Autodiff<B, C>>(output), stats))
    }
}
