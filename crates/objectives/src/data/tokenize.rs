//! Tokenisation of dataset rows as TRL 1.16 does it (`SFTTrainer`, `DPOTrainer`, `KTOTrainer`
//! `_prepare_dataset`).
//!
//! * **Standard rows** (strings) are tokenised like `tokenizer(text)`, i.e. *with* the
//!   tokenizer's special tokens (BOS for Llama-style tokenizers; none for SmolLM2). Completions
//!   (`completion`, `chosen`, `rejected`) and SFT/CPT `text` get the EOS **string** appended when
//!   they do not already end with it, before tokenisation, so it is a completion target.
//! * **Conversational rows** are rendered with the chat template and tokenised *without* adding
//!   special tokens (the template writes them), like `apply_chat_template(tokenize=True)`. The
//!   prompt alone is rendered with `add_generation_prompt=true`; prompt+completion without. No EOS
//!   is appended (the template closes the turn).
//! * **Prompt/completion boundary**: the prompt and prompt+completion are tokenised separately
//!   and the completion starts at their longest common token prefix ([`common_prefix_length`]),
//!   not at `len(prompt_ids)` — this survives BPE merges across the boundary and templates that
//!   render a prompt differently alone. For preference rows the boundary is the minimum over
//!   chosen and rejected. When the prompt is not a prefix, its diverging tail is left out of the
//!   sequence (TRL warns once); [`Prepared::boundary_mismatches`] counts those rows.
//! * **Truncation** keeps the start (`truncation_mode="keep_start"`, the only mode TRL 1.16
//!   supports): SFT truncates here to `max_length` and drops rows left without any target;
//!   preference and KTO rows are truncated by the collator, and here rows whose *prompt alone*
//!   has `max_length` tokens or more are dropped (they would keep no completion token).
//!   Dropped rows are listed in [`Prepared::dropped`]. With `max_length`, only the first
//!   [`text_byte_bound`] bytes of a row's text are tokenised (the kept tokens are the same; a
//!   huge row costs no more than a long one).

use temper_llm_arch::ChatMessage;

use super::example::{Content, Document, PreferenceRow, PromptCompletion, SftRow, UnpairedRow};
pub use super::preprocessor::Preprocessor;
use super::preprocessor::{cut, invalid};
use crate::{IGNORE_INDEX, ObjectiveError, Result};

/// Number of leading tokens two sequences share (TRL's `common_prefix_length`).
pub fn common_prefix_length(ids: &[u32], other: &[u32]) -> usize {
    ids.iter().zip(other).take_while(|(a, b)| a == b).count()
}

/// Bytes of text per token budgeted before tokenising a row with `max_length`: text past
/// `max_length × 64` bytes (at least 64 KiB) is cut off first, so a 50 MB row costs what a
/// 64 KiB one does. Tokens average 3–5 bytes of text or code in the Llama 3, Qwen and SmolLM2
/// vocabularies; their longest tokens (runs of spaces or punctuation) reach ~128 bytes, but
/// 64 bytes *on average* over `max_length` tokens would take a row made almost only of them.
/// Under `keep_start` truncation only the first `max_length` tokens are kept, so rows that are
/// merely long tokenise to the same kept tokens as before.
pub const BYTES_PER_TOKEN: usize = 64;
/// Floor of [`text_byte_bound`], for very small `max_length`.
pub const MIN_TEXT_BYTES: usize = 64 << 10;

/// The bytes of rendered text tokenised for a row when sequences are cut at `max_length`
/// tokens ([`BYTES_PER_TOKEN`]).
pub fn text_byte_bound(max_length: usize) -> usize {
    max_length
        .saturating_mul(BYTES_PER_TOKEN)
        .max(MIN_TEXT_BYTES)
}

/// SFT tokenisation options (TRL `SFTConfig`).
#[derive(Debug, Clone)]
pub struct SftOptions {
    /// Truncate to this many tokens, keeping the start (`max_length`, default 1024). `None`: never.
    pub max_length: Option<usize>,
    /// Train only on completion tokens of prompt-completion rows (`completion_only_loss`; TRL's
    /// default `None` means true for prompt-completion data). No effect on documents.
    pub completion_only_loss: bool,
    /// Train only on assistant output of conversational rows (`assistant_only_loss`, default
    /// false). Standard (string) rows are an error with this option, as in TRL.
    pub assistant_only_loss: bool,
}

impl Default for SftOptions {
    fn default() -> Self {
        Self {
            max_length: Some(1024),
            completion_only_loss: true,
            assistant_only_loss: false,
        }
    }
}

/// A tokenised SFT/CPT row: `input_ids` and aligned (unshifted) `labels`, `-100` where the
/// token is not a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftTokens {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// For prompt-completion rows: index of the first completion token (before truncation).
    pub completion_start: Option<usize>,
}

impl SftTokens {
    /// A document on which every token is a target (CPT / plain language modelling).
    pub fn all_targets(input_ids: Vec<u32>) -> Self {
        let labels = input_ids.iter().map(|&t| i64::from(t)).collect();
        Self {
            input_ids,
            labels,
            completion_start: None,
        }
    }

    /// Keep the first `max_length` tokens.
    pub fn truncate(&mut self, max_length: usize) {
        self.input_ids.truncate(max_length);
        self.labels.truncate(max_length);
    }

    /// Whether any label is a target (TRL drops rows where none is).
    pub fn has_target(&self) -> bool {
        self.labels.iter().any(|&l| l != IGNORE_INDEX)
    }
}

/// A tokenised preference pair, TRL's `prompt_ids` / `chosen_ids` / `rejected_ids` columns:
/// the training sequences are `prompt_ids + chosen_ids` and `prompt_ids + rejected_ids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceTokens {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
}

/// A tokenised KTO row (`prompt_ids` / `completion_ids` / `label`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedTokens {
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    pub label: bool,
}

/// Rows that survived preparation, and what happened to the others.
#[derive(Debug, Clone)]
pub struct Prepared<T> {
    pub rows: Vec<T>,
    /// Indices (into the input slice) of the rows dropped for length.
    pub dropped: Vec<usize>,
    /// Rows whose tokenised prompt was not a prefix of prompt+completion (see module docs).
    pub boundary_mismatches: usize,
}

fn with_row<T>(i: usize, r: Result<T>) -> Result<T> {
    r.map_err(|e| match e {
        ObjectiveError::Invalid(m) => invalid(format!("row {i}: {m}")),
        ObjectiveError::Arch(a) => invalid(format!("row {i}: {a}")),
        other => other,
    })
}
/// Tokenise `rows`, dropping those whose prompt alone has `max_length` tokens or more (they
/// would keep no completion token under `keep_start` truncation).
fn prepare_by_prompt<R, T>(
    rows: &[R],
    max_length: Option<usize>,
    tokenize: impl Fn(&R) -> Result<(T, bool)>,
    prompt_len: impl Fn(&T) -> usize,
) -> Result<Prepared<T>> {
    let mut out = Prepared {
        rows: Vec::with_capacity(rows.len()),
        dropped: Vec::new(),
        boundary_mismatches: 0,
    };
    for (i, row) in rows.iter().enumerate() {
        let (t, mismatch) = with_row(i, tokenize(row))?;
        out.boundary_mismatches += usize::from(mismatch);
        if max_length.is_some_and(|n| prompt_len(&t) >= n) {
            out.dropped.push(i);
        } else {
            out.rows.push(t);
        }
    }
    Ok(out)
}

impl Preprocessor {
    /// Tokens of a CPT document: a `text` document with EOS appended when missing (TRL's
    /// `add_eos`), or a rendered conversation.
    ///
    /// # Errors
    /// Tokenizer or template failures.
    pub fn tokenize_document(&self, doc: &Document) -> Result<Vec<u32>> {
        match doc {
            Document::Text(t) => self.encode_text(&self.with_eos(t)),
            Document::Messages(m) => self.encode_chat(m, false),
        }
    }
    /// Tokenise one SFT row and build its labels (TRL's `tokenize_fn` + `build_labels`), without
    /// truncation. Returns the tokens and whether the prompt/completion boundary diverged.
    ///
    /// # Errors
    /// Tokenizer/template failures; `assistant_only_loss` on a standard row; an assistant mask
    /// without any assistant token (TRL raises the same).
    pub fn tokenize_sft(&self, row: &SftRow, opts: &SftOptions) -> Result<(SftTokens, bool)> {
        let limit = opts.max_length.map(text_byte_bound);
        let (ids, completion_mask, assistant_mask, start, mismatch) = match row {
            SftRow::Document(Document::Text(t)) => {
                if opts.assistant_only_loss {
                    return Err(invalid("assistant_only_loss needs conversational rows"));
                }
                (
                    self.encode_text_within(&self.with_eos(cut(t, limit)), limit)?,
                    None,
                    None,
                    None,
                    false,
                )
            }
            SftRow::Document(Document::Messages(m)) => {
                if opts.assistant_only_loss {
                    let (ids, mask) = self.encode_chat_with_assistant_mask_within(m, limit)?;
                    (ids, None, Some(mask), None, false)
                } else {
                    (
                        self.encode_chat_within(m, false, limit)?,
                        None,
                        None,
                        None,
                        false,
                    )
                }
            }
            SftRow::PromptCompletion(PromptCompletion { prompt, completion }) => {
                let (prompt_ids, full, assistant_mask) =
                    match (prompt, completion, opts.assistant_only_loss) {
                        (Content::Messages(p), Content::Messages(c), true) => {
                            let all: Vec<ChatMessage> = p.iter().chain(c).cloned().collect();
                            let (full, mask) =
                                self.encode_chat_with_assistant_mask_within(&all, limit)?;
                            (self.encode_chat_within(p, true, limit)?, full, Some(mask))
                        }
                        (_, _, true) => {
                            return Err(invalid("assistant_only_loss needs conversational rows"));
                        }
                        _ => {
                            let (p, f) = self.prompt_and_full(prompt, completion, limit)?;
                            (p, f, None)
                        }
                    };
                let k = common_prefix_length(&prompt_ids, &full);
                let mask: Vec<u8> = (0..full.len()).map(|i| u8::from(i >= k)).collect();
                (
                    full,
                    Some(mask),
                    assistant_mask,
                    Some(k),
                    k < prompt_ids.len(),
                )
            }
        };
        if let Some(m) = &assistant_mask
            && !m.contains(&1)
        {
            return Err(invalid(
                "assistant_only_loss: a row has no assistant tokens (does the template mark them?)",
            ));
        }
        let use_completion = opts.completion_only_loss;
        let labels = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let c = !use_completion || completion_mask.as_ref().is_none_or(|m| m[i] == 1);
                let a = assistant_mask.as_ref().is_none_or(|m| m[i] == 1);
                if c && a { i64::from(t) } else { IGNORE_INDEX }
            })
            .collect();
        Ok((
            SftTokens {
                input_ids: ids,
                labels,
                completion_start: start,
            },
            mismatch,
        ))
    }

    /// Tokenise an SFT dataset: per row [`Preprocessor::tokenize_sft`], truncation to
    /// `max_length` (keep start) and dropping of rows without any target left.
    ///
    /// # Errors
    /// The first failing row, named by index.
    pub fn prepare_sft(&self, rows: &[SftRow], opts: &SftOptions) -> Result<Prepared<SftTokens>> {
        let mut out = Prepared {
            rows: Vec::with_capacity(rows.len()),
            dropped: Vec::new(),
            boundary_mismatches: 0,
        };
        for (i, row) in rows.iter().enumerate() {
            let (mut t, mismatch) = with_row(i, self.tokenize_sft(row, opts))?;
            out.boundary_mismatches += usize::from(mismatch);
            if let Some(n) = opts.max_length {
                t.truncate(n);
            }
            if t.has_target() {
                out.rows.push(t);
            } else {
                out.dropped.push(i);
            }
        }
        Ok(out)
    }

    /// Tokenise CPT documents ([`Preprocessor::tokenize_document`]), ready for
    /// [`super::pack::pack_documents`].
    ///
    /// # Errors
    /// The first failing document, named by index.
    pub fn prepare_documents(&self, docs: &[Document]) -> Result<Vec<Vec<u32>>> {
        docs.iter()
            .enumerate()
            .map(|(i, d)| with_row(i, self.tokenize_document(d)))
            .collect()
    }

    /// Tokenise one preference pair (TRL `DPOTrainer` `tokenize_fn`): the completion boundary is
    /// `min(common_prefix(prompt, prompt+chosen), common_prefix(prompt, prompt+rejected))`.
    /// Returns the tokens and whether the boundary diverged from the tokenised prompt.
    ///
    /// # Errors
    /// Tokenizer/template failures, mixed string/message fields.
    pub fn tokenize_preference(&self, row: &PreferenceRow) -> Result<(PreferenceTokens, bool)> {
        self.tokenize_preference_within(row, None)
    }

    /// [`Preprocessor::tokenize_preference`] of at most `limit` bytes of each rendered text.
    fn tokenize_preference_within(
        &self,
        row: &PreferenceRow,
        limit: Option<usize>,
    ) -> Result<(PreferenceTokens, bool)> {
        let (prompt_ids, chosen_full) = self.prompt_and_full(&row.prompt, &row.chosen, limit)?;
        let (_, rejected_full) = self.prompt_and_full(&row.prompt, &row.rejected, limit)?;
        let k = common_prefix_length(&prompt_ids, &chosen_full)
            .min(common_prefix_length(&prompt_ids, &rejected_full));
        let mismatch = k < prompt_ids.len();
        Ok((
            PreferenceTokens {
                prompt_ids: prompt_ids[..k].to_vec(),
                chosen_ids: chosen_full[k..].to_vec(),
                rejected_ids: rejected_full[k..].to_vec(),
            },
            mismatch,
        ))
    }

    /// Tokenise a preference dataset; with `max_length`, rows whose prompt alone has
    /// `max_length` tokens or more are dropped (TRL, `keep_start`). Sequences are truncated later,
    /// by [`super::collate::collate_preference`].
    ///
    /// # Errors
    /// The first failing row, named by index.
    pub fn prepare_preference(
        &self,
        rows: &[PreferenceRow],
        max_length: Option<usize>,
    ) -> Result<Prepared<PreferenceTokens>> {
        prepare_by_prompt(
            rows,
            max_length,
            |r| self.tokenize_preference_within(r, max_length.map(text_byte_bound)),
            |t| t.prompt_ids.len(),
        )
    }

    /// Tokenise one KTO row (TRL `KTOTrainer` `tokenize_fn`).
    ///
    /// # Errors
    /// Tokenizer/template failures, mixed string/message fields.
    pub fn tokenize_unpaired(&self, row: &UnpairedRow) -> Result<(UnpairedTokens, bool)> {
        self.tokenize_unpaired_within(row, None)
    }

    /// [`Preprocessor::tokenize_unpaired`] of at most `limit` bytes of each rendered text.
    fn tokenize_unpaired_within(
        &self,
        row: &UnpairedRow,
        limit: Option<usize>,
    ) -> Result<(UnpairedTokens, bool)> {
        let (prompt_ids, full) = self.prompt_and_full(&row.prompt, &row.completion, limit)?;
        let k = common_prefix_length(&prompt_ids, &full);
        Ok((
            UnpairedTokens {
                prompt_ids: prompt_ids[..k].to_vec(),
                completion_ids: full[k..].to_vec(),
                label: row.label,
            },
            k < prompt_ids.len(),
        ))
    }

    /// Tokenise a KTO dataset, dropping rows whose prompt alone fills `max_length`.
    ///
    /// # Errors
    /// The first failing row, named by index.
    pub fn prepare_unpaired(
        &self,
        rows: &[UnpairedRow],
        max_length: Option<usize>,
    ) -> Result<Prepared<UnpairedTokens>> {
        prepare_by_prompt(
            rows,
            max_length,
            |r| self.tokenize_unpaired_within(r, max_length.map(text_byte_bound)),
            |t| t.prompt_ids.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::data::preprocessor::tests::pre;

    fn text(s: &str) -> Content {
        Content::Text(s.into())
    }

    #[test]
    fn common_prefix() {
        assert_eq!(common_prefix_length(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix_length(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix_length(&[], &[1]), 0);
    }

    #[test]
    fn text_document_gets_bos_and_one_eos() {
        let p = pre();
        assert_eq!(
            p.tokenize_document(&Document::Text("the sky".into()))
                .unwrap(),
            vec![1, 4, 5, 0]
        );
        assert_eq!(
            p.tokenize_document(&Document::Text("the sky<eos>".into()))
                .unwrap(),
            vec![1, 4, 5, 0]
        );
        let conv = Document::Messages(vec![ChatMessage::new("user", "hi")]);
        assert_eq!(p.tokenize_document(&conv).unwrap(), vec![10, 12, 13, 15]);
    }

    #[test]
    fn sft_prompt_completion_masks_the_prompt() {
        let p = pre();
        let row = SftRow::PromptCompletion(PromptCompletion {
            prompt: text("the sky is"),
            completion: text(" blue ."),
        });
        let (t, mismatch) = p.tokenize_sft(&row, &SftOptions::default()).unwrap();
        assert!(!mismatch);
        assert_eq!(t.input_ids, vec![1, 4, 5, 6, 7, 9, 0]);
        assert_eq!(t.labels, vec![-100, -100, -100, -100, 7, 9, 0]);
        assert_eq!(t.completion_start, Some(4));
        let all = SftOptions {
            completion_only_loss: false,
            ..SftOptions::default()
        };
        let (t, _) = p.tokenize_sft(&row, &all).unwrap();
        assert_eq!(t.labels, vec![1, 4, 5, 6, 7, 9, 0]);
    }

    #[test]
    fn sft_conversational_prompt_completion_and_assistant_only() {
        let p = pre();
        let row = SftRow::PromptCompletion(PromptCompletion {
            prompt: Content::Messages(vec![ChatMessage::new("user", "hi")]),
            completion: Content::Messages(vec![ChatMessage::new("assistant", "yo")]),
        });
        let (t, mismatch) = p.tokenize_sft(&row, &SftOptions::default()).unwrap();
        // "user : hi |assistant : yo |" vs prompt "user : hi |assistant :"
        assert_eq!(t.input_ids, vec![10, 12, 13, 15, 11, 12, 14, 15]);
        assert_eq!(t.labels, vec![-100, -100, -100, -100, -100, -100, 14, 15]);
        assert!(!mismatch);
        let opts = SftOptions {
            assistant_only_loss: true,
            ..SftOptions::default()
        };
        let conv = SftRow::Document(Document::Messages(vec![
            ChatMessage::new("user", "hi"),
            ChatMessage::new("assistant", "yo"),
        ]));
        let (t, _) = p.tokenize_sft(&conv, &opts).unwrap();
        assert_eq!(t.labels, vec![-100, -100, -100, -100, -100, -100, 14, 15]);
        let err = p
            .tokenize_sft(&SftRow::Document(Document::Text("hi".into())), &opts)
            .unwrap_err();
        assert!(err.to_string().contains("conversational"), "{err}");
        let no_assistant =
            SftRow::Document(Document::Messages(vec![ChatMessage::new("user", "hi")]));
        assert!(p.tokenize_sft(&no_assistant, &opts).is_err());
    }

    #[test]
    fn sft_truncates_and_drops_rows_without_targets() {
        let p = pre();
        let rows = vec![
            SftRow::PromptCompletion(PromptCompletion {
                prompt: text("the sky is"),
                completion: text(" blue"),
            }),
            SftRow::Document(Document::Text("the sky is blue".into())),
            SftRow::PromptCompletion(PromptCompletion {
                prompt: text("the"),
                completion: text(" sky is blue"),
            }),
        ];
        let opts = SftOptions {
            max_length: Some(4),
            ..SftOptions::default()
        };
        let prepared = p.prepare_sft(&rows, &opts).unwrap();
        assert_eq!(prepared.dropped, vec![0]);
        assert_eq!(prepared.rows[0].input_ids, vec![1, 4, 5, 6]);
        assert_eq!(prepared.rows[0].labels, vec![1, 4, 5, 6]);
        assert_eq!(prepared.rows[1].labels, vec![-100, -100, 5, 6]);
        let untruncated = p
            .prepare_sft(
                &rows,
                &SftOptions {
                    max_length: None,
                    ..SftOptions::default()
                },
            )
            .unwrap();
        assert!(untruncated.dropped.is_empty());
        assert_eq!(untruncated.rows[0].input_ids.len(), 6);
    }

    #[test]
    fn preference_boundary_and_dropping() {
        let p = pre();
        let row = PreferenceRow {
            prompt: text("the sky is"),
            chosen: text(" blue ."),
            rejected: text(" green"),
        };
        let (t, _) = p.tokenize_preference(&row).unwrap();
        assert_eq!(t.prompt_ids, vec![1, 4, 5, 6]);
        assert_eq!(t.chosen_ids, vec![7, 9, 0]);
        assert_eq!(t.rejected_ids, vec![8, 0]);
        let prepared = p
            .prepare_preference(&[row.clone(), row.clone()], Some(4))
            .unwrap();
        assert_eq!(prepared.dropped, vec![0, 1]);
        let prepared = p.prepare_preference(&[row], Some(5)).unwrap();
        assert_eq!((prepared.rows.len(), prepared.dropped.len()), (1, 0));
    }

    #[test]
    fn diverging_prompt_sets_the_boundary_at_the_common_prefix() {
        // The generation prompt "assistant :" is not rendered when the completion follows as a
        // user turn, so the prompt's tail is cut and the mismatch counted.
        let p = pre();
        let row = PreferenceRow {
            prompt: Content::Messages(vec![ChatMessage::new("user", "hi")]),
            chosen: Content::Messages(vec![ChatMessage::new("user", "yo")]),
            rejected: Content::Messages(vec![ChatMessage::new("assistant", "yo")]),
        };
        let (t, mismatch) = p.tokenize_preference(&row).unwrap();
        assert!(mismatch);
        assert_eq!(t.prompt_ids, vec![10, 12, 13, 15]);
        assert_eq!(t.chosen_ids, vec![10, 12, 14, 15]);
        assert_eq!(t.rejected_ids, vec![11, 12, 14, 15]);
        let prepared = p.prepare_preference(&[row], None).unwrap();
        assert_eq!(prepared.boundary_mismatches, 1);
    }

    #[test]
    fn unpaired_rows_and_mixed_errors() {
        let p = pre();
        let row = UnpairedRow {
            prompt: text("the sky is"),
            completion: text(" green"),
            label: false,
        };
        let (t, _) = p.tokenize_unpaired(&row).unwrap();
        assert_eq!(
            (t.prompt_ids.len(), t.completion_ids.clone(), t.label),
            (4, vec![8, 0], false)
        );
        let prepared = p.prepare_unpaired(&[row], Some(3)).unwrap();
        assert_eq!(prepared.dropped, vec![0]);
        let bad = UnpairedRow {
            prompt: text("hi"),
            completion: Content::Messages(vec![ChatMessage::new("assistant", "yo")]),
            label: true,
        };
        let err = p.prepare_unpaired(&[bad], None).unwrap_err();
        assert!(err.to_string().starts_with("row 0:"), "{err}");
    }
}
