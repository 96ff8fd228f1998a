//! `temper pipeline [--config FILE] [--preset default|smoke|paper] [--out DIR] [--device D]
//! [--dtype f32|bf16|f16]`.

use crate::output::{out, outln};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use temper_backend::FloatPrecision;
use temper_pipeline::{PipelineConfig, PipelineOptions, Preset, rerender_report, run_pipeline};

/// Arguments of `temper pipeline`.
#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    /// A pipeline TOML (paths relative to its directory). Default: the built-in preset.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A built-in pipeline: `default` (the full study, < 30 min on 2 CPU cores), `smoke` (the
    /// same stages on a tiny slice) or `paper` (the paper's regime: full fine-tuning in whole
    /// epochs, the CPT-epoch and SLERP-schedule sweeps, both protocols; ≈ 80 min estimated).
    /// Paths are relative to the current directory.
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Output directory. Default: `runs/<pipeline name>`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override the config's device (cpu, wgpu, wgpu:N, cuda:N).
    #[arg(long)]
    pub device: Option<String>,
    /// Override the dtype the variants are evaluated in (`benchmark.dtype`: f32, bf16, f16).
    #[arg(long)]
    pub dtype: Option<FloatPrecision>,
    /// Also write every trained and merged variant as OUT/gguf/VARIANT.DTYPE.gguf for
    /// llama.cpp (the config's `export_gguf`): f32, f16, bf16, q8_0 or q4_0.
    #[arg(long, value_name = "DTYPE")]
    pub export_gguf: Option<String>,
    /// Only render report.md, report.html and plots/ again from OUT/report.json (a finished
    /// run's); nothing is trained, merged or evaluated.
    #[arg(long, conflicts_with = "print_config")]
    pub rerender: bool,
    /// Print the resolved config as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

/// Run `temper pipeline`.
pub fn run(args: PipelineArgs) -> Result<()> {
    if args.rerender {
        // The output directory alone says which run: no config or data is read.
        let Some(out_dir) = &args.out else {
            bail!("--rerender needs --out DIR, the directory holding the run's report.json");
        };
        rerender_report(out_dir)?;
        outln!("report: {}", out_dir.join("report.html").display())?;
        return Ok(());
    }
    let mut config = match &args.config {
        Some(path) => PipelineConfig::from_file(path)?,
        None => {
            let preset: Preset = args.preset.parse()?;
            let cwd = std::env::current_dir()?;
            let config = PipelineConfig::preset(preset, &cwd)?;
            // The presets read the repository's data folder: say so once, with the fix,
            // instead of a missing-file error from deep inside the first evaluation.
            if !args.print_config && !config.benchmark.file.exists() {
                bail!(
                    "the `{}` preset reads data/bio-materials/ from the working directory, and \
                     {} has none: run `temper pipeline` from the Temper repository root, or give \
                     --config FILE naming your model, data and benchmark",
                    args.preset,
                    cwd.display()
                );
            }
            config
        }
    };
    if let Some(device) = args.device {
        config.device = device;
    }
    if let Some(export) = args.export_gguf {
        // Checked here: the config's own value was checked when it was parsed.
        export.parse::<temper_llm_arch::gguf::GgufDtype>()?;
        config.export_gguf = Some(export);
    }
    if let Some(dtype) = args.dtype {
        config.benchmark.dtype = dtype;
    }
    if args.print_config {
        out!(
            "{}",
            toml::to_string(&config).context("printing the config")?
        )?;
        return Ok(());
    }
    let out_dir = args
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
    let report = run_pipeline(
        &config,
        &PipelineOptions {
            out_dir: out_dir.clone(),
            progress: !args.quiet,
        },
    )?;
    for v in &report.variants {
        outln!(
            "{:40} {:.4} ± {:.4}",
            v.name,
            v.summary.overall.accuracy,
            v.summary.overall.stderr
        )?;
    }
    for row in &report.analyses {
        let a = &row.analysis;
        outln!(
            "{:40} expected {:.4}, gain over better parent {:+.4} (McNemar p {:.3}, bootstrap p {:.3}){}",
            row.merged,
            a.expected,
            a.gain_over_best,
            a.mcnemar.p_value,
            a.bootstrap.p_value,
            if a.synergy { "  SYNERGY" } else { "" }
        )?;
    }
    outln!(
        "report: {} ({:.0} s)",
        out_dir.join("report.html").display(),
        report.total_seconds
    )?;
    Ok(())
}
