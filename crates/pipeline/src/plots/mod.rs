//! The report's figures as SVG text (plotters' SVG backend), one concept per file:
//! [`accuracy`] (variants with 95 % intervals, the paper's Fig. 7), [`loss`] (one curve across
//! the training stages, TRL's metrics as small multiples), [`epochs`] (the paper's Fig. 6:
//! accuracy per epoch of a swept stage), [`heatmap`] (how far each fine-tune moved each
//! layer × module from the instruct parent) and [`moved`] (the relative change of each layer's
//! weights, one line per fine-tune).
//!
//! Every curve also draws its points, so a stage that logged once still shows; every axis
//! names its quantity.

pub mod accuracy;
pub mod epochs;
pub mod heatmap;
pub mod loss;
pub mod moved;

pub use accuracy::{AccuracyBar, MergePoint, accuracy_bars, merge_scatter};
pub use epochs::{EpochSeries, epoch_accuracy};
pub use heatmap::{HeatmapPanel, merge_heatmap};
pub use loss::{StageCurve, StageSpan, loss_across_stages, metric_panels, stage_spans};
pub use moved::{MovedCurve, moved_by_layer};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{PipelineError, Result};

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draw into an SVG string of `size` pixels.
fn render(
    size: (u32, u32),
    draw: impl FnOnce(DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> DrawResult,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(root).map_err(|e| PipelineError::Report(format!("drawing a plot: {e}")))?;
    }
    Ok(svg)
}

/// matplotlib's `tab10`, the colours readers of TRL / lm-eval plots know.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const FONT: &str = "sans-serif";

/// A text style anchored at `h`/`v` (plotters anchors text at its top-left by default).
fn anchored(size: u32, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).pos(Pos::new(h, v))
}

/// `[lo, hi]` widened by `pad` of its span and snapped outwards to `step`, inside `clamp`:
/// an axis zoomed on the data (accuracies of 0.25–0.40 do not start at 0) with round ends.
fn zoomed(lo: f64, hi: f64, pad: f64, step: f64, clamp: (f64, f64)) -> (f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo <= hi {
        (lo, hi)
    } else {
        clamp
    };
    let span = (hi - lo).max(step);
    let lo = ((lo - span * pad) / step).floor() * step;
    let hi = ((hi + span * pad) / step).ceil() * step;
    (lo.max(clamp.0), hi.min(clamp.1).max(lo.max(clamp.0) + step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoomed_axis_keeps_the_data_and_does_not_start_at_zero() {
        let (lo, hi) = zoomed(0.31, 0.41, 0.05, 0.05, (0.0, 1.0));
        assert!(
            (lo - 0.30).abs() < 1e-12 && (hi - 0.45).abs() < 1e-12,
            "{lo} {hi}"
        );
        // Clamped to the metric's range.
        let (lo, hi) = zoomed(0.0, 1.0, 0.05, 0.05, (0.0, 1.0));
        assert_eq!((lo, hi), (0.0, 1.0));
        // No data: the clamp range.
        let (lo, hi) = zoomed(f64::INFINITY, f64::NEG_INFINITY, 0.05, 0.05, (0.0, 1.0));
        assert_eq!((lo, hi), (0.0, 1.0));
    }
}
