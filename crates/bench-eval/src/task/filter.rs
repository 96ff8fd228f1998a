//! lm-eval's `filter_list`: named pipelines that turn a generated answer into the text the
//! metric compares (`regex` extraction, `take_first`, case and whitespace changes).
//!
//! Each document has one response here (`repeats: 1`), so a pipeline maps one string to one
//! string; `take_first` is then the identity, and a pipeline without it gives the same
//! metric as lm-eval's one-element list would. Patterns are Python `re` patterns compiled by
//! the `regex` crate: the common syntax is shared, and what it lacks (look-around,
//! back-references) is an error naming the key, not a different match.

use std::path::Path;

use regex::Regex;
use serde_json::Value;

use crate::{EvalError, Result};

/// lm-eval's `RegexFilter` defaults.
const DEFAULT_PATTERN: &str = r"#### (\-?[0-9\.\,]+)";
const DEFAULT_FALLBACK: &str = "[invalid]";

/// One step of a pipeline.
#[derive(Debug, Clone)]
pub enum FilterStep {
    /// `regex`: `findall`, pick `group_select` (negative from the end), first non-empty group
    /// of a multi-group match, stripped; `fallback` without a match.
    Regex {
        regex: Regex,
        group_select: i64,
        fallback: String,
    },
    TakeFirst,
    Lowercase,
    Uppercase,
    /// `remove_whitespace`: Python's `str.strip()`.
    RemoveWhitespace,
}

/// A named pipeline (`filter_list[i]`); the default one is `none` = `take_first`.
#[derive(Debug, Clone)]
pub struct FilterPipeline {
    pub name: String,
    pub steps: Vec<FilterStep>,
}

fn error(path: &Path, key: &str, reason: impl Into<String>) -> EvalError {
    EvalError::Task {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Python's `str.strip()` (its whitespace includes the separators U+001C..U+001F, which
/// Rust's `trim` keeps).
pub fn py_strip(s: &str) -> &str {
    let ws = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    s.trim_matches(ws)
}

/// Compile a Python `re` pattern: `\Z` (end of text in Python) is `\z` here.
///
/// # Errors
/// Syntax the `regex` crate does not have, naming `key`.
pub fn python_regex(path: &Path, key: &str, pattern: &str) -> Result<Regex> {
    let mut translated = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('Z') => translated.push_str(r"\z"),
                Some(next) => {
                    translated.push('\\');
                    translated.push(next);
                }
                None => translated.push('\\'),
            }
        } else {
            translated.push(c);
        }
    }
    Regex::new(&translated).map_err(|e| {
        error(
            path,
            key,
            format!(
                "pattern `{pattern}` cannot be compiled (Python `re` syntax beyond the \
                     `regex` crate's, such as look-around, is not supported): {e}"
            ),
        )
    })
}

impl FilterStep {
    fn parse(path: &Path, key: &str, spec: &Value) -> Result<Self> {
        let Value::Object(map) = spec else {
            return Err(error(
                path,
                key,
                "each filter step is a mapping with `function`",
            ));
        };
        let function = map
            .get("function")
            .and_then(Value::as_str)
            .ok_or_else(|| error(path, key, "each filter step needs `function`"))?;
        let allowed: &[&str] = match function {
            "regex" => &["function", "regex_pattern", "group_select", "fallback"],
            "take_first" | "lowercase" | "uppercase" | "remove_whitespace" => &["function"],
            other => {
                return Err(error(
                    path,
                    &format!("{key}.function"),
                    format!(
                        "`{other}` is not supported (Temper has regex, take_first, lowercase, \
                         uppercase, remove_whitespace)"
                    ),
                ));
            }
        };
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(error(
                path,
                &format!("{key}.{k}"),
                format!("not an argument of `{function}`"),
            ));
        }
        Ok(match function {
            "regex" => {
                let pattern = match map.get("regex_pattern") {
                    None => DEFAULT_PATTERN,
                    Some(Value::String(s)) => s.as_str(),
                    Some(other) => {
                        return Err(error(
                            path,
                            &format!("{key}.regex_pattern"),
                            format!("must be a string, is {other}"),
                        ));
                    }
                };
                let group_select = match map.get("group_select") {
                    None => 0,
                    Some(v) => v.as_i64().ok_or_else(|| {
                        error(
                            path,
                            &format!("{key}.group_select"),
                            format!("must be an integer, is {v}"),
                        )
                    })?,
                };
                let fallback = match map.get("fallback") {
                    None => DEFAULT_FALLBACK.to_string(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => {
                        return Err(error(
                            path,
                            &format!("{key}.fallback"),
                            format!("must be a string, is {other}"),
                        ));
                    }
                };
                Self::Regex {
                    regex: python_regex(path, &format!("{key}.regex_pattern"), pattern)?,
                    group_select,
                    fallback,
                }
            }
            "take_first" => Self::TakeFirst,
            "lowercase" => Self::Lowercase,
            "uppercase" => Self::Uppercase,
            _ => Self::RemoveWhitespace,
        })
    }

    /// Apply the step to one response.
    ///
    /// # Errors
    /// A `group_select` past the matches (lm-eval stops with an `IndexError` there).
    fn apply(&self, resp: &str) -> std::result::Result<String, String> {
        Ok(match self {
            Self::Regex {
                regex,
                group_select,
                fallback,
            } => {
                let found = findall(regex, resp);
                if found.is_empty() {
                    return Ok(fallback.clone());
                }
                let n = found.len() as i64;
                let i = if *group_select < 0 {
                    n + group_select
                } else {
                    *group_select
                };
                let Some(groups) = usize::try_from(i).ok().and_then(|i| found.get(i)) else {
                    return Err(format!(
                        "group_select {group_select} is past the {n} matches of `{}`",
                        regex.as_str()
                    ));
                };
                // One value (the whole match or the only group) is kept even when empty; of
                // several groups, the first non-empty one.
                let picked = if groups.len() == 1 {
                    Some(groups[0].as_str())
                } else {
                    groups.iter().map(String::as_str).find(|g| !g.is_empty())
                };
                match picked {
                    Some(p) => py_strip(p).to_string(),
                    None => py_strip(fallback).to_string(),
                }
            }
            Self::TakeFirst => resp.to_string(),
            Self::Lowercase => resp.to_lowercase(),
            Self::Uppercase => resp.to_uppercase(),
            Self::RemoveWhitespace => py_strip(resp).to_string(),
        })
    }
}

/// Python's `re.findall`: per match, the whole match (no groups) or each group's text (`""`
/// where a group did not take part).
fn findall(regex: &Regex, text: &str) -> Vec<Vec<String>> {
    let groups = regex.captures_len() - 1;
    regex
        .captures_iter(text)
        .map(|c| {
            if groups == 0 {
                vec![c[0].to_string()]
            } else {
                (1..=groups)
                    .map(|g| c.get(g).map_or(String::new(), |m| m.as_str().to_string()))
                    .collect()
            }
        })
        .collect()
}

impl FilterPipeline {
    /// lm-eval's default when a task has no `filter_list`.
    pub fn none() -> Self {
        Self {
            name: "none".into(),
            steps: vec![FilterStep::TakeFirst],
        }
    }

    /// `filter_list` of a task YAML (`None`: the default `none` pipeline).
    ///
    /// # Errors
    /// A malformed list, an unsupported function or argument, a pattern that does not
    /// compile; each names its key.
    pub fn parse_list(path: &Path, spec: Option<&Value>) -> Result<Vec<Self>> {
        let Some(spec) = spec else {
            return Ok(vec![Self::none()]);
        };
        let Value::Array(items) = spec else {
            return Err(error(path, "filter_list", "must be a list"));
        };
        let mut out: Vec<Self> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = format!("filter_list[{i}]");
            let name = item
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| error(path, &key, "each pipeline needs a `name`"))?;
            if out.iter().any(|p| p.name == name) {
                return Err(error(
                    path,
                    &key,
                    format!("the name `{name}` is used twice"),
                ));
            }
            if let Some(k) = item
                .as_object()
                .and_then(|m| m.keys().find(|k| *k != "name" && *k != "filter"))
            {
                return Err(error(path, &format!("{key}.{k}"), "not supported"));
            }
            let Some(Value::Array(steps)) = item.get("filter") else {
                return Err(error(
                    path,
                    &format!("{key}.filter"),
                    "must be a list of steps",
                ));
            };
            let steps = steps
                .iter()
                .enumerate()
                .map(|(j, s)| FilterStep::parse(path, &format!("{key}.filter[{j}]"), s))
                .collect::<Result<Vec<_>>>()?;
            out.push(Self {
                name: name.to_string(),
                steps,
            });
        }
        if out.is_empty() {
            return Err(error(path, "filter_list", "is empty"));
        }
        Ok(out)
    }

    /// Run the pipeline on one response.
    ///
    /// # Errors
    /// A step that fails (see [`FilterStep`]), described with the pipeline's name.
    pub fn apply(&self, resp: &str) -> std::result::Result<String, String> {
        let mut text = resp.to_string();
        for step in &self.steps {
            text = step
                .apply(&text)
                .map_err(|e| format!("filter `{}`: {e}", self.name))?;
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(yaml: &str) -> Vec<FilterPipeline> {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap_or(Value::Null);
        FilterPipeline::parse_list(Path::new("t.yaml"), Some(&v)).unwrap_or_default()
    }

    #[test]
    fn gsm8k_pipelines_extract_as_lm_eval() {
        // The two pipelines of lm-eval's gsm8k.yaml, on outputs whose results were taken
        // from Python's `re.findall` by hand.
        let p = pipeline(
            r#"
- name: strict-match
  filter:
    - function: regex
      regex_pattern: '#### (\-?[0-9\.\,]+)'
    - function: take_first
- name: flexible-extract
  filter:
    - function: regex
      group_select: -1
      regex_pattern: "(-?[$0-9.,]{2,})|(-?[0-9]+)"
    - function: take_first
"#,
        );
        assert_eq!(p.len(), 2);
        let out = "She pays 3 * 4 = 12 dollars, then 12 + 30 = 42.\n#### 42";
        assert_eq!(p[0].apply(out), Ok("42".into()));
        assert_eq!(p[1].apply(out), Ok("42".into()));
        let out = "The answer is 7 apples";
        assert_eq!(p[0].apply(out), Ok("[invalid]".into()));
        // Second group of the only match (the first group is empty).
        assert_eq!(p[1].apply(out), Ok("7".into()));
        assert_eq!(p[1].apply("no digits"), Ok("[invalid]".into()));
    }

    #[test]
    fn steps_follow_python() {
        let p = pipeline(
            r#"
- name: x
  filter:
    - function: remove_whitespace
    - function: lowercase
- name: y
  filter:
    - function: regex
      regex_pattern: "\\b([ABCD])\\b"
      group_select: 1
      fallback: "?"
"#,
        );
        assert_eq!(p[0].apply(" \u{1f}YES.\n"), Ok("yes.".into()));
        assert_eq!(p[1].apply("A or B"), Ok("B".into()));
        assert_eq!(p[1].apply("none"), Ok("?".into()));
        let err = p[1].apply("only A").err().unwrap_or_default();
        assert!(
            err.contains("filter `y`") && err.contains("group_select 1"),
            "{err}"
        );
        assert_eq!(py_strip("\u{1c} x \t"), "x");
    }

    #[test]
    fn unsupported_steps_and_patterns_name_their_key() {
        let bad = |yaml: &str| {
            let v: Value = serde_yaml_ng::from_str(yaml).unwrap_or(Value::Null);
            FilterPipeline::parse_list(Path::new("t.yaml"), Some(&v))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = bad("[{name: a, filter: [{function: majority_vote}]}]");
        assert!(
            e.contains("filter_list[0].filter[0].function") && e.contains("majority_vote"),
            "{e}"
        );
        let e = bad("[{name: a, filter: [{function: regex, regex_pattern: '(?<=x)y'}]}]");
        assert!(e.contains("filter_list[0].filter[0].regex_pattern"), "{e}");
        let e = bad("[{name: a, filter: [{function: take_first, k: 2}]}]");
        assert!(e.contains("filter_list[0].filter[0].k"), "{e}");
        let e = bad("[{name: a, filter: []}, {name: a, filter: []}]");
        assert!(e.contains("used twice"), "{e}");
        assert_eq!(
            FilterPipeline::parse_list(Path::new("t.yaml"), None)
                .map(|p| p[0].name.clone())
                .ok(),
            Some("none".into())
        );
    }

    #[test]
    fn end_of_text_anchor_is_translated() {
        let re = python_regex(Path::new("t"), "k", r"(\d+)\Z").map(|r| r.as_str().to_string());
        assert_eq!(re.ok().as_deref(), Some(r"(\d+)\z"));
    }
}
