//! Parsing and validating the GGUF header: metadata key/value table and tensor table.
//!
//! Layout (all little-endian; see `docs/gguf.md`): magic `GGUF`, `u32` version,
//! `u64` tensor count, `u64` metadata count, the metadata entries (`string key, u32 type, value`),
//! the tensor infos (`string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset`), padding
//! to `general.alignment` (default 32), then the tensor data. Strings are a `u64` length followed by
//! UTF-8 bytes. GGUF v1 used `u32` counts and is rejected; v2 and v3 share this layout.
//!
//! The file is untrusted input: every count is compared with the bytes that remain *before*
//! anything is allocated, and every tensor's byte range is checked against the file length while
//! the header is parsed, so later accessors can only fail on inputs built by hand.

use std::collections::BTreeMap;

use super::error::GgufError;
use super::ggml_type::GgmlType;
use super::tensor_info::GgufTensorInfo;
use super::value::GgufValue;

/// The four bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";
/// ggml tensors have at most four dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal but never nested deeply in practice; the limit stops a hostile file
/// from recursing the parser into a stack overflow.
const MAX_ARRAY_DEPTH: usize = 4;
/// Metadata held in memory may exceed its bytes in the file by this factor plus
/// [`METADATA_SLACK_BYTES`]. A parsed array element takes `size_of::<GgufValue>()` (32) bytes
/// whatever its type, so a `u8` array would take 32 times its file size: a 64 MiB array,
/// 2 GiB. Real files stay far below the bound (a tokenizer's `f32` scores take 8×, strings
/// 2–4×; the largest byte array in practice, a SentencePiece `precompiled_charsmap`, is a few
/// hundred KiB).
pub const METADATA_MEMORY_FACTOR: u64 = 8;
/// Allowance on top of [`METADATA_MEMORY_FACTOR`] × the metadata's bytes.
pub const METADATA_SLACK_BYTES: u64 = 64 << 20;

/// Tensor-data alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;

/// What [`parse`] extracts from the header.
pub(super) struct Header {
    pub(super) version: u32,
    pub(super) alignment: u64,
    pub(super) metadata: BTreeMap<String, GgufValue>,
    pub(super) tensors: Vec<GgufTensorInfo>,
    pub(super) data_start: u64,
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
    /// Bytes the metadata parsed so far holds in memory (element slots and string bytes).
    heap: u64,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos.min(self.buf.len())) as u64
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn truncated(&self, what: String, n: u64) -> GgufError {
        let start = self.offset();
        GgufError::Truncated {
            path: self.path.to_string(),
            what,
            start,
            end: start.saturating_add(n),
            len: self.buf.len() as u64,
        }
    }

    /// Take `n` bytes; `what` describes them for the error message (built only on failure).
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(self.truncated(what(), n));
        }
        let start = self.pos;
        // `n <= remaining <= buf.len()`, so it fits in usize.
        let end = start + n as usize;
        let slice = self
            .buf
            .get(start..end)
            .ok_or_else(|| self.truncated(what(), n))?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let slice = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Check that `count` entries of at least `min_size` bytes each can fit in what remains.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        count_offset: u64,
        what: &dyn Fn() -> String,
    ) -> Result<usize, GgufError> {
        let remaining = self.remaining();
        let fits = count
            .checked_mul(min_size)
            .is_some_and(|need| need <= remaining);
        match usize::try_from(count) {
            Ok(n) if fits => Ok(n),
            _ => Err(GgufError::CountTooLarge {
                path: self.path.to_string(),
                what: what(),
                count,
                offset: count_offset,
                remaining,
                min_size,
            }),
        }
    }

    /// Account `bytes` more of metadata memory for `key`, which will have read at least
    /// `file_bytes` more of the file; refuse memory out of proportion with the file.
    fn charge(&mut self, key: &str, bytes: u64, file_bytes: u64) -> Result<(), GgufError> {
        self.heap = self.heap.saturating_add(bytes);
        let read = self.offset().saturating_add(file_bytes);
        let limit = METADATA_MEMORY_FACTOR
            .saturating_mul(read)
            .saturating_add(METADATA_SLACK_BYTES);
        if self.heap > limit {
            return Err(GgufError::MetadataTooLarge {
                path: self.path.to_string(),
                key: key.to_string(),
                bytes: self.heap,
                limit,
            });
        }
        Ok(())
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let start = self.offset();
        let bytes = self.take(len, what)?;
        let s = std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 {
            path: self.path.to_string(),
            what: what(),
            offset: start,
        })?;
        Ok(s.to_string())
    }

    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<GgufValue, GgufError> {
        let what = || format!("value of metadata key `{key}`");
        Ok(match value_type {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => {
                let [b] = self.array(&what)?;
                GgufValue::Bool(b != 0)
            }
            8 => {
                let s = self.string(&what)?;
                self.charge(key, s.len() as u64, 0)?;
                GgufValue::String(s)
            }
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep {
                        path: self.path.to_string(),
                        key: key.to_string(),
                        max_depth: MAX_ARRAY_DEPTH,
                        offset: self.offset(),
                    });
                }
                let type_offset = self.offset();
                let elem_type =
                    self.u32(&|| format!("array element type of metadata key `{key}`"))?;
                let min_size =
                    min_value_size(elem_type).ok_or_else(|| GgufError::UnknownValueType {
                        path: self.path.to_string(),
                        key: key.to_string(),
                        value_type: elem_type,
                        offset: type_offset,
                    })?;
                let count_offset = self.offset();
                let count = self.u64(&|| format!("array length of metadata key `{key}`"))?;
                let n = self.check_count(count, min_size, count_offset, &|| {
                    format!("array elements of metadata key `{key}`")
                })?;
                // `n * min_size <= remaining` was checked, so neither product overflows.
                self.charge(
                    key,
                    count * std::mem::size_of::<GgufValue>() as u64,
                    count * min_size,
                )?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(GgufError::UnknownValueType {
                    path: self.path.to_string(),
                    key: key.to_string(),
                    value_type: other,
                    offset: self.offset().saturating_sub(4),
                });
            }
        })
    }
}

/// The fewest bytes a value of this type can occupy (`None` for an unknown type id).
fn min_value_size(value_type: u32) -> Option<u64> {
    Some(match value_type {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Parse and validate the header, metadata and tensor table of a complete GGUF image.
pub(super) fn parse(buf: &[u8], path: &str) -> Result<Header, GgufError> {
    let prefix = buf.get(..4).unwrap_or(buf);
    if prefix != &MAGIC[..prefix.len()] {
        return Err(GgufError::BadMagic {
            path: path.to_string(),
            magic: prefix.to_vec(),
        });
    }
    let mut c = Cursor {
        buf,
        pos: 0,
        path,
        heap: 0,
    };
    c.take(4, &|| "magic".to_string())?;
    let version = c.u32(&|| "version".to_string())?;
    if version != 2 && version != 3 {
        let hint = if matches!(version.swap_bytes(), 2 | 3) {
            " (the file looks big-endian)"
        } else {
            ""
        };
        return Err(GgufError::UnsupportedVersion {
            path: path.to_string(),
            version,
            hint,
        });
    }
    let n_tensors_offset = c.offset();
    let n_tensors = c.u64(&|| "tensor count".to_string())?;
    let n_kv_offset = c.offset();
    let n_kv = c.u64(&|| "metadata count".to_string())?;
    // key length (8) + value type (4) + smallest value (1)
    let n_kv = c.check_count(n_kv, 13, n_kv_offset, &|| "metadata entries".to_string())?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("key of metadata entry #{i}"))?;
        let type_offset = c.offset();
        let value_type = c.u32(&|| format!("value type of metadata key `{key}`"))?;
        if min_value_size(value_type).is_none() {
            return Err(GgufError::UnknownValueType {
                path: path.to_string(),
                key,
                value_type,
                offset: type_offset,
            });
        }
        let value = c.value(value_type, &key, 0)?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                path: path.to_string(),
                key,
            });
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => GGUF_DEFAULT_ALIGNMENT,
        Some(v) => {
            let int = v.as_integer().ok_or_else(|| GgufError::WrongType {
                path: path.to_string(),
                key: "general.alignment".to_string(),
                found: v.type_name(),
                expected: "u32",
            })?;
            match u64::try_from(int) {
                Ok(a) if a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::BadAlignment {
                        path: path.to_string(),
                        alignment: u64::try_from(int).unwrap_or(0),
                    });
                }
            }
        }
    };

    // name length (8) + n_dims (4) + type (4) + offset (8)
    let n_tensors = c.check_count(n_tensors, 24, n_tensors_offset, &|| {
        "tensor infos".to_string()
    })?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor info #{i}"))?;
        let dims_offset = c.offset();
        let n_dims = c.u32(&|| format!("dimension count of tensor `{name}`"))?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                path: path.to_string(),
                name,
                n_dims,
                offset: dims_offset,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(&|| format!("dimensions of tensor `{name}`"))?);
        }
        let type_id = c.u32(&|| format!("ggml type of tensor `{name}`"))?;
        let offset = c.u64(&|| format!("data offset of tensor `{name}`"))?;
        if !seen.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor {
                path: path.to_string(),
                name,
            });
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type: GgmlType::from_id(type_id),
            offset,
        });
    }

    let header_end = c.offset();
    let data_start = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| c.truncated("tensor data".to_string(), alignment))?;
    let len = buf.len() as u64;
    for t in &tensors {
        validate_tensor(t, path, alignment, data_start, len)?;
    }
    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_start,
    })
}

/// Shape, alignment and byte-range checks for one tensor-table entry.
fn validate_tensor(
    t: &GgufTensorInfo,
    path: &str,
    alignment: u64,
    data_start: u64,
    len: u64,
) -> Result<(), GgufError> {
    let n_elements = t
        .n_elements()
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| GgufError::ShapeOverflow {
            path: path.to_string(),
            name: t.name.clone(),
            dims: t.dims.clone(),
        })?;
    if !t.offset.is_multiple_of(alignment) {
        return Err(GgufError::Misaligned {
            path: path.to_string(),
            name: t.name.clone(),
            offset: t.offset,
            alignment,
        });
    }
    let n_bytes = match t.ggml_type.layout() {
        Some((block, bytes)) => {
            if !n_elements.is_multiple_of(block as u64) {
                return Err(GgufError::NotBlockMultiple {
                    path: path.to_string(),
                    name: t.name.clone(),
                    ggml_type: t.ggml_type,
                    n_elements,
                    block_size: block as u64,
                });
            }
            // n_elements / block <= i64::MAX / 1 and bytes <= 292: may still overflow u64.
            (n_elements / block as u64).checked_mul(bytes as u64)
        }
        // Unknown layout: only the start can be checked; reading it fails later with a clear error.
        None => Some(0),
    };
    let start = data_start.checked_add(t.offset);
    let end = start.zip(n_bytes).and_then(|(s, n)| s.checked_add(n));
    match end {
        Some(end) if end <= len => Ok(()),
        _ => Err(GgufError::Truncated {
            path: path.to_string(),
            what: format!("tensor `{}`", t.name),
            start: start.unwrap_or(u64::MAX),
            end: end.unwrap_or(u64::MAX),
            len,
        }),
    }
}
