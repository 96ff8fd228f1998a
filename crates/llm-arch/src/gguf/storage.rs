//! Where the bytes of an opened GGUF file live: a read-only memory map, or a vector.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

/// Where the file bytes live: a memory map for real files, a vector for tests and tiny inputs.
#[derive(Debug)]
pub(super) enum Storage {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Self::Mmap(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// Map an opened GGUF file read-only (through `temper-formats`, the one home of the
/// workspace's memory maps and their safety argument; every access through `GgufFile` is
/// bounds-checked against the length seen at open time).
pub(super) fn map_file(file: &File, path: &Path) -> std::io::Result<Mmap> {
    temper_formats::mmap::map_open_file(file, path).map_err(|e| match e {
        temper_formats::FormatsError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })
}
