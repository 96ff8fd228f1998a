//! The reader API: an opened, validated GGUF file ([`GgufFile`]) and its typed accessors.
//!
//! The container layout and its checks are in `parse.rs` (see also `docs/gguf.md`); opening
//! validates the whole header, so the accessors here only fail on missing keys, wrong types or
//! tensors that cannot be decoded.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::dequant;
use super::error::GgufError;
use super::parse::parse;
use super::storage::{Storage, map_file};
use super::tensor_info::GgufTensorInfo;
use super::value::GgufValue;

/// An opened, validated GGUF file. Tensor data stays in the memory map until a tensor is
/// requested, so opening a multi-gigabyte file is cheap.
pub struct GgufFile {
    path: PathBuf,
    /// `path` rendered once for error messages.
    display: String,
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    index: BTreeMap<String, usize>,
    data_start: u64,
    storage: Storage,
}

impl fmt::Debug for GgufFile {
    // The metadata holds the whole vocabulary; print a summary instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("data_start", &self.data_start)
            .field("len", &self.storage.bytes().len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-map and parse a GGUF file (versions 2 and 3).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let display = path.display().to_string();
        let io = |source| GgufError::Io {
            path: display.clone(),
            source,
        };
        let file = temper_formats::open_regular(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // An empty file cannot be mapped on every platform; it is rejected by the parser anyway.
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            Storage::Mmap(map_file(&file, path).map_err(io)?)
        };
        Self::from_storage(path.to_path_buf(), display, storage)
    }

    /// Parse an in-memory GGUF image; `name` stands in for the path in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self, GgufError> {
        Self::from_storage(PathBuf::from(name), name.to_string(), Storage::Owned(bytes))
    }

    fn from_storage(path: PathBuf, display: String, storage: Storage) -> Result<Self, GgufError> {
        let header = parse(storage.bytes(), &display)?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            display,
            version: header.version,
            alignment: header.alignment,
            metadata: header.metadata,
            tensors: header.tensors,
            index,
            data_start: header.data_start,
            storage,
        })
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The path given to [`open`](Self::open), or the name given to [`from_bytes`](Self::from_bytes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor-data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where tensor data starts.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// All metadata entries, sorted by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The tensor table in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.display.clone(),
            key: key.to_string(),
        })
    }

    pub(crate) fn wrong_type(
        &self,
        key: &str,
        found: &GgufValue,
        expected: &'static str,
    ) -> GgufError {
        GgufError::WrongType {
            path: self.display.clone(),
            key: key.to_string(),
            found: found.type_name(),
            expected,
        }
    }

    /// The path as rendered in error messages.
    pub(crate) fn display_path(&self) -> &str {
        &self.display
    }

    /// An integer key as `u32`; any integer type is accepted as long as the value fits.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let value = self.require(key)?;
        let int = value
            .as_integer()
            .ok_or_else(|| self.wrong_type(key, value, "u32"))?;
        u32::try_from(int).map_err(|_| GgufError::BadValue {
            path: self.display.clone(),
            key: key.to_string(),
            reason: format!("value {int} does not fit in u32"),
        })
    }

    /// An integer key as `u64`; any non-negative integer is accepted.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.require(key)?;
        let int = value
            .as_integer()
            .ok_or_else(|| self.wrong_type(key, value, "u64"))?;
        u64::try_from(int).map_err(|_| GgufError::BadValue {
            path: self.display.clone(),
            key: key.to_string(),
            reason: format!("value {int} does not fit in u64"),
        })
    }

    /// A numeric key as `f32` (f32, f64 or an integer).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let value = self.require(key)?;
        match value {
            GgufValue::F32(v) => Ok(*v),
            other => other
                .as_f64()
                .map(|v| v as f32)
                .ok_or_else(|| self.wrong_type(key, value, "f32")),
        }
    }

    /// A string key.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let value = self.require(key)?;
        value
            .as_str()
            .ok_or_else(|| self.wrong_type(key, value, "string"))
    }

    /// A boolean key.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let value = self.require(key)?;
        value
            .as_bool()
            .ok_or_else(|| self.wrong_type(key, value, "bool"))
    }

    /// An array key.
    pub fn get_array(&self, key: &str) -> Result<&[GgufValue], GgufError> {
        let value = self.require(key)?;
        value
            .as_array()
            .ok_or_else(|| self.wrong_type(key, value, "array"))
    }

    /// A tensor's table entry by GGUF name.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The raw bytes of a tensor, bounds-checked against the file.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8], GgufError> {
        let n_bytes = info.n_bytes().ok_or_else(|| GgufError::UnsupportedType {
            path: self.display.clone(),
            name: info.name.clone(),
            ggml_type: info.ggml_type,
        })?;
        let bytes = self.storage.bytes();
        let len = bytes.len() as u64;
        let start = self.data_start.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        let slice = match (start, end) {
            (Some(s), Some(e)) => usize::try_from(s)
                .ok()
                .zip(usize::try_from(e).ok())
                .and_then(|(s, e)| bytes.get(s..e)),
            _ => None,
        };
        slice.ok_or_else(|| GgufError::Truncated {
            path: self.display.clone(),
            what: format!("tensor `{}`", info.name),
            start: start.unwrap_or(u64::MAX),
            end: end.unwrap_or(u64::MAX),
            len,
        })
    }

    /// Decode a tensor to `f32`, row-major in file order (`ne0` contiguous).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::TensorNotFound {
                path: self.display.clone(),
                name: name.to_string(),
            })?;
        if !info.ggml_type.is_supported() {
            return Err(GgufError::UnsupportedType {
                path: self.display.clone(),
                name: name.to_string(),
                ggml_type: info.ggml_type,
            });
        }
        let bytes = self.tensor_bytes(info)?;
        let n = info.n_elements().unwrap_or(u64::MAX);
        let n = usize::try_from(n).map_err(|_| GgufError::TooLarge {
            path: self.display.clone(),
            name: name.to_string(),
            n_elements: n,
        })?;
        dequant::dequantize_named(info.ggml_type, bytes, n, &self.display, name)
    }
}
