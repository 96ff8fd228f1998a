//! A chat template that can also say which characters of a rendered conversation are assistant
//! output — what transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)`
//! provides to TRL's `assistant_only_loss`.
//!
//! Two ways to find the assistant spans:
//! * **`{% generation %}` … `{% endgeneration %}` markers** (HF's mechanism; TRL ships "training"
//!   templates with them). minijinja has no such tag, so the markers are rewritten: for plain
//!   rendering into no-op `{% if true %}{% endif %}` blocks (same whitespace control, so the text
//!   is unchanged), for span rendering into blocks that print private-use sentinel characters,
//!   whose positions are then read off and removed.
//! * **Prefix rendering** for templates without markers (e.g. SmolLM2's ChatML template): the
//!   span of assistant message `i` runs from the end of `render(messages[..i],
//!   add_generation_prompt=true)` to the end of `render(messages[..=i])`. This needs a
//!   prefix-preserving template (each render a prefix of the full one), as TRL also requires; a
//!   template that is not is an error. For ChatML the span is `content<|im_end|>\n`, the same as
//!   TRL's patched Qwen training template marks. (TRL itself refuses `assistant_only_loss` with a
//!   template it cannot patch; this is Temper's fallback.)

use std::ops::Range;

use temper_llm_arch::{ChatMessage, ChatTemplate};

use crate::{ObjectiveError, Result};

const GEN_START: char = '\u{F0E0}';
const GEN_END: char = '\u{F0E1}';

/// A compiled chat template with assistant-span support.
#[derive(Debug)]
pub struct ChatFormat {
    plain: ChatTemplate,
    /// The template with generation markers turned into sentinels (only when it has markers).
    marked: Option<ChatTemplate>,
}

/// One `{% generation %}`/`{% endgeneration %}` tag found in a template source.
struct MarkerTag {
    range: Range<usize>,
    end: bool,
    left: &'static str,
    right: &'static str,
}

/// Find every generation tag, accepting whitespace control (`{%- generation -%}`).
fn find_markers(src: &str) -> Vec<MarkerTag> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = src[i..].find("{%") {
        let start = i + off;
        let mut j = start + 2;
        let trim = |c: u8| match c {
            b'-' => "-",
            _ => "",
        };
        let left = match bytes.get(j) {
            Some(&c @ (b'-' | b'+')) => {
                j += 1;
                trim(c)
            }
            _ => "",
        };
        while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        let (end, word) = if src[j..].starts_with("endgeneration") {
            (true, "endgeneration".len())
        } else if src[j..].starts_with("generation") {
            (false, "generation".len())
        } else {
            i = start + 2;
            continue;
        };
        j += word;
        while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
            j += 1;
        }
        let right = match bytes.get(j) {
            Some(&c @ (b'-' | b'+')) => {
                j += 1;
                trim(c)
            }
            _ => "",
        };
        // The word must end the tag (`{% generation_x %}` is something else).
        if !src[j..].starts_with("%}") {
            i = start + 2;
            continue;
        }
        j += 2;
        out.push(MarkerTag {
            range: start..j,
            end,
            left,
            right,
        });
        i = j;
    }
    out
}

/// Rewrite the generation tags; `print(end)` is what the block prints (empty for plain).
fn rewrite(src: &str, markers: &[MarkerTag], print: impl Fn(bool) -> String) -> String {
    let mut out = String::with_capacity(src.len() + markers.len() * 32);
    let mut last = 0;
    for m in markers {
        out.push_str(&src[last..m.range.start]);
        out.push_str(&format!(
            "{{%{} if true %}}{}{{% endif {}%}}",
            m.left,
            print(m.end),
            m.right
        ));
        last = m.range.end;
    }
    out.push_str(&src[last..]);
    out
}

impl ChatFormat {
    /// Compile a chat template (Jinja source, possibly with generation markers) with the special
    /// token strings it may reference.
    ///
    /// # Errors
    /// Template syntax errors.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let markers = find_markers(source);
        if markers.is_empty() {
            return Ok(Self {
                plain: ChatTemplate::new(source, bos_token, eos_token)?,
                marked: None,
            });
        }
        let plain = rewrite(source, &markers, |_| String::new());
        let marked = rewrite(source, &markers, |end| {
            format!("{{{{ '{}' }}}}", if end { GEN_END } else { GEN_START })
        });
        Ok(Self {
            plain: ChatTemplate::new(plain, bos_token, eos_token)?,
            marked: Some(ChatTemplate::new(marked, bos_token, eos_token)?),
        })
    }

    /// Name where the template came from, for render errors ([`ChatTemplate::with_origin`]).
    #[must_use]
    pub fn with_origin(self, origin: &str) -> Self {
        Self {
            plain: self.plain.with_origin(origin),
            marked: self.marked.map(|m| m.with_origin(origin)),
        }
    }

    /// Whether the source has `{% generation %}` markers.
    pub fn has_generation_markers(&self) -> bool {
        self.marked.is_some()
    }

    /// The compiled template (markers removed).
    pub fn template(&self) -> &ChatTemplate {
        &self.plain
    }

    /// Render `messages` (HF `apply_chat_template(tokenize=False)`).
    ///
    /// # Errors
    /// Template render errors.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        Ok(self.plain.render(messages, add_generation_prompt)?)
    }

    /// Render a whole conversation (no generation prompt) and the byte ranges of the rendered
    /// text that are assistant output.
    ///
    /// # Errors
    /// Render errors; unbalanced markers; a template without markers that is not prefix-preserving.
    pub fn render_with_assistant_spans(
        &self,
        messages: &[ChatMessage],
    ) -> Result<(String, Vec<Range<usize>>)> {
        match &self.marked {
            Some(marked) => {
                let raw = marked.render(messages, false)?;
                strip_sentinels(&raw)
            }
            None => self.prefix_spans(messages),
        }
    }

    fn prefix_spans(&self, messages: &[ChatMessage]) -> Result<(String, Vec<Range<usize>>)> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(ObjectiveError::Invalid(format!(
                    "assistant-only masks: the chat template does not render message {i} as an \
                     extension of the previous turns (not prefix-preserving); use a template \
                     with {{% generation %}} markers"
                )));
            }
            if through.len() > before.len() {
                spans.push(before.len()..through.len());
            }
        }
        Ok((full, spans))
    }
}

/// Remove the sentinels from a marked render, returning the text and the spans they enclosed.
fn strip_sentinels(raw: &str) -> Result<(String, Vec<Range<usize>>)> {
    let mut text = String::with_capacity(raw.len());
    let mut spans = Vec::new();
    let mut open: Option<usize> = None;
    for ch in raw.chars() {
        match ch {
            GEN_START => {
                if open.is_some() {
                    return Err(ObjectiveError::Invalid(
                        "nested {% generation %} blocks in the chat template".into(),
                    ));
                }
                open = Some(text.len());
            }
            GEN_END => {
                let start = open.take().ok_or_else(|| {
                    ObjectiveError::Invalid("{% endgeneration %} without {% generation %}".into())
                })?;
                if text.len() > start {
                    spans.push(start..text.len());
                }
            }
            c => text.push(c),
        }
    }
    if open.is_some() {
        return Err(ObjectiveError::Invalid(
            "{% generation %} without {% endgeneration %}".into(),
        ));
    }
    Ok((text, spans))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    const CHATML_MARKED: &str = "{%- for message in messages %}{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\n' }}{%- generation -%}{{- message.content + '<|im_end|>' }}{%- endgeneration %}{{- '\n' }}{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}";

    fn conv() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "Bye"),
            ChatMessage::new("assistant", "Ciao"),
        ]
    }

    fn pieces(text: &str, spans: &[Range<usize>]) -> Vec<String> {
        spans.iter().map(|r| text[r.clone()].to_string()).collect()
    }

    #[test]
    fn prefix_rendering_finds_assistant_turns() {
        let f = ChatFormat::new(CHATML, "", "<|im_end|>").unwrap();
        assert!(!f.has_generation_markers());
        let (text, spans) = f.render_with_assistant_spans(&conv()).unwrap();
        assert_eq!(text, f.render(&conv(), false).unwrap());
        assert_eq!(
            pieces(&text, &spans),
            vec!["Hello!<|im_end|>\n", "Ciao<|im_end|>\n"]
        );
    }

    #[test]
    fn generation_markers_give_the_marked_spans_and_plain_text() {
        let f = ChatFormat::new(CHATML_MARKED, "", "<|im_end|>").unwrap();
        assert!(f.has_generation_markers());
        let (text, spans) = f.render_with_assistant_spans(&conv()).unwrap();
        let plain = ChatFormat::new(CHATML, "", "").unwrap();
        assert_eq!(text, plain.render(&conv(), false).unwrap());
        assert_eq!(
            f.render(&conv(), true).unwrap(),
            plain.render(&conv(), true).unwrap()
        );
        assert_eq!(
            pieces(&text, &spans),
            vec!["Hello!<|im_end|>", "Ciao<|im_end|>"]
        );
    }

    #[test]
    fn marker_scanner_handles_whitespace_control_and_lookalikes() {
        let src = "{%generation%}{%- endgeneration -%}{% generation_x %}{%+ generation +%}";
        let m = find_markers(src);
        assert_eq!(m.len(), 3);
        assert!(!m[0].end && m[1].end && !m[2].end);
        assert_eq!((m[1].left, m[1].right), ("-", "-"));
        assert_eq!(&src[m[2].range.clone()], "{%+ generation +%}");
    }

    #[test]
    fn non_prefix_preserving_template_is_an_error() {
        // Renders the last message differently from earlier ones.
        let src = "{% for m in messages %}{% if loop.last %}[{{ m.content }}]{% else %}{{ m.content }}{% endif %}{% endfor %}";
        let f = ChatFormat::new(src, "", "").unwrap();
        let err = f.render_with_assistant_spans(&conv()).unwrap_err();
        assert!(err.to_string().contains("prefix-preserving"), "{err}");
    }

    #[test]
    fn unbalanced_markers_are_errors() {
        let f = ChatFormat::new("{% generation %}{{ messages[0].content }}", "", "").unwrap();
        let err = f.render_with_assistant_spans(&conv()).unwrap_err();
        assert!(err.to_string().contains("without"), "{err}");
    }
}
