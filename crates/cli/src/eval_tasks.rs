//! `temper eval --task NAME|FILE.yaml[,...] [--include-path DIR]`: lm-evaluation-harness task
//! YAMLs (tasks, groups and tags by name under the include paths) over local data, printed as
//! lm-eval's tables and written as its results JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use temper_bench_eval::task::group::groups_json;
use temper_bench_eval::task::{TaskIndex, TaskSettings, evaluate_task};

use crate::eval::EvalArgs;
use crate::progress::Progress;

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
    // Every name is resolved and every YAML read and checked before the model is loaded.
    let index = TaskIndex::build(&args.include_path)?;
    let selection = index.resolve(&args.tasks)?;
    let configs = &selection.tasks;
    // What each task read, hashed before the run: the results say which data they belong to.
    let mut task_files = serde_json::Map::new();
    for config in configs {
        let with_fewshot = args.num_fewshot.unwrap_or(config.num_fewshot) > 0;
        let files = temper_bench_eval::task::provenance::task_files(config, with_fewshot)?;
        task_files.insert(config.task.clone(), serde_json::to_value(files)?);
    }
    if let Some(out) = &args.output_path {
        let (_, dir) = outputs(out);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let device = args.device.device()?;
    let p = crate::weights::load_model(&args.model, args.base.as_deref(), &device, args.dtype)?;
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
    let mut results = Vec::with_capacity(configs.len());
    for config in configs {
        let bar = Progress::new(
            &format!("eval {}", config.task),
            "requests",
            "{msg} {bar:30} {pos}/{len} requests [{elapsed} < {eta}]",
            args.quiet,
        );
        bar.bar().set_message(config.task.clone());
        let result = evaluate_task(&p, config, &settings, |done, total| {
            bar.update(done as u64, total as u64);
        })?;
        bar.finish();
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
        results.push(result);
    }
    if !selection.groups.is_empty() {
        let json = groups_json(&selection.groups, |g| selection.leaves(g), &results);
        print_groups(&json);
        for key in ["results", "versions", "n-shot"] {
            if let (Some(into), Some(from)) = (
                merged.get_mut(key).and_then(|v| v.as_object_mut()),
                json.get(key).and_then(|v| v.as_object()),
            ) {
                into.extend(from.clone());
            }
        }
        for key in ["groups", "group_subtasks"] {
            if let Some(v) = json.get(key) {
                merged[key] = v.clone();
            }
        }
    }
    if let Some(out) = &args.output_path {
        let (file, _) = outputs(out);
        merged["config"] = serde_json::json!({
            "model": "temper",
            "model_args": args.model.display().to_string(),
            "model_source": p.source.display().to_string(),
            "dtype": format!("{:?}", args.dtype),
            "device": args.device.to_string(),
            "num_fewshot": args.num_fewshot,
            "batch_size": args.batch_size,
            "limit": args.limit,
            "max_length": args.max_length,
            "apply_chat_template": args.apply_chat_template,
            "fewshot_as_multiturn": args.apply_chat_template
                && args.fewshot_as_multiturn.unwrap_or(true),
            "system_instruction": args.system_instruction,
            "temper_version": env!("CARGO_PKG_VERSION"),
        });
        merged["task_files"] = serde_json::Value::Object(task_files);
        temper_formats::write_atomic(&file, serde_json::to_string_pretty(&merged)?.as_bytes())?;
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}

/// lm-eval's second table: each group with an aggregate, its metrics and pooled errors.
fn print_groups(json: &serde_json::Value) {
    let Some(groups) = json.get("groups").and_then(|g| g.as_object()) else {
        return;
    };
    println!(
        "\n|{:^20}|{:^16}|{:^8}|{:^8}|",
        "Groups", "Metric", "Value", "Stderr"
    );
    for (name, entry) in groups {
        let Some(entry) = entry.as_object() else {
            continue;
        };
        let alias = entry.get("alias").and_then(|a| a.as_str()).unwrap_or(name);
        for (key, value) in entry {
            let Some(metric) = key.strip_suffix(",none") else {
                continue;
            };
            if metric.ends_with("_stderr") {
                continue;
            }
            let se = match entry.get(&format!("{metric}_stderr,none")) {
                Some(serde_json::Value::Number(n)) => {
                    format!("{:.4}", n.as_f64().unwrap_or(f64::NAN))
                }
                _ => "N/A".to_string(),
            };
            println!(
                "|{:<20}|{:<16}|{:>8.4}|{:>8}|",
                alias,
                metric,
                value.as_f64().unwrap_or(f64::NAN),
                se
            );
        }
    }
}
