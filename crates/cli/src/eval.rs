//! `temper eval --model PATH --bench FILE.jsonl [--mode loglik|generate] [--dtype f32|bf16|f16]
//! [--out DIR]`.

use crate::output::outln;
use std::path::PathBuf;

use anyhow::{Context, Result};
use temper_backend::DeviceSpec;
use temper_bench_eval::results::{Summary, summarize, write_records};
use temper_bench_eval::{EvalMode, EvalSettings, evaluate_model, load_questions};

/// Arguments of `temper eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// An HF model directory, a .gguf file, a PEFT adapter directory, or a hub id
    /// (org/name[@revision]) in the local Hugging Face cache.
    #[arg(long)]
    pub model: PathBuf,
    /// With an adapter as --model: its base model (instead of the adapter's
    /// `base_model_name_or_path`).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The benchmark (JSONL, one question a line).
    #[arg(long, required_unless_present = "tasks", conflicts_with = "tasks")]
    pub bench: Option<PathBuf>,
    /// lm-evaluation-harness task YAMLs or task / group / tag names under --include-path
    /// (comma-separated or repeated) over local data: multiple_choice tasks with lm-eval's
    /// contexts, few-shot examples and metrics, loglikelihood_rolling (perplexity) tasks, and
    /// group YAMLs with their aggregate scores. A name containing `.yaml` or naming an
    /// existing file is a YAML.
    #[arg(
        long = "task",
        alias = "tasks",
        value_delimiter = ',',
        value_name = "NAME|FILE.yaml"
    )]
    pub tasks: Vec<String>,
    /// Folders whose task YAMLs (searched recursively) `--task` names refer to (lm-eval's
    /// `--include_path`; comma-separated or repeated; a later folder's names win).
    #[arg(
        long = "include-path",
        alias = "include_path",
        value_delimiter = ',',
        requires = "tasks",
        value_name = "DIR"
    )]
    pub include_path: Vec<PathBuf>,
    /// Few-shot examples per document (overrides the task's `num_fewshot`).
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// Evaluate only the first N documents of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Tokens per rolling window of a loglikelihood_rolling task (lm-eval's `max_length`
    /// model argument); default: the model's max_position_embeddings.
    #[arg(long, requires = "tasks", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_length: Option<u64>,
    /// Tasks: write lm-eval's results JSON here (a `.json` file, or a folder that gets
    /// results.json).
    #[arg(long)]
    pub output_path: Option<PathBuf>,
    /// Tasks: also write each document's requests and log-likelihoods
    /// (samples_<task>.jsonl beside the results).
    #[arg(long, requires = "output_path")]
    pub log_samples: bool,
    /// Tasks: render each context through the model's chat template, with the generation
    /// prompt (lm-eval's --apply_chat_template); multiple-choice answers then follow the
    /// assistant prompt without the target delimiter.
    #[arg(long, requires = "tasks")]
    pub apply_chat_template: bool,
    /// Tasks, with --apply-chat-template: few-shot examples as user/assistant turns (the
    /// default, as lm-eval) or, with `false`, all in one user message.
    #[arg(
        long,
        requires = "apply_chat_template",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub fewshot_as_multiturn: Option<bool>,
    /// Tasks: text put before the task's description in the system turn (lm-eval's
    /// --system_instruction).
    #[arg(long, requires = "tasks")]
    pub system_instruction: Option<String>,
    /// loglik: lm-eval log-likelihood multiple choice (acc, acc_norm, acc_bytes); generate:
    /// the paper's protocol (greedy decoding, first answer letter or True/False parsed).
    #[arg(long, value_parser = parse_mode, default_value = "loglik")]
    pub mode: EvalMode,
    /// Write summary.json and records.jsonl (per question) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Wrap the log-likelihood context in the model's chat template (loglik only: the generate
    /// protocol always prompts through the template, and refuses --chat rather than ignore it).
    #[arg(long)]
    pub chat: bool,
    /// Sequences per forward pass (requests of several questions are batched together).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// cpu, wgpu, wgpu:N or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// How the weights are held: f32, bf16, f16, or a quantized base (nf4 / q8_0 quantized on
    /// load, gguf keeping a GGUF file's own blocks). On the CPU the activations stay f32 and
    /// products accumulate in f32 whatever this says.
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16|nf4|q8_0|gguf")]
    pub dtype: crate::weights::WeightDType,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_mode(s: &str) -> Result<EvalMode, String> {
    match s {
        "loglik" => Ok(EvalMode::Loglik),
        "generate" => Ok(EvalMode::Generate),
        other => Err(format!("unknown mode `{other}` (loglik or generate)")),
    }
}

fn print_summary(name: &str, s: &Summary) -> std::io::Result<()> {
    outln!(
        "{name:9} {:.4} ± {:.4}  (n = {})",
        s.overall.accuracy,
        s.overall.stderr,
        s.overall.n
    )?;
    for (cat, a) in &s.per_category {
        outln!(
            "  {cat:20} {:.4} ± {:.4}  (n = {})",
            a.accuracy,
            a.stderr,
            a.n
        )?;
    }
    Ok(())
}

/// Run `temper eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    if !args.tasks.is_empty() {
        return crate::eval_tasks::run(&args);
    }
    let bench = args
        .bench
        .as_ref()
        .context("--bench FILE.jsonl or --task NAME|FILE.yaml is needed")?;
    let questions = load_questions(bench)?;
    let device = args.device.device()?;
    let p = crate::weights::load_model(&args.model, args.base.as_deref(), &device, args.dtype)?;
    let bar = crate::progress::Progress::new(
        &format!("eval {}", bench.display()),
        "questions",
        "{bar:30} {pos}/{len} questions [{elapsed} < {eta}]",
        args.quiet,
    );
    let progress = |done: usize, total: usize| bar.update(done as u64, total as u64);
    let settings = EvalSettings {
        mode: args.mode,
        batch_size: args.batch_size,
        chat: args.chat,
        ..EvalSettings::default()
    };
    let records = evaluate_model(&p, &questions, &settings, progress)?;
    bar.finish();
    let metrics = args.mode.metrics();
    let summaries: Vec<(&str, Summary)> = metrics
        .iter()
        .map(|(n, m)| (*n, summarize(&records, *m)))
        .collect();
    for (name, s) in &summaries {
        print_summary(name, s)?;
    }
    if args.mode == EvalMode::Generate {
        outln!(
            "unparsed outputs: {} (counted as wrong)",
            summaries[0].1.unparsed
        )?;
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        write_records(out.join("records.jsonl"), &records)?;
        let json: serde_json::Map<String, serde_json::Value> = summaries
            .iter()
            .map(|(n, s)| Ok(((*n).to_string(), serde_json::to_value(s)?)))
            .collect::<Result<_>>()?;
        let path = out.join("summary.json");
        temper_formats::write_atomic(&path, serde_json::to_string_pretty(&json)?.as_bytes())?;
        eprintln!("wrote {} and records.jsonl", path.display());
    }
    Ok(())
}
