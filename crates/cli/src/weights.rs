//! `--dtype` for `generate` and `eval`: a float storage dtype, or a block-quantized base
//! (`nf4`, `q8_0` quantized on load; `gguf` keeping a GGUF file's own blocks).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use temper_backend::FloatPrecision;
use temper_llm_arch::{Pretrained, ProjectionStorage};
use temper_lora::QuantType;

/// How the weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightDType {
    /// Every weight in this float dtype.
    Float(FloatPrecision),
    /// The projections quantized on load to this encoding (NF4 as bitsandbytes, Q8_0 as
    /// ggml); embedding, norms and LM head in f32.
    Quantized(QuantType),
    /// A GGUF file's projections in their own blocks; the rest decoded to f32.
    Gguf,
}

impl FromStr for WeightDType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "gguf" => Ok(Self::Gguf),
            "nf4" => Ok(Self::Quantized(QuantType::Nf4)),
            "q8_0" => Ok(Self::Quantized(QuantType::Q8_0)),
            other => other
                .parse::<FloatPrecision>()
                .map(Self::Float)
                .map_err(|_| {
                    format!("invalid dtype `{s}` (expected f32, bf16, f16, nf4, q8_0 or gguf)")
                }),
        }
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Float(p) => write!(f, "{p}"),
            Self::Quantized(t) => write!(f, "{t}"),
            Self::Gguf => f.write_str("gguf"),
        }
    }
}

/// An HF directory, a GGUF file, or a PEFT adapter directory (loaded onto the base model its
/// `adapter_config.json` names and merged), held as `dtype` says.
pub(crate) fn load_model(
    path: &Path,
    base: Option<&Path>,
    device: &burn::tensor::Device,
    dtype: WeightDType,
) -> Result<Pretrained> {
    // A hub id: its snapshot in the local HF cache (an adapter repository included).
    let resolved = temper_formats::hub::resolve_model(path)?;
    let path = resolved.as_path();
    let base = base.map(temper_formats::hub::resolve_model).transpose()?;
    if base.is_some() && !temper_lora::is_adapter_dir(path) {
        anyhow::bail!(
            "--base is the base model of a PEFT adapter; {} is not an adapter directory \
             (no adapter_config.json)",
            path.display()
        );
    }
    let load = |precision: FloatPrecision| -> Result<Pretrained> {
        if temper_lora::is_adapter_dir(path) {
            Ok(temper_lora::load_merged_adapter(
                path,
                base.as_deref(),
                device,
                precision,
            )?)
        } else {
            Ok(Pretrained::load(path, device, precision)?)
        }
    };
    let loaded = match dtype {
        WeightDType::Float(p) => load(p),
        // A model is quantized one tensor at a time while it loads (never dense in memory); an
        // adapter directory is merged into its base first, then quantized.
        WeightDType::Quantized(ty) if !temper_lora::is_adapter_dir(path) => {
            Ok(Pretrained::load_with(
                path,
                device,
                FloatPrecision::F32,
                ProjectionStorage::Quantize(ty),
            )?)
        }
        WeightDType::Quantized(ty) => load(FloatPrecision::F32).and_then(|mut p| {
            p.model = temper_lora::quantize_base(p.model, ty)?;
            Ok(p)
        }),
        WeightDType::Gguf => {
            let is_gguf = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
            if !is_gguf {
                bail!(
                    "--dtype gguf keeps a GGUF file's own blocks, and {} is not a .gguf file \
                     (use nf4 or q8_0 to quantize other models)",
                    path.display()
                );
            }
            Ok(Pretrained::load_gguf_quantized(
                path,
                device,
                FloatPrecision::F32,
            )?)
        }
    };
    loaded.with_context(|| format!("loading {}", path.display()))
}
