//! Checkpoint save/load on tiny random models: the f32 round trip is bit-identical with HF
//! names and shapes, bf16 rounds each value once, and a sharded checkpoint loads identically.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use temper_backend::FloatPrecision;
use temper_llm_arch::checkpoint::{
    SafetensorsSource, TensorSource, hf_tensors, load_weights, save_safetensors,
};
use temper_llm_arch::{LlamaForCausalLM, ModelConfig, Pretrained, SpecialTokens, Tokenizer};

use common::{device, forward_plain, llama3_scaling, random_model};

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "cat": 4, "sat": 5, "on": 6, "mat": 7},
    "unk_token": "<unk>"
  }
}"#;

fn tokenizer() -> Tokenizer {
    Tokenizer::from_json_str(TOKENIZER_JSON, "<test tokenizer>").unwrap()
}

fn pretrained(config: &ModelConfig) -> Pretrained {
    Pretrained {
        model: random_model(config),
        tokenizer: tokenizer(),
        chat_template: None,
        special: SpecialTokens {
            bos: Some(1),
            eos: vec![2],
            pad: None,
        },
        source: PathBuf::from("<memory>"),
    }
}

fn checkpoint_configs() -> Vec<ModelConfig> {
    let mut tied = ModelConfig::tiny(24, 16, 2, 4, 2);
    tied.tie_word_embeddings = true;
    tied.bos_token_id = Some(1);
    tied.eos_token_ids = vec![2];
    tied.rope_scaling = Some(llama3_scaling());
    let mut mistral = ModelConfig::tiny(24, 16, 2, 2, 1);
    mistral.model_type = "mistral".into();
    mistral.sliding_window = Some(4);
    mistral.head_dim = 6;
    mistral.bos_token_id = Some(1);
    mistral.eos_token_ids = vec![2];
    mistral.rope_theta = 500000.0;
    mistral.max_position_embeddings = 64;
    vec![tied, mistral]
}

fn assert_same_tensors(a: &LlamaForCausalLM, b: &LlamaForCausalLM, what: &str) {
    let (ta, tb) = (hf_tensors(a), hf_tensors(b));
    assert_eq!(ta.len(), tb.len(), "{what}");
    for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb, "{what}");
        assert_eq!(xa.shape, xb.shape, "{what}: {na}");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&xa.data) == bits(&xb.data),
            "{what}: {na} is not bit-identical"
        );
    }
}

fn config_without_raw(c: &ModelConfig) -> ModelConfig {
    let mut c = c.clone();
    c.raw = serde_json::Map::new();
    c
}

fn expected_names(c: &ModelConfig) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    for i in 0..c.num_hidden_layers {
        for t in [
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            names.push(format!("model.layers.{i}.{t}.weight"));
        }
    }
    if !c.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    names.sort();
    names
}

/// Safetensors names and PyTorch shapes of a saved model.
fn saved_shapes(path: &Path) -> HashMap<String, (Dtype, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec())))
        .collect()
}

#[test]
fn save_load_round_trip_is_bit_identical_in_f32() {
    for config in checkpoint_configs() {
        let p = pretrained(&config);
        let dir = tempfile::tempdir().unwrap();
        p.save(dir.path(), FloatPrecision::F32).unwrap();
        let loaded = Pretrained::load(dir.path(), &device(), FloatPrecision::F32).unwrap();
        assert_same_tensors(&p.model, &loaded.model, &config.model_type);
        assert_eq!(loaded.special, p.special);
        assert_eq!(
            loaded.tokenizer.encode("the cat sat", false).unwrap(),
            vec![3, 4, 5]
        );
        // Same weights, same config: same logits.
        let row = vec![vec![1, 5, 7, 2, 9, 11]];
        assert_eq!(
            forward_plain(&p.model, &row),
            forward_plain(&loaded.model, &row)
        );

        // Keys are exactly the HF names, with PyTorch [out, in] shapes, and no lm_head when tied.
        let shapes = saved_shapes(&dir.path().join("model.safetensors"));
        let mut names: Vec<String> = shapes.keys().cloned().collect();
        names.sort();
        assert_eq!(names, expected_names(&config));
        let (h, hd, inter) = (
            config.hidden_size,
            config.head_dim,
            config.intermediate_size,
        );
        let (q, kv) = (
            config.num_attention_heads * hd,
            config.num_key_value_heads * hd,
        );
        let shape = |n: &str| {
            let (dtype, shape) = &shapes[n];
            assert_eq!(*dtype, Dtype::F32, "{n}");
            shape.clone()
        };
        assert_eq!(shape("model.embed_tokens.weight"), [config.vocab_size, h]);
        assert_eq!(shape("model.layers.0.self_attn.q_proj.weight"), [q, h]);
        assert_eq!(shape("model.layers.1.self_attn.k_proj.weight"), [kv, h]);
        assert_eq!(shape("model.layers.0.self_attn.v_proj.weight"), [kv, h]);
        assert_eq!(shape("model.layers.0.self_attn.o_proj.weight"), [h, q]);
        assert_eq!(shape("model.layers.0.mlp.gate_proj.weight"), [inter, h]);
        assert_eq!(shape("model.layers.1.mlp.down_proj.weight"), [h, inter]);
        assert_eq!(shape("model.layers.1.input_layernorm.weight"), [h]);
        if !config.tie_word_embeddings {
            assert_eq!(shape("lm_head.weight"), [config.vocab_size, h]);
        }
        // The saved q_proj is the transpose of burn's [in, out] weight.
        let burn_w: Vec<f32> = p.model.model.layers[0]
            .self_attn
            .q_proj
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap();
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let saved: Vec<f32> = st
            .tensor("model.layers.0.self_attn.q_proj.weight")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for o in 0..q {
            for i in 0..h {
                assert_eq!(
                    saved[o * h + i].to_bits(),
                    burn_w[i * q + o].to_bits(),
                    "q_proj[{o}, {i}]"
                );
            }
        }

        // config.json parses back to the same config.
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(json["torch_dtype"], "float32");
        assert_eq!(json["architectures"][0], config.architecture());
        let back = ModelConfig::from_file(dir.path().join("config.json")).unwrap();
        assert_eq!(config_without_raw(&back), config_without_raw(&config));
        assert_eq!(
            config_without_raw(loaded.model.config()),
            config_without_raw(&config)
        );
    }
}

#[test]
fn bf16_save_rounds_each_value_to_bf16() {
    let config = &checkpoint_configs()[1];
    let p = pretrained(config);
    let dir = tempfile::tempdir().unwrap();
    p.save(dir.path(), FloatPrecision::BF16).unwrap();
    let shapes = saved_shapes(&dir.path().join("model.safetensors"));
    assert!(shapes.values().all(|(d, _)| *d == Dtype::BF16));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(json["torch_dtype"], "bfloat16");
    let loaded = Pretrained::load(dir.path(), &device(), FloatPrecision::F32).unwrap();
    let mut changed = 0usize;
    for ((name, orig), (name2, back)) in hf_tensors(&p.model).iter().zip(&hf_tensors(&loaded.model))
    {
        assert_eq!(name, name2);
        assert_eq!(orig.shape, back.shape);
        for (x, y) in orig.data.iter().zip(&back.data) {
            let rounded = half::bf16::from_f32(*x).to_f32();
            assert_eq!(
                rounded.to_bits(),
                y.to_bits(),
                "{name}: {x} saved as {y}, bf16 is {rounded}"
            );
            changed += usize::from(rounded != *x);
        }
    }
    assert!(
        changed > 0,
        "random f32 weights should not all be exact bf16 values"
    );
}

/// The streamed file is the `safetensors` crate's serialisation of the same tensors, byte for
/// byte, in every dtype — streaming changes the memory, not the file.
#[test]
fn streamed_save_is_byte_identical_to_the_safetensors_serialiser() {
    for config in checkpoint_configs() {
        let model = random_model(&config);
        for (precision, dtype) in [
            (FloatPrecision::F32, Dtype::F32),
            (FloatPrecision::BF16, Dtype::BF16),
            (FloatPrecision::F16, Dtype::F16),
        ] {
            let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = hf_tensors(&model)
                .into_iter()
                .map(|(name, t)| {
                    let bytes = t
                        .data
                        .iter()
                        .flat_map(|v| match precision {
                            FloatPrecision::F32 => v.to_le_bytes().to_vec(),
                            FloatPrecision::BF16 => half::bf16::from_f32(*v).to_le_bytes().to_vec(),
                            FloatPrecision::F16 => half::f16::from_f32(*v).to_le_bytes().to_vec(),
                        })
                        .collect();
                    (name, t.shape, bytes)
                })
                .collect();
            let views = encoded.iter().map(|(name, shape, bytes)| {
                (
                    name.clone(),
                    safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap(),
                )
            });
            let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
            let expected = safetensors::serialize(views, metadata).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("model.safetensors");
            save_safetensors(&model, &path, precision).unwrap();
            let got = std::fs::read(&path).unwrap();
            assert!(got == expected, "{precision:?}: streamed file differs");
            let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(
                names.len(),
                1,
                "a temporary file was left beside the output"
            );
        }
    }
}

/// Split `model.safetensors` into two shards plus `model.safetensors.index.json`.
fn shard(dir: &Path) {
    let single = dir.join("model.safetensors");
    let bytes = std::fs::read(&single).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let files = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    for (k, file) in files.iter().enumerate() {
        let mine: Vec<(String, safetensors::tensor::TensorView<'_>)> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == k)
            .map(|(_, n)| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        for (n, _) in &mine {
            weight_map.insert(n.clone(), serde_json::json!(file));
        }
        safetensors::serialize_to_file(mine, None, &dir.join(file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(single).unwrap();
}

#[test]
fn sharded_checkpoint_loads_identically() {
    for config in checkpoint_configs() {
        let p = pretrained(&config);
        let dir = tempfile::tempdir().unwrap();
        p.save(dir.path(), FloatPrecision::F32).unwrap();
        shard(dir.path());
        assert!(!dir.path().join("model.safetensors").exists());

        let loaded = Pretrained::load(dir.path(), &device(), FloatPrecision::F32).unwrap();
        assert_same_tensors(&p.model, &loaded.model, "Pretrained::load");

        let mut source = SafetensorsSource::open_dir(dir.path()).unwrap();
        assert_eq!(
            source.origin(),
            dir.path().join("model.safetensors.index.json")
        );
        let mut remaining = source.remaining();
        remaining.sort();
        assert_eq!(remaining, expected_names(&config));
        let model = load_weights(&config, &mut source, &device(), FloatPrecision::F32).unwrap();
        assert!(source.remaining().is_empty());
        assert_same_tensors(&p.model, &model, "open_dir + load_weights");
    }
}
