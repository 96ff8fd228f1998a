//! Text ↔ token ids with the `tokenizers` crate, from `tokenizer.json` or GGUF metadata.

use std::path::Path;
use std::str::FromStr;

use crate::gguf::{GgufFile, tokenizer_json};
use crate::{Error, Result};

/// A Hugging Face tokenizer (`tokenizers::Tokenizer`) plus the special ids generation needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    origin: String,
    json: Option<String>,
}

fn err(origin: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        origin: origin.to_string(),
        reason: e.to_string(),
    }
}

impl Tokenizer {
    /// Load `tokenizer.json`.
    ///
    /// # Errors
    /// I/O or parse errors naming the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = temper_formats::read_regular_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parse the contents of a `tokenizer.json`; `origin` names it in errors.
    ///
    /// # Errors
    /// Parse errors.
    pub fn from_json_str(json: &str, origin: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_str(json).map_err(|e| err(origin, e))?;
        Ok(Self {
            inner,
            origin: origin.to_string(),
            json: Some(json.to_string()),
        })
    }

    /// Build the byte-level BPE tokenizer described by GGUF metadata (`tokenizer.ggml.*`).
    ///
    /// # Errors
    /// Unsupported tokenizer models or malformed metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let json = tokenizer_json(file)?.to_string();
        Self::from_json_str(&json, &file.path().display().to_string())
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) are matched.
    ///
    /// # Errors
    /// Tokenizer failures.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| err(&self.origin, e))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`.
    ///
    /// # Errors
    /// Tokenizer failures.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| err(&self.origin, e))
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The `tokenizer.json` text, for saving.
    pub fn to_json(&self) -> Result<String> {
        match &self.json {
            Some(j) => Ok(j.clone()),
            None => self
                .inner
                .to_string(false)
                .map_err(|e| err(&self.origin, e)),
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
