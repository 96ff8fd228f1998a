//! `temper`: the command-line front end of the Temper crates.

mod compare;
mod convert;
mod eval;
mod eval_tasks;
mod examples;
mod extract_lora;
mod inspect;
mod merge;
mod mergekit_flags;
mod output;
mod pipeline;
mod progress;
mod train;
mod weights;

#[cfg(test)]
mod help_tests;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use output::outln;
use temper_backend::DeviceSpec;
use temper_llm_arch::gguf::GgufFile;
use temper_llm_arch::{ChatMessage, GenerationConfig, Tokenizer, generate};

#[derive(Parser, Debug)]
#[command(
    name = "temper",
    version,
    about = "Domain-adapt Llama-family models: convert, generate, tokenize, inspect, merge, extract-lora, train, eval, pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Convert a GGUF file into an HF model directory (config.json, model.safetensors,
    /// tokenizer.json, tokenizer_config.json with the chat template, generation_config.json),
    /// or with --to gguf an HF directory, adapter directory or GGUF file into a GGUF file for
    /// llama.cpp (f32, f16, bf16, q8_0 or q4_0).
    Convert(convert::ConvertArgs),
    /// Generate a continuation; prints only the new text, streaming.
    #[command(after_help = examples::GENERATE)]
    Generate {
        /// An HF model directory, a .gguf file, a PEFT adapter directory (merged onto its base),
        /// or a hub id (org/name[@revision]) in the local Hugging Face cache.
        #[arg(long)]
        model: PathBuf,
        /// With an adapter as --model: its base model (instead of the adapter's
        /// `base_model_name_or_path`).
        #[arg(long)]
        base: Option<PathBuf>,
        /// The text to continue (with --chat: the user's message).
        #[arg(long)]
        prompt: String,
        /// Wrap the prompt as a user message with the model's chat template.
        #[arg(long)]
        chat: bool,
        /// System message (with --chat).
        #[arg(long)]
        system: Option<String>,
        /// Tokens to generate at most (fewer when EOS or a --stop string comes first).
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// 0 is greedy decoding; above 0 the logits are divided by it and sampled.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Nucleus sampling: keep the most likely tokens up to this probability mass (with
        /// --temperature above 0). Default: off.
        #[arg(long)]
        top_p: Option<f32>,
        /// Keep only the K most likely tokens (with --temperature above 0). Default: off.
        #[arg(long)]
        top_k: Option<usize>,
        /// HF's repetition penalty: above 1 discourages tokens already in the prompt or
        /// output; 1 is off.
        #[arg(long, default_value_t = 1.0)]
        repetition_penalty: f32,
        /// Seed of the sampler (the same seed, prompt and settings give the same text).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop when the output contains this string (repeatable).
        #[arg(long = "stop")]
        stop_strings: Vec<String>,
        /// cpu, wgpu, wgpu:N or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
        /// How the weights are held: f32, bf16 or f16 storage (bf16 halves the bytes a decode
        /// step reads; products accumulate in f32, on the CPU the activations stay f32), or a
        /// quantized base — nf4 / q8_0 quantized on load, gguf keeping a GGUF file's own
        /// blocks (memory ≈ the file).
        #[arg(long, default_value = "f32", value_name = "f32|bf16|f16|nf4|q8_0|gguf")]
        dtype: weights::WeightDType,
    },
    /// Print the token ids of a text as a JSON array.
    #[command(after_help = examples::TOKENIZE)]
    Tokenize {
        /// An HF model directory or a .gguf file (its tokenizer is used).
        #[arg(long)]
        model: PathBuf,
        /// The text to encode.
        #[arg(long)]
        text: String,
        /// Do not add the tokenizer's special tokens (BOS/EOS templates).
        #[arg(long)]
        no_special_tokens: bool,
    },
    /// Print architecture, parameter count, dtypes and config of a model directory or GGUF.
    #[command(after_help = examples::INSPECT)]
    Inspect {
        /// An HF model directory or a .gguf file.
        path: PathBuf,
    },
    /// Merge models with a mergekit YAML configuration (slerp, ties, linear, ...).
    #[command(after_help = examples::MERGE)]
    Merge(merge::MergeArgs),
    /// Evaluate a model on a benchmark (log-likelihood or the paper's generative protocol).
    #[command(after_help = examples::EVAL)]
    Eval(eval::EvalArgs),
    /// Compare two evaluation runs of one benchmark: per category and overall, McNemar's exact
    /// test, a paired bootstrap, Holm's correction across categories (table, JSON, SVG).
    #[command(after_help = examples::COMPARE)]
    Compare(compare::CompareArgs),
    /// The paper's study in one command: CPT → SFT → ORPO from an instruct model, each stage
    /// SLERP-merged with it, every variant benchmarked, report.{md,html,json}.
    #[command(after_help = examples::PIPELINE)]
    Pipeline(pipeline::PipelineArgs),
    /// Train one stage: cpt, sft, dpo, orpo, simpo or kto (or --config stage.toml).
    #[command(after_help = examples::TRAIN)]
    Train(train::TrainArgs),
    /// Extract a PEFT LoRA adapter (truncated SVD of FT − BASE per linear module).
    #[command(after_help = examples::EXTRACT_LORA)]
    ExtractLora(extract_lora::ExtractLoraArgs),
}

fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if is_gguf(path) {
        let file = GgufFile::open(path)?;
        Ok(Tokenizer::from_gguf(&file)?)
    } else {
        Ok(Tokenizer::from_file(path.join("tokenizer.json"))?)
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert(args) => convert::run(args)?,
        Command::Generate {
            model,
            base,
            prompt,
            chat,
            system,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            stop_strings,
            device,
            dtype,
        } => {
            let device = device.device()?;
            let p = weights::load_model(&model, base.as_deref(), &device, dtype)?;
            let text = if chat {
                let template = p
                    .chat_template
                    .as_ref()
                    .with_context(|| format!("{} has no chat template", model.display()))?;
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(ChatMessage::new("system", system));
                }
                messages.push(ChatMessage::new("user", prompt));
                template.render(&messages, true)?
            } else {
                prompt
            };
            let mut ids = Vec::new();
            if let Some(bos) = p.special.bos {
                ids.push(bos);
            }
            ids.extend(p.tokenizer.encode(&text, true)?);
            let config = GenerationConfig {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                seed,
                eos_token_ids: p.special.eos.clone(),
                stop_strings,
                pad_token_id: p.special.pad.unwrap_or(0),
            };
            // Stream: decode everything generated so far and print the new suffix, so
            // multi-token UTF-8 characters come out whole.
            let mut generated = Vec::new();
            let mut printed = String::new();
            let stdout = std::io::stdout();
            let out = generate(&p.model, Some(&p.tokenizer), &[ids], &config, |_, token| {
                if p.special.eos.contains(&token) {
                    return;
                }
                generated.push(token);
                if let Ok(text) = p.tokenizer.decode(&generated, true)
                    && text.len() > printed.len()
                    && text.starts_with(&printed)
                    && !text.ends_with('\u{FFFD}')
                {
                    let mut lock = stdout.lock();
                    let _ = lock.write_all(&text.as_bytes()[printed.len()..]);
                    let _ = lock.flush();
                    printed = text;
                }
            })?;
            // The final text (cut at a stop string) may differ from what was streamed.
            let final_text = out
                .into_iter()
                .next()
                .and_then(|o| o.text)
                .unwrap_or_default();
            let mut lock = stdout.lock();
            if let Some(rest) = final_text.strip_prefix(printed.as_str()) {
                lock.write_all(rest.as_bytes())?;
            }
            writeln!(lock)?;
        }
        Command::Tokenize {
            model,
            text,
            no_special_tokens,
        } => {
            let tokenizer = load_tokenizer(&model)?;
            let ids = tokenizer.encode(&text, !no_special_tokens)?;
            outln!("{}", serde_json::to_string(&ids)?)?;
        }
        Command::Inspect { path } => {
            outln!("{}", inspect::inspect(&path)?)?;
        }
        Command::Merge(args) => merge::run(args)?,
        Command::ExtractLora(args) => extract_lora::run(args)?,
        Command::Train(args) => train::run(args)?,
        Command::Eval(args) => eval::run(args)?,
        Command::Compare(args) => compare::run(args)?,
        Command::Pipeline(args) => pipeline::run(args)?,
    }
    Ok(())
}

fn main() {
    // Training and generation allocate and free the same large buffers every step: keep them
    // for reuse instead of re-faulting fresh pages from the OS (see `temper_backend::alloc`).
    temper_backend::alloc::retain_freed_memory();
    // The libraries' `tracing` events (the memory estimate before training, warnings) on
    // stderr, at `info` unless `RUST_LOG` says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // The reader of a pipe closed it (`temper inspect X | head -1`): not an error.
        if output::is_broken_pipe(&e) {
            return;
        }
        eprintln!("error: {}", output::report(&e));
        std::process::exit(1);
    }
}
