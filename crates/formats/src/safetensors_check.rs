//! The safetensors header and the shard index (`model.safetensors.index.json`), checked with
//! messages that name the tensor at fault.
//!
//! The `safetensors` crate (which still decodes the tensors) reports a wrong size as "invalid
//! shape, data type, or offset for tensor" without a name, and a gap in the data section as an
//! invalid offset of the tensor *after* the gap. [`check_header`] runs first and names the tensor,
//! its shape and dtype, the bytes it needs and the bytes its offsets span, or both neighbours of a
//! gap or an overlap. Every count is checked arithmetic: the sizes come from the file.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::{FormatsError, Result};

/// The largest header the `safetensors` crate accepts (100 MB), so both agree.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// `data_offsets`, relative to the data section after the header.
    pub start: u64,
    pub end: u64,
}

/// Read and check the header of the safetensors file at `path` (only the header is read).
///
/// # Errors
/// As [`check_header`]; the file cannot be read or is not a regular file.
pub fn read_header(path: impl AsRef<Path>) -> Result<Vec<HeaderTensor>> {
    let path = path.as_ref();
    let io = |e| FormatsError::io(path, e);
    let mut file = crate::regular::open_regular(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| {
        FormatsError::key(path, "header", "file shorter than the 8-byte header length")
    })?;
    let n = header_len(u64::from_le_bytes(len), file_len, path)?;
    let mut header = vec![0u8; n];
    file.read_exact(&mut header).map_err(io)?;
    let mut image = len.to_vec();
    image.extend_from_slice(&header);
    check_header_with_len(&image, file_len, path)
}

/// Check the header at the start of `bytes` (a whole safetensors file, e.g. a memory map):
/// the length prefix, the JSON, every tensor's dtype, shape and offsets, and that the tensors
/// cover the data section without gaps or overlaps. Returns the tensors in file order.
///
/// # Errors
/// [`FormatsError::InvalidKey`] naming `path` and the tensor (or `header`).
pub fn check_header(bytes: &[u8], path: impl AsRef<Path>) -> Result<Vec<HeaderTensor>> {
    check_header_with_len(bytes, bytes.len() as u64, path.as_ref())
}

fn header_len(n: u64, file_len: u64, path: &Path) -> Result<usize> {
    if n > MAX_HEADER_BYTES || n > file_len.saturating_sub(8) {
        return Err(FormatsError::key(
            path,
            "header",
            format!(
                "header length {n} exceeds the file size {file_len} or the {MAX_HEADER_BYTES}-byte limit"
            ),
        ));
    }
    usize::try_from(n).map_err(|_| FormatsError::key(path, "header", "header length overflows"))
}

/// `bytes` holds at least the length prefix and the header; `file_len` is the whole file's.
fn check_header_with_len(bytes: &[u8], file_len: u64, path: &Path) -> Result<Vec<HeaderTensor>> {
    let bad = |key: &str, reason: String| FormatsError::key(path, key, reason);
    let prefix: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            bad(
                "header",
                "file shorter than the 8-byte header length".into(),
            )
        })?;
    let n = header_len(u64::from_le_bytes(prefix), file_len, path)?;
    let header = bytes
        .get(8..8 + n)
        .ok_or_else(|| bad("header", format!("header of {n} bytes is truncated")))?;
    let json: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| bad("header", format!("not valid JSON: {e}")))?;
    let object = json
        .as_object()
        .ok_or_else(|| bad("header", "not a JSON object".into()))?;
    let mut tensors = Vec::with_capacity(object.len());
    for (name, info) in object {
        if name == "__metadata__" {
            continue;
        }
        tensors.push(tensor(name, info).map_err(|reason| bad(name, reason))?);
    }
    tensors.sort_by_key(|t| (t.start, t.end));
    let data_len = file_len - 8 - n as u64;
    let mut previous: Option<&HeaderTensor> = None;
    for t in &tensors {
        let expected = previous.map_or(0, |p| p.end);
        if t.start != expected {
            let what = if t.start > expected {
                "a gap"
            } else {
                "an overlap"
            };
            let reason = match previous {
                Some(p) => format!(
                    "starts at data byte {} but `{}` ends at {expected}: {what} in the data section",
                    t.start, p.name
                ),
                None => format!(
                    "the first tensor starts at data byte {}, not 0: {what} in the data section",
                    t.start
                ),
            };
            return Err(bad(&t.name, reason));
        }
        previous = Some(t);
    }
    let covered = previous.map_or(0, |p| p.end);
    if covered != data_len {
        let key = previous.map_or("header", |p| p.name.as_str());
        return Err(bad(
            key,
            format!(
                "the tensors cover {covered} data bytes but the file holds {data_len} after the header{}",
                if covered > data_len {
                    " (truncated file?)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(tensors)
}

fn tensor(name: &str, info: &serde_json::Value) -> std::result::Result<HeaderTensor, String> {
    let dtype = info
        .get("dtype")
        .and_then(serde_json::Value::as_str)
        .ok_or("missing `dtype`")?
        .to_string();
    let shape = info
        .get("shape")
        .and_then(serde_json::Value::as_array)
        .ok_or("missing `shape`")?
        .iter()
        .map(|d| d.as_u64().ok_or("`shape` holds a value that is not a size"))
        .collect::<std::result::Result<Vec<u64>, _>>()?;
    let offsets = info
        .get("data_offsets")
        .and_then(serde_json::Value::as_array)
        .filter(|o| o.len() == 2)
        .ok_or("missing `data_offsets` [start, end]")?;
    let (Some(start), Some(end)) = (offsets[0].as_u64(), offsets[1].as_u64()) else {
        return Err("`data_offsets` are not byte offsets".into());
    };
    if end < start {
        return Err(format!(
            "`data_offsets` [{start}, {end}] end before they start"
        ));
    }
    if let Some(bits) = dtype_bits(&dtype) {
        let needed = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| n.checked_mul(bits))
            .ok_or_else(|| format!("shape {shape:?} of {dtype} overflows a byte count"))?;
        if needed % 8 != 0 || needed / 8 != end - start {
            return Err(format!(
                "shape {shape:?} of {dtype} needs {} bytes but `data_offsets` [{start}, {end}] span {}",
                needed.div_ceil(8),
                end - start
            ));
        }
    }
    Ok(HeaderTensor {
        name: name.to_string(),
        dtype,
        shape,
        start,
        end,
    })
}

/// Bits per element of a safetensors dtype name; `None` for a name this check does not know
/// (the `safetensors` crate then decides).
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F4" => 4,
        "F6_E3M2" | "F6_E2M3" => 6,
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// The shard named by `weight_map[tensor] = file` in `index_path`, inside `dir`.
///
/// An index is downloaded with the model, so its file names are untrusted: an absolute path
/// or a `..` would make Temper read any file on disk as weights. Only relative names below
/// `dir` are accepted (HF writes plain file names).
///
/// # Errors
/// [`FormatsError::InvalidKey`] naming the index file and `weight_map.<tensor>`.
pub fn shard_path(dir: &Path, index_path: &Path, tensor: &str, file: &str) -> Result<PathBuf> {
    let relative = Path::new(file);
    let inside = !file.is_empty()
        && !file.contains('\\')
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(FormatsError::key(
            index_path,
            format!("weight_map.{tensor}"),
            format!(
                "{file:?} is not a file name inside the model folder {} (absolute paths and `..` are refused)",
                dir.display()
            ),
        ));
    }
    Ok(dir.join(relative))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A safetensors image from `(name, dtype, shape, start, end)` and `data_len` data bytes.
    fn image(tensors: &[(&str, &str, &[u64], u64, u64)], data_len: usize) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        for (name, dtype, shape, start, end) in tensors {
            header.insert(
                (*name).to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, end]}),
            );
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.resize(bytes.len() + data_len, 0);
        bytes
    }

    #[test]
    fn accepts_a_valid_header_in_file_order() {
        let bytes = image(&[("b", "F16", &[2], 8, 12), ("a", "F32", &[2], 0, 8)], 12);
        let t = check_header(&bytes, "m.safetensors").unwrap();
        assert_eq!(t[0].name, "a");
        assert_eq!(t[1].shape, vec![2]);
    }

    #[test]
    fn a_wrong_size_names_the_tensor_shape_and_bytes() {
        let bytes = image(&[("model.norm.weight", "F32", &[3], 0, 8)], 8);
        let err = check_header(&bytes, "m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`model.norm.weight`"), "{err}");
        assert!(err.contains("needs 12 bytes"), "{err}");
    }

    #[test]
    fn a_gap_names_both_neighbours() {
        let bytes = image(&[("a", "F32", &[2], 0, 8), ("b", "F32", &[2], 16, 24)], 24);
        let err = check_header(&bytes, "m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`b`") && err.contains("`a` ends at 8") && err.contains("gap"),
            "{err}"
        );
    }

    #[test]
    fn truncated_data_and_huge_lengths_are_refused() {
        let mut bytes = image(&[("a", "F32", &[4], 0, 16)], 16);
        bytes.truncate(bytes.len() - 4);
        let err = check_header(&bytes, "m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        let err = check_header(&huge, "m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(err.contains("header length"), "{err}");
        let overflow = image(&[("a", "F32", &[u64::MAX, 4], 0, 16)], 16);
        let err = check_header(&overflow, "m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(err.contains("overflows"), "{err}");
    }

    #[test]
    fn shard_names_stay_inside_the_model_folder() {
        let dir = Path::new("/models/m");
        let index = dir.join("model.safetensors.index.json");
        assert_eq!(
            shard_path(dir, &index, "w", "model-00001-of-00002.safetensors").unwrap(),
            dir.join("model-00001-of-00002.safetensors")
        );
        for bad in [
            "/etc/passwd",
            "../other/model.safetensors",
            "a/../../b",
            "",
            "..\\x",
        ] {
            let err = shard_path(dir, &index, "lm_head.weight", bad)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("model.safetensors.index.json")
                    && err.contains("weight_map.lm_head.weight"),
                "{err}"
            );
        }
    }
}
