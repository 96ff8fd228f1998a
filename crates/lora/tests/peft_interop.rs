//! PEFT 0.21.2 interop on a tiny random Llama (fixtures made by `tests/fixtures/make_fixtures.py`,
//! see the README there), merge/unmerge, and frozen-base training.

use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use safetensors::SafeTensors;
use temper_backend::FloatPrecision;
use temper_llm_arch::checkpoint::hf_tensors;
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM};
use temper_lora::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraConfig, LoraConfigExt, TargetModules, adapter_paths,
    load_adapter, merge, merge_and_unload, num_trainable_params, projections, projections_mut,
    save_adapter, save_merged, set_adapters_enabled, unmerge,
};

mod common;
use common::{assert_close, fixtures, load_dir, read_f32};

fn device() -> Device {
    Device::flex()
}

fn tiny(device: &Device) -> LlamaForCausalLM {
    load_dir(&fixtures().join("tiny_llama"), device)
}

/// `(shape, values)` of a tensor of a fixture file, as f32 (int64 ids converted).
fn read_tensor(file: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    read_f32(&fixtures().join(file), name)
}

fn input_ids(device: &Device) -> Tensor<2, Int> {
    let (shape, ids) = read_tensor("expected.safetensors", "input_ids");
    let ids: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), device)
}

fn logits(model: &LlamaForCausalLM, device: &Device) -> Vec<f32> {
    model
        .forward(input_ids(device), &ForwardOptions::default())
        .expect("forward")
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32")
}

fn expected(name: &str) -> Vec<f32> {
    read_tensor("expected.safetensors", name).1
}

#[test]
fn base_model_matches_transformers() {
    let d = device();
    assert_close(
        "base",
        &logits(&tiny(&d), &d),
        &expected("base_logits"),
        1e-5,
    );
}

#[test]
fn peft_adapter_logits_match_peft() {
    let d = device();
    let (mut model, config) =
        load_adapter(tiny(&d), fixtures().join("peft_adapter"), &d).expect("load adapter");
    assert_eq!(config.r, 4);
    assert_eq!(adapter_paths(&model).len(), 14);
    assert_close(
        "adapted",
        &logits(&model, &d),
        &expected("adapter_logits"),
        1e-5,
    );
    set_adapters_enabled(&mut model, false).expect("disable");
    assert_close(
        "adapters disabled",
        &logits(&model, &d),
        &expected("adapter_disabled_logits"),
        1e-5,
    );
    set_adapters_enabled(&mut model, true).expect("enable");
    assert_close(
        "re-enabled",
        &logits(&model, &d),
        &expected("adapter_logits"),
        1e-5,
    );
}

#[test]
fn peft_rslora_adapter_with_two_targets_matches_peft() {
    let d = device();
    let (model, config) =
        load_adapter(tiny(&d), fixtures().join("peft_adapter_rslora"), &d).expect("load");
    assert!(config.use_rslora);
    assert_eq!(adapter_paths(&model).len(), 4);
    // Dropout 0.1 in the config: inference on a plain (non-autodiff) device applies none.
    assert_close(
        "rslora",
        &logits(&model, &d),
        &expected("rslora_adapter_logits"),
        1e-5,
    );
}

#[test]
fn merge_and_unload_equals_adapter_forward_and_peft_merge() {
    let d = device();
    let (model, _) = load_adapter(tiny(&d), fixtures().join("peft_adapter"), &d).expect("load");
    let adapted = logits(&model, &d);
    let merged = merge_and_unload(model.clone()).expect("merge");
    assert!(adapter_paths(&merged).is_empty());
    assert_close(
        "merged vs adapter forward",
        &logits(&merged, &d),
        &adapted,
        1e-5,
    );
    assert_close(
        "merged vs PEFT",
        &logits(&merged, &d),
        &expected("merged_logits"),
        1e-5,
    );
    // Weights equal PEFT's merge_and_unload state dict.
    for (name, t) in hf_tensors(&merged) {
        let (shape, want) = read_tensor("peft_merged.safetensors", &name);
        assert_eq!(t.shape, shape, "{name}");
        assert_close(&name, &t.data, &want, 1e-6);
    }
    // merge keeps the adapters (marked merged) and the forward unchanged; unmerge restores
    // the base weights.
    let base = tiny(&d);
    let m = merge(model).expect("merge");
    assert_close("merged, adapters kept", &logits(&m, &d), &adapted, 1e-5);
    let u = unmerge(m).expect("unmerge");
    assert_close("unmerged", &logits(&u, &d), &adapted, 1e-5);
    for ((p, a), (_, b)) in projections(&u).into_iter().zip(projections(&base)) {
        let (a, b) = (a.weight.val().into_data(), b.weight.val().into_data());
        let (a, b) = (
            a.try_into_vec::<f32>().expect("f32"),
            b.try_into_vec::<f32>().expect("f32"),
        );
        assert_close(&p, &a, &b, 1e-6);
    }
}

#[test]
fn saved_adapter_is_peft_compatible_and_reloads() {
    let d = device();
    let src = fixtures().join("peft_adapter");
    let (model, config) = load_adapter(tiny(&d), &src, &d).expect("load");
    let dir = tempfile::tempdir().expect("tempdir");
    save_adapter(&model, &config, dir.path()).expect("save");
    // Same keys, shapes and values as PEFT's own file.
    let ours = std::fs::read(dir.path().join(ADAPTER_WEIGHTS)).expect("ours");
    let theirs = std::fs::read(src.join(ADAPTER_WEIGHTS)).expect("theirs");
    let (ours, theirs) = (
        SafeTensors::deserialize(&ours).expect("st"),
        SafeTensors::deserialize(&theirs).expect("st"),
    );
    let mut names = ours.names();
    names.sort();
    let mut want = theirs.names();
    want.sort();
    assert_eq!(names, want);
    for n in names {
        let (a, b) = (ours.tensor(n).expect("a"), theirs.tensor(n).expect("b"));
        assert_eq!(a.shape(), b.shape(), "{n}");
        assert_eq!(a.dtype(), b.dtype(), "{n}");
        assert_eq!(a.data(), b.data(), "{n}: values differ");
    }
    // The config round-trips, PEFT's unknown keys included.
    let reread = LoraConfig::load(dir.path()).expect("config");
    assert_eq!(reread, config);
    assert!(reread.extra.contains_key("peft_version"));
    let (reloaded, _) = load_adapter(tiny(&d), dir.path(), &d).expect("reload");
    assert_close(
        "reloaded",
        &logits(&reloaded, &d),
        &expected("adapter_logits"),
        1e-5,
    );
    assert!(!dir.path().join(format!("{ADAPTER_CONFIG}.tmp")).exists());
}

/// The adapter Temper writes for the reverse direction: a regex target, rank 3, and
/// `modules_to_save = ["lm_head"]`, with deterministic non-zero weights (no RNG involved).
fn temper_adapter(device: &Device) -> (LlamaForCausalLM, LoraConfig) {
    let config = LoraConfig::new(3, 6.0)
        .with_target_modules(TargetModules::Pattern(
            r"model\.layers\.1\.mlp\..*_proj|.*\.(q|v|o)_proj".into(),
        ))
        .with_modules_to_save(&["lm_head"])
        .with_base_model_name_or_path("tiny_llama");
    let mut model = config.init(tiny(device), device).expect("inject");
    let fill = |shape: [usize; 2], seed: f32| {
        let n = shape[0] * shape[1];
        let v: Vec<f32> = (0..n)
            .map(|k| 0.3 * (0.37 * k as f32 + seed).sin())
            .collect();
        Tensor::<2>::from_data(TensorData::new(v, shape), device)
    };
    for (i, (_, proj)) in projections_mut(&mut model).into_iter().enumerate() {
        if let Some(lora) = proj.lora.as_mut() {
            let a = lora.lora_a.val().dims();
            let b = lora.lora_b.val().dims();
            lora.lora_a = Param::from_tensor(fill(a, i as f32));
            lora.lora_b = Param::from_tensor(fill(b, 100.0 + i as f32));
        }
    }
    if let Some(head) = model.lm_head.as_mut() {
        let w = head.weight.val();
        let dims = w.dims();
        head.weight = Param::from_tensor(w + fill(dims, 7.0) * 0.2);
    }
    (model, config)
}

/// Regenerates `fixtures/temper_adapter/` (then run `make_fixtures.py --temper`):
/// `TEMPER_WRITE_FIXTURES=1 cargo test -p temper-lora --test peft_interop write_temper_adapter`.
#[test]
fn write_temper_adapter() {
    if std::env::var_os("TEMPER_WRITE_FIXTURES").is_none() {
        return;
    }
    let d = device();
    let (model, config) = temper_adapter(&d);
    save_adapter(&model, &config, fixtures().join("temper_adapter")).expect("save");
}

#[test]
fn temper_adapter_loads_in_peft_with_equal_logits() {
    let d = device();
    let (model, config) = temper_adapter(&d);
    // Byte-identical to the committed files PEFT was run on.
    let dir = tempfile::tempdir().expect("tempdir");
    save_adapter(&model, &config, dir.path()).expect("save");
    for f in [ADAPTER_WEIGHTS, ADAPTER_CONFIG] {
        let ours = std::fs::read(dir.path().join(f)).expect("ours");
        let committed = std::fs::read(fixtures().join("temper_adapter").join(f)).expect("fixture");
        assert!(ours == committed, "{f} differs from the committed fixture");
    }
    let (_, peft_logits) = read_tensor(
        "expected_temper_adapter.safetensors",
        "temper_adapter_logits",
    );
    assert_close(
        "Temper adapter, PEFT forward",
        &logits(&model, &d),
        &peft_logits,
        1e-5,
    );
    // And Temper reloads its own file (modules_to_save included) to the same logits.
    let (reloaded, _) = load_adapter(tiny(&d), dir.path(), &d).expect("reload");
    assert_close("reloaded", &logits(&reloaded, &d), &peft_logits, 1e-5);
}

#[test]
fn save_merged_writes_a_loadable_hf_dir() {
    let d = device();
    let (model, _) = load_adapter(tiny(&d), fixtures().join("peft_adapter"), &d).expect("load");
    let dir = tempfile::tempdir().expect("tempdir");
    save_merged(&model, dir.path(), FloatPrecision::F32).expect("save merged");
    let reloaded = load_dir(dir.path(), &d);
    assert_close(
        "saved merged",
        &logits(&reloaded, &d),
        &expected("merged_logits"),
        1e-5,
    );
    // The adapted model itself is untouched.
    assert_eq!(adapter_paths(&model).len(), 14);
}

fn snapshot(p: &Param<Tensor<2>>) -> Vec<f32> {
    p.val()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32")
}

#[test]
fn training_moves_adapters_and_leaves_base_bit_identical() {
    let d = Device::flex().autodiff();
    let config = LoraConfig::new(4, 8.0).with_lora_dropout(0.1);
    let mut model = config.init(tiny(&d), &d).expect("inject");
    let n_lora: usize = projections(&model)
        .iter()
        .filter_map(|(_, p)| p.lora.as_ref())
        .map(|l| {
            l.lora_a.val().dims().iter().product::<usize>()
                + l.lora_b.val().dims().iter().product::<usize>()
        })
        .sum();
    assert_eq!(num_trainable_params(&model), n_lora);
    let base_before: Vec<Vec<f32>> = projections(&model)
        .iter()
        .map(|(_, p)| snapshot(&p.weight))
        .collect();
    let embed_before = model.model.embed_tokens.weight.val().into_data();
    let head_before = model.lm_head.as_ref().map(|h| snapshot(&h.weight));
    let b_before = projections(&model)
        .iter()
        .filter_map(|(_, p)| p.lora.as_ref().map(|l| snapshot(&l.lora_b)))
        .collect::<Vec<_>>();
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .init();
    let ids = input_ids(&d);
    let mut losses = Vec::new();
    for _ in 0..4 {
        let out = model
            .forward(ids.clone(), &ForwardOptions::default())
            .expect("forward");
        // A toy loss: push the logit of token 3 up everywhere.
        let loss = -out.narrow(2, 3, 1).mean();
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = loss.backward();
        for (path, p) in projections(&model) {
            assert!(
                p.weight.val().grad(&grads).is_none(),
                "{path}: base got a gradient"
            );
            let lora = p.lora.as_ref().expect("adapter");
            assert!(
                lora.lora_a.val().grad(&grads).is_some(),
                "{path}: lora_a has no gradient"
            );
        }
        assert!(model.model.embed_tokens.weight.val().grad(&grads).is_none());
        let grads = GradientsParams::from_grads(grads, &model);
        model = optim.step(1e-2, model, grads);
    }
    assert!(losses[3] < losses[0], "loss did not fall: {losses:?}");
    for ((path, p), before) in projections(&model).iter().zip(&base_before) {
        assert!(
            snapshot(&p.weight) == *before,
            "{path}: base weight changed"
        );
    }
    assert!(model.model.embed_tokens.weight.val().into_data() == embed_before);
    assert_eq!(
        model.lm_head.as_ref().map(|h| snapshot(&h.weight)),
        head_before
    );
    let b_after = projections(&model)
        .iter()
        .filter_map(|(_, p)| p.lora.as_ref().map(|l| snapshot(&l.lora_b)))
        .collect::<Vec<_>>();
    assert!(
        b_after.iter().zip(&b_before).all(|(a, b)| a != b),
        "lora_B did not move"
    );
    // The dense-delta oracle: the adapter forward equals base weights + scale·A·B.
    let valid = model.valid();
    let d2 = Device::flex();
    let dense = merge_and_unload(valid.clone()).expect("merge");
    assert_close(
        "dense oracle",
        &logits(&dense, &d2),
        &logits(&valid, &d2),
        1e-5,
    );
}

#[test]
fn errors_are_specific() {
    let d = device();
    let bad = LoraConfig::new(4, 8.0).with_target_modules(TargetModules::names(&["nope_proj"]));
    assert!(matches!(
        bad.init(tiny(&d), &d),
        Err(temper_lora::LoraError::NoTargets(_))
    ));
    let twice = LoraConfig::new(2, 4.0).init(tiny(&d), &d).expect("inject");
    assert!(matches!(
        LoraConfig::new(2, 4.0).init(twice, &d),
        Err(temper_lora::LoraError::AlreadyInjected(_))
    ));
    let mut plain = tiny(&d);
    assert!(set_adapters_enabled(&mut plain, false).is_err());
    assert!(merge_and_unload(plain).is_err());
    // A wrong-rank file is a shape error naming the tensor.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in [ADAPTER_WEIGHTS, ADAPTER_CONFIG] {
        std::fs::copy(fixtures().join("peft_adapter").join(f), dir.path().join(f)).expect("copy");
    }
    let mut cfg = LoraConfig::load(dir.path()).expect("cfg");
    cfg.r = 5;
    std::fs::write(
        dir.path().join(ADAPTER_CONFIG),
        cfg.to_json_bytes().expect("json"),
    )
    .expect("write");
    let err = load_adapter(tiny(&d), dir.path(), &d).expect_err("must fail");
    assert!(err.to_string().contains("lora_A.weight"), "{err}");
}
