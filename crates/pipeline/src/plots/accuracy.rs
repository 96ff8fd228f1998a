//! Accuracy figures: every variant with its 95 % interval, and the paper's Fig. 7 (each merge's
//! accuracy against the mean of its parents).
//!
//! The axes are zoomed on the data: on a 4-choice benchmark the variants sit between 0.25 and
//! 0.40, and an axis from 0 would squeeze their differences into a few pixels. Points with
//! whiskers rather than bars, since a bar's length from a zoomed origin would mislead.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{FONT, anchored, color, render, zoomed};
use crate::Result;

/// One variant of the accuracy figure.
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyBar {
    pub name: String,
    pub accuracy: f64,
    /// The 95 % interval.
    pub ci: (f64, f64),
    /// Legend group (`instruct parent`, `trained`, `merged`): one colour each.
    pub group: &'static str,
}

/// Variants top to bottom: a point at the accuracy, a whisker over the 95 % interval, the
/// value as a label, a colour per group with a legend, and a dashed line at the first
/// variant (the reference every other is compared with).
///
/// # Errors
/// Drawing failures.
pub fn accuracy_bars(title: &str, bars: &[AccuracyBar]) -> Result<String> {
    let n = bars.len().max(1);
    let height = 110 + 36 * (n as u32 + 2);
    let lo = bars.iter().map(|b| b.ci.0).fold(f64::INFINITY, f64::min);
    let hi = bars
        .iter()
        .map(|b| b.ci.1)
        .fold(f64::NEG_INFINITY, f64::max);
    // Room on the right for the value labels.
    let (x_lo, x_hi) = zoomed(lo, hi + (hi - lo).max(0.02) * 0.45, 0.05, 0.02, (0.0, 1.0));
    let mut groups: Vec<&'static str> = Vec::new();
    for b in bars {
        if !groups.contains(&b.group) {
            groups.push(b.group);
        }
    }
    let group_color = |g: &str| color(groups.iter().position(|x| *x == g).unwrap_or(0));
    render((960, height), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(250)
            // Two empty rows below the variants hold the legend, clear of the labels.
            .build_cartesian_2d(x_lo..x_hi, -2.5..(n as f64 - 0.5))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(BLACK.mix(0.04))
            .y_labels(n + 3)
            .y_label_formatter(&|y: &f64| {
                let i = y.round();
                if (y - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                    bars.get(n - 1 - i as usize)
                        .map(|b| b.name.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_label_formatter(&|x: &f64| format!("{:.0}%", x * 100.0))
            .x_desc(format!(
                "accuracy (95% interval; axis from {:.0}%)",
                x_lo * 100.0
            ))
            .draw()?;
        if let Some(first) = bars.first() {
            chart.draw_series(DashedLineSeries::new(
                vec![(first.accuracy, -0.6), (first.accuracy, n as f64 - 0.5)],
                4,
                4,
                BLACK.mix(0.35).stroke_width(1),
            ))?;
        }
        for (i, b) in bars.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let c = group_color(b.group);
            chart.draw_series([
                PathElement::new(vec![(b.ci.0, y), (b.ci.1, y)], c.stroke_width(3)),
                PathElement::new(
                    vec![(b.ci.0, y - 0.15), (b.ci.0, y + 0.15)],
                    c.stroke_width(2),
                ),
                PathElement::new(
                    vec![(b.ci.1, y - 0.15), (b.ci.1, y + 0.15)],
                    c.stroke_width(2),
                ),
            ])?;
            chart.draw_series([Circle::new((b.accuracy, y), 6, c.filled())])?;
            chart.draw_series([Text::new(
                format!(
                    "{:.1}%  [{:.1}, {:.1}]",
                    b.accuracy * 100.0,
                    b.ci.0 * 100.0,
                    b.ci.1 * 100.0
                ),
                (b.ci.1 + (x_hi - x_lo) * 0.01, y),
                anchored(13, HPos::Left, VPos::Center),
            )])?;
        }
        for g in &groups {
            let c = group_color(g);
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
                .label(*g)
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK.mix(0.5))
            .background_style(WHITE.mix(0.9))
            .draw()?;
        root.present()?;
        Ok(())
    })
}

/// One merge of Fig. 7 with its two parents, each accuracy with its 95 % interval.
#[derive(Debug, Clone, PartialEq)]
pub struct MergePoint {
    pub name: String,
    /// Mean of the parents' accuracies (the x position of everything drawn for this merge).
    pub expected: f64,
    pub merged: (f64, (f64, f64)),
    pub finetuned: (f64, (f64, f64)),
    pub instruct: (f64, (f64, f64)),
}

/// The paper's Fig. 7: merged accuracy (y) against the expected accuracy, the mean of its
/// parents (x). The diagonal is "merged = expected"; each merge's fine-tuned parent (triangle)
/// and instruct parent (square) sit at the same x with their intervals, and a dash marks the
/// better parent: a merge above its dash beats both parents.
///
/// # Errors
/// Drawing failures.
pub fn merge_scatter(points: &[MergePoint]) -> Result<String> {
    // The x axis is zoomed on the expected values and the y axis on every interval: the
    // merges' expected accuracies lie within a point or two of each other while the intervals
    // span ten, and one square range would pile the merges onto one vertical line.
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut x_lo, mut x_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in points {
        for (_, (a, b)) in [p.merged, p.finetuned, p.instruct] {
            lo = lo.min(a);
            hi = hi.max(b);
        }
        x_lo = x_lo.min(p.expected);
        x_hi = x_hi.max(p.expected);
    }
    let (lo, hi) = zoomed(lo.min(x_lo), hi.max(x_hi), 0.05, 0.02, (0.0, 1.0));
    let (x_lo, x_hi) = zoomed(x_lo, x_hi, 0.3, 0.005, (0.0, 1.0));
    // Parents drawn a little left and right of the merge so the three intervals do not overlap.
    let dx = (x_hi - x_lo) * 0.02;
    // Enough decimals that neighbouring ticks differ (merges with equal expected values zoom
    // the axis down to a fraction of a point).
    let x_decimals = (1.0 - ((x_hi - x_lo) * 100.0).log10().floor()).clamp(0.0, 3.0) as usize;
    render((760, 640), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Merged vs expected accuracy (Fig. 7), 95% intervals",
                (FONT, 18),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(x_lo..x_hi, lo..hi)?;
        chart
            .configure_mesh()
            .light_line_style(BLACK.mix(0.04))
            .x_desc("expected = mean of the two parents")
            .y_desc("accuracy")
            .x_label_formatter(&|x: &f64| format!("{:.*}%", x_decimals, x * 100.0))
            .y_label_formatter(&|y: &f64| format!("{:.0}%", y * 100.0))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                vec![(x_lo, x_lo), (x_hi, x_hi)],
                BLACK.mix(0.4).stroke_width(1),
            ))?
            .label("merged = expected")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.4)));
        let whisker = |x: f64, (a, b): (f64, f64), style: ShapeStyle| {
            PathElement::new(vec![(x, a), (x, b)], style)
        };
        for (i, p) in points.iter().enumerate() {
            let c = color(i);
            let x = p.expected;
            let better = p.finetuned.0.max(p.instruct.0);
            chart.draw_series([
                whisker(x - dx, p.finetuned.1, c.mix(0.6).stroke_width(1)),
                whisker(x + dx, p.instruct.1, c.mix(0.6).stroke_width(1)),
                whisker(x, p.merged.1, c.stroke_width(2)),
            ])?;
            chart.draw_series(DashedLineSeries::new(
                vec![(x - 3.0 * dx, better), (x + 3.0 * dx, better)],
                4,
                3,
                c.stroke_width(2),
            ))?;
            chart.draw_series([TriangleMarker::new(
                (x - dx, p.finetuned.0),
                6,
                c.stroke_width(2),
            )])?;
            chart.draw_series([EmptyElement::at((x + dx, p.instruct.0))
                + Rectangle::new([(-5, -5), (5, 5)], c.stroke_width(2))])?;
            chart
                .draw_series([Circle::new((x, p.merged.0), 7, c.filled())])?
                .label(p.name.clone())
                .legend(move |(x, y)| Circle::new((x + 8, y), 6, c.filled()));
        }
        let grey = BLACK.mix(0.7);
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label("fine-tuned parent")
            .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 6, grey.stroke_width(2)));
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label("instruct parent")
            .legend(move |(x, y)| Rectangle::new([(x + 3, y - 5), (x + 13, y + 5)], grey));
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label("better parent (a merge above it beats both)")
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (5, 0)], grey.stroke_width(2))
                    + PathElement::new(vec![(9, 0), (14, 0)], grey.stroke_width(2))
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK.mix(0.5))
            .background_style(WHITE.mix(0.9))
            .draw()?;
        root.present()?;
        Ok(())
    })
}
