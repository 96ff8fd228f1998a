//! The instruct parent: an HF directory as given (fingerprinted by its files), or a GGUF file
//! converted once into `OUT/instruct/`; fetched first with the configured script when missing;
//! a hub id is found in the Hugging Face cache (downloaded into it where the build and the
//! environment allow, `temper_formats::hub::resolve_model`).

use std::path::PathBuf;

use temper_backend::{DeviceSpec, FloatPrecision};
use temper_llm_arch::Pretrained;

use super::{MARKER, ModelRef, Runner, read_marker, remove_dir, write_marker};
use crate::fingerprint::{Fingerprint, file_sha256};
use crate::{PipelineError, Result};

impl Runner<'_> {
    /// The instruct parent as an HF directory (converting a GGUF once), fetched first when
    /// missing and a fetch script is configured.
    pub(crate) fn instruct(&self) -> Result<ModelRef> {
        let resolved;
        let mut path = &self.config.instruct;
        // As the config keeps it (see `PipelineConfig::resolve_paths`): `org/name[@rev]`.
        let is_hub_id = path
            .to_str()
            .filter(|s| !s.to_ascii_lowercase().ends_with(".gguf"))
            .and_then(temper_formats::hub::HubId::parse)
            .is_some();
        if is_hub_id && !path.exists() {
            resolved =
                temper_formats::hub::resolve_model(path).map_err(|e| PipelineError::Fetch {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            path = &resolved;
        }
        if !path.exists() {
            let Some(script) = &self.config.fetch_script else {
                return Err(PipelineError::Fetch {
                    path: path.clone(),
                    message: "no `fetch_script` configured".into(),
                });
            };
            self.log(&format!(
                "fetching the instruct model with {}",
                script.display()
            ));
            let status = std::process::Command::new("bash")
                .arg(script)
                .env("TEMPER_NO_CONVERT", "1")
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| PipelineError::Fetch {
                    path: path.clone(),
                    message: format!("running {}: {e}", script.display()),
                })?;
            if !status.success() || !path.exists() {
                return Err(PipelineError::Fetch {
                    path: path.clone(),
                    message: format!("{} ended with {status}", script.display()),
                });
            }
        }
        if path.is_dir() {
            let mut f = Fingerprint::new("instruct-dir");
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| PipelineError::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                            n == "config.json"
                                || n == "tokenizer.json"
                                || n.ends_with(".safetensors")
                        })
                })
                .collect();
            files.sort();
            for file in &files {
                f.file(&file.display().to_string(), file)?;
            }
            return Ok(ModelRef {
                dir: path.clone(),
                fingerprint: f.finish(),
            });
        }
        let fingerprint = Fingerprint::new("instruct-gguf")
            .str("sha256", &file_sha256(path)?)
            .finish();
        let dir = self.out().join("instruct");
        if read_marker::<serde_json::Value>(&dir.join(MARKER), &fingerprint).is_none() {
            self.log(&format!("converting {} to an HF directory", path.display()));
            remove_dir(&dir)?;
            let device = DeviceSpec::CPU.device()?;
            let p = Pretrained::load(path, &device, FloatPrecision::F32).map_err(|source| {
                PipelineError::Model {
                    path: path.clone(),
                    source: Box::new(source),
                }
            })?;
            p.save_new(&dir, FloatPrecision::F32, true)
                .map_err(|source| PipelineError::Model {
                    path: dir.clone(),
                    source: Box::new(source),
                })?;
            write_marker(
                &dir.join(MARKER),
                &fingerprint,
                serde_json::json!({"source": path}),
            )?;
        }
        Ok(ModelRef { dir, fingerprint })
    }
}
