//! The run's steps, one kind per file, each writing into its own directory under the output
//! directory and finishing with a marker (`pipeline.json`) holding its fingerprint:
//!
//! * `instruct`: the instruct parent as an HF directory;
//! * `stage`: a training stage (and, with `sweep_epochs`, each epoch's model);
//! * `merge`: a stage's result merged with the instruct parent under one recipe;
//! * `eval`: a variant benchmarked under one protocol.
//!
//! [`Runner`] holds what they share: the config, the output directory and the step count
//! ("step n/N") a log without a terminal is read by.

mod eval;
mod instruct;
mod merge;
mod stage;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use temper_formats::write_atomic;

use crate::config::PipelineConfig;
use crate::report::VariantKind;
use crate::run::PipelineOptions;
use crate::{PipelineError, Result};

pub(crate) const MARKER: &str = "pipeline.json";
pub(crate) const PENDING: &str = "pipeline.pending.json";

/// A model directory and the fingerprint of how it was made.
#[derive(Debug, Clone)]
pub(crate) struct ModelRef {
    pub(crate) dir: PathBuf,
    pub(crate) fingerprint: String,
}

/// A model to benchmark.
#[derive(Debug, Clone)]
pub(crate) struct Variant {
    pub(crate) name: String,
    pub(crate) kind: VariantKind,
    pub(crate) model: ModelRef,
    /// Merged variants: (fine-tuned parent, instruct parent).
    pub(crate) parents: Option<(String, String)>,
    /// The stage that trained it (trained and merged variants).
    pub(crate) stage: Option<String>,
    /// With the stage's `sweep_epochs`: the epoch its trained model is from.
    pub(crate) epoch: Option<usize>,
    /// Merged variants: the recipe's label.
    pub(crate) recipe: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker<T> {
    fingerprint: String,
    #[serde(flatten)]
    data: T,
}

pub(crate) fn read_marker<T: DeserializeOwned>(path: &Path, fingerprint: &str) -> Option<T> {
    let text = temper_formats::read_regular_to_string(path).ok()?;
    let marker: Marker<T> = serde_json::from_str(&text).ok()?;
    (marker.fingerprint == fingerprint).then_some(marker.data)
}

pub(crate) fn write_marker<T: Serialize>(path: &Path, fingerprint: &str, data: T) -> Result<()> {
    let marker = Marker {
        fingerprint: fingerprint.to_string(),
        data,
    };
    let text = serde_json::to_string_pretty(&marker)
        .map_err(|e| PipelineError::Report(format!("{}: {e}", path.display())))?;
    Ok(write_atomic(path, text.as_bytes())?)
}

pub(crate) fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| PipelineError::io(path, e))
}

pub(crate) fn remove_dir(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| PipelineError::io(path, e))?;
    }
    Ok(())
}

/// A variant name as a directory name.
pub(crate) fn slug(name: &str) -> String {
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

pub(crate) struct Runner<'a> {
    pub(crate) config: &'a PipelineConfig,
    pub(crate) options: &'a PipelineOptions,
    /// Steps begun so far (trainings, merges, GGUF exports, evaluations, the report), and
    /// their number, for "step n/N" lines a log without a terminal can be read by.
    steps: std::cell::Cell<usize>,
    total_steps: usize,
}

impl<'a> Runner<'a> {
    /// The step count: per stage its training, each recipe's merge, and with `sweep_epochs`
    /// each earlier epoch's model merged under the main recipe; a GGUF export of every
    /// trained and merged variant when asked; an evaluation of every variant under each
    /// protocol; the report. (The config is validated: a recipe error counts as no merge.)
    pub(crate) fn new(config: &'a PipelineConfig, options: &'a PipelineOptions) -> Self {
        let stages = config.stages.len();
        let (mut merges, mut epoch_models) = (0, 0);
        for stage in &config.stages {
            let recipes = config.merge.recipes_for(stage).map_or(0, |r| r.len());
            merges += recipes;
            let earlier = stage.swept_epochs().ok().flatten().map_or(0, |e| e - 1);
            epoch_models += earlier;
            if config.merge.enabled && stage.merge {
                merges += earlier;
            }
        }
        let variants = stages + epoch_models + merges;
        let exports = match config.export_gguf {
            Some(_) => variants,
            None => 0,
        };
        let evals = (1 + variants) * config.benchmark.protocols().len();
        Self {
            config,
            options,
            steps: std::cell::Cell::new(0),
            total_steps: stages + merges + exports + evals + 1,
        }
    }

    pub(crate) fn log(&self, message: &str) {
        if self.options.progress {
            tracing::info!("[pipeline] {message}");
        }
    }

    /// Begin the next step of the run: logged as `step n/N: message`.
    pub(crate) fn step(&self, message: &str) {
        let n = self.steps.get() + 1;
        self.steps.set(n);
        self.log(&format!("step {n}/{}: {message}", self.total_steps));
    }

    /// At the last step: the count announced ("step n/N") is the count taken. Debug builds
    /// (the tests) fail on a mismatch; a release run only says so.
    pub(crate) fn check_step_count(&self) {
        let taken = self.steps.get();
        debug_assert_eq!(taken, self.total_steps, "steps taken vs announced");
        if taken != self.total_steps {
            tracing::warn!(
                "[pipeline] {taken} steps taken, {} announced",
                self.total_steps
            );
        }
    }

    pub(crate) fn out(&self) -> &Path {
        &self.options.out_dir
    }
}

pub(crate) fn count_rows(path: &Path) -> Result<usize> {
    let text =
        temper_formats::read_regular_to_string(path).map_err(|e| PipelineError::io(path, e))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

pub(crate) fn num_hidden_layers(dir: &Path) -> Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use std::path::Path;

    /// The default study's steps: 3 trainings, 3 merges, 7 evaluations, the report; with a
    /// GGUF export of each of the 6 trained and merged variants, 6 more. The sweeps add
    /// theirs.
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
        // The paper preset: 3 trainings; merges under the main recipe of the 3 stages and the
        // 2 earlier CPT epochs, and A–G of the ORPO result (12); 18 variants (Instruct, 3
        // stages, 2 epochs, 12 merges) under 2 protocols; the report.
        let paper = PipelineConfig::preset(Preset::Paper, Path::new(".")).expect("paper preset");
        assert_eq!(
            Runner::new(&paper, &options).total_steps,
            3 + 12 + 18 * 2 + 1
        );
        let runner = Runner::new(&config, &options);
        runner.step("a");
        runner.step("b");
        assert_eq!(runner.steps.get(), 2);
    }
}
