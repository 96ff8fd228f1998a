//! `temper extract-lora --model FT --base BASE --rank R OUT`: a PEFT LoRA adapter that turns
//! BASE into (approximately) FT, like `mergekit-extract-lora`. The adapter can then be merged
//! back (`model: BASE+OUT` in a merge config) or loaded with peft.

use crate::output::outln;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use temper_merge::{
    DEFAULT_MODULES, DType, ExtractOptions, ExtractProgress, ModuleReport, SvdOptions, extract_lora,
};

/// Arguments of `temper extract-lora`.
#[derive(clap::Args, Debug)]
pub struct ExtractLoraArgs {
    /// The fine-tuned HF model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The base HF model directory the adapter will apply to.
    #[arg(long, alias = "base-model")]
    pub base: PathBuf,
    /// LoRA rank (capped per module by the weight's dimensions).
    #[arg(long, alias = "max-rank")]
    pub rank: usize,
    /// The output adapter directory (written atomically: it appears only when complete).
    pub out: PathBuf,
    /// Also extract embed_tokens and lm_head (the largest matrices; off by default).
    #[arg(long, alias = "embed-lora")]
    pub save_embeddings: bool,
    /// Module short names to extract, comma-separated
    /// (default: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, value_delimiter = ',')]
    pub modules: Vec<String>,
    /// dtype of the written factors (float32, bfloat16, float16); default: the model's.
    #[arg(long)]
    pub dtype: Option<DType>,
    /// Power iterations of the randomized SVD (more: closer to the exact SVD, slower).
    #[arg(long, default_value_t = 4)]
    pub power_iterations: usize,
    /// Oversampling columns of the randomized SVD.
    #[arg(long, default_value_t = 10)]
    pub oversampling: usize,
    /// Seed of the randomized SVD's sketch (the output is reproducible for a given seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `base_model_name_or_path` written into adapter_config.json (default: --base as given),
    /// e.g. the hub id the adapter should load against.
    #[arg(long)]
    pub base_model_name: Option<String>,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Worker threads (default: all cores).
    #[arg(long, short = 'j')]
    pub threads: Option<usize>,
    /// Print the captured energy of every module, not only per module type.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Run `temper extract-lora`.
///
/// # Errors
/// Bad arguments, or anything [`extract_lora`] rejects (missing or mismatched weights, an
/// existing output, I/O).
pub fn run(args: ExtractLoraArgs) -> Result<()> {
    if args.rank == 0 {
        bail!("--rank must be at least 1");
    }
    let bar = (!args.quiet).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} modules  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    let progress: Option<ExtractProgress> = bar.clone().map(|bar| {
        Arc::new(move |m: &ModuleReport, done: usize, total: usize| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("{} {:.1}%", m.module, 100.0 * m.captured));
        }) as ExtractProgress
    });
    let options = ExtractOptions {
        modules: if args.modules.is_empty() {
            DEFAULT_MODULES.iter().map(|s| (*s).to_string()).collect()
        } else {
            args.modules.clone()
        },
        include_embeddings: args.save_embeddings,
        dtype: args.dtype,
        svd: SvdOptions {
            oversampling: args.oversampling,
            power_iterations: args.power_iterations,
            seed: args.seed,
        },
        base_model_name_or_path: args.base_model_name.clone(),
        overwrite: args.overwrite,
        threads: args.threads,
        progress,
    };
    let start = Instant::now();
    let result = extract_lora(&args.model, &args.base, args.rank, &args.out, &options);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = result.with_context(|| {
        format!(
            "extracting a LoRA of {} over {}",
            args.model.display(),
            args.base.display()
        )
    })?;

    outln!(
        "wrote {} in {:.1?}: {} modules, r = {}, {:.1} MB",
        summary.out_dir.display(),
        start.elapsed(),
        summary.modules.len(),
        summary.rank,
        summary.bytes_written as f64 / 1e6
    )?;
    outln!("target_modules: {}", summary.target_modules.join(", "))?;
    // Per module type: how much of the fine-tune's change the adapter keeps.
    let mut by_type: BTreeMap<&str, Vec<&ModuleReport>> = BTreeMap::new();
    for m in &summary.modules {
        by_type.entry(m.short_name.as_str()).or_default().push(m);
    }
    outln!("energy of Δ captured (Σσ² kept / ‖Δ‖²):")?;
    for (name, modules) in &by_type {
        let mean = modules.iter().map(|m| m.captured).sum::<f64>() / modules.len() as f64;
        let worst = modules
            .iter()
            .min_by(|a, b| a.captured.total_cmp(&b.captured));
        match worst {
            Some(w) => outln!(
                "  {name:<14} {:>4} modules  mean {:>6.2}%  min {:>6.2}% ({})",
                modules.len(),
                100.0 * mean,
                100.0 * w.captured,
                w.module
            )?,
            None => outln!("  {name:<14} no modules")?,
        }
    }
    if args.verbose {
        for m in &summary.modules {
            outln!(
                "  {:<48} {:?} rank {:>4}  ‖Δ‖ {:>10.4e}  {:>6.2}%",
                m.module,
                m.shape,
                m.rank,
                m.delta_norm,
                100.0 * m.captured
            )?;
        }
    }
    if !summary.unchanged_modules.is_empty() {
        outln!(
            "identical in both models, left out: {}",
            summary.unchanged_modules.join(", ")
        )?;
    }
    if !summary.not_extracted.is_empty() {
        eprintln!(
            "warning: {} tensor(s) differ between the models but are not in the adapter; \
             applying it will not reproduce them{}:",
            summary.not_extracted.len(),
            if args.save_embeddings {
                ""
            } else {
                " (--save-embeddings extracts embed_tokens and lm_head)"
            }
        );
        for (name, why) in summary.not_extracted.iter().take(10) {
            eprintln!("  {name}: {why}");
        }
        if summary.not_extracted.len() > 10 {
            eprintln!("  ... and {} more", summary.not_extracted.len() - 10);
        }
    }
    Ok(())
}
