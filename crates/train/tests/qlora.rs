//! QLoRA on tiny random models: LoRA adapters trained on top of a block-quantized frozen base
//! (`temper_lora::quantize_base`). The quantized model computes what the dense model over its
//! decoded weights computes; SFT lowers the loss while the stored blocks stay as they were;
//! gradient checkpointing gives the same losses; merging writes a dense model, the decoded base
//! plus the update (never re-quantized).
#![allow(clippy::unwrap_used)]

use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use temper_llm_arch::checkpoint::hf_tensors;
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM};
use temper_lora::{LoraConfig, QuantType, merge, projections, quantize_base};
use temper_objectives::CausalLmConfig;
use temper_train::{LoraFineTuning, ObjectiveConfig, Reference, TrainRows, Trainer};

mod common;
use common::{VOCAB, config, device, losses, sft_rows, tiny_model};

fn logits(model: &LlamaForCausalLM) -> Vec<f32> {
    let ids: Vec<i64> = (0..12).map(|i| (i * 5 + 3) % VOCAB as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 6]), &device());
    model
        .forward(ids, &ForwardOptions::default())
        .unwrap()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Every projection's stored blocks (NF4 packed nibbles and scale codes, or ggml bytes).
fn stored_blocks(model: &LlamaForCausalLM) -> Vec<Vec<u8>> {
    projections(model)
        .into_iter()
        .map(|(path, p)| {
            let q = p
                .quantized
                .as_ref()
                .unwrap_or_else(|| panic!("{path} is dense"));
            match q.nf4() {
                Some(t) => [t.packed(), t.absmax_codes()].concat(),
                None => q.block_bytes().unwrap().to_vec(),
            }
        })
        .collect()
}

#[test]
fn a_quantized_base_computes_what_its_decoded_dense_model_computes() {
    for ty in [QuantType::Nf4, QuantType::Q8_0] {
        let quantized = quantize_base(tiny_model(), ty).unwrap();
        let mut dense = quantized.clone();
        for (_, p) in temper_lora::projections_mut(&mut dense) {
            p.dequantize_base();
        }
        let (q, d) = (logits(&quantized), logits(&dense));
        let max = d.iter().fold(0.0f32, |a, b| a.max(b.abs()));
        let diff = q
            .iter()
            .zip(&d)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            diff <= 1e-5 * max,
            "{ty}: logits differ by {diff} (max {max})"
        );
        // And the encoding is lossy: the original dense model is measurably elsewhere.
        let original = logits(&tiny_model());
        let off = original
            .iter()
            .zip(&d)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            off > 1e-4 * max,
            "{ty}: quantization changed nothing ({off})"
        );
    }
}

/// 30 SFT steps of LoRA r4 on a seeded tiny model whose base is quantized to `ty`: the
/// losses, the trained model and the base's stored blocks before training.
fn qlora_losses(ty: QuantType, checkpointing: bool) -> (Vec<f64>, LlamaForCausalLM, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let dev = device();
    dev.seed(5);
    let model = quantize_base(LlamaForCausalLM::init(&common::tiny_config(), &dev), ty).unwrap();
    let blocks = stored_blocks(&model);
    let l = LoraFineTuning::new(LoraConfig::new(4, 8.0));
    let model = l.inject(model, &dev).unwrap();
    let mut cfg = config(
        ObjectiveConfig::Sft(CausalLmConfig::default()),
        dir.path(),
        30,
    );
    cfg.learning_rate = 1e-2;
    cfg.gradient_checkpointing = checkpointing;
    let mut trainer = Trainer::new(
        model,
        cfg,
        TrainRows::Sequences(sft_rows()),
        None,
        Reference::None,
        0,
    )
    .unwrap()
    .with_fine_tuning(Box::new(l));
    let loss = losses(&trainer.train().unwrap());
    (loss, trainer.into_model(), blocks)
}

#[test]
fn qlora_sft_lowers_the_loss_and_leaves_the_blocks_untouched() {
    let (loss, trained, before) = qlora_losses(QuantType::Nf4, false);
    let head = loss[..3].iter().sum::<f64>() / 3.0;
    let tail = loss[loss.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(tail < head * 0.9, "QLoRA SFT loss did not fall: {loss:?}");
    assert_eq!(stored_blocks(&trained), before, "a quantized base changed");

    // Merging writes the decoded base plus the update, dense.
    let decoded: Vec<(String, Vec<f32>)> = projections(&trained)
        .into_iter()
        .map(|(path, p)| {
            (
                path,
                p.dense_weight()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap(),
            )
        })
        .collect();
    let deltas: Vec<Vec<f32>> = projections(&trained)
        .into_iter()
        .map(|(_, p)| {
            p.lora
                .as_ref()
                .unwrap()
                .dense_delta()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        })
        .collect();
    let merged = merge(trained.valid()).unwrap();
    let saved = hf_tensors(&merged);
    for ((path, base), delta) in decoded.iter().zip(&deltas) {
        let p = projections(&merged)
            .into_iter()
            .find(|(n, _)| n == path)
            .unwrap()
            .1;
        assert!(
            p.quantized.is_none(),
            "{path} stayed quantized after merging"
        );
        let (_, t) = saved
            .iter()
            .find(|(n, _)| *n == format!("{path}.weight"))
            .unwrap();
        // HF layout `[out, in]` is the transpose of burn's `[in, out]`.
        let (d_in, d_out) = p.dims();
        for i in 0..d_in {
            for o in 0..d_out {
                let want = base[i * d_out + o] + delta[i * d_out + o];
                let got = t.data[o * d_in + i];
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{path}[{o}, {i}]: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn gradient_checkpointing_gives_the_same_qlora_losses() {
    let (plain, _, _) = qlora_losses(QuantType::Q8_0, false);
    let (checkpointed, _, _) = qlora_losses(QuantType::Q8_0, true);
    assert_eq!(plain, checkpointed);
}

#[test]
fn quantizing_while_loading_stores_the_blocks_of_quantizing_after_loading() {
    use temper_backend::FloatPrecision;
    use temper_llm_arch::{Pretrained, ProjectionStorage};
    let dir = tempfile::tempdir().unwrap();
    common::write_base(dir.path());
    let base = dir.path().join("base");
    // bf16: transformers rounds to `torch_dtype` before bitsandbytes encodes, and so does the
    // loader, so both routes see the same values.
    for (ty, precision) in [
        (QuantType::Nf4, FloatPrecision::F32),
        (QuantType::Nf4, FloatPrecision::BF16),
        (QuantType::Q8_0, FloatPrecision::F32),
    ] {
        let storage = ProjectionStorage::Quantize(ty);
        let while_loading = Pretrained::load_with(&base, &device(), precision, storage)
            .unwrap()
            .model;
        let after = quantize_base(
            Pretrained::load(&base, &device(), precision).unwrap().model,
            ty,
        )
        .unwrap();
        assert_eq!(
            stored_blocks(&while_loading),
            stored_blocks(&after),
            "{ty:?} {precision:?}"
        );
        assert_eq!(
            logits(&while_loading),
            logits(&after),
            "{ty:?} {precision:?}"
        );
    }
    // A directory has no GGUF blocks to keep.
    let err = Pretrained::load_with(
        &base,
        &device(),
        FloatPrecision::F32,
        ProjectionStorage::GgufBlocks,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("only a .gguf file"), "{err}");
}

#[test]
fn a_run_the_machine_cannot_hold_is_refused_before_its_weights_are_read() {
    let dir = tempfile::tempdir().unwrap();
    common::write_base(dir.path());
    let base = dir.path().join("base");
    // An 8B-wide model with a hundred thousand layers (~0.2 billion parameters a layer), and
    // no weights at all: only the estimate can fail first.
    let path = base.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (k, v) in [
        ("num_hidden_layers", 100_000),
        ("hidden_size", 4096),
        ("intermediate_size", 14336),
        ("num_attention_heads", 32),
        ("num_key_value_heads", 8),
    ] {
        cfg[k] = v.into();
    }
    std::fs::write(&path, cfg.to_string()).unwrap();
    std::fs::remove_file(base.join("model.safetensors")).unwrap();
    let stage_text = r#"
model = "base"
train_file = "train.jsonl"
[lora]
r = 4
quantize_base = "nf4"
[trainer]
max_steps = 1
batch_size = 2
output_dir = "out"
[trainer.objective]
type = "sft"
"#;
    std::fs::write(dir.path().join("stage.toml"), stage_text).unwrap();
    let stage = temper_train::StageConfig::from_toml_file(dir.path().join("stage.toml")).unwrap();
    assert!(stage.memory_check, "the check is on by default");
    let err = temper_train::run_stage(&stage, false).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, temper_train::TrainError::WontFit { .. }),
        "{msg}"
    );
    for needle in [
        "this run needs about",
        "GiB (weights",
        "is available",
        "memory_check = false",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    // The adapter's rank and the data's longest row are priced: 2 rows a step, checkpointing
    // suggested.
    assert!(msg.contains("gradient_checkpointing = true"), "{msg}");

    // Without the check the run goes on to loading, which fails on the missing weights.
    let mut unchecked = stage.clone();
    unchecked.memory_check = false;
    let msg = temper_train::run_stage(&unchecked, false)
        .unwrap_err()
        .to_string();
    assert!(!msg.contains("this run needs about"), "{msg}");
    assert!(
        msg.contains("model.safetensors") || msg.contains("weights"),
        "{msg}"
    );
}

/// A QLoRA run stopped at step 3 and resumed from its step-2 checkpoint ends where the
/// uninterrupted run ends (losses, adapters, blocks); a checkpoint is refused on another
/// quantized base (its fingerprint covers the decoded blocks).
#[test]
fn a_resumed_qlora_run_equals_the_uninterrupted_run() {
    let dev = device();
    dev.seed(11);
    let base = quantize_base(
        LlamaForCausalLM::init(&common::tiny_config(), &dev),
        QuantType::Nf4,
    )
    .unwrap();
    let l = LoraFineTuning::new(LoraConfig::new(4, 8.0));
    let init = l.inject(base, &dev).unwrap();
    let new = |dir: &std::path::Path, model: LlamaForCausalLM| {
        let mut cfg = config(ObjectiveConfig::Sft(CausalLmConfig::default()), dir, 6);
        cfg.save_steps = Some(2);
        cfg.gradient_checkpointing = true;
        Trainer::new(
            model,
            cfg,
            TrainRows::Sequences(sft_rows()),
            None,
            Reference::None,
            0,
        )
        .unwrap()
        .with_fine_tuning(Box::new(l.clone()))
    };
    let a = tempfile::tempdir().unwrap();
    let mut whole = new(a.path(), init.clone());
    let summary_a = whole.train().unwrap();

    let b = tempfile::tempdir().unwrap();
    let mut first = new(b.path(), init.clone()).with_stop_after(Some(3));
    assert!(first.train().unwrap().stopped_early);
    drop(first);
    let mut second = new(b.path(), init.clone());
    assert!(second.resume_latest().unwrap());
    assert_eq!(second.state().step, 2);
    let summary_b = second.train().unwrap();
    assert_eq!(summary_a.log_history, summary_b.log_history);
    assert_eq!(logits(whole.model()), logits(second.model()));
    assert_eq!(stored_blocks(second.model()), stored_blocks(&init));

    dev.seed(12);
    let other = quantize_base(
        LlamaForCausalLM::init(&common::tiny_config(), &dev),
        QuantType::Nf4,
    )
    .unwrap();
    let other = l.inject(other, &dev).unwrap();
    let err = new(b.path(), other)
        .resume_latest()
        .unwrap_err()
        .to_string();
    assert!(err.contains("other base weights"), "{err}");
}
