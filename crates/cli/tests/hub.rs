//! Models by hub id: `--model org/name[@revision]` found in a Hugging Face cache laid out as
//! `huggingface_hub` writes it (snapshot files symlinked into `blobs/`), chosen by
//! `HF_HUB_CACHE`; a miss names the cache and the command that fetches the model, and outside
//! `HF_HUB_OFFLINE` the binary tries the hub (`HF_ENDPOINT`) first.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

fn generate(cache: &Path, model: &str) -> (bool, String, String) {
    generate_with(cache, model, &[("HF_HUB_OFFLINE", "1")])
}

fn generate_with(cache: &Path, model: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args([
            "generate",
            "--model",
            model,
            "--prompt",
            "Bone is",
            "--max-new-tokens",
            "3",
        ])
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_OFFLINE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(unix)]
#[test]
fn a_hub_id_runs_from_the_hf_cache_and_a_miss_says_what_to_run() {
    let gguf = common::smollm2_gguf();
    let cache = tempfile::tempdir().unwrap();
    let repo = cache
        .path()
        .join("models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    // As huggingface_hub stores it: the blob under its hash, the snapshot a relative link.
    std::os::unix::fs::symlink(&gguf, repo.join("blobs/5f3a")).unwrap();
    std::os::unix::fs::symlink("../../blobs/5f3a", snapshot.join("model.Q4_1.gguf")).unwrap();

    let by_path = generate(cache.path(), gguf.to_str().unwrap());
    assert!(by_path.0, "{}", by_path.2);
    let by_id = generate(cache.path(), "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF");
    assert!(by_id.0, "{}", by_id.2);
    assert_eq!(by_id.1, by_path.1, "the same model, the same greedy text");
    let pinned = generate(
        cache.path(),
        &format!("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@{commit}"),
    );
    assert!(pinned.0, "{}", pinned.2);

    let (ok, _, err) = generate(cache.path(), "HuggingFaceTB/SmolLM2-360M-Instruct");
    assert!(!ok);
    assert!(
        err.contains("models--HuggingFaceTB--SmolLM2-360M-Instruct")
            && err.contains("hf download HuggingFaceTB/SmolLM2-360M-Instruct")
            && !err.contains("panicked"),
        "{err}"
    );
    // Not offline: the binary tries the hub (here an endpoint where nothing listens) and says
    // both where it looked and why the download failed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (ok, _, err) = generate_with(
        cache.path(),
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        &[("HF_ENDPOINT", &endpoint)],
    );
    assert!(!ok);
    assert!(
        err.contains("models--HuggingFaceTB--SmolLM2-360M-Instruct")
            && err.contains("downloading it failed")
            && err.contains(&format!(
                "{endpoint}/api/models/HuggingFaceTB/SmolLM2-360M-Instruct"
            ))
            && err.contains("HF_HUB_OFFLINE")
            && !err.contains("panicked"),
        "{err}"
    );
}
