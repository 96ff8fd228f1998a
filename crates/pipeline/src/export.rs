//! The pipeline's `export_gguf` option: every trained and merged variant also as
//! `OUT/gguf/VARIANT.DTYPE.gguf`, written by `temper_llm_arch::gguf::export_gguf` (what
//! `temper convert --to gguf` writes). A file is rewritten only when its variant's fingerprint
//! changed: a sidecar `VARIANT.DTYPE.gguf.fingerprint` holds the one it was made from.

use std::path::Path;

use temper_backend::{DeviceSpec, FloatPrecision};
use temper_formats::write_atomic;
use temper_llm_arch::Pretrained;
use temper_llm_arch::gguf::{GgufDtype, GgufExportOptions, GgufTokenizerSource, export_gguf};

use crate::{PipelineError, Result};

/// Export the model in `dir` (fingerprint `fingerprint`) as `out_dir/NAME.DTYPE.gguf`, its
/// tokenizer read from `dir`, or from `fallback_tokenizer` when `dir` has no `tokenizer.json`.
/// Returns whether a file was written (false: up to date).
///
/// # Errors
/// Loading the model, an export refusal (architecture, tokenizer), I/O — naming the variant.
pub(crate) fn export_variant(
    name: &str,
    dir: &Path,
    fingerprint: &str,
    fallback_tokenizer: &Path,
    out_dir: &Path,
    dtype: GgufDtype,
) -> Result<bool> {
    let path = out_dir.join(format!("{name}.{dtype}.gguf"));
    let marker = out_dir.join(format!("{name}.{dtype}.gguf.fingerprint"));
    let done = std::fs::read_to_string(&marker).is_ok_and(|f| f.trim() == fingerprint);
    if done && path.is_file() {
        return Ok(false);
    }
    std::fs::create_dir_all(out_dir).map_err(|e| PipelineError::io(out_dir, e))?;
    let model_err = |source: temper_llm_arch::Error| PipelineError::Model {
        path: dir.to_path_buf(),
        source: Box::new(source),
    };
    let device = DeviceSpec::CPU.device()?;
    let p = Pretrained::load(dir, &device, FloatPrecision::F32).map_err(model_err)?;
    let tokenizer_dir = if dir.join("tokenizer.json").is_file() {
        dir
    } else {
        fallback_tokenizer
    };
    let export_err = |e: temper_llm_arch::gguf::GgufExportError| PipelineError::Export {
        variant: name.to_string(),
        message: e.to_string(),
    };
    let tokenizer =
        GgufTokenizerSource::load(tokenizer_dir, p.model.config()).map_err(export_err)?;
    let options = GgufExportOptions {
        dtype,
        name: name.to_string(),
    };
    export_gguf(&p.model, &tokenizer, &path, &options).map_err(export_err)?;
    write_atomic(&marker, fingerprint.as_bytes())?;
    Ok(true)
}
