//! How far a fine-tune moved from its parent, tensor by tensor: the cosine between the two
//! flattened weights (what decides whether mergekit's SLERP falls back to linear
//! interpolation), the norm of the change relative to the parent's norm, and the ratio of the
//! two norms; summed up per layer and module group (attention, MLP, the rest).
//!
//! Why it matters: a SLERP merge only differs from a linear one when the two weight vectors
//! are far enough apart (|cos| ≤ 0.9995). A short LoRA fine-tune leaves nearly every tensor
//! colinear with its parent, so whatever its merge shows is linear interpolation; the paper's
//! "emergent" gains of SLERP came from full fine-tuning over whole epochs. This module puts a
//! number on that next to each merge's benchmark result.
//!
//! Reductions are f64 over fixed-size chunks in tensor order, one thread: the figures do not
//! depend on the machine, and memory stays at two chunks whatever the model's size.

use serde::{Deserialize, Serialize};

use crate::methods::DOT_THRESHOLD;
use crate::source::layer_of;
use crate::{MergeError, ModelSource, Result};

/// Elements decoded at a time from each model.
const CHUNK: usize = 1 << 16;

/// One tensor's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorDelta {
    /// The HF name (`model.layers.3.self_attn.q_proj.weight`).
    pub name: String,
    /// Decoder layer index, `None` for embeddings, final norm and LM head.
    pub layer: Option<usize>,
    pub group: ModuleGroup,
    pub numel: usize,
    /// cos(W_parent, W_finetuned) over the flattened tensors (1 when either is zero).
    pub cosine: f64,
    /// ‖W_finetuned − W_parent‖ / ‖W_parent‖ (the absolute change when the parent is zero).
    pub relative_change: f64,
    /// ‖W_finetuned‖ / ‖W_parent‖.
    pub norm_ratio: f64,
    /// |cos| > 0.9995: mergekit's SLERP interpolates this tensor linearly.
    pub linear_fallback: bool,
}

/// Which part of a decoder layer a tensor belongs to (mergekit's `self_attn` / `mlp` filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleGroup {
    SelfAttn,
    Mlp,
    /// Norms, embeddings, the LM head.
    Other,
}

impl ModuleGroup {
    fn of(name: &str) -> Self {
        if name.contains("self_attn") {
            Self::SelfAttn
        } else if name.contains("mlp") {
            Self::Mlp
        } else {
            Self::Other
        }
    }
}

/// The change of one module group of one layer (or of the non-layer tensors), pooled over its
/// tensors: norms are summed in squares, so a large matrix weighs more than a norm vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupDelta {
    pub layer: Option<usize>,
    pub group: ModuleGroup,
    pub tensors: usize,
    /// sqrt(Σ‖ΔW‖²) / sqrt(Σ‖W_parent‖²).
    pub relative_change: f64,
    /// The smallest cosine among the group's tensors.
    pub min_cosine: f64,
    /// Tensors SLERP would interpolate linearly.
    pub linear_fallbacks: usize,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightDelta {
    /// In the parent's tensor order (sorted by name).
    pub tensors: Vec<TensorDelta>,
    /// Sorted by layer (non-layer tensors first), then group.
    pub groups: Vec<GroupDelta>,
    /// sqrt(Σ‖ΔW‖²) / sqrt(Σ‖W_parent‖²) over every tensor.
    pub relative_change: f64,
    /// The same over the attention tensors of every layer.
    pub self_attn_change: f64,
    /// The same over the MLP tensors of every layer.
    pub mlp_change: f64,
    pub min_cosine: f64,
    pub linear_fallbacks: usize,
    /// Tensors with any element changed.
    pub changed: usize,
}

impl WeightDelta {
    /// The share of tensors SLERP would interpolate linearly (0 for an empty model).
    pub fn linear_fallback_fraction(&self) -> f64 {
        match self.tensors.len() {
            0 => 0.0,
            n => self.linear_fallbacks as f64 / n as f64,
        }
    }
}

/// Sums over one tensor, or over a group of them.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    parent_sq: f64,
    finetuned_sq: f64,
    dot: f64,
    delta_sq: f64,
}

/// Compare `finetuned` with `parent` tensor by tensor.
///
/// # Errors
/// The two models do not hold the same tensors with the same shapes (naming the tensor and
/// the model), a tensor holds a non-finite value, or a tensor cannot be read.
pub fn weight_delta(finetuned: &ModelSource, parent: &ModelSource) -> Result<WeightDelta> {
    if let Some(extra) = finetuned.tensor_names().find(|n| !parent.contains(n)) {
        return Err(MergeError::MissingTensor {
            tensor: extra.to_string(),
            model: parent.label().to_string(),
        });
    }
    let mut tensors = Vec::new();
    let mut sums = Vec::new();
    for name in parent.tensor_names() {
        if !finetuned.contains(name) {
            return Err(MergeError::MissingTensor {
                tensor: name.to_string(),
                model: finetuned.label().to_string(),
            });
        }
        let s = tensor_sums(name, finetuned, parent)?;
        let cosine = cosine(&s);
        tensors.push(TensorDelta {
            name: name.to_string(),
            layer: layer_of(name).map(|(i, _)| i),
            group: ModuleGroup::of(name),
            numel: parent.shape(name).map_or(0, |s| s.iter().product()),
            cosine,
            relative_change: ratio(s.delta_sq, s.parent_sq),
            norm_ratio: ratio(s.finetuned_sq, s.parent_sq),
            linear_fallback: cosine.abs() > f64::from(DOT_THRESHOLD),
        });
        sums.push(s);
    }
    let pooled = |group: Option<ModuleGroup>| {
        let s = tensors
            .iter()
            .zip(&sums)
            .filter(|(t, _)| group.is_none_or(|g| t.group == g))
            .fold(Sums::default(), |acc, (_, s)| acc.add(s));
        ratio(s.delta_sq, s.parent_sq)
    };
    Ok(WeightDelta {
        groups: groups(&tensors, &sums),
        relative_change: pooled(None),
        self_attn_change: pooled(Some(ModuleGroup::SelfAttn)),
        mlp_change: pooled(Some(ModuleGroup::Mlp)),
        min_cosine: tensors.iter().map(|t| t.cosine).fold(1.0, f64::min),
        linear_fallbacks: tensors.iter().filter(|t| t.linear_fallback).count(),
        changed: sums.iter().filter(|s| s.delta_sq > 0.0).count(),
        tensors,
    })
}

/// The four sums of one tensor, read in chunks.
fn tensor_sums(name: &str, finetuned: &ModelSource, parent: &ModelSource) -> Result<Sums> {
    let a = parent.tensor(name)?;
    let b = finetuned.tensor(name)?;
    if a.shape() != b.shape() {
        return Err(MergeError::ShapeMismatch {
            tensor: name.to_string(),
            details: format!(
                "{:?} in {} but {:?} in {}",
                a.shape(),
                parent.label(),
                b.shape(),
                finetuned.label()
            ),
        });
    }
    let n = a.numel();
    let (mut xa, mut xb) = (vec![0.0f32; CHUNK.min(n)], vec![0.0f32; CHUNK.min(n)]);
    let mut sums = Sums::default();
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        let (ca, cb) = (&mut xa[..end - start], &mut xb[..end - start]);
        a.read(start..end, ca);
        b.read(start..end, cb);
        for (&p, &f) in ca.iter().zip(cb.iter()) {
            let (p, f) = (f64::from(p), f64::from(f));
            if !(p.is_finite() && f.is_finite()) {
                return Err(MergeError::tensor(
                    name,
                    "holds a non-finite value; its change cannot be measured",
                ));
            }
            sums.parent_sq += p * p;
            sums.finetuned_sq += f * f;
            sums.dot += p * f;
            sums.delta_sq += (f - p) * (f - p);
        }
        start = end;
    }
    Ok(sums)
}

impl Sums {
    fn add(self, o: &Sums) -> Sums {
        Sums {
            parent_sq: self.parent_sq + o.parent_sq,
            finetuned_sq: self.finetuned_sq + o.finetuned_sq,
            dot: self.dot + o.dot,
            delta_sq: self.delta_sq + o.delta_sq,
        }
    }
}

/// cos of the two vectors; 1 when either is zero (nothing to interpolate spherically).
fn cosine(s: &Sums) -> f64 {
    let norms = (s.parent_sq * s.finetuned_sq).sqrt();
    if norms == 0.0 {
        1.0
    } else {
        (s.dot / norms).clamp(-1.0, 1.0)
    }
}

/// sqrt(num / den); the absolute sqrt(num) when `den` is zero.
fn ratio(num_sq: f64, den_sq: f64) -> f64 {
    if den_sq == 0.0 {
        num_sq.sqrt()
    } else {
        (num_sq / den_sq).sqrt()
    }
}

/// Pool the tensors by (layer, group).
fn groups(tensors: &[TensorDelta], sums: &[Sums]) -> Vec<GroupDelta> {
    let mut pooled: std::collections::BTreeMap<(Option<usize>, ModuleGroup), (Sums, GroupDelta)> =
        std::collections::BTreeMap::new();
    for (t, s) in tensors.iter().zip(sums) {
        let entry = pooled.entry((t.layer, t.group)).or_insert_with(|| {
            (
                Sums::default(),
                GroupDelta {
                    layer: t.layer,
                    group: t.group,
                    tensors: 0,
                    relative_change: 0.0,
                    min_cosine: 1.0,
                    linear_fallbacks: 0,
                },
            )
        });
        entry.0 = entry.0.add(s);
        entry.1.tensors += 1;
        entry.1.min_cosine = entry.1.min_cosine.min(t.cosine);
        entry.1.linear_fallbacks += usize::from(t.linear_fallback);
    }
    pooled
        .into_values()
        .map(|(s, mut g)| {
            g.relative_change = ratio(s.delta_sq, s.parent_sq);
            g
        })
        .collect()
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
