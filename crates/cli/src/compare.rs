//! `temper compare RUN_A RUN_B`: two evaluation outputs of the same benchmark (`temper eval
//! --out DIR`'s records.jsonl, or the file itself) side by side — overall and per category,
//! McNemar's exact test, a paired bootstrap and Holm's correction across categories — as a
//! table, and with `--out` as compare.json and compare.svg.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use temper_bench_eval::compare::{Comparison, ComparisonRow, compare_runs};
use temper_bench_eval::results::{Metric, read_records};

/// Arguments of `temper compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The first run: a `temper eval --out` folder or its records.jsonl.
    pub run_a: PathBuf,
    /// The second run, of the same benchmark.
    pub run_b: PathBuf,
    /// Which correctness to compare.
    #[arg(long, value_enum, default_value = "acc")]
    pub metric: MetricArg,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    /// Bootstrap seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write compare.json and compare.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `--metric`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum MetricArg {
    Acc,
    AccNorm,
    AccBytes,
}

fn records_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("records.jsonl")
    } else {
        p.to_path_buf()
    }
}

fn line(r: &ComparisonRow) -> String {
    format!(
        "{:<20} {:>5} {:>7.4} {:>7.4} {:>+8.4} [{:>+7.4}, {:>+7.4}] {:>4}/{:<4} {:>9.3e} {:>9.3e}",
        r.name,
        r.n,
        r.acc_a,
        r.acc_b,
        r.bootstrap.diff,
        r.bootstrap.ci_low,
        r.bootstrap.ci_high,
        r.mcnemar.a_only,
        r.mcnemar.b_only,
        r.mcnemar.p_value,
        r.p_holm
    )
}

/// The differences with their 95 % bootstrap intervals, one row per category and overall.
fn svg(c: &Comparison, a: &str, b: &str) -> String {
    let rows: Vec<&ComparisonRow> = c.categories.iter().chain([&c.overall]).collect();
    let (w, row_h, left, top) = (640.0, 28.0, 170.0, 40.0);
    let h = top + row_h * rows.len() as f64 + 40.0;
    let span = rows
        .iter()
        .flat_map(|r| [r.bootstrap.ci_low.abs(), r.bootstrap.ci_high.abs()])
        .fold(0.05f64, f64::max);
    let x = |d: f64| left + (d + span) / (2.0 * span) * (w - left - 30.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="18">accuracy difference {} − {} (95 % paired bootstrap)</text>"#,
        xml(a),
        xml(b)
    );
    let _ = write!(
        s,
        r##"<line x1="{0}" y1="{top}" x2="{0}" y2="{1}" stroke="#888" stroke-dasharray="3,3"/>"##,
        x(0.0),
        h - 30.0
    );
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * (i as f64 + 0.5);
        let colour = if r.p_holm < 0.05 {
            "#c0392b"
        } else {
            "#2c3e50"
        };
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{} (n = {})</text>"#,
            left - 8.0,
            y + 4.0,
            xml(&r.name),
            r.n
        );
        let _ = write!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2"/>"#,
            x(r.bootstrap.ci_low),
            x(r.bootstrap.ci_high)
        );
        let _ = write!(
            s,
            r#"<circle cx="{}" cy="{y}" r="4" fill="{colour}"/><text x="{}" y="{}" fill="{colour}">{:+.3}, p(Holm) {:.3}</text>"#,
            x(r.bootstrap.diff),
            x(r.bootstrap.ci_high) + 6.0,
            y + 4.0,
            r.bootstrap.diff,
            r.p_holm
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{:+.2}</text><text x="{}" y="{}" text-anchor="middle">0</text><text x="{}" y="{}" text-anchor="middle">{:+.2}</text></svg>"#,
        x(-span),
        h - 12.0,
        -span,
        x(0.0),
        h - 12.0,
        x(span),
        h - 12.0,
        span
    );
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Run `temper compare`.
pub fn run(args: CompareArgs) -> Result<()> {
    let (pa, pb) = (records_path(&args.run_a), records_path(&args.run_b));
    let a = read_records(&pa)?;
    let b = read_records(&pb)?;
    let metric = match args.metric {
        MetricArg::Acc => Metric::Acc,
        MetricArg::AccNorm => Metric::AccNorm,
        MetricArg::AccBytes => Metric::AccBytes,
    };
    let c = compare_runs(&a, &b, metric, args.resamples, args.seed)
        .with_context(|| format!("comparing {} with {}", pa.display(), pb.display()))?;
    println!("A = {}\nB = {}", pa.display(), pb.display());
    println!(
        "{:<20} {:>5} {:>7} {:>7} {:>8} {:>18} {:>9} {:>9} {:>9}",
        "category", "n", "acc A", "acc B", "A − B", "95 % CI", "A/B only", "McNemar p", "Holm p"
    );
    for r in &c.categories {
        println!("{}", line(r));
    }
    println!("{}", line(&c.overall));
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let json = serde_json::to_string_pretty(&c)?;
        temper_formats::write_atomic(&out.join("compare.json"), json.as_bytes())?;
        let picture = svg(
            &c,
            &args.run_a.display().to_string(),
            &args.run_b.display().to_string(),
        );
        temper_formats::write_atomic(&out.join("compare.svg"), picture.as_bytes())?;
        eprintln!("wrote {}/compare.json and compare.svg", out.display());
    }
    Ok(())
}
