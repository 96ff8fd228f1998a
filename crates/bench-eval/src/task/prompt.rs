//! `doc_to_text` / `doc_to_target` / `doc_to_choice` and the few-shot context, as lm-eval 0.4
//! builds them for a multiple-choice task.
//!
//! A spec that names a field of the document is that field; any other string is a Jinja
//! template rendered with the document's fields (strict undefined, trailing newline kept, as
//! lm-eval's environment), with CPython's string methods and lists' `.index()`. A rendered
//! target made of digits is a choice index. Choices rendered from a template are read as a
//! Python literal list by lm-eval (`ast.literal_eval`): Temper evaluates a template that is a
//! single `{{ expression }}` directly to its list, and reads other renders as a literal list.

use std::collections::HashMap;

use minijinja::value::Value as JValue;
use minijinja::{Error as JinjaError, ErrorKind, UndefinedBehavior};
use serde_json::Value;
use temper_llm_arch::BoundedTemplate;

use super::config::TaskConfig;
use super::dataset::Doc;
use crate::{EvalError, Result};

/// A document's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Index(usize),
    Text(String),
}

/// The templates of one task, compiled once, rendered within the chat templates' limits
/// (steps, recursion, value and output sizes: a task YAML is a downloaded file too).
#[derive(Debug)]
pub struct Prompter<'t> {
    config: &'t TaskConfig,
    /// By YAML key; `doc_to_choice=` is the choices spec as one expression, rendered to JSON.
    templates: HashMap<&'static str, BoundedTemplate>,
}

fn regex_replace(
    s: String,
    pattern: String,
    repl: String,
) -> std::result::Result<String, JinjaError> {
    // Every match could become the replacement: bound the result before building it.
    let bound = (s.len() as u64 + 1).saturating_mul(repl.len() as u64 + 1);
    BoundedTemplate::check_size("filter `regex_replace`", bound)?;
    let re = regex::Regex::new(&pattern)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("regex_replace: {e}")))?;
    // Python's `\1` back-references are `${1}` here.
    let backref = regex::Regex::new(r"\\(\d+)")
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("regex_replace: {e}")))?;
    let repl = backref.replace_all(&repl, "$${$1}");
    Ok(re.replace_all(&s, repl.as_ref()).into_owned())
}

/// The expression of a template that is exactly one `{{ expression }}`.
fn single_expression(template: &str) -> Option<&str> {
    let inner = template.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then(|| inner.trim())
}

/// `ast.literal_eval` of a list of strings or numbers, as Python prints one.
fn literal_list(text: &str) -> Option<Vec<String>> {
    let t = text.trim();
    let inner = t.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        if c == '\'' || c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '\\' => match chars.next()? {
                        'n' => s.push('\n'),
                        't' => s.push('\t'),
                        other => s.push(other),
                    },
                    q if q == c => break,
                    other => s.push(other),
                }
            }
            out.push(s);
        } else {
            let mut s = String::new();
            while let Some(&d) = chars.peek() {
                if d == ',' {
                    break;
                }
                s.push(d);
                chars.next();
            }
            let s = s.trim().to_string();
            s.parse::<f64>().ok()?;
            out.push(s);
        }
    }
    Some(out)
}

fn json_strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Value::Object(map) => json_strings(&Value::Array(map.values().cloned().collect())),
        _ => None,
    }
}

impl<'t> Prompter<'t> {
    /// Compile the task's templates.
    ///
    /// # Errors
    /// [`EvalError::Task`] naming the key of a template that does not compile.
    pub fn new(config: &'t TaskConfig) -> Result<Self> {
        let mut specs: Vec<(&'static str, String)> = Vec::new();
        for (key, spec) in [
            ("doc_to_text", Some(&config.doc_to_text)),
            ("doc_to_target", Some(&config.doc_to_target)),
            ("doc_to_choice", config.doc_to_choice.as_ref()),
        ] {
            if let Some(Value::String(s)) = spec {
                specs.push((key, s.clone()));
            }
        }
        if let Some(Value::String(s)) = &config.doc_to_choice
            && let Some(expr) = single_expression(s)
        {
            specs.push(("doc_to_choice=", format!("{{{{ ({expr}) | tojson }}}}")));
        }
        specs.push(("description", config.description.clone()));
        let mut templates = HashMap::new();
        for (key, source) in specs {
            let origin = format!("{} `{}`", config.path.display(), key.trim_end_matches('='));
            let mut t = BoundedTemplate::new(source, origin).map_err(|e| EvalError::Task {
                path: config.path.clone(),
                key: key.trim_end_matches('=').to_string(),
                reason: e.to_string(),
            })?;
            let env = t.environment_mut();
            // lm-eval's environment: StrictUndefined, keep_trailing_newline, `regex_replace`.
            env.set_undefined_behavior(UndefinedBehavior::Strict);
            env.set_keep_trailing_newline(true);
            env.add_filter("regex_replace", regex_replace);
            templates.insert(key, t);
        }
        Ok(Self { config, templates })
    }

    fn error(&self, key: &str, doc: usize, reason: impl std::fmt::Display) -> EvalError {
        EvalError::Task {
            path: self.config.path.clone(),
            key: key.to_string(),
            reason: format!("document {doc}: {reason}"),
        }
    }

    fn render(&self, key: &str, doc: &Doc, n: usize) -> Result<String> {
        let template = self
            .templates
            .get(key)
            .ok_or_else(|| self.error(key, n, "no template"))?;
        template
            .render(JValue::from_serialize(doc))
            .map_err(|e| self.error(key.trim_end_matches('='), n, e))
    }

    /// `doc_to_text`.
    ///
    /// # Errors
    /// Template errors, a field that is not a string, or an integer (lm-eval's multiple-input
    /// tasks, not supported).
    pub fn text(&self, spec: &Value, doc: &Doc, n: usize) -> Result<String> {
        match spec {
            Value::String(s) if doc.contains_key(s) => match &doc[s] {
                Value::String(t) => Ok(t.clone()),
                other => Err(self.error(
                    "doc_to_text",
                    n,
                    format!("field `{s}` is {other}, not text"),
                )),
            },
            Value::String(_) => {
                let text = self.render("doc_to_text", doc, n)?;
                if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(self.error(
                        "doc_to_text",
                        n,
                        "renders to an index: multiple-input tasks (Winogrande-style) are not \
                         supported",
                    ));
                }
                Ok(text)
            }
            other => Err(self.error("doc_to_text", n, format!("{other} is not supported"))),
        }
    }

    /// `doc_to_choice`.
    ///
    /// # Errors
    /// Template errors, or a value that is not a list of strings.
    pub fn choices(&self, spec: &Value, doc: &Doc, n: usize) -> Result<Vec<String>> {
        let not_list = |what: &str| {
            self.error(
                "doc_to_choice",
                n,
                format!("{what} is not a list of strings"),
            )
        };
        match spec {
            Value::String(s) if doc.contains_key(s) => {
                json_strings(&doc[s]).ok_or_else(|| not_list(s))
            }
            Value::String(_) => {
                if self.templates.contains_key("doc_to_choice=") {
                    let json = self.render("doc_to_choice=", doc, n)?;
                    if let Some(list) = serde_json::from_str::<Value>(&json)
                        .ok()
                        .as_ref()
                        .and_then(json_strings)
                    {
                        return Ok(list);
                    }
                }
                let text = self.render("doc_to_choice", doc, n)?;
                literal_list(&text).ok_or_else(|| not_list(&format!("`{text}`")))
            }
            other => json_strings(other).ok_or_else(|| not_list("the value")),
        }
    }

    /// `doc_to_target`: an index into the choices or a choice's text.
    ///
    /// # Errors
    /// Template errors, a list (multiple targets, not supported) or another type.
    pub fn target(&self, spec: &Value, doc: &Doc, n: usize) -> Result<Target> {
        let from_value = |v: &Value| -> Result<Target> {
            match v {
                Value::Number(x) => x
                    .as_u64()
                    .and_then(|i| usize::try_from(i).ok())
                    .map(Target::Index)
                    .ok_or_else(|| self.error("doc_to_target", n, format!("{x} is not an index"))),
                Value::String(s) => Ok(Target::Text(s.clone())),
                Value::Bool(b) => Ok(Target::Index(usize::from(*b))),
                other => Err(self.error(
                    "doc_to_target",
                    n,
                    format!("{other}: only one target (an index or a choice) is supported"),
                )),
            }
        };
        match spec {
            Value::Number(_) => from_value(spec),
            Value::String(s) if doc.contains_key(s) => from_value(&doc[s]),
            Value::String(_) => {
                let text = self.render("doc_to_target", doc, n)?;
                if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                    return text
                        .parse()
                        .map(Target::Index)
                        .map_err(|e| self.error("doc_to_target", n, e));
                }
                if text.starts_with('[') && text.ends_with(']') && literal_list(&text).is_some() {
                    return Err(self.error(
                        "doc_to_target",
                        n,
                        "several targets are not supported",
                    ));
                }
                Ok(Target::Text(text))
            }
            other => from_value(other),
        }
    }

    /// The gold answers of a `generate_until` document: with `doc_to_choice`, the chosen
    /// choice (lm-eval's `choices[gold]`); otherwise the target as text (`str()` of a number
    /// or boolean field), several where the field is a list or the template renders a Python
    /// list (lm-eval's multiple targets: a hit on any counts).
    ///
    /// # Errors
    /// Template errors, an index past the choices.
    pub fn gold_texts(&self, doc: &Doc, n: usize) -> Result<Vec<String>> {
        let spec = &self.config.doc_to_target;
        if let Some(choice_spec) = &self.config.doc_to_choice {
            let choices = self.choices(choice_spec, doc, n)?;
            return match self.target(spec, doc, n)? {
                Target::Index(i) => choices.get(i).map(|c| vec![c.clone()]).ok_or_else(|| {
                    self.error(
                        "doc_to_target",
                        n,
                        format!("index {i} is past the {} choices", choices.len()),
                    )
                }),
                Target::Text(t) => Ok(vec![t]),
            };
        }
        let python_str = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Bool(true) => "True".into(),
            Value::Bool(false) => "False".into(),
            other => other.to_string(),
        };
        Ok(match spec {
            Value::String(s) if doc.contains_key(s) => match &doc[s] {
                Value::Array(items) => items.iter().map(python_str).collect(),
                other => vec![python_str(other)],
            },
            Value::String(_) => {
                let text = self.render("doc_to_target", doc, n)?;
                match literal_list(&text) {
                    Some(list) if text.starts_with('[') && text.ends_with(']') => list,
                    _ => vec![text],
                }
            }
            other => vec![python_str(other)],
        })
    }

    /// The text of a description / field spec (`resolve_field`).
    fn resolve_field(&self, key: &str, spec: &str, doc: &Doc, n: usize) -> Result<String> {
        if spec.is_empty() {
            return Ok(String::new());
        }
        match doc.get(spec) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Ok(other.to_string()),
            None => self.render(key, doc, n),
        }
    }

    /// The gold index among `choices` (lm-eval's `choices.index(target)` for a text target);
    /// `None` when the target is not among them — lm-eval warns and scores the document wrong,
    /// and so does Temper.
    ///
    /// # Errors
    /// Template errors.
    pub fn gold(&self, doc: &Doc, n: usize, choices: &[String]) -> Result<Option<usize>> {
        let gold = match self.target(&self.config.doc_to_target, doc, n)? {
            Target::Index(i) => Some(i).filter(|&i| i < choices.len()),
            Target::Text(t) => choices.iter().position(|c| *c == t),
        };
        if gold.is_none() {
            tracing::warn!(
                task = %self.config.task,
                document = n,
                "the target is not one of the {} choices: scored as wrong (as lm-eval does)",
                choices.len()
            );
        }
        Ok(gold)
    }

    /// The answer text of a few-shot example.
    fn answer(&self, doc: &Doc, n: usize) -> Result<String> {
        let choices = match &self.config.doc_to_choice {
            Some(spec) => Some(self.choices(spec, doc, n)?),
            None => None,
        };
        match (self.target(&self.config.doc_to_target, doc, n)?, choices) {
            (Target::Index(i), Some(c)) => c.get(i).cloned().ok_or_else(|| {
                self.error(
                    "doc_to_target",
                    n,
                    format!("index {i} is past the {} choices", c.len()),
                )
            }),
            (Target::Index(i), None) => Ok(i.to_string()),
            (Target::Text(t), _) => Ok(t),
        }
    }

    /// lm-eval's turns of document `doc` (number `n`) with few-shot examples `shots`: the
    /// system prompt (`system_instruction` and the description, joined by the few-shot
    /// delimiter unless whitespace already separates them), then per example a user turn (its
    /// text, followed by the target delimiter in plain text) and an assistant turn (its answer,
    /// followed by the few-shot delimiter), then the document's text as the last user turn.
    ///
    /// # Errors
    /// Template errors naming the key and document.
    pub fn turns(
        &self,
        doc: &Doc,
        n: usize,
        shots: &[(usize, &Doc)],
        system_instruction: Option<&str>,
    ) -> Result<Vec<Turn>> {
        let c = self.config;
        let description = self.resolve_field("description", &c.description, doc, n)?;
        let system = maybe_delimit(
            system_instruction.unwrap_or(""),
            &description,
            &c.fewshot_delimiter,
        );
        let mut turns = Vec::with_capacity(2 * shots.len() + 2);
        if !system.is_empty() {
            turns.push(Turn::new("system", system, ""));
        }
        for &(m, shot) in shots {
            let text = self.text(&c.doc_to_text, shot, m)?;
            let answer = self.answer(shot, m)?;
            // lm-eval's `build_qa_turn`: an empty answer is no answer (no assistant turn, no
            // delimiters).
            if answer.is_empty() {
                turns.push(Turn::new("user", text, ""));
            } else {
                turns.push(Turn::new("user", text, &c.target_delimiter));
                turns.push(Turn::new("assistant", answer, &c.fewshot_delimiter));
            }
        }
        turns.push(Turn::new("user", self.text(&c.doc_to_text, doc, n)?, ""));
        Ok(turns)
    }

    /// The plain-text context of document `doc` (number `n`) with few-shot examples `shots`:
    /// the [`turns`](Self::turns) joined with their delimiters (description, then each
    /// example as `text + target_delimiter + answer + fewshot_delimiter`, then the text).
    ///
    /// # Errors
    /// Template errors naming the key and document.
    pub fn context(&self, doc: &Doc, n: usize, shots: &[(usize, &Doc)]) -> Result<String> {
        Ok(plain_text(&self.turns(doc, n, shots, None)?))
    }
}

/// One turn of a context before rendering: its role, text, and what follows it when the
/// turns are joined as plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: &'static str,
    pub content: String,
    pub delimiter: String,
}

impl Turn {
    fn new(role: &'static str, content: impl Into<String>, delimiter: &str) -> Self {
        Self {
            role,
            content: content.into(),
            delimiter: delimiter.to_string(),
        }
    }
}

/// The turns as one text, each followed by its delimiter.
pub fn plain_text(turns: &[Turn]) -> String {
    turns
        .iter()
        .flat_map(|t| [t.content.as_str(), t.delimiter.as_str()])
        .collect()
}

/// lm-eval's `maybe_delimit`: `prefix + delimiter + suffix`, without the delimiter when one
/// side is empty or whitespace already meets at the join.
fn maybe_delimit(prefix: &str, suffix: &str, delimiter: &str) -> String {
    match (prefix.chars().last(), suffix.chars().next()) {
        (None, _) => suffix.to_string(),
        (_, None) => prefix.to_string(),
        (Some(a), Some(b)) if a.is_whitespace() || b.is_whitespace() => format!("{prefix}{suffix}"),
        _ => format!("{prefix}{delimiter}{suffix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literal_lists_parse() {
        assert_eq!(
            literal_list(r#"['a', "b's", 'c\'d']"#),
            Some(vec!["a".into(), "b's".into(), "c'd".into()])
        );
        assert_eq!(
            literal_list("[1, 2.5]"),
            Some(vec!["1".into(), "2.5".into()])
        );
        assert_eq!(literal_list("not a list"), None);
        assert_eq!(literal_list("[foo]"), None);
    }
}
