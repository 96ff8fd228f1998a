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
//! merge that looks fine and is not the fine-tune.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::SafeTensors;

use crate::linalg::transpose;
use crate::source::{HostTensor, ModelSource};
use crate::{DType, MergeError, Result};

/// The adapter's configuration file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The prefix PEFT puts in front of the base model's module paths.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Which modules the adapter was created for (`target_modules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// Module names; a module matches if its path equals one or ends with `.name`.
    List(Vec<String>),
    /// A regular expression (or `all-linear`): not checked, the weights file decides.
    Pattern(String),
    /// Absent or null.
    Unspecified,
}

impl TargetModules {
    /// Whether the adapter may hold weights for `module` (a full module path). Patterns are
    /// not evaluated (no regex engine here), so they accept everything.
    pub fn allows(&self, module: &str) -> bool {
        match self {
            Self::List(names) => names.iter().any(|n| suffix_match(module, n)),
            Self::Pattern(_) | Self::Unspecified => true,
        }
    }
}

/// The parts of PEFT's `LoraConfig` that change the merged weights.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// Default rank (`r`).
    pub r: usize,
    /// Default `lora_alpha`.
    pub lora_alpha: f64,
    /// rsLoRA: scale by `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
    /// The base layer stores its weight as `[in, out]` (GPT-2's `Conv1D`).
    pub fan_in_fan_out: bool,
    pub target_modules: TargetModules,
    /// Per-module ranks (`rank_pattern`), in file order; plain module names only.
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alphas (`alpha_pattern`), in file order; plain module names only.
    pub alpha_pattern: Vec<(String, f64)>,
    /// Modules saved whole (`modules_to_save`); their tensors replace the base's.
    pub modules_to_save: Vec<String>,
    /// `base_model_name_or_path`, informational.
    pub base_model_name_or_path: Option<String>,
}

impl AdapterConfig {
    /// Read `adapter_config.json`.
    ///
    /// # Errors
    /// An unreadable file, invalid JSON, or a configuration that cannot be merged (see
    /// [`AdapterConfig::from_json`]).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MergeError::io(path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| MergeError::checkpoint(path, format!("invalid JSON: {e}")))?;
        Self::from_json(&value, path)
    }

    /// Interpret a parsed `adapter_config.json` (`path` names it in errors). Missing `r` and
    /// `lora_alpha` take PEFT's defaults (8 and 8).
    ///
    /// # Errors
    /// A `peft_type` other than `LORA`, DoRA (`use_dora: true`: its magnitude vector
    /// re-normalises each column, which this merge does not implement), a zero rank, fields of
    /// the wrong JSON type, or regular expressions in `rank_pattern`/`alpha_pattern`.
    pub fn from_json(value: &serde_json::Value, path: &Path) -> Result<Self> {
        let bad = |msg: String| MergeError::checkpoint(path, msg);
        let obj = value
            .as_object()
            .ok_or_else(|| bad("expected a JSON object".into()))?;
        if let Some(t) = obj.get("peft_type").filter(|v| !v.is_null()) {
            let t = t
                .as_str()
                .ok_or_else(|| bad(format!("`peft_type` is {t}, expected a string")))?;
            if !t.eq_ignore_ascii_case("LORA") {
                return Err(bad(format!(
                    "peft_type is {t}; only LORA adapters can be merged"
                )));
            }
        }
        let flag = |key: &str| -> Result<bool> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(false),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(format!("`{key}` is {v}, expected true or false"))),
            }
        };
        if flag("use_dora")? {
            return Err(bad(
                "use_dora is true: DoRA adapters (a lora_magnitude_vector per module) are not \
                 supported; merge it with peft's merge_and_unload() first"
                    .into(),
            ));
        }
        let r = match obj.get("r") {
            None | Some(serde_json::Value::Null) => 8,
            Some(v) => v
                .as_u64()
                .and_then(|r| usize::try_from(r).ok())
                .ok_or_else(|| bad(format!("`r` is {v}, expected a positive integer")))?,
        };
        if r == 0 {
            return Err(bad("`r` is 0".into()));
        }
        let lora_alpha = match obj.get("lora_alpha") {
            None | Some(serde_json::Value::Null) => 8.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("`lora_alpha` is {v}, expected a number")))?,
        };
        let target_modules = match obj.get("target_modules") {
            None | Some(serde_json::Value::Null) => TargetModules::Unspecified,
            Some(serde_json::Value::String(s)) => TargetModules::Pattern(s.clone()),
            Some(serde_json::Value::Array(items)) => TargetModules::List(
                items
                    .iter()
                    .map(|i| {
                        i.as_str().map(str::to_string).ok_or_else(|| {
                            bad(format!("`target_modules` holds {i}, expected strings"))
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(v) => {
                return Err(bad(format!(
                    "`target_modules` is {v}, expected a list or a string"
                )));
            }
        };
        let modules_to_save = match obj.get("modules_to_save") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_string).ok_or_else(|| {
                        bad(format!("`modules_to_save` holds {i}, expected strings"))
                    })
                })
                .collect::<Result<_>>()?,
            Some(v) => {
                return Err(bad(format!("`modules_to_save` is {v}, expected a list")));
            }
        };
        let pattern = |key: &str| -> Result<Vec<(String, serde_json::Value)>> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(Vec::new()),
                Some(serde_json::Value::Object(map)) => map
                    .iter()
                    .map(|(k, v)| {
                        if k.chars().any(|c| "*+?()[]{}|^$\\".contains(c)) {
                            Err(bad(format!(
                                "`{key}` key {k:?} is a regular expression; only plain module \
                                 names are supported"
                            )))
                        } else {
                            Ok((k.clone(), v.clone()))
                        }
                    })
                    .collect(),
                Some(v) => Err(bad(format!("`{key}` is {v}, expected an object"))),
            }
        };
        let rank_pattern = pattern("rank_pattern")?
            .into_iter()
            .map(|(k, v)| {
                v.as_u64()
                    .and_then(|r| usize::try_from(r).ok())
                    .filter(|r| *r > 0)
                    .map(|r| (k.clone(), r))
                    .ok_or_else(|| bad(format!("rank_pattern[{k}] is {v}, expected a rank")))
            })
            .collect::<Result<_>>()?;
        let alpha_pattern = pattern("alpha_pattern")?
            .into_iter()
            .map(|(k, v)| {
                v.as_f64()
                    .map(|a| (k.clone(), a))
                    .ok_or_else(|| bad(format!("alpha_pattern[{k}] is {v}, expected a number")))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            r,
            lora_alpha,
            use_rslora: flag("use_rslora")?,
            fan_in_fan_out: flag("fan_in_fan_out")?,
            target_modules,
            rank_pattern,
            alpha_pattern,
            modules_to_save,
            base_model_name_or_path: obj
                .get("base_model_name_or_path")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string),
        })
    }

    /// The rank PEFT gives `module` (a full module path such as
    /// `model.layers.0.self_attn.q_proj`): the first matching `rank_pattern` entry, else `r`.
    pub fn rank_for(&self, module: &str) -> usize {
        self.rank_pattern
            .iter()
            .find(|(p, _)| suffix_match(module, p))
            .map_or(self.r, |(_, r)| *r)
    }

    /// The alpha PEFT gives `module`: the first matching `alpha_pattern` entry, else
    /// `lora_alpha`.
    pub fn alpha_for(&self, module: &str) -> f64 {
        self.alpha_pattern
            .iter()
            .find(|(p, _)| suffix_match(module, p))
            .map_or(self.lora_alpha, |(_, a)| *a)
    }

    /// `alpha / r`, or `alpha / √r` with rsLoRA, for `module`.
    pub fn scale_for(&self, module: &str) -> f64 {
        lora_scale(
            self.alpha_for(module),
            self.rank_for(module),
            self.use_rslora,
        )
    }
}

/// PEFT's scaling: `alpha / r`, or `alpha / √r` with rsLoRA (which keeps the update's
/// magnitude independent of the rank).
pub fn lora_scale(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    let r = r as f64;
    if use_rslora {
        alpha / r.sqrt()
    } else {
        alpha / r
    }
}

/// PEFT's module-name match (`rank_pattern`, `target_modules` lists): `module` is `pattern`
/// or ends with `.pattern`.
fn suffix_match(module: &str, pattern: &str) -> bool {
    module == pattern
        || module
            .strip_suffix(pattern)
            .is_some_and(|head| head.ends_with('.'))
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
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.is_file() {
            let msg = if dir.join("adapter_model.bin").is_file() {
                format!(
                    "LoRA adapter: only adapter_model.bin (pickle) found; save it as \
                     {ADAPTER_WEIGHTS} (save_pretrained(..., safe_serialization=True))"
                )
            } else {
                format!("LoRA adapter: no {ADAPTER_WEIGHTS}")
            };
            return Err(MergeError::checkpoint(dir, msg));
        }
        let bytes = std::fs::read(&weights_path).map_err(|e| MergeError::io(&weights_path, e))?;
        let (modules, saved) = {
            let st = SafeTensors::deserialize(&bytes).map_err(|e| {
                MergeError::checkpoint(&weights_path, format!("invalid safetensors: {e}"))
            })?;
            index_tensors(&st, &config, &weights_path)?
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

/// Sort the adapter's keys into low-rank pairs and saved tensors, checking each.
fn index_tensors(
    st: &SafeTensors<'_>,
    config: &AdapterConfig,
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
        if !config.target_modules.allows(&module) {
            return Err(err(format!(
                "{a_key}: module {module} is not in target_modules {:?}",
                config.target_modules
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
    fn suffix_match_respects_dots() {
        assert!(suffix_match("model.layers.0.self_attn.q_proj", "q_proj"));
        assert!(suffix_match("q_proj", "q_proj"));
        assert!(!suffix_match("model.layers.0.self_attn.xq_proj", "q_proj"));
        assert!(suffix_match(
            "model.layers.1.mlp.up_proj",
            "layers.1.mlp.up_proj"
        ));
        assert!(!suffix_match(
            "model.layers.11.mlp.up_proj",
            "layers.1.mlp.up_proj"
        ));
    }

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

    #[test]
    fn rslora_scale() {
        assert!((lora_scale(16.0, 4, false) - 4.0).abs() < 1e-12);
        assert!((lora_scale(16.0, 4, true) - 8.0).abs() < 1e-12);
    }
}
