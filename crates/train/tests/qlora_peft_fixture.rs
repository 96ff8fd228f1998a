//! The generator of temper-lora's QLoRA interop fixture (`crates/lora/tests/fixtures/qlora/`,
//! see the README there): the trainer's QLoRA path — the tiny Llama's projections quantized to
//! NF4 as bitsandbytes does, LoRA r4 on all seven projections, a few SFT steps with AdamW —
//! then the adapter saved in PEFT's format. PEFT + bitsandbytes then run it
//! (`make_qlora_fixture.py --peft`) and `crates/lora/tests/qlora_peft_interop.rs` compares
//! their logits with Temper's.
//!
//! Regenerate with
//! `TEMPER_WRITE_FIXTURES=1 cargo test -p temper-train --test qlora_peft_fixture write_qlora_adapter`;
//! the other test retrains and checks the committed files are what this training writes.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::module::Module;
use temper_backend::FloatPrecision;
use temper_llm_arch::checkpoint::{SafetensorsSource, load_weights};
use temper_llm_arch::{LlamaForCausalLM, ModelConfig};
use temper_lora::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig, QuantType, TargetModules, quantize_base,
    save_adapter,
};
use temper_objectives::CausalLmConfig;
use temper_objectives::data::SftTokens;
use temper_train::{
    LoraFineTuning, ObjectiveConfig, Reference, ScheduleKind, TrainRows, Trainer, TrainerConfig,
};

mod common;
use common::{device, losses};

const STEPS: usize = 12;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lora/tests/fixtures/qlora")
}

fn tiny_llama() -> LlamaForCausalLM {
    let dir = fixture_dir().join("tiny_llama");
    let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
    let mut source = SafetensorsSource::open_dir(&dir).unwrap();
    load_weights(&config, &mut source, &device(), FloatPrecision::F32).unwrap()
}

/// Prompt `k, k+1, k+2`, completion counting on (mod 63, skipping 0): learnable in a few steps.
fn rows() -> Vec<SftTokens> {
    (0..8u32)
        .map(|k| {
            let ids: Vec<u32> = (0..10).map(|i| 1 + (k * 7 + i) % 63).collect();
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

/// The committed adapter's config: r 4, α 8, dropout 0.05 (inactive at inference, in PEFT as
/// in Temper), the seven projections by name.
fn lora_config() -> LoraConfig {
    LoraConfig::new(4, 8)
        .with_lora_dropout(0.05)
        .with_target_modules(TargetModules::names(&[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]))
        .with_base_model_name_or_path("tiny_llama")
}

/// `STEPS` SFT steps of QLoRA on the NF4 tiny Llama, seeded (the adapters' Kaiming init, the
/// dropout masks, the data order); the adapter written to `out`. Returns the logged losses.
fn train_and_save(out: &Path) -> Vec<f64> {
    let run = tempfile::tempdir().unwrap();
    let dev = device();
    dev.seed(21);
    let model = quantize_base(tiny_llama(), QuantType::Nf4).unwrap();
    let lora = LoraFineTuning::new(lora_config());
    let model = lora.inject(model, &dev).unwrap();
    let config = TrainerConfig {
        objective: ObjectiveConfig::Sft(CausalLmConfig::default()),
        learning_rate: 1e-2,
        max_steps: Some(STEPS),
        batch_size: 4,
        max_length: Some(16),
        seed: 7,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: 1,
        output_dir: run.path().to_path_buf(),
        vocab_tile: 64,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(
        model,
        config,
        TrainRows::Sequences(rows()),
        None,
        Reference::None,
        0,
    )
    .unwrap()
    .with_fine_tuning(Box::new(lora.clone()));
    let loss = losses(&trainer.train().unwrap());
    let trained = trainer.into_model().valid();
    save_adapter(&trained, lora.config(), out).unwrap();
    loss
}

/// Writes `qlora/temper_adapter/` (then run `make_qlora_fixture.py --peft`).
#[test]
fn write_qlora_adapter() {
    if std::env::var_os("TEMPER_WRITE_FIXTURES").is_none() {
        return;
    }
    let loss = train_and_save(&fixture_dir().join("temper_adapter"));
    eprintln!("QLoRA fixture losses: {loss:?}");
}

#[test]
fn retraining_writes_the_committed_qlora_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let loss = train_and_save(dir.path());
    // A real training: the loss falls (so B moved off PEFT's zero init).
    assert!(
        loss[STEPS - 1] < loss[0] * 0.9,
        "loss did not fall: {loss:?}"
    );
    for f in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        let ours = std::fs::read(dir.path().join(f)).unwrap();
        let committed = std::fs::read(fixture_dir().join("temper_adapter").join(f)).unwrap();
        assert!(ours == committed, "{f} differs from the committed fixture");
    }
}
