//! How far each fine-tune moved from the instruct parent, next to whether its merge shows
//! synergy: the explanation of "emergence" the paper lacks. When a fine-tune leaves a tensor
//! colinear with its parent (|cos| > 0.9995), SLERP interpolates it linearly, and a merge of
//! such tensors can only land between its parents; a merge can only surprise where the weights
//! actually moved apart.

use serde::{Deserialize, Serialize};
use temper_merge::{GroupDelta, ModuleGroup, WeightDelta};

use super::PipelineReport;
use super::tables::Table;
use crate::plots::MovedCurve;

/// One fine-tuned variant against the instruct parent (`temper_merge::weight_delta`, without
/// the per-tensor rows: `report.json` keeps the per-layer groups).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WeightsMoved {
    pub variant: String,
    pub parent: String,
    pub tensors: usize,
    /// ‖ΔW‖ / ‖W‖ over every tensor, then over attention and MLP tensors.
    pub relative_change: f64,
    pub self_attn_change: f64,
    pub mlp_change: f64,
    pub min_cosine: f64,
    /// Tensors SLERP would interpolate linearly (|cos| > 0.9995).
    pub linear_fallbacks: usize,
    /// Per layer and module group.
    pub groups: Vec<GroupDelta>,
}

impl WeightsMoved {
    pub fn new(variant: &str, parent: &str, d: WeightDelta) -> Self {
        Self {
            variant: variant.to_string(),
            parent: parent.to_string(),
            tensors: d.tensors.len(),
            relative_change: d.relative_change,
            self_attn_change: d.self_attn_change,
            mlp_change: d.mlp_change,
            min_cosine: d.min_cosine,
            linear_fallbacks: d.linear_fallbacks,
            groups: d.groups,
        }
    }
}

/// Each fine-tune's movement and, beside it, every merge made from it against its parents.
pub fn weights_moved(r: &PipelineReport) -> Table {
    let mut rows = Vec::new();
    for w in &r.weights {
        let merges: Vec<_> = r
            .analyses
            .iter()
            .filter(|a| a.finetuned == w.variant)
            .collect();
        let moved = [
            w.variant.clone(),
            format!("{:.2e}", w.relative_change),
            format!("{:.2e}", w.self_attn_change),
            format!("{:.2e}", w.mlp_change),
            format!("{:.6}", w.min_cosine),
            format!("{}/{}", w.linear_fallbacks, w.tensors),
        ];
        if merges.is_empty() {
            let mut row = moved.to_vec();
            row.extend(["–", "–", "–", "–"].map(String::from));
            rows.push(row);
        }
        for m in merges {
            let a = &m.analysis;
            let mut row = moved.to_vec();
            row.extend([
                m.merged.clone(),
                format!("{:+.1}", a.gain_over_best * 100.0),
                format!("{:.3}", a.mcnemar.p_value),
                if a.synergy { "yes" } else { "no" }.into(),
            ]);
            rows.push(row);
        }
    }
    Table {
        header: [
            "Fine-tune",
            "‖ΔW‖/‖W‖",
            "attention",
            "MLP",
            "Min cos",
            "Linear in SLERP",
            "Merge",
            "Gain over better parent",
            "McNemar p",
            "Synergy",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}

/// The per-layer curves of [`crate::plots::moved_by_layer`].
pub(crate) fn moved_curves(r: &PipelineReport) -> Vec<MovedCurve> {
    let pick = |groups: &[GroupDelta], g: ModuleGroup| -> Vec<(usize, f64)> {
        groups
            .iter()
            .filter(|d| d.group == g)
            .filter_map(|d| d.layer.map(|l| (l, d.relative_change)))
            .collect()
    };
    r.weights
        .iter()
        .map(|w| MovedCurve {
            name: w.variant.clone(),
            self_attn: pick(&w.groups, ModuleGroup::SelfAttn),
            mlp: pick(&w.groups, ModuleGroup::Mlp),
        })
        .collect()
}
