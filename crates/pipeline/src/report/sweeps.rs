//! The sweeps' sections of the report, shared by `report.md` and `report.html`: the SLERP
//! schedules against each other (the paper's Fig. 11), each swept stage's epochs (Fig. 6) and
//! each further protocol's accuracy table. A report without sweeps (an older `report.json`)
//! has none of them.

use serde::Serialize;

use super::figures::Figure;
use super::tables::{Table, kind_name};
use super::{PipelineReport, VariantKind, VariantResult, ci95, mode_name};
use crate::Result;
use crate::plots::{EpochSeries, epoch_accuracy};
use crate::schedules::{Schedule, schedule, schedule_of_yaml};

/// One section: a heading, a sentence, an optional figure (its file under `plots/`) and a
/// table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Section {
    pub id: String,
    pub title: String,
    pub intro: String,
    pub figure: Option<String>,
    pub table: Table,
}

/// `35.2 ± 2.1`: an accuracy and its standard error in percent.
fn pct_se(v: &VariantResult) -> String {
    let a = &v.summary.overall;
    format!("{:.1} ± {:.1}", a.accuracy * 100.0, a.stderr * 100.0)
}

fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_string()).collect()
}

/// The schedule a recipe label stands for in this report's config, if it is a shipped one.
fn schedule_of(r: &PipelineReport, label: &str) -> Option<&'static Schedule> {
    let merge = &r.config.merge;
    if label == merge.label {
        return schedule_of_yaml(&merge.yaml);
    }
    let recipe = merge.recipes.iter().find(|x| x.label == label)?;
    match (&recipe.schedule, &recipe.yaml) {
        (Some(name), _) => schedule(name),
        (None, Some(yaml)) => schedule_of_yaml(yaml),
        _ => None,
    }
}

/// Each fine-tuned model merged under two or more recipes: every recipe's `t` as given, the
/// merge's accuracy, its gain over the better parent and the paired tests against it.
fn schedules(r: &PipelineReport) -> Option<Section> {
    let mut rows = Vec::new();
    let mut parents: Vec<&str> = r.analyses.iter().map(|a| a.finetuned.as_str()).collect();
    parents.dedup();
    for parent in parents {
        let merges: Vec<_> = r
            .analyses
            .iter()
            .filter(|a| a.finetuned == parent)
            .collect();
        if merges.len() < 2 {
            continue;
        }
        for row in merges {
            let Some(v) = r.variants.iter().find(|v| v.name == row.merged) else {
                continue;
            };
            let label = v.recipe.clone().unwrap_or_else(|| "–".into());
            let s = schedule_of(r, &label);
            let (attn, mlp) = s.map_or_else(|| ("YAML".into(), "YAML".into()), Schedule::describe);
            let a = &row.analysis;
            rows.push(vec![
                parent.to_string(),
                label,
                s.map_or_else(|| "custom".into(), |s| format!("{} ({})", s.name, s.source)),
                attn,
                mlp,
                pct_se(v),
                format!("{:+.1}", a.gain_over_best * 100.0),
                format!("{:.3}", a.mcnemar.p_value),
                format!("{:.3}", a.bootstrap.p_value),
            ]);
        }
    }
    (!rows.is_empty()).then(|| Section {
        id: "schedules".into(),
        title: "SLERP schedules".into(),
        intro: format!(
            "The same parents merged under each recipe (the paper's Fig. 11). t = 0 keeps the \
             instruct model, t = 1 the fine-tuned one; a list is a gradient over the layers. \
             Accuracy in % ± one standard error ({}); gain in points over the better parent, \
             with the paired tests against it. Schedules marked `reconstruction` are not \
             published (docs/pipeline.md).",
            r.metric_name()
        ),
        figure: None,
        table: Table {
            header: header(&[
                "Fine-tuned parent",
                "Recipe",
                "Schedule",
                "t attention",
                "t MLP",
                "Accuracy % ± s.e.",
                "Gain over better parent",
                "McNemar p",
                "Bootstrap p",
            ]),
            rows,
        },
    })
}

/// A swept stage's models and their merges under the main recipe, epoch by epoch.
struct EpochRows<'a> {
    stage: String,
    rows: Vec<(usize, &'a VariantResult, Option<&'a VariantResult>)>,
}

fn epoch_rows(r: &PipelineReport) -> Vec<EpochRows<'_>> {
    let main = &r.config.merge.label;
    r.stages
        .iter()
        .filter_map(|s| {
            let epochs = s.epochs?;
            let of = |e: usize, kind: VariantKind| {
                r.variants.iter().find(|v| {
                    v.stage.as_deref() == Some(s.name.as_str())
                        && v.epoch == Some(e)
                        && v.kind == kind
                        && (kind == VariantKind::Trained || v.recipe.as_ref() == Some(main))
                })
            };
            let rows: Vec<_> = (1..=epochs)
                .filter_map(|e| Some((e, of(e, VariantKind::Trained)?, of(e, VariantKind::Merged))))
                .collect();
            (!rows.is_empty()).then(|| EpochRows {
                stage: s.name.clone(),
                rows,
            })
        })
        .collect()
}

fn epoch_sections(r: &PipelineReport) -> Vec<Section> {
    epoch_rows(r)
        .into_iter()
        .map(|e| {
            let rows = e
                .rows
                .iter()
                .map(|(epoch, trained, merged)| {
                    let analysis = merged
                        .and_then(|m| r.analyses.iter().find(|a| a.merged == m.name))
                        .map(|a| &a.analysis);
                    vec![
                        epoch.to_string(),
                        trained.name.clone(),
                        pct_se(trained),
                        merged.map_or_else(|| "–".into(), pct_se),
                        merged.map_or_else(
                            || "–".into(),
                            |m| {
                                format!(
                                    "{:+.1}",
                                    (m.summary.overall.accuracy - trained.summary.overall.accuracy)
                                        * 100.0
                                )
                            },
                        ),
                        analysis.map_or_else(
                            || "–".into(),
                            |a| format!("{:+.1}", a.gain_over_best * 100.0),
                        ),
                        analysis
                            .map_or_else(|| "–".into(), |a| format!("{:.3}", a.mcnemar.p_value)),
                    ]
                })
                .collect();
            let stage = e.stage.to_uppercase();
            Section {
                id: format!("epochs-{}", e.stage),
                title: format!("{stage} epochs"),
                intro: format!(
                    "The {stage} model after each epoch and its merge with the instruct parent \
                     under the main recipe ({}), as the paper's Fig. 6; the last epoch is the \
                     stage's own result. Accuracy in % ± one standard error ({}); the gain and \
                     McNemar p are against the better parent.",
                    r.config.merge.label,
                    r.metric_name()
                ),
                figure: Some(epoch_file(&e.stage)),
                table: Table {
                    header: header(&[
                        "Epoch",
                        "Variant",
                        "Trained % ± s.e.",
                        "Merged % ± s.e.",
                        "Merged − trained",
                        "Gain over better parent",
                        "McNemar p",
                    ]),
                    rows,
                },
            }
        })
        .collect()
}

fn epoch_file(stage: &str) -> String {
    format!("epochs-{stage}.svg")
}

/// The epoch figures, one per swept stage.
///
/// # Errors
/// Drawing failures.
pub(crate) fn epoch_figures(r: &PipelineReport) -> Result<Vec<Figure>> {
    let instruct = r
        .variants
        .iter()
        .find(|v| v.kind == VariantKind::Parent)
        .map(|v| v.summary.overall.accuracy);
    epoch_rows(r)
        .into_iter()
        .map(|e| {
            let point = |e: usize, v: &VariantResult| {
                (e, v.summary.overall.accuracy, ci95(&v.summary.overall))
            };
            let series = vec![
                EpochSeries {
                    name: "trained".into(),
                    points: e.rows.iter().map(|(n, t, _)| point(*n, t)).collect(),
                },
                EpochSeries {
                    name: format!("merged ({})", r.config.merge.label),
                    points: e
                        .rows
                        .iter()
                        .filter_map(|(n, _, m)| m.map(|m| point(*n, m)))
                        .collect(),
                },
            ];
            let stage = e.stage.to_uppercase();
            Ok(Figure {
                file: epoch_file(&e.stage),
                title: format!(
                    "{} after each {stage} epoch, trained and merged, 95% intervals; dashed: Instruct",
                    r.metric_name()
                ),
                svg: epoch_accuracy(
                    &format!("{stage} epochs ({})", r.metric_name()),
                    &series,
                    instruct.map(|a| ("Instruct", a)),
                )?,
            })
        })
        .collect()
}

/// Each further protocol: every variant's accuracy ± s.e. and the paired McNemar test
/// against Instruct; merges also against their better parent.
fn protocol_sections(r: &PipelineReport) -> Vec<Section> {
    r.protocols
        .iter()
        .map(|p| {
            let metric = match p.metric {
                temper_bench_eval::results::Metric::Acc => "acc",
                temper_bench_eval::results::Metric::AccNorm => "acc_norm",
                temper_bench_eval::results::Metric::AccBytes => "acc_bytes",
            };
            let rows = p
                .variants
                .iter()
                .map(|v| {
                    let analysis = p.analyses.iter().find(|a| a.merged == v.name);
                    let (lo, hi) = ci95(&v.summary.overall);
                    vec![
                        v.name.clone(),
                        kind_name(v.kind).into(),
                        pct_se(v),
                        format!("[{:.1}, {:.1}]", lo * 100.0, hi * 100.0),
                        format!("{}/{}", v.summary.overall.correct, v.summary.overall.n),
                        v.vs_instruct
                            .map_or_else(|| "–".into(), |c| format!("{:+.1}", c.diff * 100.0)),
                        v.vs_instruct
                            .map_or_else(|| "–".into(), |c| format!("{:.3}", c.mcnemar_p)),
                        analysis.map_or_else(
                            || "–".into(),
                            |a| format!("{:+.1}", a.analysis.gain_over_best * 100.0),
                        ),
                    ]
                })
                .collect();
            let (id, title) = match p.mode {
                temper_bench_eval::EvalMode::Generate => ("generate", "Generative protocol"),
                temper_bench_eval::EvalMode::Loglik => ("loglik", "Log-likelihood protocol"),
            };
            Section {
                id: format!("protocol-{id}"),
                title: title.into(),
                intro: format!(
                    "Every variant also scored by {} (`{metric}`) on the same questions; \
                     ± is one standard error, McNemar p the paired test against Instruct.",
                    mode_name(p.mode)
                ),
                figure: None,
                table: Table {
                    header: header(&[
                        "Variant",
                        "Kind",
                        "Accuracy % ± s.e.",
                        "95% CI",
                        "Correct",
                        "vs Instruct (points)",
                        "McNemar p",
                        "Merge: gain over better parent",
                    ]),
                    rows,
                },
            }
        })
        .collect()
}

/// Every sweep section, in the report's order.
pub(crate) fn sections(r: &PipelineReport) -> Vec<Section> {
    let mut out: Vec<Section> = schedules(r).into_iter().collect();
    out.extend(epoch_sections(r));
    out.extend(protocol_sections(r));
    out
}
