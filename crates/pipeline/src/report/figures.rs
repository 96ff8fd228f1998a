//! The report's plots from its results: which numbers feed which figure.

use super::{PipelineReport, VariantKind, ci95};
use crate::Result;
use crate::plots::{self, AccuracyBar, HeatmapPanel, MergePoint, StageCurve};

/// One figure: its file under `plots/`, its caption and the SVG.
pub(crate) struct Figure {
    pub file: String,
    pub title: String,
    pub svg: String,
}

fn group(kind: VariantKind) -> &'static str {
    match kind {
        VariantKind::Parent => "instruct parent",
        VariantKind::Trained => "trained",
        VariantKind::Merged => "merged with instruct",
    }
}

/// The stages' curves as the loss plots take them.
pub(crate) fn stage_curves(r: &PipelineReport) -> Vec<StageCurve> {
    r.stages
        .iter()
        .map(|s| StageCurve {
            name: s.name.clone(),
            steps: s.steps,
            loss: s.losses.clone(),
            eval_loss: s.eval_losses.clone(),
            metrics: s.metrics.clone(),
        })
        .collect()
}

/// Fig. 7's points: each analysed merge with its parents' accuracies and intervals.
pub(crate) fn merge_points(r: &PipelineReport) -> Vec<MergePoint> {
    let summary = |name: &str| r.variants.iter().find(|v| v.name == name);
    r.analyses
        .iter()
        .map(|row| {
            let a = &row.analysis;
            // The intervals come from the variants' own summaries (same questions: the
            // analysis pairs records by id and every variant answers the whole benchmark).
            let interval = |name: &str, acc: f64| {
                summary(name).map_or((acc, acc), |v| ci95(&v.summary.overall))
            };
            MergePoint {
                name: row.merged.clone(),
                expected: a.expected,
                merged: (a.merged, interval(&row.merged, a.merged)),
                finetuned: (a.parent_a, interval(&row.finetuned, a.parent_a)),
                instruct: (a.parent_b, interval(&row.instruct, a.parent_b)),
            }
        })
        .collect()
}

pub(crate) fn figures(r: &PipelineReport) -> Result<Vec<Figure>> {
    let mut figs = Vec::new();
    let bars: Vec<AccuracyBar> = r
        .variants
        .iter()
        .map(|v| AccuracyBar {
            name: v.name.clone(),
            accuracy: v.summary.overall.accuracy,
            ci: ci95(&v.summary.overall),
            group: group(v.kind),
        })
        .collect();
    figs.push(Figure {
        file: "accuracy.svg".into(),
        title: format!(
            "{} on {} questions, 95% intervals (± 1.96 s.e.); the dashed line is the first variant",
            r.metric_name(),
            r.questions
        ),
        svg: plots::accuracy_bars(&format!("Accuracy by variant ({})", r.metric_name()), &bars)?,
    });
    if !r.analyses.is_empty() {
        figs.push(Figure {
            file: "merge_scatter.svg".into(),
            title: "Merged vs expected accuracy (the paper's Fig. 7): above the diagonal the \
                    merge beats the mean of its parents, above its dash it beats the better parent"
                .into(),
            svg: plots::merge_scatter(&merge_points(r))?,
        });
    }
    figs.extend(super::sweeps::epoch_figures(r)?);
    let curves = stage_curves(r);
    if !curves.is_empty() {
        figs.push(Figure {
            file: "loss.svg".into(),
            title: "Training loss, the stages one after the other".into(),
            svg: plots::loss_across_stages(&curves)?,
        });
        if let Some(svg) = plots::metric_panels(&curves)? {
            figs.push(Figure {
                file: "train_metrics.svg".into(),
                title: "Metrics the trainers logged (TRL names), same step axis and stage colours as the \
                        loss; report.json holds every logged metric"
                    .into(),
                svg,
            });
        }
    }
    let panels: Vec<HeatmapPanel> = r
        .merges
        .iter()
        .map(|m| HeatmapPanel {
            label: m.variant.clone(),
            tensors: m
                .per_tensor
                .iter()
                .filter_map(|t| t.cosine.map(|c| (t.name.clone(), c)))
                .collect(),
        })
        .collect();
    if let Some(svg) = plots::merge_heatmap(&panels)? {
        figs.push(Figure {
            file: "merge_distance.svg".into(),
            title: "How far each fine-tune moved each weight from the instruct parent; below \
                    the red line SLERP interpolates linearly"
                .into(),
            svg,
        });
    }
    if let Some(svg) = plots::moved_by_layer(&super::weights::moved_curves(r))? {
        figs.push(Figure {
            file: "weights_moved.svg".into(),
            title: "How far each fine-tune moved from the instruct parent, layer by layer \
                    (‖ΔW‖ / ‖W‖ of the layer's attention and MLP weights, log scale)"
                .into(),
            svg,
        });
    }
    Ok(figs)
}
