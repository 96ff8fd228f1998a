//! Bad checkpoints, configs and inputs give errors that name the file, key or tensor — never a
//! panic.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use temper_backend::FloatPrecision;
use temper_llm_arch::checkpoint::{SafetensorsSource, load_weights};
use temper_llm_arch::{
    Error, ForwardOptions, GenerationConfig, KvCache, LlamaForCausalLM, ModelConfig, Pretrained,
    SpecialTokens, Tokenizer, generate,
};

fn device() -> Device {
    Device::flex()
}

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}, "unk_token": "<unk>"}
}"#;

fn config() -> ModelConfig {
    ModelConfig::tiny(16, 16, 2, 4, 2)
}

fn model() -> LlamaForCausalLM {
    LlamaForCausalLM::init(&config(), &device())
}

/// A complete, loadable HF directory of a tiny model.
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
    // The fixture itself is valid.
    Pretrained::load(dir.path(), &device(), FloatPrecision::F32).unwrap();
    dir
}

fn load_err(path: &Path) -> String {
    match Pretrained::load(path, &device(), FloatPrecision::F32) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Rewrite `model.safetensors` after editing its tensor list.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<Entry>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut entries);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = saved_dir();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for len in [bytes.len() / 2, bytes.len() - 1, 100, 8, 3, 0] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains(&path.display().to_string()),
            "cut at {len}: {err}"
        );
        let err = SafetensorsSource::open_file(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()),
            "cut at {len}: {err}"
        );
    }
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = saved_dir();
    let name = "model.layers.1.mlp.gate_proj.weight";
    rewrite_weights(dir.path(), |entries| {
        let e = entries.iter_mut().find(|e| e.0 == name).unwrap();
        assert_eq!(e.2, [32, 16]);
        e.2 = vec![16, 32];
    });
    let err = load_err(dir.path());
    assert!(err.contains(&format!("`{name}`")), "{err}");
    assert!(
        err.contains("[16, 32]") && err.contains("[32, 16]"),
        "{err}"
    );
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = saved_dir();
    let name = "model.layers.1.post_attention_layernorm.weight";
    rewrite_weights(dir.path(), |entries| entries.retain(|e| e.0 != name));
    let err = load_err(dir.path());
    assert!(
        err.contains(&format!("tensor `{name}` is missing")),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    for extra in [
        "model.layers.0.mlp.extra_proj.weight",
        "model.layers.2.input_layernorm.weight",
    ] {
        let dir = saved_dir();
        rewrite_weights(dir.path(), |entries| {
            entries.push((extra.to_string(), Dtype::F32, vec![16], vec![0; 64]));
        });
        let err = load_err(dir.path());
        assert!(
            err.contains(&format!("unexpected tensor `{extra}`")),
            "{err}"
        );
    }
    // A stored copy of the head in a tied model is ignored, like transformers does.
    let dir = tempfile::tempdir().unwrap();
    let mut tied = config();
    tied.tie_word_embeddings = true;
    let p = Pretrained {
        model: LlamaForCausalLM::init(&tied, &device()),
        tokenizer: Tokenizer::from_json_str(TOKENIZER_JSON, "<test>").unwrap(),
        chat_template: None,
        special: SpecialTokens::default(),
        source: PathBuf::new(),
    };
    p.save(dir.path(), FloatPrecision::F32).unwrap();
    rewrite_weights(dir.path(), |entries| {
        entries.push((
            "lm_head.weight".into(),
            Dtype::F32,
            vec![16, 16],
            vec![0; 16 * 16 * 4],
        ));
    });
    let loaded = Pretrained::load(dir.path(), &device(), FloatPrecision::F32).unwrap();
    assert!(loaded.model.lm_head.is_none());
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = saved_dir();
    let name = "model.norm.weight";
    rewrite_weights(dir.path(), |entries| {
        let e = entries.iter_mut().find(|e| e.0 == name).unwrap();
        e.1 = Dtype::I32;
    });
    let err = load_err(dir.path());
    assert!(
        err.contains(&format!("`{name}`")) && err.contains("I32"),
        "{err}"
    );
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    std::fs::write(&path, json.to_string()).unwrap();
}

#[test]
fn config_missing_key_is_named() {
    let dir = saved_dir();
    edit_config(dir.path(), |c| {
        c.remove("hidden_size");
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("`hidden_size`") && err.contains("missing"),
        "{err}"
    );
    assert!(
        err.contains(&dir.path().join("config.json").display().to_string()),
        "{err}"
    );

    let dir = saved_dir();
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), serde_json::json!("two"));
    });
    let err = load_err(dir.path());
    assert!(err.contains("`num_hidden_layers`"), "{err}");

    // A config that disagrees with the weights: the first missing layer tensor is named.
    let dir = saved_dir();
    edit_config(dir.path(), |c| {
        c.insert("num_hidden_layers".into(), serde_json::json!(3));
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("tensor `model.layers.2.input_layernorm.weight` is missing"),
        "{err}"
    );
}

/// Absurd sizes in config.json fail on the first missing tensor instead of aborting the
/// process on a huge allocation.
#[test]
fn huge_config_values_fail_cleanly() {
    for (key, missing) in [
        (
            "num_hidden_layers",
            "tensor `model.layers.2.input_layernorm.weight` is missing",
        ),
        (
            "vocab_size",
            "tensor `model.embed_tokens.weight` has shape [16, 16], expected [4000000000, 16]",
        ),
        (
            "intermediate_size",
            "tensor `model.layers.0.mlp.gate_proj.weight` has shape [32, 16], expected [4000000000, 16]",
        ),
    ] {
        let dir = saved_dir();
        edit_config(dir.path(), |c| {
            c.insert(key.into(), serde_json::json!(4_000_000_000u64));
        });
        let err = load_err(dir.path());
        assert!(err.contains(missing), "{key}: {err}");
    }
    // heads × head_dim overflows usize.
    let dir = saved_dir();
    edit_config(dir.path(), |c| {
        c.insert("num_attention_heads".into(), serde_json::json!(1u64 << 30));
        c.insert("head_dim".into(), serde_json::json!(1u64 << 40));
    });
    let err = load_err(dir.path());
    assert!(
        err.contains("`head_dim`") && err.contains("overflows"),
        "{err}"
    );
}

#[test]
fn malformed_json_names_the_file() {
    let dir = saved_dir();
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains(&format!("{}: invalid JSON", path.display())),
        "{err}"
    );
    let err = ModelConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");

    let dir = saved_dir();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, "{ not json").unwrap();
    let err = load_err(dir.path());
    assert!(err.contains(&tok.display().to_string()), "{err}");
}

#[test]
fn missing_paths_and_weights_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-such-model");
    let err = load_err(&nowhere);
    assert!(err.contains(&nowhere.display().to_string()), "{err}");

    // Empty directory: no config.json.
    let err = load_err(dir.path());
    assert!(
        err.contains(&dir.path().join("config.json").display().to_string()),
        "{err}"
    );

    // config.json and tokenizer.json but no weights.
    let full = saved_dir();
    std::fs::remove_file(full.path().join("model.safetensors")).unwrap();
    let err = load_err(full.path());
    assert!(
        err.contains(&full.path().display().to_string()) && err.contains("no model.safetensors"),
        "{err}"
    );

    // A plain file that is neither a directory nor a .gguf.
    let file = dir.path().join("weights.bin");
    std::fs::write(&file, b"hello").unwrap();
    let err = load_err(&file);
    assert!(err.contains(&file.display().to_string()), "{err}");

    // A .gguf path that does not exist.
    let gguf = dir.path().join("absent.gguf");
    let err = load_err(&gguf);
    assert!(err.contains(&gguf.display().to_string()), "{err}");
}

#[test]
fn bad_shard_index_is_reported() {
    let dir = saved_dir();
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("model-00001-of-00001.safetensors"),
    )
    .unwrap();
    let index = dir.path().join("model.safetensors.index.json");

    std::fs::write(
        &index,
        r#"{"metadata": {}, "weight_map": {"model.norm.weight": "gone.safetensors"}}"#,
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains(&dir.path().join("gone.safetensors").display().to_string()),
        "{err}"
    );

    std::fs::write(&index, r#"{"metadata": {}}"#).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("`weight_map`") && err.contains(&index.display().to_string()),
        "{err}"
    );

    std::fs::write(&index, r#"{"weight_map": {"#).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains(&index.display().to_string()) && err.contains("invalid JSON"),
        "{err}"
    );

    // An index that lists only some tensors: the first unlisted one is missing.
    std::fs::write(
        &index,
        r#"{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"}}"#,
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("tensor `model.layers.0.input_layernorm.weight` is missing"),
        "{err}"
    );
    let mut source = SafetensorsSource::open_dir(dir.path()).unwrap();
    let err = load_weights(&config(), &mut source, &device(), FloatPrecision::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&index.display().to_string()), "{err}");
}

// ---------------------------------------------------------------------------------------------
// GGUF
// ---------------------------------------------------------------------------------------------

fn gguf_str(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A minimal valid GGUF v3 of a 1-layer llama (hidden 8, 2 heads, 1 KV head) with F32 tensors
/// and a byte-level BPE vocabulary; the last tensor ends at the end of the file. Also returns
/// where the tensor data starts.
fn tiny_gguf() -> (Vec<u8>, usize) {
    let (hidden, heads, kv_heads, inter) = (8u64, 2u64, 1u64, 16u64);
    let head_dim = hidden / heads;
    let tokens = ["<unk>", "<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa"];
    let vocab = tokens.len() as u64;
    let mut kvs: Vec<(&str, u32, Vec<u8>)> = vec![
        ("general.architecture", 8, gguf_str("llama")),
        ("llama.block_count", 4, 1u32.to_le_bytes().to_vec()),
        ("llama.context_length", 4, 64u32.to_le_bytes().to_vec()),
        (
            "llama.embedding_length",
            4,
            (hidden as u32).to_le_bytes().to_vec(),
        ),
        (
            "llama.feed_forward_length",
            4,
            (inter as u32).to_le_bytes().to_vec(),
        ),
        (
            "llama.attention.head_count",
            4,
            (heads as u32).to_le_bytes().to_vec(),
        ),
        (
            "llama.attention.head_count_kv",
            4,
            (kv_heads as u32).to_le_bytes().to_vec(),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            6,
            1e-5f32.to_le_bytes().to_vec(),
        ),
        ("llama.rope.freq_base", 6, 10000f32.to_le_bytes().to_vec()),
        ("tokenizer.ggml.model", 8, gguf_str("gpt2")),
        (
            "tokenizer.ggml.bos_token_id",
            4,
            1u32.to_le_bytes().to_vec(),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            4,
            2u32.to_le_bytes().to_vec(),
        ),
    ];
    let str_array = |items: &[&str]| {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            v.extend(gguf_str(s));
        }
        v
    };
    kvs.push(("tokenizer.ggml.tokens", 9, str_array(&tokens)));
    kvs.push(("tokenizer.ggml.merges", 9, str_array(&["a b", "Ġ a"])));

    // GGUF dims are ne0 first: the reverse of the PyTorch shape.
    let (q, kv) = (heads * head_dim, kv_heads * head_dim);
    let tensors: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![hidden, vocab]),
        ("blk.0.attn_norm.weight".into(), vec![hidden]),
        ("blk.0.attn_q.weight".into(), vec![hidden, q]),
        ("blk.0.attn_k.weight".into(), vec![hidden, kv]),
        ("blk.0.attn_v.weight".into(), vec![hidden, kv]),
        ("blk.0.attn_output.weight".into(), vec![q, hidden]),
        ("blk.0.ffn_norm.weight".into(), vec![hidden]),
        ("blk.0.ffn_gate.weight".into(), vec![hidden, inter]),
        ("blk.0.ffn_up.weight".into(), vec![hidden, inter]),
        ("blk.0.ffn_down.weight".into(), vec![inter, hidden]),
        ("output_norm.weight".into(), vec![hidden]),
    ];

    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, t, v) in &kvs {
        out.extend(gguf_str(k));
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(v);
    }
    let align = |n: usize| n.div_ceil(32) * 32;
    let mut data = Vec::new();
    let mut seed = 1u32;
    for (name, dims) in &tensors {
        out.extend(gguf_str(name));
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // F32
        data.resize(align(data.len()), 0);
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        for _ in 0..dims.iter().product::<u64>() {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = (f64::from(seed >> 8) / f64::from(1u32 << 24) - 0.5) as f32 * 0.2;
            data.extend_from_slice(&v.to_le_bytes());
        }
    }
    out.resize(align(out.len()), 0);
    let data_start = out.len();
    out.extend(data);
    (out, data_start)
}

/// `Pretrained::load` on these bytes, as a `.gguf` file; a panic fails with the label.
fn load_gguf_bytes(dir: &Path, bytes: &[u8], label: &str) -> Result<Pretrained, Error> {
    let path = dir.join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Pretrained::load(&path, &device(), FloatPrecision::F32)
    }))
    .unwrap_or_else(|_| panic!("Pretrained::load panicked on {label}"))
}

#[test]
fn corrupt_gguf_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (good, data_start) = tiny_gguf();
    let p = load_gguf_bytes(dir.path(), &good, "the valid file").unwrap();
    assert_eq!(p.model.config().hidden_size, 8);
    assert_eq!(p.model.config().num_key_value_heads, 1);
    assert!(p.model.config().tie_word_embeddings);
    assert_eq!(p.tokenizer.vocab_size(), 8);
    let path = dir.path().join("model.gguf");

    // Every truncation is an error naming the file.
    let cuts = (0..64)
        .chain((64..data_start).step_by(3))
        .chain((data_start..good.len()).step_by(37));
    let cuts = cuts.chain([data_start - 1, good.len() - 1]);
    for len in cuts {
        match load_gguf_bytes(dir.path(), &good[..len], &format!("a copy cut at {len}")) {
            Ok(_) => panic!("a copy cut at {len} of {} bytes loaded", good.len()),
            Err(e) => assert!(
                e.to_string().contains(&path.display().to_string()),
                "cut at {len}: {e}"
            ),
        }
    }

    // A valid-looking header followed by garbage.
    let mut garbage = b"GGUF".to_vec();
    garbage.extend_from_slice(&3u32.to_le_bytes());
    let mut seed = 7u32;
    for _ in 0..4096 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        garbage.push((seed >> 16) as u8);
    }
    let err = load_gguf_bytes(dir.path(), &garbage, "garbage after the header")
        .unwrap_err()
        .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");

    // Wrong magic and wrong version.
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGML");
    let err = load_gguf_bytes(dir.path(), &bad_magic, "bad magic")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    let err = load_gguf_bytes(dir.path(), &v1, "version 1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported GGUF version 1"), "{err}");

    // Any single corrupted header byte: an error or a model, never a panic.
    for i in 8..data_start {
        for value in [0x00, 0xff] {
            let mut bad = good.clone();
            if bad[i] == value {
                continue;
            }
            bad[i] = value;
            let _ = load_gguf_bytes(dir.path(), &bad, &format!("byte {i} set to {value:#x}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runtime inputs
// ---------------------------------------------------------------------------------------------

fn ids(rows: &[Vec<u32>]) -> Tensor<2, Int> {
    let data: Vec<i64> = rows.iter().flatten().map(|&t| i64::from(t)).collect();
    Tensor::from_data(
        TensorData::new(data, [rows.len(), rows[0].len()]),
        &device(),
    )
}

fn invalid_input(r: Result<Tensor<3>, Error>) -> String {
    match r {
        Err(e @ Error::InvalidInput(_)) => e.to_string(),
        Err(e) => panic!("expected Error::InvalidInput, got {e}"),
        Ok(_) => panic!("expected Error::InvalidInput, got logits"),
    }
}

#[test]
fn bad_forward_inputs_are_invalid_input() {
    let m = model();
    let row = vec![vec![1, 2, 3, 4, 5]];
    let opts = |mask: Vec<Vec<u8>>| ForwardOptions {
        attention_mask: Some(mask),
        position_ids: None,
        ..Default::default()
    };

    let err = invalid_input(m.forward(ids(&row), &opts(vec![vec![1, 1, 1, 1]])));
    assert!(
        err.contains("invalid input: attention_mask must be [batch 1, past + seq 5], got [1, 4]"),
        "{err}"
    );
    let err = invalid_input(m.forward(ids(&row), &opts(vec![vec![1; 5], vec![1; 5]])));
    assert!(
        err.contains("attention_mask must be [batch 1, past + seq 5], got [2, 5]"),
        "{err}"
    );
    let err = invalid_input(m.forward(ids(&row), &opts(vec![])));
    assert!(
        err.contains("attention_mask must be [batch 1, past + seq 5], got [0, 0]"),
        "{err}"
    );
    // Ragged rows: the second row is short.
    let two = vec![vec![1, 2, 3], vec![4, 5, 6]];
    let err = invalid_input(m.forward(ids(&two), &opts(vec![vec![1, 1, 1], vec![1, 1]])));
    assert!(
        err.contains("attention_mask must be [batch 2, past + seq 3]"),
        "{err}"
    );
    // With explicit positions the mask is still checked.
    let both = ForwardOptions {
        attention_mask: Some(vec![vec![1; 4]]),
        position_ids: Some(vec![(0..5).collect()]),
        ..Default::default()
    };
    let err = invalid_input(m.forward(ids(&row), &both));
    assert!(err.contains("attention_mask must be"), "{err}");

    let positions = ForwardOptions {
        attention_mask: None,
        position_ids: Some(vec![vec![0, 1, 2]]),
        ..Default::default()
    };
    let err = invalid_input(m.forward(ids(&row), &positions));
    assert!(err.contains("position_ids must be [1, 5]"), "{err}");

    // A custom mask must be [batch, 1, seq, past + seq].
    let custom = ForwardOptions {
        custom_mask: Some(Tensor::from_data(
            TensorData::new(vec![false; 20], [1, 1, 4, 5]),
            &m.device(),
        )),
        ..Default::default()
    };
    let err = invalid_input(m.forward(ids(&row), &custom));
    assert!(
        err.contains("custom_mask must be [batch 1, 1, seq 5, past + seq 5], got [1, 1, 4, 5]"),
        "{err}"
    );

    // A cached forward: the mask must cover the cached positions too.
    let mut cache = KvCache::new(2);
    m.forward_cached(ids(&row), &ForwardOptions::default(), &mut cache)
        .unwrap();
    let err = invalid_input(m.forward_cached(ids(&[vec![6]]), &opts(vec![vec![1]]), &mut cache));
    assert!(
        err.contains("attention_mask must be [batch 1, past + seq 6], got [1, 1]"),
        "{err}"
    );
    assert_eq!(cache.len(), 5, "a rejected step must not grow the cache");

    let mut wrong = KvCache::new(3);
    let err = invalid_input(m.forward_cached(ids(&row), &ForwardOptions::default(), &mut wrong));
    assert!(err.contains("KV cache has 3 layers, the model 2"), "{err}");
}

#[test]
fn bad_generate_inputs_are_errors() {
    let m = model();
    let cfg = GenerationConfig {
        max_new_tokens: 2,
        ..Default::default()
    };
    for prompts in [vec![], vec![vec![]], vec![vec![1, 2], vec![]]] {
        let err = generate(&m, None, &prompts, &cfg, |_, _| {}).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        assert!(
            err.to_string()
                .contains("every prompt needs at least one token"),
            "{err}"
        );
    }
    let stop = GenerationConfig {
        stop_strings: vec!["x".into()],
        ..cfg.clone()
    };
    let err = generate(&m, None, &[vec![1]], &stop, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("stop strings need a tokenizer"), "{err}");
    // Ids the embedding does not have (vocab 16) are rejected before the forward pass.
    let err = generate(&m, None, &[vec![1, 2], vec![3, 16]], &cfg, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("token id 16 is outside the model's vocabulary of 16"),
        "{err}"
    );
    let bad_pad = GenerationConfig {
        pad_token_id: 99,
        ..cfg.clone()
    };
    let err = generate(&m, None, &[vec![1, 2], vec![3]], &bad_pad, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("token id 99 is outside"), "{err}");
    // Zero new tokens is not an error: nothing is generated.
    let none = GenerationConfig {
        max_new_tokens: 0,
        ..cfg
    };
    let out = generate(&m, None, &[vec![1, 2]], &none, |_, _| {}).unwrap();
    assert!(out[0].tokens.is_empty());
}

#[test]
fn token_ids_outside_the_vocabulary_are_invalid_input() {
    let m = model(); // vocab 16
    let err = invalid_input(m.forward(ids(&[vec![1, 2, 16]]), &ForwardOptions::default()));
    assert!(
        err.contains("token id 16 is outside the model's vocabulary of 16"),
        "{err}"
    );
    let negative = Tensor::<2, Int>::from_data(TensorData::new(vec![-1i64, 2], [1, 2]), &device());
    let err = invalid_input(m.forward(negative, &ForwardOptions::default()));
    assert!(err.contains("token id -1 is outside"), "{err}");
    // The boundary id is fine.
    assert!(
        m.forward(ids(&[vec![0, 15]]), &ForwardOptions::default())
            .is_ok()
    );
}
