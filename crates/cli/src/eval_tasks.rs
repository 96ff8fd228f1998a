//! `temper eval --task FILE.yaml[,FILE.yaml...]`: lm-evaluation-harness task YAMLs over local
//! data, printed as lm-eval's table and written as its results JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use temper_bench_eval::task::{TaskConfig, TaskSettings, evaluate_task};

use crate::eval::EvalArgs;

fn outputs(path: &Path) -> (PathBuf, PathBuf) {
    if path.extension().is_some_and(|e| e == "json") {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (path.to_path_buf(), dir)
    } else {
        (path.join("results.json"), path.to_path_buf())
    }
}

/// Run the tasks of `args`.
pub fn run(args: &EvalArgs) -> Result<()> {
    // Every YAML is read and checked before the model is loaded.
    let configs = args
        .tasks
        .iter()
        .map(TaskConfig::load)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(out) = &args.output_path {
        let (_, dir) = outputs(out);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let device = args.device.device()?;
    let p = crate::weights::load_model(&args.model, &device, args.dtype)?;
    let settings = TaskSettings {
        num_fewshot: args.num_fewshot,
        limit: args.limit,
        batch_size: args.batch_size,
        max_length: args.max_length.map(|n| n as usize),
        apply_chat_template: args.apply_chat_template,
        fewshot_as_multiturn: args.fewshot_as_multiturn.unwrap_or(true),
        system_instruction: args.system_instruction.clone(),
        ..TaskSettings::default()
    };
    let mut merged = serde_json::json!({
        "results": {}, "configs": {}, "versions": {}, "n-shot": {}, "n-samples": {},
    });
    println!(
        "|{:^20}|{:^8}|{:^16}|{:^8}|{:^8}|",
        "Tasks", "n-shot", "Metric", "Value", "Stderr"
    );
    for config in &configs {
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} requests [{elapsed} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(config.task.clone());
        let result = evaluate_task(&p, config, &settings, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        for (m, mean, se) in &result.metrics {
            // lm-eval prints "N/A" where a metric has no standard error (perplexities).
            let se = if se.is_finite() {
                format!("{se:.4}")
            } else {
                "N/A".to_string()
            };
            println!(
                "|{:<20}|{:>8}|{:<16}|{:>8.4}|{:>8}|",
                config.task, result.num_fewshot, m, mean, se
            );
        }
        let json = result.to_lm_eval_json();
        for key in ["results", "configs", "versions", "n-shot", "n-samples"] {
            if let (Some(into), Some(from)) = (
                merged.get_mut(key).and_then(|v| v.as_object_mut()),
                json.get(key).and_then(|v| v.as_object()),
            ) {
                into.extend(from.clone());
            }
        }
        if args.log_samples
            && let Some(out) = &args.output_path
        {
            let (_, dir) = outputs(out);
            let mut text = String::new();
            for s in &result.samples {
                text.push_str(&serde_json::to_string(s)?);
                text.push('\n');
            }
            let path = dir.join(format!("samples_{}.jsonl", config.task));
            temper_formats::write_atomic(&path, text.as_bytes())?;
        }
    }
    if let Some(out) = &args.output_path {
        let (file, _) = outputs(out);
        merged["config"] = serde_json::json!({
            "model": "temper",
            "model_args": args.model.display().to_string(),
            "batch_size": args.batch_size,
            "limit": args.limit,
            "max_length": args.max_length,
            "apply_chat_template": args.apply_chat_template,
            "fewshot_as_multiturn": args.apply_chat_template
                && args.fewshot_as_multiturn.unwrap_or(true),
            "system_instruction": args.system_instruction,
            "temper_version": env!("CARGO_PKG_VERSION"),
        });
        temper_formats::write_atomic(&file, serde_json::to_string_pretty(&merged)?.as_bytes())?;
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}
