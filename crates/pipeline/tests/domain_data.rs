//! The shipped bio-materials data: sizes the pipeline needs, formats the trainer and the
//! benchmark reader accept, and a benchmark that never repeats the training rows.
//!
//! `TEMPER_DOMAIN_DATA` points the format and overlap checks at another directory of the same
//! layout (`cpt.jsonl`, `sft.jsonl`, `preference.jsonl`, `benchmark.jsonl`); the minimum sizes
//! are checked for the shipped set only.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use temper_bench_eval::{QuestionKind, load_questions};
use temper_objectives::data::{Document, PreferenceRow, ReadOptions, SftRow, read_jsonl};

const SHINGLE: usize = 8;

fn data_dir() -> (PathBuf, bool) {
    match std::env::var_os("TEMPER_DOMAIN_DATA") {
        Some(d) => (d.into(), false),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/bio-materials"),
            true,
        ),
    }
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

fn shingles(text: &str) -> HashSet<String> {
    let w = words(text);
    w.windows(SHINGLE).map(|s| s.join(" ")).collect()
}

/// Every string inside a JSON value (message contents, plain fields).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| k.as_str() != "role")
            .for_each(|(_, x)| strings(x, out)),
        _ => {}
    }
}

fn jsonl_values(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

#[test]
fn rows_parse_as_the_trainer_and_benchmark_expect() {
    let (dir, shipped) = data_dir();
    let opts = ReadOptions::default();
    let cpt = read_jsonl::<Document>(dir.join("cpt.jsonl"), &opts)
        .unwrap()
        .rows;
    let sft = read_jsonl::<SftRow>(dir.join("sft.jsonl"), &opts)
        .unwrap()
        .rows;
    let pref = read_jsonl::<PreferenceRow>(dir.join("preference.jsonl"), &opts)
        .unwrap()
        .rows;
    let bench = load_questions(dir.join("benchmark.jsonl")).unwrap();
    for row in &pref {
        assert!(row.prompt.is_conversational() && row.chosen.is_conversational());
    }
    let ids: HashSet<&str> = bench.iter().map(|q| q.id.as_str()).collect();
    assert_eq!(ids.len(), bench.len(), "benchmark ids are unique");
    let mut per_category: BTreeMap<String, usize> = BTreeMap::new();
    let (mut mc, mut tf_true, mut tf_false) = (0, 0, 0);
    for q in &bench {
        *per_category
            .entry(q.category.clone().unwrap_or_default())
            .or_default() += 1;
        match &q.kind {
            QuestionKind::Mc { choices, answer } => {
                assert!(choices.len() >= 2 && *answer < choices.len(), "{}", q.id);
                mc += 1;
            }
            QuestionKind::Tf { answer: true } => tf_true += 1,
            QuestionKind::Tf { answer: false } => tf_false += 1,
            QuestionKind::Short { .. } => {}
        }
    }
    if shipped {
        let corpus_bytes: usize = cpt
            .iter()
            .map(|d| match d {
                Document::Text(t) => t.len(),
                Document::Messages(_) => 0,
            })
            .sum();
        assert!(corpus_bytes >= 300_000, "CPT corpus: {corpus_bytes} bytes");
        assert!(sft.len() >= 2000, "SFT rows: {}", sft.len());
        assert!(pref.len() >= 1000, "preference rows: {}", pref.len());
        assert!(bench.len() >= 300, "benchmark questions: {}", bench.len());
        for cat in ["general", "specific", "numerical", "non-biological"] {
            assert!(
                per_category.get(cat).copied().unwrap_or(0) >= 30,
                "{cat}: {per_category:?}"
            );
        }
        assert!(
            mc >= 100 && tf_true >= 40 && tf_false >= 40,
            "{mc} mc, {tf_true}/{tf_false} tf"
        );
    }
}

#[test]
fn benchmark_questions_are_not_copied_from_training_rows() {
    let (dir, _) = data_dir();
    let mut train_texts = Vec::new();
    for file in ["sft.jsonl", "preference.jsonl"] {
        for v in jsonl_values(&dir.join(file)) {
            strings(&v, &mut train_texts);
        }
    }
    let normalized: HashSet<String> = train_texts.iter().map(|t| words(t).join(" ")).collect();
    let train_shingles: HashSet<String> = train_texts.iter().flat_map(|t| shingles(t)).collect();
    let bench = load_questions(dir.join("benchmark.jsonl")).unwrap();
    let mut copied = Vec::new();
    for q in &bench {
        let norm = words(&q.question).join(" ");
        if normalized.contains(&norm)
            || shingles(&q.question)
                .iter()
                .any(|s| train_shingles.contains(s))
        {
            copied.push(q.id.clone());
        }
    }
    assert!(
        copied.is_empty(),
        "benchmark questions sharing {SHINGLE} words with training rows: {copied:?}"
    );
}
