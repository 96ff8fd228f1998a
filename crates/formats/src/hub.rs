//! Models named by Hugging Face hub id (`org/name`, `org/name@revision`), found in the local
//! HF cache the way `huggingface_hub` lays it out:
//!
//! ```text
//! $HF_HUB_CACHE (else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub)
//!   models--org--name/
//!     refs/main                 ← the commit a branch or tag points at
//!     snapshots/<commit>/...    ← the files (symlinks into ../../blobs)
//! ```
//!
//! A path that exists is always used as the path it is: a hub id is only tried for a name
//! that is not on disk, so a local folder called `org/name` wins. A model missing from the
//! cache is downloaded into it when this crate is built with the `download` feature (the
//! `temper` binary is) and `HF_HUB_OFFLINE` is not set (see `hub_download`); otherwise it is
//! an error saying where it looked and what to run.
//! Names, revisions and the commit read from `refs/` are checked to be plain names (no `..`,
//! no separators where the layout has none), so a hostile id or ref file cannot point
//! outside the cache.

use std::path::{Path, PathBuf};

use crate::{FormatsError, Result};

/// A parsed hub id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit (`None`: `main`).
    pub revision: Option<String>,
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s != "."
        && s != ".."
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl HubId {
    /// `org/name` or `org/name@revision`, as the hub spells them; `None` for anything else
    /// (an absolute or `./` path, more than one `/`, odd characters).
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (spec, None),
        };
        let (org, name) = repo.split_once('/')?;
        if !plain_name(org) || !plain_name(name) {
            return None;
        }
        // A branch may hold `/` (`refs/pr/1`): each part must be a plain name.
        if let Some(rev) = revision
            && (rev.is_empty() || !rev.split('/').all(plain_name))
        {
            return None;
        }
        Some(Self {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    /// The repository's folder in the cache: `models--org--name`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// The HF hub cache directory from the environment (`lookup` is `std::env::var_os` in
/// [`hub_cache_dir`]; tests pass their own).
pub fn hub_cache_dir_from(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(dir) = lookup("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(home) = lookup("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("hub");
    }
    let cache = lookup("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| lookup("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

/// The HF hub cache directory of this process's environment.
pub fn hub_cache_dir() -> PathBuf {
    hub_cache_dir_from(|k| std::env::var_os(k))
}

fn is_commit(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The snapshot folder of `id` in `cache`.
///
/// # Errors
/// The repository, ref or snapshot is missing, or a ref file holds something other than a
/// commit hash; the message names what was looked for and how to fetch the model.
pub fn resolve_in_cache(id: &HubId, cache: &Path) -> Result<PathBuf> {
    let repo_dir = cache.join(id.folder_name());
    let revision = id.revision.as_deref().unwrap_or("main");
    let miss = |looked: &Path, why: &str| FormatsError::Output {
        path: looked.to_path_buf(),
        reason: format!(
            "`{spec}` is not a local path and {why} in the Hugging Face cache {cache} \
             (HF_HUB_CACHE or HF_HOME choose it); fetch it with `hf download {repo}{rev}` \
             (huggingface_hub) where there is a network, or pass a local directory or .gguf \
             file",
            spec = match &id.revision {
                Some(r) => format!("{}@{r}", id.repo),
                None => id.repo.clone(),
            },
            cache = cache.display(),
            repo = id.repo,
            rev = id
                .revision
                .as_deref()
                .map(|r| format!(" --revision {r}"))
                .unwrap_or_default(),
        ),
    };
    if !repo_dir.is_dir() {
        return Err(miss(&repo_dir, "is not"));
    }
    let ref_file = repo_dir.join("refs").join(revision);
    let commit = if ref_file.is_file() {
        let text =
            crate::read_regular_to_string(&ref_file).map_err(|e| FormatsError::io(&ref_file, e))?;
        let commit = text.trim().to_string();
        if !is_commit(&commit) {
            return Err(FormatsError::Output {
                path: ref_file,
                reason: format!("holds {commit:?}, not a commit hash"),
            });
        }
        commit
    } else if is_commit(revision) {
        revision.to_string()
    } else {
        return Err(miss(&ref_file, &format!("has no revision `{revision}`")));
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Err(miss(&snapshot, &format!("has no files of commit {commit}")));
    }
    Ok(snapshot)
}

/// The model file or folder a snapshot stands for: the folder itself, or — for a GGUF
/// repository (no `config.json`, exactly one `.gguf` file) — that file.
fn model_in_snapshot(snapshot: PathBuf) -> PathBuf {
    if snapshot.join("config.json").exists() {
        return snapshot;
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(&snapshot)
        .map(|entries| {
            entries
                .filter_map(std::result::Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
                })
                .collect()
        })
        .unwrap_or_default();
    match <[PathBuf; 1]>::try_from(ggufs) {
        Ok([one]) => one,
        Err(_) => snapshot,
    }
}

/// `spec` as a path: itself when it exists or cannot be a hub id; else the cached snapshot
/// of the hub id (searched in `cache`).
///
/// # Errors
/// A hub id not in the cache (see [`resolve_in_cache`]).
pub fn resolve_model_in(spec: &Path, cache: &Path) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    match spec.to_str().and_then(HubId::parse) {
        Some(id) => {
            let found = model_in_snapshot(resolve_in_cache(&id, cache)?);
            tracing::info!(
                "{} is {} (Hugging Face cache)",
                spec.display(),
                found.display()
            );
            Ok(found)
        }
        None => Ok(spec.to_path_buf()),
    }
}

/// [`resolve_model_in`] with the environment's cache ([`hub_cache_dir`]); with the
/// `download` feature, a hub id missing from the cache is downloaded into it first
/// (`hub_download::HubClient::from_env`: not when `HF_HUB_OFFLINE` is set).
///
/// # Errors
/// As [`resolve_model_in`]; a failed download says both where the cache was searched and why
/// the download failed.
pub fn resolve_model(spec: &Path) -> Result<PathBuf> {
    let cache = hub_cache_dir();
    let found = resolve_model_in(spec, &cache);
    #[cfg(feature = "download")]
    if let Err(miss) = &found
        && let Some(id) = spec.to_str().and_then(HubId::parse)
        && let Some(client) = crate::hub_download::HubClient::from_env()
    {
        tracing::info!(
            "{} is not in the Hugging Face cache {}: downloading it from {}",
            spec.display(),
            cache.display(),
            client.endpoint
        );
        return match client.download(&id, &cache) {
            Ok(snapshot) => Ok(model_in_snapshot(snapshot)),
            Err(e) => Err(FormatsError::Output {
                path: spec.to_path_buf(),
                reason: format!("not found locally ({miss}), and downloading it failed: {e}"),
            }),
        };
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_parse_as_the_hub_spells_them() {
        let id = HubId::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
        assert_eq!(
            id.folder_name(),
            "models--HuggingFaceTB--SmolLM2-135M-Instruct"
        );
        assert_eq!(id.revision, None);
        let id = HubId::parse("meta-llama/Llama-3.1-8B@refs/pr/1").unwrap();
        assert_eq!(id.revision.as_deref(), Some("refs/pr/1"));
        for bad in [
            "/abs/path",
            "./org/name",
            "org/name/extra",
            "../x",
            "org/..",
            "org/name@../../etc",
            "org/name@",
            "noslash",
            "org/na me",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_cache_dir_follows_huggingface_hub() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            hub_cache_dir_from(env(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h")])),
            PathBuf::from("/c")
        );
        assert_eq!(
            hub_cache_dir_from(env(&[("HF_HOME", "/h"), ("HOME", "/u")])),
            PathBuf::from("/h/hub")
        );
        assert_eq!(
            hub_cache_dir_from(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/u")])),
            PathBuf::from("/x/huggingface/hub")
        );
        assert_eq!(
            hub_cache_dir_from(env(&[("HOME", "/u")])),
            PathBuf::from("/u/.cache/huggingface/hub")
        );
    }

    /// A cache with `org/model` at two commits, `main` pointing at the second.
    fn cache() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("models--org--model");
        let (old, new) = ("a".repeat(40), "b".repeat(40));
        for commit in [&old, &new] {
            let snap = repo.join("snapshots").join(commit);
            std::fs::create_dir_all(&snap).unwrap();
            std::fs::write(snap.join("config.json"), commit.as_bytes()).unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{new}\n")).unwrap();
        std::fs::write(repo.join("refs/v1"), &old).unwrap();
        root
    }

    #[test]
    fn ids_resolve_to_snapshots_by_branch_tag_or_commit() {
        let c = cache();
        let snaps = c.path().join("models--org--model/snapshots");
        let got = |spec: &str| resolve_model_in(Path::new(spec), c.path());
        assert_eq!(got("org/model").unwrap(), snaps.join("b".repeat(40)));
        assert_eq!(got("org/model@v1").unwrap(), snaps.join("a".repeat(40)));
        let commit = "a".repeat(40);
        assert_eq!(
            got(&format!("org/model@{commit}")).unwrap(),
            snaps.join(&commit)
        );
        // Not an id: returned as written (the loader reports the missing file).
        assert_eq!(got("no/such/path").unwrap(), PathBuf::from("no/such/path"));
    }

    #[test]
    fn misses_say_where_they_looked_and_what_to_run() {
        let c = cache();
        let err = resolve_model_in(Path::new("org/other"), c.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("models--org--other")
                && err.contains("hf download org/other")
                && err.contains("HF_HUB_CACHE"),
            "{err}"
        );
        let err = resolve_model_in(Path::new("org/model@dev"), c.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("refs/dev") && err.contains("--revision dev"),
            "{err}"
        );
        // A ref file that would lead out of the cache is refused.
        std::fs::write(
            c.path().join("models--org--model/refs/evil"),
            "../../../etc",
        )
        .unwrap();
        let err = resolve_model_in(Path::new("org/model@evil"), c.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a commit hash"), "{err}");
    }

    #[test]
    fn a_gguf_repository_resolves_to_its_file_and_local_paths_win() {
        let c = cache();
        let snap = c
            .path()
            .join("models--org--gguf/snapshots")
            .join("c".repeat(40));
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(c.path().join("models--org--gguf/refs")).unwrap();
        std::fs::write(c.path().join("models--org--gguf/refs/main"), "c".repeat(40)).unwrap();
        std::fs::write(snap.join("model.Q4_1.gguf"), b"GGUF").unwrap();
        assert_eq!(
            resolve_model_in(Path::new("org/gguf"), c.path()).unwrap(),
            snap.join("model.Q4_1.gguf")
        );
        // An existing relative path is never looked up in the cache.
        let here = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(here.path().join("org/model")).unwrap();
        let local = here.path().join("org/model");
        assert_eq!(resolve_model_in(&local, c.path()).unwrap(), local);
    }
}
