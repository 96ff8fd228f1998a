//! Metric records (TRL names), the `metrics.jsonl` log and the loss-curve SVG.

use std::io::Write;
use std::path::Path;

use plotters::prelude::*;

use crate::{Result, TrainError};

/// One logged row: the optimizer step and `(name, value)` pairs in logging order (`loss`,
/// `grad_norm`, `learning_rate`, `epoch`, then the objective's metrics; evaluation rows carry
/// `eval_loss` and `eval_*`). Serialized as HF's `log_history` entries
/// (`log_record_serde.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// Optimizer steps completed when the row was logged.
    pub step: usize,
    /// Names and values, in order.
    pub values: Vec<(String, f64)>,
}

impl LogRecord {
    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The row as one JSON object line: the metrics in order, then `step` (like HF's
    /// `log_history` entries).
    pub fn to_json_line(&self) -> String {
        let mut s = String::from("{");
        for (name, value) in &self.values {
            let v = if value.is_finite() {
                serde_json::Value::from(*value)
            } else {
                serde_json::Value::Null
            };
            s.push_str(&format!(
                "{}: {v}, ",
                serde_json::Value::from(name.as_str())
            ));
        }
        s.push_str(&format!("\"step\": {}}}", self.step));
        s
    }
}

/// Rewrites `path` with `records` (used on resume, so rows logged after the checkpoint by the
/// interrupted run disappear).
pub(crate) fn rewrite_jsonl(path: &Path, records: &[LogRecord]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&r.to_json_line());
        text.push('\n');
    }
    // Atomic: a run killed while rewriting keeps the old rows (and the writer sweeps the
    // output directory of dead runs' temporary outputs at the start of a run).
    Ok(temper_formats::write_atomic(path, text.as_bytes())?)
}

/// Appends one row to `path`.
pub(crate) fn append_jsonl(path: &Path, record: &LogRecord) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    writeln!(f, "{}", record.to_json_line()).map_err(|e| TrainError::io(path, e))
}

/// Draws `loss` (and `eval_loss` when logged) against the step as an SVG.
///
/// # Errors
/// Nothing to plot is not an error (no file is written); drawing or writing failures are.
pub fn plot_loss_curve(records: &[LogRecord], path: &Path) -> Result<()> {
    let series = |name: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| r.get(name).map(|v| (r.step as f64, v)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    let (train, eval) = (series("loss"), series("eval_loss"));
    if train.is_empty() && eval.is_empty() {
        return Ok(());
    }
    let all = train.iter().chain(&eval);
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in all {
        x_max = x_max.max(*x);
        y_min = y_min.min(*y);
        y_max = y_max.max(*y);
    }
    let pad = ((y_max - y_min) * 0.08).max(1e-3);
    // The pipeline report's look (`temper-pipeline`'s plots): matplotlib's first two tab10
    // colours, a marker on every logged point (a run that logged once still shows), integer
    // steps, a light grid.
    let (blue, red) = (RGBColor(31, 119, 180), RGBColor(214, 39, 40));
    // Drawn into memory and written atomically: no half-drawn SVG after an interruption.
    let mut svg = String::new();
    let mut draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Training loss", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            // A little room right of the last point, so its marker is not cut by the frame.
            .build_cartesian_2d(0.0..x_max * 1.02, (y_min - pad)..(y_max + pad))?;
        chart
            .configure_mesh()
            .light_line_style(BLACK.mix(0.04))
            .x_desc("optimizer step")
            // Steps are whole: a short run's fractional ticks stay unlabelled.
            .x_label_formatter(&|x: &f64| {
                if (x - x.round()).abs() < 1e-9 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_desc("loss")
            .draw()?;
        for (points, color, name) in [(&train, blue, "loss"), (&eval, red, "eval_loss")] {
            if points.is_empty() {
                continue;
            }
            chart.draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?;
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?
                .label(name)
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (18, 0)], color.stroke_width(2))
                        + Circle::new((9, 0), 3, color.filled())
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK.mix(0.5))
            .background_style(WHITE.mix(0.9))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| {
        TrainError::io(
            path,
            std::io::Error::other(format!("drawing the loss curve: {e}")),
        )
    })?;
    Ok(temper_formats::write_atomic(path, svg.as_bytes())?)
}

/// Per-name mean over micro-batches/steps, in first-seen order.
pub(crate) fn average<'a>(
    all: impl Iterator<Item = &'a temper_objectives::Metrics>,
) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64, usize)> = Vec::new();
    for m in all {
        for (name, v) in m.iter() {
            match sums.iter_mut().find(|(n, _, _)| n == name) {
                Some(e) => {
                    e.1 += v;
                    e.2 += 1;
                }
                None => sums.push((name.to_string(), v, 1)),
            }
        }
    }
    sums.into_iter()
        .map(|(n, s, c)| (n, s / c.max(1) as f64))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(step: usize, values: &[(&str, f64)]) -> LogRecord {
        LogRecord {
            step,
            values: values.iter().map(|(n, v)| ((*n).to_string(), *v)).collect(),
        }
    }

    #[test]
    fn one_logged_point_still_shows_with_named_axes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.svg");
        plot_loss_curve(&[row(1, &[("loss", 2.5), ("learning_rate", 1e-4)])], &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            svg.matches("<circle").count(),
            2,
            "the point and its legend marker"
        );
        for text in ["optimizer step", "loss", "Training loss"] {
            assert!(svg.contains(&format!("\n{text}\n</text>")), "{text}");
        }
        // Evaluation rows add their own series.
        plot_loss_curve(
            &[
                row(1, &[("loss", 2.5)]),
                row(2, &[("loss", 2.0)]),
                row(2, &[("eval_loss", 2.2)]),
            ],
            &path,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("\neval_loss\n</text>"));
    }

    #[test]
    fn nothing_logged_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.svg");
        plot_loss_curve(&[row(1, &[("grad_norm", 1.0)])], &path).unwrap();
        assert!(!path.exists());
    }
}
