//! Shared-context log-likelihood scoring: all choices of a question from one pass over its
//! context.
//!
//! lm-eval's `hf` backend (and [`score_pairs`], kept as the reference and the fallback) runs
//! every (context + continuation) request as its own row, so a four-choice question sends its
//! context through the decoder four times. Here requests whose context token ids are identical
//! form a group, and the context runs once: its last position predicts every continuation's
//! first token. A continuation's last token is never fed (nothing reads what it predicts), so
//! single-token choices (` A`, ` True`) need no tokens of their own.
//!
//! The whole group is one row: the context, then each continuation's tokens, a custom
//! attention mask letting each continuation see the context and itself only, its positions
//! restarting after the context (the KV of a continuation token depends only on the context and
//! the continuation's earlier tokens, so this is the same computation as one row each). A chunk
//! of `batch_size` questions is then one forward and one LM-head call, where copying the
//! context's cache into a row per continuation took a forward per continuation length class.
//! The sums equal [`score_pairs`]'s up to float rounding (`tests/shared_context.rs`).
//!
//! When every context of the call starts with the same long run of token ids (a task's
//! few-shot examples drawn `first_n`, with its description), that run is prefilled once and
//! each chunk continues from a copy of its cache: the KV of a position depends only on
//! the tokens up to it, so this is the same computation.
//!
//! Requests whose contexts differ by a token (lm-eval's `_encode_pair` encodes each request
//! whole, so a BPE merge across the boundary can change a context's last tokens) simply form
//! groups of their own. Requests that need `max_length` left truncation go through
//! [`score_pairs`]: truncation cuts each request by a different amount, so nothing is shared.

use std::collections::HashMap;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use temper_llm_arch::{ForwardOptions, KvCache, LlamaForCausalLM};

use crate::loglik::{EncodedPair, LoglikConfig, score_pairs};
use crate::{EvalError, Result};

/// Requests with one context: its token ids (the empty-context token already put in) and the
/// indices of the requests in the caller's slice.
struct Group {
    context: Vec<u32>,
    members: Vec<usize>,
}

/// Shortest common prefix (in tokens) worth prefilling once for all contexts: below it the
/// saving is a few tokens per context, less than what the masked attention path of the
/// chunks' prefill costs over the fused causal kernel it would otherwise use.
const MIN_SHARED_PREFIX: usize = 32;

/// Fewest positions a forward or a head product carries here. The model takes its decode-step
/// kernels for up to 4 positions (a GGUF model's 8-bit inputs against ggml blocks, as
/// llama.cpp does), which round differently from the batched products [`score_pairs`] runs
/// (0.06 nats on a choice of SmolLM2's GGUF blocks); padding to 5 keeps the batched numbers.
const MIN_POSITIONS: usize = 5;

/// The cache of the token ids every context starts with (one row).
struct SharedPrefix {
    cache: KvCache,
    len: usize,
}

/// Summed continuation log-probs of encoded requests, the same numbers as [`score_pairs`]
/// (up to float rounding) with each shared context run once.
///
/// `config.batch_size` bounds the contexts (rows) per forward, fewer for long rows (see
/// [`MASK_BUDGET`]). `progress(done, total)` is called
/// with the number of requests scored so far.
///
/// # Errors
/// A request with an empty continuation, an empty context without `empty_context_token`, a
/// continuation longer than `max_length` (all naming the request's index), model errors.
pub fn score_pairs_shared(
    model: &LlamaForCausalLM,
    pairs: &[EncodedPair],
    config: &LoglikConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let total = pairs.len();
    let (mut groups, fallback) = group_requests(pairs, config)?;
    // Longest rows first: a chunk then holds rows of similar length, so little of it is
    // padding.
    groups.sort_by_key(|g| std::cmp::Reverse(packed_len(pairs, g)));
    let shared = shared_prefix(model, &groups)?;
    let skip = shared.as_ref().map_or(0, |p| p.len);
    let mut out = vec![0.0f64; total];
    let mut done = 0;
    let mut rest = groups.as_slice();
    while !rest.is_empty() {
        let rows = chunk_rows(pairs, rest, config.batch_size.max(1), skip);
        let (chunk, tail) = rest.split_at(rows);
        score_chunk(
            model,
            pairs,
            chunk,
            shared.as_ref(),
            config.pad_token_id,
            &mut out,
        )?;
        done += chunk.iter().map(|g| g.members.len()).sum::<usize>();
        progress(done, total);
        rest = tail;
    }
    if !fallback.is_empty() {
        let truncated: Vec<EncodedPair> = fallback.iter().map(|&i| pairs[i].clone()).collect();
        for (&i, s) in fallback.iter().zip(score_pairs(model, &truncated, config)?) {
            out[i] = s;
        }
        progress(total, total);
    }
    Ok(out)
}

/// Requests grouped by context ids (in first-seen order), and the indices of those that
/// `max_length` truncates (scored by [`score_pairs`]).
fn group_requests(
    pairs: &[EncodedPair],
    config: &LoglikConfig,
) -> Result<(Vec<Group>, Vec<usize>)> {
    let mut groups: Vec<Group> = Vec::new();
    let mut by_context: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut fallback = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        if p.continuation.is_empty() {
            return Err(EvalError::Invalid(format!(
                "request {i}: the continuation encodes to no tokens"
            )));
        }
        let mut context = p.context.clone();
        if context.is_empty() {
            // As in `score_pairs`: lm-eval puts its prefix token before an empty context.
            let t = config.empty_context_token.ok_or_else(|| {
                EvalError::Invalid(format!(
                    "request {i}: empty context and no empty_context_token"
                ))
            })?;
            context.push(t);
        }
        if let Some(max) = config.max_length
            && context.len() + p.continuation.len() > max
        {
            if p.continuation.len() >= max {
                return Err(EvalError::Invalid(format!(
                    "request {i}: a continuation of {} tokens does not fit max_length {max}",
                    p.continuation.len()
                )));
            }
            fallback.push(i);
            continue;
        }
        let g = match by_context.get(&context) {
            Some(&g) => g,
            None => {
                by_context.insert(context.clone(), groups.len());
                groups.push(Group {
                    context,
                    members: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[g].members.push(i);
    }
    Ok((groups, fallback))
}

/// The common prefix of all contexts, prefilled, when there are several contexts and it is at
/// least [`MIN_SHARED_PREFIX`] tokens long. Every context keeps one token of its own, so each
/// chunk still has a last position to read.
fn shared_prefix(model: &LlamaForCausalLM, groups: &[Group]) -> Result<Option<SharedPrefix>> {
    let Some((first, rest)) = groups.split_first() else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let mut len = first.context.len() - 1;
    for g in rest {
        let common = first
            .context
            .iter()
            .zip(&g.context)
            .take_while(|(a, b)| a == b)
            .count();
        len = len.min(common).min(g.context.len() - 1);
    }
    if len < MIN_SHARED_PREFIX {
        return Ok(None);
    }
    let ids: Vec<i64> = first.context[..len].iter().map(|&t| i64::from(t)).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, len]), &model.device());
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    model.forward_hidden(input, &ForwardOptions::default(), Some(&mut cache))?;
    Ok(Some(SharedPrefix { cache, len }))
}

/// Tokens of a group's packed row: its context, then every continuation but its last token
/// (nothing reads what the last one predicts).
fn packed_len(pairs: &[EncodedPair], g: &Group) -> usize {
    g.context.len()
        + g.members
            .iter()
            .map(|&i| pairs[i].continuation.len() - 1)
            .sum::<usize>()
}

/// Mask entries (`rows × seq × (prefix + seq)`) one forward may build: its attention scores
/// are that many floats per head, so a chunk of long rows holds fewer of them (8 rows of 512
/// tokens; SmolLM2's 9 heads then take 75 MB of scores).
const MASK_BUDGET: usize = 8 * 512 * 512;

/// How many of `groups` (sorted longest row first) go in the next forward: up to
/// `batch_size`, fewer when their mask would pass [`MASK_BUDGET`], at least one.
fn chunk_rows(pairs: &[EncodedPair], groups: &[Group], batch_size: usize, skip: usize) -> usize {
    // The first group is the longest: every row of the chunk is padded to it.
    let len = packed_len(pairs, &groups[0]) - skip;
    let per_row = len * (skip + len);
    (MASK_BUDGET / per_row.max(1)).clamp(1, batch_size.min(groups.len()))
}

/// A group's row: the token ids after the shared prefix, each one's position, and its
/// segment (0: the context, `k + 1`: continuation `k`), which decides who sees it.
struct Row {
    ids: Vec<u32>,
    positions: Vec<usize>,
    segments: Vec<usize>,
    /// Where each member's fed continuation tokens start in the row.
    starts: Vec<usize>,
}

impl Row {
    fn of(pairs: &[EncodedPair], g: &Group, skip: usize) -> Self {
        let own = &g.context[skip..];
        let mut row = Row {
            ids: own.to_vec(),
            positions: (skip..g.context.len()).collect(),
            segments: vec![0; own.len()],
            starts: Vec::with_capacity(g.members.len()),
        };
        for (k, &i) in g.members.iter().enumerate() {
            let cont = &pairs[i].continuation;
            let fed = &cont[..cont.len() - 1];
            row.starts.push(row.ids.len());
            row.ids.extend_from_slice(fed);
            // Every continuation continues the context: its positions restart after it.
            row.positions
                .extend(g.context.len()..g.context.len() + fed.len());
            row.segments.extend(std::iter::repeat_n(k + 1, fed.len()));
        }
        row
    }

    /// Whether the token at `q` sees the one at `k` (both indices in the row): causal, and
    /// the context is seen by all, a continuation's tokens only by that continuation.
    fn sees(&self, q: usize, k: usize) -> bool {
        k <= q && (self.segments[k] == 0 || self.segments[k] == self.segments[q])
    }
}

/// Score every request of the chunk's groups in one forward: each group is one row holding
/// its context and all its continuations, each continuation attending to the context and to
/// itself only (a custom mask, positions restarting after the context), on top of a copy of
/// the shared prefix's cache. A continuation's first token is read off the context's last
/// position, the others off the continuation's own positions; one head call serves them all.
fn score_chunk(
    model: &LlamaForCausalLM,
    pairs: &[EncodedPair],
    chunk: &[Group],
    shared: Option<&SharedPrefix>,
    pad: u32,
    out: &mut [f64],
) -> Result<()> {
    let device = model.device();
    let b = chunk.len();
    let skip = shared.map_or(0, |p| p.len);
    let layout: Vec<Row> = chunk.iter().map(|g| Row::of(pairs, g, skip)).collect();
    let len = layout
        .iter()
        .map(|r| r.ids.len())
        .max()
        .unwrap_or(0)
        .max(MIN_POSITIONS.div_ceil(b));
    let total = skip + len;
    let mut ids = Vec::with_capacity(b * len);
    let mut positions = Vec::with_capacity(b);
    let mut mask = Vec::with_capacity(b * len * total);
    // Distinct positions read by the head, and per scored token (request, index into them,
    // target id).
    let (mut picks, mut reads) = (Vec::new(), Vec::new());
    for (r, (g, row)) in chunk.iter().zip(&layout).enumerate() {
        let n = row.ids.len();
        ids.extend(row.ids.iter().map(|&t| i64::from(t)));
        ids.extend(std::iter::repeat_n(i64::from(pad), len - n));
        positions.push(
            row.positions
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0, len - n))
                .collect(),
        );
        for q in 0..len {
            // The prefix is seen by every real token; a padded one sees itself only, so its
            // softmax row is never empty.
            mask.extend(std::iter::repeat_n(q >= n, skip));
            mask.extend((0..len).map(|k| {
                if q < n {
                    !(k < n && row.sees(q, k))
                } else {
                    k != q
                }
            }));
        }
        let last = picks.len();
        picks.push((r * len + g.context.len() - skip - 1) as i64);
        for (&i, &start) in g.members.iter().zip(&row.starts) {
            let cont = &pairs[i].continuation;
            reads.push((i, last, cont[0]));
            for (j, &target) in cont.iter().enumerate().skip(1) {
                reads.push((i, picks.len(), target));
                picks.push((r * len + start + j - 1) as i64);
            }
        }
    }
    let mut cache = shared.map(|p| {
        let mut c = p.cache.clone();
        c.select_rows(&vec![0; b]);
        c
    });
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, len]), &device);
    let options = ForwardOptions {
        position_ids: Some(positions),
        custom_mask: Some(Tensor::from_data(
            TensorData::new(mask, [b, 1, len, total]),
            &device,
        )),
        ..ForwardOptions::default()
    };
    let hidden = model.forward_hidden(input, &options, cache.as_mut())?;
    let d = hidden.dims()[2];
    let m = picks.len();
    let picked = hidden.reshape([b * len, d]).select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(picks, [m]), &device),
    );
    let logp = head_log_probs(model, picked);
    let vocab = logp.dims()[1];
    let mut flat = Vec::with_capacity(reads.len());
    for &(i, at, target) in &reads {
        let target = target as usize;
        if target >= vocab {
            return Err(EvalError::Invalid(format!(
                "request {i}: continuation token {target} is outside the model's vocabulary of {vocab}"
            )));
        }
        flat.push((at * vocab + target) as i64);
    }
    let n = flat.len();
    let scored = logp.reshape([m * vocab]).select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(flat, [n]), &device),
    );
    for (&(i, _, _), lp) in reads.iter().zip(to_host(scored)?) {
        out[i] += f64::from(lp);
    }
    Ok(())
}

/// Log-probs `[m, vocab]` of hidden states `[m, hidden]`, computed on at least
/// [`MIN_POSITIONS`] rows (the first repeated) so that the batched head runs.
fn head_log_probs(model: &LlamaForCausalLM, hidden: Tensor<2>) -> Tensor<2> {
    let [m, d] = hidden.dims();
    let padded = if m < MIN_POSITIONS {
        let first = hidden.clone().slice([0..1, 0..d]);
        Tensor::cat(
            std::iter::once(hidden)
                .chain(std::iter::repeat_n(first, MIN_POSITIONS - m))
                .collect(),
            0,
        )
    } else {
        hidden
    };
    let rows = padded.dims()[0];
    let logits = model.lm_head(padded.reshape([1, rows, d]));
    let vocab = logits.dims()[2];
    log_softmax(logits.reshape([rows, vocab]), 1).slice([0..m, 0..vocab])
}

fn to_host(t: Tensor<1>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| EvalError::Invalid(format!("reading log-probs: {e:?}")))
}
