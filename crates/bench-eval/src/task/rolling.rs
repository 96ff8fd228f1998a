//! `output_type: loglikelihood_rolling`: the log-likelihood of a whole text, as
//! lm-evaluation-harness 0.4.13 computes it (`HFLM.loglikelihood_rolling`).
//!
//! The text (`doc_to_target`) is encoded without special tokens and cut into windows by
//! lm-eval's `get_rolling_token_windows(tokens, prefix_token, max_length, context_len=1)` and
//! `make_disjoint_window`: the first window predicts the first `max_length` tokens after the
//! prefix token (BOS, else EOS); each later one predicts the next `max_length` tokens (or what
//! is left) after the tokens just before them, so every input is at most `max_length` tokens
//! and every token is predicted exactly once. A document's log-likelihood is the sum over its
//! windows. Per document lm-eval keeps `(loglikelihood, words)` and `(loglikelihood, bytes)`,
//! words being `len(re.split(r"\s+", text))` and bytes the UTF-8 length; the aggregations are
//! `weighted_perplexity` = exp(−Σll / Σweight) and `bits_per_byte` = −Σll / Σbytes / ln 2,
//! neither of which has a standard error in lm-eval (`"N/A"`).

use serde::Serialize;
use temper_llm_arch::Pretrained;

use super::config::TaskConfig;
use super::dataset::Doc;
use super::prompt::{Prompter, Target};
use super::run::{Sample, TaskSettings};
use crate::loglik::{EncodedPair, LoglikConfig, score_pairs};
use crate::{EvalError, Result};

/// `(metric, value, standard error)` of a task; NaN where lm-eval reports `"N/A"`.
pub type MetricValues = Vec<(String, f64, f64)>;

/// A document's weights for the perplexities and what its scoring took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RollingCounts {
    /// `len(re.split(r"\s+", text))`.
    pub words: usize,
    /// UTF-8 bytes of the text.
    pub bytes: usize,
    /// Tokens of the text (each one predicted once).
    pub tokens: usize,
    /// Rolling windows scored.
    pub windows: usize,
}

/// lm-eval's `get_rolling_token_windows(tokens, prefix, max_len, context_len=1)` with each
/// window passed through `make_disjoint_window`: `(context, continuation)` pairs whose
/// continuations tile `tokens` in order and whose `context + continuation` is at most
/// `max_len + 1` tokens (the model reads all but the last).
///
/// # Panics
/// `max_len` is 0 (lm-eval asserts `1 <= context_len <= max_seq_len`).
pub fn rolling_windows(tokens: &[u32], prefix: u32, max_len: usize) -> Vec<EncodedPair> {
    assert!(max_len >= 1, "rolling windows need max_length >= 1");
    let mut out = Vec::new();
    if tokens.is_empty() {
        return out;
    }
    // context_len = 1: each window after the first predicts up to max_len tokens.
    let pred_len = max_len;
    let first = max_len.min(tokens.len());
    // make_disjoint_window keeps len(a) − (len(b) − 1) tokens of the input: the prefix alone.
    out.push(EncodedPair {
        context: vec![prefix],
        continuation: tokens[..first].to_vec(),
    });
    let mut predicted = first;
    while predicted < tokens.len() {
        let n = (tokens.len() - predicted).min(pred_len);
        let end = predicted + n;
        // Input tokens[end − max_len − 1 .. end − 1]; its first max_len − n + 1 tokens are the
        // context. end − max_len − 1 ≥ 0 since the first window predicted max_len tokens.
        let start = end - max_len - 1;
        out.push(EncodedPair {
            context: tokens[start..end - n].to_vec(),
            continuation: tokens[end - n..end].to_vec(),
        });
        predicted = end;
    }
    out
}

/// Python's `str.isspace` for one character, which is what `\s` matches in a `str` pattern:
/// Unicode `White_Space` plus the separators U+001C..U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// lm-eval's `count_words`: `len(re.split(r"\s+", text))` — one more than the number of
/// whitespace runs, leading and trailing runs included (they split off empty strings).
pub fn count_words(text: &str) -> usize {
    let mut runs = 0;
    let mut in_run = false;
    for c in text.chars() {
        let space = py_space(c);
        if space && !in_run {
            runs += 1;
        }
        in_run = space;
    }
    runs + 1
}

/// The prefix token of the first window: `prefix_token_id` when given, else the tokenizer's
/// BOS (whether or not the model adds it when encoding), else its EOS — lm-eval's
/// `HFLM.prefix_token_id`. For GGUF files the BOS is the metadata's.
///
/// # Errors
/// The model names neither token.
pub fn prefix_token(p: &Pretrained, settings: &TaskSettings) -> Result<u32> {
    settings
        .prefix_token_id
        .or(p.model.config().bos_token_id)
        .or(p.special.bos)
        .or(p.special.eos.first().copied())
        .ok_or_else(|| {
            EvalError::Invalid(
                "the model has no BOS or EOS token to start a rolling window with; set \
                 prefix_token_id"
                    .into(),
            )
        })
}

/// The text of a document (`doc_to_target`, which must be text here).
fn text_of(prompter: &Prompter<'_>, config: &TaskConfig, doc: &Doc, n: usize) -> Result<String> {
    match prompter.target(&config.doc_to_target, doc, n)? {
        Target::Text(t) => Ok(t),
        Target::Index(i) => Err(EvalError::Task {
            path: config.path.clone(),
            key: "doc_to_target".into(),
            reason: format!(
                "document {n}: gives the number {i}; a loglikelihood_rolling task scores a text"
            ),
        }),
    }
}

/// Score `docs` of a rolling task: per document its summed log-likelihood (in
/// `Sample::loglikelihoods[0]`, the request being `("", text)`) and [`RollingCounts`]; then
/// the task's metrics as `(name, value, NaN)` (no standard error, as lm-eval).
///
/// # Errors
/// Template, tokenizer and model errors.
pub fn evaluate_rolling(
    p: &Pretrained,
    config: &TaskConfig,
    settings: &TaskSettings,
    docs: &[Doc],
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<Sample>, MetricValues)> {
    let prompter = Prompter::new(config)?;
    let max_len = super::run::max_length(p, settings);
    if max_len == 0 {
        return Err(EvalError::Invalid("max_length must be at least 1".into()));
    }
    let prefix = prefix_token(p, settings)?;
    let mut samples = Vec::with_capacity(docs.len());
    let mut windows: Vec<EncodedPair> = Vec::new();
    let mut owner = Vec::new();
    for (n, doc) in docs.iter().enumerate() {
        let text = text_of(&prompter, config, doc, n)?;
        let tokens = p.tokenizer.encode(&text, false)?;
        let ws = rolling_windows(&tokens, prefix, max_len);
        owner.extend(std::iter::repeat_n(n, ws.len()));
        samples.push(Sample {
            doc_id: n,
            doc: doc.clone(),
            target: None,
            generation: None,
            rolling: Some(RollingCounts {
                words: count_words(&text),
                bytes: text.len(),
                tokens: tokens.len(),
                windows: ws.len(),
            }),
            arguments: vec![(String::new(), text)],
            // An empty text has no windows and log-likelihood 0 (lm-eval's empty sum).
            loglikelihoods: vec![0.0],
            unconditional: None,
            metrics: Vec::new(),
        });
        windows.extend(ws);
    }

    let loglik = LoglikConfig {
        batch_size: settings.batch_size,
        pad_token_id: p
            .special
            .pad
            .or(p.special.eos.first().copied())
            .unwrap_or(0),
        // The windows already fit: lm-eval's `[-(max_length + 1):][:-1]` cuts nothing.
        max_length: None,
        ..LoglikConfig::default()
    };
    // Longest first so that a batch holds windows of similar length.
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse(windows[i].context.len() + windows[i].continuation.len())
    });
    let total = windows.len();
    let mut scores = vec![0.0f64; total];
    let mut done = 0;
    for chunk in order.chunks(settings.batch_size.max(1) * 4) {
        let batch: Vec<EncodedPair> = chunk.iter().map(|&i| windows[i].clone()).collect();
        for (&i, s) in chunk.iter().zip(score_pairs(&p.model, &batch, &loglik)?) {
            scores[i] = s;
        }
        done += chunk.len();
        progress(done, total);
    }
    // Windows in document order, summed per document in window order as lm-eval does.
    for (&n, s) in owner.iter().zip(&scores) {
        samples[n].loglikelihoods[0] += s;
    }
    let metrics = aggregate(&samples, &config.metrics);
    Ok((samples, metrics))
}

/// lm-eval's aggregations of a rolling task over `samples`.
pub fn aggregate(samples: &[Sample], names: &[String]) -> MetricValues {
    let ll: f64 = samples.iter().map(|s| s.loglikelihoods[0]).sum();
    let sum = |f: fn(&RollingCounts) -> usize| -> f64 {
        samples
            .iter()
            .filter_map(|s| s.rolling.as_ref())
            .map(|c| f(c) as f64)
            .sum()
    };
    let (words, bytes) = (sum(|c| c.words), sum(|c| c.bytes));
    names
        .iter()
        .filter_map(|m| {
            let value = match m.as_str() {
                "word_perplexity" => (-ll / words).exp(),
                "byte_perplexity" => (-ll / bytes).exp(),
                "bits_per_byte" => -ll / bytes / std::f64::consts::LN_2,
                _ => return None,
            };
            Some((m.clone(), value, f64::NAN))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows as lm-eval 0.4.13 makes them: `list(map(make_disjoint_window,
    /// get_rolling_token_windows(list(range(10, 20)), 0, 4, 1)))`.
    #[test]
    fn windows_are_lm_evals() {
        let tokens: Vec<u32> = (10..20).collect();
        let got: Vec<(Vec<u32>, Vec<u32>)> = rolling_windows(&tokens, 0, 4)
            .into_iter()
            .map(|w| (w.context, w.continuation))
            .collect();
        let want: Vec<(Vec<u32>, Vec<u32>)> = vec![
            (vec![0], vec![10, 11, 12, 13]),
            (vec![13], vec![14, 15, 16, 17]),
            (vec![15, 16, 17], vec![18, 19]),
        ];
        assert_eq!(got, want);
        // Shorter than a window: one window; empty: none.
        let one = rolling_windows(&[5, 6], 1, 4);
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].context.clone(), one[0].continuation.clone()),
            (vec![1], vec![5, 6])
        );
        assert!(rolling_windows(&[], 1, 4).is_empty());
        // max_length 1: every token its own window, conditioned on the one before.
        let ones = rolling_windows(&[7, 8, 9], 1, 1);
        let pairs: Vec<_> = ones
            .iter()
            .map(|w| (w.context[0], w.continuation[0]))
            .collect();
        assert_eq!(pairs, vec![(1, 7), (7, 8), (8, 9)]);
    }

    #[test]
    fn windows_tile_the_text_within_max_length() {
        let tokens: Vec<u32> = (0..257).collect();
        for max_len in [1, 2, 63, 64, 256, 257, 300] {
            let ws = rolling_windows(&tokens, 999, max_len);
            let predicted: Vec<u32> = ws.iter().flat_map(|w| w.continuation.clone()).collect();
            assert_eq!(predicted, tokens, "max_len {max_len}");
            for w in &ws[1..] {
                assert_eq!(w.context.len() + w.continuation.len(), max_len + 1);
                // The context is what precedes the continuation in the text.
                let at = w.continuation[0] as usize;
                assert_eq!(w.context, tokens[at - w.context.len()..at]);
            }
        }
    }

    /// Python: `len(re.split(r"\s+", s))` for each string.
    #[test]
    fn words_are_pythons_split() {
        for (s, n) in [
            ("", 1),
            ("one", 1),
            ("two words", 2),
            (" lead", 2),
            ("trail ", 2),
            ("a \n\n\t b", 2),
            ("a\u{a0}b\u{2003}c", 3),
            ("a\u{1f}b", 2),
            ("a\u{200b}b", 1),
        ] {
            assert_eq!(count_words(s), n, "{s:?}");
        }
    }

    #[test]
    fn aggregation_is_weighted_by_words_and_bytes() {
        let sample = |ll: f64, words, bytes| Sample {
            doc_id: 0,
            doc: Doc::new(),
            target: None,
            arguments: vec![],
            loglikelihoods: vec![ll],
            unconditional: None,
            metrics: vec![],
            generation: None,
            rolling: Some(RollingCounts {
                words,
                bytes,
                tokens: 0,
                windows: 0,
            }),
        };
        let samples = [sample(-10.0, 4, 20), sample(-30.0, 6, 60)];
        let names: Vec<String> = ["word_perplexity", "byte_perplexity", "bits_per_byte"]
            .map(String::from)
            .to_vec();
        let m = aggregate(&samples, &names);
        assert!((m[0].1 - 4.0f64.exp()).abs() < 1e-12);
        assert!((m[1].1 - 0.5f64.exp()).abs() < 1e-12);
        assert!((m[2].1 - 0.5 / 2f64.ln()).abs() < 1e-12);
        assert!(m.iter().all(|(_, _, se)| se.is_nan()));
    }
}
