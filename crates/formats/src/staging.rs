//! Atomic output directories: everything is written into a temporary directory beside the
//! destination ([`crate::atomic::temp_sibling`]'s name), which is renamed into place only when
//! complete. A failure, an early return or a panic drops the [`StagingDir`], which removes the
//! temporary directory: no half-written output is ever left behind. Merges and extracted
//! adapters (`temper-merge`) and training checkpoints (`temper-train`) are written this way.
//!
//! Files inside are not fsynced here: their writers decide (the merge has an `fsync` option).

use std::path::{Path, PathBuf};

use crate::atomic::{create_unique, sync_parent};
use crate::{FormatsError, Result};

/// Whether `out_dir` may be written as a new output directory: absent, an empty directory,
/// or any directory when `replace` (`--overwrite`). Commands call it before their slow part,
/// so a mistaken destination fails at once; [`StagingDir::create`] checks it again.
///
/// # Errors
/// `out_dir` is a file, or a non-empty directory without `replace` (the message names
/// `--overwrite`); I/O errors reading it.
pub fn check_output_dir(out_dir: &Path, replace: bool) -> Result<()> {
    if !out_dir.exists() {
        return Ok(());
    }
    if !out_dir.is_dir() {
        return Err(FormatsError::Output {
            path: out_dir.to_path_buf(),
            reason: "output path exists and is not a directory".into(),
        });
    }
    let non_empty = std::fs::read_dir(out_dir)
        .map_err(|e| FormatsError::io(out_dir, e))?
        .next()
        .is_some();
    if non_empty && !replace {
        return Err(FormatsError::Output {
            path: out_dir.to_path_buf(),
            reason: "output directory exists and is not empty (use --overwrite to replace it)"
                .into(),
        });
    }
    Ok(())
}

/// A temporary directory that becomes `out_dir` on [`StagingDir::commit`].
#[derive(Debug)]
pub struct StagingDir {
    path: PathBuf,
    out_dir: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Check `out_dir` — absent, an empty directory, or any directory when `replace` — and
    /// create the temporary directory beside it (creating the parent when missing).
    ///
    /// # Errors
    /// `out_dir` is a file, or a non-empty directory without `replace`; I/O errors.
    pub fn create(out_dir: impl AsRef<Path>, replace: bool) -> Result<Self> {
        let out_dir = out_dir.as_ref();
        check_output_dir(out_dir, replace)?;
        if let Some(parent) = out_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| FormatsError::io(parent, e))?;
        }
        let (path, ()) = create_unique(out_dir, |tmp| std::fs::create_dir(tmp))?;
        Ok(Self {
            path,
            out_dir: out_dir.to_path_buf(),
            committed: false,
        })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory this becomes on commit.
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// Replace `out_dir` (removing what is there) with the finished directory.
    ///
    /// # Errors
    /// I/O errors removing the old output or renaming; the temporary directory is removed.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.out_dir.exists() {
            std::fs::remove_dir_all(&self.out_dir)
                .map_err(|e| FormatsError::io(&self.out_dir, e))?;
        }
        std::fs::rename(&self.path, &self.out_dir)
            .map_err(|e| FormatsError::io(&self.out_dir, e))?;
        self.committed = true;
        sync_parent(&self.out_dir);
        Ok(std::mem::take(&mut self.out_dir))
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::atomic::TEMP_MARKER;

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn commit_renames_into_place_and_replaces() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("nested/out");
        let s = StagingDir::create(&out, false).unwrap();
        assert!(s.path().starts_with(root.path().join("nested")));
        std::fs::write(s.path().join("a"), b"1").unwrap();
        assert_eq!(s.commit().unwrap(), out);
        assert_eq!(names(&out), ["a"]);
        // Non-empty: refused without `replace`, replaced with it.
        let err = StagingDir::create(&out, false).unwrap_err().to_string();
        assert!(err.contains("--overwrite") && err.contains("out"), "{err}");
        let s = StagingDir::create(&out, true).unwrap();
        std::fs::write(s.path().join("b"), b"2").unwrap();
        s.commit().unwrap();
        assert_eq!(names(&out), ["b"]);
        assert_eq!(names(&root.path().join("nested")), ["out"]);
    }

    #[test]
    fn dropping_removes_the_temporary_directory() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        {
            let s = StagingDir::create(&out, false).unwrap();
            std::fs::write(s.path().join("half"), b"x").unwrap();
            assert!(names(root.path())[0].contains(TEMP_MARKER));
        }
        assert!(names(root.path()).is_empty());
        std::fs::write(&out, b"a file").unwrap();
        let err = StagingDir::create(&out, true).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
