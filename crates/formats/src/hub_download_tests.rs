//! Tests of the hub download (a `#[cfg(test)]` module of `hub_download.rs`) against a small
//! HTTP server on 127.0.0.1 that answers as the hub does: the revision API, `HEAD` with the
//! git ETag for small files and a redirect carrying `X-Linked-Etag` / `X-Linked-Size` for LFS
//! files, the storage host behind the redirect.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use super::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const CONFIG: &[u8] = br#"{"model_type": "llama"}"#;
const CONFIG_ETAG: &str = "9f0c1e2d3b4a59687766554433221100ffeeddcc";

/// What the fake hub serves and what it was asked.
#[derive(Default)]
struct Hub {
    siblings: Vec<String>,
    /// LFS file → (bytes sent, sha256 announced, size announced).
    lfs: BTreeMap<String, (Vec<u8>, String, usize)>,
    /// `METHOD path authorization?` of every request.
    log: Vec<String>,
    /// Answer the revision API with this status instead.
    api_status: Option<u16>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(hub: Arc<Mutex<Hub>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let origin = base.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if h.to_ascii_lowercase().starts_with("authorization:") {
                    auth = h.trim().to_string();
                }
            }
            let mut hub = hub.lock().unwrap();
            hub.log
                .push(format!("{method} {path} {auth}").trim().to_string());
            let head = method == "HEAD";
            let body = |b: &[u8]| if head { Vec::new() } else { b.to_vec() };
            if path == "/api/models/org/tiny/revision/main" {
                if let Some(code) = hub.api_status {
                    respond(&mut stream, &format!("{code} Nope"), &[], b"");
                    continue;
                }
                let siblings: Vec<_> = hub
                    .siblings
                    .iter()
                    .map(|s| serde_json::json!({ "rfilename": s }))
                    .collect();
                let json = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
                let len = json.len().to_string();
                respond(
                    &mut stream,
                    "200 OK",
                    &[("Content-Length".into(), len)],
                    json.as_bytes(),
                );
            } else if let Some(name) = path.strip_prefix(&format!("/org/tiny/resolve/{COMMIT}/")) {
                if name == "config.json" {
                    let headers = [
                        ("ETag".into(), format!("\"{CONFIG_ETAG}\"")),
                        ("Content-Length".into(), CONFIG.len().to_string()),
                    ];
                    respond(&mut stream, "200 OK", &headers, &body(CONFIG));
                } else if let Some((_, sha, size)) = hub.lfs.get(name) {
                    let headers = [
                        ("Location".into(), format!("{origin}/cdn/{name}")),
                        ("X-Linked-Etag".into(), format!("\"{sha}\"")),
                        ("X-Linked-Size".into(), size.to_string()),
                        ("Content-Length".into(), "0".into()),
                    ];
                    respond(&mut stream, "302 Found", &headers, b"");
                } else {
                    respond(
                        &mut stream,
                        "404 Not Found",
                        &[("Content-Length".into(), "0".into())],
                        b"",
                    );
                }
            } else if let Some(name) = path.strip_prefix("/cdn/") {
                let (bytes, _, size) = hub.lfs[name].clone();
                // The announced size, whatever is sent: a short body is a cut download.
                let headers = [("Content-Length".into(), size.to_string())];
                respond(&mut stream, "200 OK", &headers, &body(&bytes));
            } else {
                respond(
                    &mut stream,
                    "404 Not Found",
                    &[("Content-Length".into(), "0".into())],
                    b"",
                );
            }
        }
    });
    base
}

fn hub_with(weights: &[u8]) -> Arc<Mutex<Hub>> {
    let mut hub = Hub {
        siblings: [
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "README.md",
            "../escape.safetensors",
            "onnx/model.safetensors",
        ]
        .map(String::from)
        .to_vec(),
        ..Hub::default()
    };
    for name in ["model.safetensors", "pytorch_model.bin"] {
        hub.lfs.insert(
            name.into(),
            (weights.to_vec(), sha256_hex(weights), weights.len()),
        );
    }
    Arc::new(Mutex::new(hub))
}

fn client(endpoint: &str, token: Option<&str>) -> HubClient {
    HubClient {
        endpoint: endpoint.into(),
        token: token.map(String::from),
    }
}

fn id() -> HubId {
    HubId::parse("org/tiny").unwrap()
}

/// Every entry under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(unix)]
#[test]
fn a_download_is_laid_out_as_huggingface_hub_does_and_the_cache_then_serves_it() {
    let weights = b"safetensors bytes".repeat(5000);
    let hub = hub_with(&weights);
    let endpoint = serve(hub.clone());
    let cache = tempfile::tempdir().unwrap();
    let snapshot = client(&endpoint, Some("hf_secret"))
        .download(&id(), cache.path())
        .unwrap();
    let repo = cache.path().join("models--org--tiny");
    assert_eq!(snapshot, repo.join("snapshots").join(COMMIT));
    let sha = sha256_hex(&weights);
    assert_eq!(
        tree(&repo),
        [
            "blobs".to_string(),
            format!("blobs/{CONFIG_ETAG}"),
            format!("blobs/{sha}"),
            "refs".into(),
            "refs/main".into(),
            "snapshots".into(),
            format!("snapshots/{COMMIT}"),
            format!("snapshots/{COMMIT}/config.json"),
            format!("snapshots/{COMMIT}/model.safetensors"),
        ]
    );
    assert_eq!(
        std::fs::read_link(snapshot.join("model.safetensors")).unwrap(),
        Path::new("../../blobs").join(&sha)
    );
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(std::fs::read(snapshot.join("config.json")).unwrap(), CONFIG);
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    // The cache reader finds what was written.
    assert_eq!(
        crate::hub::resolve_in_cache(&id(), cache.path()).unwrap(),
        snapshot
    );
    // The token goes to the hub, never to the storage host; no pickle was asked for.
    let log = hub.lock().unwrap().log.clone();
    for entry in &log {
        assert_eq!(
            entry.contains("hf_secret"),
            !entry.contains("/cdn/"),
            "{entry}"
        );
        assert!(
            !entry.contains("pytorch_model.bin") && !entry.contains("escape"),
            "{entry}"
        );
    }
    // A second download finds every file in place: only the revision is asked again.
    let before = log.len();
    client(&endpoint, None)
        .download(&id(), cache.path())
        .unwrap();
    let log = hub.lock().unwrap().log.clone();
    assert_eq!(log.len(), before + 1, "{:?}", &log[before..]);
}

#[test]
fn a_cut_or_corrupt_download_leaves_nothing_behind() {
    let weights = b"0123456789".repeat(1000);
    for (sent, why) in [
        (weights[..weights.len() - 10].to_vec(), "cut short"),
        (b"x".repeat(weights.len()), "sha256"),
    ] {
        let hub = hub_with(&weights);
        hub.lock()
            .unwrap()
            .lfs
            .get_mut("model.safetensors")
            .unwrap()
            .0 = sent;
        let endpoint = serve(hub);
        let cache = tempfile::tempdir().unwrap();
        let err = client(&endpoint, None)
            .download(&id(), cache.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        assert!(
            err.contains(why) || (why == "cut short" && err.contains(&endpoint)),
            "{err}"
        );
        let repo = cache.path().join("models--org--tiny");
        let blobs: Vec<String> = tree(&repo.join("blobs"));
        assert_eq!(blobs, [CONFIG_ETAG], "only the complete config blob stays");
        assert!(
            !repo
                .join("snapshots")
                .join(COMMIT)
                .join("model.safetensors")
                .exists()
        );
        assert!(
            !repo.join("refs/main").exists(),
            "no ref to an incomplete snapshot"
        );
    }
}

#[test]
fn hub_errors_say_what_to_do() {
    let hub = hub_with(b"w");
    hub.lock().unwrap().api_status = Some(401);
    let endpoint = serve(hub.clone());
    let cache = tempfile::tempdir().unwrap();
    let err = client(&endpoint, None)
        .download(&id(), cache.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HF_TOKEN") && err.contains("/api/models/org/tiny"),
        "{err}"
    );
    hub.lock().unwrap().api_status = Some(404);
    let err = client(&endpoint, None)
        .download(&id(), cache.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found on the hub"), "{err}");
    // Nothing listening: a transport error that names the way to stay offline.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = client(&dead, None)
        .download(&id(), cache.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    // A repository without anything Temper loads.
    hub.lock().unwrap().api_status = None;
    hub.lock().unwrap().siblings = vec!["README.md".into(), "pytorch_model.bin".into()];
    let err = client(&endpoint, None)
        .download(&id(), cache.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no file Temper loads") && err.contains("pytorch_model.bin"),
        "{err}"
    );
}

#[test]
fn the_environment_chooses_endpoint_token_and_offline_mode() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_string())
        }
    };
    let c = HubClient::from_env_with(env(&[])).unwrap();
    assert_eq!((c.endpoint.as_str(), c.token), (DEFAULT_ENDPOINT, None));
    let c = HubClient::from_env_with(env(&[
        ("HF_ENDPOINT", "https://mirror.example/"),
        ("HF_TOKEN", "hf_x"),
    ]))
    .unwrap();
    assert_eq!(c.endpoint, "https://mirror.example");
    assert_eq!(c.token.as_deref(), Some("hf_x"));
    for on in ["1", "true", "YES", "on"] {
        let lookup = move |k: &str| (k == "HF_HUB_OFFLINE").then(|| on.to_string());
        assert!(HubClient::from_env_with(lookup).is_none(), "{on}");
    }
    let lookup = |k: &str| (k == "HF_HUB_OFFLINE").then(|| "0".to_string());
    assert!(HubClient::from_env_with(lookup).is_some());
}

#[test]
fn only_the_files_temper_loads_are_wanted() {
    let names = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
    assert_eq!(
        wanted_files(&names(&[
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "tokenizer.json",
            "original/consolidated.00.pth",
            "onnx/model.safetensors",
        ])),
        names(&[
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
        ])
    );
    assert_eq!(
        wanted_files(&names(&["README.md", "m.Q4_1.gguf"])),
        names(&["m.Q4_1.gguf"])
    );
    // Several quantizations: which one is for the user to say (by path).
    assert!(wanted_files(&names(&["a.Q4_0.gguf", "a.Q8_0.gguf"])).is_empty());
    assert!(snapshot_path(Path::new("/s"), "..", "api").is_err());
    assert!(snapshot_path(Path::new("/s"), "/etc/passwd", "api").is_err());
}
