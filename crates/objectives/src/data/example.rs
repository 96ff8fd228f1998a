//! Dataset rows in TRL's shapes, before tokenisation.
//!
//! TRL distinguishes *standard* rows (plain strings) from *conversational* rows (lists of
//! `{"role", "content"}` messages, rendered with the chat template). Every field of a row is one
//! or the other ([`Content`]); a row never mixes the two (TRL decides per row from one field, so
//! a mixed row would be tokenised inconsistently — the readers reject it).

use temper_llm_arch::ChatMessage;

use crate::{ObjectiveError, Result};

/// One field of a row: a plain string (standard format) or a list of messages (conversational).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Standard format: tokenised as is (with the tokenizer's own special tokens, e.g. BOS).
    Text(String),
    /// Conversational format: rendered with the chat template before tokenisation.
    Messages(Vec<ChatMessage>),
}

impl Content {
    /// Whether this is a message list.
    pub fn is_conversational(&self) -> bool {
        matches!(self, Self::Messages(_))
    }

    /// Length in TRL's sense: characters of a string, messages of a list.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(s) => s.chars().count(),
            Self::Messages(m) => m.len(),
        }
    }

    /// Whether [`Content::len`] is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A language-modelling row: TRL's `text` field (or `dataset_text_field`) or `messages`.
/// Used for CPT and for SFT on whole conversations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// `{"text": "..."}`: every token is a target; EOS is appended when missing.
    Text(String),
    /// `{"messages": [...]}` (or ShareGPT `conversations`): the rendered conversation; no EOS is
    /// appended (the template ends each turn itself).
    Messages(Vec<ChatMessage>),
}

/// TRL's prompt-completion row (`{"prompt": ..., "completion": ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptCompletion {
    pub prompt: Content,
    pub completion: Content,
}

/// A row of an SFT dataset: either a whole document/conversation or a prompt-completion pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftRow {
    /// Language modelling: every token is a target (unless assistant-only masking applies).
    Document(Document),
    /// Prompt-completion: by default only the completion is a target (TRL's
    /// `completion_only_loss=None` → true for this shape).
    PromptCompletion(PromptCompletion),
}

/// A paired preference row (`prompt`/`chosen`/`rejected`) with an explicit prompt. Rows with an
/// implicit prompt are converted by [`extract_prompt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceRow {
    pub prompt: Content,
    pub chosen: Content,
    pub rejected: Content,
}

/// An unpaired preference row for KTO (`prompt`/`completion`/`label`): `label = true` marks a
/// desirable completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedRow {
    pub prompt: Content,
    pub completion: Content,
    pub label: bool,
}

/// Length of TRL's implicit prompt for two sequences (`trl.data_utils.extract_prompt`):
/// the index of the first difference, moved back by one when the element before it is a space
/// (strings only: the space then starts the completions). When one sequence is a prefix of the
/// other, TRL's loop ends without a difference and leaves the index on the *last compared*
/// element, `min_len − 1`; that is reproduced, so the last shared element goes to the
/// completions. (TRL's `idx − 1` wraps to the last element when the very first elements differ;
/// that case is treated as "no space before" here instead.)
fn implicit_prompt_len<T: PartialEq>(
    chosen: &[T],
    rejected: &[T],
    is_space: impl Fn(&T) -> bool,
) -> usize {
    let n = chosen.len().min(rejected.len());
    for idx in 0..n {
        if chosen[idx] != rejected[idx] {
            if idx > 0 && is_space(&chosen[idx - 1]) {
                return idx - 1;
            }
            return idx;
        }
    }
    n.saturating_sub(1)
}

/// Split a row with an implicit prompt (`chosen`/`rejected` both holding the full conversation
/// or text) into prompt and completions, as TRL's `extract_prompt` does: the prompt is the
/// longest common prefix of messages (conversational) or characters (standard), ending at the
/// first difference — moved back by one when a space precedes it (strings: the space starts the
/// completions); when one side is a prefix of the other, the last shared element goes to the
/// completions, as in TRL.
///
/// # Errors
/// `chosen` and `rejected` of different kinds, or an empty one (TRL fails on those too).
pub fn extract_prompt(chosen: Content, rejected: Content) -> Result<PreferenceRow> {
    match (chosen, rejected) {
        (Content::Text(c), Content::Text(r)) => {
            if c.is_empty() || r.is_empty() {
                return Err(ObjectiveError::Invalid(
                    "cannot extract an implicit prompt from an empty `chosen` or `rejected`".into(),
                ));
            }
            let cc: Vec<char> = c.chars().collect();
            let rc: Vec<char> = r.chars().collect();
            let k = implicit_prompt_len(&cc, &rc, |ch| *ch == ' ');
            Ok(PreferenceRow {
                prompt: Content::Text(cc[..k].iter().collect()),
                chosen: Content::Text(cc[k..].iter().collect()),
                rejected: Content::Text(rc[k..].iter().collect()),
            })
        }
        (Content::Messages(c), Content::Messages(r)) => {
            if c.is_empty() || r.is_empty() {
                return Err(ObjectiveError::Invalid(
                    "cannot extract an implicit prompt from an empty `chosen` or `rejected`".into(),
                ));
            }
            let k = implicit_prompt_len(&c, &r, |_| false);
            Ok(PreferenceRow {
                prompt: Content::Messages(c[..k].to_vec()),
                chosen: Content::Messages(c[k..].to_vec()),
                rejected: Content::Messages(r[k..].to_vec()),
            })
        }
        _ => Err(ObjectiveError::Invalid(
            "`chosen` and `rejected` must both be strings or both be message lists".into(),
        )),
    }
}

/// TRL's `unpair_preference_dataset` for KTO: every pair becomes a desirable row (`chosen`,
/// `label = true`) and an undesirable one (`rejected`, `label = false`). TRL's batched `map`
/// emits, per map batch, all chosen rows then all rejected rows; this does the same for the whole
/// slice (`[chosen of every pair; rejected of every pair]`).
pub fn unpair_preferences(rows: &[PreferenceRow]) -> Vec<UnpairedRow> {
    let chosen = rows.iter().map(|r| UnpairedRow {
        prompt: r.prompt.clone(),
        completion: r.chosen.clone(),
        label: true,
    });
    let rejected = rows.iter().map(|r| UnpairedRow {
        prompt: r.prompt.clone(),
        completion: r.rejected.clone(),
        label: false,
    });
    chosen.chain(rejected).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn text(s: &str) -> Content {
        Content::Text(s.into())
    }

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    #[test]
    fn implicit_text_prompt_moves_the_space_to_the_completions() {
        let row = extract_prompt(text("The sky is blue."), text("The sky is green.")).unwrap();
        assert_eq!(row.prompt, text("The sky is"));
        assert_eq!(row.chosen, text(" blue."));
        assert_eq!(row.rejected, text(" green."));
    }

    #[test]
    fn implicit_text_prompt_without_space_and_prefix_case() {
        let row = extract_prompt(text("abX"), text("abY")).unwrap();
        assert_eq!((row.prompt, row.chosen), (text("ab"), text("X")));
        // No difference inside the shorter string: TRL keeps the last shared char out of the prompt.
        let row = extract_prompt(text("abc"), text("abcd")).unwrap();
        assert_eq!(row.prompt, text("ab"));
        assert_eq!(row.chosen, text("c"));
        assert_eq!(row.rejected, text("cd"));
        // Difference at the first char: empty prompt.
        let row = extract_prompt(text("x "), text("y")).unwrap();
        assert_eq!(row.prompt, text(""));
        // Multi-byte characters are split on char boundaries.
        let row = extract_prompt(text("ça va"), text("ça vient")).unwrap();
        assert_eq!(row.prompt, text("ça v"));
        assert_eq!(row.chosen, text("a"));
    }

    #[test]
    fn implicit_conversational_prompt_is_the_common_message_prefix() {
        let u = msg("user", "What color is the sky?");
        let row = extract_prompt(
            Content::Messages(vec![u.clone(), msg("assistant", "It is blue.")]),
            Content::Messages(vec![u.clone(), msg("assistant", "It is green.")]),
        )
        .unwrap();
        assert_eq!(row.prompt, Content::Messages(vec![u]));
        assert_eq!(
            row.chosen,
            Content::Messages(vec![msg("assistant", "It is blue.")])
        );
        assert!(row.rejected.is_conversational());
    }

    #[test]
    fn extract_prompt_rejects_mixed_or_empty() {
        let err = extract_prompt(text("a"), Content::Messages(vec![msg("user", "a")])).unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
        assert!(extract_prompt(text(""), text("a")).is_err());
        assert!(extract_prompt(Content::Messages(vec![]), Content::Messages(vec![])).is_err());
    }

    #[test]
    fn unpair_puts_chosen_rows_first() {
        let rows = vec![
            PreferenceRow {
                prompt: text("p1"),
                chosen: text("c1"),
                rejected: text("r1"),
            },
            PreferenceRow {
                prompt: text("p2"),
                chosen: text("c2"),
                rejected: text("r2"),
            },
        ];
        let out = unpair_preferences(&rows);
        let got: Vec<(&Content, &Content, bool)> = out
            .iter()
            .map(|r| (&r.prompt, &r.completion, r.label))
            .collect();
        assert_eq!(
            got,
            vec![
                (&text("p1"), &text("c1"), true),
                (&text("p2"), &text("c2"), true),
                (&text("p1"), &text("r1"), false),
                (&text("p2"), &text("r2"), false),
            ]
        );
    }
}
