//! JSONL readers for TRL's dataset shapes (one JSON object per line).
//!
//! | reader row type | accepted fields (TRL names) |
//! |---|---|
//! | [`Document`] | `text` (or [`ReadOptions::text_field`]), `messages`, ShareGPT `conversations` |
//! | [`SftRow`] | the above, or `prompt` + `completion` (strings or message lists) |
//! | [`PreferenceRow`] | `prompt` + `chosen` + `rejected`, or implicit prompt: `chosen` + `rejected` only |
//! | [`UnpairedRow`] | `prompt` + `completion` + `label` (KTO) |
//!
//! Messages are `{"role": str, "content": str}` objects (extra keys such as `tool_calls` are
//! ignored). ShareGPT messages `{"from", "value"}` are accepted in every message field, as TRL's
//! `maybe_convert_to_chatml` does; in addition their roles `human`/`gpt` are mapped to
//! `user`/`assistant` (TRL only renames the keys, which leaves `human` for the template to render
//! literally; axolotl and LLaMA-Factory map the roles), `system` and other roles are kept.
//!
//! A malformed line is an [`ObjectiveError::Data`] naming the file, the 1-based line and the
//! missing or mistyped field; with [`ReadOptions::skip_bad_lines`] it is skipped and recorded in
//! [`Loaded::skipped`] instead (invalid UTF-8 too, with its line number). Blank lines are
//! ignored. Lines longer than [`ReadOptions::max_line_bytes`] are skipped without being held in
//! memory and listed in [`Loaded::too_long`]: like rows too long in tokens, they are dropped,
//! not errors.

use std::io::BufRead;

use super::lines::{BoundedLines, Line};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use temper_llm_arch::ChatMessage;

use super::example::{
    Content, Document, PreferenceRow, PromptCompletion, SftRow, UnpairedRow, extract_prompt,
};
use crate::{ObjectiveError, Result};

/// How to read a JSONL file.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Skip malformed lines (recorded in [`Loaded::skipped`]) instead of failing on the first.
    pub skip_bad_lines: bool,
    /// Field holding plain text for language-modelling rows (TRL's `dataset_text_field`).
    pub text_field: String,
    /// Longest line read (bytes); longer lines are skipped unread and listed in
    /// [`Loaded::too_long`]. Default [`DEFAULT_MAX_LINE_BYTES`].
    pub max_line_bytes: usize,
}

/// Default line cap: 64 MiB, room for a book-length CPT document on one line while keeping a
/// runaway file (no newlines at all) from being read into memory whole.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 20;

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            skip_bad_lines: false,
            text_field: "text".into(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// A line that was skipped because it was malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub msg: String,
}

/// The rows read from a file, and the lines left out.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub rows: Vec<T>,
    /// The 1-based line of each row.
    pub row_lines: Vec<usize>,
    /// Malformed lines skipped (only with [`ReadOptions::skip_bad_lines`]).
    pub skipped: Vec<SkippedLine>,
    /// Lines over [`ReadOptions::max_line_bytes`] (1-based), skipped.
    pub too_long: Vec<usize>,
    /// Number of blank lines.
    pub blank_lines: usize,
}

impl<T> Loaded<T> {
    /// What was left out, for messages: "2 lines over 1024 bytes (first: 3, 9), 1 malformed
    /// (first: 5), 4 blank"; empty when nothing was.
    pub fn left_out(&self, max_line_bytes: usize) -> String {
        let mut parts = Vec::new();
        if !self.too_long.is_empty() {
            parts.push(format!(
                "{} line(s) over {max_line_bytes} bytes (first: {})",
                self.too_long.len(),
                first_lines(self.too_long.iter().copied())
            ));
        }
        if !self.skipped.is_empty() {
            parts.push(format!(
                "{} malformed (first: {})",
                self.skipped.len(),
                first_lines(self.skipped.iter().map(|s| s.line))
            ));
        }
        if self.blank_lines > 0 {
            parts.push(format!("{} blank", self.blank_lines));
        }
        parts.join(", ")
    }
}

/// The first few line numbers, comma-separated.
pub fn first_lines(lines: impl Iterator<Item = usize>) -> String {
    lines
        .take(5)
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row type that can be parsed from one JSON object.
pub trait JsonRow: Sized {
    /// Parse one JSON value; the error message names the offending field.
    ///
    /// # Errors
    /// A description of the missing or mistyped field.
    fn from_json(value: &Value, opts: &ReadOptions) -> std::result::Result<Self, String>;
}

/// Read every row of a JSONL file.
///
/// # Errors
/// I/O errors, and (unless skipping) the first malformed line as [`ObjectiveError::Data`].
pub fn read_jsonl<T: JsonRow>(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Loaded<T>> {
    let path = path.as_ref();
    let file = temper_formats::open_regular(path).map_err(|source| ObjectiveError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_jsonl(std::io::BufReader::new(file), path, opts)
}

/// Parse JSONL from any reader; `origin` names the source in errors.
///
/// # Errors
/// As [`read_jsonl`].
pub fn parse_jsonl<T: JsonRow>(
    reader: impl BufRead,
    origin: &Path,
    opts: &ReadOptions,
) -> Result<Loaded<T>> {
    let mut out = Loaded {
        rows: Vec::new(),
        row_lines: Vec::new(),
        skipped: Vec::new(),
        too_long: Vec::new(),
        blank_lines: 0,
    };
    let mut lines = BoundedLines::new(reader, opts.max_line_bytes);
    while let Some((line_no, line)) = lines.next_line().map_err(|source| ObjectiveError::Io {
        path: origin.to_path_buf(),
        source,
    })? {
        let parsed = match line {
            Line::TooLong { .. } => {
                out.too_long.push(line_no);
                continue;
            }
            Line::InvalidUtf8 { at } => Err(format!("invalid UTF-8 at byte {at} of the line")),
            Line::Text(line) => {
                let text = if line_no == 1 {
                    line.trim_start_matches('\u{feff}')
                } else {
                    &line
                };
                if text.trim().is_empty() {
                    out.blank_lines += 1;
                    continue;
                }
                serde_json::from_str::<Value>(text)
                    .map_err(|e| format!("invalid JSON: {e}"))
                    .and_then(|v| T::from_json(&v, opts))
            }
        };
        match parsed {
            Ok(row) => {
                out.rows.push(row);
                out.row_lines.push(line_no);
            }
            Err(msg) if opts.skip_bad_lines => out.skipped.push(SkippedLine { line: line_no, msg }),
            Err(msg) => return Err(data_error(origin, line_no, msg)),
        }
    }
    Ok(out)
}

fn data_error(path: &Path, line: usize, msg: String) -> ObjectiveError {
    ObjectiveError::Data {
        path: PathBuf::from(path),
        line,
        msg,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn object(v: &Value) -> std::result::Result<&Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("expected a JSON object, found {}", kind(v)))
}

fn required<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> std::result::Result<&'a Value, String> {
    obj.get(field)
        .ok_or_else(|| format!("missing field `{field}`"))
}

/// ShareGPT role names → ChatML.
fn map_role(role: &str) -> String {
    match role {
        "human" => "user".into(),
        "gpt" => "assistant".into(),
        other => other.into(),
    }
}

fn message(field: &str, i: usize, v: &Value) -> std::result::Result<ChatMessage, String> {
    let obj = v.as_object().ok_or_else(|| {
        format!(
            "`{field}[{i}]`: expected a message object, found {}",
            kind(v)
        )
    })?;
    let (role_key, content_key, sharegpt) = if obj.contains_key("role")
        || obj.contains_key("content")
    {
        ("role", "content", false)
    } else if obj.contains_key("from") || obj.contains_key("value") {
        ("from", "value", true)
    } else {
        return Err(format!(
            "`{field}[{i}]`: a message needs `role` and `content` (or ShareGPT `from` and `value`)"
        ));
    };
    let get_str = |key: &str| -> std::result::Result<&str, String> {
        match obj.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(format!(
                "`{field}[{i}].{key}`: expected a string, found {}",
                kind(other)
            )),
            None => Err(format!("`{field}[{i}]`: missing `{key}`")),
        }
    };
    let role = get_str(role_key)?;
    let content = get_str(content_key)?;
    let role = if sharegpt {
        map_role(role)
    } else {
        role.to_string()
    };
    Ok(ChatMessage::new(role, content))
}

fn messages(field: &str, v: &Value) -> std::result::Result<Vec<ChatMessage>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| format!("`{field}`: expected a list of messages, found {}", kind(v)))?;
    if list.is_empty() {
        return Err(format!("`{field}`: empty message list"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| message(field, i, m))
        .collect()
}

/// A string or a non-empty message list.
fn content(field: &str, v: &Value) -> std::result::Result<Content, String> {
    match v {
        Value::String(s) => Ok(Content::Text(s.clone())),
        Value::Array(_) => messages(field, v).map(Content::Messages),
        other => Err(format!(
            "`{field}`: expected a string or a list of messages, found {}",
            kind(other)
        )),
    }
}

fn same_kind(fields: &[(&str, &Content)]) -> std::result::Result<(), String> {
    let Some((first_name, first)) = fields.first() else {
        return Ok(());
    };
    for (name, c) in &fields[1..] {
        if c.is_conversational() != first.is_conversational() {
            let what = |c: &Content| {
                if c.is_conversational() {
                    "a message list"
                } else {
                    "a string"
                }
            };
            return Err(format!(
                "`{name}` is {} but `{first_name}` is {}: a row must be all strings or all message lists",
                what(c),
                what(first)
            ));
        }
    }
    Ok(())
}

impl JsonRow for Document {
    fn from_json(value: &Value, opts: &ReadOptions) -> std::result::Result<Self, String> {
        let obj = object(value)?;
        if let Some(v) = obj.get("messages") {
            return messages("messages", v).map(Document::Messages);
        }
        if let Some(v) = obj.get("conversations") {
            return messages("conversations", v).map(Document::Messages);
        }
        match obj.get(&opts.text_field) {
            Some(Value::String(s)) => Ok(Document::Text(s.clone())),
            Some(other) => Err(format!(
                "`{}`: expected a string, found {}",
                opts.text_field,
                kind(other)
            )),
            None => Err(format!(
                "missing field `{}` (or `messages` / `conversations`)",
                opts.text_field
            )),
        }
    }
}

impl JsonRow for PromptCompletion {
    fn from_json(value: &Value, _opts: &ReadOptions) -> std::result::Result<Self, String> {
        let obj = object(value)?;
        let prompt = content("prompt", required(obj, "prompt")?)?;
        let completion = content("completion", required(obj, "completion")?)?;
        same_kind(&[("prompt", &prompt), ("completion", &completion)])?;
        Ok(Self { prompt, completion })
    }
}

impl JsonRow for SftRow {
    fn from_json(value: &Value, opts: &ReadOptions) -> std::result::Result<Self, String> {
        let obj = object(value)?;
        if obj.contains_key("prompt") || obj.contains_key("completion") {
            return PromptCompletion::from_json(value, opts).map(SftRow::PromptCompletion);
        }
        Document::from_json(value, opts).map(SftRow::Document).map_err(|e| {
            if e.starts_with("missing field") {
                format!(
                    "missing field: expected `{}`, `messages`, `conversations` or `prompt` + `completion`",
                    opts.text_field
                )
            } else {
                e
            }
        })
    }
}

impl JsonRow for PreferenceRow {
    fn from_json(value: &Value, _opts: &ReadOptions) -> std::result::Result<Self, String> {
        let obj = object(value)?;
        let chosen = content("chosen", required(obj, "chosen")?)?;
        let rejected = content("rejected", required(obj, "rejected")?)?;
        same_kind(&[("chosen", &chosen), ("rejected", &rejected)])?;
        match obj.get("prompt") {
            Some(p) => {
                let prompt = content("prompt", p)?;
                same_kind(&[("prompt", &prompt), ("chosen", &chosen)])?;
                Ok(Self {
                    prompt,
                    chosen,
                    rejected,
                })
            }
            // Implicit prompt: TRL's `extract_prompt` when the dataset has no `prompt` column.
            None => extract_prompt(chosen, rejected).map_err(|e| e.to_string()),
        }
    }
}

impl JsonRow for UnpairedRow {
    fn from_json(value: &Value, _opts: &ReadOptions) -> std::result::Result<Self, String> {
        let obj = object(value)?;
        let prompt = content("prompt", required(obj, "prompt")?)?;
        let completion = content("completion", required(obj, "completion")?)?;
        same_kind(&[("prompt", &prompt), ("completion", &completion)])?;
        let label = match required(obj, "label")? {
            Value::Bool(b) => *b,
            Value::Number(n) if n.as_u64() == Some(0) => false,
            Value::Number(n) if n.as_u64() == Some(1) => true,
            other => {
                return Err(format!(
                    "`label`: expected a boolean (or 0/1), found {}",
                    if other.is_number() {
                        "another number"
                    } else {
                        kind(other)
                    }
                ));
            }
        };
        Ok(Self {
            prompt,
            completion,
            label,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn invalid_utf8_names_file_and_line() {
        let input: &[u8] = b"{\"text\": \"ok\"}\n\n{\"text\": \"\xc3(\"}\n";
        let err = parse_jsonl::<Document>(input, Path::new("d.jsonl"), &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("d.jsonl:3: invalid UTF-8"), "{err}");
        let skip = ReadOptions {
            skip_bad_lines: true,
            ..ReadOptions::default()
        };
        let loaded = parse_jsonl::<Document>(input, Path::new("d.jsonl"), &skip).unwrap();
        assert_eq!(loaded.rows.len(), 1);
        assert_eq!(loaded.row_lines, vec![1]);
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].line, 3);
        assert_eq!(loaded.blank_lines, 1);
        assert_eq!(loaded.left_out(64), "1 malformed (first: 3), 1 blank");
    }

    fn parse<T: JsonRow>(text: &str, opts: &ReadOptions) -> Result<Loaded<T>> {
        parse_jsonl(text.as_bytes(), Path::new("data.jsonl"), opts)
    }

    fn err_of<T: JsonRow + std::fmt::Debug>(text: &str) -> (usize, String) {
        match parse::<T>(text, &ReadOptions::default()).unwrap_err() {
            ObjectiveError::Data { path, line, msg } => {
                assert_eq!(path, Path::new("data.jsonl"));
                (line, msg)
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn reads_text_messages_and_sharegpt_documents() {
        let src = concat!(
            "{\"text\": \"hello\"}\n",
            "\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\", \"tool_calls\": null}]}\n",
            "{\"conversations\": [{\"from\": \"system\", \"value\": \"s\"}, {\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}\r\n",
        );
        let rows = parse::<Document>(src, &ReadOptions::default())
            .unwrap()
            .rows;
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], Document::Text("hello".into()));
        assert_eq!(
            rows[2],
            Document::Messages(vec![
                ChatMessage::new("system", "s"),
                ChatMessage::new("user", "q"),
                ChatMessage::new("assistant", "a"),
            ])
        );
        let opts = ReadOptions {
            text_field: "body".into(),
            ..ReadOptions::default()
        };
        let rows = parse::<Document>("{\"body\": \"x\"}", &opts).unwrap().rows;
        assert_eq!(rows, vec![Document::Text("x".into())]);
    }

    #[test]
    fn sft_rows_pick_the_shape() {
        let src = concat!(
            "{\"text\": \"t\"}\n",
            "{\"prompt\": \"The sky is\", \"completion\": \" blue.\"}\n",
            "{\"prompt\": [{\"role\": \"user\", \"content\": \"q\"}], \"completion\": [{\"from\": \"gpt\", \"value\": \"a\"}]}\n",
        );
        let rows = parse::<SftRow>(src, &ReadOptions::default()).unwrap().rows;
        assert!(matches!(rows[0], SftRow::Document(Document::Text(_))));
        assert_eq!(
            rows[1],
            SftRow::PromptCompletion(PromptCompletion {
                prompt: Content::Text("The sky is".into()),
                completion: Content::Text(" blue.".into()),
            })
        );
        let SftRow::PromptCompletion(pc) = &rows[2] else {
            panic!("{:?}", rows[2])
        };
        assert_eq!(
            pc.completion,
            Content::Messages(vec![ChatMessage::new("assistant", "a")])
        );
    }

    #[test]
    fn preference_rows_explicit_and_implicit() {
        let src = concat!(
            "{\"prompt\": \"P\", \"chosen\": \" c\", \"rejected\": \" r\"}\n",
            "{\"chosen\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"good\"}], ",
            "\"rejected\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"bad\"}]}\n",
        );
        let rows = parse::<PreferenceRow>(src, &ReadOptions::default())
            .unwrap()
            .rows;
        assert_eq!(rows[0].prompt, Content::Text("P".into()));
        assert_eq!(
            rows[1].prompt,
            Content::Messages(vec![ChatMessage::new("user", "q")])
        );
        assert_eq!(
            rows[1].rejected,
            Content::Messages(vec![ChatMessage::new("assistant", "bad")])
        );
    }

    #[test]
    fn unpaired_rows() {
        let src = "{\"prompt\": \"p\", \"completion\": \"c\", \"label\": true}\n{\"prompt\": \"p\", \"completion\": \"c\", \"label\": 0}";
        let rows = parse::<UnpairedRow>(src, &ReadOptions::default())
            .unwrap()
            .rows;
        assert_eq!(
            rows.iter().map(|r| r.label).collect::<Vec<_>>(),
            vec![true, false]
        );
        let (line, msg) =
            err_of::<UnpairedRow>("{\"prompt\": \"p\", \"completion\": \"c\", \"label\": \"yes\"}");
        assert_eq!(line, 1);
        assert!(msg.contains("`label`") && msg.contains("a string"), "{msg}");
        let (_, msg) = err_of::<UnpairedRow>("{\"prompt\": \"p\", \"completion\": \"c\"}");
        assert_eq!(msg, "missing field `label`");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let (line, msg) = err_of::<PreferenceRow>(
            "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}\n\n{\"prompt\": \"p\", \"chosen\": \"c\"}\n",
        );
        assert_eq!((line, msg.as_str()), (3, "missing field `rejected`"));
        let (_, msg) = err_of::<SftRow>("{\"prompt\": 3, \"completion\": \"c\"}");
        assert!(
            msg.contains("`prompt`") && msg.contains("a number"),
            "{msg}"
        );
        let (_, msg) =
            err_of::<SftRow>("{\"messages\": [{\"role\": \"user\", \"content\": null}]}");
        assert!(
            msg.contains("`messages[0].content`") && msg.contains("null"),
            "{msg}"
        );
        let (_, msg) = err_of::<SftRow>("{\"messages\": []}");
        assert!(msg.contains("empty"), "{msg}");
        let (_, msg) = err_of::<SftRow>("{\"foo\": 1}");
        assert!(msg.contains("missing field"), "{msg}");
        let (_, msg) = err_of::<SftRow>(
            "{\"prompt\": \"p\", \"completion\": [{\"role\": \"assistant\", \"content\": \"c\"}]}",
        );
        assert!(msg.contains("all strings or all message lists"), "{msg}");
        let (_, msg) = err_of::<Document>("[1, 2]");
        assert!(msg.contains("expected a JSON object"), "{msg}");
        let (line, msg) = err_of::<Document>("{\"text\": \"a\"}\n{\"text\": \"unterminated}\n");
        assert_eq!(line, 2);
        assert!(msg.starts_with("invalid JSON"), "{msg}");
        let err = parse::<Document>("{\"text\": 1}", &ReadOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "data.jsonl:1: `text`: expected a string, found a number"
        );
    }

    #[test]
    fn skipping_counts_bad_lines() {
        let opts = ReadOptions {
            skip_bad_lines: true,
            ..ReadOptions::default()
        };
        let src = "{\"text\": \"a\"}\nnot json\n{\"text\": 2}\n{\"text\": \"b\"}\n";
        let loaded = parse::<Document>(src, &opts).unwrap();
        assert_eq!(loaded.rows.len(), 2);
        assert_eq!(
            loaded.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn read_jsonl_reports_missing_files_and_reads_real_files() {
        let err =
            read_jsonl::<Document>("/nonexistent/x.jsonl", &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, ObjectiveError::Io { .. }), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "\u{feff}{\"text\": \"a\"}\n{\"oops\": 1}\n").unwrap();
        let rows = read_jsonl::<Document>(&path, &ReadOptions::default());
        match rows.unwrap_err() {
            ObjectiveError::Data { path: p, line, .. } => assert_eq!((p, line), (path, 2)),
            other => panic!("{other}"),
        }
    }
}
