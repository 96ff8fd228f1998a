//! How far each fine-tune moved each weight from the instruct parent, as a layer × module
//! heatmap of `1 − cos(fine-tuned, instruct)` (log colour scale), one panel per merge. The
//! per-tensor values in checkpoint order drew a saw-tooth (the modules of one layer differ
//! more than the layers do); laid out by layer and module, the pattern reads at a glance.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{FONT, anchored, render};
use crate::Result;

/// One merge: its label and `(tensor name, cosine of the two inputs)`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapPanel {
    pub label: String,
    pub tensors: Vec<(String, f64)>,
}

/// The modules of a Llama layer in the order of its forward pass; others follow as found.
const MODULES: [&str; 9] = [
    "input_layernorm",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "post_attention_layernorm",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// A module's column label: short enough to read rotated under a 30-pixel column.
fn short(module: &str) -> String {
    match module {
        "input_layernorm" => "attn norm".into(),
        "post_attention_layernorm" => "mlp norm".into(),
        m => m.strip_suffix("_proj").unwrap_or(m).to_string(),
    }
}

/// SLERP interpolates linearly when the inputs' cosine is above 0.9995 (mergekit's threshold).
const FALLBACK: f64 = 5e-4;
const FLOOR: f64 = 1e-9;

/// `model.layers.7.self_attn.q_proj.weight` → `(7, "q_proj")`; `None` outside the layers.
pub fn layer_module(name: &str) -> Option<(usize, String)> {
    let rest = name.split("layers.").nth(1)?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let rest = rest.strip_suffix(".weight").unwrap_or(rest);
    let module = rest.rsplit('.').next()?.to_string();
    Some((layer, module))
}

/// matplotlib's viridis at five stops, interpolated: dark is "barely moved".
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// One panel per merge (layers down, modules across), a shared log colour scale and a colour
/// bar marking SLERP's linear-fallback threshold; `None` when no tensor is inside a layer.
///
/// # Errors
/// Drawing failures.
pub fn merge_heatmap(panels: &[HeatmapPanel]) -> Result<Option<String>> {
    let mut modules: Vec<String> = Vec::new();
    let mut layers = 0usize;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in panels {
        for (name, cos) in &p.tensors {
            if let Some((l, m)) = layer_module(name) {
                layers = layers.max(l + 1);
                if !modules.contains(&m) {
                    modules.push(m);
                }
                let d = (1.0 - cos).max(FLOOR).log10();
                lo = lo.min(d);
                hi = hi.max(d);
            }
        }
    }
    if layers == 0 || panels.is_empty() {
        return Ok(None);
    }
    modules.sort_by_key(|m| MODULES.iter().position(|k| k == m).unwrap_or(MODULES.len()));
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let shade = |cos: f64| viridis(((1.0 - cos).max(FLOOR).log10() - lo) / (hi - lo));
    let ncol = modules.len();
    // Modules down (names read horizontally), layers across, one panel per merge stacked.
    let width = 1000u32;
    let panel_height = 70 + 22 * ncol as u32;
    let height = 40 + panel_height * panels.len() as u32;
    let row = |c: usize| (ncol - 1 - c) as i32;
    render((width, height), |root| {
        root.fill(&WHITE)?;
        let root = root.titled(
            "1 − cos(fine-tuned, instruct) by layer and module",
            (FONT, 18),
        )?;
        let (maps, bar) = root.split_horizontally(width - 110);
        for (p, area) in panels.iter().zip(maps.split_evenly((panels.len(), 1))) {
            let mut chart = ChartBuilder::on(&area)
                .caption(&p.label, (FONT, 14))
                .margin(6)
                .x_label_area_size(32)
                .y_label_area_size(90)
                // A segmented range `0..n` has n + 1 segments.
                .build_cartesian_2d(0.0..layers as f64, (0..ncol as i32 - 1).into_segmented())?;
            chart
                .configure_mesh()
                .disable_mesh()
                .y_labels(ncol)
                .y_label_formatter(&|y: &SegmentValue<i32>| match y {
                    SegmentValue::CenterOf(i) if (0..ncol as i32).contains(i) => modules
                        .get(ncol - 1 - *i as usize)
                        .map(|m| short(m))
                        .unwrap_or_default(),
                    _ => String::new(),
                })
                .y_label_style((FONT, 13))
                .x_labels(layers.min(16))
                .x_label_formatter(&|x: &f64| format!("{x:.0}"))
                .x_desc("layer")
                .draw()?;
            chart.draw_series(p.tensors.iter().filter_map(|(name, cos)| {
                let (l, m) = layer_module(name)?;
                let c = row(modules.iter().position(|x| *x == m)?);
                Some(Rectangle::new(
                    [
                        (l as f64, SegmentValue::Exact(c)),
                        (l as f64 + 1.0, SegmentValue::Exact(c + 1)),
                    ],
                    shade(*cos).filled(),
                ))
            }))?;
        }
        // The colour bar: log10 steps from `lo` to `hi`, the fallback threshold as a line.
        let mut chart = ChartBuilder::on(&bar)
            .caption("1 − cos", (FONT, 13))
            .margin_top(8)
            .margin_bottom(40)
            .margin_right(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, (10f64.powf(lo)..10f64.powf(hi)).log_scale())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_label_style((FONT, 12))
            .y_label_formatter(&|y: &f64| format!("{y:.0e}"))
            .draw()?;
        let steps = 64;
        chart.draw_series((0..steps).map(|i| {
            let (a, b) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
            let (ya, yb) = (
                10f64.powf(lo + (hi - lo) * a),
                10f64.powf(lo + (hi - lo) * b),
            );
            Rectangle::new([(0.0, ya), (1.0, yb)], viridis(a).filled())
        }))?;
        if (10f64.powf(lo)..=10f64.powf(hi)).contains(&FALLBACK) {
            chart.draw_series([PathElement::new(
                vec![(0.0, FALLBACK), (1.0, FALLBACK)],
                RED.stroke_width(2),
            )])?;
            chart.draw_series([Text::new(
                "linear",
                (0.5, FALLBACK),
                anchored(11, HPos::Center, VPos::Bottom),
            )])?;
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

    #[test]
    fn names_split_into_layer_and_module() {
        assert_eq!(
            layer_module("model.layers.7.self_attn.q_proj.weight"),
            Some((7, "q_proj".into()))
        );
        assert_eq!(
            layer_module("model.layers.12.input_layernorm.weight"),
            Some((12, "input_layernorm".into()))
        );
        assert_eq!(layer_module("model.embed_tokens.weight"), None);
        assert_eq!(layer_module("model.norm.weight"), None);
    }

    #[test]
    fn one_cell_per_layer_and_module() {
        let tensors: Vec<(String, f64)> = (0..3)
            .flat_map(|l| {
                ["q_proj", "down_proj"].map(|m| (format!("model.layers.{l}.x.{m}.weight"), 0.999))
            })
            .chain([("model.norm.weight".to_string(), 0.99)])
            .collect();
        let svg = merge_heatmap(&[HeatmapPanel {
            label: "cpt".into(),
            tensors,
        }])
        .unwrap()
        .unwrap();
        assert!(svg.contains("\nq\n</text>") && svg.contains("\ndown\n</text>"));
        // 6 cells, all the bottom colour of the scale (1 − 0.999 everywhere), and the colour
        // bar's first step.
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(svg.matches("fill=\"#440154\"").count(), 7);
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert!(merge_heatmap(&[]).unwrap().is_none());
    }
}
