//! Planning: which output tensors exist, which input tensors feed each one, and every
//! parameter resolved — all checked before a single byte is written.
//!
//! Rules follow mergekit: within an output slice of `L` layers, layer `i` sits at fraction
//! `x = i/(L−1)` (`1` when `L = 1`); pre-layer tensors (the embedding) come from the first
//! slice and post-layer tensors (final norm, `lm_head`) from the last, both at `x = 0`.
//! Parameter precedence: per-source → slice → global → the method's default. Filters match
//! substrings of the output tensor name, first match wins.

mod tensor;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{MergeConfig, ModelRef, Parameters};
use crate::method::{BaseModel, MergeMethod, ResolvedParams};
use crate::methods::method_by_name;
use crate::source::{ModelSource, layer_of};
use crate::vocab::{VocabPlan, build_vocab_plan};
use crate::{DType, MergeError, Result};
use tensor::Planner;

/// Options that change planning.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Cut embedding/`lm_head` rows to the smallest vocabulary instead of failing.
    pub unsafe_truncate_embeddings: bool,
    /// Directory a `tokenizer` source path falls back to (the config file's), as for models.
    pub config_dir: Option<PathBuf>,
}

/// One input of an output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedInput {
    /// Index into [`MergePlan::models`].
    pub model: usize,
    /// The tensor's name in that model.
    pub tensor: String,
}

/// One output tensor.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub inputs: Vec<PlannedInput>,
    /// Index of the base model within `inputs`.
    pub base: Option<usize>,
    pub params: ResolvedParams,
    /// Layer fraction used for gradients.
    pub x: f64,
    /// Rows kept of vocabulary-axis tensors (embedding truncation).
    pub rows: Option<usize>,
    pub load_dtype: DType,
    pub out_dtype: DType,
}

impl PlannedTensor {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes in the output file.
    pub fn out_bytes(&self) -> u64 {
        (self.numel() * self.out_dtype.size()) as u64
    }
}

/// A checked merge, ready to run.
#[derive(Debug)]
pub struct MergePlan {
    pub method: Box<dyn MergeMethod>,
    /// Distinct input models (the order of [`MergeConfig::referenced_models`]).
    pub models: Vec<ModelSource>,
    pub refs: Vec<ModelRef>,
    pub tensors: Vec<PlannedTensor>,
    /// The model whose config and tokenizer the output inherits.
    pub config_model: usize,
    /// Number of decoder layers in the output.
    pub num_layers: usize,
    /// Where each output layer comes from: (model index, layer) of its slice's first source
    /// (the output config's per-layer lists, e.g. Qwen2/Qwen3's `layer_types`, follow it).
    pub layer_origins: Vec<(usize, usize)>,
    /// Vocabulary rows of the output embedding, when it differs from the config model's.
    pub vocab_rows: Option<usize>,
    /// The output vocabulary, when `tokenizer`/`tokenizer_source` is set: vocabulary tensors
    /// are re-laid-out to it before merging.
    pub vocab: Option<Arc<VocabPlan>>,
    /// The dtype recorded in the output config.
    pub out_dtype: DType,
}

struct Source<'c> {
    model: usize,
    start: usize,
    end: usize,
    params: Option<&'c Parameters>,
}

struct Slice<'c> {
    sources: Vec<Source<'c>>,
    params: Option<&'c Parameters>,
    base: Option<usize>,
}

impl MergePlan {
    /// Plan `config` over opened `models` (aligned with `config.referenced_models()`).
    ///
    /// # Errors
    /// Unknown method or parameter, a missing parameter, the wrong number of inputs, a missing
    /// tensor, mismatched shapes, or different vocabularies without a resolution.
    pub fn new(
        config: &MergeConfig,
        models: Vec<ModelSource>,
        options: &PlanOptions,
    ) -> Result<Self> {
        let refs = config.referenced_models();
        if refs.len() != models.len() {
            return Err(MergeError::Config(format!(
                "{} models referenced but {} opened",
                refs.len(),
                models.len()
            )));
        }
        let method = method_by_name(&config.merge_method)?;
        let spec = method.spec();
        let index_of = |m: &ModelRef| refs.iter().position(|r| r == m);
        ignored_keys(config, method.as_ref());

        // Slices, with the base model as an input where the method uses one.
        let mut slices: Vec<Slice<'_>> = Vec::new();
        let global_base = config.base_model.as_ref().and_then(index_of);

        // The output vocabulary, from the models' tokenizers.
        if config.tokenizer.is_some() && config.tokenizer_source.is_some() {
            return Err(MergeError::Config(
                "give either `tokenizer` or `tokenizer_source`, not both".into(),
            ));
        }
        let vocab = match config.tokenizer_source() {
            Some(source) => Some(Arc::new(build_vocab_plan(
                source,
                &models,
                &refs,
                global_base,
                config.tokenizer.as_ref().and_then(|t| t.pad_to_multiple_of),
                options.config_dir.as_deref(),
            )?)),
            None => None,
        };
        if let Some(ms) = &config.models {
            let mut sources: Vec<Source<'_>> = ms
                .iter()
                .map(|m| {
                    let model = index_of(&m.model).unwrap_or(0);
                    Source {
                        model,
                        start: 0,
                        end: models[model].num_layers(),
                        params: Some(&m.parameters),
                    }
                })
                .collect();
            if let Some(b) = global_base
                && spec.base != BaseModel::Ignored
                && !sources.iter().any(|s| s.model == b)
            {
                sources.push(Source {
                    model: b,
                    start: 0,
                    end: models[b].num_layers(),
                    params: None,
                });
            }
            slices.push(Slice {
                sources,
                params: None,
                base: global_base,
            });
        } else if let Some(ss) = &config.slices {
            for (si, s) in ss.iter().enumerate() {
                let base = s.base_model.as_ref().and_then(index_of).or(global_base);
                let mut sources: Vec<Source<'_>> = s
                    .sources
                    .iter()
                    .map(|src| Source {
                        model: index_of(&src.model).unwrap_or(0),
                        start: src.layer_range[0],
                        end: src.layer_range[1],
                        params: Some(&src.parameters),
                    })
                    .collect();
                if let Some(b) = base
                    && spec.base != BaseModel::Ignored
                    && !sources.iter().any(|x| x.model == b)
                {
                    let (start, end) = (sources[0].start, sources[0].end);
                    sources.push(Source {
                        model: b,
                        start,
                        end,
                        params: None,
                    });
                }
                for src in &sources {
                    let n = models[src.model].num_layers();
                    if src.end > n {
                        return Err(MergeError::Config(format!(
                            "slices[{si}]: layer_range [{}, {}] exceeds the {n} layers of {}",
                            src.start, src.end, refs[src.model]
                        )));
                    }
                }
                slices.push(Slice {
                    sources,
                    params: Some(&s.parameters),
                    base,
                });
            }
        }

        for (si, s) in slices.iter().enumerate() {
            let n = s.sources.len();
            if spec.base == BaseModel::Required && s.base.is_none() {
                return Err(MergeError::Config(format!(
                    "{} requires `base_model`",
                    method.name()
                )));
            }
            if n < spec.min_inputs || spec.max_inputs.is_some_and(|m| n > m) {
                let want = match spec.max_inputs {
                    Some(m) if m == spec.min_inputs => format!("exactly {m}"),
                    Some(m) => format!("{}–{m}", spec.min_inputs),
                    None => format!("at least {}", spec.min_inputs),
                };
                return Err(MergeError::Config(format!(
                    "{} takes {want} input models (base model included), slice {si} has {n}",
                    method.name()
                )));
            }
            let len = s.sources[0].end - s.sources[0].start;
            if let Some(bad) = s.sources.iter().find(|x| x.end - x.start != len) {
                return Err(MergeError::Config(format!(
                    "slice {si}: layer ranges differ in length ({} has {} layers, {} has {len})",
                    refs[bad.model],
                    bad.end - bad.start,
                    refs[s.sources[0].model]
                )));
            }
        }

        let config_model = global_base
            .or(slices[0].base)
            .unwrap_or(slices[0].sources[0].model);
        let load_dtype = config.load_dtype()?;
        let save_dtype = config.save_dtype()?;
        let mut planner = Planner {
            config,
            models: &models,
            refs: &refs,
            method: method.as_ref(),
            options,
            load_dtype,
            save_dtype,
            tensors: Vec::new(),
            vocab_rows: None,
            vocab: vocab.as_deref(),
        };

        // Pre-layer tensors from the first slice, layers, post-layer tensors from the last.
        let (pre, post) = non_layer_names(&models, &slices);
        for name in &pre {
            planner.add(name, name, &slices[0], 0.0, None)?;
        }
        let mut out_layer = 0usize;
        let mut layer_origins = Vec::new();
        for s in &slices {
            let len = s.sources[0].end - s.sources[0].start;
            for j in 0..len {
                let first = &s.sources[0];
                layer_origins.push((first.model, first.start + j));
                let suffixes: BTreeSet<String> = models[first.model]
                    .tensor_names()
                    .filter_map(|n| match layer_of(n) {
                        Some((i, suffix)) if i == first.start + j => Some(suffix.to_string()),
                        _ => None,
                    })
                    .collect();
                if suffixes.is_empty() {
                    return Err(MergeError::MissingTensor {
                        tensor: format!("model.layers.{}.*", first.start + j),
                        model: refs[first.model].to_string(),
                    });
                }
                let x = if len > 1 {
                    j as f64 / (len - 1) as f64
                } else {
                    1.0
                };
                for suffix in &suffixes {
                    let out = format!("model.layers.{}.{suffix}", out_layer + j);
                    planner.add(&out, suffix, s, x, Some(j))?;
                }
            }
            out_layer += len;
        }
        let last = slices.last().unwrap_or(&slices[0]);
        for name in &post {
            planner.add(name, name, last, 0.0, None)?;
        }

        let out_dtype = save_dtype
            .or(load_dtype)
            .or_else(|| planner.tensors.first().map(|t| t.out_dtype))
            .unwrap_or(DType::F32);
        let (tensors, vocab_rows) = (planner.tensors, planner.vocab_rows);
        Ok(Self {
            method,
            models,
            refs,
            tensors,
            config_model,
            num_layers: out_layer,
            layer_origins,
            vocab_rows,
            vocab,
            out_dtype,
        })
    }

    /// Total bytes of the output tensors.
    pub fn out_bytes(&self) -> u64 {
        self.tensors.iter().map(PlannedTensor::out_bytes).sum()
    }
}

/// Tensor names outside the decoder layers: the embedding (first slice) and everything else
/// (last slice), as the union over the slices' models. `lm_head.weight` is planned only if
/// some input has it (tied models produce a tied output).
fn non_layer_names(models: &[ModelSource], slices: &[Slice<'_>]) -> (Vec<String>, Vec<String>) {
    let collect = |s: &Slice<'_>| -> BTreeSet<String> {
        s.sources
            .iter()
            .flat_map(|src| models[src.model].tensor_names())
            .filter(|n| layer_of(n).is_none() && !n.ends_with("rotary_emb.inv_freq"))
            .map(str::to_string)
            .collect()
    };
    let first = collect(&slices[0]);
    let last = collect(slices.last().unwrap_or(&slices[0]));
    let is_pre = |n: &String| n.contains("embed_tokens");
    (
        first.iter().filter(|n| is_pre(n)).cloned().collect(),
        last.iter().filter(|n| !is_pre(n)).cloned().collect(),
    )
}

/// Whether `name` has one row per token (embedding, `lm_head`).
pub(crate) fn is_vocab_tensor(name: &str) -> bool {
    name.contains("embed_tokens") || name.starts_with("lm_head")
}

/// Parameters the method does not take, at the level where they were written: mergekit
/// reads only the names a method asks for and ignores the rest (a per-model `t` for
/// `slerp`, a global `weight` for `ties`), so Temper runs such a YAML too, and names each
/// ignored key in a warning (logged, and returned for the caller to show).
pub(crate) fn ignored_keys(config: &MergeConfig, method: &dyn MergeMethod) -> Vec<String> {
    let spec = method.spec();
    let mut out = Vec::new();
    let mut check = |params: &Parameters, at: &str, per_model: bool| {
        for key in params.keys() {
            let taken = if per_model {
                spec.per_model.iter().any(|p| p.name == key)
            } else {
                spec.takes(key)
            };
            if taken {
                continue;
            }
            let why = if per_model && spec.global.iter().any(|p| p.name == key) {
                format!(
                    "`{key}` is a global parameter of {}, so mergekit ignores it per model ({at}); \
                     set it under `parameters:`",
                    method.name()
                )
            } else {
                format!(
                    "{} takes no parameter `{key}` ({at}): ignored, as mergekit does; it takes: {}",
                    method.name(),
                    spec.param_names()
                )
            };
            tracing::warn!("{why}");
            out.push(why);
        }
    };
    check(&config.parameters, "in `parameters`", false);
    if let Some(ms) = &config.models {
        for m in ms {
            check(&m.parameters, &format!("for model {}", m.model), true);
        }
    }
    if let Some(ss) = &config.slices {
        for (i, s) in ss.iter().enumerate() {
            check(&s.parameters, &format!("in slices[{i}]"), false);
            for src in &s.sources {
                check(
                    &src.parameters,
                    &format!("for model {} in slices[{i}]", src.model),
                    true,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_mergekit_ignores_are_warnings_naming_them() {
        let yaml = "merge_method: slerp\nbase_model: a\nmodels:\n  - model: a\n    parameters:\n      t: 0.3\n  - model: b\nparameters:\n  t: 0.5\n  weight: 1.0\n";
        let config = MergeConfig::from_yaml(yaml, "slerp.yml");
        let method = method_by_name("slerp");
        let (Ok(config), Ok(method)) = (config, method) else {
            panic!("the YAML and the method load");
        };
        let ignored = ignored_keys(&config, method.as_ref());
        assert_eq!(ignored.len(), 2, "{ignored:?}");
        assert!(ignored[0].contains("`weight`") && ignored[0].contains("in `parameters`"));
        assert!(ignored[1].contains("`t` is a global parameter") && ignored[1].contains("model a"));
    }
}
