//! An lm-evaluation-harness 0.4 task YAML, as far as Temper runs it.
//!
//! `include:` files are merged under the including file (its keys win), paths relative to the
//! including file, as lm-eval does. Keys that only label a task (`tag`, `metadata`, ...) are
//! accepted; keys that would change the computation and that Temper does not implement — and
//! anything needing Python (`!function`, `process_docs`, `process_results`) — are errors naming
//! the key, never silently ignored.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::generate::GenerateSpec;
use crate::{EvalError, Result};

/// `output_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// One log-likelihood request per choice; `acc`, `acc_norm`, `acc_mutual_info`.
    MultipleChoice,
    /// The log-likelihood of the whole `doc_to_target` text in rolling windows;
    /// `word_perplexity`, `byte_perplexity`, `bits_per_byte`.
    LoglikelihoodRolling,
    /// A generated answer per document, cut at stop strings, filtered; `exact_match`.
    GenerateUntil,
}

impl OutputType {
    /// The metrics this output type computes (the first ones are the default `metric_list`
    /// of a multiple-choice task; all of them for a rolling one, as lm-eval's registry).
    fn metrics(self) -> &'static [&'static str] {
        match self {
            Self::MultipleChoice => MC_METRICS,
            Self::LoglikelihoodRolling => ROLLING_METRICS,
            Self::GenerateUntil => &["exact_match"],
        }
    }
}

/// How few-shot examples are drawn (`fewshot_config.sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// lm-eval's `default`: `random.Random(seed).sample`, one generator for the whole task.
    Default,
    /// The first `n` documents of the few-shot split (MMLU's choice).
    FirstN,
}

/// A parsed task.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// The YAML file (errors name it; relative data paths start from its folder).
    pub path: PathBuf,
    pub task: String,
    pub alias: Option<String>,
    pub dataset_path: String,
    /// `dataset_kwargs.data_files`: split → files (a bare file or list is the `train` split).
    pub data_files: Vec<(String, Vec<String>)>,
    pub training_split: Option<String>,
    pub validation_split: Option<String>,
    pub test_split: Option<String>,
    pub fewshot_split: Option<String>,
    pub num_fewshot: usize,
    pub sampler: Sampler,
    pub description: String,
    pub doc_to_text: Value,
    pub doc_to_target: Value,
    pub doc_to_choice: Option<Value>,
    pub target_delimiter: String,
    pub fewshot_delimiter: String,
    pub output_type: OutputType,
    /// Metric names of `metric_list` (default `acc`).
    pub metrics: Vec<String>,
    pub version: Option<Value>,
    /// `generation_kwargs`, `filter_list` and exact_match's options of a `generate_until`
    /// task.
    pub generation: Option<GenerateSpec>,
    /// The merged YAML as JSON (written back in the results' `configs`).
    pub raw: Map<String, Value>,
}

/// Keys that label or document a task without changing its numbers.
const LABELS: &[&str] = &[
    "tag",
    "group",
    "task_alias",
    "metadata",
    "should_decontaminate",
    "doc_to_decontamination_query",
    "dataset_name",
    "repeats",
    "unsafe_code",
];

/// Keys Temper reads.
const READ: &[&str] = &[
    "task",
    "dataset_path",
    "dataset_kwargs",
    "training_split",
    "validation_split",
    "test_split",
    "fewshot_split",
    "num_fewshot",
    "fewshot_config",
    "description",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "target_delimiter",
    "fewshot_delimiter",
    "output_type",
    "metric_list",
    "include",
    "generation_kwargs",
    "filter_list",
];

/// Metrics a multiple-choice task can ask for.
const MC_METRICS: &[&str] = &["acc", "acc_norm", "acc_bytes", "acc_mutual_info"];

/// Metrics of a `loglikelihood_rolling` task (all three are its default).
const ROLLING_METRICS: &[&str] = &["word_perplexity", "byte_perplexity", "bits_per_byte"];

/// Bound on `include` chains (a file including itself is an error, not a loop).
const MAX_INCLUDE_DEPTH: usize = 16;

fn task_error(path: &Path, key: &str, reason: impl Into<String>) -> EvalError {
    EvalError::Task {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The YAML of `path` with its `include`s merged, as a JSON object.
pub(crate) fn read_merged(path: &Path, depth: usize) -> Result<Map<String, Value>> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(task_error(
            path,
            "include",
            format!("more than {MAX_INCLUDE_DEPTH} nested includes (a cycle?)"),
        ));
    }
    let text = temper_formats::read_regular_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| task_error(path, "(yaml)", format!("invalid YAML: {e}")))?;
    let serde_yaml_ng::Value::Mapping(map) = yaml else {
        return Err(task_error(
            path,
            "(yaml)",
            "the file is not a mapping of keys",
        ));
    };
    let mut out = Map::new();
    for (k, v) in map {
        let key = match k {
            serde_yaml_ng::Value::String(s) => s,
            other => {
                return Err(task_error(
                    path,
                    &format!("{other:?}"),
                    "keys must be strings",
                ));
            }
        };
        out.insert(key.clone(), yaml_to_json(path, &key, v)?);
    }
    merge_include(path, out, depth)
}

/// `path` and the files it includes, in order (the same chain [`read_merged`] follows).
///
/// # Errors
/// As [`read_merged`].
pub(crate) fn read_include_chain(path: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut chain = vec![path.to_path_buf()];
    let mut at = path.to_path_buf();
    while chain.len() <= MAX_INCLUDE_DEPTH + 1 {
        let text = temper_formats::read_regular_to_string(&at).map_err(|source| EvalError::Io {
            path: at.clone(),
            source,
        })?;
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| task_error(&at, "(yaml)", format!("invalid YAML: {e}")))?;
        let Some(name) = yaml.get("include").and_then(serde_yaml_ng::Value::as_str) else {
            return Ok(chain);
        };
        at = at.parent().unwrap_or(Path::new(".")).join(name);
        chain.push(at.clone());
    }
    Err(task_error(
        path,
        "include",
        format!("more than {MAX_INCLUDE_DEPTH} nested includes (a cycle?)"),
    ))
}

/// `map` (read from `path`, or written inline in a group YAML there) with its `include`
/// merged under it: the included file's keys, overridden by `map`'s.
pub(crate) fn merge_include(
    path: &Path,
    mut map: Map<String, Value>,
    depth: usize,
) -> Result<Map<String, Value>> {
    if let Some(include) = map.remove("include") {
        let Value::String(name) = include else {
            return Err(task_error(path, "include", "must be a file name"));
        };
        let base = path.parent().unwrap_or(Path::new(".")).join(&name);
        let mut merged = read_merged(&base, depth + 1)?;
        merged.extend(map);
        return Ok(merged);
    }
    Ok(map)
}

fn yaml_to_json(path: &Path, key: &str, v: serde_yaml_ng::Value) -> Result<Value> {
    use serde_yaml_ng::Value as Y;
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            serde_json::to_value(&n).map_err(|e| task_error(path, key, format!("number: {e}")))?
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(seq) => Value::Array(
            seq.into_iter()
                .map(|x| yaml_to_json(path, key, x))
                .collect::<Result<_>>()?,
        ),
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let Y::String(k) = k else {
                    return Err(task_error(path, key, "nested keys must be strings"));
                };
                let inner = format!("{key}.{k}");
                out.insert(k, yaml_to_json(path, &inner, v)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => {
            return Err(task_error(
                path,
                key,
                format!(
                    "`{}` needs Python (lm-eval imports a function here); Temper runs \
                     declarative tasks only: write it as a Jinja template or a field name",
                    t.tag
                ),
            ));
        }
    })
}

fn string(path: &Path, map: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(task_error(
            path,
            key,
            format!("must be a string, is {other}"),
        )),
    }
}

fn files(path: &Path, key: &str, v: &Value) -> Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                other => Err(task_error(path, key, format!("a file name, not {other}"))),
            })
            .collect(),
        other => Err(task_error(path, key, format!("files, not {other}"))),
    }
}

impl TaskConfig {
    /// Read and check a task YAML.
    ///
    /// # Errors
    /// [`EvalError::Task`] naming the file and key: invalid YAML, a missing `task` /
    /// `dataset_path` / `doc_to_text` / `doc_to_target`, Python hooks, unsupported keys or
    /// values.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_raw(path, read_merged(path, 0)?)
    }

    /// Check a task already read (includes merged): a group's member with the group's
    /// overrides applied. `path` is the YAML it came from (errors name it; data paths start
    /// from its folder).
    ///
    /// # Errors
    /// As [`TaskConfig::load`].
    pub fn from_raw(path: &Path, raw: Map<String, Value>) -> Result<Self> {
        for key in raw.keys() {
            if LABELS.contains(&key.as_str()) || READ.contains(&key.as_str()) {
                continue;
            }
            let reason = match key.as_str() {
                "process_docs" | "process_results" => {
                    "needs Python; Temper runs declarative tasks only".to_string()
                }
                _ => "not supported by Temper's lm-eval task reader (it would change the \
                      computation, so it is refused rather than ignored)"
                    .to_string(),
            };
            return Err(task_error(path, key, reason));
        }
        let need = |key: &str| -> Result<Value> {
            raw.get(key)
                .cloned()
                .ok_or_else(|| task_error(path, key, "is required"))
        };
        let task =
            string(path, &raw, "task")?.ok_or_else(|| task_error(path, "task", "is required"))?;
        let dataset_path = string(path, &raw, "dataset_path")?
            .ok_or_else(|| task_error(path, "dataset_path", "is required"))?;
        let mut data_files = Vec::new();
        if let Some(kwargs) = raw.get("dataset_kwargs") {
            let Value::Object(kwargs) = kwargs else {
                return Err(task_error(path, "dataset_kwargs", "must be a mapping"));
            };
            for (k, v) in kwargs {
                if k != "data_files" {
                    return Err(task_error(
                        path,
                        &format!("dataset_kwargs.{k}"),
                        "not supported (only data_files)",
                    ));
                }
                match v {
                    Value::Object(splits) => {
                        for (split, f) in splits {
                            let key = format!("dataset_kwargs.data_files.{split}");
                            data_files.push((split.clone(), files(path, &key, f)?));
                        }
                    }
                    other => data_files.push((
                        "train".into(),
                        files(path, "dataset_kwargs.data_files", other)?,
                    )),
                }
            }
        }
        let num_fewshot = match raw.get("num_fewshot") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= 1024)
                .ok_or_else(|| {
                    task_error(path, "num_fewshot", format!("must be 0..=1024, is {v}"))
                })?,
        };
        let mut sampler = Sampler::Default;
        if let Some(fs) = raw.get("fewshot_config") {
            let Value::Object(fs) = fs else {
                return Err(task_error(path, "fewshot_config", "must be a mapping"));
            };
            for (k, v) in fs {
                match (k.as_str(), v) {
                    ("sampler", Value::String(s)) if s == "first_n" => sampler = Sampler::FirstN,
                    ("sampler", Value::String(s)) if s == "default" => sampler = Sampler::Default,
                    ("sampler", other) => {
                        return Err(task_error(
                            path,
                            "fewshot_config.sampler",
                            format!("`{other}`: Temper has `default` and `first_n`"),
                        ));
                    }
                    _ => {
                        return Err(task_error(
                            path,
                            &format!("fewshot_config.{k}"),
                            "not supported (only sampler)",
                        ));
                    }
                }
            }
        }
        let output_type = match string(path, &raw, "output_type")?.as_deref() {
            None | Some("multiple_choice") => OutputType::MultipleChoice,
            Some("loglikelihood_rolling") => OutputType::LoglikelihoodRolling,
            Some("generate_until") => OutputType::GenerateUntil,
            Some(other) => {
                return Err(task_error(
                    path,
                    "output_type",
                    format!(
                        "`{other}` is not supported (Temper runs multiple_choice, \
                         loglikelihood_rolling and generate_until tasks)"
                    ),
                ));
            }
        };
        let mut metrics = Vec::new();
        if let Some(list) = raw.get("metric_list") {
            let Value::Array(items) = list else {
                return Err(task_error(path, "metric_list", "must be a list"));
            };
            for item in items {
                let name = item
                    .get("metric")
                    .and_then(Value::as_str)
                    .ok_or_else(|| task_error(path, "metric_list", "each entry needs `metric`"))?;
                let allowed = output_type.metrics();
                if !allowed.contains(&name) {
                    return Err(task_error(
                        path,
                        "metric_list",
                        format!(
                            "metric `{name}` is not one of this output_type's: {}",
                            allowed.join(", ")
                        ),
                    ));
                }
                metrics.push(name.to_string());
            }
        }
        if metrics.is_empty() {
            metrics = match output_type {
                OutputType::MultipleChoice => vec!["acc".into(), "acc_norm".into()],
                OutputType::LoglikelihoodRolling => {
                    ROLLING_METRICS.iter().map(|m| (*m).to_string()).collect()
                }
                OutputType::GenerateUntil => vec!["exact_match".into()],
            };
        }
        for key in ["generation_kwargs", "filter_list"] {
            if output_type != OutputType::GenerateUntil && raw.contains_key(key) {
                return Err(task_error(
                    path,
                    key,
                    "only a generate_until task generates",
                ));
            }
        }
        let fewshot_delimiter =
            string(path, &raw, "fewshot_delimiter")?.unwrap_or_else(|| "\n\n".into());
        let generation = (output_type == OutputType::GenerateUntil)
            .then(|| GenerateSpec::parse(path, &raw, &fewshot_delimiter))
            .transpose()?;
        let doc_to_choice = raw.get("doc_to_choice").cloned();
        if output_type == OutputType::MultipleChoice && doc_to_choice.is_none() {
            return Err(task_error(
                path,
                "doc_to_choice",
                "a multiple_choice task needs its choices",
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            alias: string(path, &raw, "task_alias")?,
            data_files,
            training_split: string(path, &raw, "training_split")?,
            validation_split: string(path, &raw, "validation_split")?,
            test_split: string(path, &raw, "test_split")?,
            fewshot_split: string(path, &raw, "fewshot_split")?,
            num_fewshot,
            sampler,
            description: string(path, &raw, "description")?.unwrap_or_default(),
            // A rolling task scores `doc_to_target` alone (lm-eval's wikitext sets
            // `doc_to_text: ""`), so it may leave the prompt out.
            doc_to_text: match output_type {
                OutputType::LoglikelihoodRolling => raw
                    .get("doc_to_text")
                    .cloned()
                    .unwrap_or_else(|| Value::String(String::new())),
                OutputType::MultipleChoice | OutputType::GenerateUntil => need("doc_to_text")?,
            },
            doc_to_target: need("doc_to_target")?,
            doc_to_choice,
            target_delimiter: string(path, &raw, "target_delimiter")?.unwrap_or_else(|| " ".into()),
            fewshot_delimiter,
            generation,
            output_type,
            metrics,
            version: raw.get("metadata").and_then(|m| m.get("version")).cloned(),
            task,
            dataset_path,
            raw,
        })
    }

    /// The split evaluated: `test_split`, else `validation_split` (lm-eval's order).
    ///
    /// # Errors
    /// Neither is set.
    pub fn eval_split(&self) -> Result<&str> {
        self.test_split
            .as_deref()
            .or(self.validation_split.as_deref())
            .ok_or_else(|| {
                task_error(
                    &self.path,
                    "test_split",
                    "no test_split or validation_split",
                )
            })
    }

    /// The split few-shot examples come from: `fewshot_split`, else training, validation,
    /// then the test split (lm-eval's order).
    pub fn fewshot_split(&self) -> Option<&str> {
        self.fewshot_split
            .as_deref()
            .or(self.training_split.as_deref())
            .or(self.validation_split.as_deref())
            .or(self.test_split.as_deref())
    }
}
