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
//! OUT/merges/NAME-slerp/   a stage's result merged with the instruct parent
//! OUT/eval/VARIANT/        records.jsonl (per question) and summary.json
//! OUT/gguf/VARIANT.DTYPE.gguf   with `export_gguf`: each trained / merged variant for llama.cpp
//! OUT/report.{md,html,json}, OUT/plots/*.svg
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use temper_backend::{DeviceSpec, FloatPrecision};
use temper_bench_eval::results::{
    QuestionRecord, Summary, mcnemar_exact, merge_analysis, pair_by_id, paired_bootstrap,
    read_records, summarize, write_records,
};
use temper_bench_eval::{Question, evaluate_model, load_questions};
use temper_formats::write_atomic;
use temper_llm_arch::Pretrained;
use temper_merge::{MergeConfig, MergeOptions, NoProgress, run_merge};

use crate::config::{PipelineConfig, StageSpec};
use crate::fingerprint::{Fingerprint, file_sha256};
use crate::report::{
    DataFile, MergeResult, MergeRow, PipelineReport, StageResult, TensorStat, VariantKind,
    VariantResult, VsInstruct, WeightsMoved, render_report,
};
use crate::{PipelineError, Result};

const MARKER: &str = "pipeline.json";
const PENDING: &str = "pipeline.pending.json";

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub out_dir: PathBuf,
    /// Progress bars and one line per step on stderr.
    pub progress: bool,
}

/// A model directory and the fingerprint of how it was made.
#[derive(Debug, Clone)]
struct ModelRef {
    dir: PathBuf,
    fingerprint: String,
}

/// A model to benchmark.
#[derive(Debug, Clone)]
struct Variant {
    name: String,
    kind: VariantKind,
    model: ModelRef,
    /// Merged variants: (fine-tuned parent, instruct parent).
    parents: Option<(String, String)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker<T> {
    fingerprint: String,
    #[serde(flatten)]
    data: T,
}

fn read_marker<T: DeserializeOwned>(path: &Path, fingerprint: &str) -> Option<T> {
    let text = temper_formats::read_regular_to_string(path).ok()?;
    let marker: Marker<T> = serde_json::from_str(&text).ok()?;
    (marker.fingerprint == fingerprint).then_some(marker.data)
}

fn write_marker<T: Serialize>(path: &Path, fingerprint: &str, data: T) -> Result<()> {
    let marker = Marker {
        fingerprint: fingerprint.to_string(),
        data,
    };
    let text = serde_json::to_string_pretty(&marker)
        .map_err(|e| PipelineError::Report(format!("{}: {e}", path.display())))?;
    Ok(write_atomic(path, text.as_bytes())?)
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

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| PipelineError::io(path, e))
}

fn remove_dir(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| PipelineError::io(path, e))?;
    }
    Ok(())
}

/// A variant name as a directory name.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

struct Runner<'a> {
    config: &'a PipelineConfig,
    options: &'a PipelineOptions,
    /// Steps begun so far (trainings, merges, GGUF exports, evaluations, the report), and
    /// their number, for "step n/N" lines a log without a terminal can be read by.
    steps: std::cell::Cell<usize>,
    total_steps: usize,
}

impl<'a> Runner<'a> {
    fn new(config: &'a PipelineConfig, options: &'a PipelineOptions) -> Self {
        let stages = config.stages.len();
        let merges = match config.merge.enabled {
            true => config.stages.iter().filter(|s| s.merge).count(),
            false => 0,
        };
        let exports = match config.export_gguf {
            Some(_) => stages + merges,
            None => 0,
        };
        Self {
            config,
            options,
            steps: std::cell::Cell::new(0),
            total_steps: stages + merges + exports + (1 + stages + merges) + 1,
        }
    }

    fn log(&self, message: &str) {
        if self.options.progress {
            tracing::info!("[pipeline] {message}");
        }
    }

    /// Begin the next step of the run: logged as `step n/N: message`.
    fn step(&self, message: &str) {
        let n = self.steps.get() + 1;
        self.steps.set(n);
        self.log(&format!("step {n}/{}: {message}", self.total_steps));
    }

    fn out(&self) -> &Path {
        &self.options.out_dir
    }

    /// The instruct parent as an HF directory (converting a GGUF once), fetched first when
    /// missing and a fetch script is configured.
    fn instruct(&self) -> Result<ModelRef> {
        let path = &self.config.instruct;
        if !path.exists() {
            let Some(script) = &self.config.fetch_script else {
                return Err(PipelineError::Fetch {
                    path: path.clone(),
                    message: "no `fetch_script` configured".into(),
                });
            };
            self.log(&format!(
                "fetching the instruct model with {}",
                script.display()
            ));
            let status = std::process::Command::new("bash")
                .arg(script)
                .env("TEMPER_NO_CONVERT", "1")
                .stdout(std::process::Stdio::null())
                .status()
                .map_err(|e| PipelineError::Fetch {
                    path: path.clone(),
                    message: format!("running {}: {e}", script.display()),
                })?;
            if !status.success() || !path.exists() {
                return Err(PipelineError::Fetch {
                    path: path.clone(),
                    message: format!("{} ended with {status}", script.display()),
                });
            }
        }
        if path.is_dir() {
            let mut f = Fingerprint::new("instruct-dir");
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| PipelineError::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                            n == "config.json"
                                || n == "tokenizer.json"
                                || n.ends_with(".safetensors")
                        })
                })
                .collect();
            files.sort();
            for file in &files {
                f.file(&file.display().to_string(), file)?;
            }
            return Ok(ModelRef {
                dir: path.clone(),
                fingerprint: f.finish(),
            });
        }
        let fingerprint = Fingerprint::new("instruct-gguf")
            .str("sha256", &file_sha256(path)?)
            .finish();
        let dir = self.out().join("instruct");
        if read_marker::<serde_json::Value>(&dir.join(MARKER), &fingerprint).is_none() {
            self.log(&format!("converting {} to an HF directory", path.display()));
            remove_dir(&dir)?;
            let device = DeviceSpec::CPU.device()?;
            let p = Pretrained::load(path, &device, FloatPrecision::F32).map_err(|source| {
                PipelineError::Model {
                    path: path.clone(),
                    source: Box::new(source),
                }
            })?;
            p.save_new(&dir, FloatPrecision::F32, true)
                .map_err(|source| PipelineError::Model {
                    path: dir.clone(),
                    source: Box::new(source),
                })?;
            write_marker(
                &dir.join(MARKER),
                &fingerprint,
                serde_json::json!({"source": path}),
            )?;
        }
        Ok(ModelRef { dir, fingerprint })
    }

    /// The first `limit` rows of `data` (the file itself when there is no limit).
    fn data_slice(data: &Path, limit: Option<usize>, dir: &Path) -> Result<PathBuf> {
        let Some(limit) = limit else {
            return Ok(data.to_path_buf());
        };
        // Line by line and as bytes: the first `limit` non-blank lines, without holding the
        // rest of the file (the trainer validates them, naming the line, when it reads them).
        use std::io::BufRead;
        let file = temper_formats::open_regular(data).map_err(|e| PipelineError::io(data, e))?;
        let mut reader = std::io::BufReader::new(file);
        let mut slice: Vec<u8> = Vec::new();
        let mut line = Vec::new();
        let mut taken = 0;
        while taken < limit {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| PipelineError::io(data, e))?;
            if n == 0 {
                break;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            slice.extend_from_slice(line.strip_suffix(b"\n").unwrap_or(&line));
            slice.push(b'\n');
            taken += 1;
        }
        create_dir(dir)?;
        let path = dir.join(
            data.file_name()
                .unwrap_or_else(|| std::ffi::OsStr::new("train.jsonl")),
        );
        write_atomic(&path, &slice)?;
        Ok(path)
    }

    fn stage(
        &self,
        stage: &StageSpec,
        input: &ModelRef,
        variant: &str,
    ) -> Result<(ModelRef, StageResult)> {
        let dir = self.out().join("stages").join(&stage.name);
        let model_dir = dir.join("model");
        let mut f = Fingerprint::new("stage");
        f.json("spec", stage)
            .str("input", &input.fingerprint)
            .str("device", &self.config.device)
            .str("precision", &self.config.precision);
        f.file("data", &stage.data)?;
        if let Some(eval) = &stage.eval_data {
            f.file("eval_data", eval)?;
        }
        let fingerprint = f.finish();
        let model = ModelRef {
            dir: model_dir.clone(),
            fingerprint: fingerprint.clone(),
        };
        if let Some(mut done) = read_marker::<StageResult>(&dir.join(MARKER), &fingerprint)
            && model_dir.join("config.json").exists()
        {
            self.step(&format!("stage {}: up to date, skipped", stage.name));
            done.skipped = true;
            return Ok((model, done));
        }
        let resume = read_marker::<serde_json::Value>(&dir.join(PENDING), &fingerprint).is_some();
        if resume {
            self.log(&format!(
                "stage {}: resuming an interrupted run",
                stage.name
            ));
        } else {
            remove_dir(&dir)?;
        }
        create_dir(&dir)?;
        write_marker(&dir.join(PENDING), &fingerprint, serde_json::json!({}))?;
        let train_file = Self::data_slice(&stage.data, stage.limit, &dir.join("data"))?;
        let mut stage_config = stage.stage_config(
            &input.dir,
            &train_file,
            &model_dir,
            &self.config.device,
            &self.config.precision,
        )?;
        stage_config.resume = resume;
        self.step(&format!(
            "stage {} ({}): training {variant}",
            stage.name,
            stage.objective()
        ));
        let t0 = Instant::now();
        let summary =
            temper_train::run_stage(&stage_config, self.options.progress).map_err(|source| {
                PipelineError::Train {
                    stage: stage.name.clone(),
                    source: Box::new(source),
                }
            })?;
        let seconds = t0.elapsed().as_secs_f64();
        // The checkpoints only serve a resume; the finished model is in `model_dir`.
        if let Ok(entries) = std::fs::read_dir(&model_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let is_checkpoint = path.is_dir()
                    && entry
                        .file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with("checkpoint-"));
                if is_checkpoint {
                    remove_dir(&path)?;
                }
            }
        }
        let losses = |name: &str| -> Vec<(usize, f64)> {
            summary
                .log_history
                .iter()
                .filter_map(|r| r.get(name).map(|v| (r.step, v)))
                .collect()
        };
        let result = StageResult {
            name: stage.name.clone(),
            variant: variant.to_string(),
            objective: stage.objective(),
            lora_r: stage
                .lora
                .as_ref()
                .and_then(|l| l.get("r"))
                .and_then(toml::Value::as_integer)
                .map(|r| r as usize),
            train_rows: count_rows(&train_file)?,
            skipped: false,
            seconds,
            steps: summary.steps,
            final_loss: summary.final_loss,
            eval_loss: summary.eval_loss,
            losses: losses("loss"),
            eval_losses: losses("eval_loss"),
            metrics: other_metrics(&summary.log_history),
        };
        write_marker(&dir.join(MARKER), &fingerprint, &result)?;
        let _ = std::fs::remove_file(dir.join(PENDING));
        Ok((model, result))
    }

    fn merge(
        &self,
        stage: &StageSpec,
        finetuned: &ModelRef,
        instruct: &ModelRef,
        variant: &str,
    ) -> Result<(ModelRef, MergeResult)> {
        let settings = &self.config.merge;
        let name = format!("{}-{}", stage.name, slug(&settings.label));
        let dir = self.out().join("merges").join(&name);
        let num_layers = num_hidden_layers(&instruct.dir)?;
        let fingerprint = Fingerprint::new("merge")
            .str("yaml", &settings.yaml)
            .str("finetuned", &finetuned.fingerprint)
            .str("instruct", &instruct.fingerprint)
            .finish();
        let model = ModelRef {
            dir: dir.clone(),
            fingerprint: fingerprint.clone(),
        };
        if let Some(mut done) = read_marker::<MergeResult>(&dir.join(MARKER), &fingerprint) {
            self.step(&format!("merge {name}: up to date, skipped"));
            done.skipped = true;
            return Ok((model, done));
        }
        let yaml = settings
            .yaml
            .replace("{finetuned}", &finetuned.dir.display().to_string())
            .replace("{instruct}", &instruct.dir.display().to_string())
            .replace("{num_layers}", &num_layers.to_string());
        let merge_err = |source| PipelineError::Merge {
            name: name.clone(),
            source: Box::new(source),
        };
        let merge_config = MergeConfig::from_yaml(&yaml, "merge.yaml").map_err(merge_err)?;
        self.step(&format!("merge {name}: {variant}"));
        let t0 = Instant::now();
        let options = MergeOptions {
            overwrite: true,
            ..MergeOptions::default()
        };
        let summary = run_merge(&merge_config, Some(&yaml), &dir, &options, &NoProgress)
            .map_err(merge_err)?;
        let seconds = t0.elapsed().as_secs_f64();
        let tensors: Vec<TensorStat> = summary
            .reports
            .iter()
            .map(|r| TensorStat {
                name: r.name.clone(),
                t: r.method.t,
                cosine: r.method.cosine,
                linear_fallback: r.method.linear_fallback,
            })
            .collect();
        let result = MergeResult::new(
            name.clone(),
            variant.to_string(),
            stage.name.clone(),
            seconds,
            tensors,
        );
        write_marker(&dir.join(MARKER), &fingerprint, &result)?;
        Ok((model, result))
    }

    fn evaluate(
        &self,
        variant: &Variant,
        questions: &[Question],
        bench_fingerprint: &str,
    ) -> Result<(VariantResult, Vec<QuestionRecord>)> {
        let dir = self.out().join("eval").join(slug(&variant.name));
        let fingerprint = Fingerprint::new("eval")
            .str("model", &variant.model.fingerprint)
            .str("bench", bench_fingerprint)
            .finish();
        let records_path = dir.join("records.jsonl");
        let bench = &self.config.benchmark;
        let eval_err = |source| PipelineError::Eval {
            variant: variant.name.clone(),
            source: Box::new(source),
        };
        let (records, seconds, skipped) =
            match read_marker::<EvalDone>(&dir.join(MARKER), &fingerprint) {
                Some(done) if records_path.exists() => {
                    self.step(&format!("eval {}: up to date, skipped", variant.name));
                    (
                        read_records(&records_path).map_err(eval_err)?,
                        done.seconds,
                        true,
                    )
                }
                _ => {
                    remove_dir(&dir)?;
                    create_dir(&dir)?;
                    self.step(&format!(
                        "eval {}: {} questions",
                        variant.name,
                        questions.len()
                    ));
                    let device = self.config.device.parse::<DeviceSpec>()?.device()?;
                    let t0 = Instant::now();
                    let p = Pretrained::load(&variant.model.dir, &device, bench.dtype).map_err(
                        |source| PipelineError::Model {
                            path: variant.model.dir.clone(),
                            source: Box::new(source),
                        },
                    )?;
                    let bar = if self.options.progress {
                        indicatif::ProgressBar::new(questions.len() as u64)
                    } else {
                        indicatif::ProgressBar::hidden()
                    };
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg} {bar:30} {pos}/{len} questions [{elapsed} < {eta}]",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    bar.set_message(variant.name.clone());
                    let records =
                        evaluate_model(&p, questions, &bench.eval_settings(), |done, _| {
                            bar.set_position(done as u64);
                        })
                        .map_err(eval_err)?;
                    bar.finish_and_clear();
                    let seconds = t0.elapsed().as_secs_f64();
                    write_records(&records_path, &records).map_err(eval_err)?;
                    let summaries: std::collections::BTreeMap<&str, Summary> = bench
                        .mode
                        .metrics()
                        .iter()
                        .map(|(n, m)| (*n, summarize(&records, *m)))
                        .collect();
                    let text = serde_json::to_string_pretty(&summaries)
                        .map_err(|e| PipelineError::Report(e.to_string()))?;
                    write_atomic(&dir.join("summary.json"), text.as_bytes())?;
                    write_marker(&dir.join(MARKER), &fingerprint, EvalDone { seconds })?;
                    (records, seconds, false)
                }
            };
        let summaries = bench
            .mode
            .metrics()
            .iter()
            .map(|(n, m)| ((*n).to_string(), summarize(&records, *m)))
            .collect();
        let result = VariantResult {
            name: variant.name.clone(),
            kind: variant.kind,
            model_dir: variant.model.dir.clone(),
            fingerprint: variant.model.fingerprint.clone(),
            parents: variant.parents.clone(),
            seconds,
            skipped,
            summary: summarize(&records, bench.metric),
            summaries,
            vs_instruct: None,
        };
        Ok((result, records))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct EvalDone {
    seconds: f64,
}

/// Every metric of `log` but the losses (kept apart) and `epoch` (the step restated), by name.
fn other_metrics(
    log: &[temper_train::LogRecord],
) -> std::collections::BTreeMap<String, Vec<(usize, f64)>> {
    let mut out: std::collections::BTreeMap<String, Vec<(usize, f64)>> = Default::default();
    for record in log {
        for (name, value) in &record.values {
            if !matches!(name.as_str(), "loss" | "eval_loss" | "epoch") {
                out.entry(name.clone())
                    .or_default()
                    .push((record.step, *value));
            }
        }
    }
    out
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

fn count_rows(path: &Path) -> Result<usize> {
    let text =
        temper_formats::read_regular_to_string(path).map_err(|e| PipelineError::io(path, e))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

fn num_hidden_layers(dir: &Path) -> Result<usize> {
    let path = dir.join("config.json");
    let text =
        temper_formats::read_regular_to_string(&path).map_err(|e| PipelineError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| PipelineError::config(&path.display().to_string(), e.to_string()))?;
    value["num_hidden_layers"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| PipelineError::config(&path.display().to_string(), "no `num_hidden_layers`"))
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
    let bench_fingerprint = bench.records_fingerprint()?;

    let instruct = runner.instruct()?;
    let mut variants = vec![Variant {
        name: "Instruct".into(),
        kind: VariantKind::Parent,
        model: instruct.clone(),
        parents: None,
    }];
    let (mut stages, mut merges) = (Vec::new(), Vec::new());
    let (mut current, mut current_name) = (instruct.clone(), "Instruct".to_string());
    for stage in &config.stages {
        let name = format!("{current_name}-{}", stage.name.to_uppercase());
        let (model, result) = runner.stage(stage, &current, &name)?;
        stages.push(result);
        variants.push(Variant {
            name: name.clone(),
            kind: VariantKind::Trained,
            model: model.clone(),
            parents: None,
        });
        if config.merge.enabled && stage.merge {
            let merged_name = format!("{name}-{}", config.merge.label);
            let (merged, result) = runner.merge(stage, &model, &instruct, &merged_name)?;
            merges.push(result);
            variants.push(Variant {
                name: merged_name,
                kind: VariantKind::Merged,
                model: merged,
                parents: Some((name.clone(), "Instruct".into())),
            });
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

    let mut results = Vec::new();
    let mut records = std::collections::BTreeMap::new();
    for variant in &variants {
        let (result, recs) = runner.evaluate(variant, &questions, &bench_fingerprint)?;
        records.insert(variant.name.clone(), recs);
        results.push(result);
    }
    for result in &mut results {
        if result.kind == VariantKind::Parent {
            continue;
        }
        let eval_err = |source| PipelineError::Eval {
            variant: result.name.clone(),
            source: Box::new(source),
        };
        let (a, b) = pair_by_id(&records[&result.name], &records["Instruct"], bench.metric)
            .map_err(eval_err)?;
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
    for variant in &variants {
        let Some((finetuned, instruct_name)) = &variant.parents else {
            continue;
        };
        let analysis = merge_analysis(
            &records[&variant.name],
            &records[finetuned],
            &records[instruct_name],
            bench.metric,
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
        variants: results,
        analyses,
        weights,
        config: config.clone(),
    };
    runner.step("writing the report");
    write_report(&report, &options.out_dir)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    /// The default study's steps: 3 trainings, 3 merges, 7 evaluations, the report; with a
    /// GGUF export of each of the 6 trained and merged variants, 6 more.
    #[test]
    fn steps_are_counted_as_the_run_takes_them() {
        let options = PipelineOptions {
            out_dir: PathBuf::from("unused"),
            progress: false,
        };
        let mut config =
            PipelineConfig::preset(Preset::Default, Path::new(".")).expect("default preset");
        assert_eq!(Runner::new(&config, &options).total_steps, 14);
        config.export_gguf = Some("q8_0".into());
        assert_eq!(Runner::new(&config, &options).total_steps, 20);
        config.export_gguf = None;
        config.merge.enabled = false;
        assert_eq!(Runner::new(&config, &options).total_steps, 3 + 4 + 1);
        let runner = Runner::new(&config, &options);
        runner.step("a");
        runner.step("b");
        assert_eq!(runner.steps.get(), 2);
    }
}
