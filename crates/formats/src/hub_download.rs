//! Downloading a model from the Hugging Face hub into the local HF cache, laid out as
//! `huggingface_hub` lays it out (so `hf`, transformers and Temper share one copy):
//!
//! ```text
//! models--org--name/
//!   blobs/<etag>                 ← each file once, named by its ETag (sha256 for LFS files)
//!   snapshots/<commit>/<file>    ← relative symlinks into ../../blobs
//!   refs/<revision>              ← the commit a branch or tag pointed at
//! ```
//!
//! Only what Temper loads is fetched: configs, tokenizer files, chat templates, safetensors
//! (with their index) and PEFT adapters — never pickles (`*.bin`, `*.pt`) — or, in a GGUF-only
//! repository, its one `.gguf` file. The protocol is the hub's public one, as
//! `huggingface_hub` speaks it: `GET {endpoint}/api/models/{repo}/revision/{rev}` for the
//! commit and file list, then for each file a `HEAD` on `{endpoint}/{repo}/resolve/{commit}/
//! {file}` without following redirects (its `ETag` / `X-Linked-Etag` and size), and a `GET`
//! that follows them to the storage host.
//!
//! Every blob is written to a temporary sibling and renamed into place only when its byte
//! count (and, for an LFS file, its sha256) matches what the hub announced, so an interrupted
//! or truncated download leaves nothing a later run would take for a model. File names from
//! the hub are checked to stay inside the snapshot. `HF_ENDPOINT` and `HF_TOKEN` are honoured
//! as by `huggingface_hub`; `HF_HUB_OFFLINE=1` turns downloading off.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::hub::HubId;
use crate::{AtomicFile, FormatsError, Result};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to download.
#[derive(Debug, Clone)]
pub struct HubClient {
    /// `https://huggingface.co` or a mirror (`HF_ENDPOINT`), without a trailing `/`.
    pub endpoint: String,
    /// A user access token (`HF_TOKEN`), sent to the hub only.
    pub token: Option<String>,
}

impl HubClient {
    /// From the environment: `HF_ENDPOINT`, `HF_TOKEN`; `None` when `HF_HUB_OFFLINE` is set to
    /// a true value (`1`, `true`, `yes`, `on`), as `huggingface_hub` reads it.
    pub fn from_env() -> Option<Self> {
        Self::from_env_with(|k| std::env::var(k).ok())
    }

    /// [`HubClient::from_env`] with the variables from `lookup` (tests pass their own).
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let offline = lookup("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        if offline {
            return None;
        }
        let endpoint = lookup("HF_ENDPOINT")
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Some(Self {
            endpoint: endpoint.trim().trim_end_matches('/').to_string(),
            token: lookup("HF_TOKEN").filter(|t| !t.trim().is_empty()),
        })
    }

    fn agent(redirects: u32) -> ureq::Agent {
        ureq::AgentBuilder::new()
            .redirects(redirects)
            .timeout_connect(Duration::from_secs(20))
            .timeout_read(Duration::from_secs(120))
            .user_agent(concat!("temper/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    fn request(&self, agent: &ureq::Agent, method: &str, url: &str) -> ureq::Request {
        let request = agent.request(method, url);
        match &self.token {
            // Sent to the hub itself; ureq drops it on a redirect to another host.
            Some(token) if url.starts_with(&self.endpoint) => {
                request.set("Authorization", &format!("Bearer {token}"))
            }
            _ => request,
        }
    }

    /// Download `id` into `cache` (skipping blobs already there) and return its snapshot
    /// folder.
    ///
    /// # Errors
    /// The hub cannot be reached or answers with an error (naming the URL and status), its
    /// answer is malformed, a file name would leave the snapshot, a download is cut short or
    /// does not match its checksum, or the cache cannot be written.
    pub fn download(&self, id: &HubId, cache: &Path) -> Result<PathBuf> {
        let revision = id.revision.as_deref().unwrap_or("main");
        let info_url = format!(
            "{}/api/models/{}/revision/{}",
            self.endpoint,
            id.repo,
            encode_revision(revision)
        );
        let agent = Self::agent(5);
        let info: serde_json::Value = self
            .request(&agent, "GET", &info_url)
            .call()
            .map_err(|e| http_error(&info_url, e))?
            .into_json()
            .map_err(|e| FormatsError::io(&info_url, e))?;
        let commit = info
            .get("sha")
            .and_then(serde_json::Value::as_str)
            .filter(|c| c.len() == 40 && c.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| FormatsError::key(&info_url, "sha", "missing or not a commit hash"))?
            .to_string();
        let names: Vec<String> = info
            .get("siblings")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| FormatsError::key(&info_url, "siblings", "missing or not a list"))?
            .iter()
            .filter_map(|s| s.get("rfilename").and_then(serde_json::Value::as_str))
            .map(str::to_string)
            .collect();
        let wanted = wanted_files(&names);
        if wanted.is_empty() {
            return Err(FormatsError::Output {
                path: PathBuf::from(&info_url),
                reason: format!(
                    "`{}` has no file Temper loads (config.json with safetensors, an adapter, \
                     or a single .gguf); its files: {}",
                    id.repo,
                    names.join(", ")
                ),
            });
        }
        let repo_dir = cache.join(id.folder_name());
        let snapshot = repo_dir.join("snapshots").join(&commit);
        for name in &wanted {
            let link = snapshot_path(&snapshot, name, &info_url)?;
            if link.exists() {
                continue;
            }
            let blob = self.fetch_blob(&repo_dir, &id.repo, &commit, name)?;
            link_blob(&link, &blob)?;
        }
        if revision != commit {
            let ref_file = repo_dir.join("refs").join(revision);
            if let Some(parent) = ref_file.parent() {
                std::fs::create_dir_all(parent).map_err(|e| FormatsError::io(parent, e))?;
            }
            crate::write_atomic(&ref_file, commit.as_bytes())?;
        }
        Ok(snapshot)
    }

    /// One file into `blobs/<etag>` (kept when already there); returns the blob's path.
    fn fetch_blob(&self, repo_dir: &Path, repo: &str, commit: &str, name: &str) -> Result<PathBuf> {
        let url = format!("{}/{repo}/resolve/{commit}/{name}", self.endpoint);
        let meta = self.head(&url)?;
        let blobs = repo_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|e| FormatsError::io(&blobs, e))?;
        let blob = blobs.join(&meta.etag);
        if blob.is_file() {
            return Ok(blob);
        }
        let response = self
            .request(&Self::agent(5), "GET", &url)
            .call()
            .map_err(|e| http_error(&url, e))?;
        let mut out = AtomicFile::create(&blob)?;
        let mut reader = response.into_reader();
        let (mut total, mut hasher) = (0u64, Sha256::new());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| FormatsError::io(&url, e))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if meta.size.is_some_and(|s| total > s) {
                return Err(FormatsError::Output {
                    path: PathBuf::from(&url),
                    reason: format!(
                        "sent more than the {} bytes announced",
                        meta.size.unwrap_or(0)
                    ),
                });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| FormatsError::io(out.temp_path(), e))?;
        }
        if let Some(size) = meta.size
            && total != size
        {
            return Err(FormatsError::Output {
                path: PathBuf::from(&url),
                reason: format!("download cut short: {total} of {size} bytes"),
            });
        }
        // LFS files are named by their sha256: check it before the blob is used.
        if meta.etag.len() == 64 {
            let digest = format!("{:x}", hasher.finalize());
            if digest != meta.etag {
                return Err(FormatsError::Output {
                    path: PathBuf::from(&url),
                    reason: format!("sha256 {digest} does not match the hub's {}", meta.etag),
                });
            }
        }
        out.commit()?;
        Ok(blob)
    }

    /// The file's ETag and size from a `HEAD` that does not leave the hub (a redirect to
    /// the storage host carries the LFS ETag itself; a relative one, after a rename, is
    /// followed).
    fn head(&self, url: &str) -> Result<BlobMeta> {
        let agent = Self::agent(0);
        let mut current = url.to_string();
        for _ in 0..5 {
            let response = self
                .request(&agent, "HEAD", &current)
                .call()
                .map_err(|e| http_error(&current, e))?;
            let header = |name: &str| response.header(name).map(str::to_string);
            let relative = header("Location").filter(|l| l.starts_with('/'));
            if (300..400).contains(&response.status())
                && let Some(location) = relative
            {
                current = format!("{}{location}", self.endpoint);
                continue;
            }
            let etag = header("X-Linked-Etag")
                .or_else(|| header("ETag"))
                .map(|e| normalize_etag(&e))
                .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()))
                .ok_or_else(|| FormatsError::Output {
                    path: PathBuf::from(&current),
                    reason: "no usable ETag in the hub's answer".into(),
                })?;
            let size = header("X-Linked-Size")
                .or_else(|| header("Content-Length"))
                .and_then(|s| s.trim().parse().ok());
            return Ok(BlobMeta { etag, size });
        }
        Err(FormatsError::Output {
            path: PathBuf::from(url),
            reason: "too many redirects".into(),
        })
    }
}

struct BlobMeta {
    etag: String,
    size: Option<u64>,
}

/// `W/"abc"` → `abc`, as `huggingface_hub` normalises it.
fn normalize_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// A revision in a URL path: `refs/pr/1` keeps its meaning as one segment.
fn encode_revision(revision: &str) -> String {
    revision.replace('/', "%2F")
}

fn http_error(url: &str, e: ureq::Error) -> FormatsError {
    let reason = match e {
        ureq::Error::Status(401, _) | ureq::Error::Status(403, _) => {
            "the hub refused access (a gated or private model needs HF_TOKEN)".to_string()
        }
        ureq::Error::Status(404, _) => "not found on the hub (check the id and revision)".into(),
        ureq::Error::Status(code, r) => format!("HTTP {code} {}", r.status_text()),
        ureq::Error::Transport(t) => {
            format!("{t} (no network? set HF_HUB_OFFLINE=1 to use the local cache only)")
        }
    };
    FormatsError::Output {
        path: PathBuf::from(url),
        reason,
    }
}

/// The files of a repository Temper loads; a GGUF repository's one `.gguf` when there is no
/// `config.json`.
fn wanted_files(names: &[String]) -> Vec<String> {
    const EXACT: [&str; 10] = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "chat_template.json",
        "tokenizer.model",
        "adapter_config.json",
        "adapter_model.safetensors",
    ];
    let top_level = |n: &&String| !n.contains('/');
    let has_weights = names
        .iter()
        .any(|n| n == "config.json" || n == "adapter_config.json");
    if has_weights {
        return names
            .iter()
            .filter(top_level)
            .filter(|n| {
                EXACT.contains(&n.as_str())
                    || n.ends_with(".safetensors")
                    || n.as_str() == "model.safetensors.index.json"
            })
            .cloned()
            .collect();
    }
    let ggufs: Vec<String> = names
        .iter()
        .filter(top_level)
        .filter(|n| n.to_ascii_lowercase().ends_with(".gguf"))
        .cloned()
        .collect();
    if ggufs.len() == 1 { ggufs } else { Vec::new() }
}

/// `snapshot/name`, refusing a name that would leave the snapshot.
fn snapshot_path(snapshot: &Path, name: &str, source: &str) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = !name.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(FormatsError::key(
            source,
            "siblings",
            format!("file name {name:?} would leave the snapshot folder"),
        ));
    }
    Ok(snapshot.join(rel))
}

/// `link` → `../../blobs/<etag>` (relative, as `huggingface_hub` makes it), atomically.
fn link_blob(link: &Path, blob: &Path) -> Result<()> {
    let dir = link
        .parent()
        .ok_or_else(|| FormatsError::io(link, std::io::ErrorKind::InvalidInput.into()))?;
    std::fs::create_dir_all(dir).map_err(|e| FormatsError::io(dir, e))?;
    let name = blob
        .file_name()
        .ok_or_else(|| FormatsError::io(blob, std::io::ErrorKind::InvalidInput.into()))?;
    #[cfg(unix)]
    {
        let target = Path::new("../../blobs").join(name);
        let temp = crate::atomic::temp_sibling(link)?;
        std::os::unix::fs::symlink(&target, &temp).map_err(|e| FormatsError::io(&temp, e))?;
        std::fs::rename(&temp, link).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            FormatsError::io(link, e)
        })
    }
    // Without symlinks (huggingface_hub does the same on Windows): a copy.
    #[cfg(not(unix))]
    {
        let _ = name;
        let bytes = std::fs::read(blob).map_err(|e| FormatsError::io(blob, e))?;
        crate::write_atomic(link, &bytes)
    }
}

#[cfg(test)]
#[path = "hub_download_tests.rs"]
mod tests;
