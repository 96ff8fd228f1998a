//! The GGUF container: header, metadata key/value table, tensor table, memory-mapped data.
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
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dequant;
use super::error::GgufError;

/// The four bytes every GGUF file starts with.
const MAGIC: &[u8; 4] = b"GGUF";
/// ggml tensors have at most four dimensions (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal but never nested deeply in practice; the limit stops a hostile file
/// from recursing the parser into a stack overflow.
const MAX_ARRAY_DEPTH: usize = 4;
/// Tensor-data alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value. Variant order follows the GGUF value-type ids 0..=12.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Short type name used in error messages (`u32`, `string`, `array`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }

    /// Any integer variant widened to `i128`, so callers can range-check without caring which
    /// integer width a converter chose (they differ between llama.cpp versions).
    pub fn as_integer(&self) -> Option<i128> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::I8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::U64(v) => Some(v.into()),
            Self::I64(v) => Some(v.into()),
            _ => None,
        }
    }

    /// Floats as `f64`; integers are converted too.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_integer().map(|v| v as f64),
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// Element encoding of a tensor (`enum ggml_type`). Only the variants named here can be
/// dequantised; any other id is kept as [`GgmlType::Other`] so the rest of the file stays readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
    /// Any other `ggml_type` id.
    Other(u32),
}

impl GgmlType {
    /// Decode a `ggml_type` id as stored in the tensor table.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4_K,
            14 => Self::Q6_K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// The `ggml_type` id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q6_K => 14,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// ggml's name for the type (`Q4_1`, `Q5_K`, ...), also for some ids without a variant.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.id() {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            30 => "BF16",
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)` for every type whose layout is known, including
    /// some this reader cannot dequantise: knowing the size still lets the header parser
    /// bounds-check such tensors.
    fn layout(self) -> Option<(usize, usize)> {
        Some(match self.id() {
            0 => (1, 4),
            1 | 30 => (1, 2),
            2 => (32, 18),
            3 => (32, 20),
            6 => (32, 22),
            7 => (32, 24),
            8 => (32, 34),
            9 => (32, 36),
            10 => (256, 84),
            11 => (256, 110),
            12 => (256, 144),
            13 => (256, 176),
            14 => (256, 210),
            15 => (256, 292),
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 | 28 => (1, 8),
            _ => return None,
        })
    }

    /// Elements per block (1 for plain float types, 32 or 256 for quantised ones); `None` when
    /// the layout of this id is unknown.
    pub fn block_size(self) -> Option<usize> {
        self.layout().map(|(elements, _)| elements)
    }

    /// Bytes per block; `None` when the layout of this id is unknown.
    pub fn type_size(self) -> Option<usize> {
        self.layout().map(|(_, bytes)| bytes)
    }

    /// Whether [`dequantize`](super::dequantize) can decode this type.
    pub fn is_supported(self) -> bool {
        !matches!(self, Self::Other(_))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.name()) {
            (Self::Other(id), Some(name)) => write!(f, "{id} ({name})"),
            (Self::Other(id), None) => write!(f, "{id}"),
            (_, Some(name)) => f.write_str(name),
            (_, None) => write!(f, "{}", self.id()),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// `ne0` first, as in the file; `ne0` is the contiguous dimension, so the PyTorch shape is
    /// this list reversed.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset relative to the start of the tensor data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Product of the dimensions (`None` on overflow, which the parser already rejected).
    pub fn n_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Size of the tensor data in bytes, when the type's layout is known.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, bytes) = self.ggml_type.layout()?;
        let n = self.n_elements()?;
        (n / block as u64).checked_mul(bytes as u64)
    }

    /// The PyTorch / Hugging Face shape: the GGUF dims reversed.
    pub fn hf_shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }
}

/// Where the file bytes live: a memory map for real files, a vector for tests and tiny inputs.
#[derive(Debug)]
enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mmap(m) => m,
            Self::Owned(v) => v,
        }
    }
}

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

/// Map a file read-only.
#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and private to this process. The only hazard is another
    // process truncating or rewriting the file while it is mapped, which memmap2 cannot prevent;
    // GGUF files are written once and then only read, and every access through `GgufFile` is
    // bounds-checked against the length seen at open time.
    unsafe { Mmap::map(file) }
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
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // An empty file cannot be mapped on every platform; it is rejected by the parser anyway.
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            Storage::Mmap(map_file(&file).map_err(io)?)
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

/// What [`parse`] extracts from the header.
struct Header {
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_start: u64,
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
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
            8 => GgufValue::String(self.string(&what)?),
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
fn parse(buf: &[u8], path: &str) -> Result<Header, GgufError> {
    let prefix = buf.get(..4).unwrap_or(buf);
    if prefix != &MAGIC[..prefix.len()] {
        return Err(GgufError::BadMagic {
            path: path.to_string(),
            magic: prefix.to_vec(),
        });
    }
    let mut c = Cursor { buf, pos: 0, path };
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

/// A tiny GGUF writer for tests (also used by the sibling modules' tests).
#[cfg(test)]
pub(crate) mod writer {
    /// Builds a GGUF image in memory: metadata and tensors in insertion order, data aligned,
    /// and the last tensor ending exactly at the end of the file.
    #[derive(Debug, Clone)]
    pub(crate) struct GgufBuilder {
        pub version: u32,
        pub alignment: usize,
        kvs: Vec<(String, u32, Vec<u8>)>,
        tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    }

    pub(crate) fn enc_str(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    }

    impl GgufBuilder {
        pub(crate) fn new(version: u32) -> Self {
            Self {
                version,
                alignment: 32,
                kvs: Vec::new(),
                tensors: Vec::new(),
            }
        }

        /// A key with an already-encoded value.
        pub(crate) fn kv_raw(mut self, key: &str, value_type: u32, value: Vec<u8>) -> Self {
            self.kvs.push((key.to_string(), value_type, value));
            self
        }

        pub(crate) fn kv_u32(self, key: &str, v: u32) -> Self {
            self.kv_raw(key, 4, v.to_le_bytes().to_vec())
        }

        pub(crate) fn kv_i32(self, key: &str, v: i32) -> Self {
            self.kv_raw(key, 5, v.to_le_bytes().to_vec())
        }

        pub(crate) fn kv_u64(self, key: &str, v: u64) -> Self {
            self.kv_raw(key, 10, v.to_le_bytes().to_vec())
        }

        pub(crate) fn kv_f32(self, key: &str, v: f32) -> Self {
            self.kv_raw(key, 6, v.to_le_bytes().to_vec())
        }

        pub(crate) fn kv_bool(self, key: &str, v: bool) -> Self {
            self.kv_raw(key, 7, vec![u8::from(v)])
        }

        pub(crate) fn kv_str(self, key: &str, v: &str) -> Self {
            self.kv_raw(key, 8, enc_str(v))
        }

        pub(crate) fn kv_str_array(self, key: &str, items: &[&str]) -> Self {
            let mut v = 8u32.to_le_bytes().to_vec();
            v.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for s in items {
                v.extend(enc_str(s));
            }
            self.kv_raw(key, 9, v)
        }

        pub(crate) fn kv_i32_array(self, key: &str, items: &[i32]) -> Self {
            let mut v = 5u32.to_le_bytes().to_vec();
            v.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for x in items {
                v.extend_from_slice(&x.to_le_bytes());
            }
            self.kv_raw(key, 9, v)
        }

        /// A tensor with raw data bytes; `dims` are GGUF order (ne0 first).
        pub(crate) fn tensor(
            mut self,
            name: &str,
            dims: &[u64],
            ggml_type: u32,
            data: Vec<u8>,
        ) -> Self {
            self.tensors
                .push((name.to_string(), dims.to_vec(), ggml_type, data));
            self
        }

        pub(crate) fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.tensor(name, dims, 0, data)
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let align = |n: usize| n.div_ceil(self.alignment) * self.alignment;
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&self.version.to_le_bytes());
            out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
            for (k, t, v) in &self.kvs {
                out.extend(enc_str(k));
                out.extend_from_slice(&t.to_le_bytes());
                out.extend_from_slice(v);
            }
            let mut offset = 0usize;
            let mut offsets = Vec::new();
            for (name, dims, ty, data) in &self.tensors {
                out.extend(enc_str(name));
                out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend_from_slice(&d.to_le_bytes());
                }
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(&(offset as u64).to_le_bytes());
                offsets.push(offset);
                offset = align(offset + data.len());
            }
            if !self.tensors.is_empty() {
                out.resize(align(out.len()), 0);
            }
            let data_start = out.len();
            for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
                out.resize(data_start + off, 0);
                out.extend_from_slice(data);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::writer::{GgufBuilder, enc_str};
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_le_bytes()
    }

    /// One Q8_0 block: d = 0.5, q = -16..16.
    fn q8_0_block() -> (Vec<u8>, Vec<f32>) {
        let mut b = f16_bytes(0.5).to_vec();
        let mut want = Vec::new();
        for j in 0..32i8 {
            let q = j - 16;
            b.push(q as u8);
            want.push(q as f32 * 0.5);
        }
        (b, want)
    }

    /// One Q4_1 block: d = 0.25, m = -1, nibbles j % 16 (low) and 15 - j % 16 (high).
    fn q4_1_block() -> (Vec<u8>, Vec<f32>) {
        let mut b = f16_bytes(0.25).to_vec();
        b.extend(f16_bytes(-1.0));
        let mut want = vec![0.0; 32];
        for j in 0..16u8 {
            let lo = j;
            let hi = 15 - j;
            b.push(lo | (hi << 4));
            want[j as usize] = lo as f32 * 0.25 - 1.0;
            want[j as usize + 16] = hi as f32 * 0.25 - 1.0;
        }
        (b, want)
    }

    fn sample(version: u32) -> Vec<u8> {
        let (q8, _) = q8_0_block();
        let (q4, _) = q4_1_block();
        GgufBuilder::new(version)
            .kv_str("general.architecture", "llama")
            .kv_u32("llama.block_count", 2)
            .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
            .kv_bool("tokenizer.ggml.add_bos_token", false)
            .kv_i32("some.negative", -3)
            .kv_u64("some.big", 1 << 40)
            .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "ab"])
            .f32_tensor("norm.weight", &[3], &[1.0, -2.0, 3.5])
            .tensor("q8.weight", &[32, 1], 8, q8)
            .tensor("q4.weight", &[32], 3, q4)
            .build()
    }

    #[test]
    fn parses_v3_and_v2() {
        for version in [2, 3] {
            let file = GgufFile::from_bytes(sample(version), "mem.gguf").unwrap();
            assert_eq!(file.version(), version);
            assert_eq!(file.path(), Path::new("mem.gguf"));
            assert_eq!(file.alignment(), 32);
            assert_eq!(file.data_start() % 32, 0);
            assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
            assert_eq!(file.get_u32("llama.block_count").unwrap(), 2);
            assert_eq!(
                file.get_f32("llama.attention.layer_norm_rms_epsilon")
                    .unwrap(),
                1e-5
            );
            assert!(!file.get_bool("tokenizer.ggml.add_bos_token").unwrap());
            assert_eq!(file.get_u64("some.big").unwrap(), 1 << 40);
            let tokens = file.get_array("tokenizer.ggml.tokens").unwrap();
            assert_eq!(tokens.len(), 3);
            assert_eq!(tokens[2], GgufValue::String("ab".into()));
            assert_eq!(file.metadata().len(), 7);

            let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["norm.weight", "q8.weight", "q4.weight"]);
            let q8 = file.tensor_info("q8.weight").unwrap();
            assert_eq!(q8.dims, [32, 1]);
            assert_eq!(q8.ggml_type, GgmlType::Q8_0);
            assert_eq!(q8.hf_shape(), [1, 32]);
            assert_eq!(q8.offset, 32);
            assert_eq!(file.tensor_bytes(q8).unwrap().len(), 34);

            assert_eq!(file.dequantize("norm.weight").unwrap(), [1.0, -2.0, 3.5]);
            assert_eq!(file.dequantize("q8.weight").unwrap(), q8_0_block().1);
            assert_eq!(file.dequantize("q4.weight").unwrap(), q4_1_block().1);
        }
    }

    #[test]
    fn typed_getters_report_key_and_types() {
        let file = GgufFile::from_bytes(sample(3), "mem.gguf").unwrap();
        let err = file
            .get_u32("general.architecture")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metadata key `general.architecture` has type string, expected u32"),
            "{err}"
        );
        assert!(err.starts_with("mem.gguf: "), "{err}");
        let err = file
            .get_u32("llama.context_length")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metadata key `llama.context_length` missing"),
            "{err}"
        );
        let err = file.get_u32("some.negative").unwrap_err().to_string();
        assert!(
            err.contains("`some.negative`") && err.contains("-3"),
            "{err}"
        );
        let err = file.get_u32("some.big").unwrap_err().to_string();
        assert!(err.contains("does not fit in u32"), "{err}");
        let err = file.get_str("llama.block_count").unwrap_err().to_string();
        assert!(err.contains("has type u32, expected string"), "{err}");
        let err = file.dequantize("nope").unwrap_err().to_string();
        assert!(err.contains("tensor `nope` not found"), "{err}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        for version in [2, 3] {
            let full = sample(version);
            for cut in 0..full.len() {
                let result = GgufFile::from_bytes(full[..cut].to_vec(), "cut.gguf");
                let err = result
                    .err()
                    .unwrap_or_else(|| panic!("prefix {cut} parsed"));
                let msg = err.to_string();
                assert!(msg.starts_with("cut.gguf: "), "{msg}");
                if cut >= 4 {
                    assert!(
                        msg.contains("truncated") || msg.contains("exceeds the file size"),
                        "{msg}"
                    );
                }
            }
            assert!(GgufFile::from_bytes(full, "ok.gguf").is_ok());
        }
    }

    #[test]
    fn bad_magic_and_versions() {
        let mut bytes = sample(3);
        bytes[0] = b'X';
        let err = GgufFile::from_bytes(bytes, "m.gguf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.gguf: not a GGUF file (magic"), "{err}");

        let err = GgufFile::from_bytes(b"PK\x03\x04rest".to_vec(), "z")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a GGUF file"), "{err}");

        let mut bytes = sample(3);
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        let err = GgufFile::from_bytes(bytes, "v1.gguf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported GGUF version 1"), "{err}");

        let mut bytes = sample(3);
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        let err = GgufFile::from_bytes(bytes, "be.gguf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("big-endian"), "{err}");
    }

    fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&n_tensors.to_le_bytes());
        b.extend_from_slice(&n_kv.to_le_bytes());
        b
    }

    #[test]
    fn huge_counts_are_rejected_before_allocating() {
        let err = GgufFile::from_bytes(header(0, 1_000_000_000_000_000_000), "h.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("count 1000000000000000000 of metadata entries exceeds the file size"),
            "{err}"
        );

        let err = GgufFile::from_bytes(header(u64::MAX, 0), "h.gguf")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("of tensor infos exceeds the file size"),
            "{err}"
        );

        // A string value claiming 2^62 bytes.
        let mut b = header(0, 1);
        b.extend(enc_str("general.name"));
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&(1u64 << 62).to_le_bytes());
        b.extend_from_slice(b"abc");
        let err = GgufFile::from_bytes(b, "s.gguf").unwrap_err().to_string();
        assert!(
            err.contains("truncated: value of metadata key `general.name`"),
            "{err}"
        );

        // A key whose length is u64::MAX.
        let mut b = header(0, 1);
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        let err = GgufFile::from_bytes(b, "k.gguf").unwrap_err().to_string();
        assert!(err.contains("truncated: key of metadata entry #0"), "{err}");

        // An array of u32 claiming 2^60 elements.
        let mut b = header(0, 1);
        b.extend(enc_str("tokenizer.ggml.token_type"));
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&(1u64 << 60).to_le_bytes());
        b.extend_from_slice(&[0; 64]);
        let err = GgufFile::from_bytes(b, "a.gguf").unwrap_err().to_string();
        assert!(
            err.contains("count 1152921504606846976 of array elements of metadata key `tokenizer.ggml.token_type`"),
            "{err}"
        );
    }

    #[test]
    fn malformed_metadata() {
        // Unknown value type.
        let b = GgufBuilder::new(3).kv_raw("x.y", 13, vec![0; 8]).build();
        let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
        assert!(
            err.contains("metadata key `x.y` has unknown value type 13"),
            "{err}"
        );

        // Arrays nested too deep: array(array(array(array(array(u8)))))
        let mut v = Vec::new();
        for _ in 0..5 {
            v.extend_from_slice(&9u32.to_le_bytes());
            v.extend_from_slice(&1u64.to_le_bytes());
        }
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        let b = GgufBuilder::new(3).kv_raw("deep", 9, v).build();
        let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
        assert!(err.contains("`deep` nests arrays deeper than"), "{err}");

        // Two levels are fine.
        let mut v = 9u32.to_le_bytes().to_vec();
        v.extend_from_slice(&1u64.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&2u64.to_le_bytes());
        v.extend_from_slice(&[7, 8]);
        let b = GgufBuilder::new(3).kv_raw("nested", 9, v).build();
        let file = GgufFile::from_bytes(b, "t.gguf").unwrap();
        assert_eq!(
            file.get("nested"),
            Some(&GgufValue::Array(vec![GgufValue::Array(vec![
                GgufValue::U8(7),
                GgufValue::U8(8)
            ])]))
        );

        let b = GgufBuilder::new(3).kv_u32("a", 1).kv_u32("a", 2).build();
        let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
        assert!(err.contains("duplicate metadata key `a`"), "{err}");

        let b = GgufBuilder::new(3)
            .kv_raw("bad", 8, enc_bytes(&[0xff, 0xfe]))
            .build();
        let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
        assert!(
            err.contains("value of metadata key `bad` at offset") && err.contains("UTF-8"),
            "{err}"
        );

        let b = GgufBuilder::new(3).kv_u32("general.alignment", 24).build();
        let err = GgufFile::from_bytes(b, "t.gguf").unwrap_err().to_string();
        assert!(err.contains("`general.alignment` is 24"), "{err}");
    }

    fn enc_bytes(b: &[u8]) -> Vec<u8> {
        let mut out = (b.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn custom_alignment() {
        let mut builder = GgufBuilder::new(3)
            .kv_u32("general.alignment", 64)
            .f32_tensor("a", &[3], &[1.0, 2.0, 3.0])
            .f32_tensor("b", &[2], &[4.0, 5.0]);
        builder.alignment = 64;
        let file = GgufFile::from_bytes(builder.build(), "t.gguf").unwrap();
        assert_eq!(file.alignment(), 64);
        assert_eq!(file.data_start() % 64, 0);
        assert_eq!(file.tensor_info("b").unwrap().offset, 64);
        assert_eq!(file.dequantize("b").unwrap(), [4.0, 5.0]);
    }

    /// A file with one tensor info written by hand (no data section unless `data` is given).
    fn one_tensor(dims: &[u64], ggml_type: u32, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut b = header(1, 0);
        b.extend(enc_str("t.weight"));
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ggml_type.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32, 0);
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn malformed_tensor_table() {
        let check = |bytes: Vec<u8>, needle: &str| {
            let err = GgufFile::from_bytes(bytes, "t.gguf")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "expected {needle:?} in {err}");
            assert!(err.starts_with("t.gguf: "), "{err}");
        };
        check(
            one_tensor(&[4], 0, 0, &[0; 8]),
            "truncated: tensor `t.weight` needs bytes",
        );
        check(
            one_tensor(&[2], 0, 1 << 40, &[0; 8]),
            "truncated: tensor `t.weight`",
        );
        check(
            one_tensor(&[2], 0, u64::MAX - 31, &[0; 8]),
            "truncated: tensor `t.weight`",
        );
        check(
            one_tensor(&[2], 0, 8, &[0; 64]),
            "offset 8 is not a multiple of the alignment 32",
        );
        check(
            one_tensor(&[1, 1, 1, 1, 1], 0, 0, &[0; 4]),
            "tensor `t.weight` has 5 dimensions",
        );
        check(
            one_tensor(&[1 << 32, 1 << 32], 0, 0, &[]),
            "element count of dims",
        );
        check(one_tensor(&[u64::MAX, 1], 0, 0, &[]), "overflows");
        check(
            one_tensor(&[33], 8, 0, &[0; 64]),
            "33 elements is not a multiple of the Q8_0 block size 32",
        );
        // Dims so large that the byte size overflows after the element count did not.
        check(one_tensor(&[1 << 62], 0, 0, &[]), "tensor `t.weight`");

        let b = GgufBuilder::new(3)
            .f32_tensor("same", &[1], &[1.0])
            .f32_tensor("same", &[1], &[2.0])
            .build();
        check(b, "duplicate tensor `same`");
    }

    #[test]
    fn unsupported_types_are_readable_but_not_decodable() {
        // Q5_0 (known layout, no decoder) and an unknown id.
        let file = GgufFile::from_bytes(one_tensor(&[32], 6, 0, &[0; 22]), "t.gguf").unwrap();
        let info = file.tensor_info("t.weight").unwrap();
        assert_eq!(info.ggml_type, GgmlType::Other(6));
        assert_eq!(file.tensor_bytes(info).unwrap().len(), 22);
        let err = file.dequantize("t.weight").unwrap_err().to_string();
        assert!(
            err.contains("unsupported ggml type 6 (Q5_0) for tensor `t.weight`"),
            "{err}"
        );

        let file = GgufFile::from_bytes(one_tensor(&[32], 99, 0, &[0; 4]), "t.gguf").unwrap();
        let err = file.dequantize("t.weight").unwrap_err().to_string();
        assert!(
            err.contains("unsupported ggml type 99 for tensor `t.weight`"),
            "{err}"
        );
        let info = file.tensor_info("t.weight").unwrap();
        assert!(file.tensor_bytes(info).is_err());
    }

    #[test]
    fn ggml_type_ids_roundtrip() {
        for id in 0..40 {
            assert_eq!(GgmlType::from_id(id).id(), id);
        }
        assert_eq!(GgmlType::Q4_1.block_size(), Some(32));
        assert_eq!(GgmlType::Q4_1.type_size(), Some(20));
        assert_eq!(GgmlType::Q6_K.type_size(), Some(210));
        assert_eq!(GgmlType::Other(99).block_size(), None);
        assert_eq!(GgmlType::Q4_K.to_string(), "Q4_K");
        assert_eq!(GgmlType::Other(13).to_string(), "13 (Q5_K)");
    }

    #[test]
    fn open_reads_files_and_reports_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        std::fs::write(&path, sample(3)).unwrap();
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.dequantize("norm.weight").unwrap(), [1.0, -2.0, 3.5]);
        assert!(format!("{file:?}").contains("n_tensors: 3"));

        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        let err = GgufFile::open(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.gguf") && err.contains("truncated"),
            "{err}"
        );

        let err = GgufFile::open(dir.path().join("missing.gguf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.gguf: cannot read file"), "{err}");
    }
}
