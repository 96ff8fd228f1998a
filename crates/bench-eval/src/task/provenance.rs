//! What a task's numbers were computed from: every file it read — the YAML, the files it
//! `include`s, the data files of the evaluated and few-shot splits — with its size and
//! SHA-256, so a results JSON says which data it belongs to (a changed question changes a
//! hash even when the file name does not).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::config::{TaskConfig, read_include_chain};
use super::dataset::split_paths;
use crate::{EvalError, Result};

/// One file a task read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileHash {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// SHA-256 of a file, read in pieces (a data file may be large).
///
/// # Errors
/// I/O errors naming the file; a path that is not a regular file.
pub fn hash_file(path: &Path) -> Result<FileHash> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = temper_formats::open_regular(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileHash {
        path: path.to_path_buf(),
        bytes,
        sha256,
    })
}

/// The files of `config` (YAML, includes, the evaluated split's data and, with few-shot
/// examples, the few-shot split's), each once, hashed.
///
/// # Errors
/// As [`hash_file`], and unknown splits.
pub fn task_files(config: &TaskConfig, with_fewshot: bool) -> Result<Vec<FileHash>> {
    let mut paths: Vec<PathBuf> = read_include_chain(&config.path)?;
    let split = config.eval_split()?;
    let mut splits = vec![split];
    if with_fewshot && let Some(fs) = config.fewshot_split() {
        splits.push(fs);
    }
    for s in splits {
        paths.extend(split_paths(config, s)?.into_iter().map(|(p, _)| p));
    }
    let mut seen = std::collections::HashSet::new();
    paths
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .map(|p| hash_file(&p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_of_the_bytes() {
        let dir = tempfile::tempdir().ok();
        let dir = dir
            .as_ref()
            .map(tempfile::TempDir::path)
            .unwrap_or(Path::new("."));
        let p = dir.join("abc.txt");
        assert!(std::fs::write(&p, b"abc").is_ok());
        let h = hash_file(&p).ok();
        assert_eq!(h.as_ref().map(|h| h.bytes), Some(3));
        // FIPS 180-2's test vector.
        assert_eq!(
            h.map(|h| h.sha256),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into())
        );
    }
}
