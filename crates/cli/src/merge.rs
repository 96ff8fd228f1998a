//! `temper merge CONFIG.yml OUT_DIR`: mergekit YAML in, HF model directory out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use temper_formats::AtomicFile;
use temper_merge::{MergeConfig, MergeOptions, Progress, run_merge};

/// Arguments of `temper merge`.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// A mergekit YAML configuration (accepted as mergekit reads it).
    pub config: PathBuf,
    /// The output model directory (written atomically: it appears only when complete).
    pub out_dir: PathBuf,
    /// Worker threads (default: all cores; mergekit's --num-threads).
    #[arg(long, short = 'j', alias = "num-threads")]
    pub threads: Option<usize>,
    /// Write a per-tensor JSON report (cosine of the inputs, norms, t, SLERP fallback).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Largest output shard, bytes with an optional K/M/B suffix (mergekit's default: 5B).
    #[arg(long, default_value = "5B")]
    pub out_shard_size: String,
    /// Keep the first rows common to all inputs when vocabulary sizes differ.
    #[arg(long)]
    pub unsafe_truncate_embeddings: bool,
    /// Do not copy tokenizer files from the base model.
    #[arg(long)]
    pub no_copy_tokenizer: bool,
    /// Copy the tokenizer files (the default; mergekit's flag).
    #[arg(long, conflicts_with = "no_copy_tokenizer")]
    pub copy_tokenizer: bool,
    /// Do not write README.md and mergekit_config.yml.
    #[arg(long)]
    pub no_write_model_card: bool,
    /// Write README.md and mergekit_config.yml (the default; mergekit's flag).
    #[arg(long, conflicts_with = "no_write_model_card")]
    pub write_model_card: bool,
    /// Replace OUT_DIR if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Seed of the random methods (DARE, DELLA).
    #[arg(long, alias = "random-seed", default_value_t = 0)]
    pub seed: u64,
    /// fsync the shards before the output directory is renamed into place.
    #[arg(long)]
    pub sync: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub mergekit: crate::mergekit_flags::MergekitFlags,
}

/// mergekit's size syntax: `5B` = 5e9 bytes, `500M`, `100K`, or a plain number.
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1e3),
        Some('M') => (&s[..s.len() - 1], 1e6),
        Some('B') | Some('G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad size `{s}` (expected e.g. 5B, 500M, 100K)"))?;
    if v.is_nan() || v <= 0.0 {
        bail!("size `{s}` must be positive");
    }
    Ok((v * mult) as u64)
}

struct Bar {
    bar: crate::progress::Progress,
    tensors: AtomicU64,
    total_tensors: AtomicU64,
}

impl Progress for Bar {
    fn start(&self, tensors: usize, bytes: u64) {
        self.total_tensors.store(tensors as u64, Ordering::Relaxed);
        self.bar.bar().set_length(bytes);
        self.bar.bar().set_message(format!("0/{tensors} tensors"));
    }

    fn tensor_done(&self, _name: &str, bytes: u64) {
        let done = self.tensors.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.total_tensors.load(Ordering::Relaxed);
        self.bar.bar().inc(bytes);
        self.bar
            .bar()
            .set_message(format!("{done}/{total} tensors"));
        self.bar.report(done, total);
    }
}

/// The `--report` file, opened (as its temporary sibling) before the merge starts: a missing
/// folder, a directory in its place or no permission fail here, with nothing written.
fn open_report(path: &Path, out_dir: &Path) -> Result<AtomicFile> {
    if path.is_dir() {
        bail!("--report {}: is a directory", path.display());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Inside OUT_DIR it would be written into the directory the merge replaces.
    let inside = |dir: &Path| {
        std::fs::canonicalize(dir)
            .is_ok_and(|d| std::fs::canonicalize(parent).is_ok_and(|p| p.starts_with(&d)))
    };
    if inside(out_dir) {
        bail!(
            "--report {}: inside the output directory {}, which the merge replaces",
            path.display(),
            out_dir.display()
        );
    }
    if !parent.is_dir() {
        bail!(
            "--report {}: the folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    AtomicFile::create(path).with_context(|| format!("--report {}", path.display()))
}

/// Run `temper merge`.
pub fn run(args: MergeArgs) -> Result<()> {
    if args.mergekit.no_safe_serialization {
        bail!("--no-safe-serialization asks for pickled output; Temper writes safetensors only");
    }
    for note in args.mergekit.notes() {
        eprintln!("{note}");
    }
    let text = temper_formats::read_regular_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config = MergeConfig::from_yaml(&text, &args.config.display().to_string())?;
    let options = MergeOptions {
        config_dir: args.config.parent().map(PathBuf::from),
        out_shard_size: parse_size(&args.out_shard_size)?,
        unsafe_truncate_embeddings: args.unsafe_truncate_embeddings,
        copy_tokenizer: !args.no_copy_tokenizer,
        write_model_card: !args.no_write_model_card,
        overwrite: args.overwrite,
        seed: args.seed,
        sync: args.sync,
        threads: args.threads,
    };
    let bar = crate::progress::Progress::new(
        &format!("merge {}", args.config.display()),
        "tensors",
        "{bar:30} {binary_bytes}/{binary_total_bytes} written, {binary_bytes_per_sec}, {msg} [{elapsed}]",
        args.quiet,
    );
    let progress = Bar {
        bar,
        tensors: AtomicU64::new(0),
        total_tensors: AtomicU64::new(0),
    };
    // Every output is checked before the model is written: a report that cannot be written
    // fails now, not after the merged model was committed.
    temper_formats::check_output_dir(&args.out_dir, args.overwrite)?;
    let report = args
        .report
        .as_deref()
        .map(|path| open_report(path, &args.out_dir))
        .transpose()?;
    let start = Instant::now();
    let summary = run_merge(&config, Some(&text), &args.out_dir, &options, &progress)?;
    progress.bar.finish();
    let secs = start.elapsed().as_secs_f64();
    if let Some(mut file) = report {
        let json = serde_json::to_vec_pretty(&summary.reports)?;
        file.write_all(&json)
            .with_context(|| format!("writing {}", file.path().display()))?;
        file.commit()?;
    }
    let fallbacks = summary
        .reports
        .iter()
        .filter(|r| r.method.linear_fallback == Some(true))
        .count();
    eprintln!(
        "merged {} tensors ({} method) into {} in {secs:.2} s: {:.1} MB read, {:.1} MB written, {:.2} GB/s{}",
        summary.tensors,
        config.merge_method,
        summary.out_dir.display(),
        summary.bytes_read as f64 / 1e6,
        summary.bytes_written as f64 / 1e6,
        (summary.bytes_read + summary.bytes_written) as f64 / 1e9 / secs.max(1e-9),
        if config.merge_method == "slerp" {
            format!(", {fallbacks} tensors nearly colinear (linear fallback)")
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_use_mergekit_suffixes() {
        assert_eq!(parse_size("5B").ok(), Some(5_000_000_000));
        assert_eq!(parse_size("500M").ok(), Some(500_000_000));
        assert_eq!(parse_size("1234").ok(), Some(1234));
        assert!(parse_size("lots").is_err());
    }
}
