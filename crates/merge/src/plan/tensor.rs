//! Planning one output tensor: its inputs in every source model, the shape they must agree on
//! (vocabulary rows excepted, when a tokenizer or truncation resolves them), and its parameters
//! resolved by precedence.

use std::collections::BTreeMap;

use super::{PlanOptions, PlannedInput, PlannedTensor, Slice, is_vocab_tensor};
use crate::config::{MergeConfig, ModelRef, Parameters};
use crate::method::{BaseModel, MergeMethod, ResolvedParams};
use crate::source::ModelSource;
use crate::vocab::VocabPlan;
use crate::{DType, MergeError, Result};

/// Plans output tensors one by one, collecting them (and the vocabulary rows they settle).
pub(super) struct Planner<'p> {
    pub(super) config: &'p MergeConfig,
    pub(super) models: &'p [ModelSource],
    pub(super) refs: &'p [ModelRef],
    pub(super) method: &'p dyn MergeMethod,
    pub(super) options: &'p PlanOptions,
    pub(super) load_dtype: Option<DType>,
    pub(super) save_dtype: Option<DType>,
    pub(super) tensors: Vec<PlannedTensor>,
    pub(super) vocab_rows: Option<usize>,
    pub(super) vocab: Option<&'p VocabPlan>,
}

impl Planner<'_> {
    /// Plan output tensor `out`. For layer tensors `key` is the suffix after
    /// `model.layers.{i}.` and `layer` the index within the slice; otherwise `key` is the name.
    pub(super) fn add(
        &mut self,
        out: &str,
        key: &str,
        slice: &Slice<'_>,
        x: f64,
        layer: Option<usize>,
    ) -> Result<()> {
        let mut inputs = Vec::with_capacity(slice.sources.len());
        let mut shapes: Vec<Vec<usize>> = Vec::new();
        for src in &slice.sources {
            let model = &self.models[src.model];
            let name = match layer {
                Some(j) => format!("model.layers.{}.{key}", src.start + j),
                None => key.to_string(),
            };
            // Tied models have no lm_head: mergekit substitutes the embedding.
            let name = if !model.contains(&name)
                && name == "lm_head.weight"
                && model.contains("model.embed_tokens.weight")
            {
                "model.embed_tokens.weight".to_string()
            } else {
                name
            };
            let shape = model
                .shape(&name)
                .ok_or_else(|| MergeError::MissingTensor {
                    tensor: name.clone(),
                    model: self.refs[src.model].to_string(),
                })?;
            shapes.push(shape.to_vec());
            inputs.push(PlannedInput {
                model: src.model,
                tensor: name,
            });
        }

        // Shapes must agree; vocabulary rows may differ only with an explicit resolution.
        let mut shape = shapes[0].clone();
        let mut rows = None;
        if let Some(vocab) = self.vocab.filter(|_| is_vocab_tensor(out)) {
            // Every input is re-laid-out to the output vocabulary: rows may differ.
            for (inp, s) in inputs.iter().zip(&shapes) {
                let tail_differs = s.is_empty() || s.len() != shape.len() || s[1..] != shape[1..];
                let need = vocab.rows_needed(inp.model);
                if tail_differs || s[0] < need {
                    let why = if tail_differs {
                        format!(
                            "{} has {s:?}, {} has {shape:?}",
                            self.refs[inp.model], self.refs[inputs[0].model]
                        )
                    } else {
                        format!(
                            "{} has {s:?} but its tokenizer uses ids up to {}",
                            self.refs[inp.model],
                            need - 1
                        )
                    };
                    return Err(MergeError::ShapeMismatch {
                        tensor: out.to_string(),
                        details: why,
                    });
                }
            }
            if let Some(r) = shape.first_mut() {
                *r = vocab.rows();
            }
            self.vocab_rows = Some(vocab.rows());
        } else if shapes.iter().any(|s| s != &shape) {
            let describe = || {
                inputs
                    .iter()
                    .zip(&shapes)
                    .map(|(i, s)| format!("{} has {s:?}", self.refs[i.model]))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let same_tail = shapes
                .iter()
                .all(|s| s.len() == shape.len() && s[1..] == shape[1..]);
            if is_vocab_tensor(out) && same_tail {
                if !self.options.unsafe_truncate_embeddings {
                    return Err(MergeError::ShapeMismatch {
                        tensor: out.to_string(),
                        details: format!(
                            "vocabulary sizes differ ({}); pass --unsafe-truncate-embeddings to keep the common rows",
                            describe()
                        ),
                    });
                }
                let min = shapes.iter().map(|s| s[0]).min().unwrap_or(0);
                shape[0] = min;
                rows = Some(min);
                self.vocab_rows = Some(min);
            } else {
                return Err(MergeError::ShapeMismatch {
                    tensor: out.to_string(),
                    details: describe(),
                });
            }
        }

        let base = slice
            .base
            .filter(|_| self.method.spec().base != BaseModel::Ignored)
            .and_then(|b| slice.sources.iter().position(|s| s.model == b));
        let params = self.resolve(out, slice, base, x)?;
        let first = &inputs[0];
        let stored = self.models[first.model]
            .dtype(&first.tensor)
            .unwrap_or(DType::F32);
        let load_dtype = self.load_dtype.unwrap_or(stored);
        let out_dtype = self.save_dtype.unwrap_or(load_dtype);
        self.tensors.push(PlannedTensor {
            name: out.to_string(),
            shape,
            inputs,
            base,
            params,
            x,
            rows,
            load_dtype,
            out_dtype,
        });
        Ok(())
    }

    fn resolve(
        &self,
        name: &str,
        slice: &Slice<'_>,
        base: Option<usize>,
        x: f64,
    ) -> Result<ResolvedParams> {
        let spec = self.method.spec();
        let global_levels = [slice.params, Some(&self.config.parameters)];
        let lookup = |levels: &[Option<&Parameters>], p: &str| {
            levels
                .iter()
                .flatten()
                .filter_map(|lvl| lvl.get(p))
                .find_map(|v| v.evaluate(name, x))
        };
        // A config read from YAML was range-checked already; one built in code may not be.
        let finite = |p: &str, v: f64| {
            if v.is_finite() {
                Ok(v)
            } else {
                Err(MergeError::Parameter(format!(
                    "{}: parameter `{p}` is {v} for tensor {name} (must be a finite number)",
                    self.method.name()
                )))
            }
        };
        let mut out = ResolvedParams::default();
        for p in spec.global {
            let v = lookup(&global_levels, p.name)
                .or(p.default)
                .ok_or_else(|| {
                    MergeError::Parameter(format!(
                        "{} needs parameter `{}` (none given matches tensor {name})",
                        self.method.name(),
                        p.name
                    ))
                })?;
            out.global.insert(p.name, finite(p.name, v)?);
        }
        for (i, src) in slice.sources.iter().enumerate() {
            let levels = [src.params, slice.params, Some(&self.config.parameters)];
            let mut m = BTreeMap::new();
            for p in spec.per_model {
                match lookup(&levels, p.name).or(p.default) {
                    Some(v) => {
                        m.insert(p.name, finite(p.name, v)?);
                    }
                    None if Some(i) == base => {}
                    None => {
                        return Err(MergeError::Parameter(format!(
                            "{} needs parameter `{}` for model {} (none given matches tensor {name})",
                            self.method.name(),
                            p.name,
                            self.refs[src.model]
                        )));
                    }
                }
            }
            out.per_model.push(m);
        }
        Ok(out)
    }
}
