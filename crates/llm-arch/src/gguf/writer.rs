//! Writing GGUF v3 files: header, metadata, tensor table, `general.alignment` padding and the
//! tensor data, streamed one tensor at a time and written atomically.
//!
//! The layout is gguf-py's `GGUFWriter` (and `gguf_write_to_file` in llama.cpp's `gguf.cpp`):
//! little-endian; `GGUF`, version, tensor count and KV count as `u64`; each KV as a string key,
//! a `u32` value type and the value (arrays as element type, `u64` length, elements); each
//! tensor as name, `u32` dimension count, `u64` dims (ne0 first), `u32` `ggml_type` and a `u64`
//! offset relative to the data section; zero padding to the alignment; then each tensor's bytes,
//! padded to the alignment, at its offset.
//!
//! [`GgufWriter::write_file`] asks for each tensor's bytes only when it writes them, so the
//! memory an export needs beyond its source is one tensor's encoding, never the whole file;
//! the output appears at its path only when complete ([`temper_formats::AtomicFile`]). The
//! test-only `GgufBuilder` encodes through [`encode_header`] too: one encoder.

use std::io::{BufWriter, Write};
use std::path::Path;

use temper_formats::AtomicFile;

use super::export_error::GgufExportError;
use super::ggml_type::GgmlType;
use super::parse::GGUF_DEFAULT_ALIGNMENT;
use super::value::GgufValue;

/// The version this writer produces.
pub const GGUF_WRITE_VERSION: u32 = 3;

/// One tensor-table entry: the name, ggml dims (ne0 first, i.e. PyTorch's shape reversed) and
/// encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
}

impl GgufTensorPlan {
    /// Bytes of the tensor's data: whole blocks along ne0, as ggml lays them out.
    ///
    /// # Errors
    /// [`GgufExportError::Layout`] for a type without a known layout or an ne0 that is not a
    /// whole number of blocks.
    pub fn byte_size(&self) -> Result<u64, GgufExportError> {
        let layout_err = |block| GgufExportError::Layout {
            name: self.name.clone(),
            ggml_type: self.ggml_type,
            dims: self.dims.clone(),
            block,
        };
        let (Some(block), Some(bytes)) = (self.ggml_type.block_size(), self.ggml_type.type_size())
        else {
            return Err(layout_err(0));
        };
        let ne0 = self.dims.first().copied().unwrap_or(1);
        if ne0 % block as u64 != 0 {
            return Err(layout_err(block));
        }
        self.dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|n| (n / block as u64).checked_mul(bytes as u64))
            .ok_or_else(|| layout_err(block))
    }
}

/// A GGUF file being assembled: metadata in insertion order, then the tensor table. The data
/// comes later, tensor by tensor, from the callback of [`GgufWriter::write_file`].
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorPlan>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a metadata key (written in the order added).
    ///
    /// # Errors
    /// [`GgufExportError::Metadata`] for a key added twice.
    pub fn add(&mut self, key: &str, value: GgufValue) -> Result<(), GgufExportError> {
        if self.metadata.iter().any(|(k, _)| k == key) {
            return Err(GgufExportError::Metadata {
                key: key.to_string(),
                reason: "added twice".into(),
            });
        }
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Add a tensor-table entry (data is written in the same order).
    ///
    /// # Errors
    /// [`GgufExportError::DuplicateTensor`], [`GgufExportError::Layout`].
    pub fn add_tensor(&mut self, plan: GgufTensorPlan) -> Result<(), GgufExportError> {
        if self.tensors.iter().any(|t| t.name == plan.name) {
            return Err(GgufExportError::DuplicateTensor { name: plan.name });
        }
        plan.byte_size()?;
        self.tensors.push(plan);
        Ok(())
    }

    /// The metadata added so far.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The tensor table so far.
    pub fn tensors(&self) -> &[GgufTensorPlan] {
        &self.tensors
    }

    /// The header: everything before the data section, `general.alignment` (32) included as
    /// its first key unless already added.
    ///
    /// # Errors
    /// [`GgufExportError::Metadata`] for an array whose elements differ in type.
    pub fn header(&self) -> Result<Vec<u8>, GgufExportError> {
        let mut kvs = Vec::with_capacity(self.metadata.len() + 1);
        if !self.metadata.iter().any(|(k, _)| k == "general.alignment") {
            let v = GgufValue::U32(GGUF_DEFAULT_ALIGNMENT as u32);
            kvs.push((
                "general.alignment",
                value_type(&v),
                encode_value("general.alignment", &v)?,
            ));
        }
        for (k, v) in &self.metadata {
            kvs.push((k.as_str(), value_type(v), encode_value(k, v)?));
        }
        let kv_refs: Vec<(&str, u32, &[u8])> =
            kvs.iter().map(|(k, t, v)| (*k, *t, v.as_slice())).collect();
        let mut infos = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            infos.push((
                t.name.as_str(),
                t.dims.as_slice(),
                t.ggml_type.id(),
                t.byte_size()?,
            ));
        }
        Ok(encode_header(
            GGUF_WRITE_VERSION,
            GGUF_DEFAULT_ALIGNMENT as usize,
            &kv_refs,
            &infos,
        ))
    }

    /// Write the file atomically: the header, then each tensor's bytes as `data(index, plan)`
    /// returns them, in table order, each padded to the alignment. The callback is called once
    /// per tensor, so a caller can read, convert and encode one tensor at a time.
    ///
    /// # Errors
    /// The callback's errors; [`GgufExportError::TensorSize`] when it returns the wrong number
    /// of bytes; I/O errors naming the file. On any error the output path is untouched and no
    /// temporary file remains.
    pub fn write_file(
        &self,
        path: &Path,
        mut data: impl FnMut(usize, &GgufTensorPlan) -> Result<Vec<u8>, GgufExportError>,
    ) -> Result<(), GgufExportError> {
        let header = self.header()?;
        let file = AtomicFile::create(path)?;
        let temp = file.temp_path().to_path_buf();
        let io = |source| GgufExportError::Io {
            path: temp.clone(),
            source,
        };
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&header).map_err(io)?;
        let align = GGUF_DEFAULT_ALIGNMENT as usize;
        for (i, plan) in self.tensors.iter().enumerate() {
            let expected = plan.byte_size()?;
            let bytes = data(i, plan)?;
            if bytes.len() as u64 != expected {
                return Err(GgufExportError::TensorSize {
                    name: plan.name.clone(),
                    expected,
                    actual: bytes.len() as u64,
                });
            }
            w.write_all(&bytes).map_err(io)?;
            // Less than one alignment (32 bytes) of zeros.
            let pad = bytes.len().next_multiple_of(align) - bytes.len();
            w.write_all(&[0u8; GGUF_DEFAULT_ALIGNMENT as usize][..pad])
                .map_err(io)?;
        }
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.commit()?;
        Ok(())
    }
}

/// Append a GGUF string: `u64` length and the UTF-8 bytes.
pub(crate) fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The GGUF value-type id of a value (the variant order of [`GgufValue`]).
pub(crate) fn value_type(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

/// Encode a value without its type id. An array's element type is its first element's (an
/// empty array is written as an array of strings, as any type reads back as the same empty
/// list).
///
/// # Errors
/// [`GgufExportError::Metadata`] naming `key` when an array mixes element types.
pub(crate) fn encode_value(key: &str, v: &GgufValue) -> Result<Vec<u8>, GgufExportError> {
    let mut out = Vec::new();
    encode_into(key, v, &mut out)?;
    Ok(out)
}

fn encode_into(key: &str, v: &GgufValue, out: &mut Vec<u8>) -> Result<(), GgufExportError> {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => encode_str(out, s),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(items) => {
            let ty = items.first().map_or(8, value_type);
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if value_type(item) != ty {
                    return Err(GgufExportError::Metadata {
                        key: key.to_string(),
                        reason: format!(
                            "array mixes {} and {} elements",
                            items[0].type_name(),
                            item.type_name()
                        ),
                    });
                }
                encode_into(key, item, out)?;
            }
        }
    }
    Ok(())
}

/// Everything before the data section: magic, `version`, counts, the KVs (already encoded:
/// key, value-type id, value bytes), the tensor table with offsets laid out from the byte sizes
/// (each tensor starting on an `alignment` boundary), and zero padding to `alignment`.
pub(crate) fn encode_header(
    version: u32,
    alignment: usize,
    kvs: &[(&str, u32, &[u8])],
    tensors: &[(&str, &[u64], u32, u64)],
) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, ty, v) in kvs {
        encode_str(&mut out, k);
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(v);
    }
    let mut offset = 0u64;
    for (name, dims, ty, size) in tensors {
        encode_str(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in *dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + size).next_multiple_of(alignment as u64);
    }
    if !tensors.is_empty() {
        out.resize(out.len().next_multiple_of(alignment), 0);
    }
    out
}

/// Offsets (relative to the data section) that [`encode_header`] gives tensors of these sizes.
#[cfg(test)]
pub(crate) fn data_offsets(alignment: usize, sizes: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut offset = 0u64;
    sizes
        .into_iter()
        .map(|size| {
            let at = offset;
            offset = (offset + size).next_multiple_of(alignment as u64);
            at
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::GgufFile;
    use super::*;

    fn plan(name: &str, dims: &[u64], ggml_type: GgmlType) -> GgufTensorPlan {
        GgufTensorPlan {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
        }
    }

    #[test]
    fn written_file_reads_back_with_alignment_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let mut w = GgufWriter::new();
        w.add("general.architecture", GgufValue::String("llama".into()))
            .unwrap();
        w.add("x.eps", GgufValue::F32(1e-5)).unwrap();
        w.add(
            "tok.list",
            GgufValue::Array(vec![
                GgufValue::String("a".into()),
                GgufValue::String("b".into()),
            ]),
        )
        .unwrap();
        w.add_tensor(plan("a", &[3], GgmlType::F32)).unwrap();
        w.add_tensor(plan("b", &[32, 2], GgmlType::Q8_0)).unwrap();
        let a: Vec<u8> = [1f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b = temper_formats::quant::q8_0::quantize("b", &[2, 32], &[127.0; 64]).unwrap();
        let mut calls = Vec::new();
        w.write_file(&path, |i, p| {
            calls.push(p.name.clone());
            Ok(if i == 0 { a.clone() } else { b.clone() })
        })
        .unwrap();
        assert_eq!(calls, ["a", "b"]);
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.get_u32("general.alignment").unwrap(), 32);
        assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(f.get_f32("x.eps").unwrap(), 1e-5);
        assert_eq!(f.get_array("tok.list").unwrap().len(), 2);
        assert_eq!(f.data_start() % 32, 0);
        assert_eq!(f.dequantize("a").unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(f.dequantize("b").unwrap(), vec![127.0; 64]);
        assert_eq!(f.tensor_info("b").unwrap().offset, 32);
        // Every tensor padded, the last one included (as gguf-py writes).
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, f.data_start() + 32 + 68 + 28);
    }

    #[test]
    fn wrong_sizes_and_failures_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let mut w = GgufWriter::new();
        w.add_tensor(plan("a", &[4], GgmlType::F32)).unwrap();
        let err = w.write_file(&path, |_, _| Ok(vec![0; 3])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `a`: 3 data bytes, the header promised 16"
        );
        let err = w
            .write_file(&path, |_, p| {
                Err(GgufExportError::UnmappedTensor {
                    name: p.name.clone(),
                    arch: "llama".into(),
                })
            })
            .unwrap_err();
        assert!(err.to_string().contains("`a`"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // An unwritable output: the error names the path.
        let bad = dir.path().join("missing").join("m.gguf");
        let err = w.write_file(&bad, |_, _| Ok(vec![0; 16])).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn refusals_name_key_and_tensor() {
        let mut w = GgufWriter::new();
        w.add("k", GgufValue::U32(1)).unwrap();
        assert!(
            w.add("k", GgufValue::U32(2))
                .unwrap_err()
                .to_string()
                .contains("`k`")
        );
        w.add_tensor(plan("t", &[32], GgmlType::Q4_0)).unwrap();
        assert!(matches!(
            w.add_tensor(plan("t", &[32], GgmlType::F32)),
            Err(GgufExportError::DuplicateTensor { .. })
        ));
        let err = w
            .add_tensor(plan("u", &[48, 2], GgmlType::Q8_0))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `u`: Q8_0 cannot hold dims [48, 2] (ne0 must be a multiple of 32)"
        );
        w.add(
            "mixed",
            GgufValue::Array(vec![GgufValue::U32(1), GgufValue::I32(1)]),
        )
        .unwrap();
        let err = w.header().unwrap_err().to_string();
        assert_eq!(
            err,
            "metadata key `mixed`: array mixes u32 and i32 elements"
        );
    }

    #[test]
    fn offsets_are_aligned() {
        assert_eq!(data_offsets(32, [4, 64, 1]), [0, 32, 96]);
    }
}
