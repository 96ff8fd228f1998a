//! `temper train`: one training stage (CPT, SFT, DPO, ORPO, SimPO, KTO) from flags or a TOML
//! stage file, full fine-tuning or LoRA (`--lora-r R`, or a `[lora]` table).
//!
//! The output directory is an HF model directory `temper generate` loads (with LoRA: the
//! adapter merged into the weights), or with `--adapter-only` a PEFT adapter directory
//! (`adapter_config.json` + `adapter_model.safetensors` + tokenizer files). With LoRA, DPO and
//! KTO use the base model with adapters disabled as their reference (no second copy).
//! `--export-gguf DTYPE` also writes the result as `OUT/model.DTYPE.gguf` for llama.cpp.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use temper_backend::FloatPrecision;
use temper_llm_arch::gguf::GgufDtype;
use temper_objectives::data::PackingStrategy;
use temper_train::{LoraSettings, ObjectiveConfig, StageConfig, run_stage};

use crate::convert::export_pretrained;
use crate::weights::{WeightDType, load_model};

/// Arguments of `temper train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The objective (omit with --config).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(ObjectiveConfig::NAMES))]
    pub objective: Option<String>,
    /// A TOML stage file (`model`, `train_file`, `[trainer]`, `[trainer.objective]`, ...);
    /// flags given as well override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// HF model directory or .gguf file.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training rows (JSONL in TRL's shape for the objective).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out rows for the evaluation loss.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Output directory (checkpoints, metrics.jsonl, loss.svg and the trained model).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train a LoRA adapter of this rank on all seven projections instead of every weight
    /// (overrides the rank of a `[lora]` table).
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA alpha (default 2 × rank).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the LoRA adapter input (default 0).
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// QLoRA: keep the frozen base block-quantized while the adapter trains (`nf4`, as
    /// bitsandbytes' double-quantized NF4, `q8_0`, or `gguf`: a GGUF model's own blocks). Needs
    /// --lora-r (or a `[lora]` table).
    #[arg(long, value_name = "nf4|q8_0|gguf")]
    pub quantize_base: Option<String>,
    /// With LoRA: write the PEFT adapter (adapter_config.json + adapter_model.safetensors +
    /// tokenizer) instead of the merged model.
    #[arg(long)]
    pub adapter_only: bool,
    /// Passes over the training rows, fractions allowed (TRL's `num_train_epochs`). Default:
    /// the config's, else 3.
    #[arg(
        long,
        conflicts_with = "max_steps",
        visible_alias = "num-train-epochs",
        alias = "num_train_epochs"
    )]
    pub epochs: Option<f64>,
    /// Total optimizer steps; replaces --epochs (TRL's `max_steps`).
    #[arg(long, alias = "max_steps")]
    pub max_steps: Option<usize>,
    /// Peak learning rate, reached after the warm-up and decayed linearly to 0 (TRL's
    /// `learning_rate`). Default: the config's, else 5e-5.
    #[arg(long, visible_alias = "learning-rate", alias = "learning_rate")]
    pub lr: Option<f64>,
    /// Rows per micro-batch; pairs for the preference objectives (TRL's
    /// `per_device_train_batch_size`). Default: the config's, else 8.
    #[arg(
        long,
        visible_alias = "per-device-train-batch-size",
        alias = "per_device_train_batch_size"
    )]
    pub batch_size: Option<usize>,
    /// Micro-batches summed into each optimizer step. Default: the config's, else 1.
    #[arg(long, alias = "gradient_accumulation_steps")]
    pub gradient_accumulation_steps: Option<usize>,
    /// Truncate each row to this many tokens (TRL's `max_length`). Default: the config's, else
    /// 1024.
    #[arg(long, alias = "max_length")]
    pub max_length: Option<usize>,
    /// SFT: pack rows into `max_length` blocks as TRL's `packing=True` does (fewer, fuller
    /// steps; packed rows keep their own positions and attention). CPT always packs.
    #[arg(long)]
    pub packing: bool,
    /// SFT packing strategy (TRL's `packing_strategy`): `bfd` (default; best fit, rows kept
    /// whole, too-long rows truncated), `bfd_split` (too-long rows split) or `wrapped` (rows
    /// cut every `max_length` tokens).
    #[arg(
        long,
        alias = "packing_strategy",
        value_name = "bfd|bfd_split|wrapped",
        value_parser = clap::builder::PossibleValuesParser::new(PackingStrategy::NAMES)
    )]
    pub packing_strategy: Option<String>,
    /// Log (metrics.jsonl, and a line on stderr without a terminal) every N steps. Default:
    /// the config's, else 10.
    #[arg(long, alias = "logging_steps")]
    pub logging_steps: Option<usize>,
    /// Seed of the data order, LoRA initialisation and dropout. Default: the config's, else 42.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from the newest checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
    /// Train into an output directory that is not empty without resuming (its model files
    /// are replaced; refused otherwise).
    #[arg(long)]
    pub overwrite: bool,
    /// Keep only each decoder layer's input and recompute the layers in the backward pass
    /// (HF's `gradient_checkpointing`): activation memory of one layer instead of all.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Start even when the memory estimate printed first exceeds the memory available.
    #[arg(long)]
    pub no_memory_check: bool,
    /// cpu, wgpu, wgpu:N or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// f32, bf16-mixed (f32 master weights, bf16 products; TRL's `bf16=True`), f16-mixed (with
    /// a dynamic loss scale; `fp16=True`), or pure bf16 / f16 storage. Default: the config's,
    /// else f32.
    #[arg(long)]
    pub precision: Option<temper_backend::TrainPrecision>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// After training, also write the trained model (with LoRA: merged) as
    /// OUT/model.DTYPE.gguf for llama.cpp / ollama: f32, f16, bf16, q8_0 or q4_0.
    #[arg(long, value_name = "DTYPE")]
    pub export_gguf: Option<String>,
}

/// Build the stage from the TOML file (if any) and the flags.
pub fn stage_from_args(args: &TrainArgs) -> Result<StageConfig> {
    let mut stage = match &args.config {
        Some(path) => StageConfig::from_toml_file(path)
            .with_context(|| format!("reading {}", path.display()))?,
        None => {
            let (Some(model), Some(data), Some(out)) = (&args.model, &args.data, &args.out) else {
                bail!("give --config STAGE.toml, or --model, --data and --out");
            };
            let mut text = String::new();
            text.push_str(&format!("model = {:?}\n", model.display().to_string()));
            text.push_str(&format!("train_file = {:?}\n", data.display().to_string()));
            text.push_str(&format!(
                "[trainer]\noutput_dir = {:?}\n",
                out.display().to_string()
            ));
            StageConfig::from_toml_str(&text)?
        }
    };
    if let Some(name) = &args.objective {
        // A TOML file naming the same objective keeps its hyper-parameters.
        if args.config.is_none() || stage.trainer.objective.name() != name {
            stage.trainer.objective = ObjectiveConfig::from_name(name)
                .with_context(|| format!("unknown objective `{name}`"))?;
        }
    } else if args.config.is_none() {
        bail!(
            "name the objective ({}) or give --config",
            ObjectiveConfig::NAMES.join(", ")
        );
    }
    if let Some(r) = args.lora_r {
        match stage.lora.as_mut() {
            Some(l) => l.r = r,
            None => stage.lora = Some(LoraSettings::new(r)),
        }
    }
    if stage.lora.is_none()
        && (args.lora_alpha.is_some()
            || args.lora_dropout.is_some()
            || args.adapter_only
            || args.quantize_base.is_some())
    {
        bail!(
            "--lora-alpha, --lora-dropout, --adapter-only and --quantize-base need --lora-r (or a [lora] table)"
        );
    }
    if let Some(l) = stage.lora.as_mut() {
        if let Some(a) = args.lora_alpha {
            l.lora_alpha = Some(a);
        }
        if let Some(d) = args.lora_dropout {
            l.lora_dropout = d;
        }
        if let Some(q) = &args.quantize_base {
            l.quantize_base = Some(q.clone());
        }
    }
    if args.adapter_only {
        stage.save_adapter_only = true;
    }
    let t = &mut stage.trainer;
    if let Some(m) = &args.model {
        stage.model = m.clone();
    }
    if let Some(d) = &args.data {
        stage.train_file = d.clone();
    }
    if let Some(d) = &args.eval_data {
        stage.eval_file = Some(d.clone());
    }
    if let Some(o) = &args.out {
        t.output_dir = o.clone();
    }
    if let Some(e) = args.epochs {
        t.num_train_epochs = e;
        t.max_steps = None;
    }
    if let Some(n) = args.max_steps {
        t.max_steps = Some(n);
    }
    if let Some(lr) = args.lr {
        t.learning_rate = lr;
    }
    if let Some(b) = args.batch_size {
        t.batch_size = b;
    }
    if let Some(g) = args.gradient_accumulation_steps {
        t.gradient_accumulation_steps = g;
    }
    if let Some(l) = args.max_length {
        t.max_length = Some(l);
    }
    if args.packing {
        stage.packing = true;
    }
    if let Some(name) = &args.packing_strategy {
        stage.packing_strategy = Some(name.parse()?);
    }
    if let Some(n) = args.logging_steps {
        t.logging_steps = n;
    }
    if let Some(s) = args.seed {
        t.seed = s;
    }
    if args.resume {
        stage.resume = true;
    }
    if args.overwrite {
        stage.overwrite = true;
    }
    if args.gradient_checkpointing {
        t.gradient_checkpointing = true;
    }
    if args.no_memory_check {
        stage.memory_check = false;
    }
    if let Some(d) = &args.device {
        stage.device = d.clone();
    }
    if let Some(p) = args.precision {
        stage.precision = p.to_string();
    }
    stage.validate()?;
    Ok(stage)
}

/// Run `temper train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let stage = stage_from_args(&args)?;
    // Checked before training: a typo must not cost a run.
    let export: Option<GgufDtype> = args.export_gguf.as_deref().map(str::parse).transpose()?;
    let summary = run_stage(&stage, !args.quiet)?;
    let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    let what = match (&stage.lora, stage.save_adapter_only) {
        (None, _) => "model",
        (Some(_), false) => "merged LoRA model",
        (Some(_), true) => "LoRA adapter",
    };
    eprintln!(
        "{} steps of {} (final loss {}, eval loss {}); {what}, checkpoints, metrics.jsonl and loss.svg in {}",
        summary.steps,
        stage.trainer.objective.name(),
        fmt(summary.final_loss),
        fmt(summary.eval_loss),
        stage.trainer.output_dir.display()
    );
    if let Some(peak) = summary.peak_rss_bytes {
        eprintln!("peak memory {}", temper_train::memory::gib(peak));
    }
    if let Some(dtype) = export {
        let out = export_trained_gguf(&stage.trainer.output_dir, dtype)?;
        eprintln!("{out}");
    }
    Ok(())
}

/// Write the model saved in `dir` (an HF directory, or an adapter directory merged onto its
/// base) as `dir/model.DTYPE.gguf`, the tokenizer taken from `dir`; returns what was written.
/// The model is read back from `dir`, so the file holds exactly what the directory does.
pub(crate) fn export_trained_gguf(dir: &Path, dtype: GgufDtype) -> Result<String> {
    let device = temper_backend::DeviceSpec::CPU.device()?;
    let p = load_model(dir, None, &device, WeightDType::Float(FloatPrecision::F32))?;
    let out = dir.join(format!("model.{dtype}.gguf"));
    let tokenizer = if temper_lora::is_adapter_dir(dir) && !dir.join("tokenizer.json").is_file() {
        temper_lora::resolve_base_model(dir, None)?
    } else {
        dir.to_path_buf()
    };
    let summary = export_pretrained(&p, &tokenizer, &out, dtype)?;
    Ok(format!("wrote {} ({summary})", out.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn args(extra: &[&str]) -> TrainArgs {
        let mut argv = vec!["temper", "train"];
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&["--model", "m", "--data", "d.jsonl", "--out", "o"]);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Train(args),
            }) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn packing_flags_set_the_stage_keys_and_are_refused_by_name() {
        let stage = stage_from_args(&args(&["sft", "--packing"])).unwrap();
        assert!(stage.packing);
        assert_eq!(stage.sft_packing(), Some(PackingStrategy::Bfd));
        let stage = stage_from_args(&args(&[
            "sft",
            "--packing",
            "--packing-strategy",
            "bfd_split",
        ]))
        .unwrap();
        assert_eq!(stage.sft_packing(), Some(PackingStrategy::BfdSplit));
        let err = stage_from_args(&args(&["dpo", "--packing"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("packing = true"), "{err}");
        assert!(
            Cli::try_parse_from(["temper", "train", "sft", "--packing-strategy", "ffd"]).is_err()
        );
    }
}
