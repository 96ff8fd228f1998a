//! Speed of Temper's merge on the paper's gradient SLERP (issue #3): wall and CPU time, peak
//! RSS (all and anonymous), throughput, and the I/O floor (read both inputs, write one output)
//! measured in the same process.
//!
//! It merges two synthetic bf16 Llama checkpoints, B = A + 0.1·std·noise (the recipe of
//! `../shared/anchors/mergekit/gen_models.py`, with Rust's own deterministic RNG), in
//! SmolLM2-135M dimensions (tied embeddings) and a TinyLlama-1.1B-like configuration
//! (untied). Models live in `<models>/<preset>-a` and `<models>/<preset>-b` — the layout
//! `bench.sh` uses — and are generated only when absent, so pointing `--models` at the
//! directory `gen_models.py` wrote makes Temper and mergekit merge the very same files.
//!
//! ```text
//! cargo run --release -p temper-merge --example merge_speed -- [OPTIONS]
//!   --models DIR       model pairs (default $TEMPER_MERGE_BENCH_DIR, else <tmp>/temper-merge-speed)
//!   --out DIR          where outputs and the floor's scratch file go (default <models>/temper-out)
//!   --preset NAME      smollm2-135m | tinyllama-1.1b (repeatable; default both)
//!   --pair A B         merge these two model directories instead of presets
//!   --runs N           merges per pair (default 3), each followed by the floor measurements
//!   --threads N        rayon threads (default: rayon's, i.e. RAYON_NUM_THREADS or all cores)
//!   --out-shard-size B output shard size in bytes (default 5e9, mergekit's)
//!   --json FILE        also write the JSON report to FILE
//!   --no-floor         skip the I/O floor
//!   --generate-only    generate the models and exit
//! ```
//!
//! Prints one JSON document (stdout) and progress lines (stderr). Peak RSS is sampled every
//! 2 ms from `/proc/self/status` (VmRSS, RssAnon) and also read as VmHWM after resetting it
//! through `/proc/self/clear_refs`; CPU time is user+sys of the whole process from
//! `/proc/self/stat` (all threads, USER_HZ = 100). Linux only for the measurements.
//!
//! The I/O floor is measured twice after each merge: one thread reading both input files
//! sequentially from the page cache and then writing one file of the output's size (`floor`),
//! and the merge's thread count reading and writing the same bytes concurrently in positioned
//! 4 MiB pieces, with no computation (`parallel floor`). The merge/floor ratios use medians.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{Value, json};
use temper_merge::{MergeConfig, MergeOptions, Progress, run_merge};

/// The paper's gradient SLERP (`../shared/docs/merge.md` §1.5) with `dtype: bfloat16`.
const SLERP_PARAMS: &str = "merge_method: slerp
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
";

#[derive(Debug, Clone, Copy)]
struct Preset {
    name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    inter: usize,
    vocab: usize,
    tied: bool,
    max_pos: usize,
    rope_theta: f64,
    bos: u32,
    eos: u32,
}

const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m",
        hidden: 576,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        inter: 1536,
        vocab: 49152,
        tied: true,
        max_pos: 8192,
        rope_theta: 100_000.0,
        bos: 0,
        eos: 0,
    },
    Preset {
        name: "tinyllama-1.1b",
        hidden: 2048,
        layers: 22,
        heads: 32,
        kv_heads: 4,
        inter: 5632,
        vocab: 32000,
        tied: false,
        max_pos: 2048,
        rope_theta: 10_000.0,
        bos: 1,
        eos: 2,
    },
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Embed,
    Norm,
    Linear,
}

/// `(name, shape, kind)` in `LlamaForCausalLM` naming, like `gen_models.py`.
fn tensor_specs(p: &Preset) -> Vec<(String, Vec<usize>, Kind)> {
    let (h, hd) = (p.hidden, p.hidden / p.heads);
    let mut specs = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![p.vocab, h],
        Kind::Embed,
    )];
    for i in 0..p.layers {
        let l = |s: &str| format!("model.layers.{i}.{s}");
        specs.extend([
            (l("input_layernorm.weight"), vec![h], Kind::Norm),
            (
                l("self_attn.q_proj.weight"),
                vec![p.heads * hd, h],
                Kind::Linear,
            ),
            (
                l("self_attn.k_proj.weight"),
                vec![p.kv_heads * hd, h],
                Kind::Linear,
            ),
            (
                l("self_attn.v_proj.weight"),
                vec![p.kv_heads * hd, h],
                Kind::Linear,
            ),
            (
                l("self_attn.o_proj.weight"),
                vec![h, p.heads * hd],
                Kind::Linear,
            ),
            (l("post_attention_layernorm.weight"), vec![h], Kind::Norm),
            (l("mlp.gate_proj.weight"), vec![p.inter, h], Kind::Linear),
            (l("mlp.up_proj.weight"), vec![p.inter, h], Kind::Linear),
            (l("mlp.down_proj.weight"), vec![h, p.inter], Kind::Linear),
        ]);
    }
    specs.push(("model.norm.weight".to_string(), vec![h], Kind::Norm));
    if !p.tied {
        specs.push(("lm_head.weight".to_string(), vec![p.vocab, h], Kind::Embed));
    }
    specs
}

/// Elements per independently seeded block (so generation is parallel and still
/// deterministic whatever the thread count).
const GEN_BLOCK: usize = 1 << 18;

fn fnv1a(s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Standard normal samples (Box–Muller) from a generator seeded by `(seed, salt, name, block)`.
fn normals(seed: u64, salt: &str, name: &str, block: usize, out: &mut [f32]) {
    let mut rng = ChaCha8Rng::seed_from_u64(fnv1a(&format!("{seed}|{salt}|{name}|{block}")));
    for pair in out.chunks_mut(2) {
        let u1: f32 = 1.0 - rng.random::<f32>(); // (0, 1]
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
        pair[0] = r * c;
        if pair.len() > 1 {
            pair[1] = r * s;
        }
    }
}

/// One tensor of model A (`derive = None`) or of B = A + delta·std·noise, as bf16 bytes.
fn make_tensor(name: &str, numel: usize, kind: Kind, derive: Option<f32>) -> Vec<u8> {
    let (mean, std) = match kind {
        Kind::Norm => (1.0f32, 0.05f32),
        Kind::Embed | Kind::Linear => (0.0, 0.02),
    };
    let mut bytes = vec![0u8; numel * 2];
    bytes
        .par_chunks_mut(GEN_BLOCK * 2)
        .enumerate()
        .for_each_init(
            || (vec![0f32; GEN_BLOCK], vec![0f32; GEN_BLOCK]),
            |(w, noise), (blk, out)| {
                let n = out.len() / 2;
                normals(1, "", name, blk, &mut w[..n]);
                if derive.is_some() {
                    normals(2, "delta", name, blk, &mut noise[..n]);
                }
                for j in 0..n {
                    let mut v = mean + std * w[j];
                    if let Some(d) = derive {
                        v += d * std * noise[j];
                    }
                    out[2 * j..2 * j + 2].copy_from_slice(&bf16::from_f32(v).to_le_bytes());
                }
            },
        );
    bytes
}

fn hf_config(p: &Preset) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": p.hidden,
        "intermediate_size": p.inter,
        "num_attention_heads": p.heads,
        "num_hidden_layers": p.layers,
        "num_key_value_heads": p.kv_heads,
        "head_dim": p.hidden / p.heads,
        "vocab_size": p.vocab,
        "max_position_embeddings": p.max_pos,
        "rms_norm_eps": 1e-5,
        "rope_theta": p.rope_theta,
        "rope_scaling": null,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
        "tie_word_embeddings": p.tied,
        "bos_token_id": p.bos,
        "eos_token_id": p.eos,
        "torch_dtype": "bfloat16",
    })
}

/// Write `<dir>` (config.json + model.safetensors) unless it already holds a model.
fn ensure_model(dir: &Path, p: &Preset, derive: Option<f32>) {
    if dir.join("model.safetensors").is_file() && dir.join("config.json").is_file() {
        eprintln!("reusing {}", dir.display());
        return;
    }
    let t0 = Instant::now();
    // Generated beside `dir` and renamed into place: an interrupted run leaves no half model.
    let staging = temper_formats::StagingDir::create(dir, true)
        .expect("create the temporary model directory");
    let tmp = staging.path().to_path_buf();

    let mut specs = tensor_specs(p);
    specs.sort_by(|a, b| a.0.cmp(&b.0)); // data in name order, like the safetensors serialiser
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut pos = 0usize;
    for (name, shape, _) in &specs {
        let len = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            json!({ "dtype": "BF16", "shape": shape, "data_offsets": [pos, pos + len] }),
        );
        pos += len;
    }
    let mut head = serde_json::to_vec(&Value::Object(header)).expect("serialise the header");
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let path = tmp.join("model.safetensors");
    let mut f = std::io::BufWriter::with_capacity(
        1 << 22,
        File::create(&path).expect("create model.safetensors"),
    );
    f.write_all(&(head.len() as u64).to_le_bytes())
        .expect("write the header length");
    f.write_all(&head).expect("write the header");
    let mut params = 0usize;
    for (name, shape, kind) in &specs {
        let numel: usize = shape.iter().product();
        params += numel;
        f.write_all(&make_tensor(name, numel, *kind, derive))
            .expect("write tensor data");
    }
    f.flush().expect("flush model.safetensors");
    drop(f);
    let cfg = serde_json::to_string_pretty(&hf_config(p)).expect("serialise config.json");
    std::fs::write(tmp.join("config.json"), cfg).expect("write config.json");
    staging
        .commit()
        .expect("rename the model directory into place");
    eprintln!(
        "generated {} ({params} params, bf16) in {:.1} s",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// /proc measurements

fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    user_s: f64,
    sys_s: f64,
    minflt: u64,
    majflt: u64,
    threads: u64,
}

/// `/proc/self/stat`: times of all threads of the process, live and exited (USER_HZ = 100).
fn proc_stat() -> Stat {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return Stat::default();
    };
    let Some((_, rest)) = s.rsplit_once(") ") else {
        return Stat::default();
    };
    // rest starts at field 3 (state); field k is rest[k - 3].
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |k: usize| {
        f.get(k - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Stat {
        minflt: num(10),
        majflt: num(12),
        user_s: num(14) as f64 / 100.0,
        sys_s: num(15) as f64 / 100.0,
        threads: num(20),
    }
}

fn proc_io(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/io").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
}

fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// Samples VmRSS and RssAnon (kB) every 2 ms; `reset` starts a new window.
#[derive(Debug)]
struct Sampler {
    stop: Arc<AtomicBool>,
    rss: Arc<AtomicU64>,
    anon: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rss = Arc::new(AtomicU64::new(0));
        let anon = Arc::new(AtomicU64::new(0));
        let (s, r, a) = (stop.clone(), rss.clone(), anon.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string("/proc/self/status") {
                    for line in text.lines() {
                        let kb = |l: &str| {
                            l.split_whitespace()
                                .nth(1)
                                .and_then(|v| v.parse::<u64>().ok())
                        };
                        let target = if line.starts_with("VmRSS:") {
                            &r
                        } else if line.starts_with("RssAnon:") {
                            &a
                        } else {
                            continue;
                        };
                        if let Some(v) = kb(line) {
                            target.fetch_max(v, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            stop,
            rss,
            anon,
            handle: Some(handle),
        }
    }

    fn reset(&self) {
        self.rss.store(0, Ordering::Relaxed);
        self.anon.store(0, Ordering::Relaxed);
        // Reset VmHWM as well (Linux ≥ 4.0); harmless if refused.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    /// (peak VmRSS, peak RssAnon) in kB since the last reset.
    fn peaks(&self) -> (u64, u64) {
        // One more sample so a very short window is not empty.
        let rss = status_kb("VmRSS").unwrap_or(0);
        let anon = status_kb("RssAnon").unwrap_or(0);
        (
            self.rss.load(Ordering::Relaxed).max(rss),
            self.anon.load(Ordering::Relaxed).max(anon),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Records when execution starts and when the last tensor is done (phase split of a run).
#[derive(Debug, Default)]
struct PhaseClock {
    start: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

impl Progress for PhaseClock {
    fn start(&self, _tensors: usize, _bytes: u64) {
        if let Ok(mut s) = self.start.lock() {
            *s = Some(Instant::now());
        }
    }

    fn tensor_done(&self, _name: &str, _bytes: u64) {
        if let Ok(mut s) = self.last.lock() {
            *s = Some(Instant::now());
        }
    }
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mib(kb: u64) -> f64 {
    round3(kb as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// I/O floor

/// Read `files` fully, sequentially, into `buf` (page cache → user memory). Returns bytes.
fn read_all(files: &[PathBuf], buf: &mut [u8]) -> u64 {
    let mut total = 0u64;
    for p in files {
        let mut f = File::open(p).expect("open an input for the floor");
        loop {
            let n = f.read(buf).expect("read an input for the floor");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    total
}

/// Write `bytes` bytes from `buf` to a new file `path` (no sync, like the merge).
fn write_file(path: &Path, bytes: u64, buf: &[u8]) {
    let mut f = File::create(path).expect("create the floor's scratch file");
    let mut left = bytes;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.write_all(&buf[..n])
            .expect("write the floor's scratch file");
        left -= n as u64;
    }
}

/// The parallel floor: `threads` workers read both inputs and write one output file of
/// `out_bytes` (created at its final length, positioned writes: what the merge's writer does)
/// at the same time, in 4 MiB pieces interleaved by relative position (read A, read B, write),
/// with no computation. Returns seconds.
fn parallel_floor(files: &[PathBuf], out: &Path, out_bytes: u64, threads: usize) -> f64 {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicUsize;
    const PIECE: u64 = 4 << 20;
    enum Item {
        Read(usize, u64, u64),
        Write(u64, u64),
    }
    let inputs: Vec<File> = files
        .iter()
        .map(|p| File::open(p).expect("open an input for the floor"))
        .collect();
    // (relative position, item): pieces of every file, merged by how far into its file they are.
    let mut items: Vec<(f64, Item)> = Vec::new();
    let mut pieces = |len: u64, make: &dyn Fn(u64, u64) -> Item| {
        let mut off = 0;
        while off < len {
            let n = PIECE.min(len - off);
            items.push((off as f64 / len as f64, make(off, n)));
            off += n;
        }
    };
    for (i, p) in files.iter().enumerate() {
        pieces(file_size(p), &|o, n| Item::Read(i, o, n));
    }
    pieces(out_bytes, &|o, n| Item::Write(o, n));
    items.sort_by(|a, b| a.0.total_cmp(&b.0));
    let t = Instant::now();
    let file = File::create(out).expect("create the floor's scratch file");
    file.set_len(out_bytes)
        .expect("size the floor's scratch file");
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut buf = vec![1u8; PIECE as usize];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((_, item)) = items.get(k) else { break };
                    match *item {
                        Item::Read(i, o, n) => inputs[i]
                            .read_exact_at(&mut buf[..n as usize], o)
                            .expect("read an input for the floor"),
                        Item::Write(o, n) => file
                            .write_all_at(&buf[..n as usize], o)
                            .expect("write the floor's scratch file"),
                    }
                }
            });
        }
    });
    drop(file);
    t.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------

struct Args {
    models: PathBuf,
    out: Option<PathBuf>,
    presets: Vec<String>,
    pair: Option<(PathBuf, PathBuf)>,
    runs: usize,
    threads: Option<usize>,
    shard_size: u64,
    json: Option<PathBuf>,
    floor: bool,
    generate_only: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        models: std::env::var_os("TEMPER_MERGE_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("temper-merge-speed")),
        out: None,
        presets: Vec::new(),
        pair: None,
        runs: 3,
        threads: None,
        shard_size: 5_000_000_000,
        json: None,
        floor: true,
        generate_only: false,
    };
    let mut it = std::env::args().skip(1);
    let value = |it: &mut dyn Iterator<Item = String>, flag: &str| {
        it.next()
            .unwrap_or_else(|| panic!("{flag} needs a value (see the file's doc comment)"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--models" => args.models = value(&mut it, &a).into(),
            "--out" => args.out = Some(value(&mut it, &a).into()),
            "--preset" => args.presets.push(value(&mut it, &a)),
            "--pair" => {
                let x = value(&mut it, &a);
                let y = value(&mut it, &a);
                args.pair = Some((x.into(), y.into()));
            }
            "--runs" => args.runs = value(&mut it, &a).parse().expect("--runs N"),
            "--threads" => args.threads = Some(value(&mut it, &a).parse().expect("--threads N")),
            "--out-shard-size" => {
                args.shard_size = value(&mut it, &a)
                    .parse::<f64>()
                    .expect("--out-shard-size BYTES") as u64;
            }
            "--json" => args.json = Some(value(&mut it, &a).into()),
            "--no-floor" => args.floor = false,
            "--generate-only" => args.generate_only = true,
            "-h" | "--help" => {
                eprintln!("see crates/merge/examples/merge_speed.rs for the options");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other} (see the file's doc comment)"),
        }
    }
    if args.presets.is_empty() {
        args.presets = PRESETS.iter().map(|p| p.name.to_string()).collect();
    }
    args.runs = args.runs.max(1);
    args
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn safetensors_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn bench_pair(name: &str, a: &Path, b: &Path, args: &Args, sampler: &Sampler) -> Value {
    let out_root = args
        .out
        .clone()
        .unwrap_or_else(|| args.models.join("temper-out"));
    std::fs::create_dir_all(&out_root).expect("create the output root");
    let out_dir = out_root.join(format!("out-{name}"));
    let a = std::fs::canonicalize(a).expect("model A exists");
    let b = std::fs::canonicalize(b).expect("model B exists");
    let yaml = format!(
        "models:\n  - model: {a}\n  - model: {b}\nbase_model: {a}\n{SLERP_PARAMS}",
        a = a.display(),
        b = b.display()
    );
    let config = MergeConfig::from_yaml(&yaml, "merge_speed").expect("the SLERP config parses");
    let options = MergeOptions {
        out_shard_size: args.shard_size,
        copy_tokenizer: false,
        threads: args.threads,
        ..MergeOptions::default()
    };
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    let inputs: Vec<PathBuf> = safetensors_files(&a)
        .into_iter()
        .chain(safetensors_files(&b))
        .collect();
    let in_bytes: u64 = inputs.iter().map(|p| file_size(p)).sum();

    // Warm the page cache (as bench.sh does) and size the floor's buffer.
    let mut buf = vec![0u8; 8 << 20];
    read_all(&inputs, &mut buf);

    let mut runs = Vec::new();
    let mut floors = Vec::new();
    let (mut walls, mut cpus, mut floor_totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut par_totals = Vec::new();
    let (mut peak_rss, mut peak_anon, mut out_bytes) = (0u64, 0u64, 0u64);
    for run in 0..args.runs {
        let _ = std::fs::remove_dir_all(&out_dir);
        let load = loadavg();
        let started = utc_now();
        let anon_before = status_kb("RssAnon").unwrap_or(0);
        let wchar0 = proc_io("wchar");
        let s0 = proc_stat();
        sampler.reset();
        let clock = PhaseClock::default();
        let t0 = Instant::now();
        let summary = run_merge(&config, Some(&yaml), &out_dir, &options, &clock)
            .expect("the merge succeeds");
        let wall = t0.elapsed().as_secs_f64();
        let s1 = proc_stat();
        let wchar1 = proc_io("wchar");
        let (rss, anon) = sampler.peaks();
        let hwm = status_kb("VmHWM").unwrap_or(0);
        let exec_start = clock
            .start
            .lock()
            .ok()
            .and_then(|s| *s)
            .map(|s| s.duration_since(t0).as_secs_f64());
        let exec_end = clock
            .last
            .lock()
            .ok()
            .and_then(|s| *s)
            .map(|s| s.duration_since(t0).as_secs_f64());
        let outs = safetensors_files(&out_dir);
        let ob: u64 = outs.iter().map(|p| file_size(p)).sum();
        out_bytes = ob;
        let cpu = (s1.user_s - s0.user_s) + (s1.sys_s - s0.sys_s);
        walls.push(wall);
        cpus.push(cpu);
        peak_rss = peak_rss.max(rss);
        peak_anon = peak_anon.max(anon);
        let gbs = (in_bytes + ob) as f64 / wall / 1e9;
        eprintln!(
            "{name} run {}: wall {wall:.2} s, cpu {cpu:.2} s, peak rss {:.0} MiB, anon {:.0} MiB, \
             {gbs:.2} GB/s, load1 {:.2}",
            run + 1,
            rss as f64 / 1024.0,
            anon as f64 / 1024.0,
            load[0]
        );
        runs.push(json!({
            "started_utc": started,
            "load1": load[0],
            "load5": load[1],
            "wall_s": round3(wall),
            "cpu_s": round3(cpu),
            "user_s": round3(s1.user_s - s0.user_s),
            "sys_s": round3(s1.sys_s - s0.sys_s),
            "plan_s": exec_start.map(round3),
            "execute_s": exec_start.zip(exec_end).map(|(s, e)| round3(e - s)),
            "finish_s": exec_end.map(|e| round3(wall - e)),
            "peak_rss_mib": mib(rss),
            "vm_hwm_mib": mib(hwm),
            "peak_anon_mib": mib(anon),
            "anon_before_mib": mib(anon_before),
            "minor_faults": s1.minflt - s0.minflt,
            "major_faults": s1.majflt - s0.majflt,
            "threads_in_process": s1.threads,
            "write_syscall_bytes": wchar0.zip(wchar1).map(|(x, y)| y - x),
            "bytes_read": summary.bytes_read,
            "bytes_written": summary.bytes_written,
            "out_file_bytes": ob,
            "gb_s": round3(gbs),
        }));
        let _ = std::fs::remove_dir_all(&out_dir);

        if args.floor {
            let scratch = out_root.join(format!(".floor-{name}-{}", std::process::id()));
            let t = Instant::now();
            let read = read_all(&inputs, &mut buf);
            let read_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            write_file(&scratch, ob, &buf);
            let write_s = t.elapsed().as_secs_f64();
            let _ = std::fs::remove_file(&scratch);
            floor_totals.push(read_s + write_s);
            let par_s = parallel_floor(&inputs, &scratch, ob, threads);
            let _ = std::fs::remove_file(&scratch);
            par_totals.push(par_s);
            eprintln!(
                "{name} floor {}: read {read} B in {read_s:.2} s, write {ob} B in {write_s:.2} s; \
                 {threads}-thread read+write {par_s:.2} s",
                run + 1
            );
            floors.push(json!({
                "read_s": round3(read_s),
                "write_s": round3(write_s),
                "total_s": round3(read_s + write_s),
                "read_gb_s": round3(read as f64 / read_s / 1e9),
                "write_gb_s": round3(ob as f64 / write_s / 1e9),
                "parallel_s": round3(par_s),
            }));
        }
    }
    let med_wall = median(&walls);
    let med_floor = median(&floor_totals);
    let med_par = median(&par_totals);
    json!({
        "pair": name,
        "model_a": a.display().to_string(),
        "model_b": b.display().to_string(),
        "config": yaml,
        "rayon_threads": threads,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "in_bytes": in_bytes,
        "out_bytes": out_bytes,
        "median_wall_s": round3(med_wall),
        "median_cpu_s": round3(median(&cpus)),
        "peak_rss_mib": mib(peak_rss),
        "peak_anon_mib": mib(peak_anon),
        "gb_s": round3((in_bytes + out_bytes) as f64 / med_wall / 1e9),
        "runs": runs,
        "floor": if args.floor {
            json!({
                "what": "sequential read of both input files (page cache, 8 MiB buffer) + \
                         write of one file of the output's size to the output filesystem, \
                         one thread, no fsync",
                "parallel_what": "the same bytes read and written concurrently by the merge's \
                                  thread count, 4 MiB positioned reads/writes interleaved, \
                                  output file created at its final length",
                "runs": floors,
                "median_s": round3(med_floor),
                "ratio_merge_over_floor": round3(med_wall / med_floor),
                "parallel_median_s": round3(med_par),
                "ratio_merge_over_parallel_floor": round3(med_wall / med_par),
            })
        } else {
            Value::Null
        },
    })
}

fn main() {
    let args = parse_args();
    let sampler = Sampler::start();
    let mut pairs: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    if let Some((a, b)) = &args.pair {
        pairs.push(("pair".to_string(), a.clone(), b.clone()));
    } else {
        for name in &args.presets {
            let p = PRESETS
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("unknown preset {name} (smollm2-135m, tinyllama-1.1b)"));
            let a = args.models.join(format!("{name}-a"));
            let b = args.models.join(format!("{name}-b"));
            ensure_model(&a, p, None);
            ensure_model(&b, p, Some(0.1));
            pairs.push((name.clone(), a, b));
        }
    }
    if args.generate_only {
        return;
    }
    let results: Vec<Value> = pairs
        .iter()
        .map(|(name, a, b)| bench_pair(name, a, b, &args, &sampler))
        .collect();
    let report = json!({
        "tool": "temper-merge",
        "example": "merge_speed",
        "utc": utc_now(),
        "loadavg_end": loadavg(),
        "results": results,
    });
    let text = serde_json::to_string_pretty(&report).expect("serialise the report");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).expect("write the JSON report");
    }
    println!("{text}");
}
