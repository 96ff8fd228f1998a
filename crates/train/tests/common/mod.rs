//! What the trainer tests share: a tiny random model, a short constant-LR configuration and
//! learnable rows for each data shape.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use burn::tensor::Device;
use temper_llm_arch::{LlamaForCausalLM, ModelConfig};
use temper_objectives::data::{PreferenceTokens, SftTokens};
use temper_train::{ObjectiveConfig, ScheduleKind, TrainSummary, TrainerConfig};

mod tiny_base;

pub const VOCAB: usize = 32;

pub fn device() -> Device {
    Device::flex().autodiff()
}

pub fn tiny_config() -> ModelConfig {
    ModelConfig::tiny(VOCAB, 32, 2, 4, 2)
}

pub fn tiny_model() -> LlamaForCausalLM {
    LlamaForCausalLM::init(&tiny_config(), &device())
}

/// `steps` steps at a constant 1e-2, batch 4, logging every step.
pub fn config(objective: ObjectiveConfig, dir: &Path, steps: usize) -> TrainerConfig {
    TrainerConfig {
        objective,
        learning_rate: 1e-2,
        max_steps: Some(steps),
        batch_size: 4,
        gradient_accumulation_steps: 1,
        max_length: Some(16),
        seed: 7,
        warmup_steps: 0,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: 1,
        output_dir: dir.to_path_buf(),
        vocab_tile: 16,
        ..TrainerConfig::default()
    }
}

/// Prompt `k, k+1, k+2`, completion counting on: a pattern the model can learn.
pub fn sft_rows() -> Vec<SftTokens> {
    (0..6u32)
        .map(|k| {
            let ids: Vec<u32> = (0..8)
                .map(|i| 1 + (k * 3 + i) % (VOCAB as u32 - 1))
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < 3 { -100 } else { i64::from(t) })
                .collect();
            SftTokens {
                input_ids: ids,
                labels,
                completion_start: Some(3),
            }
        })
        .collect()
}

/// Chosen continues the prompt's count, rejected repeats its last token.
pub fn pairs() -> Vec<PreferenceTokens> {
    (0..6u32)
        .map(|k| {
            let start = 1 + (k * 5) % (VOCAB as u32 - 8);
            let prompt: Vec<u32> = (0..3).map(|i| start + i).collect();
            let last = prompt[2];
            PreferenceTokens {
                chosen_ids: (1..5).map(|i| (last + i) % VOCAB as u32).collect(),
                rejected_ids: vec![last; 4],
                prompt_ids: prompt,
            }
        })
        .collect()
}

/// The logged training losses, in step order.
pub fn losses(summary: &TrainSummary) -> Vec<f64> {
    summary
        .log_history
        .iter()
        .filter_map(|r| r.get("loss"))
        .collect()
}

/// Writes `dir/base` (a tiny tied-embedding HF directory with a tokenizer), `dir/train.jsonl`
/// (prompt–completion rows) and `dir/pairs.jsonl` (preference rows).
pub fn write_base(dir: &Path) {
    tiny_base::write_tiny_base(&dir.join("base"), VOCAB, 32);
    let rows = [
        r#"{"prompt": "the cat", "completion": " sat on the mat"}"#,
        r#"{"prompt": "a dog", "completion": " ran on a mat"}"#,
        r#"{"prompt": "the dog", "completion": " sat on a mat"}"#,
    ];
    std::fs::write(dir.join("train.jsonl"), rows.join("\n")).unwrap();
    let pairs = [
        r#"{"prompt": "the cat", "chosen": " sat on the mat", "rejected": " ran"}"#,
        r#"{"prompt": "a dog", "chosen": " ran on a mat", "rejected": " sat"}"#,
    ];
    std::fs::write(dir.join("pairs.jsonl"), pairs.join("\n")).unwrap();
}
