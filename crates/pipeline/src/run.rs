//! Running a pipeline: the instruct parent, then each training stage on the previous stage's
//! result, each result SLERP-merged with the instruct parent, every variant benchmarked, the
//! merges analysed against their parents, and the report written.
//!
//! Every step writes into its own directory under the output directory and finishes by
//! writing a marker (`pipeline.json`) holding its fingerprint (settings, data bytes, input
//! models). A re-run skips a step whose marker matches, so an interrupted run resumes where it
//! stopped (a training stage that was cut off continues from its last checkpoint), and
//! changing one stage's settings re-runs that stage and everything after it.
//!
//! ```text
//! OUT/instruct/            the instruct parent as an HF directory (when given as GGUF)
//! OUT/stages/NAME/model/   a stage's trained model, metrics.jsonl, loss.svg
//! OUT/stages/NAME/epochs/epoch-E/   with `sweep_epochs`: the model after each earlier epoch
//! OUT/merges/NAME[-epochE]-LABEL/   a stage's (or an epoch's) model merged with the instruct
//!                          parent under one recipe (`cpt-slerp`, `orpo-slerp-g`)
//! OUT/eval/VARIANT/        records.jsonl (per question) and summary.json
//! OUT/eval-MODE/VARIANT/   the same under each further protocol (`benchmark.also`)
//! OUT/gguf/VARIANT.DTYPE.gguf   with `export_gguf`: each trained / merged variant for llama.cpp
//! OUT/report.{md,html,json}, OUT/plots/*.svg
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use temper_backend::DeviceSpec;
use temper_bench_eval::load_questions;
use temper_bench_eval::results::{
    Metric, QuestionRecord, mcnemar_exact, merge_analysis, pair_by_id, paired_bootstrap,
};
use temper_formats::write_atomic;

use crate::config::{PipelineConfig, Recipe};
use crate::fingerprint::file_sha256;
use crate::report::{
    DataFile, MergeRow, PipelineReport, ProtocolResult, VariantKind, VariantResult, VsInstruct,
    WeightsMoved, render_report,
};
use crate::steps::{ModelRef, Runner, Variant, create_dir};
use crate::{PipelineError, Result};

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub out_dir: PathBuf,
    /// Progress bars and one line per step on stderr.
    pub progress: bool,
}

/// Write `report.json`, `report.md`, `report.html` and `plots/*.svg` into `dir`, each
/// atomically.
///
/// # Errors
/// Drawing or writing failures.
pub fn write_report(report: &PipelineReport, dir: &Path) -> Result<()> {
    for (file, contents) in render_report(report)? {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            create_dir(parent)?;
        }
        write_atomic(&path, contents.as_bytes())?;
    }
    Ok(())
}

/// Render the report again from `dir/report.json` (a finished run's), with nothing re-run:
/// how a report picks up a newer renderer. The JSON is rewritten too (fields an older run
/// lacked come back at their defaults).
///
/// # Errors
/// `report.json` is missing or malformed; drawing or writing failures.
pub fn rerender_report(dir: &Path) -> Result<PipelineReport> {
    let path = dir.join("report.json");
    let text =
        temper_formats::read_regular_to_string(&path).map_err(|e| PipelineError::io(&path, e))?;
    let report: PipelineReport = serde_json::from_str(&text)
        .map_err(|e| PipelineError::Report(format!("{}: {e}", path.display())))?;
    write_report(&report, dir)?;
    Ok(report)
}

/// The SHA-256 of every data file the run reads (benchmark, each stage's data).
fn data_files(config: &PipelineConfig) -> Result<Vec<DataFile>> {
    let mut files = vec![("benchmark".to_string(), config.benchmark.file.clone())];
    for stage in &config.stages {
        files.push((format!("{} data", stage.name), stage.data.clone()));
        if let Some(eval) = &stage.eval_data {
            files.push((format!("{} eval data", stage.name), eval.clone()));
        }
    }
    files
        .into_iter()
        .map(|(role, path)| {
            Ok(DataFile {
                role,
                sha256: file_sha256(&path)?,
                path,
            })
        })
        .collect()
}

/// How far each trained variant moved from the instruct parent (a pass over both models'
/// weights; cheap next to an evaluation, so measured on every run rather than cached).
fn weights_moved(variants: &[Variant], instruct: &ModelRef) -> Result<Vec<WeightsMoved>> {
    let open = |dir: &Path, label: &str| {
        temper_merge::ModelSource::open(dir, label).map_err(|source| PipelineError::Merge {
            name: format!("weight change of {label}"),
            source: Box::new(source),
        })
    };
    let parent = open(&instruct.dir, "Instruct")?;
    variants
        .iter()
        .filter(|v| v.kind == VariantKind::Trained)
        .map(|v| {
            let tuned = open(&v.model.dir, &v.name)?;
            let delta = temper_merge::weight_delta(&tuned, &parent).map_err(|source| {
                PipelineError::Merge {
                    name: format!("weight change of {}", v.name),
                    source: Box::new(source),
                }
            })?;
            Ok(WeightsMoved::new(&v.name, "Instruct", delta))
        })
        .collect()
}

/// Each variant against Instruct (`vs_instruct`, set in `results`), and each merge against its
/// parents, under `metric`.
fn analyse(
    config: &PipelineConfig,
    variants: &[Variant],
    results: &mut [VariantResult],
    records: &BTreeMap<String, Vec<QuestionRecord>>,
    metric: Metric,
) -> Result<Vec<MergeRow>> {
    let bench = &config.benchmark;
    for result in results.iter_mut() {
        if result.kind == VariantKind::Parent {
            continue;
        }
        let eval_err = |source| PipelineError::Eval {
            variant: result.name.clone(),
            source: Box::new(source),
        };
        let (a, b) =
            pair_by_id(&records[&result.name], &records["Instruct"], metric).map_err(eval_err)?;
        let mcnemar = mcnemar_exact(&a, &b).map_err(eval_err)?;
        let bootstrap =
            paired_bootstrap(&a, &b, bench.bootstrap_resamples, bench.seed).map_err(eval_err)?;
        result.vs_instruct = Some(VsInstruct {
            diff: bootstrap.diff,
            mcnemar_p: mcnemar.p_value,
            bootstrap_p: bootstrap.p_value,
        });
    }
    let mut analyses = Vec::new();
    for variant in variants {
        let Some((finetuned, instruct_name)) = &variant.parents else {
            continue;
        };
        let analysis = merge_analysis(
            &records[&variant.name],
            &records[finetuned],
            &records[instruct_name],
            metric,
            bench.bootstrap_resamples,
            bench.seed,
        )
        .map_err(|source| PipelineError::Eval {
            variant: variant.name.clone(),
            source: Box::new(source),
        })?;
        analyses.push(MergeRow {
            merged: variant.name.clone(),
            finetuned: finetuned.clone(),
            instruct: instruct_name.clone(),
            analysis,
        });
    }
    Ok(analyses)
}

/// Run `config` into `options.out_dir` and write the report there.
///
/// # Errors
/// The first failing step (named), after which nothing later runs; finished steps stay done
/// and a re-run skips them.
pub fn run_pipeline(config: &PipelineConfig, options: &PipelineOptions) -> Result<PipelineReport> {
    let t0 = Instant::now();
    create_dir(&options.out_dir)?;
    let runner = Runner::new(config, options);
    // Read the benchmark first: a broken file should fail before an hour of training.
    let bench = &config.benchmark;
    let mut questions = load_questions(&bench.file).map_err(|source| PipelineError::Eval {
        variant: "(loading the benchmark)".into(),
        source: Box::new(source),
    })?;
    if let Some(limit) = bench.limit {
        questions.truncate(limit);
    }
    // A dtype the device cannot compute in should fail before an hour of training too.
    bench
        .dtype
        .check(&config.device.parse::<DeviceSpec>()?.device()?)?;

    let instruct = runner.instruct()?;
    let mut variants = vec![Variant {
        name: "Instruct".into(),
        kind: VariantKind::Parent,
        model: instruct.clone(),
        parents: None,
        stage: None,
        epoch: None,
        recipe: None,
    }];
    let (mut stages, mut merges) = (Vec::new(), Vec::new());
    let (mut current, mut current_name) = (instruct.clone(), "Instruct".to_string());
    for stage in &config.stages {
        let name = format!("{current_name}-{}", stage.name.to_uppercase());
        let (model, result, epoch_models) = runner.stage(stage, &current, &name)?;
        let epochs = result.epochs;
        stages.push(result);
        let recipes = config.merge.recipes_for(stage)?;
        // The earlier epochs first (`Instruct-CPT@1`, its merge under the main recipe), then
        // the stage's own model, which is the last epoch's, under every recipe.
        let main_recipe = recipes
            .first()
            .filter(|_| config.merge.enabled && stage.merge);
        let mut trained: Vec<(Option<usize>, String, ModelRef)> = epoch_models
            .into_iter()
            .enumerate()
            .map(|(i, m)| (Some(i + 1), format!("{name}@{}", i + 1), m))
            .collect();
        trained.push((epochs, name.clone(), model.clone()));
        for (i, (epoch, trained_name, trained_model)) in trained.iter().enumerate() {
            let own = i + 1 == trained.len();
            variants.push(Variant {
                name: trained_name.clone(),
                kind: VariantKind::Trained,
                model: trained_model.clone(),
                parents: None,
                stage: Some(stage.name.clone()),
                epoch: *epoch,
                recipe: None,
            });
            let for_this: Vec<&Recipe> = match own {
                true => recipes.iter().collect(),
                false => main_recipe.into_iter().collect(),
            };
            for recipe in for_this {
                let merged_name = format!("{trained_name}-{}", recipe.label);
                let merge_epoch = if own { None } else { *epoch };
                let (merged, result) = runner.merge(
                    stage,
                    merge_epoch,
                    recipe,
                    trained_model,
                    &instruct,
                    &merged_name,
                )?;
                merges.push(result);
                variants.push(Variant {
                    name: merged_name,
                    kind: VariantKind::Merged,
                    model: merged,
                    parents: Some((trained_name.clone(), "Instruct".into())),
                    stage: Some(stage.name.clone()),
                    epoch: *epoch,
                    recipe: Some(recipe.label.clone()),
                });
            }
        }
        current = model;
        current_name = name;
    }
    if let Some(dtype) = &config.export_gguf {
        // Validated with the config; parsed again here for its type.
        let dtype = dtype
            .parse::<temper_llm_arch::gguf::GgufDtype>()
            .map_err(|e| PipelineError::config("export_gguf", e.to_string()))?;
        let out = runner.out().join("gguf");
        for v in variants.iter().filter(|v| v.kind != VariantKind::Parent) {
            runner.step(&format!("GGUF ({dtype}) of {}", v.name));
            crate::export::export_variant(
                &v.name,
                &v.model.dir,
                &v.model.fingerprint,
                &instruct.dir,
                &out,
                dtype,
            )?;
        }
    }

    // Every variant under each protocol, the primary one first; each analysed alike.
    let mut protocols = Vec::new();
    for mode in bench.protocols() {
        let fingerprint = bench.records_fingerprint_for(mode)?;
        let mut results = Vec::new();
        let mut records = BTreeMap::new();
        for variant in &variants {
            let (result, recs) = runner.evaluate(variant, &questions, mode, &fingerprint)?;
            records.insert(variant.name.clone(), recs);
            results.push(result);
        }
        let metric = bench.metric_for(mode);
        let analyses = analyse(config, &variants, &mut results, &records, metric)?;
        protocols.push(ProtocolResult {
            mode,
            metric,
            variants: results,
            analyses,
        });
    }
    let primary = protocols.remove(0);
    let weights = weights_moved(&variants, &instruct)?;
    let report = PipelineReport {
        name: config.name.clone(),
        device: config.device.clone(),
        benchmark: bench.file.display().to_string(),
        questions: questions.len(),
        mode: bench.mode,
        metric: bench.metric,
        total_seconds: t0.elapsed().as_secs_f64(),
        temper_version: env!("CARGO_PKG_VERSION").to_string(),
        data_files: data_files(config)?,
        stages,
        merges,
        variants: primary.variants,
        analyses: primary.analyses,
        protocols,
        weights,
        config: config.clone(),
    };
    runner.step("writing the report");
    runner.check_step_count();
    write_report(&report, &options.out_dir)?;
    Ok(report)
}
