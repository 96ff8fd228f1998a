//! `mergekit-extract-lora`: approximate a fine-tune by a LoRA adapter on its base.
//!
//! For every linear module the task vector `Δ = W_ft − W_base` (f32) is factored by a
//! truncated SVD of rank `r`, `Δ ≈ U·S·Vᵀ`, and written as PEFT factors with the singular
//! values split between them (mergekit's default): `lora_A = √S·Vᵀ` (`[r, in]`) and
//! `lora_B = U·√S` (`[out, r]`), with `lora_alpha = r` so that PEFT's scale is 1. Splitting
//! `S` keeps both factors of comparable magnitude, which matters once they are stored in bf16.
//!
//! The SVD is [`truncated_svd`] (randomized subspace iteration, see [`crate::linalg`]); each
//! module's sketch is seeded from the options' seed and the module name, so the output is
//! bit-for-bit reproducible.
//!
//! The adapter is written into a temporary directory next to the destination and renamed into
//! place when complete: an error never leaves a partial adapter behind.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use safetensors::tensor::TensorView;

use temper_formats::peft::{ADAPTER_WEIGHTS, LoraConfig, PEFT_PREFIX, TargetModules};
use temper_formats::{AtomicFile, StagingDir};

use crate::linalg::{SvdOptions, transpose, truncated_svd};
use crate::source::{InputTensor, ModelSource};
use crate::threads::with_threads;
use crate::{DType, MergeError, Result};

/// The linear modules of a Llama-family decoder layer.
pub const DEFAULT_MODULES: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Called after each module with its report, the modules done and the total.
pub type ExtractProgress = Arc<dyn Fn(&ModuleReport, usize, usize) + Send + Sync>;

/// How to extract an adapter.
#[derive(Clone)]
pub struct ExtractOptions {
    /// Short names of the linear modules to extract ([`DEFAULT_MODULES`]).
    pub modules: Vec<String>,
    /// Also extract `embed_tokens` (as `lora_embedding_A/B`) and `lm_head`. Off by default:
    /// vocabulary matrices are the largest and usually change least.
    pub include_embeddings: bool,
    /// dtype of the written factors; `None`: each weight's dtype in the fine-tuned model.
    pub dtype: Option<DType>,
    pub svd: SvdOptions,
    /// `base_model_name_or_path` in `adapter_config.json`; `None`: the base directory as
    /// given.
    pub base_model_name_or_path: Option<String>,
    /// Replace an existing, non-empty output directory.
    pub overwrite: bool,
    /// Rayon threads (`None`: rayon's default).
    pub threads: Option<usize>,
    pub progress: Option<ExtractProgress>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            modules: DEFAULT_MODULES.iter().map(|s| (*s).to_string()).collect(),
            include_embeddings: false,
            dtype: None,
            svd: SvdOptions::default(),
            base_model_name_or_path: None,
            overwrite: false,
            threads: None,
            progress: None,
        }
    }
}

impl std::fmt::Debug for ExtractOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtractOptions")
            .field("modules", &self.modules)
            .field("include_embeddings", &self.include_embeddings)
            .field("dtype", &self.dtype)
            .field("svd", &self.svd)
            .field("overwrite", &self.overwrite)
            .finish_non_exhaustive()
    }
}

/// How a module's factors are laid out in the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// `lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`.
    Linear,
    /// `lora_embedding_A` `[r, vocab]`, `lora_embedding_B` `[dim, r]` (PEFT's embedding
    /// layout: the factors of `Δᵀ`).
    Embedding,
}

/// One extracted module.
#[derive(Debug, Clone)]
pub struct ModuleReport {
    /// The weight (`model.layers.0.self_attn.q_proj.weight`).
    pub tensor: String,
    /// The module path (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// The module's short name (`q_proj`).
    pub short_name: String,
    pub kind: ModuleKind,
    /// The weight's shape.
    pub shape: Vec<usize>,
    /// Rank of the factors written (the requested rank, capped by the weight's dimensions).
    pub rank: usize,
    /// `‖Δ‖_F`.
    pub delta_norm: f64,
    /// Fraction of `‖Δ‖²_F` that the factors reproduce before rounding to the output dtype,
    /// `Σσᵢ²/‖Δ‖²` over the kept singular values (1 for an unchanged weight): `B·A` is an
    /// orthogonal projection of `Δ`, so the residual is exactly `√(1 − captured)·‖Δ‖`.
    pub captured: f64,
}

/// What [`extract_lora`] wrote.
#[derive(Debug, Clone)]
pub struct ExtractSummary {
    pub out_dir: PathBuf,
    /// `r` in `adapter_config.json` (modules with a smaller rank are in `rank_pattern`).
    pub rank: usize,
    /// `target_modules`: short names with at least one changed weight.
    pub target_modules: Vec<String>,
    pub modules: Vec<ModuleReport>,
    /// Selected short names whose weights are identical in both models (left out).
    pub unchanged_modules: Vec<String>,
    /// Tensors the adapter does not carry although the models differ in them (norms,
    /// embeddings when not requested, tensors only one model has), with the reason: applying
    /// the adapter will not reproduce them.
    pub not_extracted: Vec<(String, String)>,
    pub bytes_written: u64,
}

/// FNV-1a: a stable per-module seed (std's hasher may change between releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
    }
}

/// A module selected for extraction.
struct Candidate {
    tensor: String,
    module: String,
    short: String,
    kind: ModuleKind,
    shape: [usize; 2],
}

/// Encoded factors of one module.
struct Factors {
    report: ModuleReport,
    a_shape: Vec<usize>,
    b_shape: Vec<usize>,
    dtype: DType,
    a: Vec<u8>,
    b: Vec<u8>,
    zero: bool,
}

/// Extract a rank-`rank` LoRA adapter that turns the model at `base_dir` into (approximately)
/// the one at `model_dir`, and write it as a PEFT adapter directory `out_dir`.
///
/// # Errors
/// `rank` is 0; a model cannot be opened; a selected weight is missing from one model or has
/// different shapes in the two (naming the tensor and both shapes); `out_dir` exists and is
/// not empty without `overwrite`; I/O. Nothing is left at `out_dir` on error.
pub fn extract_lora(
    model_dir: &Path,
    base_dir: &Path,
    rank: usize,
    out_dir: &Path,
    options: &ExtractOptions,
) -> Result<ExtractSummary> {
    with_threads(options.threads, || {
        extract_inner(model_dir, base_dir, rank, out_dir, options)
    })
}

fn extract_inner(
    model_dir: &Path,
    base_dir: &Path,
    rank: usize,
    out_dir: &Path,
    options: &ExtractOptions,
) -> Result<ExtractSummary> {
    if rank == 0 {
        return Err(MergeError::Config("LoRA rank must be at least 1".into()));
    }
    // Created first, so a bad destination fails before any SVD; removed again on error.
    let tmp = StagingDir::create(out_dir, options.overwrite)?;
    let ft = ModelSource::open(model_dir, &model_dir.display().to_string())?;
    let base = ModelSource::open(base_dir, &base_dir.display().to_string())?;
    let (candidates, not_extracted) = select(&ft, &base, options)?;

    // Factor every module first (the slow part), so that nothing is written on error.
    let total = candidates.len();
    let mut factors = Vec::with_capacity(total);
    for (i, c) in candidates.iter().enumerate() {
        let f = factor_module(&ft, &base, c, rank, options)?;
        if let Some(progress) = &options.progress {
            progress(&f.report, i + 1, total);
        }
        factors.push(f);
    }

    // A module type that is unchanged everywhere is left out of the adapter; one that changed
    // somewhere keeps all its modules (zeros where unchanged) so PEFT finds every key.
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for f in &factors {
        seen.insert(f.report.short_name.clone());
        if !f.zero {
            changed.insert(f.report.short_name.clone());
        }
    }
    if changed.is_empty() {
        return Err(MergeError::Config(format!(
            "{} and {} are identical in every module selected for extraction ({}): there is \
             no adapter to extract",
            model_dir.display(),
            base_dir.display(),
            options.modules.join(", ")
        )));
    }
    factors.retain(|f| changed.contains(&f.report.short_name));
    let unchanged_modules: Vec<String> = seen.difference(&changed).cloned().collect();
    let target_modules: Vec<String> = changed.iter().cloned().collect();
    let config_rank = factors.iter().map(|f| f.report.rank).max().unwrap_or(rank);
    let base_name = options
        .base_model_name_or_path
        .clone()
        .unwrap_or_else(|| base_dir.display().to_string());
    // alpha = r everywhere, so PEFT's scale is 1; integers, as mergekit writes them.
    let mut config = LoraConfig::new(config_rank, config_rank)
        .with_target_modules(TargetModules::Names(target_modules.clone()))
        .with_base_model_name_or_path(base_name);
    for f in &factors {
        if f.report.rank != config_rank {
            let module = f.report.module.clone();
            config.rank_pattern.insert(module.clone(), f.report.rank);
            config.alpha_pattern.insert(module, f.report.rank.into());
        }
    }
    config
        .extra
        .insert("inference_mode".into(), serde_json::Value::Bool(true));

    let mut views: Vec<(String, TensorView<'_>)> = Vec::with_capacity(2 * factors.len());
    for f in &factors {
        let (a_key, b_key) = match f.report.kind {
            ModuleKind::Linear => (
                format!("{PEFT_PREFIX}{}.lora_A.weight", f.report.module),
                format!("{PEFT_PREFIX}{}.lora_B.weight", f.report.module),
            ),
            ModuleKind::Embedding => (
                format!("{PEFT_PREFIX}{}.lora_embedding_A", f.report.module),
                format!("{PEFT_PREFIX}{}.lora_embedding_B", f.report.module),
            ),
        };
        let dtype = st_dtype(f.dtype);
        let a_view = TensorView::new(dtype, f.a_shape.clone(), &f.a)
            .map_err(|e| MergeError::tensor(&a_key, e.to_string()))?;
        let b_view = TensorView::new(dtype, f.b_shape.clone(), &f.b)
            .map_err(|e| MergeError::tensor(&b_key, e.to_string()))?;
        views.push((a_key, a_view));
        views.push((b_key, b_view));
    }
    let weights = tmp.path().join(ADAPTER_WEIGHTS);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    // Through an AtomicFile for its permissions: safetensors creates its file private (0600),
    // other tools' adapters are readable like the config.
    let file = AtomicFile::create(&weights)?;
    safetensors::serialize_to_file(views, Some(metadata), file.temp_path())
        .map_err(|e| MergeError::checkpoint(&weights, e.to_string()))?;
    file.commit()?;
    let config_path = config.save(tmp.path())?;
    let bytes_written = [&weights, &config_path]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();

    tmp.commit()?;

    Ok(ExtractSummary {
        out_dir: out_dir.to_path_buf(),
        rank: config_rank,
        target_modules,
        modules: factors.into_iter().map(|f| f.report).collect(),
        unchanged_modules,
        not_extracted,
        bytes_written,
    })
}

/// The modules to extract, and the differing tensors the adapter will miss (with why).
type Selection = (Vec<Candidate>, Vec<(String, String)>);

/// Which tensors become LoRA modules, and which differing tensors the adapter will miss.
fn select(ft: &ModelSource, base: &ModelSource, options: &ExtractOptions) -> Result<Selection> {
    let kind_of = |name: &str| -> Option<(String, String, ModuleKind)> {
        let module = name.strip_suffix(".weight")?;
        let short = module.rsplit('.').next().unwrap_or(module);
        let kind = if options.modules.iter().any(|m| m == short) {
            ModuleKind::Linear
        } else if options.include_embeddings && short == "embed_tokens" {
            ModuleKind::Embedding
        } else if options.include_embeddings && short == "lm_head" {
            ModuleKind::Linear
        } else {
            return None;
        };
        Some((module.to_string(), short.to_string(), kind))
    };
    let mut candidates = Vec::new();
    let mut not_extracted = Vec::new();
    for name in ft.tensor_names() {
        let ft_shape = ft.shape(name).unwrap_or_default();
        let selected = kind_of(name).filter(|_| ft_shape.len() == 2);
        let Some(base_shape) = base.shape(name) else {
            if selected.is_some() {
                let hint = if name == "lm_head.weight" {
                    " (the base ties lm_head to embed_tokens?)"
                } else {
                    ""
                };
                return Err(MergeError::MissingTensor {
                    tensor: format!("{name}{hint}"),
                    model: base.label().to_string(),
                });
            }
            not_extracted.push((name.to_string(), "only in the fine-tuned model".into()));
            continue;
        };
        if ft_shape != base_shape {
            if selected.is_some() {
                return Err(MergeError::ShapeMismatch {
                    tensor: name.to_string(),
                    details: format!(
                        "{ft_shape:?} in the fine-tuned model {}, {base_shape:?} in the base {}",
                        ft.label(),
                        base.label()
                    ),
                });
            }
            not_extracted.push((
                name.to_string(),
                format!("shape {ft_shape:?} in the fine-tuned model, {base_shape:?} in the base"),
            ));
            continue;
        }
        match selected {
            Some((module, short, kind)) => candidates.push(Candidate {
                tensor: name.to_string(),
                module,
                short,
                kind,
                shape: [ft_shape[0], ft_shape[1]],
            }),
            None => {
                if !tensors_equal(&ft.tensor(name)?, &base.tensor(name)?) {
                    not_extracted.push((name.to_string(), "differs".into()));
                }
            }
        }
    }
    for name in base.tensor_names() {
        if !ft.contains(name) {
            let selected =
                kind_of(name).is_some() && base.shape(name).is_some_and(|s| s.len() == 2);
            if selected {
                return Err(MergeError::MissingTensor {
                    tensor: name.to_string(),
                    model: ft.label().to_string(),
                });
            }
            not_extracted.push((name.to_string(), "only in the base model".into()));
        }
    }
    Ok((candidates, not_extracted))
}

/// Compare decoded values chunk by chunk (bounded memory for large embeddings).
fn tensors_equal(a: &InputTensor<'_>, b: &InputTensor<'_>) -> bool {
    const CHUNK: usize = 1 << 20;
    let n = a.numel();
    if n != b.numel() {
        return false;
    }
    let mut x = vec![0f32; CHUNK.min(n)];
    let mut y = vec![0f32; CHUNK.min(n)];
    let mut start = 0;
    while start < n {
        let end = (start + CHUNK).min(n);
        let len = end - start;
        a.read(start..end, &mut x[..len]);
        b.read(start..end, &mut y[..len]);
        if x[..len] != y[..len] {
            return false;
        }
        start = end;
    }
    true
}

fn factor_module(
    ft: &ModelSource,
    base: &ModelSource,
    c: &Candidate,
    rank: usize,
    options: &ExtractOptions,
) -> Result<Factors> {
    let [rows, cols] = c.shape;
    let mut delta = ft.tensor(&c.tensor)?.to_vec();
    {
        let w = base.tensor(&c.tensor)?.to_vec();
        delta
            .par_iter_mut()
            .zip(w.par_iter())
            .for_each(|(d, b)| *d -= *b);
    }
    if let Some(bad) = delta.iter().find(|v| !v.is_finite()) {
        return Err(MergeError::tensor(
            &c.tensor,
            format!("the difference of the two models holds {bad}"),
        ));
    }
    let energy: f64 = delta
        .par_chunks(1 << 16)
        .map(|ch| {
            ch.iter()
                .map(|v| f64::from(*v) * f64::from(*v))
                .sum::<f64>()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    let r = rank.min(rows).min(cols);
    let zero = energy == 0.0;
    let (a, b, kept) = if zero {
        (vec![0f32; r * cols], vec![0f32; rows * r], 0.0)
    } else {
        let svd_options = SvdOptions {
            seed: options.svd.seed ^ fnv1a(&c.module),
            ..options.svd
        };
        let svd = truncated_svd(&delta, rows, cols, r, &svd_options)?;
        let kept: f64 = svd.s.iter().map(|s| s * s).sum();
        let (a, b) = svd.lora_factors();
        (a, b, kept)
    };
    drop(delta);
    let captured = if zero { 1.0 } else { (kept / energy).min(1.0) };
    // Δ ≈ B·A with A [r, cols], B [rows, r]. PEFT's embedding update is (B'·A')ᵀ with
    // A' [r, vocab] and B' [dim, r], so for Δ [vocab, dim]: A' = Bᵀ, B' = Aᵀ.
    let (a, a_shape, b, b_shape) = match c.kind {
        ModuleKind::Linear => (a, vec![r, cols], b, vec![rows, r]),
        ModuleKind::Embedding => (
            transpose(&b, rows, r),
            vec![r, rows],
            transpose(&a, r, cols),
            vec![cols, r],
        ),
    };
    let dtype = options
        .dtype
        .or_else(|| ft.dtype(&c.tensor))
        .unwrap_or(DType::F32);
    let encode = |v: &[f32]| {
        let mut bytes = vec![0u8; v.len() * dtype.size()];
        dtype.encode(v, &mut bytes);
        bytes
    };
    Ok(Factors {
        report: ModuleReport {
            tensor: c.tensor.clone(),
            module: c.module.clone(),
            short_name: c.short.clone(),
            kind: c.kind,
            shape: vec![rows, cols],
            rank: r,
            delta_norm: energy.sqrt(),
            captured,
        },
        a: encode(&a),
        b: encode(&b),
        a_shape,
        b_shape,
        dtype,
        zero,
    })
}
