//! Atomic file writes: a file is written under a temporary name in its own directory, flushed
//! to disk and renamed over the target, so a reader (or a crash) sees the old file or the new
//! one, never half of one. On any error the temporary file is removed.
//!
//! Every temporary name Temper uses — for files here and for directories in
//! [`crate::staging`] — is [`temp_sibling`]'s: `.{name}.temper-tmp-{pid}-{n}` beside the
//! target, hidden, unique per process and call, and recognisable in a listing — which lets
//! the next writer remove those of interrupted processes ([`crate::stale`]).

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{FormatsError, Result};

/// The marker every temporary name carries (tests look for leftovers by it).
pub const TEMP_MARKER: &str = "temper-tmp";

/// How many names [`create_unique`] tries before giving up: a clash needs a stale leftover
/// of an earlier process that had the same pid, so one retry is almost always enough.
const ATTEMPTS: usize = 64;

/// A temporary sibling of `path`: `.{file name}.temper-tmp-{pid}-{n}` in the same directory,
/// so the final rename never crosses a file system. `n` counts calls in this process, so
/// concurrent writers of the same target never share a temporary name.
///
/// # Errors
/// `path` has no file name (`/`, `..`).
pub fn temp_sibling(path: &Path) -> Result<PathBuf> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| FormatsError::Output {
        path: path.to_path_buf(),
        reason: "not a file or directory name".into(),
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".{TEMP_MARKER}-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

/// Create a fresh temporary sibling of `path` with `create` (which must fail with
/// `AlreadyExists` when the name is taken), trying new names on a clash. The directory is
/// first cleared of temporary names left there by dead processes ([`crate::stale`]).
pub(crate) fn create_unique<T>(
    path: &Path,
    create: impl Fn(&Path) -> std::io::Result<T>,
) -> Result<(PathBuf, T)> {
    crate::stale::sweep_once(path);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let tmp = temp_sibling(path)?;
        match create(&tmp) {
            Ok(made) => return Ok((tmp, made)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((tmp, e)),
            Err(e) => return Err(FormatsError::io(&tmp, e)),
        }
    }
    Err(match last {
        Some((tmp, e)) => FormatsError::io(tmp, e),
        None => FormatsError::Output {
            path: path.to_path_buf(),
            reason: "no temporary name could be created".into(),
        },
    })
}

/// Best-effort fsync of the directory holding `path`, which makes a rename durable on file
/// systems that need it; platforms that cannot open a directory skip it.
pub(crate) fn sync_parent(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A file being written atomically: write through it ([`Write`], or [`AtomicFile::temp_path`]
/// for writers that only take a path), then [`AtomicFile::commit`]. Dropped without a commit,
/// it removes its temporary file.
///
/// The final file gets the permissions a plain `File::create` would give (0644 under the usual
/// umask), even when a path-taking writer such as `safetensors::serialize_to_file` replaced the
/// temporary file with a private (0600) one.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    temp: PathBuf,
    file: File,
    permissions: Permissions,
    committed: bool,
}

impl AtomicFile {
    /// Start writing `path`: create its temporary sibling (see [`temp_sibling`]).
    ///
    /// # Errors
    /// I/O errors naming the temporary file (a missing directory, no permission).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (temp, file) = create_unique(&path, |tmp| {
            OpenOptions::new().write(true).create_new(true).open(tmp)
        })?;
        // The mode a new file gets here is the process's default (0666 minus the umask): keep
        // it to restore after writers that swap the file for a private one.
        let permissions = match file.metadata() {
            Ok(m) => m.permissions(),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(FormatsError::io(&temp, e));
            }
        };
        Ok(Self {
            path,
            temp,
            file,
            permissions,
            committed: false,
        })
    }

    /// The file this becomes on commit.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file being written, for writers that take a path. They may replace it.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flush the data to disk and rename the temporary file over [`AtomicFile::path`].
    ///
    /// # Errors
    /// I/O errors naming the file; the temporary file is removed.
    pub fn commit(mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(|e| FormatsError::io(&self.temp, e))?;
        std::fs::set_permissions(&self.temp, self.permissions.clone())
            .map_err(|e| FormatsError::io(&self.temp, e))?;
        // Reopened by name: a path-taking writer may have put another file there.
        OpenOptions::new()
            .write(true)
            .open(&self.temp)
            .and_then(|f| f.sync_all())
            .map_err(|e| FormatsError::io(&self.temp, e))?;
        std::fs::rename(&self.temp, &self.path).map_err(|e| FormatsError::io(&self.path, e))?;
        self.committed = true;
        sync_parent(&self.path);
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Write `bytes` to `path` atomically (see the module docs).
///
/// # Errors
/// I/O errors naming the file; nothing is left at the temporary name, and `path` keeps its
/// old contents.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)
        .map_err(|e| FormatsError::io(&file.temp, e))?;
    file.commit()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(TEMP_MARKER))
            .collect()
    }

    #[test]
    fn writes_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn temporary_names_are_hidden_siblings_and_unique() {
        let a = temp_sibling(Path::new("out/model.safetensors")).unwrap();
        let b = temp_sibling(Path::new("out/model.safetensors")).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(Path::new("out")));
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".model.safetensors.temper-tmp-"), "{name}");
        assert!(temp_sibling(Path::new("/")).is_err());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), b"x").unwrap();
        let err = write_atomic(&path, b"data").unwrap_err().to_string();
        assert!(err.contains("taken"), "{err}");
        assert!(leftovers(dir.path()).is_empty());
        // A missing directory fails before anything is created, naming the path.
        let err = write_atomic(&dir.path().join("no/such/file"), b"x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no/such"), "{err}");
        // A dropped, uncommitted file leaves nothing either.
        let mut f = AtomicFile::create(dir.path().join("dropped")).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert!(leftovers(dir.path()).is_empty());
        assert!(!dir.path().join("dropped").exists());
    }

    #[cfg(unix)]
    #[test]
    fn files_get_the_default_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let default = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
        let path = dir.path().join("atomic");
        write_atomic(&path, b"x").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            default
        );
        // A writer that swaps in a private file (as safetensors' does) is corrected.
        let f = AtomicFile::create(dir.path().join("swapped")).unwrap();
        std::fs::remove_file(f.temp_path()).unwrap();
        std::fs::write(f.temp_path(), b"y").unwrap();
        std::fs::set_permissions(f.temp_path(), Permissions::from_mode(0o600)).unwrap();
        f.commit().unwrap();
        let mode = std::fs::metadata(dir.path().join("swapped"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, default);
    }
}
