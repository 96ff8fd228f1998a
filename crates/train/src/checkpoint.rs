//! Checkpoints: `output_dir/checkpoint-<step>/` with
//! * `model.safetensors` — the weights (HF names, the model's own float dtype, so f32 and
//!   bf16 round-trip exactly);
//! * `optimizer.bpk` — burn's AdamW state record (burnpack), keyed by parameter ids that the
//!   trainer assigns deterministically (see [`assign_param_ids`]), so a reloaded model and
//!   the saved moments match up;
//! * `trainer_state.json` — step, data position, seed, schedule, log history;
//! * whatever the fine-tuning method adds ([`FineTuning::save_checkpoint_extra`]): for LoRA the
//!   adapter as `adapter_config.json` + `adapter_model.safetensors`. When training changes no
//!   base weight (LoRA without `modules_to_save`), `model.safetensors` is replaced by
//!   `base_weights.json`, a fingerprint of the frozen weights: the checkpoint is then the size
//!   of the adapter, and a resume takes the base from the model it resumes into (after
//!   checking the fingerprint) and re-injects the adapter ([`FineTuning::restore_checkpoint`])
//!   before parameter ids are assigned, so the optimizer moments line up with the adapter
//!   matrices again. Checkpoints with `model.safetensors` load as before.
//!
//! A checkpoint is written into a temporary sibling directory and renamed into place
//! (`temper_formats::StagingDir`), so a crash leaves either the previous checkpoints or the
//! complete new one; directories without `trainer_state.json` are never picked for resuming.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use temper_backend::FloatPrecision;
use temper_formats::StagingDir;
use temper_llm_arch::LlamaForCausalLM;
use temper_llm_arch::checkpoint::{SafetensorsSource, load_weights, save_safetensors};

use crate::config::MAX_STEPS;
use crate::finetune::FineTuning;
use crate::loss_scale::LossScaleState;
use crate::metrics::LogRecord;
use crate::{Result, TrainError};

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// burn's optimizer record.
pub const OPTIMIZER_FILE: &str = "optimizer.bpk";
/// [`TrainerState`] as JSON.
pub const STATE_FILE: &str = "trainer_state.json";
/// Fingerprint of the frozen weights, instead of [`MODEL_FILE`] when training changes none.
pub const BASE_FINGERPRINT_FILE: &str = "base_weights.json";

/// FNV-1a over every weight's name, shape and f32 bytes (HF order): tells two sets of frozen
/// weights apart without storing them.
fn weights_fingerprint(model: &LlamaForCausalLM) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    // One tensor at a time: an 8B base is never copied whole to the host.
    temper_llm_arch::checkpoint::for_each_hf_tensor_of(model, |name, t| {
        eat(name.as_bytes());
        for d in &t.shape {
            eat(&(*d as u64).to_le_bytes());
        }
        for v in &t.data {
            eat(&v.to_le_bytes());
        }
    });
    format!("{h:016x}")
}

/// Everything besides weights and optimizer moments that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Total optimizer steps of the run.
    pub total_steps: usize,
    /// Index of the next micro-batch of the data stream (the data position).
    pub next_micro_batch: usize,
    /// Seed of the data order (the only RNG the trainer draws from: the order of epoch `e` is
    /// a function of `seed + e`).
    pub seed: u64,
    /// Objective name, checked on resume.
    pub objective: String,
    /// Attention-masked tokens seen so far (TRL's cumulative `num_tokens`).
    pub num_tokens: f64,
    /// Every logged row so far (train and eval).
    pub log_history: Vec<LogRecord>,
    /// The run's precision (`f32`, `bf16-mixed`, ...), checked on resume. Absent in
    /// checkpoints written before it was recorded (then f32).
    #[serde(default)]
    pub precision: Option<String>,
    /// The f16-mixed loss scaler's state.
    #[serde(default)]
    pub loss_scale: Option<LossScaleState>,
}

impl TrainerState {
    /// Check the counters of a state read from `dir`: a hand-edited or corrupted
    /// `trainer_state.json` (a step of 2^63, a step past the run's end) would otherwise resume
    /// into a run that silently does nothing or overflows its data position.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file, the field and its allowed range.
    pub fn validate(&self, dir: &Path) -> Result<()> {
        let bad = |field: &str, value: String, range: String| {
            Err(ckpt_err(
                dir,
                format!("{STATE_FILE} `{field}` {value} is out of range (must be {range})"),
            ))
        };
        if self.total_steps == 0 || self.total_steps > MAX_STEPS {
            return bad(
                "total_steps",
                self.total_steps.to_string(),
                format!("in [1, {MAX_STEPS}]"),
            );
        }
        if self.step > self.total_steps {
            return bad(
                "step",
                self.step.to_string(),
                format!("≤ total_steps {}", self.total_steps),
            );
        }
        if !(self.num_tokens.is_finite() && self.num_tokens >= 0.0) {
            return bad(
                "num_tokens",
                self.num_tokens.to_string(),
                "a finite number ≥ 0".into(),
            );
        }
        Ok(())
    }
}

/// Gives every float parameter the id `index in visit order`: fresh and reloaded models of
/// the same architecture then share ids, which is what burn's optimizer record is keyed by.
pub fn assign_param_ids<M: Module>(module: M) -> M {
    struct Ids(u64);
    impl ModuleMapper for Ids {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (_, value, mapper) = param.consume();
            let id = ParamId::from(self.0);
            self.0 += 1;
            Param::from_mapped_value(id, value, mapper)
        }
    }
    module.map(&mut Ids(0))
}

/// The directory name of the checkpoint after `step` steps.
pub fn checkpoint_dir(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join(format!("checkpoint-{step}"))
}

/// The complete checkpoints in `output_dir`, oldest first.
pub fn list_checkpoints(output_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            let path = e.path();
            path.join(STATE_FILE).is_file().then_some((step, path))
        })
        .collect();
    found.sort_by_key(|(s, _)| *s);
    found
}

/// The newest complete checkpoint in `output_dir`.
pub fn latest_checkpoint(output_dir: &Path) -> Option<PathBuf> {
    list_checkpoints(output_dir).pop().map(|(_, p)| p)
}

fn precision_of(model: &LlamaForCausalLM) -> FloatPrecision {
    match model.model.embed_tokens.weight.val().dtype() {
        DType::BF16 => FloatPrecision::BF16,
        DType::F16 => FloatPrecision::F16,
        _ => FloatPrecision::F32,
    }
}

fn ckpt_err(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes a checkpoint atomically and returns its directory.
///
/// # Errors
/// I/O or serialisation failures (the temporary directory is removed).
pub fn save_checkpoint(
    output_dir: &Path,
    model: &LlamaForCausalLM,
    optimizer: &burn::optim::ModuleOptimizer,
    state: &TrainerState,
    fine_tuning: &dyn FineTuning,
) -> Result<PathBuf> {
    let final_dir = checkpoint_dir(output_dir, state.step);
    // Dropped on error, which removes the temporary directory; a checkpoint of the same step
    // (an earlier, interrupted run) is replaced.
    let staging = StagingDir::create(&final_dir, true)?;
    let tmp = staging.path();
    if fine_tuning.checkpoint_needs_weights() {
        save_safetensors(model, &tmp.join(MODEL_FILE), precision_of(model))?;
    } else {
        let base = fine_tuning.frozen_base(model.clone());
        let path = tmp.join(BASE_FINGERPRINT_FILE);
        let json = serde_json::json!({ "fnv1a64": weights_fingerprint(&base) });
        std::fs::write(&path, json.to_string()).map_err(|e| TrainError::io(&path, e))?;
    }
    fine_tuning.save_checkpoint_extra(model, tmp)?;
    let opt_path = tmp.join(OPTIMIZER_FILE);
    let bytes = optimizer
        .into_bytes()
        .map_err(|e| ckpt_err(&opt_path, format!("serialising the optimizer: {e:?}")))?;
    std::fs::write(&opt_path, &bytes[..]).map_err(|e| TrainError::io(&opt_path, e))?;
    let state_path = tmp.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(state).map_err(|source| TrainError::Json {
        path: state_path.clone(),
        source,
    })?;
    std::fs::write(&state_path, json).map_err(|e| TrainError::io(&state_path, e))?;
    Ok(staging.commit()?)
}

/// Removes the oldest checkpoints beyond `limit`.
pub(crate) fn prune_checkpoints(output_dir: &Path, limit: usize) -> Result<()> {
    let all = list_checkpoints(output_dir);
    let excess = all.len().saturating_sub(limit.max(1));
    for (_, path) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&path).map_err(|e| TrainError::io(&path, e))?;
    }
    Ok(())
}

/// The [`TrainerState`] of the checkpoint in `dir` alone (cheap: checks before loading weights).
///
/// # Errors
/// A missing or malformed `trainer_state.json`.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let state_path = dir.join(STATE_FILE);
    let text = temper_formats::read_regular_to_string(&state_path)
        .map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|source| TrainError::Json {
        path: state_path,
        source,
    })?;
    state.validate(dir)?;
    Ok(state)
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// The weights, with the trainer's parameter ids.
    pub model: LlamaForCausalLM,
    /// The optimizer state as bytes for `ModuleOptimizer::from_bytes`.
    pub optimizer: Vec<u8>,
    /// The trainer state.
    pub state: TrainerState,
}

/// Loads the checkpoint in `dir` for a model shaped like `like` on its device and dtype; the
/// fine-tuning method rebuilds its extra structure (LoRA adapters) from the checkpoint.
///
/// # Errors
/// Missing files, weights that do not fit the model, a malformed state.
pub fn load_checkpoint(
    dir: &Path,
    like: &LlamaForCausalLM,
    fine_tuning: &dyn FineTuning,
) -> Result<LoadedCheckpoint> {
    let state = read_state(dir)?;
    let model = load_checkpoint_model(dir, like, fine_tuning)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let optimizer =
        temper_formats::read_regular(&opt_path).map_err(|e| TrainError::io(&opt_path, e))?;
    Ok(LoadedCheckpoint {
        model,
        optimizer,
        state,
    })
}

/// The model of the checkpoint in `dir` alone (no optimizer state): its weights, or `like`'s
/// frozen base with the fine-tuning's extra files (a LoRA adapter) when it holds no weights.
///
/// # Errors
/// Missing files, weights that do not fit the model, a base other than the one trained.
pub fn load_checkpoint_model(
    dir: &Path,
    like: &LlamaForCausalLM,
    fine_tuning: &dyn FineTuning,
) -> Result<LlamaForCausalLM> {
    let base = if dir.join(MODEL_FILE).exists() {
        let mut source = SafetensorsSource::open_file(dir.join(MODEL_FILE))?;
        load_weights(
            like.config(),
            &mut source,
            &like.device(),
            precision_of(like),
        )?
    } else {
        let path = dir.join(BASE_FINGERPRINT_FILE);
        let text = temper_formats::read_regular_to_string(&path).map_err(|e| {
            ckpt_err(
                dir,
                format!("neither {MODEL_FILE} nor {BASE_FINGERPRINT_FILE}: {e}"),
            )
        })?;
        let saved: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| TrainError::Json {
                path: path.clone(),
                source,
            })?;
        let base = fine_tuning.frozen_base(like.clone());
        if saved["fnv1a64"].as_str() != Some(weights_fingerprint(&base).as_str()) {
            return Err(ckpt_err(
                dir,
                "the checkpoint was trained on other base weights than the model it is resumed into",
            ));
        }
        base
    };
    Ok(assign_param_ids(fine_tuning.restore_checkpoint(base, dir)?))
}
