//! Precomputed reference log-probs, so DPO-style training needs no reference model in memory.
//!
//! [`precompute_reference`] runs a reference [`LlamaForCausalLM`] over the tokenised preference
//! pairs (collated exactly as training collates them, [`collate_preference`]) and records, per
//! pair, the Σ of the completion-token log-probs and the number of completion tokens of the
//! chosen and of the rejected sequence. Log-probs come from [`chunked_token_logps`], so no
//! `[batch, seq, vocab]` logits are materialised.
//!
//! The cache is keyed by two fingerprints, both SHA-256 hex strings:
//!
//! * [`dataset_fingerprint`]: the token ids of every pair, in order, plus `max_length`
//!   (which decides the truncation and hence the values);
//! * [`model_fingerprint`]: the architecture fields that affect the forward pass plus every
//!   parameter's path, shape, dtype and bytes (or [`files_fingerprint`] over checkpoint files,
//!   cheaper for large models when the caller keeps the files).
//!
//! [`RefCache::load`] checks both against the expected values and fails with a message naming
//! the mismatch, so a cache computed for another dataset or model is never used silently.
//!
//! ## File format
//!
//! One JSON object (`format` `"temper-ref-logps"`, `version` 1): the fingerprints, `max_length`,
//! `pairs`, and four arrays of length `pairs` — `chosen_logps`, `rejected_logps` (f32 values
//! written as JSON numbers, exact on reload), `chosen_tokens`, `rejected_tokens`. It is written
//! atomically (`temper_formats::write_atomic`: a temporary file in the same directory, flushed
//! to disk, then renamed over the target), so a crash never leaves a truncated cache behind.

use std::io::Read;
use std::ops::Range;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM, ModelConfig};

use crate::chunked::{ChunkConfig, chunked_token_logps, lm_head_weight};
use crate::data::{PadOptions, PreferenceTokens, collate_preference};
use crate::preference::RefLogps;
use crate::{ObjectiveError, Result};

/// The `format` tag of cache files.
pub const FORMAT: &str = "temper-ref-logps";
/// The current format version.
pub const VERSION: u32 = 1;

/// Reference log-probs of a preference dataset, with the fingerprints they were computed for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefCache {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when written by this crate.
    pub version: u32,
    /// [`dataset_fingerprint`] of the pairs.
    pub dataset_fingerprint: String,
    /// [`model_fingerprint`] (or [`files_fingerprint`]) of the reference model.
    pub model_fingerprint: String,
    /// Truncation length used for the forward passes.
    pub max_length: Option<usize>,
    /// Number of pairs.
    pub pairs: usize,
    /// Σ log p_ref over the completion tokens of each chosen sequence.
    pub chosen_logps: Vec<f32>,
    /// Σ log p_ref over the completion tokens of each rejected sequence.
    pub rejected_logps: Vec<f32>,
    /// Completion tokens of each chosen sequence (after truncation).
    pub chosen_tokens: Vec<u32>,
    /// Completion tokens of each rejected sequence (after truncation).
    pub rejected_tokens: Vec<u32>,
}

/// How [`precompute_reference`] batches and pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefCacheOptions {
    /// Pairs per forward (each pair is two sequences). Default 4.
    pub batch_pairs: usize,
    /// Truncate each sequence to this many tokens (keep start), as in training.
    pub max_length: Option<usize>,
    /// Padding (the pad id does not change the values: padded positions are masked).
    pub pad: PadOptions,
    /// Tiles of the chunked log-probs.
    pub chunk: ChunkConfig,
}

impl RefCacheOptions {
    /// Defaults with `pad_id` and `max_length`.
    pub fn new(pad_id: u32, max_length: Option<usize>) -> Self {
        Self {
            batch_pairs: 4,
            max_length,
            pad: PadOptions::new(pad_id),
            chunk: ChunkConfig::default(),
        }
    }
}

impl RefCache {
    /// Reference log-probs of pairs `range` on `device` (for the DPO losses).
    ///
    /// # Errors
    /// A range outside the cache.
    pub fn ref_logps(&self, range: Range<usize>, device: &Device) -> Result<RefLogps> {
        if range.start > range.end || range.end > self.pairs {
            return Err(ObjectiveError::Invalid(format!(
                "pairs {range:?} requested from a reference cache of {} pairs",
                self.pairs
            )));
        }
        RefLogps::from_values(
            &self.chosen_logps[range.clone()],
            &self.rejected_logps[range],
            device,
        )
    }

    /// Checks the internal consistency of a cache (format tag, version, array lengths, finite
    /// values).
    ///
    /// # Errors
    /// The first inconsistency found.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(ObjectiveError::Invalid(format!(
                "not a reference log-prob cache (format {:?}, expected {FORMAT:?})",
                self.format
            )));
        }
        if self.version != VERSION {
            return Err(ObjectiveError::Invalid(format!(
                "reference cache version {} is not supported (expected {VERSION})",
                self.version
            )));
        }
        for (name, len) in [
            ("chosen_logps", self.chosen_logps.len()),
            ("rejected_logps", self.rejected_logps.len()),
            ("chosen_tokens", self.chosen_tokens.len()),
            ("rejected_tokens", self.rejected_tokens.len()),
        ] {
            if len != self.pairs {
                return Err(ObjectiveError::Invalid(format!(
                    "reference cache has {} pairs but {len} {name}",
                    self.pairs
                )));
            }
        }
        if let Some(v) = self
            .chosen_logps
            .iter()
            .chain(&self.rejected_logps)
            .find(|v| !v.is_finite())
        {
            return Err(ObjectiveError::NonFinite {
                what: "reference log-prob in the cache".into(),
                value: f64::from(*v),
            });
        }
        Ok(())
    }

    /// Writes the cache to `path` atomically (temporary file in the same directory, fsync,
    /// rename).
    ///
    /// # Errors
    /// An inconsistent cache or an I/O failure.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.validate()?;
        let json = serde_json::to_vec(self)
            .map_err(|e| ObjectiveError::Invalid(format!("serialising the cache: {e}")))?;
        Ok(temper_formats::write_atomic(path, &json)?)
    }

    /// Reads a cache and checks it was computed for `dataset_fingerprint` and
    /// `model_fingerprint`.
    ///
    /// # Errors
    /// I/O and parse failures, an inconsistent file, or a fingerprint mismatch (the message
    /// says which one, with both values).
    pub fn load(
        path: impl AsRef<Path>,
        dataset_fingerprint: &str,
        model_fingerprint: &str,
    ) -> Result<Self> {
        let path = path.as_ref();
        let cache = Self::load_unchecked(path)?;
        if cache.dataset_fingerprint != dataset_fingerprint {
            return Err(ObjectiveError::Invalid(format!(
                "{}: reference cache was computed for another dataset (dataset fingerprint {} in \
                 the cache, {dataset_fingerprint} expected); recompute it for this dataset",
                path.display(),
                cache.dataset_fingerprint
            )));
        }
        if cache.model_fingerprint != model_fingerprint {
            return Err(ObjectiveError::Invalid(format!(
                "{}: reference cache was computed with another reference model (model \
                 fingerprint {} in the cache, {model_fingerprint} expected); recompute it with \
                 this model",
                path.display(),
                cache.model_fingerprint
            )));
        }
        Ok(cache)
    }

    /// Reads a cache without checking its fingerprints (only its internal consistency).
    ///
    /// # Errors
    /// I/O and parse failures or an inconsistent file.
    pub fn load_unchecked(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = temper_formats::read_regular(path).map_err(|source| ObjectiveError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cache: Self = serde_json::from_slice(&bytes).map_err(|e| {
            ObjectiveError::Invalid(format!(
                "{}: not a readable reference log-prob cache: {e}",
                path.display()
            ))
        })?;
        cache.validate().map_err(|e| match e {
            ObjectiveError::Invalid(msg) => {
                ObjectiveError::Invalid(format!("{}: {msg}", path.display()))
            }
            other => other,
        })?;
        Ok(cache)
    }
}

/// Runs `model` over `pairs` and returns their reference log-probs, keyed by
/// [`dataset_fingerprint`]`(pairs, options.max_length)` and [`model_fingerprint`]`(model)`.
///
/// Use a model on a device without autodiff (or `model.valid()`), otherwise every forward
/// records a graph for nothing.
///
/// # Errors
/// An empty dataset, a zero batch size, forward or log-prob failures.
pub fn precompute_reference(
    model: &LlamaForCausalLM,
    pairs: &[PreferenceTokens],
    options: &RefCacheOptions,
) -> Result<RefCache> {
    let model_fp = model_fingerprint(model)?;
    precompute_reference_with(model, pairs, options, &model_fp)
}

/// [`precompute_reference`] with a model fingerprint computed by the caller (e.g.
/// [`files_fingerprint`] of the checkpoint it loaded).
///
/// # Errors
/// See [`precompute_reference`].
pub fn precompute_reference_with(
    model: &LlamaForCausalLM,
    pairs: &[PreferenceTokens],
    options: &RefCacheOptions,
    model_fingerprint: &str,
) -> Result<RefCache> {
    if pairs.is_empty() {
        return Err(ObjectiveError::Invalid(
            "no preference pairs to compute reference log-probs for".into(),
        ));
    }
    if options.batch_pairs == 0 {
        return Err(ObjectiveError::Invalid(
            "batch_pairs must be positive".into(),
        ));
    }
    let device = model.device();
    let weight = lm_head_weight(model);
    let mut cache = RefCache {
        format: FORMAT.into(),
        version: VERSION,
        dataset_fingerprint: dataset_fingerprint(pairs, options.max_length),
        model_fingerprint: model_fingerprint.to_string(),
        max_length: options.max_length,
        pairs: pairs.len(),
        chosen_logps: Vec::with_capacity(pairs.len()),
        rejected_logps: Vec::with_capacity(pairs.len()),
        chosen_tokens: Vec::with_capacity(pairs.len()),
        rejected_tokens: Vec::with_capacity(pairs.len()),
    };
    for chunk in pairs.chunks(options.batch_pairs) {
        let b = chunk.len();
        let batch = collate_preference(chunk, options.max_length, &options.pad)?;
        let tensors = batch.batch.to_tensors(&device);
        let forward = ForwardOptions {
            attention_mask: Some(batch.batch.attention_mask_u8()),
            position_ids: None,
            ..Default::default()
        };
        let hidden = model.forward_hidden(tensors.input_ids, &forward, None)?;
        let logps = chunked_token_logps(hidden, weight.clone(), tensors.labels, &options.chunk)?;
        let sums = read_f32(logps.sum())?;
        let counts = read_f32(logps.count())?;
        if sums.len() != 2 * b || counts.len() != 2 * b {
            return Err(ObjectiveError::Invalid(format!(
                "reference forward returned {} rows for {b} pairs",
                sums.len()
            )));
        }
        if let Some(v) = sums.iter().find(|v| !v.is_finite()) {
            return Err(ObjectiveError::NonFinite {
                what: "reference log-prob".into(),
                value: f64::from(*v),
            });
        }
        cache.chosen_logps.extend_from_slice(&sums[..b]);
        cache.rejected_logps.extend_from_slice(&sums[b..]);
        // Counts are small integers stored exactly in f32.
        cache
            .chosen_tokens
            .extend(counts[..b].iter().map(|&c| c.round() as u32));
        cache
            .rejected_tokens
            .extend(counts[b..].iter().map(|&c| c.round() as u32));
    }
    Ok(cache)
}

fn read_f32(t: Tensor<1>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| ObjectiveError::Invalid(format!("reading log-probs back: {e:?}")))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_ids(h: &mut Sha256, ids: &[u32]) {
    h.update((ids.len() as u64).to_le_bytes());
    for id in ids {
        h.update(id.to_le_bytes());
    }
}

/// SHA-256 over the token ids of every pair (prompt, chosen, rejected, length-prefixed, in
/// order) and `max_length`.
pub fn dataset_fingerprint(pairs: &[PreferenceTokens], max_length: Option<usize>) -> String {
    let mut h = Sha256::new();
    h.update(b"temper-ref-dataset-v1\0");
    h.update((max_length.map_or(u64::MAX, |m| m as u64)).to_le_bytes());
    h.update((pairs.len() as u64).to_le_bytes());
    for p in pairs {
        hash_ids(&mut h, &p.prompt_ids);
        hash_ids(&mut h, &p.chosen_ids);
        hash_ids(&mut h, &p.rejected_ids);
    }
    hex(&h.finalize())
}

/// The architecture fields that change a forward pass (not the free-form `raw` JSON).
fn config_key(c: &ModelConfig) -> String {
    format!(
        "{}|v{}|h{}|i{}|l{}|a{}|kv{}|hd{}|eps{:e}|theta{:e}|scaling{:?}|tie{}|window{:?}|sliding{:?}|bias{}|mlp_bias{}",
        c.model_type,
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.rms_norm_eps,
        c.rope_theta,
        c.rope_scaling,
        c.tie_word_embeddings,
        c.sliding_window,
        c.sliding_layers,
        c.attention_bias,
        c.mlp_bias,
    )
}

/// Hashes every float parameter: dotted path, shape, dtype and raw bytes.
struct ParamHasher {
    hasher: Sha256,
    path: Vec<String>,
    error: Option<String>,
}

impl ModuleVisitor for ParamHasher {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let data = tensor.to_data();
        self.hasher.update(self.path.join(".").as_bytes());
        self.hasher.update([0u8]);
        for d in tensor.dims() {
            self.hasher.update((d as u64).to_le_bytes());
        }
        self.hasher.update(format!("{:?}", data.dtype()).as_bytes());
        self.hasher.update(data.as_bytes());
        if data.as_bytes().is_empty() && tensor.dims().iter().product::<usize>() > 0 {
            self.error = Some(format!(
                "parameter {} has no readable bytes",
                self.path.join(".")
            ));
        }
    }
}

/// SHA-256 over the model's architecture fields and all its parameters (path, shape, dtype,
/// bytes). Reads every weight back to the host once.
///
/// # Errors
/// A parameter whose bytes cannot be read.
pub fn model_fingerprint(model: &LlamaForCausalLM) -> Result<String> {
    let mut visitor = ParamHasher {
        hasher: Sha256::new(),
        path: Vec::new(),
        error: None,
    };
    visitor.hasher.update(b"temper-ref-model-v1\0");
    visitor.hasher.update(config_key(model.config()).as_bytes());
    model.visit(&mut visitor);
    if let Some(e) = visitor.error {
        return Err(ObjectiveError::Invalid(e));
    }
    Ok(hex(&visitor.hasher.finalize()))
}

/// SHA-256 over the contents of checkpoint files (e.g. a model's `*.safetensors` and
/// `config.json`), in the given order, streamed.
///
/// # Errors
/// A file that cannot be read.
pub fn files_fingerprint<P: AsRef<Path>>(paths: &[P]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"temper-ref-files-v1\0");
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let p = p.as_ref();
        let io = |source| ObjectiveError::Io {
            path: p.to_path_buf(),
            source,
        };
        let mut file = temper_formats::open_regular(p).map_err(io)?;
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            len += n as u64;
            h.update(&buf[..n]);
        }
        h.update(len.to_le_bytes());
    }
    Ok(hex(&h.finalize()))
}
