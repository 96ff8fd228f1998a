//! Speed of Temper's merge on the paper's gradient SLERP (issue #3): wall and CPU time, peak
//! RSS (all and anonymous), throughput, and the I/O floor (read both inputs, write one output)
//! measured in the same process.
//!
//! It merges two synthetic bf16 Llama checkpoints, B = A + 0.1·std·noise (the recipe of
//! `benches/peers/mergekit/gen_models.py`, with Rust's own deterministic RNG), in
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
//!
//! Files: `models.rs` (the synthetic checkpoints), `bench.rs` (one pair's runs), `measure.rs`
//! (/proc sampling), `floor.rs` (the I/O floor).

mod bench;
mod floor;
mod measure;
mod models;

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::bench::bench_pair;
use crate::measure::{Sampler, loadavg, utc_now};
use crate::models::{PRESETS, ensure_model};

/// The paper's gradient SLERP (`docs/merging.md`) with `dtype: bfloat16`.
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
                eprintln!("see crates/merge/examples/merge_speed/main.rs for the options");
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
