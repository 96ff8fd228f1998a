//! The tokenizer bundle of an HF model directory as files — `tokenizer.json`,
//! `tokenizer_config.json` and `chat_template.jinja` — read and written without loading the
//! tokenizer itself (that is `temper-llm-arch`'s `Tokenizer`, over the `tokenizers` crate).
//!
//! transformers' rules, which this follows:
//! * a special token (`bos_token`, `eos_token`, `pad_token`, `unk_token`) is a string or an
//!   `AddedToken` object whose `content` is the string;
//! * `chat_template` is a string, or a list of `{"name", "template"}` whose `default` entry
//!   (else the first) is the template used;
//! * a `chat_template.jinja` beside the config takes precedence over the config's template
//!   (transformers ≥ 4.43 saves templates there).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::atomic::write_atomic;
use crate::{FormatsError, Result};

/// The tokenizer's own file (vocabulary, merges, pre-tokenizer, ...).
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// Special tokens, flags and the chat template.
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// A chat template in a file of its own.
pub const CHAT_TEMPLATE_JINJA: &str = "chat_template.jinja";

/// One named template of a `chat_template` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedTemplate {
    pub name: String,
    pub template: String,
}

/// `chat_template` of `tokenizer_config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChatTemplates {
    /// One template.
    Single(String),
    /// Named templates (`default`, `tool_use`, `rag`, ...).
    Named(Vec<NamedTemplate>),
}

impl ChatTemplates {
    /// The template transformers applies: the only one, or the one named `default`, else the
    /// first of the list.
    pub fn default_template(&self) -> Option<&str> {
        match self {
            Self::Single(s) => Some(s),
            Self::Named(list) => list
                .iter()
                .find(|t| t.name == "default")
                .or_else(|| list.first())
                .map(|t| t.template.as_str()),
        }
    }
}

/// The keys of `tokenizer_config.json` Temper reads; every other key is kept in
/// [`TokenizerConfig::extra`] and written back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// Whether encoding prepends BOS (absent: the tokenizer's post-processor decides).
    pub add_bos_token: Option<bool>,
    /// Whether encoding appends EOS.
    pub add_eos_token: Option<bool>,
    pub chat_template: Option<ChatTemplates>,
    /// Every other key (`tokenizer_class`, `model_max_length`, `added_tokens_decoder`, ...).
    pub extra: Map<String, Value>,
}

/// A special token's string: the string itself, or an `AddedToken` object's `content`.
fn special_token(path: &Path, key: &str, v: Value) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Object(o) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(FormatsError::key(
                path,
                key,
                "an AddedToken object without a string `content`",
            )),
        },
        other => Err(FormatsError::key(
            path,
            key,
            format!("is {other}, expected a string or an AddedToken object"),
        )),
    }
}

fn flag(path: &Path, key: &str, v: Option<Value>) -> Result<Option<bool>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(FormatsError::key(
            path,
            key,
            format!("is {other}, expected true or false"),
        )),
    }
}

impl TokenizerConfig {
    /// Interpret a parsed `tokenizer_config.json`; `path` names it in errors.
    ///
    /// # Errors
    /// Not an object, or a known key of the wrong type (naming the key).
    pub fn from_json(value: Value, path: &Path) -> Result<Self> {
        let Value::Object(mut map) = value else {
            return Err(FormatsError::key(
                path,
                "(top level)",
                "expected a JSON object",
            ));
        };
        let mut token = |key: &str| {
            map.remove(key)
                .map_or(Ok(None), |v| special_token(path, key, v))
        };
        let bos_token = token("bos_token")?;
        let eos_token = token("eos_token")?;
        let pad_token = token("pad_token")?;
        let unk_token = token("unk_token")?;
        let chat_template = match map.remove("chat_template") {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v).map_err(|e| {
                FormatsError::key(
                    path,
                    "chat_template",
                    format!("expected a string or a list of {{name, template}}: {e}"),
                )
            })?),
        };
        Ok(Self {
            bos_token,
            eos_token,
            pad_token,
            unk_token,
            add_bos_token: flag(path, "add_bos_token", map.remove("add_bos_token"))?,
            add_eos_token: flag(path, "add_eos_token", map.remove("add_eos_token"))?,
            chat_template,
            extra: map,
        })
    }

    /// Read the `tokenizer_config.json` at `path`.
    ///
    /// # Errors
    /// I/O, invalid JSON, and what [`TokenizerConfig::from_json`] rejects.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = crate::regular::read_regular(path).map_err(|e| FormatsError::io(path, e))?;
        let value = serde_json::from_slice(&bytes).map_err(|source| FormatsError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(value, path)
    }

    /// The template transformers applies, from the config alone (see
    /// [`TokenizerFiles::chat_template`] for the `chat_template.jinja` precedence).
    pub fn default_chat_template(&self) -> Option<&str> {
        self.chat_template
            .as_ref()
            .and_then(ChatTemplates::default_template)
    }

    /// The file's JSON: the special tokens always (`null` when unset), the flags and the
    /// template when set, and the other keys; keys sorted.
    pub fn to_json(&self) -> Value {
        let mut map = self.extra.clone();
        for (key, token) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("pad_token", &self.pad_token),
        ] {
            map.insert(key.into(), token.clone().map_or(Value::Null, Value::String));
        }
        if let Some(t) = &self.unk_token {
            map.insert("unk_token".into(), Value::String(t.clone()));
        }
        for (key, flag) in [
            ("add_bos_token", self.add_bos_token),
            ("add_eos_token", self.add_eos_token),
        ] {
            if let Some(b) = flag {
                map.insert(key.into(), Value::Bool(b));
            }
        }
        if let Some(t) = &self.chat_template {
            let v = match t {
                ChatTemplates::Single(s) => Value::String(s.clone()),
                ChatTemplates::Named(list) => Value::Array(
                    list.iter()
                        .map(|n| {
                            let mut o = Map::new();
                            o.insert("name".into(), Value::String(n.name.clone()));
                            o.insert("template".into(), Value::String(n.template.clone()));
                            Value::Object(o)
                        })
                        .collect(),
                ),
            };
            map.insert("chat_template".into(), v);
        }
        Value::Object(map)
    }

    /// Write `dir/tokenizer_config.json` atomically (pretty-printed); returns its path.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let path = dir.as_ref().join(TOKENIZER_CONFIG);
        let bytes =
            serde_json::to_vec_pretty(&self.to_json()).map_err(|source| FormatsError::Json {
                path: path.clone(),
                source,
            })?;
        write_atomic(&path, &bytes)?;
        Ok(path)
    }
}

/// The tokenizer files of an HF model directory, read but not interpreted: what a tokenizer,
/// its special tokens and its chat template are built from, without the weights.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer_json_path: PathBuf,
    /// Its text.
    pub tokenizer_json: String,
    /// `tokenizer_config.json`, when the directory has one.
    pub config: Option<TokenizerConfig>,
    /// The path of `tokenizer_config.json` (whether or not it exists), for messages.
    pub config_path: PathBuf,
    /// `chat_template.jinja`'s text, when the directory has one.
    pub chat_template_jinja: Option<String>,
}

impl TokenizerFiles {
    /// Read `tokenizer.json` (required), `tokenizer_config.json` and `chat_template.jinja`
    /// (each when present) from `dir`.
    ///
    /// # Errors
    /// A missing `tokenizer.json`, unreadable files, and what [`TokenizerConfig::from_json`]
    /// rejects — each naming the file.
    pub fn read_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tokenizer_json_path = dir.join(TOKENIZER_JSON);
        let tokenizer_json = crate::regular::read_regular_to_string(&tokenizer_json_path)
            .map_err(|e| FormatsError::io(&tokenizer_json_path, e))?;
        let config_path = dir.join(TOKENIZER_CONFIG);
        let config = if config_path.exists() {
            Some(TokenizerConfig::from_file(&config_path)?)
        } else {
            None
        };
        let jinja = dir.join(CHAT_TEMPLATE_JINJA);
        let chat_template_jinja = if jinja.exists() {
            Some(
                crate::regular::read_regular_to_string(&jinja)
                    .map_err(|e| FormatsError::io(&jinja, e))?,
            )
        } else {
            None
        };
        Ok(Self {
            tokenizer_json_path,
            tokenizer_json,
            config,
            config_path,
            chat_template_jinja,
        })
    }

    /// The chat template: `chat_template.jinja` first, then the config's default template.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template_jinja.as_deref().or_else(|| {
            self.config
                .as_ref()
                .and_then(TokenizerConfig::default_chat_template)
        })
    }
}

/// Write `dir/tokenizer.json` (`json`, as read or as the tokenizer serialises itself) and
/// `dir/tokenizer_config.json`, each atomically.
///
/// # Errors
/// I/O errors naming the file.
pub fn save_tokenizer_files(
    dir: impl AsRef<Path>,
    json: &str,
    config: &TokenizerConfig,
) -> Result<()> {
    let dir = dir.as_ref();
    write_atomic(&dir.join(TOKENIZER_JSON), json.as_bytes())?;
    config.save(dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(json: &str) -> Result<TokenizerConfig> {
        TokenizerConfig::from_json(serde_json::from_str(json).unwrap(), Path::new("tc.json"))
    }

    #[test]
    fn special_tokens_are_strings_or_added_tokens() {
        let c = parse(
            r#"{"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false,
                "__type": "AddedToken"}, "pad_token": null, "add_bos_token": true,
                "tokenizer_class": "LlamaTokenizer"}"#,
        )
        .unwrap();
        assert_eq!(c.bos_token.as_deref(), Some("<s>"));
        assert_eq!(c.eos_token.as_deref(), Some("</s>"));
        assert_eq!(
            (c.pad_token.as_deref(), c.unk_token.as_deref()),
            (None, None)
        );
        assert_eq!((c.add_bos_token, c.add_eos_token), (Some(true), None));
        assert_eq!(
            c.extra.get("tokenizer_class"),
            Some(&Value::from("LlamaTokenizer"))
        );
        for (json, key) in [
            (r#"{"eos_token": 2}"#, "`eos_token`"),
            (r#"{"bos_token": {"id": 1}}"#, "`bos_token`"),
            (r#"{"add_bos_token": "yes"}"#, "`add_bos_token`"),
            (r#"{"chat_template": 3}"#, "`chat_template`"),
        ] {
            let e = parse(json).unwrap_err().to_string();
            assert!(e.starts_with("tc.json: ") && e.contains(key), "{e}");
        }
    }

    #[test]
    fn chat_templates_single_or_named() {
        let single = parse(r#"{"chat_template": "{{ x }}"}"#).unwrap();
        assert_eq!(single.default_chat_template(), Some("{{ x }}"));
        let named = parse(
            r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(named.default_chat_template(), Some("D"));
        let first = parse(r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#).unwrap();
        assert_eq!(first.default_chat_template(), Some("R"));
        // Written back as read.
        let again = TokenizerConfig::from_json(named.to_json(), Path::new("x")).unwrap();
        assert_eq!(again, named);
    }

    #[test]
    fn the_jinja_file_wins_and_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let config = TokenizerConfig {
            eos_token: Some("<|im_end|>".into()),
            add_bos_token: Some(false),
            chat_template: Some(ChatTemplates::Single("from config".into())),
            ..TokenizerConfig::default()
        };
        save_tokenizer_files(dir.path(), "{}", &config).unwrap();
        let files = TokenizerFiles::read_dir(dir.path()).unwrap();
        assert_eq!(files.tokenizer_json, "{}");
        assert_eq!(files.config.as_ref(), Some(&config));
        assert_eq!(files.chat_template(), Some("from config"));
        let eos = files.config.as_ref().and_then(|c| c.eos_token.as_deref());
        assert_eq!(eos, Some("<|im_end|>"));
        // Unset special tokens are written as null, as transformers does.
        let written: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(TOKENIZER_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(written["bos_token"], Value::Null);
        std::fs::write(dir.path().join(CHAT_TEMPLATE_JINJA), "from jinja").unwrap();
        let files = TokenizerFiles::read_dir(dir.path()).unwrap();
        assert_eq!(files.chat_template(), Some("from jinja"));
        // Without tokenizer_config.json: no special tokens; without tokenizer.json: an error.
        std::fs::remove_file(dir.path().join(TOKENIZER_CONFIG)).unwrap();
        let files = TokenizerFiles::read_dir(dir.path()).unwrap();
        assert!(files.config.is_none());
        std::fs::remove_file(dir.path().join(TOKENIZER_JSON)).unwrap();
        let e = TokenizerFiles::read_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(TOKENIZER_JSON), "{e}");
    }
}
