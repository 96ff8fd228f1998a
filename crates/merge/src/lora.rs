//! LoRA inputs (`model: base+path/to/adapter`): a PEFT adapter is merged into the base weights
//! before the merge sees them, as `peft`'s `merge_and_unload()` would.
//!
//! An adapter directory holds `adapter_config.json` and `adapter_model.safetensors`, whose keys
//! are PEFT's: `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `...lora_B.weight`
//! (`[out, r]`) for linear layers, `...lora_embedding_A` (`[r, vocab]`) and
//! `...lora_embedding_B` (`[dim, r]`) for embeddings, and whole tensors
//! (`base_model.model.<module>.weight`) for `modules_to_save`. Each targeted weight becomes
//! `W + scale·B·A`, computed in f32 and rounded once to the weight's stored dtype, with
//! `scale = alpha / r` (`alpha / √r` under rsLoRA).
//!
//! Everything is checked before the first weight is touched, and every inconsistency is an
//! error naming the adapter key and the shapes involved: a silently skipped module would give a
//! merge that looks fine and is not the fine-tune. The rank and alpha of each module, and
//! whether `target_modules` covers it, follow PEFT 0.21 (`temper_formats::peft::targets`, the
//! rules `temper-lora` injects by): `rank_pattern` keys are regular expressions tried in file
//! order, a string `target_modules` must match the whole module path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::SafeTensors;
/// The adapter schema and PEFT's module matching come from `temper-formats` (shared with
/// `temper-lora`).
pub use temper_formats::peft::LoraConfig as AdapterConfig;
use temper_formats::peft::{
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_WEIGHTS_PICKLE, LayerKind, PEFT_PREFIX, TargetMatcher,
};

use crate::linalg::transpose;
use crate::source::{HostTensor, ModelSource};
use crate::{DType, MergeError, Result};

/// Refuse what this merge cannot reproduce: another PEFT method than LoRA, and DoRA (its
/// magnitude vector re-normalises each column, which this merge does not implement).
/// `fan_in_fan_out` adapters are merged (transposed).
///
/// # Errors
/// [`MergeError::Checkpoint`] naming `path` and the setting.
pub fn check_mergeable(config: &AdapterConfig, path: &Path) -> Result<()> {
    if !config.peft_type.eq_ignore_ascii_case("LORA") {
        return Err(MergeError::checkpoint(
            path,
            format!(
                "peft_type is {}; only LORA adapters can be merged",
                config.peft_type
            ),
        ));
    }
    if config.use_dora {
        return Err(MergeError::checkpoint(
            path,
            "use_dora is true: DoRA adapters (a lora_magnitude_vector per module) are not \
             supported; merge it with peft's merge_and_unload() first",
        ));
    }
    Ok(())
}

/// `scale · B·A` as a row-major `[out, in]` matrix, computed in f32, rows in parallel.
///
/// `a` is `[rank, in]` and `b` is `[out, rank]`, row-major, as PEFT stores `lora_A.weight`
/// and `lora_B.weight`.
///
/// # Errors
/// `a` or `b` does not hold `rank·in` or `out·rank` values.
pub fn lora_delta(
    a: &[f32],
    b: &[f32],
    rank: usize,
    fan_in: usize,
    fan_out: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    if a.len() != rank * fan_in || b.len() != fan_out * rank {
        return Err(MergeError::ShapeMismatch {
            tensor: "lora_delta".into(),
            details: format!(
                "A has {} values, expected [{rank}, {fan_in}]; B has {} values, expected \
                 [{fan_out}, {rank}]",
                a.len(),
                b.len()
            ),
        });
    }
    let mut out = vec![0f32; fan_out * fan_in];
    if fan_in == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(fan_in)
        .zip(b.par_chunks(rank.max(1)))
        .for_each(|(row, b_row)| {
            // row = Σ_k B[o,k]·A[k,:] accumulated as axpys over contiguous rows of A, which
            // vectorise; the scale is applied last, as PEFT does (`(B @ A) * scaling`).
            for (k, &coef) in b_row.iter().enumerate().take(rank) {
                if coef == 0.0 {
                    continue;
                }
                let a_row = &a[k * fan_in..(k + 1) * fan_in];
                for (o, &x) in row.iter_mut().zip(a_row) {
                    *o += coef * x;
                }
            }
            for o in row.iter_mut() {
                *o *= scale;
            }
        });
    Ok(out)
}

/// How a low-rank pair maps onto its base weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraKind {
    /// `lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`, weight `[out, in]`.
    Linear,
    /// `fan_in_fan_out`: as [`LoraKind::Linear`] but the weight is `[in, out]`.
    LinearTransposed,
    /// `lora_embedding_A` `[r, vocab]`, `lora_embedding_B` `[dim, r]`, weight `[vocab, dim]`.
    Embedding,
}

/// One low-rank update found in an adapter.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// Module path in the base model (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// The base tensor it updates (`<module>.weight`).
    pub weight: String,
    pub kind: LoraKind,
    pub a_key: String,
    pub b_key: String,
    pub a_shape: Vec<usize>,
    pub b_shape: Vec<usize>,
    /// `alpha / r` (or `/ √r`) for this module.
    pub scale: f64,
}

/// A tensor the adapter replaces whole (`modules_to_save`).
#[derive(Debug, Clone)]
pub struct SavedTensor {
    /// The base tensor it replaces.
    pub tensor: String,
    pub key: String,
    pub shape: Vec<usize>,
}

/// A PEFT LoRA adapter: its configuration and the index of its weights file.
#[derive(Debug)]
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub modules: Vec<LoraModule>,
    pub saved: Vec<SavedTensor>,
    weights_path: PathBuf,
    bytes: Vec<u8>,
}

/// What [`apply_adapter`] changed.
#[derive(Debug, Clone, Default)]
pub struct AppliedAdapter {
    /// Base tensors that received a low-rank update.
    pub updated: Vec<String>,
    /// Base tensors replaced whole (`modules_to_save`).
    pub replaced: Vec<String>,
}

#[derive(Default)]
struct Pair {
    a: Option<String>,
    b: Option<String>,
    embedding: bool,
}

impl Adapter {
    /// Read `adapter_config.json` and index `adapter_model.safetensors` (the file is read into
    /// memory: adapters are small next to the model).
    ///
    /// # Errors
    /// A missing or malformed file, an unsupported configuration, a key PEFT would not write,
    /// a `lora_A` without its `lora_B` (or the reverse), a DoRA magnitude vector, a tensor that
    /// is not 2-D, or a rank that disagrees with `r`/`rank_pattern`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(MergeError::checkpoint(dir, "LoRA adapter: not a directory"));
        }
        let config_path = dir.join(ADAPTER_CONFIG);
        if !config_path.is_file() {
            return Err(MergeError::checkpoint(
                dir,
                format!("LoRA adapter: no {ADAPTER_CONFIG}"),
            ));
        }
        let config = AdapterConfig::from_file(&config_path)?;
        check_mergeable(&config, &config_path)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.is_file() {
            let msg = if dir.join(ADAPTER_WEIGHTS_PICKLE).is_file() {
                format!(
                    "LoRA adapter: only {ADAPTER_WEIGHTS_PICKLE} (pickle) found; save it as \
                     {ADAPTER_WEIGHTS} (save_pretrained(..., safe_serialization=True))"
                )
            } else {
                format!("LoRA adapter: no {ADAPTER_WEIGHTS}")
            };
            return Err(MergeError::checkpoint(dir, msg));
        }
        let bytes = temper_formats::read_regular(&weights_path)
            .map_err(|e| MergeError::io(&weights_path, e))?;
        // Names the tensor at fault where the `safetensors` crate does not.
        temper_formats::safetensors_check::check_header(&bytes, &weights_path)?;
        let (modules, saved) = {
            let st = SafeTensors::deserialize(&bytes).map_err(|e| {
                MergeError::checkpoint(&weights_path, format!("invalid safetensors: {e}"))
            })?;
            let targets = config.target_matcher()?;
            index_tensors(&st, &config, targets.as_ref(), &weights_path)?
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            modules,
            saved,
            weights_path,
            bytes,
        })
    }

    /// The weights file.
    pub fn weights_path(&self) -> &Path {
        &self.weights_path
    }

    /// Decode adapter tensor `key` to f32.
    ///
    /// # Errors
    /// An absent key or a non-float dtype.
    pub fn tensor(&self, key: &str) -> Result<HostTensor> {
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| {
            MergeError::checkpoint(&self.weights_path, format!("invalid safetensors: {e}"))
        })?;
        decode(&st, key, &self.weights_path)
    }

    /// Check every update against `source` (tensors present, shapes consistent) without
    /// changing anything.
    ///
    /// # Errors
    /// The first inconsistency, naming the adapter key and the shapes.
    pub fn check(&self, source: &ModelSource) -> Result<()> {
        let err = |msg: String| MergeError::checkpoint(&self.weights_path, msg);
        let base_shape = |key: &str, tensor: &str| -> Result<Vec<usize>> {
            source.shape(tensor).map(<[usize]>::to_vec).ok_or_else(|| {
                let hint = if tensor == "lm_head.weight" {
                    " (the base ties lm_head to embed_tokens?)"
                } else {
                    ""
                };
                err(format!(
                    "{key}: the base model {} has no tensor {tensor}{hint}",
                    source.label()
                ))
            })
        };
        for s in &self.saved {
            let shape = base_shape(&s.key, &s.tensor)?;
            if shape != s.shape {
                return Err(err(format!(
                    "{} has shape {:?} but the base's {} is {:?}",
                    s.key, s.shape, s.tensor, shape
                )));
            }
        }
        for m in &self.modules {
            let shape = base_shape(&m.a_key, &m.weight)?;
            let (&[r, a_cols], &[b_rows, b_r]) = (m.a_shape.as_slice(), m.b_shape.as_slice())
            else {
                return Err(err(format!(
                    "{} {:?} and {} {:?} are not matrices",
                    m.a_key, m.a_shape, m.b_key, m.b_shape
                )));
            };
            let expected = match m.kind {
                LoraKind::Linear => vec![b_rows, a_cols],
                LoraKind::LinearTransposed | LoraKind::Embedding => vec![a_cols, b_rows],
            };
            if shape != expected || r != b_r {
                let layout = match m.kind {
                    LoraKind::Linear => "[out, in] with A [r, in] and B [out, r]",
                    LoraKind::LinearTransposed => {
                        "[in, out] (fan_in_fan_out) with A [r, in] and B [out, r]"
                    }
                    LoraKind::Embedding => "[vocab, dim] with A [r, vocab] and B [dim, r]",
                };
                return Err(err(format!(
                    "{} {:?} and {} {:?} do not fit the base's {} {:?} (expected {layout})",
                    m.a_key, m.a_shape, m.b_key, m.b_shape, m.weight, shape
                )));
            }
        }
        Ok(())
    }

    /// Merge this adapter into `source`: saved tensors first (PEFT loads them as the base
    /// layer), then each `W + scale·B·A`, rounded to `W`'s stored dtype.
    ///
    /// # Errors
    /// As [`Adapter::check`], which runs first: on error `source` is unchanged.
    pub fn apply(&self, source: &mut ModelSource) -> Result<AppliedAdapter> {
        self.check(source)?;
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| {
            MergeError::checkpoint(&self.weights_path, format!("invalid safetensors: {e}"))
        })?;
        let mut applied = AppliedAdapter::default();
        for s in &self.saved {
            let mut t = decode(&st, &s.key, &self.weights_path)?;
            // Stored in the base's dtype, as PEFT loads the saved module into the base layer.
            t.dtype = source.dtype(&s.tensor).unwrap_or(t.dtype);
            t.data.iter_mut().for_each(|v| *v = t.dtype.round(*v));
            source.replace(&s.tensor, t);
            applied.replaced.push(s.tensor.clone());
        }
        for m in &self.modules {
            let a = decode(&st, &m.a_key, &self.weights_path)?;
            let b = decode(&st, &m.b_key, &self.weights_path)?;
            // `check` has verified both are matrices of the same rank.
            let (&[r, a_cols], &[b_rows, _]) = (a.shape.as_slice(), b.shape.as_slice()) else {
                return Err(MergeError::tensor(
                    &m.weight,
                    "LoRA factors are not matrices",
                ));
            };
            let scale = m.scale as f32;
            let delta = match m.kind {
                LoraKind::Linear => lora_delta(&a.data, &b.data, r, a_cols, b_rows, scale)?,
                // (B·A)ᵀ = Aᵀ·Bᵀ: the same product with the factors transposed and swapped,
                // so the transposed delta is produced directly.
                LoraKind::LinearTransposed | LoraKind::Embedding => lora_delta(
                    &transpose(&b.data, b_rows, r),
                    &transpose(&a.data, r, a_cols),
                    r,
                    b_rows,
                    a_cols,
                    scale,
                )?,
            };
            let dtype = source.dtype(&m.weight).unwrap_or(DType::F32);
            let shape = source.shape(&m.weight).map(<[usize]>::to_vec);
            let mut w = source.tensor(&m.weight)?.to_vec();
            if w.len() != delta.len() {
                return Err(MergeError::ShapeMismatch {
                    tensor: m.weight.clone(),
                    details: format!(
                        "{} elements in the base, {} in the LoRA update",
                        w.len(),
                        delta.len()
                    ),
                });
            }
            w.par_iter_mut()
                .zip(delta.par_iter())
                .for_each(|(w, d)| *w = dtype.round(*w + *d));
            source.replace(
                &m.weight,
                HostTensor::new(shape.unwrap_or_default(), dtype, w),
            );
            applied.updated.push(m.weight.clone());
        }
        Ok(applied)
    }
}

/// Merge the PEFT adapter at `adapter_dir` into `source`'s weights (each updated tensor is
/// then held in memory as f32).
///
/// # Errors
/// A malformed adapter or one that does not fit `source` (see [`Adapter::open`] and
/// [`Adapter::check`]); `source` is unchanged on error.
pub fn apply_adapter(source: &mut ModelSource, adapter_dir: &Path) -> Result<AppliedAdapter> {
    Adapter::open(adapter_dir)?.apply(source)
}

fn decode(st: &SafeTensors<'_>, key: &str, path: &Path) -> Result<HostTensor> {
    let view = st
        .tensor(key)
        .map_err(|e| MergeError::checkpoint(path, format!("{key}: {e}")))?;
    let dtype = DType::from_safetensors(view.dtype()).ok_or_else(|| {
        MergeError::checkpoint(
            path,
            format!(
                "{key} has dtype {:?}; only F32, BF16 and F16 are supported",
                view.dtype()
            ),
        )
    })?;
    let numel: usize = view.shape().iter().product();
    let mut data = vec![0f32; numel];
    if view.data().len() != numel * dtype.size() {
        return Err(MergeError::checkpoint(
            path,
            format!("{key}: data length does not match its shape"),
        ));
    }
    dtype.decode(view.data(), &mut data);
    Ok(HostTensor::new(view.shape().to_vec(), dtype, data))
}

/// Sort the adapter's keys into low-rank pairs and saved tensors, checking each against the
/// config: the rank PEFT gives the module, and `targets` (absent: the weights file decides).
fn index_tensors(
    st: &SafeTensors<'_>,
    config: &AdapterConfig,
    targets: Option<&TargetMatcher>,
    path: &Path,
) -> Result<(Vec<LoraModule>, Vec<SavedTensor>)> {
    let err = |msg: String| MergeError::checkpoint(path, msg);
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    let mut saved = Vec::new();
    let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (key, view) in st.tensors() {
        if DType::from_safetensors(view.dtype()).is_none() {
            return Err(err(format!(
                "{key} has dtype {:?}; only F32, BF16 and F16 are supported",
                view.dtype()
            )));
        }
        shapes.insert(key.clone(), view.shape().to_vec());
        let Some(rest) = key.strip_prefix(PEFT_PREFIX) else {
            return Err(err(format!(
                "unexpected key {key} (PEFT keys start with `{PEFT_PREFIX}`)"
            )));
        };
        let lora = [
            (".lora_A.weight", true, false),
            (".lora_B.weight", false, false),
            (".lora_embedding_A", true, true),
            (".lora_embedding_B", false, true),
        ]
        .into_iter()
        .find_map(|(suffix, is_a, emb)| rest.strip_suffix(suffix).map(|m| (m, is_a, emb)));
        if let Some((module, is_a, embedding)) = lora {
            let pair = pairs.entry(module.to_string()).or_default();
            if (pair.a.is_some() || pair.b.is_some()) && pair.embedding != embedding {
                return Err(err(format!(
                    "{key}: module {module} has both lora_A/lora_B and lora_embedding_A/B"
                )));
            }
            pair.embedding = embedding;
            if is_a {
                pair.a = Some(key.clone());
            } else {
                pair.b = Some(key.clone());
            }
        } else if rest.ends_with(".lora_magnitude_vector")
            || rest.ends_with(".lora_magnitude_vector.weight")
        {
            return Err(err(format!(
                "{key}: DoRA magnitude vectors are not supported"
            )));
        } else if rest.contains(".lora_") {
            return Err(err(format!("unexpected LoRA key {key}")));
        } else {
            // A whole tensor (`modules_to_save`, or a base layer PEFT saved with its LoRA).
            let tensor = match rest.strip_suffix(".base_layer.weight") {
                Some(m) => format!("{m}.weight"),
                None => rest.to_string(),
            };
            saved.push(SavedTensor {
                tensor,
                key: key.clone(),
                shape: view.shape().to_vec(),
            });
        }
    }
    let mut modules = Vec::with_capacity(pairs.len());
    for (module, pair) in pairs {
        let (a_key, b_key) = match (pair.a, pair.b) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => {
                let b = if pair.embedding {
                    "lora_embedding_B"
                } else {
                    "lora_B.weight"
                };
                return Err(err(format!(
                    "{a} {:?} has no matching {PEFT_PREFIX}{module}.{b}",
                    shapes.get(&a).cloned().unwrap_or_default()
                )));
            }
            (None, Some(b)) => {
                let a = if pair.embedding {
                    "lora_embedding_A"
                } else {
                    "lora_A.weight"
                };
                return Err(err(format!(
                    "{b} {:?} has no matching {PEFT_PREFIX}{module}.{a}",
                    shapes.get(&b).cloned().unwrap_or_default()
                )));
            }
            (None, None) => continue,
        };
        let a_shape = shapes.get(&a_key).cloned().unwrap_or_default();
        let b_shape = shapes.get(&b_key).cloned().unwrap_or_default();
        if a_shape.len() != 2 || b_shape.len() != 2 || a_shape[0] != b_shape[1] {
            return Err(err(format!(
                "{a_key} {a_shape:?} and {b_key} {b_shape:?} are not [r, in] and [out, r] \
                 matrices of the same rank"
            )));
        }
        let rank = config.rank_for(&module);
        if a_shape[0] != rank {
            return Err(err(format!(
                "{a_key} {a_shape:?} has rank {} but adapter_config.json gives {module} rank \
                 {rank} (r / rank_pattern)",
                a_shape[0]
            )));
        }
        let layer = if pair.embedding {
            LayerKind::Embedding
        } else {
            LayerKind::Linear
        };
        if targets.is_some_and(|t| !t.matches(&module, layer)) {
            let described = config
                .target_modules
                .as_ref()
                .map_or_else(|| "null".into(), |t| t.describe());
            return Err(err(format!(
                "{a_key}: module {module} is not in target_modules {described}"
            )));
        }
        let kind = if pair.embedding {
            LoraKind::Embedding
        } else if config.fan_in_fan_out {
            LoraKind::LinearTransposed
        } else {
            LoraKind::Linear
        };
        modules.push(LoraModule {
            weight: format!("{module}.weight"),
            scale: config.scale_for(&module),
            module,
            kind,
            a_key,
            b_key,
            a_shape,
            b_shape,
        });
    }
    if modules.is_empty() && saved.is_empty() {
        return Err(err("the adapter holds no LoRA weights".into()));
    }
    Ok((modules, saved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_delta_is_scaled_product() -> Result<()> {
        // A [2, 3], B [2, 2]
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.5, -1.0];
        let d = lora_delta(&a, &b, 2, 3, 2, 2.0)?;
        assert_eq!(d, vec![2.0, 4.0, 6.0, -7.0, -8.0, -9.0]);
        assert!(lora_delta(&a, &b, 2, 4, 2, 1.0).is_err());
        Ok(())
    }
}
