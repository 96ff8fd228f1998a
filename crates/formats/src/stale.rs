//! Leftovers of interrupted writers: a process killed while writing (`kill -9`, a power cut)
//! never runs its clean-up, so its temporary file or staging directory
//! (`.{name}.temper-tmp-{pid}-{n}`, see [`crate::atomic::temp_sibling`]) stays beside the
//! output — hundreds of MB for a model. The next Temper writer into the same directory removes
//! them: [`crate::atomic`] and [`crate::staging`] call [`sweep_once`] before they create their
//! own temporary name, so every writer of the workspace does it without asking.
//!
//! Only entries whose writer is certainly gone are removed: the pid in the name must not be a
//! running process (`/proc/{pid}` missing on Linux), and is never our own. A pid that is
//! alive — the writer itself, or an unrelated process that reused the pid — keeps its entry:
//! a reused pid only delays the clean-up until that process ends. Where liveness cannot be
//! told (no `/proc`, other systems) nothing is removed and the leftovers are reported.
//!
//! Training checkpoints of Temper before the shared scheme were staged as
//! `.checkpoint-{step}.tmp-{pid}`; those are recognised too.
//!
//! A pid names a process on this machine only: a writer on another machine (a network file
//! system) or in another pid namespace (a container sharing the folder) looks dead from
//! here. Sharing an output folder between such writers is not supported.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::atomic::TEMP_MARKER;

/// What [`sweep_stale_temps`] found in a directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Leftovers of dead processes, removed.
    pub removed: Vec<PathBuf>,
    /// Leftovers kept: their process is alive (or is this one), or liveness is unknown.
    pub kept: Vec<PathBuf>,
    /// Leftovers of dead processes that could not be removed (logged as warnings).
    pub failed: Vec<PathBuf>,
}

/// The writer's pid in a temporary name of ours, `None` for any other name:
/// `.{name}.temper-tmp-{pid}-{n}`, or the older checkpoint staging `.checkpoint-{step}.tmp-{pid}`.
pub fn temp_owner(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let marker = format!(".{TEMP_MARKER}-");
    if let Some(at) = rest.rfind(&marker) {
        let (pid, n) = rest[at + marker.len()..].split_once('-')?;
        // The target's own name is not empty: `.` + name + marker.
        return (at > 0 && digits(pid) && digits(n))
            .then(|| pid.parse().ok())
            .flatten();
    }
    let (step, pid) = rest.strip_prefix("checkpoint-")?.split_once(".tmp-")?;
    (digits(step) && digits(pid))
        .then(|| pid.parse().ok())
        .flatten()
}

/// Whether process `pid` is running: `Some(false)` only when that is certain.
fn alive(pid: u32) -> Option<bool> {
    if pid == std::process::id() {
        return Some(true);
    }
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        // A zombie still has its entry: kept, which is the safe side.
        return Some(Path::new("/proc").join(pid.to_string()).exists());
    }
    None
}

/// Remove the leftovers of dead processes in `dir` (see the module docs), logging each with
/// `tracing`. Best effort: an unreadable directory is skipped, a failed removal is a warning —
/// the caller's own write goes on either way.
pub fn sweep_stale_temps(dir: &Path) -> Sweep {
    let mut sweep = Sweep::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return sweep;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        let path = entry.path();
        match alive(pid) {
            Some(false) => {}
            Some(true) => {
                sweep.kept.push(path);
                continue;
            }
            None => {
                tracing::warn!(
                    "{}: a temporary output of process {pid}, which may have been interrupted; \
                     remove it if no Temper process is writing here",
                    path.display()
                );
                sweep.kept.push(path);
                continue;
            }
        }
        // Not followed if it is a symlink: only the link goes.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {
                tracing::info!(
                    "removed {}, left behind by an interrupted process {pid}",
                    path.display()
                );
                sweep.removed.push(path);
            }
            // Another sweeper got there first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(
                    "{}: left behind by an interrupted process {pid}, cannot be removed: {e}",
                    path.display()
                );
                sweep.failed.push(path);
            }
        }
    }
    sweep
}

/// [`sweep_stale_temps`] of the directory that holds `target`, once per directory and process:
/// writers call it for every file they write, and a directory needs sweeping only once a run.
pub fn sweep_once(target: &Path) {
    static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // An absolute key, so `out` and `./out` are one directory; unresolvable: swept each time.
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    {
        let mut swept = SWEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !swept.get_or_insert_with(HashSet::new).insert(key) {
            return;
        }
    }
    sweep_stale_temps(dir);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Above Linux's largest pid (2^22): never a running process.
    const DEAD: u32 = 999_999_999;

    #[test]
    fn recognises_only_our_temporary_names() {
        assert_eq!(temp_owner(".out.temper-tmp-42-0"), Some(42));
        assert_eq!(temp_owner(".a.b.safetensors.temper-tmp-7-12"), Some(7));
        assert_eq!(temp_owner(".checkpoint-30.tmp-99"), Some(99));
        for other in [
            "out.temper-tmp-42-0", // not hidden: not one of ours
            "..temper-tmp-42-0",   // no target name
            ".out.temper-tmp-42",
            ".out.temper-tmp-x-0",
            ".out.temper-tmp-42-0-extra",
            ".out.temper-tmp-99999999999-0", // beyond u32
            ".checkpoint-x.tmp-1",
            ".checkpoint-3.tmp-",
            "checkpoint-3",
            ".git",
        ] {
            assert_eq!(temp_owner(other), None, "{other}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn removes_the_dead_and_keeps_the_living() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        let me = std::process::id();
        let dead_dir = dir.join(format!(".out.temper-tmp-{DEAD}-0"));
        std::fs::create_dir(&dead_dir).unwrap();
        std::fs::write(dead_dir.join("model.safetensors"), b"half").unwrap();
        let dead_file = dir.join(format!(".a.json.temper-tmp-{DEAD}-3"));
        std::fs::write(&dead_file, b"x").unwrap();
        let legacy = dir.join(format!(".checkpoint-5.tmp-{DEAD}"));
        std::fs::create_dir(&legacy).unwrap();
        let mine = dir.join(format!(".out.temper-tmp-{me}-0"));
        std::fs::create_dir(&mine).unwrap();
        // pid 1 (init) is always alive.
        let init = dir.join(".b.temper-tmp-1-0");
        std::fs::write(&init, b"y").unwrap();
        let user = dir.join(format!("notes.temper-tmp-{DEAD}-0"));
        std::fs::write(&user, b"z").unwrap();

        let mut sweep = sweep_stale_temps(dir);
        sweep.removed.sort();
        sweep.kept.sort();
        let mut removed = vec![dead_dir.clone(), dead_file.clone(), legacy.clone()];
        removed.sort();
        assert_eq!(sweep.removed, removed);
        let mut kept = vec![mine.clone(), init.clone()];
        kept.sort();
        assert_eq!(sweep.kept, kept);
        assert!(sweep.failed.is_empty());
        for gone in [&dead_dir, &dead_file, &legacy] {
            assert!(!gone.exists(), "{}", gone.display());
        }
        for here in [&mine, &init, &user] {
            assert!(here.exists(), "{}", here.display());
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn writers_sweep_the_directory_they_write_into() {
        let root = tempfile::tempdir().unwrap();
        let dead = root.path().join(format!(".model.temper-tmp-{DEAD}-1"));
        std::fs::create_dir(&dead).unwrap();
        crate::write_atomic(&root.path().join("a.json"), b"{}").unwrap();
        assert!(!dead.exists());
        // A staging directory sweeps the folder its output goes to.
        let nested = root.path().join("runs");
        std::fs::create_dir(&nested).unwrap();
        let dead = nested.join(format!(".merged.temper-tmp-{DEAD}-0"));
        std::fs::write(&dead, b"x").unwrap();
        let staging = crate::StagingDir::create(nested.join("merged"), false).unwrap();
        assert!(!dead.exists());
        drop(staging);
    }
}
