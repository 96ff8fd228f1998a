//! Tests of `to_hf.rs`: GGUF names, the q/k row permutation, toy Llama / Mistral files (a
//! `#[cfg(test)]` module of `gguf/to_hf.rs`).
#![allow(clippy::unwrap_used)]

use super::super::test_writer::GgufBuilder;
use super::*;

#[test]
fn names() {
    let cases = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
        ("output_norm.weight", "model.norm.weight"),
        (
            "blk.0.attn_norm.weight",
            "model.layers.0.input_layernorm.weight",
        ),
        (
            "blk.12.attn_q.weight",
            "model.layers.12.self_attn.q_proj.weight",
        ),
        (
            "blk.3.attn_k.weight",
            "model.layers.3.self_attn.k_proj.weight",
        ),
        (
            "blk.3.attn_v.weight",
            "model.layers.3.self_attn.v_proj.weight",
        ),
        (
            "blk.3.attn_output.weight",
            "model.layers.3.self_attn.o_proj.weight",
        ),
        (
            "blk.29.ffn_norm.weight",
            "model.layers.29.post_attention_layernorm.weight",
        ),
        (
            "blk.1.ffn_gate.weight",
            "model.layers.1.mlp.gate_proj.weight",
        ),
        ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
        (
            "blk.1.ffn_down.weight",
            "model.layers.1.mlp.down_proj.weight",
        ),
        ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias"),
        ("blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias"),
        ("blk.0.attn_v.bias", "model.layers.0.self_attn.v_proj.bias"),
    ];
    for (gguf, hf) in cases {
        assert_eq!(hf_tensor_name(gguf).as_deref(), Some(hf), "{gguf}");
    }
    for bad in [
        "rope_freqs.weight",
        "blk.x.attn_q.weight",
        "blk..attn_q.weight",
        "blk.0.attn_q",
        "blk.0.ffn_norm.bias",
        "blk.0.unknown.weight",
        "token_embd.bias",
    ] {
        assert_eq!(hf_tensor_name(bad), None, "{bad}");
    }
}

#[test]
fn unpermute_small_example() {
    // One head of 4 rows, 1 column: HF row j*2 + i <- GGUF row 2*i + j.
    let gguf = [0.0, 1.0, 2.0, 3.0];
    assert_eq!(
        unpermute_qk_rows(&gguf, 4, 1, 1).unwrap(),
        [0.0, 2.0, 1.0, 3.0]
    );
    // Two heads of 4 rows, 2 columns: rows move whole.
    let gguf: Vec<f32> = (0..16).map(|x| x as f32).collect();
    let hf = unpermute_qk_rows(&gguf, 8, 2, 2).unwrap();
    assert_eq!(
        hf,
        [
            0., 1., 4., 5., 2., 3., 6., 7., 8., 9., 12., 13., 10., 11., 14., 15.
        ]
    );
}

/// llama.cpp's permute written with explicit reshape/swapaxes index arithmetic:
/// W.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols).
fn numpy_style_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0.0; w.len()];
    // Output has logical shape (n_head, half, 2, cols); element (h, a, b, c) = input (h, b, a, c).
    for h in 0..n_head {
        for a in 0..half {
            for b in 0..2 {
                for c in 0..cols {
                    let dst = ((h * half + a) * 2 + b) * cols + c;
                    let src = ((h * 2 + b) * half + a) * cols + c;
                    out[dst] = w[src];
                }
            }
        }
    }
    out
}

#[test]
fn permute_then_unpermute_is_identity() {
    for (n_head, hd, cols) in [
        (1, 2, 1),
        (1, 4, 3),
        (3, 8, 5),
        (9, 64, 7),
        (2, 6, 1),
        (4, 16, 2),
    ] {
        let rows = n_head * hd;
        let w: Vec<f32> = (0..rows * cols).map(|x| (x as f32) * 0.5 - 3.0).collect();
        let permuted = numpy_style_permute(&w, rows, cols, n_head);
        assert_eq!(permute_qk_rows(&w, rows, cols, n_head).unwrap(), permuted);
        assert_eq!(unpermute_qk_rows(&permuted, rows, cols, n_head).unwrap(), w);
        assert_eq!(
            permute_qk_rows(
                &unpermute_qk_rows(&w, rows, cols, n_head).unwrap(),
                rows,
                cols,
                n_head
            )
            .unwrap(),
            w
        );
    }
}

#[test]
fn unpermute_rejects_bad_shapes() {
    assert!(unpermute_qk_rows(&[0.0; 6], 6, 1, 2).is_none()); // head dim 3 is odd
    assert!(unpermute_qk_rows(&[0.0; 8], 8, 1, 3).is_none()); // 8 rows, 3 heads
    assert!(unpermute_qk_rows(&[0.0; 7], 8, 1, 2).is_none()); // wrong length
    assert!(unpermute_qk_rows(&[0.0; 8], 8, 1, 0).is_none());
}

/// A 2-layer-ish toy llama: hidden 4, 2 heads (hd 2), 1 kv head, ffn 8, vocab 3.
fn toy(with_output: bool) -> GgufBuilder {
    let mut b = GgufBuilder::new(3)
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.context_length", 128)
        .kv_u32("llama.embedding_length", 4)
        .kv_u32("llama.feed_forward_length", 8)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.attention.head_count_kv", 1)
        .kv_f32("llama.rope.freq_base", 100_000.0)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "c"])
        .kv_u32("tokenizer.ggml.bos_token_id", 1)
        .kv_u32("tokenizer.ggml.eos_token_id", 2)
        .f32_tensor("token_embd.weight", &[4, 3], &[0.0; 12])
        .f32_tensor("blk.0.attn_norm.weight", &[4], &[1.0; 4])
        .f32_tensor(
            "blk.0.attn_q.weight",
            &[4, 4],
            &(0..16).map(|x| x as f32).collect::<Vec<_>>(),
        )
        .f32_tensor(
            "blk.0.attn_k.weight",
            &[4, 2],
            &(0..8).map(|x| x as f32).collect::<Vec<_>>(),
        )
        .f32_tensor(
            "blk.0.attn_v.weight",
            &[4, 2],
            &(0..8).map(|x| x as f32).collect::<Vec<_>>(),
        )
        .f32_tensor("output_norm.weight", &[4], &[2.0; 4]);
    if with_output {
        b = b.f32_tensor("output.weight", &[4, 3], &[0.5; 12]);
    }
    b
}

#[test]
fn loads_toy_llama() {
    let file = GgufFile::from_bytes(toy(false).build(), "toy.gguf").unwrap();
    let tensors = load_hf_tensors(&file).unwrap();
    let names: Vec<_> = tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight",
            "model.norm.weight",
        ]
    );
    assert_eq!(tensors[0].shape, [3, 4]);
    let q = &tensors[2];
    assert_eq!(q.shape, [4, 4]);
    // 2 heads of hd 2: a head of two rows is its own inverse permutation.
    assert_eq!(q.data, (0..16).map(|x| x as f32).collect::<Vec<_>>());
    let k = &tensors[3];
    assert_eq!(k.shape, [2, 4]);
    assert_eq!(k.data, (0..8).map(|x| x as f32).collect::<Vec<_>>());

    // With 1 head of 4 rows the rows really move.
    let file = GgufFile::from_bytes(
        GgufBuilder::new(3)
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.attention.head_count", 1)
            .f32_tensor(
                "blk.0.attn_q.weight",
                &[2, 4],
                &(0..8).map(|x| x as f32).collect::<Vec<_>>(),
            )
            .build(),
        "q.gguf",
    )
    .unwrap();
    let q = &load_hf_tensors(&file).unwrap()[0];
    assert_eq!(q.shape, [4, 2]);
    assert_eq!(q.data, [0., 1., 4., 5., 2., 3., 6., 7.]);
}

#[test]
fn unknown_tensor_and_arch_are_errors() {
    let file = GgufFile::from_bytes(
        toy(false)
            .f32_tensor("rope_freqs.weight", &[1], &[1.0])
            .build(),
        "toy.gguf",
    )
    .unwrap();
    let err = load_hf_tensors(&file).unwrap_err().to_string();
    assert!(
        err.contains("toy.gguf: tensor `rope_freqs.weight` has no Hugging Face name mapping"),
        "{err}"
    );

    let file = GgufFile::from_bytes(
        GgufBuilder::new(3)
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.attention.head_count", 3)
            .f32_tensor("blk.0.attn_q.weight", &[2, 4], &[0.0; 8])
            .build(),
        "bad.gguf",
    )
    .unwrap();
    let err = load_hf_tensors(&file).unwrap_err().to_string();
    assert!(
        err.contains("tensor `blk.0.attn_q.weight`") && err.contains("3 heads"),
        "{err}"
    );

    let file = GgufFile::from_bytes(
        GgufBuilder::new(3)
            .kv_str("general.architecture", "gemma")
            .build(),
        "g.gguf",
    )
    .unwrap();
    let err = hf_config(&file).unwrap_err().to_string();
    assert!(err.contains("unsupported architecture `gemma`"), "{err}");
}

#[test]
fn config_of_toy_llama() {
    let file = GgufFile::from_bytes(toy(false).build(), "toy.gguf").unwrap();
    let c = hf_config(&file).unwrap();
    assert_eq!(c["architectures"], json!(["LlamaForCausalLM"]));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], 4);
    assert_eq!(c["intermediate_size"], 8);
    assert_eq!(c["num_hidden_layers"], 1);
    assert_eq!(c["num_attention_heads"], 2);
    assert_eq!(c["num_key_value_heads"], 1);
    assert_eq!(c["head_dim"], 2);
    assert_eq!(c["max_position_embeddings"], 128);
    assert_eq!(c["rms_norm_eps"], json!(1e-5));
    assert_eq!(c["rope_theta"], json!(100_000.0));
    assert_eq!(c["vocab_size"], 3);
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);
    assert!(c.get("pad_token_id").is_none());
    assert_eq!(c["hidden_act"], "silu");
    assert_eq!(c["attention_bias"], false);
    assert!(c.get("rope_scaling").is_none());
    assert!(c.get("sliding_window").is_none());

    let file = GgufFile::from_bytes(
        toy(true)
            .kv_str("llama.rope.scaling.type", "linear")
            .kv_f32("llama.rope.scaling.factor", 4.0)
            .kv_u32("llama.attention.sliding_window", 4096)
            .build(),
        "toy.gguf",
    )
    .unwrap();
    let c = hf_config(&file).unwrap();
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(
        c["rope_scaling"],
        json!({"rope_type": "linear", "factor": 4.0})
    );
    assert_eq!(c["sliding_window"], 4096);

    let file = GgufFile::from_bytes(
        toy(false)
            .kv_str("llama.rope.scaling.type", "longrope")
            .build(),
        "toy.gguf",
    )
    .unwrap();
    let err = hf_config(&file).unwrap_err().to_string();
    assert!(
        err.contains("`llama.rope.scaling.type`") && err.contains("longrope"),
        "{err}"
    );
}

#[test]
fn config_of_mistral() {
    let b = GgufBuilder::new(3)
        .kv_str("general.architecture", "mistral")
        .kv_u32("mistral.block_count", 2)
        .kv_u32("mistral.context_length", 32768)
        .kv_u32("mistral.embedding_length", 64)
        .kv_u32("mistral.feed_forward_length", 128)
        .kv_u32("mistral.attention.head_count", 4)
        .kv_f32("mistral.attention.layer_norm_rms_epsilon", 1e-6)
        .kv_u32("mistral.vocab_size", 1000);
    let file = GgufFile::from_bytes(b.build(), "m.gguf").unwrap();
    let c = hf_config(&file).unwrap();
    assert_eq!(c["architectures"], json!(["MistralForCausalLM"]));
    assert_eq!(c["head_dim"], 16);
    assert_eq!(c["num_key_value_heads"], 4);
    assert_eq!(c["rope_theta"], json!(10_000.0));
    assert_eq!(c["rms_norm_eps"], json!(1e-6));
    assert_eq!(c["vocab_size"], 1000);
    assert_eq!(c["sliding_window"], Value::Null);
    assert_eq!(c["bos_token_id"], Value::Null);

    let file = GgufFile::from_bytes(
        b.kv_str("mistral.attention.head_count_kv", "x").build(),
        "m.gguf",
    )
    .unwrap();
    let err = hf_config(&file).unwrap_err().to_string();
    assert!(
        err.contains("`mistral.attention.head_count_kv` has type string, expected u32"),
        "{err}"
    );
}
