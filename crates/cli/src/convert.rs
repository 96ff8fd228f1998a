//! `temper convert`: a GGUF file into an HF model directory (the default, `--to hf`), or a
//! model — HF directory, PEFT adapter directory merged onto its base, or GGUF file decoded to
//! f32 — into a GGUF file that llama.cpp loads (`--to gguf`, `temper_llm_arch::gguf::export_gguf`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use temper_backend::{DeviceSpec, FloatPrecision};
use temper_llm_arch::Pretrained;
use temper_llm_arch::gguf::{
    GgmlType, GgufDtype, GgufExportOptions, GgufFile, GgufTokenizerSource, export_gguf, model_name,
};

use crate::progress::Phases;
use crate::weights::{WeightDType, load_model};
use crate::{examples, is_gguf};

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ConvertTarget {
    /// An HF model directory (config.json, model.safetensors, tokenizer files).
    Hf,
    /// One .gguf file for llama.cpp / ollama.
    Gguf,
}

#[derive(Args, Debug)]
#[command(after_help = examples::CONVERT)]
pub(crate) struct ConvertArgs {
    /// The source: a .gguf file; with --to gguf also an HF model directory or a PEFT adapter
    /// directory (merged onto its base).
    pub model: PathBuf,
    /// The output: a directory (--to hf) or a .gguf file (--to gguf), written atomically — it
    /// appears only when complete.
    pub out: PathBuf,
    /// What to write: an HF directory, or a GGUF file.
    #[arg(long, value_enum, default_value = "hf")]
    pub to: ConvertTarget,
    /// The weights' dtype: f32, bf16 or f16 for --to hf; f32, f16, bf16, q8_0 or q4_0 for
    /// --to gguf (norms and biases stay f32; q4_0 writes the output matrix as q8_0).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// With an adapter directory as the source: its base model (instead of the adapter's
    /// `base_model_name_or_path`).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Replace OUT if it exists (a non-empty directory, or a file).
    #[arg(long)]
    pub overwrite: bool,
}

pub(crate) fn run(args: ConvertArgs) -> Result<()> {
    match args.to {
        ConvertTarget::Hf => to_hf(args),
        ConvertTarget::Gguf => to_gguf(args),
    }
}

fn to_hf(args: ConvertArgs) -> Result<()> {
    let ConvertArgs {
        model,
        out: out_dir,
        dtype,
        base,
        overwrite,
        ..
    } = args;
    let dtype: FloatPrecision = dtype.parse().map_err(|_| {
        anyhow::anyhow!("invalid --dtype `{dtype}` for --to hf (expected f32, bf16 or f16)")
    })?;
    if base.is_some() {
        bail!("--base is for an adapter directory converted with --to gguf");
    }
    if !is_gguf(&model) {
        bail!(
            "{}: expected a .gguf file (--to hf converts GGUF into an HF directory; use --to gguf \
             to export an HF or adapter directory as GGUF)",
            model.display()
        );
    }
    // Before the (slow) load: an existing model is not replaced by mistake.
    temper_formats::check_output_dir(&out_dir, overwrite)?;
    let device = DeviceSpec::CPU.device()?;
    let bar = Phases::new(&format!("reading {}", model.display()));
    let pretrained = Pretrained::load_gguf(&model, &device, FloatPrecision::F32)
        .with_context(|| format!("loading {}", model.display()))?;
    bar.set(&format!("writing {}", out_dir.display()));
    pretrained
        .save_new(&out_dir, dtype, overwrite)
        .with_context(|| format!("writing {}", out_dir.display()))?;
    bar.finish();
    eprintln!(
        "wrote {} ({} parameters, {dtype})",
        out_dir.display(),
        pretrained.model.config().num_parameters()
    );
    Ok(())
}

/// Refuse an output that exists (unless `overwrite`) or is a directory, before any loading.
pub(crate) fn check_output_file(out: &Path, overwrite: bool) -> Result<()> {
    if out.is_dir() {
        bail!(
            "{} is a directory; --to gguf writes one .gguf file",
            out.display()
        );
    }
    if out.exists() && !overwrite {
        bail!("{} exists; pass --overwrite to replace it", out.display());
    }
    Ok(())
}

fn to_gguf(args: ConvertArgs) -> Result<()> {
    let dtype: GgufDtype = args.dtype.parse()?;
    check_output_file(&args.out, args.overwrite)?;
    let device = DeviceSpec::CPU.device()?;
    let bar = Phases::new(&format!("reading {}", args.model.display()));
    let p = load_model(
        &args.model,
        args.base.as_deref(),
        &device,
        WeightDType::Float(FloatPrecision::F32),
    )?;
    // The tokenizer comes with the weights: an adapter's is its base's.
    let tokenizer_path = if temper_lora::is_adapter_dir(&args.model) {
        temper_lora::resolve_base_model(&args.model, args.base.as_deref())?
    } else {
        args.model.clone()
    };
    bar.set(&format!("writing {}", args.out.display()));
    let summary = export_pretrained(&p, &tokenizer_path, &args.out, dtype)?;
    bar.finish();
    eprintln!("wrote {} ({})", args.out.display(), summary);
    Ok(())
}

/// Write `p` as a GGUF file `out` in `dtype`, its tokenizer metadata read from
/// `tokenizer_path` (an HF directory or a .gguf file); returns a one-line summary
/// (`272 tensors: F32 x61, Q8_0 x211; 145 MB`). Also what `temper train --export-gguf` calls.
pub(crate) fn export_pretrained(
    p: &Pretrained,
    tokenizer_path: &Path,
    out: &Path,
    dtype: GgufDtype,
) -> Result<String> {
    let config = p.model.config();
    let tokenizer = GgufTokenizerSource::load(tokenizer_path, config)
        .with_context(|| format!("reading the tokenizer of {}", tokenizer_path.display()))?;
    let fallback = source_name(&p.source);
    let name = if is_gguf(&p.source) {
        GgufFile::open(&p.source)
            .ok()
            .and_then(|f| f.get_str("general.name").ok().map(str::to_string))
            .unwrap_or(fallback)
    } else {
        model_name(config, &fallback)
    };
    let summary = export_gguf(
        &p.model,
        &tokenizer,
        out,
        &GgufExportOptions { dtype, name },
    )
    .with_context(|| format!("writing {}", out.display()))?;
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for (_, ty) in &summary.tensors {
        match counts.iter_mut().find(|(t, _)| t == ty) {
            Some((_, n)) => *n += 1,
            None => counts.push((*ty, 1)),
        }
    }
    let counts: Vec<String> = counts.iter().map(|(t, n)| format!("{t} x{n}")).collect();
    Ok(format!(
        "{} tensors: {}; {:.1} MB",
        summary.tensors.len(),
        counts.join(", "),
        summary.bytes as f64 / 1e6
    ))
}

/// The file stem or folder name of a model path, for `general.name`.
fn source_name(path: &Path) -> String {
    let stem = if is_gguf(path) {
        path.file_stem()
    } else {
        path.file_name()
    };
    stem.map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
}
