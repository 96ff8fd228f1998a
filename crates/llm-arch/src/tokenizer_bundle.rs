//! [`TokenizerBundle`]: a model's tokenizer, special tokens and chat template without its
//! weights, from an HF directory or a GGUF file — the one loader behind [`crate::Pretrained`]
//! and `temper-objectives`' `Preprocessor`. The HF files themselves are read by
//! `temper_formats::tokenizer` (special tokens as strings or `AddedToken`s, named chat
//! templates, `chat_template.jinja` first); GGUF metadata by [`crate::gguf`].
//!
//! [`save_tokenizer_files`] writes the bundle back next to weights or an adapter.

use std::path::{Path, PathBuf};

use serde_json::Value;
use temper_formats::tokenizer::{ChatTemplates, TokenizerConfig, TokenizerFiles};

use crate::gguf::{
    GgufFile, GgufSpecialTokens, chat_template as gguf_chat_template, special_tokens,
};
use crate::{ChatTemplate, Error, ModelConfig, Result, Tokenizer};

/// Special token ids used by generation and saved in `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
}

/// Whether `path` names a GGUF file (by its extension), rather than an HF directory.
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// A tokenizer with the special-token strings and chat template that come with it.
#[derive(Debug)]
pub struct TokenizerBundle {
    pub tokenizer: Tokenizer,
    /// `bos_token` of `tokenizer_config.json`; from GGUF, the token of the metadata's BOS id.
    pub bos_token: Option<String>,
    /// `eos_token`, likewise.
    pub eos_token: Option<String>,
    /// `pad_token`, likewise.
    pub pad_token: Option<String>,
    /// `add_bos_token` of `tokenizer_config.json` (absent: `None`); from GGUF,
    /// `tokenizer.ggml.add_bos_token` or llama.cpp's default.
    pub add_bos_token: Option<bool>,
    /// The chat template's Jinja source: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// (default) template; from GGUF, `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// From GGUF: the special ids of the metadata (an HF directory keeps its ids in
    /// `config.json` / `generation_config.json`, which belong to the model).
    pub gguf_special: Option<GgufSpecialTokens>,
    /// Where the special tokens were read (`tokenizer_config.json` or the `.gguf`), for
    /// messages.
    pub origin: PathBuf,
}

impl TokenizerBundle {
    /// Load from an HF model directory or a `.gguf` file.
    ///
    /// # Errors
    /// See [`TokenizerBundle::from_hf_dir`] and [`TokenizerBundle::from_gguf`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if is_gguf_path(path) {
            Self::from_gguf(&GgufFile::open(path)?)
        } else {
            Self::from_hf_dir(path)
        }
    }

    /// `tokenizer.json`, and when present `tokenizer_config.json` and `chat_template.jinja`.
    ///
    /// # Errors
    /// A missing or invalid `tokenizer.json`, a malformed `tokenizer_config.json` (naming the
    /// key).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let files = TokenizerFiles::read_dir(dir)?;
        let tokenizer = Tokenizer::from_json_str(
            &files.tokenizer_json,
            &files.tokenizer_json_path.display().to_string(),
        )?;
        let chat_template = files.chat_template().map(str::to_string);
        let config = files.config.unwrap_or_default();
        Ok(Self {
            tokenizer,
            bos_token: config.bos_token,
            eos_token: config.eos_token,
            pad_token: config.pad_token,
            add_bos_token: config.add_bos_token,
            chat_template,
            gguf_special: None,
            origin: files.config_path,
        })
    }

    /// The tokenizer, special tokens and chat template of GGUF metadata.
    ///
    /// # Errors
    /// Unsupported tokenizer models or malformed metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(file)?;
        let st = special_tokens(file);
        let name = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
        Ok(Self {
            bos_token: name(st.bos),
            eos_token: name(st.eos),
            pad_token: name(st.pad),
            add_bos_token: Some(st.add_bos),
            chat_template: gguf_chat_template(file),
            gguf_special: Some(st),
            origin: file.path().to_path_buf(),
            tokenizer,
        })
    }

    /// The chat template compiled for rendering, with the BOS / EOS strings it may reference
    /// (empty when unknown).
    ///
    /// # Errors
    /// [`Error::Template`] with the syntax error.
    pub fn compile_chat_template(&self) -> Result<Option<ChatTemplate>> {
        self.chat_template
            .as_ref()
            .map(|t| {
                ChatTemplate::new(
                    t.clone(),
                    self.bos_token.clone().unwrap_or_default(),
                    self.eos_token.clone().unwrap_or_default(),
                )
                .map(|t| t.with_origin(self.chat_template_origin()))
            })
            .transpose()
    }
}

impl TokenizerBundle {
    /// Where the chat template was read, for errors: the GGUF key, `chat_template.jinja` (which
    /// takes precedence) or `tokenizer_config.json`.
    pub fn chat_template_origin(&self) -> String {
        if self.gguf_special.is_some() {
            return format!("GGUF tokenizer.chat_template in {}", self.origin.display());
        }
        let jinja = self
            .origin
            .with_file_name(temper_formats::tokenizer::CHAT_TEMPLATE_JINJA);
        if jinja.is_file() {
            jinja.display().to_string()
        } else {
            format!("{} (chat_template)", self.origin.display())
        }
    }
}

/// Write `tokenizer.json` and `tokenizer_config.json` (special tokens, `add_bos_token`, the
/// chat template) into `dir`, as transformers reads them: next to a saved model, or next to an
/// adapter. `config` is the model's (BOS id, context length); each file is written atomically.
///
/// # Errors
/// I/O errors naming the file; a tokenizer that cannot serialise itself.
pub fn save_tokenizer_files(
    dir: &Path,
    config: &ModelConfig,
    tokenizer: &Tokenizer,
    chat_template: Option<&ChatTemplate>,
    special: &SpecialTokens,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let mut tok_config = TokenizerConfig {
        bos_token: token(config.bos_token_id.or(special.bos)),
        eos_token: token(special.eos.first().copied()),
        pad_token: token(special.pad),
        add_bos_token: Some(special.bos.is_some()),
        add_eos_token: Some(false),
        chat_template: chat_template.map(|t| ChatTemplates::Single(t.source().to_string())),
        ..TokenizerConfig::default()
    };
    for (key, value) in [
        ("tokenizer_class", Value::from("PreTrainedTokenizerFast")),
        ("clean_up_tokenization_spaces", Value::from(false)),
        (
            "model_max_length",
            Value::from(config.max_position_embeddings),
        ),
    ] {
        tok_config.extra.insert(key.into(), value);
    }
    temper_formats::tokenizer::save_tokenizer_files(dir, &tokenizer.to_json()?, &tok_config)?;
    Ok(())
}
