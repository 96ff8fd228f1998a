//! Streaming safetensors output: every tensor's place is known from the plan, so each shard's
//! header is written first and workers write their chunks straight to their final offsets —
//! no shard is ever held in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use temper_formats::safetensors::{self, TensorEntry};

use crate::plan::PlannedTensor;
use crate::{DType, MergeError, Result};

/// Where one output tensor lives.
#[derive(Debug, Clone, Copy)]
struct Slot {
    shard: usize,
    /// Absolute byte offset of the tensor's data in the shard file.
    offset: u64,
    dtype: DType,
}

/// The shard files of one output, open for positioned writes.
#[derive(Debug)]
pub struct ShardedWriter {
    files: Vec<(PathBuf, File)>,
    slots: Vec<Slot>,
    /// `model.safetensors.index.json`'s content when there are several shards.
    index: Option<serde_json::Value>,
}

/// Split tensors (in plan order) into shards of at most `max_bytes` (a tensor larger than
/// that gets a shard of its own), like mergekit's writer.
pub fn shard_assignment(tensors: &[PlannedTensor], max_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut current = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let b = t.out_bytes();
        let last = shards.len() - 1;
        if !shards[last].is_empty() && current + b > max_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        let last = shards.len() - 1;
        shards[last].push(i);
        current += b;
    }
    shards
}

/// Shard file names: `model.safetensors`, or `model-00001-of-00003.safetensors` ...
pub fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

impl ShardedWriter {
    /// Create the shard files in `dir` with their headers, sized to their final length.
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn create(dir: &Path, tensors: &[PlannedTensor], max_shard_bytes: u64) -> Result<Self> {
        let assignment = shard_assignment(tensors, max_shard_bytes.max(1));
        let n = assignment.len();
        let mut slots = vec![
            Slot {
                shard: 0,
                offset: 0,
                dtype: DType::F32,
            };
            tensors.len()
        ];
        let mut files = Vec::with_capacity(n);
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (s, members) in assignment.iter().enumerate() {
            let name = shard_name(s, n);
            let path = dir.join(&name);
            let entries: Vec<TensorEntry<'_>> = members
                .iter()
                .map(|&i| TensorEntry {
                    name: &tensors[i].name,
                    dtype: tensors[i].out_dtype.safetensors_name(),
                    shape: &tensors[i].shape,
                    bytes: tensors[i].out_bytes(),
                })
                .collect();
            // The safetensors serialiser's layout, so outputs can be byte-identical to
            // mergekit's.
            let layout = safetensors::layout(&path, &entries)?;
            for &i in members {
                weight_map.insert(
                    tensors[i].name.clone(),
                    serde_json::Value::String(name.clone()),
                );
            }
            total += layout.file_len - layout.head.len() as u64;
            let file = File::create(&path).map_err(|e| MergeError::io(&path, e))?;
            file.set_len(layout.file_len)
                .map_err(|e| MergeError::io(&path, e))?;
            write_at(&file, &layout.head, 0).map_err(|e| MergeError::io(&path, e))?;
            for (&i, &offset) in members.iter().zip(&layout.offsets) {
                slots[i] = Slot {
                    shard: s,
                    offset,
                    dtype: tensors[i].out_dtype,
                };
            }
            files.push((path, file));
        }
        let index = (n > 1).then(|| {
            serde_json::json!({
                "metadata": { "total_size": total },
                "weight_map": weight_map,
            })
        });
        Ok(Self {
            files,
            slots,
            index,
        })
    }

    /// Write `values` (f32, encoded to the tensor's output dtype) at element `elem_offset` of
    /// planned tensor `tensor`.
    ///
    /// # Errors
    /// I/O errors naming the shard.
    pub fn write(&self, tensor: usize, elem_offset: usize, values: &[f32]) -> Result<()> {
        let slot = self.slots[tensor];
        let mut bytes = vec![0u8; values.len() * slot.dtype.size()];
        slot.dtype.encode(values, &mut bytes);
        let (path, file) = &self.files[slot.shard];
        write_at(
            file,
            &bytes,
            slot.offset + (elem_offset * slot.dtype.size()) as u64,
        )
        .map_err(|e| MergeError::io(path, e))
    }

    /// The shard index JSON, when the output has several shards.
    pub fn index(&self) -> Option<&serde_json::Value> {
        self.index.as_ref()
    }

    /// Close the shards; with `sync`, flush them to the disk first (survives a power loss,
    /// costs the time to write everything out; an interrupted *process* is safe either way,
    /// because the output directory is renamed into place only after this).
    ///
    /// # Errors
    /// I/O errors naming the shard.
    pub fn finish(self, sync: bool) -> Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for (path, file) in self.files {
            if sync {
                file.sync_data().map_err(|e| MergeError::io(&path, e))?;
            }
            paths.push(path);
        }
        Ok(paths)
    }
}

#[cfg(unix)]
fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

#[cfg(windows)]
fn write_at(file: &File, mut bytes: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !bytes.is_empty() {
        let n = file.seek_write(bytes, offset)?;
        bytes = &bytes[n..];
        offset += n as u64;
    }
    Ok(())
}
