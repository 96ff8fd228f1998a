//! Qwen2 / Qwen2.5 and Qwen3 against transformers itself: the tiny random models in
//! `tests/fixtures/tiny_qwen2` (untied head, sliding window on layers 1–2), `tiny_qwen2_tied`
//! and `tiny_qwen3` (per-head q/k norms, decoupled `head_dim`, `attention_bias`), made by their
//! `make_fixture.py`, give the same logits and the same 12-token greedy continuation here,
//! survive a save and reload, and are counted right by the parameter count. Configs whose
//! window settings Temper cannot honour are refused naming the key.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Distribution, Tensor};
use serde_json::{Value, json};
use temper_backend::FloatPrecision;
use temper_llm_arch::checkpoint::{SafetensorsSource, load_weights, save_safetensors};
use temper_llm_arch::{
    CheckpointTape, Family, ForwardOptions, GenerationConfig, LlamaForCausalLM, ModelConfig,
    generate,
};

/// Logits `[batch][seq][vocab]` for `rows` on the model's own device.
fn forward_plain(m: &LlamaForCausalLM, rows: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let ids = common::ids(rows).to_device(&m.device());
    common::host(
        m.forward(ids, &ForwardOptions::default())
            .unwrap()
            .cast(DType::F32),
    )
}

/// `TEMPER_TEST_DEVICE` (default `cpu`; `wgpu` in a build with the `wgpu` feature, as
/// `scripts/test-lavapipe.sh` runs it): the parity tests run the kernel path there.
fn device() -> Device {
    let spec: temper_backend::DeviceSpec = std::env::var("TEMPER_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .unwrap();
    spec.device().unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Expected {
    input_ids: Vec<Vec<u32>>,
    logits: Vec<Vec<Vec<f32>>>,
    greedy_prompt: Vec<u32>,
    greedy_tokens: Vec<u32>,
}

fn expected(name: &str) -> Expected {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
    )
    .unwrap();
    let get = |k: &str| v[k].clone();
    Expected {
        input_ids: serde_json::from_value(get("input_ids")).unwrap(),
        logits: serde_json::from_value(get("logits")).unwrap(),
        greedy_prompt: serde_json::from_value(get("greedy_prompt")).unwrap(),
        greedy_tokens: serde_json::from_value(get("greedy_tokens")).unwrap(),
    }
}

fn config_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap())
        .unwrap()
}

fn parse(v: &Value) -> temper_llm_arch::Result<ModelConfig> {
    ModelConfig::from_json(v, Path::new("config.json"))
}

fn load(name: &str, config: &ModelConfig) -> LlamaForCausalLM {
    let mut source = SafetensorsSource::open_dir(fixture(name)).unwrap();
    load_weights(config, &mut source, &device(), FloatPrecision::F32).unwrap()
}

fn max_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    a.iter()
        .flatten()
        .flatten()
        .zip(b.iter().flatten().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn greedy(model: &LlamaForCausalLM, prompt: &[u32], n: usize) -> Vec<u32> {
    let config = GenerationConfig {
        max_new_tokens: n,
        ..GenerationConfig::default()
    };
    generate(model, None, &[prompt.to_vec()], &config, |_, _| {})
        .unwrap()
        .remove(0)
        .tokens
}

/// Logits and greedy tokens equal transformers'; a save and reload keeps every tensor (as
/// many elements as the config counts) and the logits.
fn check_parity(name: &str, family: Family) -> (ModelConfig, LlamaForCausalLM) {
    let config = ModelConfig::from_file(fixture(name).join("config.json")).unwrap();
    assert_eq!(config.family(), family);
    let model = load(name, &config);
    let want = expected(name);
    let got = forward_plain(&model, &want.input_ids);
    let diff = max_diff(&got, &want.logits);
    assert!(
        diff < 1e-4,
        "{name}: largest |logit − transformers'|: {diff}"
    );
    assert_eq!(
        greedy(&model, &want.greedy_prompt, want.greedy_tokens.len()),
        want.greedy_tokens,
        "{name}: greedy continuation"
    );

    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("model.safetensors");
    save_safetensors(&model, &saved, FloatPrecision::F32).unwrap();
    let bytes = std::fs::read(&saved).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let original = std::fs::read(fixture(name).join("model.safetensors")).unwrap();
    let original = safetensors::SafeTensors::deserialize(&original).unwrap();
    let mut names = st.names();
    let mut want_names = original.names();
    names.sort();
    want_names.sort();
    assert_eq!(names, want_names, "{name}: saved tensor names");
    let elements: usize = st
        .tensors()
        .iter()
        .map(|(_, t)| t.shape().iter().product::<usize>())
        .sum();
    assert_eq!(config.checked_num_parameters(), Some(elements));
    let reloaded = parse(&config.to_json("float32")).unwrap();
    assert_eq!(reloaded.layer_window(0), config.layer_window(0));
    let mut source = SafetensorsSource::open_file(&saved).unwrap();
    let again = load_weights(&reloaded, &mut source, &device(), FloatPrecision::F32).unwrap();
    assert_eq!(max_diff(&forward_plain(&again, &want.input_ids), &got), 0.0);
    (config, model)
}

#[test]
fn qwen2_with_sliding_layers_matches_transformers() {
    let (config, model) = check_parity("tiny_qwen2", Family::Qwen2);
    let b = config.biases();
    assert!(b.qkv && !b.o && !b.mlp);
    assert!(model.lm_head.is_some());
    // transformers wrote `layer_types`: layer 0 full, layers 1 and 2 through the window of 4.
    let windows: Vec<_> = (0..3).map(|i| config.layer_window(i)).collect();
    assert_eq!(windows, [None, Some(4), Some(4)]);

    // The window matters: without it, positions past it differ; before it, they do not.
    let want = expected("tiny_qwen2");
    let mut unwindowed = config.clone();
    unwindowed.sliding_window = None;
    let full = forward_plain(&load("tiny_qwen2", &unwindowed), &want.input_ids);
    for (pos, (a, b)) in full[0].iter().zip(&want.logits[0]).enumerate() {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        if pos < 4 {
            assert!(d < 1e-4, "position {pos} is inside the window: {d}");
        } else {
            assert!(
                d > 1e-3,
                "position {pos} is past the window but logits match ({d})"
            );
        }
    }

    // Without `layer_types` (a transformers 4 config), `max_window_layers` picks the same
    // layers; every layer past it slides.
    let mut v = config_json("tiny_qwen2");
    v.as_object_mut().unwrap().remove("layer_types");
    let derived = parse(&v).unwrap();
    let windows: Vec<_> = (0..3).map(|i| derived.layer_window(i)).collect();
    assert_eq!(windows, [None, Some(4), Some(4)]);
    let got = forward_plain(&load("tiny_qwen2", &derived), &want.input_ids);
    assert!(max_diff(&got, &want.logits) < 1e-4);
}

#[test]
fn tied_qwen2_matches_transformers() {
    let (config, model) = check_parity("tiny_qwen2_tied", Family::Qwen2);
    assert!(config.tie_word_embeddings && model.lm_head.is_none());
    assert_eq!(config.sliding_window, None);
    assert_eq!(config.num_key_value_heads, 1);
}

#[test]
fn qwen3_matches_transformers() {
    let (config, model) = check_parity("tiny_qwen3", Family::Qwen3);
    assert!(config.qk_norm());
    assert_eq!(config.head_dim, 16);
    assert_ne!(
        config.head_dim,
        config.hidden_size / config.num_attention_heads
    );
    let b = config.biases();
    assert!(b.qkv && b.o && !b.mlp);
    let attn = &model.model.layers[0].self_attn;
    assert_eq!(attn.q_norm.as_ref().unwrap().weight.val().dims(), [16]);
}

#[test]
fn qwen3_without_its_head_norms_is_refused_naming_the_tensor() {
    let mut v = config_json("tiny_qwen3");
    // Read as a Qwen2 (no q/k norms), the checkpoint holds tensors that model does not.
    v["model_type"] = json!("qwen2");
    let config = parse(&v).unwrap();
    let mut source = SafetensorsSource::open_dir(fixture("tiny_qwen3")).unwrap();
    let err = load_weights(&config, &mut source, &device(), FloatPrecision::F32)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("unexpected tensor `model.layers.0.self_attn.k_norm.weight`"),
        "{err}"
    );
}

#[test]
fn window_settings_temper_cannot_honour_are_refused_naming_the_key() {
    let err = |v: &Value| parse(v).unwrap_err().to_string();

    // Sliding layers listed while the window is off: transformers fails at its first forward.
    let mut v = config_json("tiny_qwen2");
    v["use_sliding_window"] = json!(false);
    assert!(err(&v).contains("`layer_types`"), "{}", err(&v));

    // A layer type Temper does not implement.
    let mut v = config_json("tiny_qwen2");
    v["layer_types"] = json!(["full_attention", "linear_attention", "sliding_attention"]);
    let e = err(&v);
    assert!(
        e.contains("`layer_types`") && e.contains("linear_attention"),
        "{e}"
    );

    // One entry per layer.
    let mut v = config_json("tiny_qwen2");
    v["layer_types"] = json!(["full_attention"]);
    assert!(err(&v).contains("num_hidden_layers is 3"), "{}", err(&v));

    // A RoPE type Temper does not implement (Qwen's long-context YaRN).
    let mut v = config_json("tiny_qwen3");
    v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 32768});
    assert!(err(&v).contains("`yarn` is not supported"), "{}", err(&v));
}

#[test]
fn qwen_config_defaults_follow_transformers() {
    // Qwen2.5-style config: `use_sliding_window` false with a window given → no window.
    let mut v = config_json("tiny_qwen2");
    let obj = v.as_object_mut().unwrap();
    obj.remove("layer_types");
    obj.insert("use_sliding_window".into(), json!(false));
    obj.insert("sliding_window".into(), json!(32768));
    let c = parse(&v).unwrap();
    assert_eq!(c.sliding_window, None);
    assert!((0..3).all(|i| c.layer_window(i).is_none()));

    // Window on, no `max_window_layers`: HF's default 28 leaves these 3 layers full.
    let mut v = config_json("tiny_qwen2");
    let obj = v.as_object_mut().unwrap();
    obj.remove("layer_types");
    obj.remove("max_window_layers");
    let c = parse(&v).unwrap();
    assert!((0..3).all(|i| c.layer_window(i).is_none()));

    // Qwen3 without `head_dim`: 128, not hidden_size / heads.
    let mut v = config_json("tiny_qwen3");
    v.as_object_mut().unwrap().remove("head_dim");
    assert_eq!(parse(&v).unwrap().head_dim, 128);

    // Unsupported families are named, with the list.
    let mut v = config_json("tiny_qwen3");
    v["model_type"] = json!("qwen3_moe");
    let e = parse(&v).unwrap_err().to_string();
    assert!(
        e.contains("unsupported model_type `qwen3_moe`") && e.contains("qwen2, qwen3"),
        "{e}"
    );
}

/// Layer-wise gradient checkpointing recomputes each layer with its own mask (layer 0 full,
/// layers 1–2 through the window): the gradients equal those of the plain backward.
#[test]
fn checkpointed_backward_on_sliding_qwen2_equals_the_plain_one() {
    let device = Device::flex().autodiff();
    let config = ModelConfig::from_file(fixture("tiny_qwen2").join("config.json")).unwrap();
    let mut source = SafetensorsSource::open_dir(fixture("tiny_qwen2")).unwrap();
    let model = load_weights(&config, &mut source, &device, FloatPrecision::F32).unwrap();
    // 10 positions: past the window of 4.
    let rows = vec![
        vec![1, 5, 9, 17, 33, 2, 63, 40, 3, 8],
        vec![7, 7, 3, 0, 12, 50, 21, 8, 9, 1],
    ];
    let ids = || common::ids(&rows).to_device(&device);
    let weights = Tensor::<3>::random([2, 10, 64], Distribution::Normal(0.0, 1.0), &device);
    let grads_of = |m: &LlamaForCausalLM, grads: &burn::tensor::Gradients, layer: usize| {
        let a = &m.model.layers[layer].self_attn;
        [
            a.q_proj.weight.val().grad(grads),
            a.q_proj
                .bias
                .as_ref()
                .and_then(|b| b.val().grad(grads).map(|t| t.unsqueeze())),
            a.v_proj.weight.val().grad(grads),
        ]
    };
    let host = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();

    let logits = model.forward(ids(), &ForwardOptions::default()).unwrap();
    let grads = (logits * weights.clone()).sum().backward();
    let plain: Vec<Vec<Vec<f32>>> = (0..3)
        .map(|l| {
            grads_of(&model, &grads, l)
                .into_iter()
                .map(|g| host(g.unwrap()))
                .collect()
        })
        .collect();

    let tape = CheckpointTape::new();
    let ckpt = model.clone().with_layer_checkpointing(Some(tape.clone()));
    let logits = ckpt.forward(ids(), &ForwardOptions::default()).unwrap();
    let mut grads = (logits * weights).sum().backward();
    let mut per_layer: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
    tape.backward(&ckpt, &mut grads, |g| {
        for (l, found) in per_layer.iter_mut().enumerate() {
            let gs = grads_of(&ckpt, &g, l);
            if gs.iter().all(Option::is_some) {
                *found = gs.into_iter().map(|g| host(g.unwrap())).collect();
            }
        }
    })
    .unwrap();
    assert_eq!(tape.pending(), 0);
    for (l, (p, c)) in plain.iter().zip(&per_layer).enumerate() {
        assert_eq!(c.len(), 3, "layer {l}: gradients missing");
        for (a, b) in p.iter().zip(c) {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            let scale = a.iter().map(|x| x.abs()).fold(0.0, f32::max);
            assert!(d <= 1e-4 * scale.max(1.0), "layer {l}: {d} (scale {scale})");
        }
    }
}
