//! The report's tables as rows of plain-text cells: one builder per table, rendered by both
//! `report.md` and the HTML template (which escapes every cell).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{MergeResult, PipelineReport, VariantKind, duration, opt, pct_ci};

/// A table: a header and rows of plain text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str], rows: Vec<Vec<String>>) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_string()).collect(),
            rows,
        }
    }

    /// A Markdown table (`|` in a cell escaped).
    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let mut s = line(&self.header);
        s.push('|');
        s.push_str(&"---|".repeat(self.header.len()));
        s.push('\n');
        for row in &self.rows {
            s.push_str(&line(row));
        }
        s
    }
}

fn timed(seconds: f64, cached: bool) -> String {
    if cached {
        format!("{} (cached)", duration(seconds))
    } else {
        duration(seconds)
    }
}

pub(crate) fn kind_name(kind: VariantKind) -> &'static str {
    match kind {
        VariantKind::Parent => "instruct parent",
        VariantKind::Trained => "trained",
        VariantKind::Merged => "merged",
    }
}

/// Every variant: accuracy with its 95 % interval and the paired comparison with Instruct.
pub fn variants(r: &PipelineReport) -> Table {
    let metric = format!("{} % [95% CI]", r.metric_name());
    let rows = r
        .variants
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                kind_name(v.kind).into(),
                pct_ci(&v.summary.overall),
                format!("{}/{}", v.summary.overall.correct, v.summary.overall.n),
                v.vs_instruct.map_or_else(
                    || "–".into(),
                    |c| {
                        format!(
                            "{:+.1} (McNemar p {:.3}, bootstrap p {:.3})",
                            c.diff * 100.0,
                            c.mcnemar_p,
                            c.bootstrap_p
                        )
                    },
                ),
                timed(v.seconds, v.skipped),
            ]
        })
        .collect();
    Table::new(
        &[
            "Variant",
            "Kind",
            &metric,
            "Correct",
            "vs Instruct (points)",
            "Eval time",
        ],
        rows,
    )
}

/// Accuracy per benchmark category, each with its 95 % interval.
pub fn categories(r: &PipelineReport) -> Table {
    let cats = r.categories();
    let n_of = |c: &String| {
        r.variants
            .iter()
            .find_map(|v| v.summary.per_category.get(c).map(|a| a.n))
            .unwrap_or(0)
    };
    let mut header = vec!["Variant".to_string()];
    header.extend(cats.iter().map(|c| format!("{c} (n={})", n_of(c))));
    let rows = r
        .variants
        .iter()
        .map(|v| {
            let mut row = vec![v.name.clone()];
            row.extend(cats.iter().map(|c| {
                v.summary
                    .per_category
                    .get(c)
                    .map_or_else(|| "–".into(), pct_ci)
            }));
            row
        })
        .collect();
    Table { header, rows }
}

/// Each merge against its parents (the paper's synergy test).
pub fn analyses(r: &PipelineReport) -> Table {
    let rows = r
        .analyses
        .iter()
        .map(|row| {
            let a = &row.analysis;
            vec![
                row.merged.clone(),
                format!("{:.1}", a.parent_a * 100.0),
                format!("{:.1}", a.parent_b * 100.0),
                format!("{:.1}", a.expected * 100.0),
                format!("{:.1}", a.merged * 100.0),
                format!("{:+.1}", a.gain_over_expected * 100.0),
                format!("{:+.1}", a.gain_over_best * 100.0),
                format!("{:.3}", a.mcnemar.p_value),
                format!("{:.3}", a.bootstrap.p_value),
                if a.synergy { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    Table::new(
        &[
            "Merged",
            "Fine-tuned parent",
            "Instruct",
            "Expected",
            "Merged",
            "Gain over expected",
            "Gain over better parent",
            "McNemar p",
            "Bootstrap p",
            "Synergy",
        ],
        rows,
    )
}

/// The training stages.
pub fn stages(r: &PipelineReport) -> Table {
    let rows = r
        .stages
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.variant.clone(),
                s.objective.clone(),
                s.lora_r
                    .map_or_else(|| "full".into(), |r| format!("LoRA r={r}")),
                s.train_rows.to_string(),
                s.steps.to_string(),
                opt(s.losses.first().map(|l| l.1), 3),
                opt(s.final_loss, 3),
                opt(s.eval_loss, 3),
                timed(s.seconds, s.skipped),
            ]
        })
        .collect();
    Table::new(
        &[
            "Stage",
            "Variant",
            "Objective",
            "Weights",
            "Rows",
            "Steps",
            "First loss",
            "Final loss",
            "Eval loss",
            "Time",
        ],
        rows,
    )
}

/// The stages' hyper-parameters as configured (`[trainer]` and `[lora]`, flattened): one row
/// per parameter, one column per stage, so the stages compare at a glance.
pub fn hyperparameters(r: &PipelineReport) -> Table {
    fn walk(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (k, v) in t {
            let key = format!("{prefix}{k}");
            match v {
                toml::Value::Table(inner) => walk(&format!("{key}."), inner, out),
                toml::Value::String(s) => {
                    out.insert(key, s.clone());
                }
                other => {
                    out.insert(key, other.to_string());
                }
            }
        }
    }
    let per_stage: Vec<BTreeMap<String, String>> = r
        .config
        .stages
        .iter()
        .map(|s| {
            let mut params = BTreeMap::new();
            walk("", &s.trainer, &mut params);
            if let Some(lora) = &s.lora {
                walk("lora.", lora, &mut params);
            }
            if let Some(limit) = s.limit {
                params.insert("limit (rows)".into(), limit.to_string());
            }
            params
        })
        .collect();
    let names: BTreeSet<&String> = per_stage.iter().flat_map(|p| p.keys()).collect();
    let rows = names
        .into_iter()
        .map(|name| {
            let mut row = vec![name.clone()];
            row.extend(
                per_stage
                    .iter()
                    .map(|p| p.get(name).cloned().unwrap_or_else(|| "–".into())),
            );
            row
        })
        .collect();
    let mut header = vec!["Parameter".to_string()];
    header.extend(r.config.stages.iter().map(|s| s.name.clone()));
    Table { header, rows }
}

/// Every model: where it is and the fingerprint of how it was made.
pub fn models(r: &PipelineReport) -> Table {
    let mut rows = vec![vec![
        "instruct source".into(),
        r.config.instruct.display().to_string(),
        "–".into(),
    ]];
    rows.extend(r.variants.iter().map(|v| {
        vec![
            v.name.clone(),
            v.model_dir.display().to_string(),
            if v.fingerprint.is_empty() {
                "–".into()
            } else {
                v.fingerprint.clone()
            },
        ]
    }));
    Table::new(&["Model", "Path", "Fingerprint"], rows)
}

/// Every data file with its SHA-256.
pub fn data_files(r: &PipelineReport) -> Table {
    let rows = r
        .data_files
        .iter()
        .map(|d| {
            vec![
                d.role.clone(),
                d.path.display().to_string(),
                d.sha256.clone(),
            ]
        })
        .collect();
    Table::new(&["Role", "File", "SHA-256"], rows)
}

/// The merges.
pub fn merges(r: &PipelineReport) -> Table {
    let rows = r
        .merges
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.variant.clone(),
                m.tensors.to_string(),
                m.linear_fallbacks.to_string(),
                opt(m.mean_cosine, 6),
                opt(m.min_cosine, 6),
                timed(m.seconds, m.skipped),
            ]
        })
        .collect();
    Table::new(
        &[
            "Merge",
            "Variant",
            "Tensors",
            "Linear fallbacks (cos > 0.9995)",
            "Mean cos",
            "Min cos",
            "Time",
        ],
        rows,
    )
}

/// One merge, tensor by tensor.
pub fn per_tensor(m: &MergeResult) -> Table {
    let rows = m
        .per_tensor
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.t.map_or_else(|| "–".into(), |v| format!("{v:.3}")),
                opt(t.cosine, 7),
                t.linear_fallback
                    .map_or_else(|| "–".into(), |b| if b { "yes" } else { "no" }.into()),
            ]
        })
        .collect();
    Table::new(&["Tensor", "t", "cos", "linear fallback"], rows)
}

/// The run's facts as `(name, value)`: version, device, precisions and the two wall times.
pub fn facts(r: &PipelineReport) -> Vec<(String, String)> {
    let (cached, steps) = r.cached_steps();
    let version = if r.temper_version.is_empty() {
        "(not recorded)".to_string()
    } else {
        r.temper_version.clone()
    };
    vec![
        ("Temper".into(), version),
        ("Device".into(), r.device.clone()),
        ("Training precision".into(), r.config.precision.clone()),
        (
            "Evaluation weights".into(),
            r.config.benchmark.dtype.to_string(),
        ),
        ("Merge".into(), r.config.merge.label.clone()),
        (
            "Compute time of these results".into(),
            format!(
                "{} (each step's time when it ran; {cached} of {steps} steps reused from an earlier run)",
                duration(r.compute_seconds())
            ),
        ),
        ("This invocation".into(), duration(r.total_seconds)),
    ]
}
