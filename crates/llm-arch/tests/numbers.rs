//! Broken numbers are refused at the boundary, naming the file, key or tensor and the allowed
//! range: out-of-range `config.json` values, sizes whose parameter count would overflow, NaN
//! weights in a checkpoint, and sampling settings outside HF's ranges.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde_json::{Value, json};
use temper_backend::FloatPrecision;
use temper_llm_arch::{
    GenerationConfig, LlamaForCausalLM, ModelConfig, Pretrained, SpecialTokens, Tokenizer, generate,
};

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}, "unk_token": "<unk>"}
}"#;

fn device() -> Device {
    Device::flex()
}

fn model() -> LlamaForCausalLM {
    LlamaForCausalLM::init(&ModelConfig::tiny(16, 16, 2, 4, 2), &device())
}

fn saved_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = Pretrained {
        model: model(),
        tokenizer: Tokenizer::from_json_str(TOKENIZER_JSON, "<test>").unwrap(),
        chat_template: None,
        special: SpecialTokens {
            bos: Some(1),
            eos: vec![2],
            pad: None,
        },
        source: PathBuf::from("<memory>"),
    };
    p.save(dir.path(), FloatPrecision::F32).unwrap();
    Pretrained::load(dir.path(), &device(), FloatPrecision::F32).unwrap();
    dir
}

fn load_err(path: &Path) -> String {
    match Pretrained::load(path, &device(), FloatPrecision::F32) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

fn smollm2() -> Value {
    json!({"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
           "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000.0})
}

fn config_err(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = smollm2();
    edit(&mut v);
    ModelConfig::from_json(&v, Path::new("config.json"))
        .map(|c| panic!("accepted: {c:?}"))
        .unwrap_err()
        .to_string()
}

#[test]
fn out_of_range_config_numbers_name_the_key_and_range() {
    ModelConfig::from_json(&smollm2(), Path::new("config.json")).unwrap();
    for (key, value, range) in [
        ("rms_norm_eps", json!(-1.0), "> 0"),
        ("rms_norm_eps", json!(0.0), "> 0"),
        ("rope_theta", json!(0.0), "> 0"),
        ("rope_theta", json!(-10000.0), "> 0"),
        ("vocab_size", json!(0), "≥ 1"),
        ("intermediate_size", json!(0), "≥ 1"),
        ("max_position_embeddings", json!(0), "≥ 1"),
    ] {
        let err = config_err(|v| v[key] = value.clone());
        assert!(
            err.contains("config.json") && err.contains(&format!("`{key}`")) && err.contains(range),
            "{key} = {value}: {err}"
        );
    }
    let err = config_err(|v| {
        v["num_attention_heads"] = json!(7);
        v["num_key_value_heads"] = json!(7);
    });
    assert!(err.contains("7 does not divide hidden_size 576"), "{err}");
    let err = config_err(|v| v["bos_token_id"] = json!(1u64 << 32));
    assert!(
        err.contains("`bos_token_id`") && err.contains("2^32"),
        "{err}"
    );
    let err = config_err(|v| {
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    });
    assert!(
        err.contains("`rope_scaling.high_freq_factor`") && err.contains("> low_freq_factor"),
        "{err}"
    );
    let err = config_err(|v| v["rope_scaling"] = json!({"rope_type": "linear", "factor": -2.0}));
    assert!(err.contains("`rope_scaling.factor`"), "{err}");
}

#[test]
fn absurd_sizes_are_an_error_not_a_wrapped_parameter_count() {
    // 2^40 × 2^40 overflows u64: unchecked, release builds would print a wrapped count.
    let err = config_err(|v| {
        v["vocab_size"] = json!(1u64 << 40);
        v["hidden_size"] = json!(1u64 << 40);
        v["num_attention_heads"] = json!(1);
        v["num_key_value_heads"] = json!(1);
    });
    assert!(
        err.contains("parameter count that overflows") && err.contains("vocab_size 1099511627776"),
        "{err}"
    );
    let err = config_err(|v| v["num_hidden_layers"] = json!(u64::MAX));
    assert!(err.contains("parameter count that overflows"), "{err}");
    // Large but representable counts are exact.
    let mut v = smollm2();
    v["num_hidden_layers"] = json!(30_000_000);
    let c = ModelConfig::from_json(&v, Path::new("config.json")).unwrap();
    assert_eq!(
        c.checked_num_parameters(),
        Some(30_000_000 * 3_540_096 + 2 * 49152 * 576 + 576)
    );
}

#[test]
fn a_checkpoint_holding_one_nan_names_the_tensor_and_index() {
    let dir = saved_dir();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let name = "model.layers.1.mlp.down_proj.weight";
    let entries: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let mut data = v.data().to_vec();
            if n == name {
                data[4 * 7..4 * 8].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            (n, v.dtype(), v.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<_> = entries
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors")
            && err.contains(&format!("`{name}`"))
            && err.contains("NaN at element 7")
            && err.contains("finite"),
        "{err}"
    );
}

#[test]
fn a_config_with_negative_eps_is_refused_at_load() {
    let dir = saved_dir();
    let path = dir.path().join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["rms_norm_eps"] = json!(-1);
    std::fs::write(&path, v.to_string()).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("`rms_norm_eps`") && err.contains("> 0"),
        "{err}"
    );
}

#[test]
fn sampling_settings_outside_their_range_are_refused() {
    let m = model();
    let ok = GenerationConfig {
        max_new_tokens: 1,
        ..Default::default()
    };
    generate(&m, None, &[vec![1]], &ok, |_, _| {}).unwrap();
    let cases: [(GenerationConfig, &str, &str); 7] = [
        (
            GenerationConfig {
                temperature: -1.0,
                ..ok.clone()
            },
            "`temperature`",
            "≥ 0",
        ),
        (
            GenerationConfig {
                temperature: f32::NAN,
                ..ok.clone()
            },
            "`temperature`",
            "≥ 0",
        ),
        (
            GenerationConfig {
                top_p: Some(5.0),
                ..ok.clone()
            },
            "`top_p`",
            "(0, 1]",
        ),
        (
            GenerationConfig {
                top_p: Some(0.0),
                ..ok.clone()
            },
            "`top_p`",
            "(0, 1]",
        ),
        (
            GenerationConfig {
                top_k: Some(0),
                ..ok.clone()
            },
            "`top_k`",
            "≥ 1",
        ),
        (
            GenerationConfig {
                repetition_penalty: 0.0,
                ..ok.clone()
            },
            "`repetition_penalty`",
            "> 0",
        ),
        (
            GenerationConfig {
                repetition_penalty: f32::INFINITY,
                ..ok.clone()
            },
            "`repetition_penalty`",
            "> 0",
        ),
    ];
    for (config, field, range) in cases {
        let err = generate(&m, None, &[vec![1]], &config, |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(field) && err.contains(range),
            "{config:?}: {err}"
        );
    }
}
