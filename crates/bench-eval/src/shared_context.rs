//! Shared-context log-likelihood scoring: all choices of a question from one pass over its
//! context.
//!
//! lm-eval's `hf` backend (and [`score_pairs`], kept as the reference and the fallback) runs
//! every (context + continuation) request as its own row, so a four-choice question sends its
//! context through the decoder four times. Here requests whose context token ids are identical
//! form a group: the context is prefilled once, keeping its KV cache and the hidden state of its
//! last position (which predicts every continuation's first token), and the continuations then
//! run together in one cached forward, each row a copy of the context's cache. A continuation's
//! last token is never fed (nothing reads what it predicts), so single-token choices (` A`,
//! ` True`) need no continuation forward at all. The sums equal [`score_pairs`]'s up to float
//! rounding (`tests/shared_context.rs`).
//!
//! When every context of the call starts with the same long run of token ids (a task's
//! few-shot examples drawn `first_n`, with its description), that run is prefilled once and
//! each prefill chunk continues from a copy of its cache: the KV of a position depends only on
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

/// A prefilled chunk of contexts: the cache (right-padded to the longest context), each row's
/// mask over the cached positions, and the log-probs `[rows, vocab]` predicted by each
/// context's last position.
struct Prefilled {
    cache: KvCache,
    masks: Vec<Vec<u8>>,
    first: Tensor<2>,
}

/// Summed continuation log-probs of encoded requests, the same numbers as [`score_pairs`]
/// (up to float rounding) with each shared context run once.
///
/// `config.batch_size` bounds the contexts per prefill; their continuations run in forwards
/// of rows of similar length (see [`PADDING_PER_FORWARD`]). `progress(done, total)` is called
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
    // Longest contexts first: a prefill chunk then holds contexts of similar length, so
    // little of it is padding.
    groups.sort_by_key(|g| std::cmp::Reverse(g.context.len()));
    let shared = shared_prefix(model, &groups)?;
    let mut out = vec![0.0f64; total];
    let mut done = 0;
    let bs = config.batch_size.max(1);
    for chunk in groups.chunks(bs) {
        let prefilled = prefill(model, chunk, shared.as_ref(), config.pad_token_id)?;
        score_first_tokens(pairs, chunk, &prefilled, &mut out)?;
        score_rest(model, pairs, chunk, &prefilled, config, &mut out)?;
        done += chunk.iter().map(|g| g.members.len()).sum::<usize>();
        progress(done, total);
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

/// Run the chunk's contexts (after the shared prefix, if any) as one right-padded batch.
/// Without a shared prefix, right padding with nothing cached needs no attention mask (causal
/// masking hides the trailing pads from every real position), so the prefill stays on the
/// fused causal kernel.
fn prefill(
    model: &LlamaForCausalLM,
    chunk: &[Group],
    shared: Option<&SharedPrefix>,
    pad: u32,
) -> Result<Prefilled> {
    let device = model.device();
    let rows = chunk.len();
    let skip = shared.map_or(0, |p| p.len);
    let len = chunk
        .iter()
        .map(|g| g.context.len() - skip)
        .max()
        .unwrap_or(0)
        .max(MIN_POSITIONS.div_ceil(rows));
    let mut ids = Vec::with_capacity(rows * len);
    let mut masks = Vec::with_capacity(rows);
    let mut last = Vec::with_capacity(rows);
    for (r, g) in chunk.iter().enumerate() {
        let own = &g.context[skip..];
        let n = own.len();
        ids.extend(own.iter().map(|&t| i64::from(t)));
        ids.extend(std::iter::repeat_n(i64::from(pad), len - n));
        masks.push(
            std::iter::repeat_n(1u8, skip + n)
                .chain(std::iter::repeat_n(0u8, len - n))
                .collect::<Vec<u8>>(),
        );
        last.push((r * len + n - 1) as i64);
    }
    let mut cache = match shared {
        Some(p) => {
            let mut c = p.cache.clone();
            c.select_rows(&vec![0; rows]);
            c
        }
        None => KvCache::new(model.config().num_hidden_layers),
    };
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, len]), &device);
    let options = ForwardOptions {
        attention_mask: Some(masks.clone()),
        position_ids: None,
    };
    let hidden = model.forward_hidden(input, &options, Some(&mut cache))?;
    let d = hidden.dims()[2];
    let picked = hidden.reshape([rows * len, d]).select(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(last, [rows]), &device),
    );
    // One head row per context, however many choices read it.
    let first = head_log_probs(model, picked);
    Ok(Prefilled {
        cache,
        masks,
        first,
    })
}

/// Add each request's first-token log-prob, read off its context's last position.
fn score_first_tokens(
    pairs: &[EncodedPair],
    chunk: &[Group],
    prefilled: &Prefilled,
    out: &mut [f64],
) -> Result<()> {
    let (mut owners, mut targets, mut requests) = (Vec::new(), Vec::new(), Vec::new());
    for (r, g) in chunk.iter().enumerate() {
        for &i in &g.members {
            owners.push(r as i64);
            targets.push(i64::from(pairs[i].continuation[0]));
            requests.push(i);
        }
    }
    let device = prefilled.first.device();
    let m = owners.len();
    let owners = Tensor::<1, Int>::from_data(TensorData::new(owners, [m]), &device);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [m, 1]), &device);
    let logp = prefilled.first.clone().select(0, owners).gather(1, targets);
    for (i, lp) in requests.into_iter().zip(to_host(logp.reshape([m]))?) {
        out[i] += f64::from(lp);
    }
    Ok(())
}

/// Add the log-probs of every continuation token after the first: feed `continuation[..n-1]`
/// on top of a copy of the context's cache, right-padded, and read position `j` for token
/// `j + 1`.
fn score_rest(
    model: &LlamaForCausalLM,
    pairs: &[EncodedPair],
    chunk: &[Group],
    prefilled: &Prefilled,
    config: &LoglikConfig,
    out: &mut [f64],
) -> Result<()> {
    // (context row, request) for every request with more than one continuation token,
    // longest first.
    let mut rows: Vec<(usize, usize)> = chunk
        .iter()
        .enumerate()
        .flat_map(|(r, g)| g.members.iter().map(move |&i| (r, i)))
        .filter(|&(_, i)| pairs[i].continuation.len() > 1)
        .collect();
    rows.sort_by_key(|&(_, i)| std::cmp::Reverse(pairs[i].continuation.len()));
    let device = model.device();
    for part in split_by_padding(&rows, |i| pairs[i].continuation.len() - 1) {
        let b = part.len();
        let len = part
            .iter()
            .map(|&(_, i)| pairs[i].continuation.len() - 1)
            .max()
            .unwrap_or(0)
            .max(MIN_POSITIONS.div_ceil(b));
        let mut ids = Vec::with_capacity(b * len);
        let mut masks = Vec::with_capacity(b);
        let (mut picks, mut targets, mut owners) = (Vec::new(), Vec::new(), Vec::new());
        for (row, &(r, i)) in part.iter().enumerate() {
            let cont = &pairs[i].continuation;
            let fed = &cont[..cont.len() - 1];
            ids.extend(fed.iter().map(|&t| i64::from(t)));
            ids.extend(std::iter::repeat_n(
                i64::from(config.pad_token_id),
                len - fed.len(),
            ));
            // The mask covers the cached context (its own padding masked) and the new tokens.
            let mut mask = prefilled.masks[r].clone();
            mask.extend(std::iter::repeat_n(1u8, fed.len()));
            mask.extend(std::iter::repeat_n(0u8, len - fed.len()));
            masks.push(mask);
            for (j, &target) in cont.iter().enumerate().skip(1) {
                picks.push((row * len + j - 1) as i64);
                targets.push(i64::from(target));
                owners.push(i);
            }
        }
        let mut cache = prefilled.cache.clone();
        cache.select_rows(&part.iter().map(|&(r, _)| r).collect::<Vec<_>>());
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, len]), &device);
        let options = ForwardOptions {
            attention_mask: Some(masks),
            position_ids: None,
        };
        let hidden = model.forward_hidden(input, &options, Some(&mut cache))?;
        let d = hidden.dims()[2];
        let m = picks.len();
        let picked = hidden.reshape([b * len, d]).select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(picks, [m]), &device),
        );
        let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, [m, 1]), &device);
        let logp = head_log_probs(model, picked)
            .gather(1, targets)
            .reshape([m]);
        for (i, lp) in owners.into_iter().zip(to_host(logp)?) {
            out[i] += f64::from(lp);
        }
    }
    Ok(())
}

/// Padded positions one continuation forward may carry before the next row starts another
/// forward. A forward's fixed cost is estimated at about 15 tokens' worth (SmolLM2-135M on two
/// CPU cores: its 424 MB of weights streamed once per forward, ~400 small ops), while choices
/// of one chunk range from 1 to 20+ tokens: one forward for all would be mostly padding. On
/// the shipped benchmark this cut `temper eval` user time from 38.3 s to 36.0 s.
const PADDING_PER_FORWARD: usize = 16;

/// Cut rows sorted by `fed` length (longest first) into forwards, starting a new one when the
/// current one's padding would pass [`PADDING_PER_FORWARD`].
fn split_by_padding(
    rows: &[(usize, usize)],
    fed: impl Fn(usize) -> usize,
) -> Vec<&[(usize, usize)]> {
    let mut parts = Vec::new();
    let (mut start, mut padding) = (0, 0);
    for (k, &(_, i)) in rows.iter().enumerate() {
        let waste = fed(rows[start].1) - fed(i);
        if k > start && padding + waste > PADDING_PER_FORWARD {
            parts.push(&rows[start..k]);
            (start, padding) = (k, 0);
        } else {
            padding += waste;
        }
    }
    if start < rows.len() {
        parts.push(&rows[start..]);
    }
    parts
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
