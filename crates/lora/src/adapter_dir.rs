//! A PEFT adapter directory as a ready-to-use model: the base model it names, with the
//! adapter folded into its weights — what `temper generate` / `temper eval` need to accept
//! the output of an adapter-only training run as `--model`.

use std::path::{Component, Path, PathBuf};

use burn::tensor::Device;
use temper_backend::FloatPrecision;
use temper_llm_arch::Pretrained;

use temper_formats::peft::{ADAPTER_CONFIG, LoraConfig};

use crate::{LoraError, Result, load_adapter, merge_and_unload};

/// Whether `path` is a PEFT adapter directory (has `adapter_config.json`).
pub fn is_adapter_dir(path: &Path) -> bool {
    path.join(ADAPTER_CONFIG).is_file()
}

/// Where the base model of the adapter in `dir` is: `base` when given (the user's own path,
/// used as is), else the config's `base_model_name_or_path`.
///
/// A name from the config comes with a downloaded adapter, so it is resolved only against the
/// adapter directory and then its parent (adapters saved next to their base), never against
/// the current directory, and a `..` is refused: a relative name cannot reach outside those
/// two folders. An absolute path (PEFT records the local path the base was loaded from) is
/// used as written. The path chosen is logged, naming where it came from.
///
/// # Errors
/// No base given and the config names none, the name climbs out with `..`, or none of the
/// candidates exists (the message lists them: a hub id cannot be fetched here).
pub fn resolve_base_model(dir: &Path, base: Option<&Path>) -> Result<PathBuf> {
    if let Some(base) = base {
        return Ok(base.to_path_buf());
    }
    let config_path = dir.join(ADAPTER_CONFIG);
    let config = LoraConfig::load(dir)?;
    let name = config.base_model_name_or_path.ok_or_else(|| {
        LoraError::InvalidConfig(format!(
            "{}: `base_model_name_or_path` is not set; give the base model explicitly",
            config_path.display()
        ))
    })?;
    let named = PathBuf::from(&name);
    if named.components().any(|c| c == Component::ParentDir) {
        return Err(LoraError::InvalidConfig(format!(
            "{}: `base_model_name_or_path` = {name:?} climbs out of the adapter folder with `..`; \
             give the base model explicitly",
            config_path.display()
        )));
    }
    let candidates = if named.is_absolute() {
        vec![named]
    } else {
        let mut c = vec![dir.join(&named)];
        if let Some(parent) = dir.parent() {
            c.push(parent.join(&named));
        }
        c
    };
    // PEFT writes the hub id the base came from (`org/name`): its snapshot in the local HF
    // cache when it is not a folder beside the adapter.
    let cached = || {
        temper_formats::hub::HubId::parse(&name)
            .and_then(|_| temper_formats::hub::resolve_model(Path::new(&name)).ok())
            .filter(|p| p.exists())
    };
    let found = candidates
        .iter()
        .find(|c| c.exists())
        .cloned()
        .or_else(cached)
        .ok_or_else(|| {
            LoraError::InvalidConfig(format!(
                "{}: base model `{name}` not found (looked at {}, and in the Hugging Face cache \
                 {} for a hub id); give the base model explicitly (--base)",
                config_path.display(),
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                temper_formats::hub::hub_cache_dir().display()
            ))
        })?;
    tracing::info!(
        "base model {} (`base_model_name_or_path` of {})",
        found.display(),
        config_path.display()
    );
    Ok(found)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn adapter_naming(root: &Path, base: &str) -> PathBuf {
        let dir = root.join("adapter");
        std::fs::create_dir_all(&dir).unwrap();
        LoraConfig::new(8, 16.0)
            .with_base_model_name_or_path(base)
            .save(&dir)
            .unwrap();
        dir
    }

    #[test]
    fn a_configured_base_resolves_inside_the_adapter_folder_or_beside_it() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("base")).unwrap();
        let dir = adapter_naming(root.path(), "base");
        assert_eq!(
            resolve_base_model(&dir, None).unwrap(),
            root.path().join("base")
        );
        // The user's own path is used as given.
        let own = Path::new("/anywhere/base");
        assert_eq!(resolve_base_model(&dir, Some(own)).unwrap(), own);
    }

    #[test]
    fn a_configured_base_cannot_climb_out_or_follow_the_working_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = adapter_naming(root.path(), "../../etc");
        let err = resolve_base_model(&dir, None).unwrap_err().to_string();
        assert!(
            err.contains("adapter_config.json") && err.contains("`..`"),
            "{err}"
        );
        // `src` exists in the working directory of this test (the crate root), not beside
        // the adapter: it must not be found.
        let dir = adapter_naming(root.path(), "src");
        let err = resolve_base_model(&dir, None).unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
    }
}
