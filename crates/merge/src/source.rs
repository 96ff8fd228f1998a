//! Input checkpoints: HF directories read through mmap, or tensors already in memory.
//!
//! A [`ModelSource`] only indexes tensors (name → dtype, shape, bytes); data is touched when a
//! worker reads a chunk, so memory stays bounded by the tensors being merged, not the model.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use temper_formats::{Mmap, map_file};

use crate::{DType, MergeError, Result};

/// A tensor held in memory (the in-memory merge API, LoRA-merged inputs).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    /// The dtype the values are representable in (and are saved as).
    pub dtype: DType,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Wrap f32 values; `data.len()` must equal the product of `shape`.
    pub fn new(shape: Vec<usize>, dtype: DType, data: Vec<f32>) -> Self {
        Self { shape, dtype, data }
    }
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

#[derive(Debug, Clone)]
enum Location {
    /// Shard index and byte range within the mapped file.
    Mapped {
        shard: usize,
        bytes: Range<usize>,
        dtype: DType,
    },
    Memory(usize),
}

#[derive(Debug, Clone)]
struct Entry {
    shape: Vec<usize>,
    location: Location,
}

/// One input model: its `config.json`, where its files are, and an index of its tensors.
#[derive(Debug)]
pub struct ModelSource {
    label: String,
    dir: Option<PathBuf>,
    config: Option<serde_json::Value>,
    shards: Vec<Shard>,
    memory: Vec<HostTensor>,
    index: BTreeMap<String, Entry>,
}

impl ModelSource {
    /// Open an HF model directory (`model.safetensors` or `model.safetensors.index.json`).
    /// `label` names the model in errors (the path as written in the config).
    ///
    /// # Errors
    /// A missing directory or weights file, a malformed index or safetensors header, a
    /// truncated shard, or a tensor of a non-float dtype.
    pub fn open(dir: &Path, label: &str) -> Result<Self> {
        if !dir.is_dir() {
            return Err(MergeError::checkpoint(
                dir,
                format!("model {label}: not a directory"),
            ));
        }
        let config_path = dir.join("config.json");
        let config =
            if config_path.exists() {
                let text = temper_formats::read_regular_to_string(&config_path)
                    .map_err(|e| MergeError::io(&config_path, e))?;
                Some(serde_json::from_str(&text).map_err(|e| {
                    MergeError::checkpoint(&config_path, format!("invalid JSON: {e}"))
                })?)
            } else {
                None
            };
        let files = shard_files(dir)?;
        let mut source = Self {
            label: label.to_string(),
            dir: Some(dir.to_path_buf()),
            config,
            shards: Vec::new(),
            memory: Vec::new(),
            index: BTreeMap::new(),
        };
        for path in files {
            source.add_shard(path)?;
        }
        Ok(source)
    }

    /// A model made of tensors in memory (`config` optional).
    pub fn from_tensors(
        label: &str,
        config: Option<serde_json::Value>,
        tensors: BTreeMap<String, HostTensor>,
    ) -> Self {
        let mut memory = Vec::with_capacity(tensors.len());
        let mut index = BTreeMap::new();
        for (name, t) in tensors {
            index.insert(
                name,
                Entry {
                    shape: t.shape.clone(),
                    location: Location::Memory(memory.len()),
                },
            );
            memory.push(t);
        }
        Self {
            label: label.to_string(),
            dir: None,
            config,
            shards: Vec::new(),
            memory,
            index,
        }
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<()> {
        let mmap = map_file(&path)?;
        // Names the tensor at fault where the `safetensors` crate does not.
        temper_formats::safetensors_check::check_header(&mmap, &path)?;
        let st = SafeTensors::deserialize(&mmap)
            .map_err(|e| MergeError::checkpoint(&path, format!("invalid safetensors: {e}")))?;
        // Offsets in the header are relative to the data section after the header.
        let data_start = {
            let n = u64::from_le_bytes(
                mmap.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| MergeError::checkpoint(&path, "file shorter than 8 bytes"))?,
            );
            usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_add(8))
                .ok_or_else(|| MergeError::checkpoint(&path, "header length overflows"))?
        };
        let shard = self.shards.len();
        for (name, view) in st.tensors() {
            let dtype = DType::from_safetensors(view.dtype()).ok_or_else(|| {
                MergeError::checkpoint(
                    &path,
                    format!(
                        "tensor {name} has dtype {:?}; only F32, BF16 and F16 can be merged",
                        view.dtype()
                    ),
                )
            })?;
            let data = view.data();
            // `data` is a subslice of the map: its offset gives the absolute byte range.
            let start = data.as_ptr() as usize - mmap.as_ptr() as usize;
            debug_assert!(start >= data_start);
            if self.index.contains_key(&name) {
                return Err(MergeError::checkpoint(
                    &path,
                    format!("tensor {name} appears in more than one shard"),
                ));
            }
            self.index.insert(
                name,
                Entry {
                    shape: view.shape().to_vec(),
                    location: Location::Mapped {
                        shard,
                        bytes: start..start + data.len(),
                        dtype,
                    },
                },
            );
        }
        drop(st);
        self.shards.push(Shard { path, mmap });
        Ok(())
    }

    /// The name used in the configuration.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The directory, for models read from disk.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The parsed `config.json`, if the model has one.
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.config.as_ref()
    }

    /// `num_hidden_layers` from the config, else counted from the tensor names.
    pub fn num_layers(&self) -> usize {
        if let Some(n) = self
            .config
            .as_ref()
            .and_then(|c| c.get("num_hidden_layers"))
            .and_then(serde_json::Value::as_u64)
        {
            return n as usize;
        }
        self.index
            .keys()
            .filter_map(|k| layer_of(k).map(|(i, _)| i + 1))
            .max()
            .unwrap_or(0)
    }

    /// Tensor names, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Whether the model has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|e| e.shape.as_slice())
    }

    /// Stored dtype of tensor `name`.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.index.get(name).map(|e| match &e.location {
            Location::Mapped { dtype, .. } => *dtype,
            Location::Memory(i) => self.memory[*i].dtype,
        })
    }

    /// A read view of tensor `name` (no data is copied).
    ///
    /// # Errors
    /// The tensor is absent.
    pub fn tensor(&self, name: &str) -> Result<InputTensor<'_>> {
        let entry = self
            .index
            .get(name)
            .ok_or_else(|| MergeError::MissingTensor {
                tensor: name.to_string(),
                model: self.label.clone(),
            })?;
        let storage = match &entry.location {
            Location::Mapped {
                shard,
                bytes,
                dtype,
            } => Storage::Bytes {
                bytes: &self.shards[*shard].mmap[bytes.clone()],
                dtype: *dtype,
            },
            Location::Memory(i) => Storage::F32 {
                data: Cow::Borrowed(&self.memory[*i].data),
                dtype: self.memory[*i].dtype,
            },
        };
        Ok(InputTensor {
            shape: entry.shape.clone(),
            storage,
            cast: None,
        })
    }

    /// Replace (or add) a tensor with values computed in memory (a LoRA-merged weight).
    pub fn replace(&mut self, name: &str, tensor: HostTensor) {
        let i = self.memory.len();
        self.index.insert(
            name.to_string(),
            Entry {
                shape: tensor.shape.clone(),
                location: Location::Memory(i),
            },
        );
        self.memory.push(tensor);
    }

    /// Paths of the weight files (for error messages and byte accounting).
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }
}

/// `model.layers.{i}.{suffix}` → `(i, suffix)`.
pub fn layer_of(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, suffix) = rest.split_once('.')?;
    Some((idx.parse().ok()?, suffix))
}

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.exists() {
        return Err(MergeError::checkpoint(
            dir,
            "no model.safetensors or model.safetensors.index.json",
        ));
    }
    let text = temper_formats::read_regular_to_string(&index_path)
        .map_err(|e| MergeError::io(&index_path, e))?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| MergeError::checkpoint(&index_path, format!("invalid JSON: {e}")))?;
    let map = index
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| MergeError::checkpoint(&index_path, "missing `weight_map`"))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            MergeError::checkpoint(&index_path, format!("weight_map[{tensor}] is not a string"))
        })?;
        temper_formats::safetensors_check::shard_path(dir, &index_path, tensor, file)?;
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.exists()) {
        return Err(MergeError::checkpoint(
            &index_path,
            format!(
                "shard {} listed in the index does not exist",
                missing.display()
            ),
        ));
    }
    Ok(paths)
}

/// Backing store of an [`InputTensor`].
#[derive(Debug, Clone)]
enum Storage<'a> {
    Bytes { bytes: &'a [u8], dtype: DType },
    F32 { data: Cow<'a, [f32]>, dtype: DType },
}

/// A read-only view of one input tensor, decoded to f32 on demand.
#[derive(Debug, Clone)]
pub struct InputTensor<'a> {
    shape: Vec<usize>,
    storage: Storage<'a>,
    /// Load dtype (mergekit's `dtype:`): values are rounded to it when read.
    cast: Option<DType>,
}

impl<'a> InputTensor<'a> {
    /// A view of f32 values (tests and the in-memory API).
    pub fn from_f32(shape: Vec<usize>, data: &'a [f32]) -> Self {
        Self {
            shape,
            storage: Storage::F32 {
                data: Cow::Borrowed(data),
                dtype: DType::F32,
            },
            cast: None,
        }
    }

    /// An owned tensor of values representable in `dtype`.
    pub fn owned(shape: Vec<usize>, dtype: DType, data: Vec<f32>) -> InputTensor<'static> {
        InputTensor {
            shape,
            storage: Storage::F32 {
                data: Cow::Owned(data),
                dtype,
            },
            cast: None,
        }
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The stored dtype.
    pub fn stored_dtype(&self) -> DType {
        match &self.storage {
            Storage::Bytes { dtype, .. } | Storage::F32 { dtype, .. } => *dtype,
        }
    }

    /// The dtype values are read in (the load dtype if set, else the stored one).
    pub fn dtype(&self) -> DType {
        self.cast.unwrap_or_else(|| self.stored_dtype())
    }

    /// Read values as if cast to `dtype` on load.
    #[must_use]
    pub fn with_load_dtype(mut self, dtype: Option<DType>) -> Self {
        self.cast = dtype.filter(|d| *d != self.stored_dtype());
        self
    }

    /// Keep only the first `rows` rows (axis 0): embedding truncation.
    #[must_use]
    pub fn truncate_rows(mut self, rows: usize) -> Self {
        let Some(&n) = self.shape.first() else {
            return self;
        };
        if rows >= n {
            return self;
        }
        let row: usize = self.shape[1..].iter().product();
        self.shape[0] = rows;
        let keep = rows * row;
        self.storage = match self.storage {
            Storage::Bytes { bytes, dtype } => Storage::Bytes {
                bytes: &bytes[..keep * dtype.size()],
                dtype,
            },
            Storage::F32 { data, dtype } => Storage::F32 {
                data: match data {
                    Cow::Borrowed(d) => Cow::Borrowed(&d[..keep]),
                    Cow::Owned(mut d) => {
                        d.truncate(keep);
                        Cow::Owned(d)
                    }
                },
                dtype,
            },
        };
        self
    }

    /// Decode elements `range` (flattened, row-major) into `out`, rounded to the load dtype.
    pub fn read(&self, range: Range<usize>, out: &mut [f32]) {
        debug_assert_eq!(range.len(), out.len());
        match &self.storage {
            Storage::Bytes { bytes, dtype } => {
                let s = dtype.size();
                dtype.decode(&bytes[range.start * s..range.end * s], out);
            }
            Storage::F32 { data, .. } => out.copy_from_slice(&data[range]),
        }
        if let Some(cast) = self.cast
            && cast != DType::F32
        {
            out.iter_mut().for_each(|v| *v = cast.round(*v));
        }
    }

    /// All values as f32 (whole-tensor methods).
    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        self.read(0..out.len(), &mut out);
        out
    }
}
