//! The report's figures as SVG text (plotters' SVG backend): variant accuracies, the paper's
//! Fig. 7 (merged vs expected accuracy), training-loss curves and per-tensor merge cosines.

use plotters::prelude::*;

use crate::{PipelineError, Result};

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

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

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Horizontal bars: one per `(name, accuracy, standard error, merged?)`, with ±1 s.e. whiskers.
///
/// # Errors
/// Drawing failures.
pub fn accuracy_bars(title: &str, bars: &[(String, f64, f64, bool)]) -> Result<String> {
    let n = bars.len().max(1);
    let height = 80 + 34 * n as u32;
    let x_max = bars
        .iter()
        .map(|(_, a, s, _)| a + s)
        .fold(0.0f64, f64::max)
        .clamp(0.05, 1.0)
        * 1.1;
    render((900, height), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(260)
            .build_cartesian_2d(0.0..x_max.min(1.0), -0.5..(n as f64 - 0.5))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|y: &f64| {
                let i = y.round();
                if (y - i).abs() < 1e-6 && i >= 0.0 {
                    bars.get(n - 1 - i as usize)
                        .map(|b| b.0.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("accuracy")
            .draw()?;
        for (i, (_, acc, se, merged)) in bars.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let color = if *merged { PALETTE[1] } else { PALETTE[0] };
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - 0.35), (*acc, y + 0.35)],
                color.filled(),
            )))?;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![((acc - se).max(0.0), y), ((acc + se).min(1.0), y)],
                BLACK.stroke_width(2),
            )))?;
        }
        root.present()?;
        Ok(())
    })
}

/// The paper's Fig. 7: each merge as a point (expected = mean of the parents, merged), with
/// the diagonal where the merge equals the parents' mean.
///
/// # Errors
/// Drawing failures.
pub fn merge_scatter(points: &[(String, f64, f64)]) -> Result<String> {
    let (mut lo, mut hi) = (1.0f64, 0.0f64);
    for (_, e, m) in points {
        lo = lo.min(*e).min(*m);
        hi = hi.max(*e).max(*m);
    }
    if points.is_empty() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.15).max(0.02);
    let (lo, hi) = ((lo - pad).max(0.0), (hi + pad).min(1.0));
    render((640, 560), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("merged vs expected accuracy (Fig. 7)", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("expected (mean of parents)")
            .y_desc("merged")
            .draw()?;
        chart.draw_series(LineSeries::new(vec![(lo, lo), (hi, hi)], BLACK.mix(0.4)))?;
        for (i, (label, e, m)) in points.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(std::iter::once(Circle::new((*e, *m), 6, color.filled())))?
                .label(label.clone())
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
        }
        if !points.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.85))
                .draw()?;
        }
        root.present()?;
        Ok(())
    })
}

/// A training-loss curve (and the evaluation loss when logged).
///
/// # Errors
/// Drawing failures.
pub fn loss_curve(title: &str, train: &[(usize, f64)], eval: &[(usize, f64)]) -> Result<String> {
    let points = |s: &[(usize, f64)]| -> Vec<(f64, f64)> {
        s.iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(x, v)| (*x as f64, *v))
            .collect()
    };
    let (train, eval) = (points(train), points(eval));
    let (mut x_max, mut y_lo, mut y_hi) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in train.iter().chain(&eval) {
        x_max = x_max.max(*x);
        y_lo = y_lo.min(*y);
        y_hi = y_hi.max(*y);
    }
    if !y_lo.is_finite() {
        (y_lo, y_hi) = (0.0, 1.0);
    }
    let pad = ((y_hi - y_lo) * 0.08).max(1e-3);
    render((640, 360), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_max, (y_lo - pad)..(y_hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()?;
        chart
            .draw_series(LineSeries::new(train, PALETTE[0].stroke_width(2)))?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[0]));
        if !eval.is_empty() {
            chart
                .draw_series(LineSeries::new(eval, PALETTE[3].stroke_width(2)))?
                .label("eval_loss")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[3]));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
        root.present()?;
        Ok(())
    })
}

/// Per-tensor `1 − cos` of the two merge inputs (log scale), in checkpoint order: how far each
/// fine-tune moved each tensor from the instruct parent (SLERP falls back to linear
/// interpolation below `1 − 0.9995`).
///
/// # Errors
/// Drawing failures.
pub fn merge_distances(series: &[(String, Vec<f64>)]) -> Result<String> {
    let floor = 1e-9;
    let mut n = 1usize;
    let (mut lo, mut hi) = (1e-6f64, 1e-3f64);
    for (_, values) in series {
        n = n.max(values.len());
        for v in values {
            let d = (1.0 - v).max(floor);
            lo = lo.min(d);
            hi = hi.max(d);
        }
    }
    render((900, 420), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "1 − cos(fine-tuned, instruct) per tensor",
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(65)
            .build_cartesian_2d(0.0..n as f64, (lo * 0.5..hi * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("tensor (checkpoint order)")
            .x_label_formatter(&|x: &f64| format!("{x:.0}"))
            .y_desc("1 − cos")
            .y_label_formatter(&|y: &f64| format!("{y:.0e}"))
            .draw()?;
        chart.draw_series(LineSeries::new(
            vec![(0.0, 5e-4), (n as f64, 5e-4)],
            BLACK.mix(0.4),
        ))?;
        for (i, (label, values)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    values
                        .iter()
                        .enumerate()
                        .map(|(j, v)| (j as f64, (1.0 - v).max(floor))),
                    color,
                ))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
        root.present()?;
        Ok(())
    })
}
