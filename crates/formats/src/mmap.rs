//! Read-only memory maps: the one place in Temper that maps a file (safetensors checkpoints,
//! GGUF files), so the one `unsafe` call and its argument live here.

use std::fs::File;
use std::path::Path;

pub use memmap2::Mmap;

use crate::{FormatsError, Result};

/// Map the file at `path` read-only.
///
/// # Errors
/// The file cannot be opened or mapped, or it is not a regular file (errors name `path`).
pub fn map_file(path: impl AsRef<Path>) -> Result<Mmap> {
    let path = path.as_ref();
    let file = crate::regular::open_regular(path).map_err(|e| FormatsError::io(path, e))?;
    map_open_file(&file, path)
}

/// Map an already opened `file` read-only; `path` names it in errors.
///
/// # Errors
/// The file cannot be mapped.
#[allow(unsafe_code)]
pub fn map_open_file(file: &File, path: impl AsRef<Path>) -> Result<Mmap> {
    // SAFETY: the map is read-only and private to this process; memmap2 keeps its own handle,
    // so it outlives `file`. The one hazard, which no mmap-based loader (safetensors, candle,
    // burn-store, llama.cpp) can exclude, is another process truncating or rewriting the file
    // while it is mapped. Checkpoints and GGUF files are written once (atomically, through a
    // rename, when Temper writes them) and then only read, and every reader bounds-checks its
    // accesses against the length seen at map time.
    unsafe { Mmap::map(file) }.map_err(|e| FormatsError::io(path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn maps_contents_and_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        std::fs::write(&path, b"weights").unwrap();
        assert_eq!(&map_file(&path).unwrap()[..], b"weights");
        let err = map_file(dir.path().join("absent.bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.bin"), "{err}");
    }
}
