//! lm-eval group YAMLs: a named list of tasks (and nested groups) whose scores are pooled.
//!
//! The numbers are lm-evaluation-harness 0.4.13's (`lm_eval/api/group.py`, `Group.aggregate`;
//! `lm_eval/api/metrics.py`): for each `aggregate_metric_list` entry, over the group's *leaf*
//! tasks (nested groups flattened) that report the metric,
//! * the value is the mean of the tasks' values weighted by their document counts
//!   (`weight_by_size: true`, the default) or the plain mean of the task values;
//! * the standard error is the pooled one, `sqrt(Σ (nᵢ−1)·nᵢ·seᵢ² / (Σnᵢ − k) / Σnᵢ)` —
//!   the pooled variance of the tasks' documents over their total count — or, unweighted,
//!   `sqrt(Σ seᵢ²) / k`; `"N/A"` when a task has none (perplexities);
//! * filters: `filter_list`, else every filter a leaf reports the metric under (`none` for
//!   the filterless multiple-choice metrics);
//! * the group's `results` entry carries `alias`, `name`, `sample_len`, the metric keys and
//!   `sample_count`, and a group with an aggregate is also listed under `groups`.
//!
//! A group without `aggregate_metric_list` only lists its tasks (`results` has its alias).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::run::TaskResult;
use crate::{EvalError, Result};

/// One `aggregate_metric_list` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AggMetric {
    pub metric: String,
    /// Weight each task by its document count (lm-eval's default).
    pub weight_by_size: bool,
    /// `filter_list`: the filters aggregated (`None`: every filter a leaf task reports the
    /// metric under, lm-eval 0.4.13's auto-discovery; `none` for the filterless metrics).
    pub filters: Option<Vec<String>>,
}

/// A member of a group: a task or a nested group, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Task(String),
    Group(String),
}

impl Member {
    /// The member's name (lm-eval's `group_subtasks` entry).
    pub fn name(&self) -> &str {
        match self {
            Self::Task(n) | Self::Group(n) => n,
        }
    }
}

/// A resolved group: its members are in [`super::registry::Selection`].
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The YAML it came from (errors name it).
    pub path: PathBuf,
    pub name: String,
    pub alias: Option<String>,
    pub aggregate: Vec<AggMetric>,
    pub members: Vec<Member>,
    /// `metadata.version` (lm-eval writes `"N/A"` without one).
    pub version: Option<Value>,
}

fn group_error(path: &Path, key: &str, reason: impl Into<String>) -> EvalError {
    EvalError::Task {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// `aggregate_metric_list` of a group YAML. lm-eval has only the `mean` aggregation.
///
/// # Errors
/// [`EvalError::Task`] naming the file and key.
pub fn parse_aggregate(path: &Path, value: Option<&Value>) -> Result<Vec<AggMetric>> {
    let key = "aggregate_metric_list";
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(group_error(path, key, format!("a list, not {other}"))),
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Object(entry) = item else {
            return Err(group_error(
                path,
                key,
                format!("an entry is {item}, not a mapping"),
            ));
        };
        let metric = entry
            .get("metric")
            .and_then(Value::as_str)
            .ok_or_else(|| group_error(path, key, "each entry needs `metric`"))?;
        for (k, v) in entry {
            let ok = match k.as_str() {
                "metric" => true,
                "aggregation" => v.as_str() == Some("mean"),
                "weight_by_size" => v.is_boolean(),
                "filter_list" => match v {
                    Value::Array(fs) => fs.iter().all(Value::is_string),
                    Value::String(_) | Value::Null => true,
                    _ => false,
                },
                _ => false,
            };
            if !ok {
                return Err(group_error(
                    path,
                    &format!("{key}.{k}"),
                    format!(
                        "`{v}` is not supported (aggregation: mean; weight_by_size: a bool; \
                         filter_list: filter names)"
                    ),
                ));
            }
        }
        out.push(AggMetric {
            metric: metric.to_string(),
            weight_by_size: entry
                .get("weight_by_size")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            filters: match entry.get("filter_list") {
                Some(Value::String(f)) => Some(vec![f.clone()]),
                Some(Value::Array(fs)) => Some(
                    fs.iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect(),
                ),
                _ => None,
            },
        });
    }
    Ok(out)
}

/// lm-eval's `aggregate_subtask_metrics`: the mean of `values` weighted by `sizes`, or the
/// plain mean when `weight_by_size` is false.
pub fn aggregate_subtask_metrics(values: &[f64], sizes: &[usize], weight_by_size: bool) -> f64 {
    let weight = |i: usize| {
        if weight_by_size {
            sizes.get(i).copied().unwrap_or(0) as f64
        } else {
            1.0
        }
    };
    let total: f64 = (0..values.len()).map(weight).sum();
    values
        .iter()
        .enumerate()
        .map(|(i, v)| v * weight(i))
        .sum::<f64>()
        / total
}

/// lm-eval's `pooled_sample_stderr`: the pooled variance of the tasks' documents over the
/// total count. NaN when it is undefined (as many documents as tasks: no degrees of freedom).
pub fn pooled_sample_stderr(stderrs: &[f64], sizes: &[usize]) -> f64 {
    let n: usize = sizes.iter().sum();
    if n <= sizes.len() {
        return f64::NAN;
    }
    let pooled_var = stderrs
        .iter()
        .zip(sizes)
        .map(|(se, &size)| (size as f64 - 1.0) * se * se * size as f64)
        .sum::<f64>()
        / (n - sizes.len()) as f64;
    (pooled_var / n as f64).sqrt()
}

/// lm-eval's `unweighted_mean_stderr`: the standard error of the plain mean of `k`
/// independent task means, `sqrt(Σ seᵢ²) / k`.
pub fn unweighted_mean_stderr(stderrs: &[f64]) -> f64 {
    stderrs.iter().map(|s| s * s).sum::<f64>().sqrt() / stderrs.len() as f64
}

/// A task's scores as the aggregation reads them: metric (`acc`, or `exact_match,<filter>`
/// for generation) → (value, standard error; NaN for none) and its evaluated document count.
#[derive(Debug, Clone, Default)]
pub struct TaskScores {
    pub metrics: Vec<(String, f64, f64)>,
    pub size: usize,
}

impl From<&TaskResult> for TaskScores {
    fn from(r: &TaskResult) -> Self {
        Self {
            metrics: r.metrics.clone(),
            size: r.samples.len(),
        }
    }
}

/// A metric's lm-eval key (`acc,none`), value and standard error.
type Metric = (String, f64, f64);

fn number_or_na(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        json!("N/A")
    }
}

/// The group's `results` entry from its leaf tasks' scores (`leaves` in member order, nested
/// groups flattened).
pub fn aggregate_group(
    group: &GroupSpec,
    leaves: &[String],
    scores: &BTreeMap<String, TaskScores>,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "alias".into(),
        Value::String(group.alias.clone().unwrap_or_else(|| group.name.clone())),
    );
    out.insert("name".into(), Value::String(group.name.clone()));
    if group.aggregate.is_empty() {
        return out;
    }
    let present: Vec<&TaskScores> = leaves.iter().filter_map(|t| scores.get(t)).collect();
    out.insert(
        "sample_len".into(),
        json!(present.iter().map(|s| s.size).sum::<usize>()),
    );
    // Every metric under its lm-eval key, `metric,filter` (`none` for the filterless).
    let keyed: Vec<(usize, Vec<Metric>)> = present
        .iter()
        .map(|s| {
            let metrics = s
                .metrics
                .iter()
                .map(|(m, v, se)| {
                    let key = if m.contains(',') {
                        m.clone()
                    } else {
                        format!("{m},none")
                    };
                    (key, *v, *se)
                })
                .collect();
            (s.size, metrics)
        })
        .collect();
    let mut counts = Map::new();
    for agg in &group.aggregate {
        let prefix = format!("{},", agg.metric);
        let filters: Vec<String> = match &agg.filters {
            Some(f) => f.clone(),
            None => keyed
                .iter()
                .flat_map(|(_, ms)| ms.iter())
                .filter_map(|(k, _, _)| k.strip_prefix(&prefix).map(str::to_string))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        for filter in filters {
            let key = format!("{}{filter}", prefix);
            let (mut values, mut stderrs, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
            for (size, ms) in &keyed {
                if let Some((_, v, se)) = ms.iter().find(|(k, _, _)| *k == key) {
                    values.push(*v);
                    stderrs.push(*se);
                    sizes.push(*size);
                }
            }
            if values.is_empty() {
                continue;
            }
            let mean = aggregate_subtask_metrics(&values, &sizes, agg.weight_by_size);
            out.insert(key.clone(), json!(mean));
            let se = if stderrs.iter().all(|s| s.is_finite()) {
                if agg.weight_by_size {
                    pooled_sample_stderr(&stderrs, &sizes)
                } else {
                    unweighted_mean_stderr(&stderrs)
                }
            } else {
                f64::NAN
            };
            out.insert(format!("{}_stderr,{filter}", agg.metric), number_or_na(se));
            counts.insert(key, json!(sizes.iter().sum::<usize>()));
        }
    }
    if !counts.is_empty() {
        out.insert("sample_count".into(), Value::Object(counts));
    }
    out
}

/// The groups' part of lm-eval's results JSON: `results[group]`, `groups` (those with an
/// aggregate), `group_subtasks`, and the groups' `versions` and `n-shot` (the members'
/// common few-shot count, when they share one). `leaves(group)` flattens nested groups.
pub fn groups_json(
    groups: &[GroupSpec],
    leaves: impl Fn(&GroupSpec) -> Vec<String>,
    results: &[TaskResult],
) -> Value {
    let scores: BTreeMap<String, TaskScores> = results
        .iter()
        .map(|r| (r.config.task.clone(), TaskScores::from(r)))
        .collect();
    let mut nshot: BTreeMap<String, usize> = results
        .iter()
        .map(|r| (r.config.task.clone(), r.num_fewshot))
        .collect();
    let (mut res, mut with_agg, mut subtasks, mut versions, mut nshots) =
        (Map::new(), Map::new(), Map::new(), Map::new(), Map::new());
    // Nested groups come after their parents in `groups`; their n-shot is needed first.
    for g in groups.iter().rev() {
        let shots: std::collections::BTreeSet<usize> = g
            .members
            .iter()
            .filter_map(|m| nshot.get(m.name()).copied())
            .collect();
        if let (1, Some(&n)) = (shots.len(), shots.iter().next()) {
            nshot.insert(g.name.clone(), n);
            nshots.insert(g.name.clone(), json!(n));
        }
    }
    for g in groups {
        let entry = aggregate_group(g, &leaves(g), &scores);
        if !g.aggregate.is_empty() {
            with_agg.insert(g.name.clone(), Value::Object(entry.clone()));
        }
        res.insert(g.name.clone(), Value::Object(entry));
        subtasks.insert(
            g.name.clone(),
            Value::Array(
                g.members
                    .iter()
                    .map(|m| Value::String(m.name().to_string()))
                    .collect(),
            ),
        );
        let version = match &g.version {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "N/A".into(),
            Some(other) => other.to_string(),
        };
        versions.insert(g.name.clone(), Value::String(version));
    }
    let mut out = json!({
        "results": res,
        "group_subtasks": subtasks,
        "versions": versions,
        "n-shot": nshots,
    });
    if !with_agg.is_empty() {
        out["groups"] = Value::Object(with_agg);
    }
    out
}
