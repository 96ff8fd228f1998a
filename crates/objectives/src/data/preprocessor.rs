//! [`Preprocessor`]: a tokenizer with its special tokens and chat template — TRL's "processing
//! class" — and the encodings the dataset tokenisation of [`super::tokenize`] is built from.
//! It loads through `temper-llm-arch`'s [`TokenizerBundle`], the same loader as
//! `Pretrained::load`, so the tokenizer files are parsed in one place.

use std::path::Path;

use temper_llm_arch::gguf::GgufFile;
use temper_llm_arch::{ChatMessage, Tokenizer, TokenizerBundle};

use super::chat::ChatFormat;
use super::example::Content;
use crate::{ObjectiveError, Result};

/// Tokenizer + chat template + special tokens: TRL's "processing class".
#[derive(Debug)]
pub struct Preprocessor {
    tokenizer: Tokenizer,
    chat: Option<ChatFormat>,
    eos_token: String,
    eos_id: u32,
    pad_id: u32,
}

pub(super) fn invalid(msg: impl Into<String>) -> ObjectiveError {
    ObjectiveError::Invalid(msg.into())
}
impl Preprocessor {
    /// A preprocessor for `tokenizer`, whose end-of-sequence token is `eos_token` (TRL uses
    /// `tokenizer.eos_token`, the string from `tokenizer_config.json`). Padding defaults to EOS.
    ///
    /// # Errors
    /// `eos_token` not in the vocabulary.
    pub fn new(tokenizer: Tokenizer, eos_token: &str) -> Result<Self> {
        let eos_id = tokenizer
            .token_to_id(eos_token)
            .ok_or_else(|| invalid(format!("EOS token {eos_token:?} is not in the vocabulary")))?;
        Ok(Self {
            tokenizer,
            chat: None,
            eos_token: eos_token.to_string(),
            eos_id,
            pad_id: eos_id,
        })
    }

    /// Pad with `token` (TRL: `pad_token`, else the tokenizer's pad token, else EOS).
    ///
    /// # Errors
    /// `token` not in the vocabulary.
    pub fn with_pad_token(mut self, token: &str) -> Result<Self> {
        self.pad_id = self
            .tokenizer
            .token_to_id(token)
            .ok_or_else(|| invalid(format!("pad token {token:?} is not in the vocabulary")))?;
        Ok(self)
    }

    /// Pad with this id.
    pub fn with_pad_id(mut self, id: u32) -> Self {
        self.pad_id = id;
        self
    }

    /// Use this chat template (Jinja source; `{% generation %}` markers allowed). `bos_token` is
    /// the string templates see as `bos_token`.
    ///
    /// # Errors
    /// Template syntax errors.
    pub fn with_chat_template(mut self, source: &str, bos_token: &str) -> Result<Self> {
        self.chat = Some(ChatFormat::new(source, bos_token, &self.eos_token)?);
        Ok(self)
    }

    /// From a tokenizer bundle (the one loader `temper-llm-arch` has for HF directories and
    /// GGUF files): its EOS token (required), its pad token (GGUF: the metadata's pad id), and
    /// its chat template with its BOS token.
    ///
    /// # Errors
    /// No EOS token, special tokens not in the vocabulary, a bad template.
    pub fn from_bundle(bundle: TokenizerBundle) -> Result<Self> {
        let template_origin = bundle.chat_template_origin();
        let TokenizerBundle {
            tokenizer,
            bos_token,
            eos_token,
            pad_token,
            chat_template,
            gguf_special,
            origin,
            ..
        } = bundle;
        let eos = eos_token.ok_or_else(|| {
            invalid(match gguf_special {
                Some(_) => format!("{}: no EOS token in the GGUF metadata", origin.display()),
                None => format!("{}: no `eos_token`", origin.display()),
            })
        })?;
        let mut p = Self::new(tokenizer, &eos)?;
        // GGUF metadata gives the pad id itself; tokenizer_config.json the token.
        p = match (gguf_special, pad_token) {
            (Some(st), _) => match st.pad {
                Some(id) => p.with_pad_id(id),
                None => p,
            },
            (None, Some(pad)) => p.with_pad_token(&pad)?,
            (None, None) => p,
        };
        let bos = bos_token.unwrap_or_default();
        match chat_template {
            Some(t) => {
                let mut p = p.with_chat_template(&t, &bos)?;
                p.chat = p.chat.map(|c| c.with_origin(&template_origin));
                Ok(p)
            }
            None => Ok(p),
        }
    }

    /// Load from an HF model directory or a `.gguf` file ([`TokenizerBundle::load`]).
    ///
    /// # Errors
    /// As [`Preprocessor::from_hf_dir`] and [`Preprocessor::from_gguf`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_bundle(TokenizerBundle::load(path)?)
    }

    /// Load from an HF model directory without its weights: `tokenizer.json`, and from
    /// `tokenizer_config.json` the `eos_token` (required), `pad_token`, `bos_token` and
    /// `chat_template` (or `chat_template.jinja`); see [`TokenizerBundle::from_hf_dir`].
    ///
    /// # Errors
    /// Missing files, no EOS token, bad template.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_bundle(TokenizerBundle::from_hf_dir(dir)?)
    }

    /// Load the tokenizer, special tokens and chat template from GGUF metadata; see
    /// [`TokenizerBundle::from_gguf`].
    ///
    /// # Errors
    /// Malformed GGUF, no EOS id, bad template.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let file = GgufFile::open(path.as_ref()).map_err(temper_llm_arch::Error::from)?;
        Self::from_bundle(TokenizerBundle::from_gguf(&file)?)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template, if any.
    pub fn chat_format(&self) -> Option<&ChatFormat> {
        self.chat.as_ref()
    }

    /// The EOS token string appended to standard completions.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// The EOS id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The padding id (EOS unless set).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    fn chat(&self) -> Result<&ChatFormat> {
        self.chat
            .as_ref()
            .ok_or_else(|| invalid("conversational row but the preprocessor has no chat template"))
    }

    /// Tokenise a standard string like `tokenizer(text)` (with the tokenizer's special tokens).
    ///
    /// # Errors
    /// Tokenizer failures.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_text_within(text, None)
    }

    /// [`Preprocessor::encode_text`] of at most the first `limit` bytes of `text`
    /// ([`super::tokenize::text_byte_bound`]).
    pub(super) fn encode_text_within(&self, text: &str, limit: Option<usize>) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(cut(text, limit), true)?)
    }

    /// Render and tokenise messages like `apply_chat_template(tokenize=True)` (no special tokens
    /// added beyond what the template writes).
    ///
    /// # Errors
    /// No chat template, render or tokenizer failures.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode_chat_within(messages, add_generation_prompt, None)
    }

    /// [`Preprocessor::encode_chat`] of at most the first `limit` bytes of the rendered text.
    pub(super) fn encode_chat_within(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        limit: Option<usize>,
    ) -> Result<Vec<u32>> {
        let text = self.chat()?.render(messages, add_generation_prompt)?;
        Ok(self.tokenizer.encode(cut(&text, limit), false)?)
    }

    /// Render and tokenise a conversation with its assistant-token mask (1 on tokens that overlap
    /// an assistant span, see [`ChatFormat::render_with_assistant_spans`]).
    ///
    /// # Errors
    /// As [`Preprocessor::encode_chat`], and templates whose assistant spans cannot be found.
    pub fn encode_chat_with_assistant_mask(
        &self,
        messages: &[ChatMessage],
    ) -> Result<(Vec<u32>, Vec<u8>)> {
        self.encode_chat_with_assistant_mask_within(messages, None)
    }

    /// [`Preprocessor::encode_chat_with_assistant_mask`] of at most the first `limit` bytes of
    /// the rendered text.
    pub(super) fn encode_chat_with_assistant_mask_within(
        &self,
        messages: &[ChatMessage],
        limit: Option<usize>,
    ) -> Result<(Vec<u32>, Vec<u8>)> {
        let (text, spans) = self.chat()?.render_with_assistant_spans(messages)?;
        let enc = self
            .tokenizer
            .inner()
            .encode(cut(&text, limit), false)
            .map_err(|e| invalid(format!("tokenizer: {e}")))?;
        let ids = enc.get_ids().to_vec();
        let mask = enc
            .get_offsets()
            .iter()
            .map(|&(s, e)| {
                let inside = spans.iter().any(|r| {
                    if s == e {
                        r.contains(&s)
                    } else {
                        s < r.end && e > r.start
                    }
                });
                u8::from(inside)
            })
            .collect();
        Ok((ids, mask))
    }

    pub(super) fn with_eos(&self, text: &str) -> String {
        if text.ends_with(&self.eos_token) {
            text.to_string()
        } else {
            format!("{text}{}", self.eos_token)
        }
    }

    /// Tokenise `prompt` alone and `prompt + completion`, appending EOS to standard completions.
    /// Returns (prompt ids, prompt+completion ids).
    pub(super) fn prompt_and_full(
        &self,
        prompt: &Content,
        completion: &Content,
        limit: Option<usize>,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        match (prompt, completion) {
            (Content::Text(p), Content::Text(c)) => {
                // Only the first `limit` bytes are tokenised: do not copy the rest either.
                let p = cut(p, limit);
                let full = match limit {
                    Some(n) if p.len() >= n => p.to_string(),
                    _ => format!("{p}{}", self.with_eos(c)),
                };
                Ok((
                    self.encode_text_within(p, limit)?,
                    self.encode_text_within(&full, limit)?,
                ))
            }
            (Content::Messages(p), Content::Messages(c)) => {
                let all: Vec<ChatMessage> = p.iter().chain(c).cloned().collect();
                Ok((
                    self.encode_chat_within(p, true, limit)?,
                    self.encode_chat_within(&all, false, limit)?,
                ))
            }
            _ => Err(invalid(
                "prompt and completion must both be strings or both be message lists",
            )),
        }
    }
}

/// The first `limit` bytes of `text` (cut back to a character boundary), or all of it.
pub(super) fn cut(text: &str, limit: Option<usize>) -> &str {
    match limit {
        Some(n) if text.len() > n => {
            let mut end = n;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            &text[..end]
        }
        _ => text,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::data::example::Document;

    /// A word-level tokenizer: `<eos>`=0, `<bos>`=1, then words; BOS added as a special token.
    pub(crate) fn toy_tokenizer() -> Tokenizer {
        let json = r#"{
          "version": "1.0",
          "added_tokens": [
            {"id": 0, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "<bos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
          ],
          "normalizer": null,
          "pre_tokenizer": {"type": "Whitespace"},
          "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [1], "tokens": ["<bos>"]}}},
          "decoder": null,
          "model": {"type": "WordLevel", "unk_token": "[UNK]",
            "vocab": {"<eos>": 0, "<bos>": 1, "<pad>": 2, "[UNK]": 3, "the": 4, "sky": 5, "is": 6, "blue": 7, "green": 8, ".": 9, "user": 10, "assistant": 11, ":": 12, "hi": 13, "yo": 14, "|": 15}}
        }"#;
        Tokenizer::from_json_str(json, "toy").unwrap()
    }

    const TEMPLATE: &str = "{% for m in messages %}{{ m.role }} : {{ m.content }} |{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}";

    pub(crate) fn pre() -> Preprocessor {
        Preprocessor::new(toy_tokenizer(), "<eos>")
            .unwrap()
            .with_pad_token("<pad>")
            .unwrap()
            .with_chat_template(TEMPLATE, "<bos>")
            .unwrap()
    }

    #[test]
    fn constructor_checks_special_tokens() {
        assert!(Preprocessor::new(toy_tokenizer(), "</s>").is_err());
        let p = Preprocessor::new(toy_tokenizer(), "<eos>").unwrap();
        assert_eq!((p.eos_id(), p.pad_id()), (0, 0));
        assert!(p.with_pad_token("nope").is_err());
        assert_eq!(pre().pad_id(), 2);
    }

    #[test]
    fn conversational_rows_need_a_template() {
        let p = Preprocessor::new(toy_tokenizer(), "<eos>").unwrap();
        let err = p
            .tokenize_document(&Document::Messages(vec![ChatMessage::new("user", "hi")]))
            .unwrap_err();
        assert!(err.to_string().contains("no chat template"), "{err}");
    }
}
