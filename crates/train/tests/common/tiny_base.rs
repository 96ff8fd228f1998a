//! A tiny random base-model directory for tests that run training end to end.
//!
//! Shared by the trainer tests (through `common/mod.rs`) and by the CLI's resume test
//! (`crates/cli/tests/train_resume.rs` includes this file with `#[path]`), so it may only use
//! crates both test targets depend on: `temper-llm-arch` and `temper-backend`.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use temper_backend::{Device, FloatPrecision};
use temper_llm_arch::{LlamaForCausalLM, ModelConfig, Pretrained, SpecialTokens, Tokenizer};

/// A word-level tokenizer over the words of the test rows ("the cat sat on the mat", "a dog
/// ran"): ids 0–2 are `<unk>`, `<s>`, `</s>`.
const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "unk_token": "<unk>",
    "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "cat": 4, "sat": 5, "on": 6, "mat": 7, "a": 8, "dog": 9, "ran": 10}}
}"#;

/// Writes `dir` as a Hugging Face model directory: a randomly initialised tied-embedding
/// `ModelConfig::tiny(vocab, hidden, 2, 4, 2)` in f32 with [`TOKENIZER_JSON`], no BOS, EOS
/// `</s>`.
pub fn write_tiny_base(dir: &Path, vocab: usize, hidden: usize) {
    let mut mc = ModelConfig::tiny(vocab, hidden, 2, 4, 2);
    mc.tie_word_embeddings = true;
    mc.bos_token_id = Some(1);
    mc.eos_token_ids = vec![2];
    let base = Pretrained {
        model: LlamaForCausalLM::init(&mc, &Device::flex()),
        tokenizer: Tokenizer::from_json_str(TOKENIZER_JSON, "<test>").unwrap(),
        chat_template: None,
        special: SpecialTokens {
            bos: None,
            eos: vec![2],
            pad: None,
        },
        source: "<memory>".into(),
    };
    base.save(dir, FloatPrecision::F32).unwrap();
}
