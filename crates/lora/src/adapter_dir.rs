//! A PEFT adapter directory as a ready-to-use model: the base model it names, with the
//! adapter folded into its weights — what `temper generate` / `temper eval` need to accept
//! the output of an adapter-only training run as `--model`.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use temper_backend::FloatPrecision;
use temper_llm_arch::Pretrained;

use temper_formats::peft::{ADAPTER_CONFIG, LoraConfig};

use crate::{LoraError, Result, load_adapter, merge_and_unload};

/// Whether `path` is a PEFT adapter directory (has `adapter_config.json`).
pub fn is_adapter_dir(path: &Path) -> bool {
    path.join(ADAPTER_CONFIG).is_file()
}

/// Where the base model of the adapter in `dir` is: `base` when given, else the config's
/// `base_model_name_or_path` as an existing path — as written, or relative to the adapter
/// directory or to its parent (adapters saved next to their base).
///
/// # Errors
/// No base given and the config names none, or none of the candidates exists (the message
/// lists them: a hub id cannot be fetched here).
pub fn resolve_base_model(dir: &Path, base: Option<&Path>) -> Result<PathBuf> {
    if let Some(base) = base {
        return Ok(base.to_path_buf());
    }
    let config = LoraConfig::load(dir)?;
    let name = config.base_model_name_or_path.ok_or_else(|| {
        LoraError::InvalidConfig(format!(
            "{}: `base_model_name_or_path` is not set; give the base model explicitly",
            dir.join(ADAPTER_CONFIG).display()
        ))
    })?;
    let named = PathBuf::from(&name);
    let mut candidates = vec![named.clone()];
    if named.is_relative() {
        candidates.push(dir.join(&named));
        if let Some(parent) = dir.parent() {
            candidates.push(parent.join(&named));
        }
    }
    candidates
        .iter()
        .find(|c| c.exists())
        .cloned()
        .ok_or_else(|| {
            LoraError::InvalidConfig(format!(
                "{}: base model `{name}` not found (looked at {}); give the base model explicitly",
                dir.join(ADAPTER_CONFIG).display(),
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Load the adapter in `dir` onto its base model (see [`resolve_base_model`]) and merge it:
/// the result runs at the base model's speed and carries the base's tokenizer and chat
/// template.
///
/// # Errors
/// As [`resolve_base_model`], loading the base, and [`load_adapter`].
pub fn load_merged_adapter(
    dir: &Path,
    base: Option<&Path>,
    device: &Device,
    precision: FloatPrecision,
) -> Result<Pretrained> {
    let base = resolve_base_model(dir, base)?;
    let mut pretrained = Pretrained::load(&base, device, precision)?;
    let (model, _) = load_adapter(pretrained.model, dir, device)?;
    pretrained.model = merge_and_unload(model)?;
    pretrained.source = dir.to_path_buf();
    Ok(pretrained)
}
