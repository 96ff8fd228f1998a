//! Training configuration: [`TrainerConfig`] (the hyper-parameters, HF `TrainingArguments` /
//! TRL names and defaults where they exist) and [`StageConfig`] (model, data, reference and
//! output of one training stage), both loadable from TOML.
//!
//! HF defaults are spelled out because burn's differ: AdamW ε 1e-8 (burn 1e-5), weight decay
//! 0.0 (burn 1e-4), and `max_grad_norm` is a *global* norm (burn clips per tensor).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use temper_lora::{LoraConfig, LoraConfigExt, TargetModules};
use temper_objectives::data::PackingStrategy;
use temper_objectives::{ObjectiveConfig, RowKind};

use crate::loss_scale::LossScaleConfig;
use crate::{Result, TrainError};

/// LR schedule after warm-up (HF `lr_scheduler_type`); every one warms up linearly first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// HF `constant_with_warmup` (`constant` when there is no warm-up).
    Constant,
    /// HF `linear` (the HF default): decays to 0 at the last step.
    #[default]
    Linear,
    /// HF `cosine` with half a cycle: decays to 0 at the last step.
    Cosine,
}

/// When the trainer writes intermediate checkpoints (HF `TrainingArguments.save_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveStrategy {
    /// No intermediate checkpoint (the final one is still written).
    No,
    /// Every `save_steps` optimizer steps (none when `save_steps` is unset).
    #[default]
    Steps,
    /// After the optimizer step that completes each epoch, as HF does: the checkpoint of
    /// epoch `e` holds the model trained on `e` whole passes over the rows (the last epoch's
    /// is the final checkpoint).
    Epoch,
}

impl SaveStrategy {
    /// The name as written in a config (`"no"`, `"steps"`, `"epoch"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::No => "no",
            Self::Steps => "steps",
            Self::Epoch => "epoch",
        }
    }
}

/// Hyper-parameters of a run. Defaults are HF `TrainingArguments`' unless noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// The objective and its hyper-parameters, by name (`[trainer.objective]` with `type =
    /// "sft"` and the objective's own keys; see [`ObjectiveConfig`]). [`crate::Trainer::new`]
    /// builds the objective from it; [`crate::Trainer::with_objective`] takes any other.
    pub objective: ObjectiveConfig,
    /// Peak learning rate. Default 5e-5.
    pub learning_rate: f64,
    /// Epochs over the training rows (fractions allowed). Ignored when `max_steps` is set.
    /// Default 3.
    pub num_train_epochs: f64,
    /// Total optimizer steps; overrides `num_train_epochs`.
    pub max_steps: Option<usize>,
    /// Rows per micro-batch (preference objectives: pairs). Default 8. TRL's name
    /// `per_device_train_batch_size` is accepted too.
    #[serde(alias = "per_device_train_batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step. Default 1.
    pub gradient_accumulation_steps: usize,
    /// Truncate sequences to this many tokens (TRL default 1024). `None`: no truncation.
    pub max_length: Option<usize>,
    /// Seed of the data order. Default 42.
    pub seed: u64,
    /// Warm-up steps; when 0, `warmup_ratio` of the total steps (rounded up). Default 0.
    pub warmup_steps: usize,
    /// Warm-up as a fraction of the total steps. Default 0.
    pub warmup_ratio: f64,
    /// Schedule after warm-up. Default linear.
    pub lr_scheduler_type: ScheduleKind,
    /// Decoupled weight decay. Default 0.0 (burn's default is 1e-4).
    pub weight_decay: f64,
    /// AdamW β₁. Default 0.9.
    pub adam_beta1: f64,
    /// AdamW β₂. Default 0.999.
    pub adam_beta2: f64,
    /// AdamW ε. Default 1e-8 (burn's default is 1e-5).
    pub adam_epsilon: f64,
    /// Global gradient-norm clip; `None` or 0 disables. Default 1.0.
    pub max_grad_norm: Option<f64>,
    /// Log metrics every N optimizer steps. Default 10 (HF: 500).
    pub logging_steps: usize,
    /// Evaluate on the held-out rows every N steps (and at the end). `None`: only at the end.
    pub eval_steps: Option<usize>,
    /// When to write intermediate checkpoints (HF `save_strategy`): `"steps"` every
    /// `save_steps`, `"epoch"` at the end of each epoch, `"no"` none. Temper always writes a
    /// final checkpoint (its resume point), whatever the strategy. Default `"steps"`.
    pub save_strategy: SaveStrategy,
    /// Checkpoint every N steps (and always at the end). `None`: only at the end. Only with
    /// `save_strategy = "steps"`.
    pub save_steps: Option<usize>,
    /// Keep at most this many step checkpoints (oldest removed). `None`: keep all.
    pub save_total_limit: Option<usize>,
    /// Where checkpoints, metrics, the plot and the final model go.
    pub output_dir: PathBuf,
    /// Vocabulary tile of the chunked log-probs (no `[batch, seq, vocab]` logits). Default 4096.
    pub vocab_tile: usize,
    /// f16-mixed only: the dynamic loss scale (`torch.amp.GradScaler`'s settings).
    pub loss_scale: LossScaleConfig,
    /// Gradient checkpointing (HF's name): burn's balanced strategy recomputes memory-bound
    /// activations in the backward pass instead of keeping them. Same losses and gradients,
    /// less activation memory, more compute. Default false.
    pub gradient_checkpointing: bool,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            objective: ObjectiveConfig::default(),
            learning_rate: 5e-5,
            num_train_epochs: 3.0,
            max_steps: None,
            batch_size: 8,
            gradient_accumulation_steps: 1,
            max_length: Some(1024),
            seed: 42,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            lr_scheduler_type: ScheduleKind::Linear,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: Some(1.0),
            logging_steps: 10,
            eval_steps: None,
            save_strategy: SaveStrategy::Steps,
            save_steps: None,
            save_total_limit: None,
            output_dir: PathBuf::from("output"),
            vocab_tile: 4096,
            loss_scale: LossScaleConfig::default(),
            gradient_checkpointing: false,
        }
    }
}

/// The most optimizer steps a run may have (2^40 ≈ 1.1·10¹²: decades at a millisecond a
/// step). It keeps `--epochs 1e300` from saturating the step count to `usize::MAX` and a
/// trainer state's counters far from overflow.
pub const MAX_STEPS: usize = 1 << 40;

fn bad(msg: impl Into<String>) -> TrainError {
    TrainError::Config(msg.into())
}

impl TrainerConfig {
    /// Checks ranges and the objective's hyper-parameters, so a bad value fails before the
    /// model is loaded.
    ///
    /// # Errors
    /// The first invalid key.
    pub fn validate(&self) -> Result<()> {
        self.validate_hyperparameters()?;
        Ok(self.objective.validate()?)
    }

    /// [`validate`](Self::validate) without the objective (for a trainer given its objective
    /// separately).
    ///
    /// # Errors
    /// The first invalid key.
    pub fn validate_hyperparameters(&self) -> Result<()> {
        self.loss_scale.validate().map_err(bad)?;
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return Err(bad(format!(
                "learning_rate {} is out of range (must be a finite number ≥ 0)",
                self.learning_rate
            )));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size 0 is out of range (must be ≥ 1)"));
        }
        if self.gradient_accumulation_steps == 0 {
            return Err(bad(
                "gradient_accumulation_steps 0 is out of range (must be ≥ 1)",
            ));
        }
        // Each epoch has at least one batch, so more epochs than MAX_STEPS × accumulation
        // cannot fit; the exact count is checked once the data is known (Trainer::new).
        let max_epochs = MAX_STEPS as f64 * self.gradient_accumulation_steps as f64;
        if self.max_steps.is_none()
            && !(self.num_train_epochs.is_finite()
                && self.num_train_epochs > 0.0
                && self.num_train_epochs <= max_epochs)
        {
            return Err(bad(format!(
                "num_train_epochs {:?} is out of range (must be in (0, {max_epochs:?}])",
                self.num_train_epochs
            )));
        }
        if let Some(n) = self.max_steps
            && !(1..=MAX_STEPS).contains(&n)
        {
            return Err(bad(format!(
                "max_steps {n} is out of range (must be in [1, {MAX_STEPS}])"
            )));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(bad(format!(
                "warmup_ratio {} is out of range (must be in [0, 1])",
                self.warmup_ratio
            )));
        }
        for (name, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(format!("{name} must be in [0, 1), got {v}")));
            }
        }
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0) {
            return Err(bad("adam_epsilon must be positive"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad("weight_decay must be ≥ 0"));
        }
        if let Some(n) = self.max_grad_norm
            && !(n.is_finite() && n >= 0.0)
        {
            return Err(bad(format!("max_grad_norm must be ≥ 0, got {n}")));
        }
        if self.logging_steps == 0 || self.eval_steps == Some(0) || self.save_steps == Some(0) {
            return Err(bad(
                "logging_steps, eval_steps and save_steps must be positive",
            ));
        }
        if self.save_strategy != SaveStrategy::Steps && self.save_steps.is_some() {
            return Err(bad(format!(
                "save_steps is set but save_strategy is \"{}\" (save_steps needs \"steps\")",
                self.save_strategy.name()
            )));
        }
        if self.vocab_tile == 0 {
            return Err(bad("vocab_tile must be positive"));
        }
        if self.max_length.is_some_and(|n| n < 2) {
            return Err(bad("max_length must be at least 2"));
        }
        Ok(())
    }

    /// The clip threshold, `None` when clipping is off.
    pub fn clip_norm(&self) -> Option<f64> {
        self.max_grad_norm.filter(|n| *n > 0.0)
    }
}

/// Where the reference log-probs of DPO/KTO come from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReferenceConfig {
    /// A frozen copy of the initial policy (TRL's default), kept without autodiff.
    #[default]
    InitialPolicy,
    /// A separate frozen model (HF directory or GGUF).
    Model { path: PathBuf },
    /// Reference log-probs precomputed by `temper_objectives::precompute_reference`
    /// (DPO family only; the cache must cover the training rows in file order).
    Cache { path: PathBuf },
}

/// The `[lora]` table of a stage: train a LoRA adapter (PEFT semantics) instead of every
/// weight.
///
/// ```toml
/// [lora]
/// r = 16
/// lora_alpha = 32            # default 2·r
/// lora_dropout = 0.05        # default 0
/// target_modules = "all-linear"   # default; or ["q_proj", "v_proj"], or a regex string
/// use_rslora = false
/// quantize_base = "nf4"      # QLoRA: the frozen base kept in nf4 (or q8_0); default dense
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank.
    pub r: usize,
    /// Scale numerator (`lora_alpha / r`, or `/ √r` with rsLoRA). Default `2·r`.
    #[serde(default)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapter input while training. Default 0 (with dropout, the adapter
    /// forward draws from the backend RNG, so a resumed run is no longer bit-identical).
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which projections get an adapter. Default `all-linear` (the seven projections).
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// QLoRA: keep the frozen base projections block-quantized (`nf4` as bitsandbytes'
    /// double-quantized NF4, `q8_0`, or `gguf`: a GGUF model's own blocks as stored); the
    /// embedding, norms and LM head stay dense.
    #[serde(default)]
    pub quantize_base: Option<String>,
}

impl LoraSettings {
    /// Rank `r`, every other setting at its default.
    pub fn new(r: usize) -> Self {
        Self {
            r,
            lora_alpha: None,
            lora_dropout: 0.0,
            target_modules: None,
            use_rslora: false,
            quantize_base: None,
        }
    }

    /// The base's encoding under QLoRA, parsed (`None`: a dense base).
    ///
    /// # Errors
    /// An encoding Temper cannot quantize to, named with the ones it can.
    pub fn base_quantization(&self) -> Result<Option<BaseQuantization>> {
        let Some(name) = &self.quantize_base else {
            return Ok(None);
        };
        if name.eq_ignore_ascii_case("gguf") {
            return Ok(Some(BaseQuantization::Gguf));
        }
        match name.parse::<temper_lora::QuantType>() {
            Ok(t) if t.can_quantize() => Ok(Some(BaseQuantization::Quantize(t))),
            _ => Err(bad(format!(
                "[lora] quantize_base = \"{name}\": expected \"nf4\", \"q8_0\" or \"gguf\""
            ))),
        }
    }

    /// `lora_alpha`, defaulting to `2·r`.
    pub fn alpha(&self) -> f64 {
        self.lora_alpha.unwrap_or(2.0 * self.r as f64)
    }

    /// The PEFT config these settings describe.
    pub fn to_lora_config(&self) -> LoraConfig {
        LoraConfig::new(self.r, self.alpha())
            .with_lora_dropout(self.lora_dropout)
            .with_target_modules(
                self.target_modules
                    .clone()
                    .unwrap_or_else(TargetModules::all_linear),
            )
            .with_use_rslora(self.use_rslora)
    }
}

/// How a QLoRA stage holds its frozen base ([`LoraSettings::quantize_base`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseQuantization {
    /// Quantized on load to this encoding.
    Quantize(temper_lora::QuantType),
    /// A GGUF model's projections in the file's own blocks.
    Gguf,
}

/// One training stage: what to load, what to train on, where to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// HF model directory or `.gguf` file.
    pub model: PathBuf,
    /// Training rows (JSONL; the row type follows the objective).
    pub train_file: PathBuf,
    /// Held-out rows for the evaluation loss.
    #[serde(default)]
    pub eval_file: Option<PathBuf>,
    /// The reference of DPO/KTO.
    #[serde(default)]
    pub reference: ReferenceConfig,
    /// `cpu`, `wgpu`, `wgpu:N`, `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32`, `bf16-mixed`, `f16-mixed`, `bf16`, `f16` (see `temper_backend::TrainPrecision`).
    #[serde(default = "default_precision")]
    pub precision: String,
    /// Resume from the newest checkpoint in `trainer.output_dir` when there is one.
    #[serde(default)]
    pub resume: bool,
    /// Write into a `trainer.output_dir` that is not empty without resuming (`--overwrite`):
    /// its model files are replaced. Without it (and without `resume`) such a directory is
    /// refused before anything is loaded, so an earlier run's model is not lost by mistake.
    #[serde(default)]
    pub overwrite: bool,
    /// SFT: train on completion tokens only (TRL `completion_only_loss`). Default true.
    #[serde(default = "default_true")]
    pub completion_only_loss: bool,
    /// SFT: pack rows into `trainer.max_length` blocks (TRL `packing`; the eval file is packed
    /// too, TRL's `eval_packing` default). Default false. CPT
    /// documents are always packed (`wrapped`, EOS between documents) whatever this says;
    /// preference and KTO objectives refuse `true`.
    #[serde(default)]
    pub packing: bool,
    /// SFT with `packing`: `"bfd"` (TRL's default: best-fit-decreasing, rows kept whole and
    /// apart, too-long rows truncated), `"bfd_split"` (too-long rows split into pieces) or
    /// `"wrapped"` (rows concatenated and cut every `max_length` tokens, attention across
    /// rows). CPT accepts only `"wrapped"`; preference and KTO objectives refuse the key.
    #[serde(default)]
    pub packing_strategy: Option<PackingStrategy>,
    /// The hyper-parameters.
    #[serde(default)]
    pub trainer: TrainerConfig,
    /// Train a LoRA adapter instead of every weight (`[lora]`). DPO/KTO with the default
    /// reference then use the base model with adapters disabled (no second copy).
    #[serde(default)]
    pub lora: Option<LoraSettings>,
    /// LoRA only. `false` (default): the adapter is merged and the output directory is an HF
    /// model directory `temper generate` loads. `true`: the output directory holds the PEFT
    /// adapter (`adapter_config.json` + `adapter_model.safetensors`) and the tokenizer files.
    #[serde(default)]
    pub save_adapter_only: bool,
    /// Refuse to start (before loading the model) when the memory estimate printed at the
    /// start exceeds the memory available (CPU devices). Default true; `false` only warns.
    #[serde(default = "default_true")]
    pub memory_check: bool,
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

impl StageConfig {
    /// Parses a TOML stage file; relative paths in it are resolved against its directory.
    ///
    /// # Errors
    /// Unreadable file, TOML syntax, unknown keys, invalid values.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text =
            temper_formats::read_regular_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let mut stage = Self::from_toml_str(&text).map_err(|e| match e {
            TrainError::Config(message) => TrainError::Toml {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        if let Some(base) = path.parent() {
            let fix = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            };
            fix(&mut stage.model);
            fix(&mut stage.train_file);
            if let Some(p) = stage.eval_file.as_mut() {
                fix(p);
            }
            match &mut stage.reference {
                ReferenceConfig::Model { path } | ReferenceConfig::Cache { path } => fix(path),
                ReferenceConfig::InitialPolicy => {}
            }
            fix(&mut stage.trainer.output_dir);
        }
        Ok(stage)
    }

    /// Parses TOML text (paths are kept as written).
    ///
    /// # Errors
    /// TOML syntax, unknown keys, invalid values.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let stage: Self = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        stage.validate()?;
        Ok(stage)
    }

    /// The SFT packing strategy when rows are packed (`packing = true` with an SFT objective).
    pub fn sft_packing(&self) -> Option<PackingStrategy> {
        let sft = self.trainer.objective.build().row_kind() == RowKind::Sequences;
        (self.packing && sft).then(|| self.packing_strategy.unwrap_or_default())
    }

    /// Checks `packing` / `packing_strategy` against the objective's rows.
    fn validate_packing(&self) -> Result<()> {
        let kind = self.trainer.objective.build().row_kind();
        let name = self.trainer.objective.name();
        match kind {
            RowKind::Sequences => {
                if self.packing && self.trainer.max_length.is_none() {
                    return Err(bad(
                        "packing = true needs trainer.max_length (the block length)",
                    ));
                }
            }
            RowKind::Documents => {
                if let Some(s) = self
                    .packing_strategy
                    .filter(|&s| s != PackingStrategy::Wrapped)
                {
                    return Err(bad(format!(
                        "packing_strategy = \"{s}\": objective `{name}` always packs its \
                         documents \"wrapped\" (EOS between documents)"
                    )));
                }
            }
            RowKind::PreferencePairs | RowKind::Unpaired => {
                let key = if self.packing {
                    "packing = true"
                } else if self.packing_strategy.is_some() {
                    "packing_strategy"
                } else {
                    return Ok(());
                };
                return Err(bad(format!(
                    "{key}: objective `{name}` trains on {}, which are not packed (packing \
                     applies to SFT)",
                    kind.name()
                )));
            }
        }
        Ok(())
    }

    /// Checks the trainer hyper-parameters, the packing keys and the LoRA settings.
    ///
    /// # Errors
    /// The first invalid value.
    pub fn validate(&self) -> Result<()> {
        self.trainer.validate()?;
        self.validate_packing()?;
        self.precision
            .parse::<temper_backend::TrainPrecision>()
            .map_err(|e| bad(format!("precision: {e}")))?;
        match &self.lora {
            Some(l) => {
                l.to_lora_config()
                    .validate()
                    .map_err(|e| bad(format!("[lora]: {e}")))?;
                l.base_quantization()?;
            }
            None if self.save_adapter_only => {
                return Err(bad("save_adapter_only needs a [lora] table"));
            }
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trl_batch_size_name_is_accepted() {
        let stage = StageConfig::from_toml_str(
            "model = \"m\"\ntrain_file = \"d.jsonl\"\n[trainer]\noutput_dir = \"o\"\n\
             per_device_train_batch_size = 4\n",
        );
        assert_eq!(stage.map(|s| s.trainer.batch_size).ok(), Some(4));
        // Both names at once is a duplicate, not a silent choice.
        let both = StageConfig::from_toml_str(
            "model = \"m\"\ntrain_file = \"d.jsonl\"\n[trainer]\noutput_dir = \"o\"\n\
             batch_size = 2\nper_device_train_batch_size = 4\n",
        );
        assert!(both.is_err());
    }
}
