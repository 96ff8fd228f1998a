//! What a pipeline run produced, and the files it is rendered to: `report.json` (this struct),
//! `report.md` (tables, plots linked from `plots/`) and a self-contained `report.html`
//! (tables and inline SVG plots). Rendering only: `run` writes the files, so this module
//! depends on no other step of the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use temper_bench_eval::EvalMode;
use temper_bench_eval::results::{MergeAnalysis, Metric, Summary};

use crate::config::PipelineConfig;
use crate::plots;
use crate::{PipelineError, Result};

/// What a variant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VariantKind {
    /// The instruct parent, untouched.
    Parent,
    /// The result of a training stage.
    Trained,
    /// A stage's result merged with the instruct parent.
    Merged,
}

/// One training stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageResult {
    pub name: String,
    pub variant: String,
    pub objective: String,
    /// LoRA rank (`None`: full fine-tuning).
    pub lora_r: Option<usize>,
    pub train_rows: usize,
    /// Reused from an earlier run (its time is that run's).
    #[serde(default)]
    pub skipped: bool,
    pub seconds: f64,
    pub steps: usize,
    pub final_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// `(step, loss)` as logged.
    pub losses: Vec<(usize, f64)>,
    pub eval_losses: Vec<(usize, f64)>,
}

/// One tensor of a merge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorStat {
    pub name: String,
    pub t: Option<f32>,
    pub cosine: Option<f64>,
    pub linear_fallback: Option<bool>,
}

/// One merge with the instruct parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeResult {
    pub name: String,
    pub variant: String,
    pub stage: String,
    #[serde(default)]
    pub skipped: bool,
    pub seconds: f64,
    pub tensors: usize,
    /// Tensors SLERP interpolated linearly because the inputs were nearly colinear.
    pub linear_fallbacks: usize,
    pub mean_cosine: Option<f64>,
    pub min_cosine: Option<f64>,
    pub per_tensor: Vec<TensorStat>,
}

impl MergeResult {
    pub(crate) fn new(
        name: String,
        variant: String,
        stage: String,
        seconds: f64,
        per_tensor: Vec<TensorStat>,
    ) -> Self {
        let cosines: Vec<f64> = per_tensor.iter().filter_map(|t| t.cosine).collect();
        Self {
            name,
            variant,
            stage,
            skipped: false,
            seconds,
            tensors: per_tensor.len(),
            linear_fallbacks: per_tensor
                .iter()
                .filter(|t| t.linear_fallback == Some(true))
                .count(),
            mean_cosine: (!cosines.is_empty())
                .then(|| cosines.iter().sum::<f64>() / cosines.len() as f64),
            min_cosine: cosines.iter().copied().reduce(f64::min),
            per_tensor,
        }
    }
}

/// A variant against the instruct parent, question by question.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct VsInstruct {
    /// Accuracy difference (variant − instruct).
    pub diff: f64,
    pub mcnemar_p: f64,
    pub bootstrap_p: f64,
}

/// One benchmarked variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantResult {
    pub name: String,
    pub kind: VariantKind,
    pub model_dir: PathBuf,
    /// Merged variants: (fine-tuned parent, instruct parent).
    pub parents: Option<(String, String)>,
    pub seconds: f64,
    pub skipped: bool,
    /// Under the report's metric.
    pub summary: Summary,
    /// Every metric of the mode.
    pub summaries: BTreeMap<String, Summary>,
    /// Paired comparison with the instruct parent under the report's metric (`None` for the
    /// parent itself).
    #[serde(default)]
    pub vs_instruct: Option<VsInstruct>,
}

/// A merged variant against its parents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeRow {
    pub merged: String,
    pub finetuned: String,
    pub instruct: String,
    pub analysis: MergeAnalysis,
}

/// Everything a run produced (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineReport {
    pub name: String,
    pub device: String,
    pub benchmark: String,
    pub questions: usize,
    pub mode: EvalMode,
    pub metric: Metric,
    /// Wall time of this invocation (skipped steps cost nothing here).
    pub total_seconds: f64,
    pub stages: Vec<StageResult>,
    pub merges: Vec<MergeResult>,
    pub variants: Vec<VariantResult>,
    pub analyses: Vec<MergeRow>,
    pub config: PipelineConfig,
}

impl PipelineReport {
    /// Merged variants that beat both parents with both paired p-values below 0.05.
    pub fn synergies(&self) -> Vec<&MergeRow> {
        self.analyses
            .iter()
            .filter(|r| r.analysis.synergy)
            .collect()
    }

    fn categories(&self) -> Vec<String> {
        let mut cats: Vec<String> = self
            .variants
            .iter()
            .flat_map(|v| v.summary.per_category.keys().cloned())
            .collect();
        cats.sort();
        cats.dedup();
        cats
    }

    fn metric_name(&self) -> &'static str {
        match self.metric {
            Metric::Acc => "acc",
            Metric::AccNorm => "acc_norm",
            Metric::AccBytes => "acc_bytes",
        }
    }

    fn conclusion(&self) -> String {
        let wins = self.synergies();
        if self.analyses.is_empty() {
            "No merges were run.".into()
        } else if wins.is_empty() {
            let above: Vec<&str> = self
                .analyses
                .iter()
                .filter(|r| r.analysis.gain_over_best > 0.0)
                .map(|r| r.merged.as_str())
                .collect();
            let mut s = format!(
                "No merged variant beats both of its parents significantly (paired McNemar and bootstrap p < 0.05 against the better parent) on these {} questions.",
                self.questions
            );
            if !above.is_empty() {
                let _ = write!(
                    s,
                    " Above the better parent, but not significantly: {}.",
                    above.join(", ")
                );
            }
            s
        } else {
            format!(
                "Synergy: {} beat{} both parents significantly.",
                wins.iter()
                    .map(|r| r.merged.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if wins.len() == 1 { "s" } else { "" }
            )
        }
    }
}

fn duration(seconds: f64) -> String {
    if seconds >= 59.5 {
        let whole = seconds.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{seconds:.1}s")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

fn pct(acc: f64, se: f64) -> String {
    format!("{:.1} ± {:.1}", acc * 100.0, se * 100.0)
}

/// A table as rows of cells, rendered to Markdown or HTML.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn markdown(&self) -> String {
        let mut s = format!("| {} |\n", self.header.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(self.header.len()));
        for row in &self.rows {
            let _ = writeln!(s, "| {} |", row.join(" | "));
        }
        s
    }

    fn html(&self) -> String {
        let mut s = String::from("<table>\n<thead><tr>");
        for h in &self.header {
            let _ = write!(s, "<th>{}</th>", escape(h));
        }
        s.push_str("</tr></thead>\n<tbody>\n");
        for row in &self.rows {
            s.push_str("<tr>");
            for c in row {
                let _ = write!(s, "<td>{}</td>", escape(&c.replace("**", "")));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</tbody></table>\n");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn variant_table(r: &PipelineReport) -> Table {
    let cats = r.categories();
    let mut header = vec!["Variant".to_string(), format!("{} (%)", r.metric_name())];
    header.push("vs Instruct (McNemar p)".into());
    header.extend(cats.iter().cloned());
    header.push("eval time".into());
    let rows = r
        .variants
        .iter()
        .map(|v| {
            let mut row = vec![
                v.name.clone(),
                pct(v.summary.overall.accuracy, v.summary.overall.stderr),
                v.vs_instruct.map_or_else(
                    || "–".into(),
                    |c| format!("{:+.1} (p {:.3})", c.diff * 100.0, c.mcnemar_p),
                ),
            ];
            for c in &cats {
                row.push(
                    v.summary
                        .per_category
                        .get(c)
                        .map_or_else(|| "–".into(), |a| pct(a.accuracy, a.stderr)),
                );
            }
            row.push(if v.skipped {
                format!("{} (cached)", duration(v.seconds))
            } else {
                duration(v.seconds)
            });
            row
        })
        .collect();
    Table { header, rows }
}

fn analysis_table(r: &PipelineReport) -> Table {
    let header = [
        "Merged",
        "Fine-tuned parent",
        "Instruct",
        "Expected",
        "Merged acc",
        "Gain over better parent",
        "McNemar p",
        "Bootstrap p",
        "Synergy",
    ]
    .map(String::from)
    .to_vec();
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
                format!("{:+.1}", a.gain_over_best * 100.0),
                format!("{:.3}", a.mcnemar.p_value),
                format!("{:.3}", a.bootstrap.p_value),
                if a.synergy {
                    "**yes**".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect();
    Table { header, rows }
}

fn stage_table(r: &PipelineReport) -> Table {
    let header = [
        "Stage",
        "Variant",
        "Objective",
        "Weights",
        "Rows",
        "Steps",
        "First loss",
        "Final loss",
        "Time",
    ]
    .map(String::from)
    .to_vec();
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
                if s.skipped {
                    format!("{} (cached)", duration(s.seconds))
                } else {
                    duration(s.seconds)
                },
            ]
        })
        .collect();
    Table { header, rows }
}

fn merge_table(r: &PipelineReport) -> Table {
    let header = [
        "Merge",
        "Variant",
        "Tensors",
        "Linear fallbacks (cos > 0.9995)",
        "Mean cos",
        "Min cos",
        "Time",
    ]
    .map(String::from)
    .to_vec();
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
                duration(m.seconds),
            ]
        })
        .collect();
    Table { header, rows }
}

struct Figures {
    /// `(file name, title, svg)`.
    files: Vec<(String, String, String)>,
}

fn figures(r: &PipelineReport) -> Result<Figures> {
    let mut files = Vec::new();
    let bars: Vec<(String, f64, f64, bool)> = r
        .variants
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                v.summary.overall.accuracy,
                v.summary.overall.stderr,
                v.kind == VariantKind::Merged,
            )
        })
        .collect();
    files.push((
        "accuracy.svg".into(),
        "Accuracy by variant".into(),
        plots::accuracy_bars(
            &format!(
                "{} on {} questions (± 1 s.e.)",
                r.metric_name(),
                r.questions
            ),
            &bars,
        )?,
    ));
    if !r.analyses.is_empty() {
        let points: Vec<(String, f64, f64)> = r
            .analyses
            .iter()
            .map(|a| (a.merged.clone(), a.analysis.expected, a.analysis.merged))
            .collect();
        files.push((
            "merge_scatter.svg".into(),
            "Merged vs expected accuracy".into(),
            plots::merge_scatter(&points)?,
        ));
    }
    if !r.merges.is_empty() {
        let series: Vec<(String, Vec<f64>)> = r
            .merges
            .iter()
            .map(|m| {
                (
                    m.variant.clone(),
                    m.per_tensor.iter().filter_map(|t| t.cosine).collect(),
                )
            })
            .collect();
        files.push((
            "merge_distance.svg".into(),
            "Per-tensor distance between the merge inputs".into(),
            plots::merge_distances(&series)?,
        ));
    }
    for s in &r.stages {
        files.push((
            format!("loss-{}.svg", s.name),
            format!("Training loss: {} ({})", s.name, s.objective),
            plots::loss_curve(
                &format!("{} ({})", s.variant, s.objective),
                &s.losses,
                &s.eval_losses,
            )?,
        ));
    }
    Ok(Figures { files })
}

fn markdown(r: &PipelineReport, figs: &Figures) -> String {
    let mut s = format!("# Temper pipeline: {}\n\n", r.name);
    let _ = writeln!(
        s,
        "Benchmark `{}`: {} questions, scored by {} (`{}`). Device `{}`, evaluation weights in `{}`. Wall time of this run: {}.\n",
        r.benchmark,
        r.questions,
        match r.mode {
            EvalMode::Loglik => "log-likelihood multiple choice",
            EvalMode::Generate => "the paper's generative protocol",
        },
        r.metric_name(),
        r.device,
        r.config.benchmark.dtype,
        duration(r.total_seconds)
    );
    let _ = writeln!(s, "**{}**\n", r.conclusion());
    let _ = writeln!(s, "## Variants\n\n{}", variant_table(r).markdown());
    if !r.analyses.is_empty() {
        let _ = writeln!(
            s,
            "## Merges against their parents\n\nExpected = mean of the two parents; gain = merged − better parent; p-values of the paired tests against the better parent.\n\n{}",
            analysis_table(r).markdown()
        );
    }
    let _ = writeln!(s, "## Training stages\n\n{}", stage_table(r).markdown());
    if !r.merges.is_empty() {
        let _ = writeln!(s, "## Merge statistics\n\n{}", merge_table(r).markdown());
    }
    s.push_str("## Plots\n\n");
    for (file, title, _) in &figs.files {
        let _ = writeln!(s, "![{title}](plots/{file})\n");
    }
    s
}

fn html(r: &PipelineReport, figs: &Figures) -> String {
    let mut s = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    let _ = writeln!(s, "<title>Temper pipeline: {}</title>", escape(&r.name));
    s.push_str(
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}figure{margin:1.5em 0}\
.verdict{background:#f6f8fa;border-left:4px solid #1f77b4;padding:.6em 1em}</style></head><body>\n",
    );
    let _ = writeln!(s, "<h1>Temper pipeline: {}</h1>", escape(&r.name));
    let _ = writeln!(
        s,
        "<p>Benchmark <code>{}</code>: {} questions, metric <code>{}</code>. Device <code>{}</code>, evaluation weights in <code>{}</code>. Wall time of this run: {}.</p>",
        escape(&r.benchmark),
        r.questions,
        r.metric_name(),
        escape(&r.device),
        r.config.benchmark.dtype,
        duration(r.total_seconds)
    );
    let _ = writeln!(s, "<p class=\"verdict\">{}</p>", escape(&r.conclusion()));
    let _ = writeln!(s, "<h2>Variants</h2>\n{}", variant_table(r).html());
    if !r.analyses.is_empty() {
        let _ = writeln!(
            s,
            "<h2>Merges against their parents</h2>\n<p>Expected = mean of the two parents; gain = merged − better parent; p-values of the paired tests against the better parent.</p>\n{}",
            analysis_table(r).html()
        );
    }
    let _ = writeln!(s, "<h2>Training stages</h2>\n{}", stage_table(r).html());
    if !r.merges.is_empty() {
        let _ = writeln!(s, "<h2>Merge statistics</h2>\n{}", merge_table(r).html());
    }
    s.push_str("<h2>Plots</h2>\n");
    for (_, title, svg) in &figs.files {
        let _ = writeln!(
            s,
            "<figure>{svg}<figcaption>{}</figcaption></figure>",
            escape(title)
        );
    }
    for m in &r.merges {
        let _ = writeln!(
            s,
            "<details><summary>Per-tensor statistics: {}</summary>",
            escape(&m.variant)
        );
        let table = Table {
            header: ["Tensor", "t", "cos", "linear fallback"]
                .map(String::from)
                .to_vec(),
            rows: m
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
                .collect(),
        };
        let _ = writeln!(s, "{}</details>", table.html());
    }
    s.push_str("</body></html>\n");
    s
}

/// The report's files as `(path relative to the output directory, contents)`, in the order
/// they are written: `plots/*.svg`, then `report.json`, `report.md` and `report.html`.
/// Rendering does no I/O: the run's `write_report` writes the files.
///
/// # Errors
/// Drawing or serialisation failures.
pub fn render_report(report: &PipelineReport) -> Result<Vec<(PathBuf, String)>> {
    let figs = figures(report)?;
    let mut files: Vec<(PathBuf, String)> = figs
        .files
        .iter()
        .map(|(file, _, svg)| (Path::new("plots").join(file), svg.clone()))
        .collect();
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| PipelineError::Report(format!("report.json: {e}")))?;
    files.push(("report.json".into(), json));
    files.push(("report.md".into(), markdown(report, &figs)));
    files.push(("report.html".into(), html(report, &figs)));
    Ok(files)
}
