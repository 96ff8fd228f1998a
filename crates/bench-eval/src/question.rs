//! The JSONL benchmark format: one question per line.
//!
//! ```json
//! {"id": "q17", "category": "numerical", "type": "mc", "question": "...", "choices": ["a", "b"], "answer": 1}
//! {"type": "tf", "question": "...", "answer": true}
//! {"type": "short", "question": "...", "answer": "keratin", "aliases": ["alpha-keratin"]}
//! ```
//! `id` and `category` are optional; a missing id becomes `line{N}`. `type` may be left out:
//! `choices` makes a line multiple choice, a boolean `answer` true/false, a text `answer` a
//! short answer. Blank lines are skipped.
//! Ids must be unique (records and paired comparisons are keyed by them), and a file without
//! a question is an error rather than a `0.0 ± 0.0` score.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use temper_objectives::data::lines::{BoundedLines, Line};

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

/// Longest benchmark line read (16 MiB: room for a long reading-comprehension context);
/// longer lines are rejected without being read into memory whole.
pub const MAX_QUESTION_LINE_BYTES: usize = 16 << 20;

/// Parse JSONL text; `path` only names the source in errors.
///
/// # Errors
/// [`EvalError::Malformed`] naming the file and 1-based line of the first bad line (a second
/// use of an id names the line of the first); [`EvalError::NoQuestions`] for a file with none.
pub fn parse_questions(text: &str, path: &Path) -> Result<Vec<Question>> {
    parse_question_lines(text.as_bytes(), path)
}

/// Parse JSONL from a reader, line by line with [`MAX_QUESTION_LINE_BYTES`] per line.
///
/// # Errors
/// I/O errors; [`EvalError::Malformed`] naming the file and 1-based line of the first bad line
/// (malformed JSON or fields, invalid UTF-8, a line over the cap, a second use of an id);
/// [`EvalError::NoQuestions`] for a file with none.
pub fn parse_question_lines(reader: impl BufRead, path: &Path) -> Result<Vec<Question>> {
    let mut out = Vec::new();
    // id → the line it was first used on.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut lines = BoundedLines::new(reader, MAX_QUESTION_LINE_BYTES);
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    while let Some((n, line)) = lines.next_line().map_err(io)? {
        let malformed = |reason: String| EvalError::Malformed {
            path: path.to_path_buf(),
            line: n,
            reason,
        };
        let line = match line {
            Line::Text(text) => text,
            Line::TooLong { len } => {
                return Err(malformed(format!(
                    "line of {len} bytes, over the limit of {MAX_QUESTION_LINE_BYTES}"
                )));
            }
            Line::InvalidUtf8 { at } => {
                return Err(malformed(format!("invalid UTF-8 at byte {at} of the line")));
            }
        };
        let line = if n == 1 {
            line.trim_start_matches('\u{feff}')
        } else {
            &line
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| malformed(e.to_string()))?;
        default_type(&mut value);
        let mut q: Question =
            serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
        q.validate().map_err(malformed)?;
        if q.id.is_empty() {
            q.id = format!("line{n}");
        }
        if let Some(first) = seen.insert(q.id.clone(), n) {
            return Err(malformed(format!(
                "duplicate id `{}` (first used on line {first}; ids must be unique)",
                q.id
            )));
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(EvalError::NoQuestions {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// A line without `type` takes it from its fields: `choices` makes it multiple choice, a
/// boolean `answer` true/false, a text `answer` a short answer. An explicit `type` wins.
fn default_type(value: &mut serde_json::Value) {
    let Some(map) = value.as_object_mut() else {
        return;
    };
    if map.contains_key("type") {
        return;
    }
    let kind = if map.contains_key("choices") {
        "mc"
    } else {
        match map.get("answer") {
            Some(serde_json::Value::Bool(_)) => "tf",
            Some(serde_json::Value::String(_)) => "short",
            _ => return,
        }
    };
    map.insert("type".into(), kind.into());
}

/// Read a JSONL benchmark file.
///
/// # Errors
/// I/O errors and [`EvalError::Malformed`] lines.
pub fn load_questions(path: impl AsRef<Path>) -> Result<Vec<Question>> {
    let path = path.as_ref();
    let file = temper_formats::open_regular(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_question_lines(std::io::BufReader::new(file), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_defaults_from_the_fields() {
        let text = r#"{"question": "Q?", "choices": ["a", "b"], "answer": 1}
{"question": "Silk is a protein.", "answer": true}
{"question": "Hair protein?", "answer": "keratin"}
{"type": "short", "question": "Q2?", "answer": "x"}"#;
        let qs = parse_questions(text, Path::new("b.jsonl")).unwrap_or_default();
        assert!(matches!(qs[0].kind, QuestionKind::Mc { answer: 1, .. }));
        assert_eq!(qs[1].kind, QuestionKind::Tf { answer: true });
        assert!(matches!(qs[2].kind, QuestionKind::Short { .. }));
        assert!(matches!(qs[3].kind, QuestionKind::Short { .. }));
        // Neither choices nor a usable answer: still an error naming the line.
        let err = parse_questions(
            "{\"question\": \"Q?\", \"answer\": 3}",
            Path::new("b.jsonl"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("b.jsonl:1") && err.contains("type"), "{err}");
    }

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
    fn duplicate_ids_name_the_id_and_both_lines() {
        let text = "{\"id\": \"q1\", \"type\": \"tf\", \"question\": \"A\", \"answer\": true}\n\n\
                    {\"id\": \"q2\", \"type\": \"tf\", \"question\": \"B\", \"answer\": true}\n\
                    {\"id\": \"q1\", \"type\": \"tf\", \"question\": \"C\", \"answer\": false}\n";
        let msg = parse_questions(text, Path::new("b.jsonl"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            msg,
            "b.jsonl:4: duplicate id `q1` (first used on line 1; ids must be unique)"
        );
        // An explicit id that collides with a generated `line{N}` is caught too.
        let text = "{\"type\": \"tf\", \"question\": \"A\", \"answer\": true}\n\
                    {\"id\": \"line1\", \"type\": \"tf\", \"question\": \"B\", \"answer\": true}\n";
        let msg = parse_questions(text, Path::new("b.jsonl"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.starts_with("b.jsonl:2: duplicate id `line1`"), "{msg}");
    }

    #[test]
    fn an_empty_benchmark_is_an_error() {
        for text in ["", "\n  \n\n"] {
            let msg = parse_questions(text, Path::new("empty.jsonl"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                msg.starts_with("empty.jsonl: no questions"),
                "{text:?}: {msg}"
            );
        }
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

    #[test]
    #[allow(clippy::unwrap_used)]
    fn invalid_utf8_and_huge_lines_name_the_line() {
        let path = Path::new("bench.jsonl");
        let good = r#"{"type":"tf","question":"q","answer":true}"#;
        let mut bytes = format!("{good}\n{good}\n").into_bytes();
        bytes.extend_from_slice(b"{\"type\":\"tf\",\"question\":\"\xff\"}\n");
        let err = parse_question_lines(&bytes[..], path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bench.jsonl:3") && err.contains("UTF-8"),
            "{err}"
        );
        let mut bytes = format!("{good}\n").into_bytes();
        bytes.extend(std::iter::repeat_n(b' ', MAX_QUESTION_LINE_BYTES + 1));
        let err = parse_question_lines(&bytes[..], path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bench.jsonl:2") && err.contains("over the limit"),
            "{err}"
        );
    }
}
