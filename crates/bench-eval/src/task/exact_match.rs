//! lm-eval's `exact_match` (its copy of HF evaluate's): optional regexes removed from both
//! strings, then case, ASCII punctuation and digits dropped as asked, then string equality
//! (no trimming: a leading space in the answer makes it wrong unless a filter or a regex
//! removes it). Several gold answers: a hit on any.

use std::path::Path;

use regex::Regex;
use serde_json::{Map, Value};

use super::filter::python_regex;
use crate::{EvalError, Result};

/// Python's `string.punctuation`.
const PUNCTUATION: &str = r##"!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~"##;

/// The options of a `metric_list` entry `metric: exact_match`.
#[derive(Debug, Clone, Default)]
pub struct ExactMatch {
    pub regexes_to_ignore: Vec<Regex>,
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
    pub ignore_numbers: bool,
}

fn error(path: &Path, key: &str, reason: impl Into<String>) -> EvalError {
    EvalError::Task {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl ExactMatch {
    /// Read the options of one `metric_list` entry (`key` names it in errors).
    ///
    /// # Errors
    /// Options exact_match does not have, values of the wrong type, patterns that do not
    /// compile.
    pub fn parse(path: &Path, key: &str, entry: &Map<String, Value>) -> Result<Self> {
        let mut out = Self::default();
        for (k, v) in entry {
            let at = format!("{key}.{k}");
            let flag = |v: &Value| {
                v.as_bool()
                    .ok_or_else(|| error(path, &at, format!("must be true or false, is {v}")))
            };
            match k.as_str() {
                // Reporting only: lm-eval's registry has the same values for exact_match.
                "metric" | "aggregation" | "higher_is_better" => {}
                "ignore_case" => out.ignore_case = flag(v)?,
                "ignore_punctuation" => out.ignore_punctuation = flag(v)?,
                "ignore_numbers" => out.ignore_numbers = flag(v)?,
                "regexes_to_ignore" => {
                    let Value::Array(items) = v else {
                        return Err(error(path, &at, "must be a list of patterns"));
                    };
                    for (i, item) in items.iter().enumerate() {
                        let Value::String(p) = item else {
                            return Err(error(path, &at, format!("{item} is not a pattern")));
                        };
                        out.regexes_to_ignore
                            .push(python_regex(path, &format!("{at}[{i}]"), p)?);
                    }
                }
                _ => {
                    return Err(error(
                        path,
                        &at,
                        "not an option of exact_match (ignore_case, ignore_punctuation, \
                         ignore_numbers, regexes_to_ignore)",
                    ));
                }
            }
        }
        Ok(out)
    }

    fn normalise(&self, s: &str) -> String {
        let mut s = s.to_string();
        for re in &self.regexes_to_ignore {
            s = re.replace_all(&s, "").into_owned();
        }
        if self.ignore_case {
            s = s.to_lowercase();
        }
        if self.ignore_punctuation {
            s.retain(|c| !PUNCTUATION.contains(c));
        }
        if self.ignore_numbers {
            s.retain(|c| !c.is_ascii_digit());
        }
        s
    }

    /// 1 if `prediction` equals any of `golds` after normalising both, else 0.
    pub fn score(&self, prediction: &str, golds: &[String]) -> f64 {
        let p = self.normalise(prediction);
        f64::from(u8::from(golds.iter().any(|g| self.normalise(g) == p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn em(yaml: &str) -> ExactMatch {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap_or(Value::Null);
        let map = v.as_object().cloned().unwrap_or_default();
        ExactMatch::parse(Path::new("t.yaml"), "metric_list[0]", &map).unwrap_or_default()
    }

    #[test]
    fn options_follow_hf_evaluate() {
        let plain = em("{metric: exact_match}");
        assert_eq!(plain.score("yes", &["yes".into()]), 1.0);
        assert_eq!(plain.score(" yes", &["yes".into()]), 0.0);
        assert_eq!(plain.score("Yes", &["yes".into()]), 0.0);
        let loose = em(
            r#"{metric: exact_match, ignore_case: true, ignore_punctuation: true,
                regexes_to_ignore: [",", "\\$", "(?s).*#### ", "\\.$"]}"#,
        );
        assert_eq!(loose.score("The total is $1,200.", &["1200".into()]), 0.0);
        assert_eq!(loose.score("work... #### $1,200.", &["1200".into()]), 1.0);
        assert_eq!(loose.score("B!", &["a".into(), "b".into()]), 1.0);
        let numbers = em("{metric: exact_match, ignore_numbers: true}");
        assert_eq!(numbers.score("a1b2", &["ab".into()]), 1.0);
    }

    #[test]
    fn unknown_options_are_errors() {
        let v: Value = serde_yaml_ng::from_str("{metric: exact_match, ignore_spaces: true}")
            .unwrap_or(Value::Null);
        let map = v.as_object().cloned().unwrap_or_default();
        let e = ExactMatch::parse(Path::new("t.yaml"), "metric_list[0]", &map)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("metric_list[0].ignore_spaces"), "{e}");
    }
}
