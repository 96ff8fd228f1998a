//! A Hugging Face `tokenizer.json` built from GGUF tokenizer metadata, plus the special-token ids
//! and chat template the file carries.
//!
//! GGUF stores the vocabulary (`tokenizer.ggml.tokens`), token kinds (`token_type`), BPE merges
//! and the name of llama.cpp's pre-tokenizer (`tokenizer.ggml.pre`), but not the pre-tokenizer
//! itself. The name is mapped here to the equivalent `tokenizers` pipeline. For SmolLM2 (`smollm`)
//! that is "split every digit, then the GPT-2 regex": transformers' own GGUF conversion drops the
//! digit split and tokenises text like `"a  1 2024"` differently from the original model, which is
//! why this module does not follow it.

use serde_json::{Map, Value, json};

use super::error::GgufError;
use super::reader::GgufFile;

/// `token_type` of control tokens (`<|im_start|>` ...): matched in text as special added tokens.
const TOKEN_TYPE_CONTROL: i128 = 3;
/// `token_type` of user-defined tokens: matched in text as non-special added tokens.
const TOKEN_TYPE_USER_DEFINED: i128 = 4;

/// llama.cpp pre-tokenizers that are `\p{N}` (one digit at a time) followed by the GPT-2 regex.
const DIGITS_THEN_GPT2: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
];

/// llama.cpp pre-tokenizer names for Llama 3's regex.
const LLAMA3: &[&str] = &["llama3", "llama-v3", "llama-bpe"];

/// Qwen2's split regex (llama.cpp's `qwen2` pre-tokenizer, written for Qwen2, Qwen2.5 and
/// Qwen3 GGUFs), as transformers' `Qwen2Tokenizer` builds it: Llama 3's, but one digit at a time.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split regex, as in Meta's `tokenizer.json`.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Special-token ids and BOS policy from `tokenizer.ggml.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GgufSpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// Whether a BOS token is prepended when encoding (`tokenizer.ggml.add_bos_token`; when absent,
    /// llama.cpp's default: true for SentencePiece `llama` vocabularies, false otherwise).
    pub add_bos: bool,
}

/// Read the special-token ids; keys that are absent or unusable are `None`.
pub fn special_tokens(file: &GgufFile) -> GgufSpecialTokens {
    let id = |key: &str| file.get_u32(key).ok();
    let default_add_bos = file
        .get_str("tokenizer.ggml.model")
        .is_ok_and(|m| m == "llama");
    GgufSpecialTokens {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        unk: id("tokenizer.ggml.unknown_token_id"),
        pad: id("tokenizer.ggml.padding_token_id"),
        add_bos: file
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(default_add_bos),
    }
}

/// The Jinja chat template (`tokenizer.chat_template`), if the file has one.
pub fn chat_template(file: &GgufFile) -> Option<String> {
    file.get_str("tokenizer.chat_template")
        .ok()
        .map(str::to_string)
}

fn bad(file: &GgufFile, reason: String) -> GgufError {
    GgufError::BadTokenizer {
        path: file.display_path().to_string(),
        reason,
    }
}

/// The elements of a string-array key.
fn string_array<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, GgufError> {
    file.get_array(key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                bad(
                    file,
                    format!("`{key}`[{i}] has type {}, expected string", v.type_name()),
                )
            })
        })
        .collect()
}

/// The pre-tokenizer and whether BPE should look whole words up before merging.
fn pre_tokenizer(pre: Option<&str>) -> (Value, bool) {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    match pre {
        Some(p) if DIGITS_THEN_GPT2.contains(&p) => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        // llama.cpp also sets `ignore_merges` for Llama 3, like Meta's tokenizer.json.
        Some(p) if LLAMA3.contains(&p) => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            true,
        ),
        // Qwen's `tokenizer.json`: the split, then ByteLevel without its own regex.
        Some("qwen2") => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            false,
        ),
        // `gpt2`, `default`, absent or unknown: the GPT-2 regex inside ByteLevel.
        _ => (byte_level(true), false),
    }
}

/// `TemplateProcessing` that adds BOS / EOS when the GGUF asks for them (nothing for SmolLM2).
fn post_processor(
    file: &GgufFile,
    tokens: &[&str],
    special: &GgufSpecialTokens,
) -> Result<Value, GgufError> {
    let add_eos = file
        .get_bool("tokenizer.ggml.add_eos_token")
        .unwrap_or(false);
    let mut special_map = Map::new();
    let mut piece =
        |id: Option<u32>, what: &str, wanted: bool| -> Result<Option<String>, GgufError> {
            let Some(id) = id.filter(|_| wanted) else {
                return Ok(None);
            };
            let content = tokens.get(id as usize).ok_or_else(|| {
                bad(
                    file,
                    format!(
                        "{what} token id {id} is outside the vocabulary of {}",
                        tokens.len()
                    ),
                )
            })?;
            special_map.insert(
                (*content).to_string(),
                json!({"id": content, "ids": [id], "tokens": [content]}),
            );
            Ok(Some((*content).to_string()))
        };
    let bos = piece(special.bos, "BOS", special.add_bos)?;
    let eos = piece(special.eos, "EOS", add_eos)?;
    let seq = |id: &str, type_id: u32| {
        let mut v = Vec::new();
        if let Some(b) = &bos {
            v.push(json!({"SpecialToken": {"id": b, "type_id": type_id}}));
        }
        v.push(json!({"Sequence": {"id": id, "type_id": type_id}}));
        if let Some(e) = &eos {
            v.push(json!({"SpecialToken": {"id": e, "type_id": type_id}}));
        }
        v
    };
    let mut pair = seq("A", 0);
    pair.extend(seq("B", 1));
    Ok(json!({
        "type": "TemplateProcessing",
        "single": seq("A", 0),
        "pair": pair,
        "special_tokens": special_map,
    }))
}

/// Build a `tokenizer.json` for a byte-level BPE (`tokenizer.ggml.model = "gpt2"`) vocabulary.
///
/// For SmolLM2 the result is JSON-equal to what `tests/fixtures/smollm2/gguf_to_tokenizer_json.py`
/// writes (the original SmolLM2 tokenizer; `docs/gguf.md`). Load it with
/// `tokenizers::Tokenizer::from_str(&v.to_string())`.
pub fn tokenizer_json(file: &GgufFile) -> Result<Value, GgufError> {
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::UnsupportedTokenizer {
            path: file.display_path().to_string(),
            model: model.to_string(),
        });
    }
    let pre = match file.get("tokenizer.ggml.pre") {
        None => None,
        Some(_) => Some(file.get_str("tokenizer.ggml.pre")?),
    };
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let types: Vec<i128> = match file.get("tokenizer.ggml.token_type") {
        // llama.cpp treats a missing type table as all NORMAL.
        None => Vec::new(),
        Some(_) => file
            .get_array("tokenizer.ggml.token_type")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_integer().ok_or_else(|| {
                    bad(
                        file,
                        format!(
                            "`tokenizer.ggml.token_type`[{i}] has type {}, expected i32",
                            v.type_name()
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(bad(
            file,
            format!(
                "`tokenizer.ggml.token_type` has {} entries but `tokenizer.ggml.tokens` has {}",
                types.len(),
                tokens.len()
            ),
        ));
    }
    let merges = match file.get("tokenizer.ggml.merges") {
        None => Vec::new(),
        Some(_) => string_array(file, "tokenizer.ggml.merges")?,
    };

    let added_tokens: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|&(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .filter_map(|(id, &t)| tokens.get(id).map(|content| (id, t, content)))
        .map(|(id, t, content)| {
            json!({
                "id": id,
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": t == TOKEN_TYPE_CONTROL,
            })
        })
        .collect();

    let mut vocab = Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert((*token).to_string(), json!(id));
    }
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let parts: Vec<&str> = m.split(' ').collect();
            if parts.len() == 2 {
                Ok(json!(parts))
            } else {
                Err(bad(
                    file,
                    format!("merge #{i} `{m}` is not two space-separated tokens"),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;

    let special = special_tokens(file);
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        // Qwen's tokenizer normalises to NFC first (transformers' `Qwen2Tokenizer`).
        "normalizer": if pre == Some("qwen2") { json!({"type": "NFC"}) } else { Value::Null },
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(file, &tokens, &special)?,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merges,
        },
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::str::FromStr;

    use super::super::test_writer::GgufBuilder;
    use super::*;

    /// A byte-level toy vocabulary: control token, user-defined token, letters, space, digits.
    fn toy(pre: Option<&str>) -> GgufBuilder {
        let tokens = [
            "<|endoftext|>",
            "<|im_start|>",
            "<tool>",
            "a",
            "b",
            "ab",
            "Ġ",
            "Ġa",
            "Ġab",
            "1",
            "2",
            "12",
            "Ġ1",
        ];
        let types = [3, 3, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1];
        let mut b = GgufBuilder::new(3)
            .kv_str("tokenizer.ggml.model", "gpt2")
            .kv_str_array("tokenizer.ggml.tokens", &tokens)
            .kv_i32_array("tokenizer.ggml.token_type", &types)
            .kv_str_array(
                "tokenizer.ggml.merges",
                &["Ġ a", "a b", "Ġa b", "1 2", "Ġ 1"],
            )
            .kv_u32("tokenizer.ggml.bos_token_id", 1)
            .kv_u32("tokenizer.ggml.eos_token_id", 0)
            .kv_u32("tokenizer.ggml.unknown_token_id", 0)
            .kv_bool("tokenizer.ggml.add_bos_token", false)
            .kv_str("tokenizer.chat_template", "{{ messages }}");
        if let Some(pre) = pre {
            b = b.kv_str("tokenizer.ggml.pre", pre);
        }
        b
    }

    fn encode(json: &Value, text: &str) -> Vec<u32> {
        let tok = tokenizers::Tokenizer::from_str(&json.to_string()).unwrap();
        tok.encode(text, true).unwrap().get_ids().to_vec()
    }

    #[test]
    fn smollm_style_vocabulary() {
        let file = GgufFile::from_bytes(toy(Some("smollm")).build(), "t.gguf").unwrap();
        let j = tokenizer_json(&file).unwrap();
        assert_eq!(
            j["pre_tokenizer"]["pretokenizers"][0],
            json!({"type": "Digits", "individual_digits": true})
        );
        assert_eq!(j["added_tokens"].as_array().unwrap().len(), 3);
        assert_eq!(j["added_tokens"][0]["content"], "<|endoftext|>");
        assert_eq!(j["added_tokens"][0]["special"], true);
        assert_eq!(j["added_tokens"][2]["content"], "<tool>");
        assert_eq!(j["added_tokens"][2]["special"], false);
        assert_eq!(j["model"]["vocab"]["Ġab"], 8);
        assert_eq!(j["model"]["merges"][0], json!(["Ġ", "a"]));
        assert_eq!(
            j["post_processor"]["single"],
            json!([{"Sequence": {"id": "A", "type_id": 0}}])
        );
        // Digits are split off one at a time, so "12" never merges and the space before it
        // stands alone.
        assert_eq!(encode(&j, "ab ab 12<|im_start|>"), [5, 8, 6, 9, 10, 1]);

        let s = special_tokens(&file);
        assert_eq!(
            s,
            GgufSpecialTokens {
                bos: Some(1),
                eos: Some(0),
                unk: Some(0),
                pad: None,
                add_bos: false
            }
        );
        assert_eq!(chat_template(&file).as_deref(), Some("{{ messages }}"));
    }

    #[test]
    fn plain_byte_level_when_pre_is_absent() {
        let file = GgufFile::from_bytes(toy(None).build(), "t.gguf").unwrap();
        let j = tokenizer_json(&file).unwrap();
        assert_eq!(j["pre_tokenizer"]["type"], "ByteLevel");
        // Without the digit split the GPT-2 regex keeps " 12" together and "1 2" merges.
        assert_eq!(encode(&j, "ab 12"), [5, 6, 11]);
        let file = GgufFile::from_bytes(toy(Some("gpt2")).build(), "t.gguf").unwrap();
        assert_eq!(
            tokenizer_json(&file).unwrap()["pre_tokenizer"]["type"],
            "ByteLevel"
        );
    }

    #[test]
    fn llama3_pre_tokenizer_and_bos() {
        let b = GgufBuilder::new(3)
            .kv_str("tokenizer.ggml.model", "gpt2")
            .kv_str("tokenizer.ggml.pre", "llama-bpe")
            .kv_str_array(
                "tokenizer.ggml.tokens",
                &["<|begin_of_text|>", "a", "b", "ab", "Ġ", "Ġab"],
            )
            .kv_i32_array("tokenizer.ggml.token_type", &[3, 1, 1, 1, 1, 1])
            .kv_str_array("tokenizer.ggml.merges", &["a b", "Ġ ab"])
            .kv_u32("tokenizer.ggml.bos_token_id", 0)
            .kv_bool("tokenizer.ggml.add_bos_token", true);
        let file = GgufFile::from_bytes(b.build(), "t.gguf").unwrap();
        let j = tokenizer_json(&file).unwrap();
        assert_eq!(j["model"]["ignore_merges"], true);
        assert_eq!(encode(&j, "ab ab"), [0, 3, 5]);
        assert!(special_tokens(&file).add_bos);
    }

    /// Qwen's regex takes digits one at a time (Llama 3's takes up to three) and NFC comes
    /// first: a decomposed `é` encodes as the composed token.
    #[test]
    fn qwen2_pre_tokenizer() {
        let b = GgufBuilder::new(3)
            .kv_str("tokenizer.ggml.model", "gpt2")
            .kv_str("tokenizer.ggml.pre", "qwen2")
            .kv_str_array("tokenizer.ggml.tokens", &["1", "2", "12", "Ã©", "Ã", "©"])
            .kv_i32_array("tokenizer.ggml.token_type", &[1, 1, 1, 1, 1, 1])
            .kv_str_array("tokenizer.ggml.merges", &["1 2", "Ã ©"]);
        let file = GgufFile::from_bytes(b.build(), "t.gguf").unwrap();
        let j = tokenizer_json(&file).unwrap();
        assert_eq!(j["model"]["ignore_merges"], false);
        assert_eq!(encode(&j, "12"), [0, 1]);
        assert_eq!(encode(&j, "e\u{301}"), [3]);
    }

    #[test]
    fn unsupported_and_inconsistent_metadata() {
        let file = GgufFile::from_bytes(
            GgufBuilder::new(3)
                .kv_str("tokenizer.ggml.model", "llama")
                .build(),
            "spm.gguf",
        )
        .unwrap();
        let err = tokenizer_json(&file).unwrap_err().to_string();
        assert!(
            err.contains("spm.gguf: unsupported tokenizer model `llama`"),
            "{err}"
        );
        assert!(special_tokens(&file).add_bos);

        let file = GgufFile::from_bytes(GgufBuilder::new(3).build(), "none.gguf").unwrap();
        let err = tokenizer_json(&file).unwrap_err().to_string();
        assert!(
            err.contains("metadata key `tokenizer.ggml.model` missing"),
            "{err}"
        );
        assert_eq!(special_tokens(&file), GgufSpecialTokens::default());
        assert_eq!(chat_template(&file), None);

        let file = GgufFile::from_bytes(
            GgufBuilder::new(3)
                .kv_str("tokenizer.ggml.model", "gpt2")
                .kv_str_array("tokenizer.ggml.tokens", &["a", "b"])
                .kv_i32_array("tokenizer.ggml.token_type", &[1])
                .build(),
            "t.gguf",
        )
        .unwrap();
        let err = tokenizer_json(&file).unwrap_err().to_string();
        assert!(
            err.contains("`tokenizer.ggml.token_type` has 1 entries"),
            "{err}"
        );

        let file = GgufFile::from_bytes(
            GgufBuilder::new(3)
                .kv_str("tokenizer.ggml.model", "gpt2")
                .kv_str_array("tokenizer.ggml.tokens", &["a", "b"])
                .kv_str_array("tokenizer.ggml.merges", &["a b c"])
                .build(),
            "t.gguf",
        )
        .unwrap();
        let err = tokenizer_json(&file).unwrap_err().to_string();
        assert!(err.contains("merge #0 `a b c`"), "{err}");
    }
}
