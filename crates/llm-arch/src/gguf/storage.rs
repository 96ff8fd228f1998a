//! Where the bytes of an opened GGUF file live: a read-only memory map, or a vector.

use std::fs::File;

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

/// Map a file read-only.
#[allow(unsafe_code)]
pub(super) fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and private to this process. The only hazard is another
    // process truncating or rewriting the file while it is mapped, which memmap2 cannot prevent;
    // GGUF files are written once and then only read, and every access through `GgufFile` is
    // bounds-checked against the length seen at open time.
    unsafe { Mmap::map(file) }
}
