//! Log-likelihood multiple choice with lm-evaluation-harness semantics.
//!
//! For each choice the request is `(context, target_delimiter + choice)`. As in lm-eval's
//! `_encode_pair`, trailing whitespace of the context is moved to the continuation, the whole
//! string is encoded once, and the continuation tokens are the whole encoding minus the first
//! `len(encode(context))` tokens. The score of a choice is the summed log-prob of its
//! continuation tokens; `acc` picks the highest sum, `acc_norm` the highest sum divided by the
//! choice's character length, `acc_bytes` by its UTF-8 byte length (lm-eval's `len(choice)`,
//! without the delimiter). True/false questions are scored as the choices `["True", "False"]`.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use temper_llm_arch::{ChatMessage, ChatTemplate, ForwardOptions, LlamaForCausalLM, Tokenizer};

use crate::question::Question;
use crate::record::QuestionRecord;
use crate::shared_context::score_pairs_shared;
use crate::{EvalError, Result};

pub use crate::record::ChoiceScores;

/// Token ids of a request: the context and the continuation to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// lm-eval's `_encode_pair`: move the context's trailing whitespace to the continuation, encode
/// the whole string (no special tokens), and split it after `len(encode(context))` tokens.
///
/// # Errors
/// Tokenizer errors.
pub fn encode_pair(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<EncodedPair> {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    let continuation = format!("{moved}{continuation}");
    let whole = tokenizer.encode(&format!("{trimmed}{continuation}"), false)?;
    let n_ctx = tokenizer.encode(trimmed, false)?.len().min(whole.len());
    Ok(EncodedPair {
        context: whole[..n_ctx].to_vec(),
        continuation: whole[n_ctx..].to_vec(),
    })
}

/// Settings of log-likelihood scoring.
#[derive(Debug, Clone)]
pub struct LoglikConfig {
    /// Put between the context and each choice (lm-eval's `target_delimiter`).
    pub target_delimiter: String,
    /// Solved examples prepended to every question, separated by `few_shot_separator`.
    pub few_shot: Vec<Question>,
    /// lm-eval's `fewshot_delimiter`.
    pub few_shot_separator: String,
    /// Wrap the (few-shot) context as a user turn of the model's chat template.
    pub use_chat_template: bool,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Right-padding id (never attended to).
    pub pad_token_id: u32,
    /// Token put before a request whose context encodes to nothing (lm-eval uses EOS/BOS).
    pub empty_context_token: Option<u32>,
    /// Longer requests lose tokens from the left of the context.
    pub max_length: Option<usize>,
}

impl Default for LoglikConfig {
    fn default() -> Self {
        Self {
            target_delimiter: " ".into(),
            few_shot: vec![],
            few_shot_separator: "\n\n".into(),
            use_chat_template: false,
            batch_size: 8,
            pad_token_id: 0,
            empty_context_token: None,
            max_length: None,
        }
    }
}

/// The zero-shot context of a question: `Question: {question}\nAnswer:`.
pub fn question_context(q: &Question) -> String {
    format!("Question: {}\nAnswer:", q.question.trim())
}

/// The context of a question with the few-shot examples (`context + delimiter + gold`, joined
/// by the separator) before it, optionally wrapped in the chat template.
///
/// # Errors
/// Chat-template render errors, or `use_chat_template` without a template.
pub fn format_context(
    q: &Question,
    config: &LoglikConfig,
    chat_template: Option<&ChatTemplate>,
) -> Result<String> {
    let mut parts: Vec<String> = config
        .few_shot
        .iter()
        .map(|s| {
            format!(
                "{}{}{}",
                question_context(s),
                config.target_delimiter,
                s.gold_text()
            )
        })
        .collect();
    parts.push(question_context(q));
    let text = parts.join(&config.few_shot_separator);
    if !config.use_chat_template {
        return Ok(text);
    }
    let template = chat_template.ok_or_else(|| {
        EvalError::Invalid("use_chat_template is set but the model has no chat template".into())
    })?;
    Ok(template.render(&[ChatMessage::new("user", text)], true)?)
}

/// Summed continuation log-probs of encoded requests, `batch_size` rows per forward pass,
/// right-padded with an attention mask. Every request runs its whole context: the reference
/// for [`score_pairs_shared`](crate::shared_context::score_pairs_shared) (which shares each
/// context) and its path for requests that `max_length` truncates.
///
/// # Errors
/// Empty continuations, model errors.
pub fn score_pairs(
    model: &LlamaForCausalLM,
    pairs: &[EncodedPair],
    config: &LoglikConfig,
) -> Result<Vec<f64>> {
    let mut rows: Vec<(Vec<u32>, usize)> = Vec::with_capacity(pairs.len());
    for p in pairs {
        if p.continuation.is_empty() {
            return Err(EvalError::Invalid(
                "a continuation encodes to no tokens".into(),
            ));
        }
        let mut ctx = p.context.clone();
        if ctx.is_empty() {
            let t = config.empty_context_token.ok_or_else(|| {
                EvalError::Invalid("empty context and no empty_context_token".into())
            })?;
            ctx.push(t);
        }
        let mut seq = ctx;
        seq.extend_from_slice(&p.continuation);
        if let Some(max) = config.max_length
            && seq.len() > max
        {
            if p.continuation.len() >= max {
                return Err(EvalError::Invalid(format!(
                    "a continuation of {} tokens does not fit max_length {max}",
                    p.continuation.len()
                )));
            }
            seq.drain(..seq.len() - max);
        }
        rows.push((seq, p.continuation.len()));
    }
    let device = model.device();
    let bs = config.batch_size.max(1);
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(bs) {
        let b = chunk.len();
        let len = chunk.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * len);
        let mut mask = Vec::with_capacity(b);
        // Only the positions that predict a continuation token go through the LM head (a
        // quarter of the tokens or fewer; the 49k-wide head dominates a small model's cost).
        let (mut picks, mut targets, mut owners) = (Vec::new(), Vec::new(), Vec::new());
        for (r, (seq, n_cont)) in chunk.iter().enumerate() {
            ids.extend(seq.iter().map(|&t| i64::from(t)));
            let pad = len - seq.len();
            ids.extend(std::iter::repeat_n(i64::from(config.pad_token_id), pad));
            mask.push(
                std::iter::repeat_n(1u8, seq.len())
                    .chain(std::iter::repeat_n(0u8, pad))
                    .collect(),
            );
            let start = seq.len() - n_cont;
            for (pos, &target) in seq.iter().enumerate().skip(start) {
                picks.push((r * len + pos - 1) as i64);
                targets.push(i64::from(target));
                owners.push(r);
            }
        }
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, len]), &device);
        let options = ForwardOptions {
            attention_mask: Some(mask),
            position_ids: None,
            ..Default::default()
        };
        let hidden = model.forward_hidden(input, &options, None)?;
        let d = hidden.dims()[2];
        let m = picks.len();
        let picked = hidden.reshape([b * len, d]).select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(picks, [m]), &device),
        );
        let logits = model.lm_head(picked.reshape([1, m, d]));
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, m, 1]), &device);
        let logp = log_softmax(logits, 2).gather(2, targets);
        let host: Vec<f32> = logp
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| EvalError::Invalid(format!("reading log-probs: {e:?}")))?;
        let mut sums = vec![0.0f64; b];
        for (owner, lp) in owners.into_iter().zip(host) {
            sums[owner] += f64::from(lp);
        }
        out.extend(sums);
    }
    Ok(out)
}

/// Score every choice of every multiple-choice / true-false question (short-answer questions
/// are skipped). Each question's context runs once for all its choices
/// ([`score_pairs_shared`]); `progress(done, total)` is called after each question.
///
/// # Errors
/// Tokenizer, template and model errors.
pub fn evaluate_loglik(
    model: &LlamaForCausalLM,
    tokenizer: &Tokenizer,
    chat_template: Option<&ChatTemplate>,
    questions: &[Question],
    config: &LoglikConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<QuestionRecord>> {
    let scorable: Vec<&Question> = questions.iter().filter(|q| q.choices().is_some()).collect();
    let total = scorable.len();
    // Each question's requests, encoded up front: its choices run as one row with its context
    // (`score_pairs_shared`), so its cost is the context plus every choice in tokens.
    let mut encoded = Vec::with_capacity(total);
    for (index, &q) in scorable.iter().enumerate() {
        let ctx = format_context(q, config, chat_template)?;
        let choices = q.choices().unwrap_or_default();
        let pairs = choices
            .iter()
            .map(|c| encode_pair(tokenizer, &ctx, &format!("{}{c}", config.target_delimiter)))
            .collect::<Result<Vec<_>>>()?;
        encoded.push((index, q, choices, pairs));
    }
    let tokens = |pairs: &[EncodedPair]| {
        pairs.first().map_or(0, |p| p.context.len())
            + pairs.iter().map(|p| p.continuation.len()).sum::<usize>()
    };
    // Longest first, as lm-eval does: a batch then holds questions of similar length, so
    // little of it is padding (on the shipped benchmark, 2 % of a batch of 8 against 26 % when
    // sorted by characters). Records are returned in the input order.
    encoded.sort_by_key(|(index, _, _, pairs)| (std::cmp::Reverse(tokens(pairs)), *index));
    let mut records: Vec<Option<QuestionRecord>> = vec![None; total];
    let mut done = 0;
    // `batch_size` questions at a time, each one row of one forward.
    for chunk in encoded.chunks(config.batch_size.max(1)) {
        let pairs: Vec<EncodedPair> = chunk.iter().flat_map(|c| c.3.iter().cloned()).collect();
        let sums = score_pairs_shared(model, &pairs, config, |_, _| {})?;
        let mut at = 0;
        for (index, q, choices, _) in chunk {
            let n = choices.len();
            let scores = ChoiceScores {
                logprobs: sums[at..at + n].to_vec(),
                chars: choices.iter().map(|c| c.chars().count()).collect(),
                bytes: choices.iter().map(String::len).collect(),
            };
            at += n;
            records[*index] = Some(QuestionRecord::from_loglik(q, &scores));
            done += 1;
            progress(done, total);
        }
    }
    let records = records.into_iter().flatten().collect();
    Ok(records)
}
