//! Atomic output directories: everything is written into a temporary directory next to the
//! destination, which is renamed into place only when complete. A failure (or a panic)
//! removes the temporary directory, so no half-written output is ever left behind.

use std::path::{Path, PathBuf};

use crate::{MergeError, Result};

/// A temporary directory that becomes `out_dir` on [`StagingDir::commit`].
#[derive(Debug)]
pub(crate) struct StagingDir {
    path: PathBuf,
    out_dir: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Check `out_dir` (absent, an empty directory, or `overwrite`) and create
    /// `.{name}.{tag}-{pid}` beside it.
    ///
    /// # Errors
    /// `out_dir` is a file, or a non-empty directory without `overwrite`; I/O errors.
    pub(crate) fn new(out_dir: &Path, overwrite: bool, tag: &str) -> Result<Self> {
        if out_dir.exists() {
            if !out_dir.is_dir() {
                return Err(MergeError::checkpoint(
                    out_dir,
                    "output path exists and is not a directory",
                ));
            }
            let non_empty = std::fs::read_dir(out_dir)
                .map_err(|e| MergeError::io(out_dir, e))?
                .next()
                .is_some();
            if non_empty && !overwrite {
                return Err(MergeError::io(
                    out_dir,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "output directory exists and is not empty (use --overwrite to replace it)",
                    ),
                ));
            }
        }
        let name = out_dir
            .file_name()
            .ok_or_else(|| MergeError::Config(format!("bad output path {}", out_dir.display())))?
            .to_string_lossy()
            .to_string();
        let parent = match out_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| MergeError::io(&parent, e))?;
        let staging = Self {
            path: parent.join(format!(".{name}.{tag}-{}", std::process::id())),
            out_dir: out_dir.to_path_buf(),
            committed: false,
        };
        if staging.path.exists() {
            std::fs::remove_dir_all(&staging.path).map_err(|e| MergeError::io(&staging.path, e))?;
        }
        std::fs::create_dir(&staging.path).map_err(|e| MergeError::io(&staging.path, e))?;
        Ok(staging)
    }

    /// Where to write.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Replace `out_dir` with the finished directory.
    ///
    /// # Errors
    /// I/O errors removing the old output or renaming.
    pub(crate) fn commit(mut self) -> Result<()> {
        if self.out_dir.exists() {
            std::fs::remove_dir_all(&self.out_dir).map_err(|e| MergeError::io(&self.out_dir, e))?;
        }
        std::fs::rename(&self.path, &self.out_dir).map_err(|e| MergeError::io(&self.out_dir, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
