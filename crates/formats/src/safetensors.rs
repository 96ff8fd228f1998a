//! safetensors output: the header (and so each tensor's place in the file) computed from the
//! tensors' names, dtypes and shapes alone, so writers can stream the data one tensor at a time
//! — or write it at its final offset from several threads — instead of assembling the file's
//! bytes in memory as `safetensors::serialize` does (for an 8B model in bf16 that is 16 GB
//! beside the model itself).
//!
//! The layout is the `safetensors` crate's for tensors of one dtype: data in name order, header
//! keys `__metadata__` first then the tensors in that order, each as `dtype`, `shape`,
//! `data_offsets`, and the header padded with spaces so the data starts 8-byte aligned. So a
//! streamed file is byte-identical to the serialiser's (and to mergekit's outputs).

use std::path::Path;

use crate::{FormatsError, Result};

/// What the header needs of one tensor.
#[derive(Debug, Clone, Copy)]
pub struct TensorEntry<'a> {
    pub name: &'a str,
    /// The safetensors dtype name: `F32`, `BF16`, `F16`, ...
    pub dtype: &'a str,
    pub shape: &'a [usize],
    /// The data's length in bytes.
    pub bytes: u64,
}

/// A file's header and where each tensor's data goes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The file's first bytes: the header length (u64 LE), the JSON header, its padding.
    pub head: Vec<u8>,
    /// For each entry, in the order given: the absolute offset of its data in the file.
    pub offsets: Vec<u64>,
    /// The entries' indices in file (name) order: writing them in this order is sequential.
    pub order: Vec<usize>,
    /// The whole file's length.
    pub file_len: u64,
}

/// The layout of the safetensors file `path` holding `entries`, with `{"format": "pt"}`
/// metadata.
///
/// # Errors
/// [`FormatsError::Output`] naming `path` for a duplicate tensor name or sizes that overflow.
pub fn layout(path: &Path, entries: &[TensorEntry<'_>]) -> Result<Layout> {
    let invalid = |reason: String| FormatsError::Output {
        path: path.to_path_buf(),
        reason,
    };
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].name.cmp(entries[b].name));
    if let Some(w) = order
        .windows(2)
        .find(|w| entries[w[0]].name == entries[w[1]].name)
    {
        return Err(invalid(format!(
            "tensor `{}` appears twice",
            entries[w[0]].name
        )));
    }
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut relative = vec![0u64; entries.len()];
    let mut pos = 0u64;
    for &i in &order {
        let t = &entries[i];
        let end = pos
            .checked_add(t.bytes)
            .ok_or_else(|| invalid(format!("tensor `{}`: the file's size overflows", t.name)))?;
        let name = serde_json::to_string(t.name)
            .map_err(|e| invalid(format!("tensor name `{}`: {e}", t.name)))?;
        let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        header.push_str(&format!(
            r#",{name}:{{"dtype":"{}","shape":[{}],"data_offsets":[{pos},{end}]}}"#,
            t.dtype,
            shape.join(",")
        ));
        relative[i] = pos;
        pos = end;
    }
    header.push('}');
    let mut json = header.into_bytes();
    // The data must start 8-byte aligned (the 8-byte length prefix is aligned already).
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut head = (json.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(&json);
    let data_start = head.len() as u64;
    Ok(Layout {
        offsets: relative.iter().map(|r| data_start + r).collect(),
        order,
        file_len: data_start + pos,
        head,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_header_sorts_by_name_and_pads_to_eight_bytes() {
        let entries = [
            TensorEntry {
                name: "b",
                dtype: "F32",
                shape: &[2],
                bytes: 8,
            },
            TensorEntry {
                name: "a\"q",
                dtype: "F32",
                shape: &[1, 3],
                bytes: 12,
            },
        ];
        let l = layout(Path::new("m.safetensors"), &entries).unwrap();
        let n = u64::from_le_bytes(l.head[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(l.head.len(), 8 + n);
        let json = std::str::from_utf8(&l.head[8..]).unwrap().trim_end();
        assert_eq!(
            json,
            r#"{"__metadata__":{"format":"pt"},"a\"q":{"dtype":"F32","shape":[1,3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}"#
        );
        assert_eq!(l.order, vec![1, 0]);
        assert_eq!(l.offsets, vec![8 + n as u64 + 12, 8 + n as u64]);
        assert_eq!(l.file_len, 8 + n as u64 + 20);
    }

    #[test]
    fn a_duplicate_name_is_refused_by_name() {
        let e = TensorEntry {
            name: "w",
            dtype: "F32",
            shape: &[1],
            bytes: 4,
        };
        let err = layout(Path::new("m.safetensors"), &[e, e])
            .unwrap_err()
            .to_string();
        assert_eq!(err, "m.safetensors: tensor `w` appears twice");
    }
}
