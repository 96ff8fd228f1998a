//! The training loop.
//!
//! One optimizer step = `gradient_accumulation_steps` micro-batches:
//! 1. collate the micro-batches of the step on the host with the objective's
//!    [`TrainObjective::collate`] (their count of target tokens is the `num_items` of the whole
//!    window for [`LossScaling::TokenSum`] objectives);
//! 2. per micro-batch: the objective's loss ([`TrainObjective::loss`]: forward to the final
//!    hidden states, chunked log-probs — no `[batch, seq, vocab]` logits —, reference
//!    log-probs where needed), scaled for accumulation — token-sum objectives (CPT/SFT) divide
//!    by `num_items` (so the window's gradient equals the big batch's, HF's
//!    `num_items_in_batch`), batch-mean objectives (preference) are divided by the number of
//!    micro-batches here (TRL) — then backward and accumulate the gradients of the trainable
//!    parameters;
//! 3. global-norm clipping, AdamW with the scheduled LR, then logging, evaluation and
//!    checkpointing on their cadences.
//!
//! The trainer knows no objective by name: anything implementing [`TrainObjective`] trains.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device, Gradients};
use indicatif::{ProgressBar, ProgressStyle};
use temper_backend::TrainPrecision;
use temper_llm_arch::{LlamaForCausalLM, ModelConfig};
use temper_objectives::data::TrainRows;
use temper_objectives::{
    ChunkConfig, CollateOptions, LossContext, LossOutput, LossScaling, Metrics, MicroBatch,
    ObjectiveError, TrainObjective,
};

use crate::adamw::FusedAdamWConfig;
use crate::checkpoint::{
    TrainerState, assign_param_ids, latest_checkpoint, load_checkpoint, prune_checkpoints,
    read_state, save_checkpoint,
};
use crate::clip::{clip_grad_norm, global_grad_norm, scale_grads};
use crate::config::{MAX_STEPS, SaveStrategy, TrainerConfig};
use crate::data::DataOrder;
use crate::finetune::{FineTuning, FullFineTuning};
use crate::loss_scale::{GradScaler, ScaledStep};
use crate::metrics::{LogRecord, append_jsonl, average, plot_loss_curve, rewrite_jsonl};
use crate::reference::{Reference, RunReference};
use crate::schedule::LrSchedule;
use crate::{Result, TrainError};

/// File names in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The loss curve.
pub const PLOT_FILE: &str = "loss.svg";

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps completed.
    pub steps: usize,
    /// Planned optimizer steps.
    pub total_steps: usize,
    /// The last logged training loss.
    pub final_loss: Option<f64>,
    /// The last evaluation loss.
    pub eval_loss: Option<f64>,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// Every logged row.
    pub log_history: Vec<LogRecord>,
    /// True when a stop hook ended the run before `total_steps`.
    pub stopped_early: bool,
    /// The process's peak resident memory at the end of the run (Linux `VmHWM`), to hold
    /// against the estimate printed at the start.
    pub peak_rss_bytes: Option<u64>,
}

/// The tokenised rows of a run.
#[derive(Debug, Clone)]
pub struct TrainData {
    /// Training rows, in the shape the objective reads.
    pub train: TrainRows,
    /// Held-out rows for `eval_loss` (same shape), if any.
    pub eval: Option<TrainRows>,
}

/// One optimizer step's figures: `(window loss, averaged metrics, tokens, grad norm)`; the
/// norm is `None` for a step skipped by the loss scaler.
type StepFigures = (f64, Metrics, usize, Option<f64>);

/// A trainer for one stage.
pub struct Trainer {
    config: TrainerConfig,
    objective: Box<dyn TrainObjective>,
    model: LlamaForCausalLM,
    optim: ModuleOptimizer,
    train: TrainRows,
    eval: Option<TrainRows>,
    reference: Reference,
    fine_tuning: Box<dyn FineTuning>,
    trainable: Option<Vec<ParamId>>,
    collate: CollateOptions,
    chunk: ChunkConfig,
    order: DataOrder,
    schedule: LrSchedule,
    state: TrainerState,
    last_checkpoint: Option<PathBuf>,
    progress: bool,
    stop_after: Option<usize>,
    precision: TrainPrecision,
    scaler: Option<GradScaler>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("objective", &self.objective)
            .field("fine_tuning", &self.fine_tuning)
            .field("rows", &self.train.len())
            .field("schedule", &self.schedule)
            .field("step", &self.state.step)
            .field("last_checkpoint", &self.last_checkpoint)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A trainer for `model` (on an autodiff device) with full fine-tuning and the objective
    /// `config.objective` names.
    ///
    /// `train`/`eval` must have the row shape of the objective; `pad_id` pads batches (its
    /// value never reaches the loss).
    ///
    /// # Errors
    /// An invalid config, a model without autodiff, rows of the wrong shape, no rows, or a
    /// reference that does not fit the objective.
    pub fn new(
        model: LlamaForCausalLM,
        config: TrainerConfig,
        train: TrainRows,
        eval: Option<TrainRows>,
        reference: Reference,
        pad_id: u32,
    ) -> Result<Self> {
        let objective = config.objective.build();
        Self::with_objective(
            model,
            config,
            objective,
            TrainData { train, eval },
            reference,
            pad_id,
        )
    }

    /// A trainer for any [`TrainObjective`] — one of Temper's or your own. `config.objective`
    /// is not used (it names Temper's objectives in TOML files); everything else is as in
    /// [`new`](Self::new).
    ///
    /// # Errors
    /// See [`new`](Self::new).
    pub fn with_objective(
        model: LlamaForCausalLM,
        config: TrainerConfig,
        objective: Box<dyn TrainObjective>,
        data: TrainData,
        reference: Reference,
        pad_id: u32,
    ) -> Result<Self> {
        config.validate_hyperparameters()?;
        objective.validate()?;
        if !model.device().is_autodiff() {
            return Err(TrainError::Config(
                "the policy must live on an autodiff device (Device::autodiff())".into(),
            ));
        }
        let TrainData { train, eval } = data;
        check_rows(objective.as_ref(), &train)?;
        if let Some(eval) = &eval {
            check_rows(objective.as_ref(), eval)?;
        }
        check_reference(objective.as_ref(), &reference, &train)?;
        let order = DataOrder::new(train.len(), config.batch_size, config.seed, true)?;
        let nb = order.batches_per_epoch();
        let total_steps = match config.max_steps {
            Some(n) => n,
            None => {
                // In f64 first: `as usize` saturates, so 1e300 epochs would become usize::MAX
                // steps instead of an error.
                let steps = ((config.num_train_epochs * nb as f64).ceil()
                    / config.gradient_accumulation_steps as f64)
                    .ceil();
                // Written so that a NaN step count is refused too.
                if steps.is_nan() || steps > MAX_STEPS as f64 {
                    return Err(TrainError::Config(format!(
                        "num_train_epochs {:?} over {nb} micro-batches an epoch gives {steps:?} \
                         optimizer steps (at most {MAX_STEPS})",
                        config.num_train_epochs
                    )));
                }
                ((config.num_train_epochs * nb as f64).ceil() as usize)
                    .div_ceil(config.gradient_accumulation_steps)
                    .max(1)
            }
        };
        let schedule = LrSchedule {
            peak: config.learning_rate,
            warmup: LrSchedule::warmup_steps(config.warmup_steps, config.warmup_ratio, total_steps),
            total: total_steps,
            kind: config.lr_scheduler_type,
        };
        let model = assign_param_ids(model);
        let model = layer_checkpointing(model, config.gradient_checkpointing);
        let state = TrainerState {
            step: 0,
            total_steps,
            next_micro_batch: 0,
            seed: config.seed,
            objective: objective.name().to_string(),
            num_tokens: 0.0,
            log_history: Vec::new(),
            precision: None,
            loss_scale: None,
        };
        Ok(Self {
            optim: adamw(&config).init(),
            chunk: ChunkConfig::with_vocab_tile(config.vocab_tile),
            collate: CollateOptions::new(pad_id, config.max_length),
            config,
            objective,
            model,
            train,
            eval,
            reference,
            fine_tuning: Box::new(FullFineTuning),
            trainable: None,
            order,
            schedule,
            state,
            last_checkpoint: None,
            progress: false,
            stop_after: None,
            precision: TrainPrecision::F32,
            scaler: None,
        })
    }

    /// Trains with `precision` (see [`TrainPrecision`]): products under
    /// [`temper_backend::autocast`] with its half type, and with `f16-mixed` a dynamic loss
    /// scale (`config.loss_scale`). The model's storage is the caller's choice: f32 master
    /// weights for the mixed modes, the half type for `bf16`/`f16` (what `run_stage` loads).
    #[must_use]
    pub fn with_precision(mut self, precision: TrainPrecision) -> Self {
        self.precision = precision;
        self.scaler = precision
            .loss_scaling()
            .then(|| GradScaler::new(self.config.loss_scale));
        self.state.precision = Some(precision.to_string());
        self.state.loss_scale = self.scaler.as_ref().map(GradScaler::state);
        self
    }

    /// The training precision.
    pub fn precision(&self) -> TrainPrecision {
        self.precision
    }

    /// Uses another fine-tuning method (LoRA).
    #[must_use]
    pub fn with_fine_tuning(mut self, fine_tuning: Box<dyn FineTuning>) -> Self {
        self.fine_tuning = fine_tuning;
        self
    }

    /// Shows the progress bar (only when stderr is a terminal).
    #[must_use]
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// Stops after `step` steps without a final checkpoint, as an interrupted run would (for
    /// tests and time-boxed runs).
    #[must_use]
    pub fn with_stop_after(mut self, step: Option<usize>) -> Self {
        self.stop_after = step;
        self
    }

    /// The policy.
    pub fn model(&self) -> &LlamaForCausalLM {
        &self.model
    }

    /// The trained policy.
    pub fn into_model(self) -> LlamaForCausalLM {
        self.model
    }

    /// The objective being trained.
    pub fn objective(&self) -> &dyn TrainObjective {
        self.objective.as_ref()
    }

    /// The run's state (step, data position, log history).
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The LR schedule of the run.
    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }

    /// The config.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// Continues from the checkpoint in `dir`: weights, optimizer moments, step, data
    /// position and log history; `metrics.jsonl` is rewritten to the checkpoint's history.
    ///
    /// # Errors
    /// A missing or malformed checkpoint, or one from a different run (objective, seed, steps).
    pub fn resume_from(&mut self, dir: &Path) -> Result<()> {
        let mismatch = |what: &str, theirs: String, ours: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("{what} is {theirs} in the checkpoint but {ours} in this run"),
        };
        // Before the weights: another precision also stores a LoRA base in another dtype,
        // which the weights check would report less helpfully.
        let theirs = read_state(dir)?.precision.unwrap_or_else(|| "f32".into());
        if theirs != self.precision.to_string() {
            return Err(mismatch("precision", theirs, self.precision.to_string()));
        }
        let loaded = load_checkpoint(dir, &self.model, self.fine_tuning.as_ref())?;
        let s = &loaded.state;
        if s.objective != self.state.objective {
            return Err(mismatch(
                "objective",
                s.objective.clone(),
                self.state.objective.clone(),
            ));
        }
        if s.seed != self.state.seed {
            return Err(mismatch(
                "seed",
                s.seed.to_string(),
                self.state.seed.to_string(),
            ));
        }
        // Each optimizer step consumes at most `gradient_accumulation_steps` micro-batches.
        let max_position = s
            .step
            .saturating_mul(self.config.gradient_accumulation_steps);
        if s.next_micro_batch > max_position {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!(
                    "trainer_state.json `next_micro_batch` {} is out of range (must be ≤ step {} \
                     × gradient_accumulation_steps {})",
                    s.next_micro_batch, s.step, self.config.gradient_accumulation_steps
                ),
            });
        }
        if s.total_steps != self.state.total_steps {
            return Err(mismatch(
                "total steps",
                s.total_steps.to_string(),
                self.state.total_steps.to_string(),
            ));
        }
        let optim = adamw(&self.config)
            .init()
            .from_bytes(Bytes::from_bytes_vec(loaded.optimizer))
            .map_err(|e| TrainError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("optimizer state: {e:?}"),
            })?;
        self.optim = optim;
        self.model = layer_checkpointing(loaded.model, self.config.gradient_checkpointing);
        self.state = loaded.state;
        if let (Some(scaler), Some(saved)) = (&mut self.scaler, self.state.loss_scale) {
            *scaler = GradScaler::from_state(self.config.loss_scale, saved);
        }
        self.last_checkpoint = Some(dir.to_path_buf());
        std::fs::create_dir_all(&self.config.output_dir)
            .map_err(|e| TrainError::io(&self.config.output_dir, e))?;
        rewrite_jsonl(
            &self.config.output_dir.join(METRICS_FILE),
            &self.state.log_history,
        )
    }

    /// Resumes from the newest complete checkpoint in the output directory; `false` when there
    /// is none (a fresh start).
    ///
    /// # Errors
    /// See [`resume_from`](Self::resume_from).
    pub fn resume_latest(&mut self) -> Result<bool> {
        match latest_checkpoint(&self.config.output_dir) {
            Some(dir) => self.resume_from(&dir).map(|()| true),
            None => Ok(false),
        }
    }

    /// Trains to the end (or the stop hook), evaluating, logging and checkpointing.
    ///
    /// # Errors
    /// A non-finite loss or gradient norm ([`TrainError::NonFiniteLoss`], naming the step and
    /// the last good checkpoint), forward/loss failures, I/O failures; a precision the
    /// model's device cannot compute in ([`temper_backend::BackendError::UnsupportedPrecision`]:
    /// `bf16-mixed` on wgpu).
    pub fn train(&mut self) -> Result<TrainSummary> {
        self.precision.check(&self.model.device())?;
        let out_dir = self.config.output_dir.clone();
        std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        let metrics_path = out_dir.join(METRICS_FILE);
        if self.state.step == 0 {
            rewrite_jsonl(&metrics_path, &[])?;
        }
        self.trainable = self.fine_tuning.trainable(&self.model);
        let total = self.state.total_steps;
        let already_done = self.state.step >= total;
        let bar = self.progress_bar(total);
        let mut window: Vec<(f64, Metrics)> = Vec::new();
        let mut window_tokens = 0usize;
        let mut window_start = Instant::now();
        let mut last_loss = None;
        let mut last_eval = None;
        let mut stopped_early = false;
        let batches_per_epoch = self.order.batches_per_epoch();
        while self.state.step < total {
            let epoch_before = self.state.next_micro_batch / batches_per_epoch;
            let (loss, metrics, tokens, grad_norm) = self.step()?;
            let epoch_ended = self.state.next_micro_batch / batches_per_epoch > epoch_before;
            window.push((loss, metrics));
            window_tokens += tokens;
            let step = self.state.step;
            let lr = self.schedule.lr(step);
            if step.is_multiple_of(self.config.logging_steps) || step == total {
                let record = self.train_record(&window, grad_norm, lr);
                last_loss = record.get("loss");
                append_jsonl(&metrics_path, &record)?;
                self.state.log_history.push(record);
                let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                let figures = format!(
                    "loss {:.4}  lr {lr:.3e}  {:.0} tok/s",
                    last_loss.unwrap_or(f64::NAN),
                    window_tokens as f64 / secs
                );
                if self.progress && bar.is_hidden() {
                    // No terminal (CI, nohup, a pipe): a plain line per logging step instead
                    // of the bar, with the time left at this window's pace.
                    let left = (total - step) as f64 * secs / window.len().max(1) as f64;
                    tracing::info!("step {step}/{total}  {figures}  eta {}", eta(left));
                }
                bar.set_message(figures);
                window.clear();
                window_tokens = 0;
                window_start = Instant::now();
            }
            bar.set_position(step as u64);
            if self
                .config
                .eval_steps
                .is_some_and(|n| step.is_multiple_of(n))
                && step < total
            {
                last_eval = self.evaluate_and_log(&metrics_path)?.or(last_eval);
            }
            let save_now = match self.config.save_strategy {
                SaveStrategy::No => false,
                SaveStrategy::Steps => self
                    .config
                    .save_steps
                    .is_some_and(|n| step.is_multiple_of(n)),
                SaveStrategy::Epoch => epoch_ended,
            };
            // The last step's checkpoint is written below, once, whatever the strategy.
            if save_now && step < total {
                self.save()?;
            }
            if self.stop_after.is_some_and(|k| step >= k) && step < total {
                stopped_early = true;
                break;
            }
        }
        // A run resumed from its final checkpoint has nothing left to do: no second final
        // evaluation or checkpoint.
        if !stopped_early && !already_done {
            if self.eval.is_some() {
                last_eval = self.evaluate_and_log(&metrics_path)?.or(last_eval);
            }
            self.save()?;
            plot_loss_curve(&self.state.log_history, &out_dir.join(PLOT_FILE))?;
        }
        bar.finish_and_clear();
        Ok(TrainSummary {
            steps: self.state.step,
            total_steps: total,
            final_loss: last_loss,
            eval_loss: last_eval,
            last_checkpoint: self.last_checkpoint.clone(),
            log_history: self.state.log_history.clone(),
            stopped_early,
            peak_rss_bytes: crate::memory::peak_rss(),
        })
    }

    /// Writes a checkpoint of the current state (and prunes old ones past the limit).
    ///
    /// # Errors
    /// I/O failures.
    pub fn save(&mut self) -> Result<PathBuf> {
        self.state.loss_scale = self.scaler.as_ref().map(GradScaler::state);
        let dir = save_checkpoint(
            &self.config.output_dir,
            &self.model,
            &self.optim,
            &self.state,
            self.fine_tuning.as_ref(),
        )?;
        if let Some(limit) = self.config.save_total_limit {
            prune_checkpoints(&self.config.output_dir, limit)?;
        }
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    fn progress_bar(&self, total: usize) -> ProgressBar {
        if !self.progress || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} (eta {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(self.state.step as u64);
        bar
    }

    fn train_record(
        &self,
        window: &[(f64, Metrics)],
        grad_norm: Option<f64>,
        lr: f64,
    ) -> LogRecord {
        let n = window.len().max(1) as f64;
        let loss = window.iter().map(|(l, _)| l).sum::<f64>() / n;
        let mut values = vec![("loss".to_string(), loss)];
        // A step the loss scaler skipped has no meaningful norm (it overflowed).
        values.extend(grad_norm.map(|g| ("grad_norm".to_string(), g)));
        if let Some(scaler) = &self.scaler {
            let state = scaler.state();
            values.push(("loss_scale".to_string(), state.scale));
            values.push(("skipped_steps".to_string(), state.skipped_steps as f64));
        }
        values.extend([
            ("learning_rate".to_string(), lr),
            (
                "epoch".to_string(),
                self.order.epoch_at(self.state.next_micro_batch),
            ),
        ]);
        values.extend(average(window.iter().map(|(_, m)| m)));
        for (name, v) in values.iter_mut() {
            if name == "num_tokens" {
                *v = self.state.num_tokens;
            }
        }
        LogRecord {
            step: self.state.step,
            values,
        }
    }

    /// One optimizer step: `(window loss, averaged metrics, tokens, grad norm)`.
    fn step(&mut self) -> Result<StepFigures> {
        let step_no = self.state.step + 1;
        let ga = self.config.gradient_accumulation_steps;
        let first = self.state.next_micro_batch;
        let mut batches = Vec::with_capacity(ga);
        for m in first..first + ga {
            let idx = self.order.batch(m);
            batches.push(self.objective.collate(&self.train, &idx, &self.collate)?);
        }
        let token_sum = self.objective.loss_scaling() == LossScaling::TokenSum;
        let num_items: usize = batches.iter().map(MicroBatch::targets).sum();
        let num_items = (token_sum && num_items > 0).then_some(num_items);
        let tokens: usize = batches.iter().map(MicroBatch::tokens).sum();

        // Products round to the precision's half type (forward and the backward nodes it
        // records); activations stay f32 in the mixed modes, in the storage dtype otherwise
        // (see `temper_backend::kernels::activation_dtype`).
        let _autocast = self.precision.autocast();
        if let Some(tape) = self.model.checkpoint_tape() {
            // Nothing of an earlier, failed step may linger.
            tape.clear();
        }
        let loss_scale = self.scaler.as_ref().map(GradScaler::scale);
        let mut accumulator = GradientsAccumulator::<LlamaForCausalLM>::new();
        let mut window_loss = 0.0;
        let mut metrics = Vec::with_capacity(ga);
        for batch in &batches {
            let out = self
                .loss(&self.model, batch, num_items)
                .map_err(|e| self.non_finite(e, step_no))?;
            let loss = if token_sum {
                out.loss
            } else {
                out.loss.div_scalar(ga as f64)
            };
            let value = loss.clone().into_scalar::<f64>();
            if !value.is_finite() {
                return Err(self.nan_error(step_no, value));
            }
            window_loss += value;
            metrics.push(out.metrics);
            let loss = match loss_scale {
                Some(scale) => loss.mul_scalar(scale),
                None => loss,
            };
            let mut grads = loss.backward();
            let trainable = |grads: &mut Gradients| match &self.trainable {
                None => GradientsParams::from_module(grads, &self.model),
                Some(ids) => GradientsParams::from_params(grads, &self.model, ids),
            };
            if let Some(tape) = self.model.checkpoint_tape() {
                // Gradient checkpointing: the loss's backward stopped at the last decoder
                // layer; the layers are recomputed and back-propagated one at a time.
                tape.backward(&self.model, &mut grads, |mut layer| {
                    accumulator.accumulate(&self.model, trainable(&mut layer));
                })?;
            }
            accumulator.accumulate(&self.model, trainable(&mut grads));
        }
        let mut grads = accumulator.grads();
        if let Some(scaler) = &mut self.scaler {
            // torch's `unscale_` → `step` (skipped on inf/NaN) → `update`.
            let scaled_norm = global_grad_norm(&self.model, &grads);
            match scaler.update(scaled_norm) {
                ScaledStep::Skip => {
                    // Named in the metrics: no `grad_norm`, `skipped_steps` + 1, the new
                    // `loss_scale`.
                    self.state.step = step_no;
                    self.state.next_micro_batch = first + ga;
                    self.state.num_tokens += tokens as f64;
                    let metrics = average(metrics.iter()).into_iter().collect();
                    return Ok((window_loss, metrics, tokens, None));
                }
                ScaledStep::Apply { unscale } => scale_grads(&self.model, &mut grads, unscale),
            }
        }
        let grad_norm = match self.config.clip_norm() {
            Some(max) => clip_grad_norm(&self.model, &mut grads, max),
            None => global_grad_norm(&self.model, &grads),
        };
        if !grad_norm.is_finite() {
            return Err(self.nan_error(step_no, grad_norm));
        }
        let lr = self.schedule.lr(self.state.step);
        // burn's optimizer takes the model by value and returns the updated one, and the fused
        // AdamW updates a parameter in place only when nothing else holds its buffer — so the
        // field cannot keep a clone during the update. It holds a tiny stand-in for the length
        // of this one call, which cannot fail.
        let stand_in = stand_in(&self.model.device());
        let model = std::mem::replace(&mut self.model, stand_in);
        self.model = self.optim.step(lr, model, grads);
        self.state.step = step_no;
        self.state.next_micro_batch = first + ga;
        self.state.num_tokens += tokens as f64;
        Ok((
            window_loss,
            average(metrics.iter()).into_iter().collect(),
            tokens,
            Some(grad_norm),
        ))
    }

    fn nan_error(&self, step: usize, value: f64) -> TrainError {
        TrainError::NonFiniteLoss {
            step,
            value,
            last_checkpoint: self.last_checkpoint.clone(),
        }
    }

    fn non_finite(&self, e: TrainError, step: usize) -> TrainError {
        match e {
            TrainError::Objective(ObjectiveError::NonFinite { value, .. }) => {
                self.nan_error(step, value)
            }
            other => other,
        }
    }

    /// Mean loss over the evaluation rows (batches in file order, each batch's own mean, then
    /// the mean over batches), logged as `eval_loss` and `eval_*` metrics.
    fn evaluate_and_log(&mut self, metrics_path: &Path) -> Result<Option<f64>> {
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        if matches!(self.reference, Reference::Cache(_)) {
            // The cache covers the training pairs only.
            return Ok(None);
        }
        let model = self.model.valid();
        let _autocast = self.precision.autocast();
        let n = eval.len();
        let bs = self.config.batch_size;
        let mut losses = Vec::new();
        let mut metrics = Vec::new();
        for start in (0..n).step_by(bs) {
            let idx: Vec<usize> = (start..(start + bs).min(n)).collect();
            let batch = self.objective.collate(eval, &idx, &self.collate)?;
            let out = self.loss(&model, &batch, None)?;
            losses.push(out.loss.into_scalar::<f64>());
            metrics.push(out.metrics);
        }
        let loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
        let mut values = vec![("eval_loss".to_string(), loss)];
        values.extend(
            average(metrics.iter())
                .into_iter()
                .map(|(k, v)| (format!("eval_{k}"), v)),
        );
        values.push((
            "epoch".into(),
            self.order.epoch_at(self.state.next_micro_batch),
        ));
        let record = LogRecord {
            step: self.state.step,
            values,
        };
        append_jsonl(metrics_path, &record)?;
        self.state.log_history.push(record);
        Ok(Some(loss))
    }

    /// The objective's loss of one micro-batch under `model`.
    fn loss(
        &self,
        model: &LlamaForCausalLM,
        batch: &MicroBatch,
        num_items: Option<usize>,
    ) -> Result<LossOutput> {
        let reference = RunReference {
            reference: &self.reference,
            fine_tuning: self.fine_tuning.as_ref(),
            policy: model,
            chunk: &self.chunk,
        };
        let context = LossContext {
            policy: model,
            chunk: &self.chunk,
            num_items,
            reference: &reference,
        };
        Ok(self.objective.loss(&context, batch)?)
    }
}

/// A minimal model to hold the trainer's place while the optimizer owns the policy.
fn stand_in(device: &Device) -> LlamaForCausalLM {
    LlamaForCausalLM::init(&ModelConfig::tiny(1, 2, 0, 1, 1), device)
}

fn adamw(config: &TrainerConfig) -> FusedAdamWConfig {
    FusedAdamWConfig {
        adam_beta1: config.adam_beta1 as f32,
        adam_beta2: config.adam_beta2 as f32,
        adam_epsilon: config.adam_epsilon as f32,
        weight_decay: config.weight_decay as f32,
    }
}

fn check_rows(objective: &dyn TrainObjective, rows: &TrainRows) -> Result<()> {
    if rows.is_empty() {
        return Err(TrainError::Data(format!("no {}", rows.kind())));
    }
    if objective.row_kind().accepts(rows) {
        Ok(())
    } else {
        Err(TrainError::Data(format!(
            "objective `{}` cannot train on {}",
            objective.name(),
            rows.kind()
        )))
    }
}

fn check_reference(
    objective: &dyn TrainObjective,
    reference: &Reference,
    train: &TrainRows,
) -> Result<()> {
    match reference {
        Reference::None if objective.needs_reference() => Err(TrainError::Config(format!(
            "{} needs a reference (a frozen model or a reference cache)",
            objective.name()
        ))),
        Reference::Cache(_) if !matches!(train, TrainRows::Preference(_)) => {
            Err(TrainError::Config(format!(
                "the reference cache holds preference pairs; {} needs a reference model",
                objective.name()
            )))
        }
        Reference::Cache(cache) if cache.pairs != train.len() => Err(TrainError::Config(format!(
            "the reference cache has {} pairs, the training data {}",
            cache.pairs,
            train.len()
        ))),
        _ => Ok(()),
    }
}

/// The model with layer-wise gradient checkpointing on (a fresh tape) or as it is.
fn layer_checkpointing(model: LlamaForCausalLM, on: bool) -> LlamaForCausalLM {
    if on {
        model.with_layer_checkpointing(Some(temper_llm_arch::CheckpointTape::new()))
    } else {
        model
    }
}

/// Seconds as `1h02m`, `3m05s` or `12s`.
fn eta(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}
