//! The training run as one story: the loss across CPT → SFT → ORPO on one step axis, the
//! stage boundaries as vertical lines with the stage names, and the metrics TRL logs
//! (`learning_rate`, `grad_norm`, `rewards/accuracies`, `rewards/margins`, ...) as small
//! multiples on the same axis.

use std::collections::BTreeMap;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{FONT, anchored, color, render};
use crate::Result;

/// One stage's logged series, steps counted within the stage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StageCurve {
    pub name: String,
    /// The stage's optimizer steps (where the next stage starts).
    pub steps: usize,
    pub loss: Vec<(usize, f64)>,
    pub eval_loss: Vec<(usize, f64)>,
    /// Every other logged metric, by TRL name.
    pub metrics: BTreeMap<String, Vec<(usize, f64)>>,
}

/// Where a stage lies on the run's step axis: `[start, end]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpan {
    pub name: String,
    pub start: usize,
    pub end: usize,
}

/// Each stage placed after the previous one: a stage of `steps` steps starting at `start`
/// ends at `start + steps`, where the next one starts (a stage logged at its step `s` is
/// drawn at `start + s`).
pub fn stage_spans(stages: &[StageCurve]) -> Vec<StageSpan> {
    let mut start = 0;
    stages
        .iter()
        .map(|s| {
            // A stage that logged past its recorded step count (never, but cheap) still fits.
            let last = s.loss.iter().map(|p| p.0).max().unwrap_or(0);
            let end = start + s.steps.max(last);
            let span = StageSpan {
                name: s.name.clone(),
                start,
                end,
            };
            start = end;
            span
        })
        .collect()
}

/// The metrics shown as small multiples, in this order, when a stage logged them: the
/// optimiser's, the preference objectives' headline metrics (TRL's names) and SFT's token
/// accuracy. ORPO alone logs a dozen more (`logps/*`, `logits/*`, ...); sixteen panels buried
/// these, and `report.json` keeps them all.
const SHOWN: [&str; 8] = [
    "learning_rate",
    "grad_norm",
    "rewards/accuracies",
    "rewards/margins",
    "nll_loss",
    "log_odds_ratio",
    "mean_token_accuracy",
    "entropy",
];

/// A tick label with as many decimals as the axis' span needs (no `2.200`, no `1.4e-17` for
/// zero, no `260.000` for a token count).
fn tick(v: f64, span: f64) -> String {
    let span = span.abs().max(f64::MIN_POSITIVE);
    if v.abs() < span * 1e-9 {
        return "0".into();
    }
    if v.abs() < 1e-3 || v.abs() >= 1e6 {
        return format!("{v:.1e}");
    }
    let decimals = (1.0 - span.log10().floor()).clamp(0.0, 4.0) as usize;
    format!("{v:.decimals$}")
}

/// Steps are whole: a short run's fractional ticks stay unlabelled (not `0 0 1 1 2`).
fn step_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

fn finite(points: &[(usize, f64)], offset: usize) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|&(s, v)| ((offset + s) as f64, v))
        .collect()
}

fn y_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs().max(1e-6) * 0.02);
    (lo - pad, hi + pad)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Vertical lines at the stage boundaries and each stage's name at the top of its span.
fn draw_spans(
    chart: &mut Chart<'_, '_>,
    spans: &[StageSpan],
    (y_lo, y_hi): (f64, f64),
    labels: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            chart.draw_series(DashedLineSeries::new(
                vec![(s.start as f64, y_lo), (s.start as f64, y_hi)],
                5,
                4,
                BLACK.mix(0.5).stroke_width(1),
            ))?;
        }
        if labels {
            chart.draw_series([Text::new(
                s.name.to_uppercase(),
                ((s.start + s.end) as f64 / 2.0, y_hi),
                anchored(14, HPos::Center, VPos::Top).color(&color(i)),
            )])?;
        }
    }
    Ok(())
}

/// A series as a line with a marker at every point (one logged point still shows).
fn draw_line(
    chart: &mut Chart<'_, '_>,
    points: Vec<(f64, f64)>,
    c: RGBColor,
    dashed: bool,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    if dashed {
        chart.draw_series(DashedLineSeries::new(
            points.clone(),
            6,
            4,
            c.stroke_width(2),
        ))?;
    } else {
        chart.draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?;
    }
    chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    Ok(())
}

/// The loss of every stage on one step axis, one colour per stage, the evaluation loss dashed.
///
/// # Errors
/// Drawing failures.
pub fn loss_across_stages(stages: &[StageCurve]) -> Result<String> {
    let spans = stage_spans(stages);
    let x_max = spans.last().map_or(1, |s| s.end.max(1)) as f64;
    let (y_lo, y_hi) = y_range(
        stages
            .iter()
            .flat_map(|s| s.loss.iter().chain(&s.eval_loss).map(|p| p.1))
            .filter(|v| v.is_finite()),
    );
    // Room above the data for the stage names.
    let y_hi = y_hi + (y_hi - y_lo) * 0.1;
    render((960, 420), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Training loss across the stages", (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max * 1.01, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .light_line_style(BLACK.mix(0.04))
            .x_desc("optimizer step (stages one after the other)")
            .x_label_formatter(&step_label)
            .y_desc("loss")
            .draw()?;
        draw_spans(&mut chart, &spans, (y_lo, y_hi), true)?;
        for (i, (s, span)) in stages.iter().zip(&spans).enumerate() {
            let c = color(i);
            draw_line(&mut chart, finite(&s.loss, span.start), c, false)?;
            if !s.eval_loss.is_empty() {
                draw_line(&mut chart, finite(&s.eval_loss, span.start), c, true)?;
            }
        }
        if stages.iter().any(|s| !s.eval_loss.is_empty()) {
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                .label("loss")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                .label("eval_loss (dashed)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 6, y)], BLACK));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .border_style(BLACK.mix(0.5))
                .background_style(WHITE.mix(0.9))
                .draw()?;
        }
        root.present()?;
        Ok(())
    })
}

/// The metric names drawn by [`metric_panels`], in order.
pub fn panel_metrics(stages: &[StageCurve]) -> Vec<String> {
    SHOWN
        .iter()
        .filter(|name| stages.iter().any(|s| s.metrics.contains_key(**name)))
        .map(|name| (*name).to_string())
        .collect()
}

/// TRL's logged metrics as small multiples (two per row) on the stages' step axis; `None`
/// when no stage logged any.
///
/// # Errors
/// Drawing failures.
pub fn metric_panels(stages: &[StageCurve]) -> Result<Option<String>> {
    let names = panel_metrics(stages);
    if names.is_empty() {
        return Ok(None);
    }
    let spans = stage_spans(stages);
    let x_max = spans.last().map_or(1, |s| s.end.max(1)) as f64;
    let rows = names.len().div_ceil(2);
    render((960, 250 * rows as u32), |root| {
        root.fill(&WHITE)?;
        let panels = root.split_evenly((rows, 2));
        for (name, area) in names.iter().zip(panels) {
            let (y_lo, y_hi) = y_range(
                stages
                    .iter()
                    .filter_map(|s| s.metrics.get(name))
                    .flat_map(|p| p.iter().map(|p| p.1))
                    .filter(|v| v.is_finite()),
            );
            let mut chart = ChartBuilder::on(&area)
                .caption(name, (FONT, 15))
                .margin(8)
                .x_label_area_size(30)
                .y_label_area_size(65)
                .build_cartesian_2d(0.0..x_max * 1.01, y_lo..y_hi)?;
            chart
                .configure_mesh()
                .light_line_style(BLACK.mix(0.04))
                .x_desc("step")
                .x_label_formatter(&step_label)
                .y_label_formatter(&|v: &f64| tick(*v, y_hi - y_lo))
                .draw()?;
            draw_spans(&mut chart, &spans, (y_lo, y_hi), false)?;
            for (i, (s, span)) in stages.iter().zip(&spans).enumerate() {
                if let Some(points) = s.metrics.get(name) {
                    draw_line(&mut chart, finite(points, span.start), color(i), false)?;
                }
            }
        }
        root.present()?;
        Ok(())
    })
    .map(Some)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stage(name: &str, steps: usize, loss: &[(usize, f64)]) -> StageCurve {
        StageCurve {
            name: name.into(),
            steps,
            loss: loss.to_vec(),
            ..StageCurve::default()
        }
    }

    #[test]
    fn stages_follow_each_other_on_one_axis() {
        let stages = [
            stage("cpt", 20, &[(2, 3.6), (20, 3.1)]),
            stage("sft", 60, &[(2, 4.0), (60, 2.0)]),
            stage("orpo", 24, &[(24, 1.7)]),
        ];
        let spans = stage_spans(&stages);
        let ends: Vec<(usize, usize)> = spans.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(ends, [(0, 20), (20, 80), (80, 104)]);
        assert_eq!(
            finite(&stages[1].loss, spans[1].start),
            [(22.0, 4.0), (80.0, 2.0)]
        );
        let svg = loss_across_stages(&stages).unwrap();
        for label in ["CPT", "SFT", "ORPO"] {
            assert!(svg.contains(&format!("\n{label}\n</text>")), "{label}");
        }
        // ORPO's single point is drawn as a marker.
        assert!(svg.contains("<circle"));
    }

    #[test]
    fn only_whole_steps_are_labelled() {
        assert_eq!(step_label(&2.0), "2");
        assert_eq!(step_label(&0.4), "");
    }

    #[test]
    fn ticks_carry_the_decimals_the_span_needs() {
        assert_eq!(tick(2.2, 1.4), "2.2");
        assert_eq!(tick(1.4e-17, 0.14), "0");
        assert_eq!(tick(260_000.0, 140_000.0), "260000");
        assert_eq!(tick(1e-4, 1.5e-4), "1.0e-4");
        assert_eq!(tick(0.38, 0.1), "0.38");
    }

    #[test]
    fn trl_metrics_in_the_preferred_order_without_epoch() {
        let mut a = stage("sft", 4, &[(4, 1.0)]);
        a.metrics.insert("grad_norm".into(), vec![(4, 0.5)]);
        a.metrics.insert("epoch".into(), vec![(4, 1.0)]);
        let mut b = stage("orpo", 4, &[(4, 1.0)]);
        b.metrics.insert("rewards/margins".into(), vec![(4, 0.1)]);
        b.metrics.insert("learning_rate".into(), vec![(4, 1e-5)]);
        b.metrics.insert("custom".into(), vec![(4, 2.0)]);
        assert_eq!(
            panel_metrics(&[a.clone(), b.clone()]),
            ["learning_rate", "grad_norm", "rewards/margins"]
        );
        let svg = metric_panels(&[a, b]).unwrap().unwrap();
        assert!(svg.contains("\nrewards/margins\n</text>"));
        assert!(metric_panels(&[stage("cpt", 1, &[])]).unwrap().is_none());
    }
}
