//! The tokenizer half of a GGUF export: `tokenizer.ggml.*` and `tokenizer.chat_template`, as
//! llama.cpp's converter writes them for a byte-level BPE (`gpt2`) vocabulary
//! (`TextModel.get_vocab_base`, `_set_vocab_gpt2` and gguf-py's `SpecialVocab`):
//!
//! * `tokens`: every id below the model's `vocab_size`, by id; an id the tokenizer lacks is
//!   `[PAD{id}]` of type UNUSED;
//! * `token_type`: NORMAL (1) for the BPE vocabulary; an added token is CONTROL (3) when it is
//!   `special` or looks special (`<|...|>`, `<pad>`, ...), else USER_DEFINED (4, with `▁`
//!   turned into a space);
//! * `merges` as `"a b"` strings (pairs joined, a space inside a part written as `Ġ`);
//! * the special ids from `tokenizer_config.json` (`bos_token`, ...), then `config.json`'s ids for
//!   those it lacks, and `add_bos_token` / `add_eos_token` when the config states them;
//! * `tokenizer.ggml.pre`, the pre-tokenizer llama.cpp must use: taken from the source when it
//!   is a GGUF file, otherwise found as llama.cpp's `get_vocab_base_pre` finds it — the SHA-256
//!   of the ids of a fixed probe text ([`CHKTXT`]) looked up in a table ([`KNOWN_PRE`]). An
//!   unknown hash is an error: guessing would make llama.cpp split words differently.
//!
//! SentencePiece-style vocabularies (`byte_fallback`, Llama 2 / Mistral v0.1: llama.cpp's
//! `llama` tokenizer model) are refused for now.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;
use sha2::{Digest, Sha256};
use temper_formats::tokenizer::TokenizerFiles;

use super::export_error::GgufExportError;
use super::reader::GgufFile;
use super::tokenizer_json::{chat_template, special_tokens, tokenizer_json};
use super::value::GgufValue;
use crate::ModelConfig;

/// llama.cpp's probe text (`chktxt` in `convert_hf_to_gguf.py`): whitespace runs, emoji, digit
/// groups, scripts and contractions, which pre-tokenizers split differently.
pub const CHKTXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// `(chkhsh, tokenizer.ggml.pre)` for the pre-tokenizers of the families Temper exports, copied
/// from llama.cpp's `get_vocab_base_pre` (the model each hash was taken from in the comment).
pub const KNOWN_PRE: &[(&str, &str)] = &[
    // meta-llama/Meta-Llama-3-8B
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ),
    // HuggingFaceTB/SmolLM-135M (SmolLM2 shares it)
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ),
    // Qwen/Qwen1.5-7B (Qwen2, Qwen2.5)
    (
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
        "qwen2",
    ),
    // Qwen/Qwen3-Embedding-0.6B
    (
        "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c",
        "qwen2",
    ),
    // deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    (
        "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5",
        "deepseek-r1-qwen",
    ),
    // openai-community/gpt2
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ),
    // mistralai/Mistral-Nemo-Base-2407
    (
        "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e",
        "tekken",
    ),
];

/// gguf-py's `TokenType`.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Everything the tokenizer metadata is made from, read from an HF directory or a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufTokenizerSource {
    /// The tokenizer as `tokenizer.json`.
    pub tokenizer_json: Value,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// `add_bos_token` when the source states it.
    pub add_bos: Option<bool>,
    /// `add_eos_token` when the source states it.
    pub add_eos: Option<bool>,
    pub chat_template: Option<String>,
    /// `tokenizer.ggml.pre` when the source names it (a GGUF file); otherwise detected.
    pub pre: Option<String>,
    /// Where it was read, for messages.
    pub origin: PathBuf,
}

impl GgufTokenizerSource {
    /// Read from a `.gguf` file ([`Self::from_gguf`]) or an HF model directory
    /// ([`Self::from_hf_dir`]), by the path's extension.
    ///
    /// # Errors
    /// As those.
    pub fn load(path: &Path, config: &ModelConfig) -> Result<Self, GgufExportError> {
        if crate::tokenizer_bundle::is_gguf_path(path) {
            let file = GgufFile::open(path).map_err(crate::Error::from)?;
            Self::from_gguf(&file)
        } else {
            Self::from_hf_dir(path, config)
        }
    }

    /// Read from an HF model directory (`tokenizer.json`, `tokenizer_config.json`,
    /// `chat_template.jinja`); `config` supplies the ids `tokenizer_config.json` does not name.
    ///
    /// # Errors
    /// Missing or malformed tokenizer files, naming the file.
    pub fn from_hf_dir(dir: &Path, config: &ModelConfig) -> Result<Self, GgufExportError> {
        let files = TokenizerFiles::read_dir(dir)?;
        let json: Value =
            serde_json::from_str(&files.tokenizer_json).map_err(|e| bad_json(&files, e))?;
        let tok = tokenizers::Tokenizer::from_str(&files.tokenizer_json).map_err(|e| {
            GgufExportError::UnsupportedTokenizer {
                reason: format!("{}: {e}", files.tokenizer_json_path.display()),
            }
        })?;
        let tc = files.config.clone().unwrap_or_default();
        let id = |s: &Option<String>| s.as_deref().and_then(|s| tok.token_to_id(s));
        let model_unk = json["model"]["unk_token"]
            .as_str()
            .and_then(|s| tok.token_to_id(s));
        Ok(Self {
            bos: id(&tc.bos_token).or(config.bos_token_id),
            eos: id(&tc.eos_token).or(config.eos_token_ids.first().copied()),
            unk: id(&tc.unk_token).or(model_unk),
            pad: id(&tc.pad_token).or(config.pad_token_id),
            add_bos: tc.add_bos_token,
            add_eos: tc.add_eos_token,
            chat_template: files.chat_template().map(str::to_string),
            pre: None,
            origin: files.tokenizer_json_path.clone(),
            tokenizer_json: json,
        })
    }

    /// Read from a GGUF file's own tokenizer metadata (its `tokenizer.ggml.pre` kept).
    ///
    /// # Errors
    /// A tokenizer Temper cannot rebuild from the metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufExportError> {
        let json = tokenizer_json(file).map_err(crate::Error::from)?;
        let st = special_tokens(file);
        Ok(Self {
            tokenizer_json: json,
            bos: st.bos,
            eos: st.eos,
            unk: st.unk,
            pad: st.pad,
            add_bos: file.get_bool("tokenizer.ggml.add_bos_token").ok(),
            add_eos: file.get_bool("tokenizer.ggml.add_eos_token").ok(),
            chat_template: chat_template(file),
            pre: file.get_str("tokenizer.ggml.pre").ok().map(str::to_string),
            origin: file.path().to_path_buf(),
        })
    }

    /// The `tokenizer.*` metadata for a model of `vocab_size` rows, in the converter's order.
    ///
    /// # Errors
    /// [`GgufExportError::UnsupportedTokenizer`] for a non-BPE or SentencePiece-style
    /// vocabulary or ids past `vocab_size`; [`GgufExportError::UnknownPreTokenizer`].
    pub fn metadata(&self, vocab_size: usize) -> Result<Vec<(String, GgufValue)>, GgufExportError> {
        let unsupported = |reason: String| GgufExportError::UnsupportedTokenizer {
            reason: format!("{}: {reason}", self.origin.display()),
        };
        let model = &self.tokenizer_json["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(unsupported(format!(
                "model type {} (only byte-level BPE exports, as llama.cpp's `gpt2`)",
                model["type"]
            )));
        }
        if model["byte_fallback"].as_bool() == Some(true) {
            return Err(unsupported(
                "a SentencePiece-style BPE (byte_fallback: llama.cpp's `llama` vocabulary) \
                 does not export yet"
                    .into(),
            ));
        }
        let pre = match &self.pre {
            Some(p) => p.clone(),
            None => detect_pre(&self.tokenizer_json, &self.origin)?,
        };

        let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
        let mut put = |id: u64, text: String, ty: i32| -> Result<(), GgufExportError> {
            let slot = usize::try_from(id)
                .ok()
                .and_then(|i| tokens.get_mut(i))
                .ok_or_else(|| {
                    unsupported(format!(
                        "token {text:?} has id {id}, past the model's vocab_size {vocab_size}"
                    ))
                })?;
            *slot = Some((text, ty));
            Ok(())
        };
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| unsupported("model.vocab is not an object".into()))?;
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| unsupported(format!("vocab entry {text:?} has no integer id")))?;
            put(id, text.clone(), NORMAL)?;
        }
        for added in self.tokenizer_json["added_tokens"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
        {
            let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else {
                return Err(unsupported(format!("malformed added token {added}")));
            };
            let ty = if added["special"].as_bool() == Some(true) || looks_special(text) {
                (CONTROL, text.to_string())
            } else {
                (USER_DEFINED, text.replace('\u{2581}', " "))
            };
            put(id, ty.1, ty.0)?;
        }
        let (texts, types): (Vec<GgufValue>, Vec<GgufValue>) = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let (text, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED));
                (GgufValue::String(text), GgufValue::I32(ty))
            })
            .unzip();
        let merges = merges(model).map_err(unsupported)?;

        let mut out = vec![
            (
                "tokenizer.ggml.model".into(),
                GgufValue::String("gpt2".into()),
            ),
            ("tokenizer.ggml.pre".into(), GgufValue::String(pre)),
            ("tokenizer.ggml.tokens".into(), GgufValue::Array(texts)),
            ("tokenizer.ggml.token_type".into(), GgufValue::Array(types)),
            ("tokenizer.ggml.merges".into(), GgufValue::Array(merges)),
        ];
        for (key, id) in [
            ("bos_token_id", self.bos),
            ("eos_token_id", self.eos),
            ("unknown_token_id", self.unk),
            ("padding_token_id", self.pad),
        ] {
            if let Some(id) = id {
                out.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
            }
        }
        if let Some(b) = self.add_bos {
            out.push(("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(b)));
        }
        if let Some(b) = self.add_eos {
            out.push(("tokenizer.ggml.add_eos_token".into(), GgufValue::Bool(b)));
        }
        if let Some(t) = &self.chat_template {
            out.push((
                "tokenizer.chat_template".into(),
                GgufValue::String(t.clone()),
            ));
        }
        Ok(out)
    }
}

fn bad_json(files: &TokenizerFiles, e: serde_json::Error) -> GgufExportError {
    GgufExportError::UnsupportedTokenizer {
        reason: format!("{}: {e}", files.tokenizer_json_path.display()),
    }
}

/// The converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// `model.merges` as `"a b"` strings: tokenizers writes either strings or pairs, and gguf-py's
/// `SpecialVocab` joins a pair with a space after writing any space inside a part as `Ġ`
/// (U+0120, the byte-level alphabet's space).
fn merges(model: &Value) -> Result<Vec<GgufValue>, String> {
    let Some(items) = model["merges"].as_array() else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(GgufValue::String(s.clone())),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => Ok(GgufValue::String(format!(
                    "{} {}",
                    a.replace(' ', "\u{120}"),
                    b.replace(' ', "\u{120}")
                ))),
                _ => Err(format!("malformed merge {m}")),
            },
            _ => Err(format!("malformed merge {m}")),
        })
        .collect()
}

/// llama.cpp's `chkhsh`: the SHA-256 of Python's `str()` of the probe text's ids (special
/// tokens added, as `AutoTokenizer.encode` does).
pub fn pre_tokenizer_hash(tokenizer: &tokenizers::Tokenizer) -> Result<String, String> {
    let ids = tokenizer
        .encode(CHKTXT, true)
        .map_err(|e| e.to_string())?
        .get_ids()
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let digest = Sha256::digest(format!("[{ids}]").as_bytes());
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn detect_pre(json: &Value, origin: &Path) -> Result<String, GgufExportError> {
    let unsupported = |reason: String| GgufExportError::UnsupportedTokenizer {
        reason: format!("{}: {reason}", origin.display()),
    };
    let tok = tokenizers::Tokenizer::from_str(&json.to_string())
        .map_err(|e| unsupported(e.to_string()))?;
    let hash = pre_tokenizer_hash(&tok).map_err(unsupported)?;
    KNOWN_PRE
        .iter()
        .find(|(h, _)| *h == hash)
        .map(|(_, name)| (*name).to_string())
        .ok_or_else(|| GgufExportError::UnknownPreTokenizer {
            hash,
            known: KNOWN_PRE
                .iter()
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn source(json: Value) -> GgufTokenizerSource {
        GgufTokenizerSource {
            tokenizer_json: json,
            bos: Some(3),
            eos: Some(3),
            unk: None,
            pad: None,
            add_bos: Some(false),
            add_eos: None,
            chat_template: Some("{{ x }}".into()),
            pre: Some("smollm".into()),
            origin: PathBuf::from("tok.json"),
        }
    }

    fn bpe() -> Value {
        json!({
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                      "merges": [["a", "b"], "ab b"]},
            "added_tokens": [
                {"id": 3, "content": "<|end|>", "special": false},
                {"id": 4, "content": "x\u{2581}y", "special": false}
            ]
        })
    }

    fn get<'a>(m: &'a [(String, GgufValue)], k: &str) -> &'a GgufValue {
        &m.iter().find(|(key, _)| key == k).unwrap().1
    }

    #[test]
    fn tokens_types_padding_and_merges() {
        let m = source(bpe()).metadata(7).unwrap();
        let s = |v: &str| GgufValue::String(v.into());
        assert_eq!(get(&m, "tokenizer.ggml.model"), &s("gpt2"));
        assert_eq!(get(&m, "tokenizer.ggml.pre"), &s("smollm"));
        assert_eq!(
            get(&m, "tokenizer.ggml.tokens").as_array().unwrap(),
            [
                s("a"),
                s("b"),
                s("ab"),
                s("<|end|>"),
                s("x y"),
                s("[PAD5]"),
                s("[PAD6]")
            ]
        );
        let types: Vec<i128> = get(&m, "tokenizer.ggml.token_type")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_integer().unwrap())
            .collect();
        assert_eq!(types, [1, 1, 1, 3, 4, 5, 5]);
        assert_eq!(
            get(&m, "tokenizer.ggml.merges").as_array().unwrap(),
            [s("a b"), s("ab b")]
        );
        assert_eq!(get(&m, "tokenizer.ggml.bos_token_id"), &GgufValue::U32(3));
        assert_eq!(
            get(&m, "tokenizer.ggml.add_bos_token"),
            &GgufValue::Bool(false)
        );
        assert!(!m.iter().any(|(k, _)| k == "tokenizer.ggml.add_eos_token"));
        assert_eq!(get(&m, "tokenizer.chat_template"), &s("{{ x }}"));
    }

    #[test]
    fn refusals() {
        let err = source(bpe()).metadata(4).unwrap_err().to_string();
        assert!(err.contains("id 4, past the model's vocab_size 4"), "{err}");
        let mut sp = bpe();
        sp["model"]["byte_fallback"] = json!(true);
        let err = source(sp).metadata(8).unwrap_err().to_string();
        assert!(err.contains("SentencePiece-style"), "{err}");
        let mut wp = bpe();
        wp["model"]["type"] = json!("WordPiece");
        assert!(source(wp).metadata(8).is_err());
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error() {
        // A bare BPE without a byte-level pre-tokenizer hashes to nothing llama.cpp knows.
        let mut s = source(json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [], "dropout": null,
                      "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false}
        }));
        s.pre = None;
        let err = s.metadata(2).unwrap_err().to_string();
        assert!(
            err.starts_with("unknown BPE pre-tokenizer (llama.cpp chkhsh "),
            "{err}"
        );
        assert!(err.contains("known: llama-bpe, smollm"), "{err}");
    }
}
