//! What a pipeline run produced, and the files it is rendered to: `report.json` (this struct),
//! `report.md` (tables, plots linked from `plots/`) and a self-contained `report.html`
//! (tables and inline SVG plots). Rendering only: `run` writes the files, so this module
//! depends on no other step of the run.
//!
//! * [`tables`]: the tables as rows of plain-text cells, shared by both documents;
//! * `figures`: the report's plots from its results;
//! * `html`: `report.html` through a minijinja template (every value HTML-escaped);
//! * `markdown`: `report.md`;
//! * `sweeps`: the sections of the schedule, epoch and protocol sweeps.
//! * `weights`: how far each fine-tune moved, next to its merges' synergy.

mod figures;
mod html;
mod markdown;
mod sweeps;
pub mod tables;
mod weights;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use temper_bench_eval::EvalMode;
use temper_bench_eval::results::{Accuracy, MergeAnalysis, Metric, Summary};

use crate::config::PipelineConfig;
use crate::{PipelineError, Result};
pub use weights::{WeightsMoved, weights_moved};

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
    /// With `sweep_epochs`: the epochs trained, each a variant (`Instruct-CPT@1`, ...; the
    /// last is the stage's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    pub final_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    /// `(step, loss)` as logged.
    pub losses: Vec<(usize, f64)>,
    pub eval_losses: Vec<(usize, f64)>,
    /// Every other metric the trainer logged, by TRL name (`learning_rate`, `grad_norm`,
    /// `rewards/margins`, ...), as `(step, value)`.
    #[serde(default)]
    pub metrics: BTreeMap<String, Vec<(usize, f64)>>,
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
    /// A merge's result from its per-tensor statistics (counts and cosines derived).
    pub fn new(
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
    /// The fingerprint of how the model was made (settings, data bytes, input models).
    #[serde(default)]
    pub fingerprint: String,
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
    /// The stage that trained it (trained and merged variants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// With the stage's `sweep_epochs`: the epoch its trained model is from (the last epoch
    /// is the stage's own result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<usize>,
    /// Merged variants: the recipe's label (`SLERP`, `SLERP_G`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
}

/// A merged variant against its parents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeRow {
    pub merged: String,
    pub finetuned: String,
    pub instruct: String,
    pub analysis: MergeAnalysis,
}

/// The variants under a further protocol (`benchmark.also`): the same variants, their
/// accuracy and paired tests under that protocol's metric.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProtocolResult {
    pub mode: EvalMode,
    pub metric: Metric,
    pub variants: Vec<VariantResult>,
    pub analyses: Vec<MergeRow>,
}

/// A data file the run read, with the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// What it is for: `benchmark`, `cpt data`, `sft eval data`, ...
    pub role: String,
    pub path: PathBuf,
    pub sha256: String,
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
    /// Wall time of this invocation (skipped steps cost nothing here; see
    /// [`PipelineReport::compute_seconds`] for what the results took).
    pub total_seconds: f64,
    /// `temper-pipeline`'s version that wrote the report.
    #[serde(default)]
    pub temper_version: String,
    /// Every data file the run read, hashed.
    #[serde(default)]
    pub data_files: Vec<DataFile>,
    pub stages: Vec<StageResult>,
    pub merges: Vec<MergeResult>,
    pub variants: Vec<VariantResult>,
    pub analyses: Vec<MergeRow>,
    /// Each further protocol's results (`benchmark.also`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<ProtocolResult>,
    /// How far each fine-tuned variant moved from the instruct parent (absent in reports
    /// written before it was measured).
    #[serde(default)]
    pub weights: Vec<WeightsMoved>,
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

    /// The time the results took when each step ran, cached steps at their original time:
    /// the run's true cost (a re-run that reuses everything takes a fraction of a second).
    pub fn compute_seconds(&self) -> f64 {
        self.stages.iter().map(|s| s.seconds).sum::<f64>()
            + self.merges.iter().map(|m| m.seconds).sum::<f64>()
            + self.variants.iter().map(|v| v.seconds).sum::<f64>()
            + self
                .protocols
                .iter()
                .flat_map(|p| &p.variants)
                .map(|v| v.seconds)
                .sum::<f64>()
    }

    /// Steps reused from an earlier run, and all steps.
    pub fn cached_steps(&self) -> (usize, usize) {
        let flags: Vec<bool> = self
            .stages
            .iter()
            .map(|s| s.skipped)
            .chain(self.merges.iter().map(|m| m.skipped))
            .chain(self.variants.iter().map(|v| v.skipped))
            .chain(
                self.protocols
                    .iter()
                    .flat_map(|p| p.variants.iter().map(|v| v.skipped)),
            )
            .collect();
        (flags.iter().filter(|&&f| f).count(), flags.len())
    }

    pub(crate) fn categories(&self) -> Vec<String> {
        let mut cats: Vec<String> = self
            .variants
            .iter()
            .flat_map(|v| v.summary.per_category.keys().cloned())
            .collect();
        cats.sort();
        cats.dedup();
        cats
    }

    pub(crate) fn metric_name(&self) -> &'static str {
        match self.metric {
            Metric::Acc => "acc",
            Metric::AccNorm => "acc_norm",
            Metric::AccBytes => "acc_bytes",
        }
    }

    pub(crate) fn conclusion(&self) -> String {
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

/// The 95 % interval of an accuracy: ± 1.96 of the standard error bench-eval computed
/// (lm-eval's, from the per-question scores), clipped to [0, 1].
pub fn ci95(a: &Accuracy) -> (f64, f64) {
    let half = 1.96 * a.stderr;
    ((a.accuracy - half).max(0.0), (a.accuracy + half).min(1.0))
}

/// `37.3 [35.1, 39.4]`: an accuracy and its 95 % interval in percent.
pub(crate) fn pct_ci(a: &Accuracy) -> String {
    let (lo, hi) = ci95(a);
    format!(
        "{:.1} [{:.1}, {:.1}]",
        a.accuracy * 100.0,
        lo * 100.0,
        hi * 100.0
    )
}

pub(crate) fn duration(seconds: f64) -> String {
    if seconds >= 59.5 {
        let whole = seconds.round() as u64;
        if whole >= 3600 {
            format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
        } else {
            format!("{}m{:02}s", whole / 60, whole % 60)
        }
    } else {
        format!("{seconds:.1}s")
    }
}

pub(crate) fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

/// The report's files as `(path relative to the output directory, contents)`, in the order
/// they are written: `plots/*.svg`, then `report.json`, `report.md` and `report.html`.
/// Rendering does no I/O: the run's `write_report` writes the files.
///
/// # Errors
/// Drawing, template or serialisation failures.
pub fn render_report(report: &PipelineReport) -> Result<Vec<(PathBuf, String)>> {
    let figs = figures::figures(report)?;
    let mut files: Vec<(PathBuf, String)> = figs
        .iter()
        .map(|f| (Path::new("plots").join(&f.file), f.svg.clone()))
        .collect();
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| PipelineError::Report(format!("report.json: {e}")))?;
    files.push(("report.json".into(), json));
    files.push(("report.md".into(), markdown::markdown(report, &figs)));
    files.push(("report.html".into(), html::html(report, &figs)?));
    Ok(files)
}

pub(crate) fn mode_name(mode: EvalMode) -> &'static str {
    match mode {
        EvalMode::Loglik => "log-likelihood multiple choice",
        EvalMode::Generate => "the paper's generative protocol",
    }
}
