//! The paper's Fig. 6 for one swept stage: accuracy after each epoch of training, of the
//! trained model and of its merge with the instruct parent, each point with its 95 %
//! interval, and the instruct parent as a dashed reference line.

use plotters::prelude::*;

use super::{FONT, color, render, zoomed};
use crate::Result;

/// One line of the figure: `(epoch, accuracy, 95 % interval)` per epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSeries {
    pub name: String,
    pub points: Vec<(usize, f64, (f64, f64))>,
}

/// Accuracy (y, zoomed on the data) against the epoch (x), one coloured line per series with
/// whiskers over each point's interval; `reference` (the instruct parent's accuracy) dashed.
///
/// # Errors
/// Drawing failures.
pub fn epoch_accuracy(
    title: &str,
    series: &[EpochSeries],
    reference: Option<(&str, f64)>,
) -> Result<String> {
    let epochs = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1);
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|p| [p.2.0, p.2.1]))
        .chain(reference.map(|r| r.1));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (y_lo, y_hi) = zoomed(lo, hi, 0.08, 0.02, (0.0, 1.0));
    render((760, 460), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5..(epochs as f64 + 0.5), y_lo..y_hi)?;
        chart
            .configure_mesh()
            .light_line_style(BLACK.mix(0.04))
            .x_labels(epochs + 2)
            .x_label_formatter(&|x: &f64| {
                let e = x.round();
                if (x - e).abs() < 1e-6 && e >= 1.0 {
                    format!("{e:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y: &f64| format!("{:.0}%", y * 100.0))
            .x_desc("epochs trained")
            .y_desc(format!(
                "accuracy (95% interval; axis from {:.0}%)",
                y_lo * 100.0
            ))
            .draw()?;
        if let Some((name, acc)) = reference {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(0.5, acc), (epochs as f64 + 0.5, acc)],
                    4,
                    4,
                    BLACK.mix(0.45).stroke_width(1),
                ))?
                .label(name)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.45)));
        }
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            // Side by side at each epoch, so two intervals do not hide each other.
            let shift = (i as f64 - (series.len() as f64 - 1.0) / 2.0) * 0.06;
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0 as f64 + shift, p.1)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
            for (p, (x, _)) in s.points.iter().zip(&pts) {
                chart.draw_series([
                    PathElement::new(vec![(*x, p.2.0), (*x, p.2.1)], c.stroke_width(2)),
                    PathElement::new(
                        vec![(x - 0.04, p.2.0), (x + 0.04, p.2.0)],
                        c.stroke_width(2),
                    ),
                    PathElement::new(
                        vec![(x - 0.04, p.2.1), (x + 0.04, p.2.1)],
                        c.stroke_width(2),
                    ),
                ])?;
                chart.draw_series([Circle::new((*x, p.1), 5, c.filled())])?;
            }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_point_and_whisker_per_epoch_and_series() {
        let series = [
            EpochSeries {
                name: "trained".into(),
                points: vec![(1, 0.30, (0.26, 0.34)), (2, 0.33, (0.29, 0.37))],
            },
            EpochSeries {
                name: "merged".into(),
                points: vec![(1, 0.35, (0.31, 0.39)), (2, 0.36, (0.32, 0.40))],
            },
        ];
        let svg = epoch_accuracy("CPT epochs", &series, Some(("Instruct", 0.347))).unwrap();
        // 4 points plus the two legend markers.
        assert_eq!(svg.matches("<circle").count(), 6, "{svg}");
        for label in ["trained", "merged", "Instruct", "epochs trained"] {
            assert!(svg.contains(label), "{label}");
        }
    }
}
