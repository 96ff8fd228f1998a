//! LoRA training on tiny random models built here (no downloads): SFT overfits while every
//! base weight stays bit-identical and every adapter moves; DPO uses the base with adapters
//! disabled as its reference (first loss ln 2, since B = 0 makes policy = reference); an
//! interrupted and resumed LoRA run equals an uninterrupted one; `run_stage` with a `[lora]`
//! table writes a merged HF directory or a PEFT adapter directory.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use temper_llm_arch::checkpoint::hf_tensors;
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM};
use temper_lora::{LoraConfig, adapter_tensors, num_trainable_params};
use temper_objectives::{CausalLmConfig, DpoConfig};
use temper_train::{
    FineTuning, LoraFineTuning, LoraSettings, ObjectiveConfig, Reference, ScheduleKind,
    StageConfig, TrainRows, Trainer,
};

mod common;
use common::{config, device, losses, pairs, sft_rows, tiny_model, write_base};

fn lora() -> LoraFineTuning {
    LoraFineTuning::new(LoraConfig::new(4, 8.0))
}

fn lora_model() -> (LlamaForCausalLM, LoraFineTuning) {
    let l = lora();
    let model = l.inject(tiny_model(), &device()).unwrap();
    (model, l)
}

/// Base weights (HF names, no adapters) as bit patterns.
fn base_bits(m: &LlamaForCausalLM) -> Vec<(String, Vec<u32>)> {
    hf_tensors(m)
        .into_iter()
        .map(|(n, t)| (n, t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

fn adapter_bits(m: &LlamaForCausalLM, l: &LoraFineTuning) -> Vec<(String, Vec<u32>)> {
    adapter_tensors(m, l.config())
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

fn mean_of(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn lora_sft_overfits_and_leaves_the_base_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (model, l) = lora_model();
    let base_before = base_bits(&model);
    let adapters_before = adapter_bits(&model, &l);
    // Only the adapters train: 2 layers × 7 projections × (in·r + r·out).
    let trainable = l.trainable(&model).unwrap();
    assert_eq!(trainable.len(), 2 * 7 * 2);
    assert!(num_trainable_params(&model) > 0);
    let mut cfg = config(
        ObjectiveConfig::Sft(CausalLmConfig::default()),
        dir.path(),
        40,
    );
    cfg.learning_rate = 1e-2;
    let mut trainer = Trainer::new(
        model,
        cfg,
        TrainRows::Sequences(sft_rows()),
        None,
        Reference::None,
        0,
    )
    .unwrap()
    .with_fine_tuning(Box::new(l.clone()));
    let summary = trainer.train().unwrap();
    let loss = losses(&summary);
    assert_eq!(loss.len(), 40);
    let (head, tail) = (mean_of(&loss[..3]), mean_of(&loss[loss.len() - 3..]));
    // The frozen random head of the tiny model (small logits after the final norm) caps how
    // far any adapter can push the loss (it plateaus near 2.87 from ln 32 ≈ 3.47), so the bar
    // is lower than full fine-tuning's.
    assert!(tail < head * 0.9, "LoRA SFT loss did not fall: {loss:?}");

    let trained = trainer.model();
    assert_eq!(
        base_bits(trained),
        base_before,
        "a base weight changed under LoRA"
    );
    let adapters_after = adapter_bits(trained, &l);
    assert_eq!(adapters_after.len(), adapters_before.len());
    for ((name, a), (_, b)) in adapters_before.iter().zip(&adapters_after) {
        assert_ne!(a, b, "{name} did not move");
    }
    // The checkpoint carries the adapter in PEFT's format and only a fingerprint of the
    // frozen base weights.
    let ckpt = dir.path().join("checkpoint-40");
    for f in [
        "base_weights.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.bpk",
    ] {
        assert!(ckpt.join(f).is_file(), "{f} missing from the checkpoint");
    }
    assert!(!ckpt.join("model.safetensors").exists());
}

#[test]
fn lora_dpo_uses_the_adapters_disabled_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (model, l) = lora_model();
    let base_before = base_bits(&model);
    let mut trainer = Trainer::new(
        model,
        config(ObjectiveConfig::Dpo(DpoConfig::default()), dir.path(), 30),
        TrainRows::Preference(pairs()),
        None,
        Reference::FromFineTuning,
        0,
    )
    .unwrap()
    .with_fine_tuning(Box::new(l));
    let loss = losses(&trainer.train().unwrap());
    // B = 0 at init: the policy equals its adapters-disabled reference, so DPO starts at ln 2.
    assert!(
        (loss[0] - std::f64::consts::LN_2).abs() < 1e-5,
        "first DPO loss {} is not ln 2: {loss:?}",
        loss[0]
    );
    let tail = mean_of(&loss[loss.len() - 3..]);
    assert!(
        tail < loss[0] * 0.85,
        "LoRA DPO loss did not fall: {loss:?}"
    );
    assert_eq!(base_bits(trainer.model()), base_before);
}

#[test]
fn lora_reference_forward_is_the_base_model() {
    let (model, l) = lora_model();
    // Move the adapters away from B = 0 so adapted and base differ.
    let model = temper_lora::unload(model).no_grad();
    let base = model.clone();
    let mut cfg = LoraConfig::new(4, 8.0);
    cfg.init_lora_weights = temper_lora::InitLoraWeights::Bool(false);
    let adapted = temper_lora::inject(model, &cfg, &device()).unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 3], [1, 4]), &device());
    let opts = ForwardOptions::default();
    let reference = l
        .reference_hidden(&adapted, ids.clone(), &opts)
        .unwrap()
        .unwrap();
    let plain = base.forward_hidden(ids.clone(), &opts, None).unwrap();
    let policy = adapted.forward_hidden(ids, &opts, None).unwrap();
    let diff = |a: Tensor<3>, b: Tensor<3>| {
        (a - b)
            .abs()
            .max()
            .into_data()
            .iter::<f32>()
            .next()
            .unwrap()
    };
    assert_eq!(diff(reference.clone(), plain), 0.0);
    assert!(diff(reference, policy) > 1e-4);
    // The policy itself still has its adapters enabled afterwards.
    assert!(
        temper_lora::projections(&adapted)
            .iter()
            .all(|(_, p)| p.lora.as_ref().is_some_and(|a| a.enabled))
    );
}

#[test]
fn resumed_lora_run_equals_uninterrupted_run() {
    let (init, l) = lora_model();
    let cfg = |dir: &Path| {
        let mut c = config(ObjectiveConfig::Sft(CausalLmConfig::default()), dir, 6);
        c.batch_size = 2;
        c.save_steps = Some(2);
        c.lr_scheduler_type = ScheduleKind::Cosine;
        c.warmup_steps = 1;
        c
    };
    let rows = || TrainRows::Sequences(sft_rows());
    let new = |dir: &Path| {
        Trainer::new(init.clone(), cfg(dir), rows(), None, Reference::None, 0)
            .unwrap()
            .with_fine_tuning(Box::new(l.clone()))
    };

    let a = tempfile::tempdir().unwrap();
    let mut full = new(a.path());
    let summary_a = full.train().unwrap();

    let b = tempfile::tempdir().unwrap();
    let mut first = new(b.path()).with_stop_after(Some(3));
    assert!(first.train().unwrap().stopped_early);
    drop(first);
    let mut second = new(b.path());
    assert!(second.resume_latest().unwrap());
    assert_eq!(second.state().step, 2);
    let summary_b = second.train().unwrap();

    let (ma, mb) = (full.model(), second.model());
    assert_eq!(base_bits(ma), base_bits(mb));
    assert_eq!(adapter_bits(ma, &l), adapter_bits(mb, &l));
    assert_eq!(base_bits(ma), base_bits(&init));
    assert_eq!(summary_a.log_history, summary_b.log_history);

    // Resuming into other base weights is refused (the checkpoint holds only their
    // fingerprint).
    let (other, _) = lora_model();
    assert_ne!(base_bits(&other), base_bits(&init));
    let mut wrong = Trainer::new(other, cfg(b.path()), rows(), None, Reference::None, 0)
        .unwrap()
        .with_fine_tuning(Box::new(l.clone()));
    let err = wrong.resume_latest().unwrap_err().to_string();
    assert!(err.contains("other base weights"), "{err}");
}

const STAGE: &str = r#"
model = "base"
train_file = "train.jsonl"

[lora]
r = 4

[trainer]
learning_rate = 1e-2
max_steps = 6
batch_size = 3
logging_steps = 2
save_steps = 3
max_length = 16
vocab_tile = 16
output_dir = "out"

[trainer.objective]
type = "sft"
"#;

#[test]
fn stage_config_lora_table() {
    let stage = StageConfig::from_toml_str(STAGE).unwrap();
    let l = stage.lora.clone().unwrap();
    assert_eq!(l, LoraSettings::new(4));
    assert!(!stage.save_adapter_only);
    let c = l.to_lora_config();
    assert_eq!((c.r, c.lora_alpha), (4, 8.0));
    assert_eq!(
        c.target_modules,
        Some(temper_lora::TargetModules::all_linear())
    );

    let text = STAGE.replace(
        "r = 4",
        "r = 8\nlora_alpha = 4\nlora_dropout = 0.1\nuse_rslora = true\n\
         target_modules = [\"q_proj\", \"v_proj\"]",
    );
    let text = format!("save_adapter_only = true\n{text}");
    let stage = StageConfig::from_toml_str(&text).unwrap();
    assert!(stage.save_adapter_only);
    let c = stage.lora.unwrap().to_lora_config();
    assert_eq!((c.r, c.lora_alpha, c.lora_dropout), (8, 4.0, 0.1));
    assert!(c.use_rslora);
    assert_eq!(
        c.target_modules,
        Some(temper_lora::TargetModules::names(&["q_proj", "v_proj"]))
    );

    // Unknown keys, r = 0, and adapter-only output without [lora] are rejected.
    assert!(StageConfig::from_toml_str(&STAGE.replace("r = 4", "r = 4\nrank = 2")).is_err());
    assert!(StageConfig::from_toml_str(&STAGE.replace("r = 4", "r = 0")).is_err());
    let no_lora = format!(
        "save_adapter_only = true\n{}",
        STAGE.replace("[lora]\nr = 4\n", "")
    );
    assert!(StageConfig::from_toml_str(&no_lora).is_err());
}

#[test]
fn run_stage_with_lora_writes_merged_or_adapter_dirs() {
    use temper_backend::FloatPrecision;
    use temper_llm_arch::Pretrained;
    let dir = tempfile::tempdir().unwrap();
    write_base(dir.path());
    std::fs::write(dir.path().join("stage.toml"), STAGE).unwrap();
    let stage = StageConfig::from_toml_file(dir.path().join("stage.toml")).unwrap();

    // Merged (default): an HF directory that loads as a plain model and differs from the base.
    let summary = temper_train::run_stage(&stage, false).unwrap();
    assert_eq!(summary.steps, 6);
    let out = dir.path().join("out");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(out.join("checkpoint-3/adapter_model.safetensors").is_file());
    let base = Pretrained::load(
        dir.path().join("base"),
        &Device::flex(),
        FloatPrecision::F32,
    )
    .unwrap();
    let merged = Pretrained::load(&out, &Device::flex(), FloatPrecision::F32).unwrap();
    assert!(temper_lora::adapter_paths(&merged.model).is_empty());
    let (wb, wm) = (hf_tensors(&base.model), hf_tensors(&merged.model));
    let q = "model.layers.0.self_attn.q_proj.weight";
    let pick = |w: &[(String, temper_llm_arch::checkpoint::HostTensor)]| {
        w.iter().find(|(n, _)| n == q).unwrap().1.data.clone()
    };
    assert_ne!(pick(&wb), pick(&wm), "merging changed nothing");
    let norm = "model.norm.weight";
    let pick_norm = |w: &[(String, temper_llm_arch::checkpoint::HostTensor)]| {
        w.iter().find(|(n, _)| n == norm).unwrap().1.data.clone()
    };
    assert_eq!(pick_norm(&wb), pick_norm(&wm), "a non-adapted weight moved");

    // Resuming the finished run trains no further.
    let mut again = stage.clone();
    again.resume = true;
    let s2 = temper_train::run_stage(&again, false).unwrap();
    assert_eq!(s2.log_history, summary.log_history);

    // Adapter only: PEFT files + tokenizer, loadable onto the base.
    let mut adapter_stage = stage.clone();
    adapter_stage.save_adapter_only = true;
    adapter_stage.trainer.output_dir = dir.path().join("adapter");
    temper_train::run_stage(&adapter_stage, false).unwrap();
    let ad = dir.path().join("adapter");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(ad.join(f).is_file(), "{f} missing");
    }
    assert!(!ad.join("model.safetensors").exists());
    let cfg = temper_lora::LoraConfig::load(&ad).unwrap();
    assert_eq!((cfg.r, cfg.lora_alpha), (4, 8.0));
    // The base is named by its absolute path: the adapter loads from any working directory.
    let base_name = cfg.base_model_name_or_path.clone().unwrap_or_default();
    assert!(
        std::path::Path::new(&base_name).is_absolute(),
        "{base_name}"
    );
    let (loaded, _) = temper_lora::load_adapter(base.model, &ad, &Device::flex()).unwrap();
    assert_eq!(temper_lora::adapter_paths(&loaded).len(), 2 * 7);

    // The adapter directory as `--model`: its base (named in adapter_config.json) with the
    // adapter merged is the merged run's output (same seed, same steps).
    assert!(temper_lora::is_adapter_dir(&ad) && !temper_lora::is_adapter_dir(&out));
    let from_adapter =
        temper_lora::load_merged_adapter(&ad, None, &Device::flex(), FloatPrecision::F32).unwrap();
    assert!(temper_lora::adapter_paths(&from_adapter.model).is_empty());
    for ((n1, t1), (n2, t2)) in hf_tensors(&merged.model)
        .iter()
        .zip(&hf_tensors(&from_adapter.model))
    {
        assert_eq!(n1, n2);
        let max = t1
            .data
            .iter()
            .zip(&t2.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-6, "{n1}: {max}");
    }
    let moved = dir.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(ad.join(f), moved.join(f)).unwrap();
    }
    let mut cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(moved.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg_json["base_model_name_or_path"] = "no/such-model".into();
    std::fs::write(moved.join("adapter_config.json"), cfg_json.to_string()).unwrap();
    let err = temper_lora::load_merged_adapter(&moved, None, &Device::flex(), FloatPrecision::F32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("base model `no/such-model` not found"),
        "{err}"
    );
    temper_lora::load_merged_adapter(
        &moved,
        Some(&dir.path().join("base")),
        &Device::flex(),
        FloatPrecision::F32,
    )
    .unwrap();

    // DPO through run_stage: the default reference becomes the adapters-disabled base.
    let text = STAGE
        .replace("train.jsonl", "pairs.jsonl")
        .replace("type = \"sft\"", "type = \"dpo\"")
        .replace("batch_size = 3", "batch_size = 2")
        .replace("logging_steps = 2", "logging_steps = 1")
        .replace("output_dir = \"out\"", "output_dir = \"dpo\"");
    std::fs::write(dir.path().join("dpo.toml"), text).unwrap();
    let dpo = StageConfig::from_toml_file(dir.path().join("dpo.toml")).unwrap();
    let s = temper_train::run_stage(&dpo, false).unwrap();
    let l = losses(&s);
    assert!((l[0] - std::f64::consts::LN_2).abs() < 1e-5, "{l:?}");
}

/// `precision = "bf16-mixed"` with `[lora]`: the frozen base is stored in bf16, the adapters
/// (and their AdamW moments) in f32, the merged output in the base's bf16 (PEFT's
/// `merge_and_unload` on a bf16 model), and a finished run resumes to the same history.
#[test]
fn run_stage_bf16_mixed_lora_keeps_f32_adapters_on_a_bf16_base() {
    use burn::tensor::DType;
    use temper_backend::FloatPrecision;
    use temper_llm_arch::Pretrained;
    let dir = tempfile::tempdir().unwrap();
    write_base(dir.path());
    let text = format!("precision = \"bf16-mixed\"\n{STAGE}");
    std::fs::write(dir.path().join("stage.toml"), text).unwrap();
    let stage = StageConfig::from_toml_file(dir.path().join("stage.toml")).unwrap();
    let summary = temper_train::run_stage(&stage, false).unwrap();
    assert_eq!(summary.steps, 6);
    let l: Vec<f64> = summary
        .log_history
        .iter()
        .filter_map(|r| r.get("loss"))
        .collect();
    assert!(l[l.len() - 1] < l[0], "{l:?}");

    let out = dir.path().join("out");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let merged = Pretrained::load(&out, &Device::flex(), FloatPrecision::BF16).unwrap();
    assert_eq!(
        merged.model.model.embed_tokens.weight.val().dtype(),
        DType::BF16
    );
    // The checkpoint's adapter is f32 (trained in f32 on the bf16 base): its safetensors
    // header names only F32 tensors.
    let bytes = std::fs::read(out.join("checkpoint-6/adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let dtypes: std::collections::BTreeSet<String> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dtypes, ["F32".to_string()].into());
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoint-6/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["precision"], "bf16-mixed");

    let mut again = stage.clone();
    again.resume = true;
    let s2 = temper_train::run_stage(&again, false).unwrap();
    assert_eq!(s2.log_history, summary.log_history);
    // Another precision does not resume this run.
    let mut other = stage.clone();
    other.resume = true;
    other.precision = "f32".into();
    let err = temper_train::run_stage(&other, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("precision is bf16-mixed in the checkpoint"),
        "{err}"
    );
}
