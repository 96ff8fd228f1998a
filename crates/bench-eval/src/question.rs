//! The JSONL benchmark format: one question per line.
//!
//! ```json
//! {"id": "q17", "category": "numerical", "type": "mc", "question": "...", "choices": ["a", "b"], "answer": 1}
//! {"type": "tf", "question": "...", "answer": true}
//! {"type": "short", "question": "...", "answer": "keratin", "aliases": ["alpha-keratin"]}
//! ```
//! `id` and `category` are optional; a missing id becomes `line{N}`. Blank lines are skipped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{EvalError, Result};

/// The answer part of a question, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum QuestionKind {
    /// Multiple choice; `answer` is the index of the correct choice.
    Mc { choices: Vec<String>, answer: usize },
    /// True/false.
    Tf { answer: bool },
    /// Short free-text answer with accepted alternatives.
    Short {
        answer: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        aliases: Vec<String>,
    },
}

/// One benchmark question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub question: String,
    #[serde(flatten)]
    pub kind: QuestionKind,
}

impl Question {
    /// The choices scored by log-likelihood: the MC choices, or `["True", "False"]` for a
    /// true/false question; `None` for short answers.
    pub fn choices(&self) -> Option<Vec<String>> {
        match &self.kind {
            QuestionKind::Mc { choices, .. } => Some(choices.clone()),
            QuestionKind::Tf { .. } => Some(vec!["True".into(), "False".into()]),
            QuestionKind::Short { .. } => None,
        }
    }

    /// Index of the correct choice in [`choices`](Self::choices) (True = 0, False = 1).
    pub fn gold_index(&self) -> Option<usize> {
        match &self.kind {
            QuestionKind::Mc { answer, .. } => Some(*answer),
            QuestionKind::Tf { answer } => Some(usize::from(!*answer)),
            QuestionKind::Short { .. } => None,
        }
    }

    /// The correct answer as text (the choice, "True"/"False", or the short answer).
    pub fn gold_text(&self) -> String {
        match &self.kind {
            QuestionKind::Mc { choices, answer } => {
                choices.get(*answer).cloned().unwrap_or_default()
            }
            QuestionKind::Tf { answer } => if *answer { "True" } else { "False" }.to_string(),
            QuestionKind::Short { answer, .. } => answer.clone(),
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.question.trim().is_empty() {
            return Err("empty `question`".into());
        }
        match &self.kind {
            QuestionKind::Mc { choices, answer } => {
                if choices.len() < 2 {
                    return Err(format!(
                        "`choices` needs at least 2 entries, has {}",
                        choices.len()
                    ));
                }
                if choices.len() > 26 {
                    return Err(format!("at most 26 choices (A-Z), has {}", choices.len()));
                }
                if *answer >= choices.len() {
                    return Err(format!(
                        "`answer` {answer} is out of range for {} choices",
                        choices.len()
                    ));
                }
                if choices.iter().any(|c| c.trim().is_empty()) {
                    return Err("a choice is empty".into());
                }
            }
            QuestionKind::Tf { .. } => {}
            QuestionKind::Short { answer, .. } => {
                if answer.trim().is_empty() {
                    return Err("empty short `answer`".into());
                }
            }
        }
        Ok(())
    }
}

/// Parse JSONL text; `path` only names the source in errors.
///
/// # Errors
/// [`EvalError::Malformed`] naming the file and 1-based line of the first bad line.
pub fn parse_questions(text: &str, path: &Path) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |reason: String| EvalError::Malformed {
            path: path.to_path_buf(),
            line: n,
            reason,
        };
        let mut q: Question = serde_json::from_str(line).map_err(|e| malformed(e.to_string()))?;
        q.validate().map_err(malformed)?;
        if q.id.is_empty() {
            q.id = format!("line{n}");
        }
        out.push(q);
    }
    Ok(out)
}

/// Read a JSONL benchmark file.
///
/// # Errors
/// I/O errors and [`EvalError::Malformed`] lines.
pub fn load_questions(path: impl AsRef<Path>) -> Result<Vec<Question>> {
    let path = path.as_ref();
    let text = temper_formats::read_regular_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_questions(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_three_types() -> Result<()> {
        let text = r#"{"id": "q1", "category": "numerical", "type": "mc", "question": "Q?", "choices": ["a", "b", "c"], "answer": 2}

{"type": "tf", "question": "Silk is a protein.", "answer": true}
{"type": "short", "question": "Hair protein?", "answer": "keratin", "aliases": ["alpha-keratin"]}
"#;
        let qs = parse_questions(text, Path::new("b.jsonl"))?;
        assert_eq!(qs.len(), 3);
        assert_eq!(qs[0].id, "q1");
        assert_eq!(qs[0].category.as_deref(), Some("numerical"));
        assert_eq!(qs[0].gold_index(), Some(2));
        assert_eq!(qs[1].id, "line3");
        assert_eq!(
            qs[1].choices(),
            Some(vec!["True".to_string(), "False".to_string()])
        );
        assert_eq!(qs[1].gold_index(), Some(0));
        assert_eq!(
            qs[2].kind,
            QuestionKind::Short {
                answer: "keratin".into(),
                aliases: vec!["alpha-keratin".into()]
            }
        );
        // Round trip through serde.
        let line = serde_json::to_string(&qs[0]).map_err(|e| EvalError::Invalid(e.to_string()))?;
        assert_eq!(parse_questions(&line, Path::new("x"))?[0], qs[0]);
        Ok(())
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let cases = [
            "{\"type\": \"mc\", \"question\": \"Q\", \"choices\": [\"a\", \"b\"], \"answer\": 5}",
            "{\"type\": \"mc\", \"question\": \"Q\", \"choices\": [\"a\", \"b\"], \"answer\": true}",
            "{\"type\": \"tf\", \"question\": \"Q\", \"answer\": 1}",
            "{\"type\": \"essay\", \"question\": \"Q\", \"answer\": \"x\"}",
            "{\"type\": \"tf\", \"answer\": true}",
            "not json",
        ];
        for bad in cases {
            let text =
                format!("{{\"type\": \"tf\", \"question\": \"ok\", \"answer\": false}}\n{bad}\n");
            let err = parse_questions(&text, Path::new("bench/x.jsonl"));
            match err {
                Err(EvalError::Malformed { path, line, .. }) => {
                    assert_eq!(line, 2, "{bad}");
                    assert_eq!(path, Path::new("bench/x.jsonl"));
                }
                other => panic!("{bad}: expected Malformed, got {other:?}"),
            }
            let msg = parse_questions(&text, Path::new("bench/x.jsonl"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.starts_with("bench/x.jsonl:2:"), "{msg}");
        }
    }
}
