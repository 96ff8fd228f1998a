//! The paper's generative protocol: the model is told to respond with one word or letter, the
//! answer is decoded greedily and the first answer letter (or True/False) is parsed from it.
//! Unparseable outputs count as wrong and are reported separately.

use regex::Regex;
use temper_llm_arch::{
    ChatMessage, ChatTemplate, GenerationConfig, LlamaForCausalLM, Tokenizer, generate,
};

use crate::Result;
use crate::question::{Question, QuestionKind};
use crate::record::QuestionRecord;

/// The system instruction of the protocol.
pub const SYSTEM_TEXT: &str = "You respond with one word or letter.";
/// The text before the response.
pub const ANSWER_PREFIX: &str = "The correct answer is:";

/// The user text: `Select the correct answer to this question: {question}` followed by the
/// lettered choices (`A. ...`) for multiple choice.
pub fn user_text(q: &Question) -> String {
    let mut s = format!(
        "Select the correct answer to this question: {}",
        q.question.trim()
    );
    if let QuestionKind::Mc { choices, .. } = &q.kind {
        for (i, c) in choices.iter().enumerate() {
            s.push_str(&format!("\n{}. {}", letter(i), c.trim()));
        }
    }
    s
}

fn letter(i: usize) -> char {
    char::from(b'A' + (i % 26) as u8)
}

/// The whole prompt: with a chat template, a system and a user turn and the assistant turn
/// opened with [`ANSWER_PREFIX`]; without one, the same texts on separate lines.
///
/// # Errors
/// Chat-template render errors.
pub fn build_prompt(q: &Question, chat_template: Option<&ChatTemplate>) -> Result<String> {
    let user = user_text(q);
    Ok(match chat_template {
        Some(t) => {
            let rendered = t.render(
                &[
                    ChatMessage::new("system", SYSTEM_TEXT),
                    ChatMessage::new("user", user),
                ],
                true,
            )?;
            format!("{rendered}{ANSWER_PREFIX}")
        }
        None => format!("{SYSTEM_TEXT} {user}\n{ANSWER_PREFIX}"),
    })
}

/// A parsed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Index of the choice (A = 0).
    Choice(usize),
    Bool(bool),
}

fn re(p: &str) -> Option<Regex> {
    Regex::new(p).ok()
}

/// The first answer letter among the first `n_choices` letters, from a model output.
///
/// In order: a letter after "answer is"/"answer:" (the protocol's own prefix, echoed); a
/// letter alone in parentheses or brackets; a letter opening the output (`C.`, `b) ...`,
/// `**B**`); a standalone capital letter followed by punctuation or the end; the text of
/// exactly one choice. Articles and pronouns ("A silk", "I think") are not letters.
pub fn parse_choice(output: &str, choices: &[String]) -> Option<usize> {
    let n = choices.len().min(26);
    let idx = |c: &str| -> Option<usize> {
        let ch = c.chars().next()?.to_ascii_uppercase();
        let i = (ch as u32).checked_sub('A' as u32)? as usize;
        (i < n).then_some(i)
    };
    let patterns = [
        r"(?i)answer(?:\s+is)?\s*[:\-]?\s*(?:option\s+|choice\s+)?[\(\[\*]*([A-Z])(?:[^A-Za-z0-9]|$)",
        r"[\(\[]([A-Za-z])[\)\]]",
        r"^[\s\*_`\x22']*(?:option\s+|choice\s+)?([A-Za-z])(?:[\.\):,\*]|\s*$|\s+-)",
        r"(?:^|[^A-Za-z0-9'])([A-Z])(?:[\.\):,]|\s*$)",
    ];
    for p in patterns {
        let Some(r) = re(p) else { continue };
        for cap in r.captures_iter(output) {
            if let Some(i) = cap.get(1).and_then(|m| idx(m.as_str())) {
                return Some(i);
            }
        }
    }
    // The text of exactly one choice.
    let lower = output.to_lowercase();
    let hits: Vec<usize> = choices
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            let c = c.trim().to_lowercase();
            !c.is_empty() && lower.contains(&c)
        })
        .map(|(i, _)| i)
        .collect();
    (hits.len() == 1).then(|| hits[0])
}

/// The first "true"/"false" word of an output (case-insensitive; `T`/`F` alone also count).
pub fn parse_bool(output: &str) -> Option<bool> {
    let r = re(r"(?i)\b(true|false)\b")?;
    if let Some(m) = r.find(output) {
        return Some(m.as_str().eq_ignore_ascii_case("true"));
    }
    let r = re(r"^[\s\*\(]*([TF])(?:[\.\):]|\s*$)")?;
    r.captures(output)
        .and_then(|c| c.get(1))
        .map(|m| m.as_str() == "T")
}

/// Parse an output for a question (short answers: `None`, see [`short_answer_correct`]).
pub fn parse_answer(output: &str, q: &Question) -> Option<Answer> {
    match &q.kind {
        QuestionKind::Mc { choices, .. } => parse_choice(output, choices).map(Answer::Choice),
        QuestionKind::Tf { .. } => parse_bool(output).map(Answer::Bool),
        QuestionKind::Short { .. } => None,
    }
}

fn normalize(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether an output contains the short answer or an alias (case and punctuation ignored).
pub fn short_answer_correct(output: &str, answer: &str, aliases: &[String]) -> bool {
    let out = format!(" {} ", normalize(output));
    std::iter::once(answer)
        .chain(aliases.iter().map(String::as_str))
        .map(normalize)
        .any(|a| !a.is_empty() && out.contains(&format!(" {a} ")))
}

/// Settings of generative evaluation.
#[derive(Debug, Clone)]
pub struct GenerativeConfig {
    /// Prompts per `generate` call.
    pub batch_size: usize,
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: u32,
    /// Add the tokenizer's special tokens (BOS) when encoding prompts.
    pub add_special_tokens: bool,
}

impl Default for GenerativeConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            max_new_tokens: 8,
            eos_token_ids: vec![],
            pad_token_id: 0,
            add_special_tokens: false,
        }
    }
}

/// Score one output against its question.
pub fn record_for_output(q: &Question, output: &str) -> QuestionRecord {
    let (prediction, correct, unparsed) = match &q.kind {
        QuestionKind::Short { answer, aliases } => {
            let ok = short_answer_correct(output, answer, aliases);
            (Some(output.trim().to_string()), ok, false)
        }
        _ => match parse_answer(output, q) {
            Some(Answer::Choice(i)) => (
                q.choices().and_then(|c| c.get(i).cloned()),
                q.gold_index() == Some(i),
                false,
            ),
            Some(Answer::Bool(b)) => (
                Some(if b { "True" } else { "False" }.to_string()),
                matches!(q.kind, QuestionKind::Tf { answer } if answer == b),
                false,
            ),
            None => (None, false, true),
        },
    };
    QuestionRecord {
        id: q.id.clone(),
        category: q.category.clone(),
        gold: q.gold_text(),
        prediction,
        correct,
        correct_norm: None,
        correct_bytes: None,
        unparsed,
        output: Some(output.to_string()),
        logprobs: None,
    }
}

/// Greedy-decode an answer for every question and score it; `progress(done, total)` after
/// each batch.
///
/// # Errors
/// Template, tokenizer and model errors.
pub fn evaluate_generative(
    model: &LlamaForCausalLM,
    tokenizer: &Tokenizer,
    chat_template: Option<&ChatTemplate>,
    questions: &[Question],
    config: &GenerativeConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<QuestionRecord>> {
    let gen_config = GenerationConfig {
        max_new_tokens: config.max_new_tokens,
        temperature: 0.0,
        eos_token_ids: config.eos_token_ids.clone(),
        pad_token_id: config.pad_token_id,
        ..GenerationConfig::default()
    };
    let mut records = Vec::with_capacity(questions.len());
    for chunk in questions.chunks(config.batch_size.max(1)) {
        let prompts =
            chunk
                .iter()
                .map(|q| {
                    Ok(tokenizer
                        .encode(&build_prompt(q, chat_template)?, config.add_special_tokens)?)
                })
                .collect::<Result<Vec<_>>>()?;
        let outs = generate(model, Some(tokenizer), &prompts, &gen_config, |_, _| {})?;
        for (q, o) in chunk.iter().zip(outs) {
            let text = match o.text {
                Some(t) => t,
                None => tokenizer.decode(&o.tokens, true)?,
            };
            records.push(record_for_output(q, &text));
        }
        progress(records.len(), questions.len());
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("option number {i}")).collect()
    }

    #[test]
    fn letter_parser_on_realistic_outputs() {
        let c4 = choices(4);
        let table: &[(&str, Option<usize>)] = &[
            ("The correct answer is: B", Some(1)),
            (" B", Some(1)),
            ("b) option number 1", Some(1)),
            ("C.", Some(2)),
            ("C. Because nacre is layered.", Some(2)),
            ("I think it's (D)", Some(3)),
            ("Answer: A", Some(0)),
            ("**A**", Some(0)),
            ("The answer is D, since collagen...", Some(3)),
            ("A spider silk thread is strong", None),
            ("I don't know", None),
            ("E", None),
            ("(E) is not there", None),
            ("", None),
            ("asdf qwerty", None),
            ("It is option number 2 of course", Some(2)),
        ];
        for (out, want) in table {
            assert_eq!(parse_choice(out, &c4), *want, "{out:?}");
        }
        // Letters past the choice count are not answers.
        assert_eq!(parse_choice("C", &choices(2)), None);
    }

    #[test]
    fn bool_parser_on_realistic_outputs() {
        let table: &[(&str, Option<bool>)] = &[
            ("Answer: True", Some(true)),
            ("True", Some(true)),
            (" false.", Some(false)),
            ("FALSE", Some(false)),
            ("The statement is false because...", Some(false)),
            ("T", Some(true)),
            ("F.", Some(false)),
            ("Truely garbage", None),
            ("maybe", None),
        ];
        for (out, want) in table {
            assert_eq!(parse_bool(out), *want, "{out:?}");
        }
    }

    #[test]
    fn records_count_unparsed_as_wrong() {
        let q = Question {
            id: "q".into(),
            category: None,
            question: "Which?".into(),
            kind: QuestionKind::Mc {
                choices: choices(3),
                answer: 1,
            },
        };
        assert!(record_for_output(&q, "The correct answer is: B").correct);
        let r = record_for_output(&q, "hmm");
        assert!(!r.correct && r.unparsed);
        let p = build_prompt(&q, None).unwrap_or_default();
        assert!(p.starts_with("You respond with one word or letter. Select the correct answer to this question: Which?\nA. option number 0"));
        assert!(p.ends_with("\nThe correct answer is:"));
        assert!(short_answer_correct(
            "It is Alpha-Keratin.",
            "keratin",
            &["alpha keratin".into()]
        ));
        assert!(!short_answer_correct("chitin", "keratin", &[]));
    }
}
