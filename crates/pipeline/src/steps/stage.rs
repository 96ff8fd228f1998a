//! A training stage: its data slice, `temper-train`'s run (resumed when it was cut off), the
//! finished model in `OUT/stages/NAME/model/`, and the stage's losses and metrics.

use std::path::{Path, PathBuf};
use std::time::Instant;

use temper_formats::write_atomic;

use super::{
    MARKER, ModelRef, PENDING, Runner, count_rows, create_dir, read_marker, remove_dir,
    write_marker,
};
use crate::config::StageSpec;
use crate::fingerprint::Fingerprint;
use crate::report::StageResult;
use crate::{PipelineError, Result};

impl Runner<'_> {
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

    /// Train `stage` from `input` (or reuse its finished run): its model, its result and,
    /// with `sweep_epochs`, the models after each earlier epoch (`epochs/epoch-E/`, HF
    /// directories converted from the epoch checkpoints), epoch 1 first.
    pub(crate) fn stage(
        &self,
        stage: &StageSpec,
        input: &ModelRef,
        variant: &str,
    ) -> Result<(ModelRef, StageResult, Vec<ModelRef>)> {
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
        let epochs = stage.swept_epochs()?.unwrap_or(1);
        let epoch_models: Vec<ModelRef> = (1..epochs)
            .map(|e| ModelRef {
                dir: dir.join("epochs").join(format!("epoch-{e}")),
                fingerprint: Fingerprint::new("epoch")
                    .str("stage", &fingerprint)
                    .str("epoch", &e.to_string())
                    .finish(),
            })
            .collect();
        if let Some(mut done) = read_marker::<StageResult>(&dir.join(MARKER), &fingerprint)
            && model_dir.join("config.json").exists()
            && epoch_models
                .iter()
                .all(|m| m.dir.join("config.json").exists())
        {
            self.step(&format!("stage {}: up to date, skipped", stage.name));
            done.skipped = true;
            return Ok((model, done, epoch_models));
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
        // The epoch checkpoints (all but the last, the stage's own model) as HF directories.
        let checkpoints = temper_train::checkpoint::list_checkpoints(&model_dir);
        if checkpoints.len() < epoch_models.len() + 1 {
            return Err(PipelineError::config(
                &format!("stage `{}`", stage.name),
                format!(
                    "`sweep_epochs`: {} checkpoints in {} for {epochs} epochs",
                    checkpoints.len(),
                    model_dir.display()
                ),
            ));
        }
        for ((_, checkpoint), model) in checkpoints.iter().zip(&epoch_models) {
            remove_dir(&model.dir)?;
            temper_train::save_checkpoint_as_model(&stage_config, checkpoint, &model.dir).map_err(
                |source| PipelineError::Train {
                    stage: stage.name.clone(),
                    source: Box::new(source),
                },
            )?;
        }
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
            epochs: stage.swept_epochs()?,
            final_loss: summary.final_loss,
            eval_loss: summary.eval_loss,
            losses: losses("loss"),
            eval_losses: losses("eval_loss"),
            metrics: other_metrics(&summary.log_history),
        };
        write_marker(&dir.join(MARKER), &fingerprint, &result)?;
        let _ = std::fs::remove_file(dir.join(PENDING));
        Ok((model, result, epoch_models))
    }
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
