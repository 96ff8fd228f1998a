//! Reading and writing the small JSON and text files of an output directory, with errors that
//! name the file. (`temper_formats::StagingDir` makes the directory itself atomic.)

use std::path::Path;

use serde_json::Value;

use crate::{MergeError, Result};

/// Parse the JSON file at `path`.
///
/// # Errors
/// I/O errors, invalid JSON.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = temper_formats::read_regular_to_string(path).map_err(|e| MergeError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| MergeError::checkpoint(path, format!("invalid JSON: {e}")))
}

/// Write `value` as pretty-printed JSON with a final newline.
///
/// # Errors
/// I/O errors.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| MergeError::checkpoint(path, e.to_string()))?;
    text.push('\n');
    write_file(path, text.as_bytes())
}

/// Write `bytes` to `path`.
///
/// # Errors
/// I/O errors.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| MergeError::io(path, e))
}
