//! A model → a GGUF file llama.cpp loads: llama.cpp's tensor names and q/k row layout, the
//! `general.*` / `<arch>.*` / `tokenizer.*` metadata, tensors encoded per
//! [`GgufDtype`](super::GgufDtype), written atomically one tensor at a time.
//!
//! The source is any loaded [`LlamaForCausalLM`] (an HF directory, a merged adapter, a GGUF
//! file decoded to `f32`, a freshly trained model) read through [`crate::save::hf_params`], the
//! same HF-named view `save_safetensors` writes from: each tensor is read, permuted, encoded and
//! written before the next one is read. This reproduces `convert_hf_to_gguf.py` for the families
//! in [`ARCHS`](super::export_arch::ARCHS); `output.weight` is omitted when the embeddings are
//! tied, as there.

use std::path::Path;

use super::export_arch::{arch_spec, gguf_tensor_name, hparams_metadata, llama3_rope_factors};
use super::export_dtype::{GgufDtype, encode_tensor};
use super::export_error::GgufExportError;
use super::export_tokenizer::GgufTokenizerSource;
use super::ggml_type::GgmlType;
use super::to_hf::permute_qk_rows;
use super::value::GgufValue;
use super::writer::{GgufTensorPlan, GgufWriter};
use crate::LlamaForCausalLM;
use crate::save::hf_params;

/// `general.quantization_version` (`GGML_QNT_VERSION`).
const QUANTIZATION_VERSION: u32 = 2;

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufExportOptions {
    /// The matrices' encoding.
    pub dtype: GgufDtype,
    /// `general.name`.
    pub name: String,
}

/// What was written: per GGUF tensor, its type; and the file size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufExportSummary {
    pub tensors: Vec<(String, GgmlType)>,
    pub bytes: u64,
}

/// Where a GGUF tensor's values come from.
enum Source {
    /// The `i`-th of `hf_params`, with its q/k permutation (heads) if any.
    Param {
        index: usize,
        permute_heads: Option<usize>,
    },
    /// Values computed here (`rope_freqs.weight`).
    Values(Vec<f32>),
}

/// Export `model` with `tokenizer`'s vocabulary to `path` (see the module docs).
///
/// # Errors
/// An architecture, tensor or tokenizer llama.cpp cannot be given
/// ([`GgufExportError::UnsupportedArchitecture`], [`GgufExportError::UnmappedTensor`],
/// [`GgufExportError::UnsupportedTokenizer`], [`GgufExportError::UnknownPreTokenizer`]) —
/// all found before the output is created; encoding and I/O errors, after which nothing is
/// left at `path`.
pub fn export_gguf(
    model: &LlamaForCausalLM,
    tokenizer: &GgufTokenizerSource,
    path: &Path,
    options: &GgufExportOptions,
) -> Result<GgufExportSummary, GgufExportError> {
    let config = model.config();
    let spec = arch_spec(&config.model_type)?;
    let mut w = GgufWriter::new();
    let s = |v: &str| GgufValue::String(v.to_string());
    w.add("general.architecture", s(spec.gguf_arch))?;
    w.add("general.type", s("model"))?;
    w.add("general.name", s(&options.name))?;
    for (k, v) in hparams_metadata(spec, config) {
        w.add(&k, v)?;
    }
    w.add(
        "general.file_type",
        GgufValue::U32(options.dtype.file_type()),
    )?;
    w.add(
        "general.quantization_version",
        GgufValue::U32(QUANTIZATION_VERSION),
    )?;
    for (k, v) in tokenizer.metadata(config.vocab_size)? {
        w.add(&k, v)?;
    }

    let params = hf_params(model);
    let tied = model.lm_head.is_none();
    let mut sources = Vec::with_capacity(params.len() + 1);
    if let Some(factors) = llama3_rope_factors(config) {
        w.add_tensor(GgufTensorPlan {
            name: "rope_freqs.weight".into(),
            dims: vec![factors.len() as u64],
            ggml_type: GgmlType::F32,
        })?;
        sources.push(Source::Values(factors));
    }
    for (index, p) in params.iter().enumerate() {
        let name = gguf_tensor_name(&p.name).ok_or_else(|| GgufExportError::UnmappedTensor {
            name: p.name.clone(),
            arch: spec.gguf_arch.to_string(),
        })?;
        let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
        let ggml_type = options.dtype.tensor_type(&name, &p.shape, is_output);
        let permute_heads = if !spec.permute_qk {
            None
        } else if p.name.ends_with("self_attn.q_proj.weight")
            || p.name.ends_with("self_attn.q_proj.bias")
        {
            Some(config.num_attention_heads)
        } else if p.name.ends_with("self_attn.k_proj.weight")
            || p.name.ends_with("self_attn.k_proj.bias")
        {
            Some(config.num_key_value_heads)
        } else {
            None
        };
        w.add_tensor(GgufTensorPlan {
            name,
            dims: p.shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type,
        })?;
        sources.push(Source::Param {
            index,
            permute_heads,
        });
    }

    w.write_file(path, |i, plan| {
        let (shape, values) = match &sources[i] {
            Source::Values(v) => (vec![v.len()], v.clone()),
            Source::Param {
                index,
                permute_heads,
            } => {
                let t = params[*index].read();
                let values = match permute_heads {
                    None => t.data,
                    Some(heads) => {
                        let rows = t.shape[0];
                        let cols = t.shape.get(1).copied().unwrap_or(1);
                        permute_qk_rows(&t.data, rows, cols, *heads).ok_or_else(|| {
                            GgufExportError::HeadSplit {
                                name: plan.name.clone(),
                                rows,
                                heads: *heads,
                            }
                        })?
                    }
                };
                (t.shape, values)
            }
        };
        encode_tensor(&plan.name, &shape, &values, plan.ggml_type)
    })?;
    let bytes = std::fs::metadata(path)
        .map_err(|source| GgufExportError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok(GgufExportSummary {
        tensors: w
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.ggml_type))
            .collect(),
        bytes,
    })
}
