//! How far each fine-tune moved its weights from the instruct parent, layer by layer: the
//! relative change ‖ΔW‖ / ‖W‖ of the attention and of the MLP tensors, one line per fine-tune,
//! on a log scale (a short LoRA run moves the weights ~100× less than whole epochs of full
//! fine-tuning, and both should read on one chart).

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{FONT, anchored, color, render};
use crate::Result;

/// One fine-tune: its variant name and `(layer, relative change)` per module group.
#[derive(Debug, Clone, PartialEq)]
pub struct MovedCurve {
    pub name: String,
    pub self_attn: Vec<(usize, f64)>,
    pub mlp: Vec<(usize, f64)>,
}

/// Smallest value drawn: an unchanged layer sits on the floor rather than at log(0).
const FLOOR: f64 = 1e-7;

/// Two panels (attention, MLP) sharing the y axis; `None` without any layer data.
///
/// # Errors
/// Drawing failures.
pub fn moved_by_layer(curves: &[MovedCurve]) -> Result<Option<String>> {
    let points = curves
        .iter()
        .flat_map(|c| c.self_attn.iter().chain(&c.mlp))
        .copied();
    let (mut layers, mut lo, mut hi) = (0usize, f64::INFINITY, f64::NEG_INFINITY);
    let mut any = false;
    for (layer, v) in points {
        any = true;
        layers = layers.max(layer + 1);
        let v = v.max(FLOOR);
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !any {
        return Ok(None);
    }
    // The y axis is log10 of the change, spanning whole decades: plotters' own log scale
    // leaves a one-decade axis with a single label.
    let lo = lo.log10().floor();
    let hi = hi.log10().ceil().max(lo + 1.0);
    let decades = (hi - lo).round() as usize;
    let x_max = (layers.max(2) - 1) as f64;
    let svg = render((960, 420 + 22 * curves.len().div_ceil(3) as u32), |root| {
        root.fill(&WHITE)?;
        let (body, legend) = root.split_vertically(400);
        let panels = body.split_evenly((1, 2));
        for (panel, (title, pick)) in panels.iter().zip([
            (
                "Attention",
                (|c: &MovedCurve| &c.self_attn) as fn(&MovedCurve) -> &Vec<(usize, f64)>,
            ),
            ("MLP", |c: &MovedCurve| &c.mlp),
        ]) {
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{title}: ‖ΔW‖ / ‖W‖ per layer"), (FONT, 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..x_max, lo..hi)?;
            chart
                .configure_mesh()
                .light_line_style(BLACK.mix(0.04))
                .x_desc("layer")
                .x_labels(layers.clamp(2, 16))
                .x_label_formatter(&|x| {
                    // Layers are whole: fractional ticks stay unlabelled.
                    if (x - x.round()).abs() < 1e-9 {
                        format!("{x:.0}")
                    } else {
                        String::new()
                    }
                })
                .y_desc("relative change")
                .y_labels(decades + 1)
                .y_label_formatter(&|y| {
                    if (y - y.round()).abs() < 1e-9 {
                        format!("1e{y:.0}")
                    } else {
                        String::new()
                    }
                })
                .draw()?;
            for (i, c) in curves.iter().enumerate() {
                let line: Vec<(f64, f64)> = pick(c)
                    .iter()
                    .map(|&(l, v)| (l as f64, v.max(FLOOR).log10()))
                    .collect();
                let col = color(i);
                chart.draw_series(LineSeries::new(line.clone(), col.stroke_width(2)))?;
                chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, col.filled())))?;
            }
        }
        // The legend under both panels: one swatch and name per fine-tune, three per row.
        for (i, c) in curves.iter().enumerate() {
            let (x, y) = (40 + (i % 3) as i32 * 300, 8 + (i / 3) as i32 * 22);
            legend.draw(&Rectangle::new(
                [(x, y + 4), (x + 18, y + 10)],
                color(i).filled(),
            ))?;
            legend.draw(&Text::new(
                c.name.clone(),
                (x + 24, y + 7),
                anchored(13, HPos::Left, VPos::Center),
            ))?;
        }
        Ok(())
    })?;
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_line_per_fine_tune_with_its_name() {
        let curve = |name: &str, scale: f64| MovedCurve {
            name: name.into(),
            self_attn: (0..4).map(|l| (l, scale * (l + 1) as f64)).collect(),
            mlp: (0..4).map(|l| (l, scale * 2.0)).collect(),
        };
        let svg = moved_by_layer(&[curve("Instruct-CPT", 1e-3), curve("Instruct-CPT-SFT", 0.0)])
            .expect("draw")
            .expect("layers");
        assert!(svg.contains("Instruct-CPT-SFT") && svg.contains("Attention"));
        // Two panels × two fine-tunes: four data lines (the axes are 1 pixel wide).
        assert_eq!(svg.matches(r#"stroke-width="2""#).count(), 4, "{svg}");
        assert_eq!(moved_by_layer(&[]).expect("draw"), None);
    }
}
