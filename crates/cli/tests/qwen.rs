//! `temper inspect` and `temper generate` on the tiny Qwen2 / Qwen3 models made by
//! transformers (temper-llm-arch's `tests/fixtures/tiny_qwen*`): the architecture and the
//! sliding layers are reported, and greedy generation through the CLI (prefill, then cached
//! decode steps past Qwen2's window of 4) gives transformers' 12 tokens. The fixtures have no
//! tokenizer; each test gives a copy one whose word `tN` is id N.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

fn temper(args: &[&str]) -> (bool, String, String) {
    common::run_temper(None, args)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../llm-arch/tests/fixtures")
        .join(name)
}

/// The fixture's files plus a word-level `tokenizer.json` over `t0` … `t63`.
fn with_tokenizer(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), out.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> = (0..64)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    });
    std::fs::write(out.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    out
}

fn expected(name: &str) -> (Vec<u32>, Vec<u32>) {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
    )
    .unwrap();
    (
        serde_json::from_value(v["greedy_prompt"].clone()).unwrap(),
        serde_json::from_value(v["greedy_tokens"].clone()).unwrap(),
    )
}

fn greedy_matches_transformers(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let model = with_tokenizer(name, dir.path());
    let (prompt, want) = expected(name);
    let prompt: Vec<String> = prompt.iter().map(|i| format!("t{i}")).collect();
    let (ok, stdout, stderr) = temper(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        &prompt.join(" "),
        "--max-new-tokens",
        "12",
    ]);
    assert!(ok, "{stderr}");
    let got: Vec<u32> = stdout
        .split_whitespace()
        .map(|w| w.trim_start_matches('t').parse().unwrap())
        .collect();
    assert_eq!(got, want, "{name}: {stdout:?}");
}

#[test]
fn inspect_names_the_family_and_the_sliding_layers() {
    let (ok, stdout, stderr) = temper(&["inspect", fixture("tiny_qwen2").to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("architecture: Qwen2ForCausalLM (model_type qwen2)"),
        "{stdout}"
    );
    assert!(stdout.contains("parameters:   32160"), "{stdout}");
    assert!(
        stdout.contains("sliding window 4 on layers [1, 2]"),
        "{stdout}"
    );
    let (ok, stdout, stderr) = temper(&["inspect", fixture("tiny_qwen3").to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Qwen3ForCausalLM"), "{stdout}");
    assert!(stdout.contains("head_dim 16"), "{stdout}");
}

#[test]
fn generate_on_qwen2_with_its_window_matches_transformers() {
    greedy_matches_transformers("tiny_qwen2");
}

#[test]
fn generate_on_tied_qwen2_and_qwen3_matches_transformers() {
    greedy_matches_transformers("tiny_qwen2_tied");
    greedy_matches_transformers("tiny_qwen3");
}
