//! The shared-context scorer against the per-request reference (`score_pairs`) on a tiny random
//! Llama: every sum within float tolerance and the same acc decisions, whether requests share
//! context ids or not, at several batch sizes, with the empty-context token and with
//! `max_length` truncation.
#![allow(clippy::unwrap_used)]

use burn::tensor::Device;
use temper_bench_eval::EvalError;
use temper_bench_eval::loglik::{EncodedPair, LoglikConfig, score_pairs};
use temper_bench_eval::shared_context::score_pairs_shared;
use temper_llm_arch::{LlamaForCausalLM, ModelConfig};

const VOCAB: usize = 40;

fn model() -> LlamaForCausalLM {
    // GQA (4 heads over 2 KV heads) so the cache copies go through the grouped-query repeat.
    LlamaForCausalLM::init(&ModelConfig::tiny(VOCAB, 16, 2, 4, 2), &Device::flex())
}

fn pair(context: &[u32], continuation: &[u32]) -> EncodedPair {
    EncodedPair {
        context: context.to_vec(),
        continuation: continuation.to_vec(),
    }
}

/// Questions of four, three and two choices with shared contexts of different lengths, a
/// question whose last choice's context differs in its last token (a BPE merge across the
/// boundary), a lone request, and an empty context.
fn requests() -> Vec<EncodedPair> {
    let long: Vec<u32> = (1..=11).collect();
    let short = [7, 3, 9];
    vec![
        pair(&long, &[20]),
        pair(&short, &[21, 22, 23, 24]),
        pair(&long, &[21, 22]),
        pair(&long, &[23, 24, 25]),
        pair(&short, &[5]),
        pair(&long, &[26]),
        pair(&short, &[30, 31]),
        pair(&[2, 4, 6, 8], &[12]),
        pair(&[2, 4, 6, 9], &[13, 14]),
        pair(&[2, 4, 6, 8], &[15, 16, 17]),
        pair(&[33], &[34, 35]),
        pair(&[], &[36, 37]),
        pair(&[], &[38]),
    ]
}

/// The request indices of each question, in choice order (for the acc comparison).
const QUESTIONS: [&[usize]; 5] = [&[0, 2, 3, 5], &[1, 4, 6], &[7, 8, 9], &[10], &[11, 12]];

fn config(batch_size: usize, max_length: Option<usize>) -> LoglikConfig {
    LoglikConfig {
        batch_size,
        pad_token_id: 39,
        empty_context_token: Some(0),
        max_length,
        ..LoglikConfig::default()
    }
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

fn assert_same(m: &LlamaForCausalLM, pairs: &[EncodedPair], c: &LoglikConfig) {
    let reference = score_pairs(m, pairs, c).unwrap();
    let mut calls = Vec::new();
    let shared = score_pairs_shared(m, pairs, c, |d, t| calls.push((d, t))).unwrap();
    assert_eq!(shared.len(), pairs.len());
    for (i, (s, r)) in shared.iter().zip(&reference).enumerate() {
        assert!(
            (s - r).abs() < 1e-4,
            "batch {} request {i}: {s} vs {r}",
            c.batch_size
        );
        // A random model's sums are far from zero: a dropped token would show.
        assert!(*r < -1.0, "request {i}: {r}");
    }
    for q in QUESTIONS {
        let pick = |v: &[f64]| argmax(&q.iter().map(|&i| v[i]).collect::<Vec<_>>());
        assert_eq!(pick(&shared), pick(&reference), "question {q:?}");
    }
    // Progress rises to the total.
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
    assert_eq!(calls.last(), Some(&(pairs.len(), pairs.len())));
}

#[test]
fn shared_contexts_score_as_the_per_request_reference_at_every_batch_size() {
    let m = model();
    let pairs = requests();
    for bs in [1, 2, 3, 8, 32] {
        assert_same(&m, &pairs, &config(bs, None));
    }
}

#[test]
fn truncated_requests_score_as_the_reference() {
    let m = model();
    let pairs = requests();
    // 13 tokens: the long context's requests (11 + 1..3) partly need truncation, the others
    // fit; both paths run in one call.
    for bs in [1, 4] {
        assert_same(&m, &pairs, &config(bs, Some(13)));
    }
}

#[test]
fn a_request_order_does_not_change_its_score() {
    // Shuffled requests regroup into other prefill chunks and continuation batches.
    let m = model();
    let pairs = requests();
    let c = config(2, None);
    let forward = score_pairs_shared(&m, &pairs, &c, |_, _| {}).unwrap();
    let reversed: Vec<EncodedPair> = pairs.iter().rev().cloned().collect();
    let backward = score_pairs_shared(&m, &reversed, &c, |_, _| {}).unwrap();
    for (i, f) in forward.iter().enumerate() {
        let b = backward[pairs.len() - 1 - i];
        assert!((f - b).abs() < 1e-4, "request {i}: {f} vs {b}");
    }
}

#[test]
fn bad_requests_are_refused_by_index() {
    let m = model();
    let mut pairs = requests();
    pairs.push(pair(&[1, 2], &[]));
    let err = score_pairs_shared(&m, &pairs, &config(4, None), |_, _| {}).unwrap_err();
    assert!(
        matches!(&err, EvalError::Invalid(s) if s.starts_with("request 13:")),
        "{err}"
    );

    let no_token = LoglikConfig {
        empty_context_token: None,
        ..config(4, None)
    };
    let err = score_pairs_shared(&m, &requests(), &no_token, |_, _| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("request 11: empty context and no empty_context_token"),
        "{err}"
    );

    let err = score_pairs_shared(&m, &requests(), &config(4, Some(4)), |_, _| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("request 1: a continuation of 4 tokens does not fit max_length 4"),
        "{err}"
    );
}

#[test]
fn a_shared_few_shot_prefix_scores_as_the_reference() {
    // Every context starts with the same 40 tokens (longer than the 32 that are prefilled once);
    // one context is that prefix and a single token more, the others add 1..6 tokens.
    let m = model();
    let prefix: Vec<u32> = (0..40).map(|i| i % 30 + 1).collect();
    let ctx = |own: &[u32]| [prefix.as_slice(), own].concat();
    let pairs = vec![
        pair(&ctx(&[5]), &[20, 21]),
        pair(&ctx(&[5]), &[22]),
        pair(&ctx(&[6, 7, 8]), &[23, 24, 25]),
        pair(&ctx(&[6, 7, 8]), &[26]),
        pair(&ctx(&[9, 9, 9, 9, 9, 9]), &[27, 28]),
        pair(&ctx(&[9, 9, 9, 9, 9, 9]), &[29]),
    ];
    for bs in [1, 2, 8] {
        let c = config(bs, None);
        let reference = score_pairs(&m, &pairs, &c).unwrap();
        let shared = score_pairs_shared(&m, &pairs, &c, |_, _| {}).unwrap();
        for (i, (s, r)) in shared.iter().zip(&reference).enumerate() {
            assert!((s - r).abs() < 1e-4, "batch {bs} request {i}: {s} vs {r}");
        }
        for q in [[0, 1], [2, 3], [4, 5]] {
            assert_eq!(
                shared[q[0]] > shared[q[1]],
                reference[q[0]] > reference[q[1]]
            );
        }
    }
}
