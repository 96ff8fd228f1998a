//! The training loop.
//!
//! One optimizer step = `gradient_accumulation_steps` micro-batches:
//! 1. collate the micro-batches of the step on the host (their count of target tokens is the
//!    `num_items` of the whole window for CPT/SFT);
//! 2. per micro-batch: forward to the final hidden states, chunked log-probs (no
//!    `[batch, seq, vocab]` logits), the objective's loss, scaled for accumulation — CPT/SFT
//!    divide the token-loss sum by `num_items` (so the window's gradient equals the big
//!    batch's, HF's `num_items_in_batch`), preference objectives divide their batch mean by
//!    the number of micro-batches (TRL) — then backward and accumulate the gradients of the
//!    trainable parameters;
//! 3. global-norm clipping, AdamW with the scheduled LR, then logging, evaluation and
//!    checkpointing on their cadences.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Bytes, Device, GradientCheckpointingStrategy, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM};
use temper_objectives::data::{
    Batch, PadOptions, PreferenceBatch, UnpairedBatch, collate_packed, collate_preference,
    collate_sft, collate_unpaired,
};
use temper_objectives::{
    ChunkConfig, KlLogps, KtoBatch, LossOutput, Metrics, ObjectiveError, OrpoNll, PairLogps,
    RefCache, RefLogps, TokenLogps, TokenStats, causal_lm_loss, chunked_token_logps,
    chunked_token_logps_with_stats, cpo_loss, dpo_loss, kto_loss, lm_head_weight, orpo_loss,
};

use crate::adamw::FusedAdamWConfig;
use crate::checkpoint::{
    TrainerState, assign_param_ids, latest_checkpoint, load_checkpoint, prune_checkpoints,
    save_checkpoint,
};
use crate::clip::{clip_grad_norm, global_grad_norm};
use crate::config::{Objective, TrainerConfig};
use crate::data::{DataOrder, TrainRows};
use crate::finetune::{FineTuning, FullFineTuning};
use crate::metrics::{LogRecord, append_jsonl, plot_loss_curve, rewrite_jsonl};
use crate::schedule::LrSchedule;
use crate::{Result, TrainError};

/// File names in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The loss curve.
pub const PLOT_FILE: &str = "loss.svg";

/// Where DPO/KTO reference log-probs come from.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per trainer; boxing buys nothing
pub enum Reference {
    /// The objective needs no reference (CPT, SFT, ORPO, SimPO, CPO).
    None,
    /// A frozen model (a copy of the initial policy, or another checkpoint); run without
    /// autodiff, its log-probs go through the host to the policy's device.
    Model(LlamaForCausalLM),
    /// Precomputed reference log-probs of the training pairs, indexed like the training rows
    /// (DPO family only). Evaluation then needs a model reference and is skipped otherwise.
    Cache(RefCache),
    /// The fine-tuning method's own reference (LoRA with adapters disabled).
    FromFineTuning,
}

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
}

/// Host-side collated micro-batch.
enum Collated {
    Sequences(Batch),
    Preference {
        batch: PreferenceBatch,
        rows: Vec<usize>,
    },
    Unpaired(UnpairedBatch),
}

impl Collated {
    fn tokens(&self) -> usize {
        let count = |b: &Batch| {
            b.attention_mask
                .iter()
                .flatten()
                .filter(|&&a| a != 0)
                .count()
        };
        match self {
            Self::Sequences(b) => count(b),
            Self::Preference { batch, .. } => count(&batch.batch),
            Self::Unpaired(b) => count(&b.batch),
        }
    }

    fn targets(&self) -> usize {
        match self {
            Self::Sequences(b) => b.num_targets(),
            Self::Preference { batch, .. } => batch.batch.num_targets(),
            Self::Unpaired(b) => b.batch.num_targets(),
        }
    }
}

fn forward_options(batch: &Batch) -> ForwardOptions {
    ForwardOptions {
        attention_mask: Some(batch.attention_mask_u8()),
        position_ids: batch.position_ids_usize(),
    }
}

fn labels_tensor(labels: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let (b, t) = (labels.len(), labels.first().map_or(0, Vec::len));
    let flat: Vec<i64> = labels.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), device)
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn tensor1(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// A trainer for one stage.
pub struct Trainer {
    config: TrainerConfig,
    model: Option<LlamaForCausalLM>,
    optim: ModuleOptimizer,
    train: TrainRows,
    eval: Option<TrainRows>,
    reference: Reference,
    fine_tuning: Box<dyn FineTuning>,
    trainable: Option<Vec<ParamId>>,
    pad: PadOptions,
    chunk: ChunkConfig,
    order: DataOrder,
    schedule: LrSchedule,
    state: TrainerState,
    last_checkpoint: Option<PathBuf>,
    progress: bool,
    stop_after: Option<usize>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("fine_tuning", &self.fine_tuning)
            .field("rows", &self.train.len())
            .field("schedule", &self.schedule)
            .field("step", &self.state.step)
            .field("last_checkpoint", &self.last_checkpoint)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A trainer for `model` (on an autodiff device) with full fine-tuning.
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
        config.validate()?;
        if !model.device().is_autodiff() {
            return Err(TrainError::Config(
                "the policy must live on an autodiff device (Device::autodiff())".into(),
            ));
        }
        check_rows(&config.objective, &train)?;
        if let Some(eval) = &eval {
            check_rows(&config.objective, eval)?;
        }
        match (&config.objective, &reference) {
            (Objective::Dpo(_) | Objective::Kto(_), Reference::None) => {
                return Err(TrainError::Config(format!(
                    "{} needs a reference (a frozen model or a reference cache)",
                    config.objective.name()
                )));
            }
            (Objective::Kto(_), Reference::Cache(_)) => {
                return Err(TrainError::Config(
                    "the reference cache holds preference pairs; KTO needs a reference model"
                        .into(),
                ));
            }
            (_, Reference::Cache(cache)) if cache.pairs != train.len() => {
                return Err(TrainError::Config(format!(
                    "the reference cache has {} pairs, the training data {}",
                    cache.pairs,
                    train.len()
                )));
            }
            _ => {}
        }
        let order = DataOrder::new(train.len(), config.batch_size, config.seed, true)?;
        let nb = order.batches_per_epoch();
        let total_steps = match config.max_steps {
            Some(n) => n,
            None => ((config.num_train_epochs * nb as f64).ceil() as usize)
                .div_ceil(config.gradient_accumulation_steps)
                .max(1),
        };
        let schedule = LrSchedule {
            peak: config.learning_rate,
            warmup: LrSchedule::warmup_steps(config.warmup_steps, config.warmup_ratio, total_steps),
            total: total_steps,
            kind: config.lr_scheduler_type,
        };
        let model = assign_param_ids(model);
        let model = if config.gradient_checkpointing {
            with_gradient_checkpointing(model)
        } else {
            model
        };
        let state = TrainerState {
            step: 0,
            total_steps,
            next_micro_batch: 0,
            seed: config.seed,
            objective: config.objective.name().to_string(),
            num_tokens: 0.0,
            log_history: Vec::new(),
        };
        Ok(Self {
            optim: adamw(&config).init(),
            chunk: ChunkConfig::with_vocab_tile(config.vocab_tile),
            config,
            model: Some(model),
            train,
            eval,
            reference,
            fine_tuning: Box::new(FullFineTuning),
            trainable: None,
            pad: PadOptions::new(pad_id),
            order,
            schedule,
            state,
            last_checkpoint: None,
            progress: false,
            stop_after: None,
        })
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
    ///
    /// # Errors
    /// Never in practice: the model is only absent inside an optimizer step.
    pub fn model(&self) -> Result<&LlamaForCausalLM> {
        self.model
            .as_ref()
            .ok_or_else(|| TrainError::Data("the model is being updated".into()))
    }

    /// The trained policy.
    ///
    /// # Errors
    /// See [`model`](Self::model).
    pub fn into_model(self) -> Result<LlamaForCausalLM> {
        self.model
            .ok_or_else(|| TrainError::Data("the model is being updated".into()))
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
        let like = self.model()?;
        let loaded = load_checkpoint(dir, like, self.fine_tuning.as_ref())?;
        let s = &loaded.state;
        let mismatch = |what: &str, theirs: String, ours: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("{what} is {theirs} in the checkpoint but {ours} in this run"),
        };
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
        self.model = Some(if self.config.gradient_checkpointing {
            with_gradient_checkpointing(loaded.model)
        } else {
            loaded.model
        });
        self.state = loaded.state;
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
    /// the last good checkpoint), forward/loss failures, I/O failures.
    pub fn train(&mut self) -> Result<TrainSummary> {
        let out_dir = self.config.output_dir.clone();
        std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::io(&out_dir, e))?;
        let metrics_path = out_dir.join(METRICS_FILE);
        if self.state.step == 0 {
            rewrite_jsonl(&metrics_path, &[])?;
        }
        self.trainable = self.fine_tuning.trainable(self.model()?);
        let total = self.state.total_steps;
        let already_done = self.state.step >= total;
        let bar = self.progress_bar(total);
        let mut window: Vec<(f64, Metrics)> = Vec::new();
        let mut window_tokens = 0usize;
        let mut window_start = Instant::now();
        let mut last_loss = None;
        let mut last_eval = None;
        let mut stopped_early = false;
        while self.state.step < total {
            let (loss, metrics, tokens, grad_norm) = self.step()?;
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
                bar.set_message(format!(
                    "loss {:.4}  lr {lr:.3e}  {:.0} tok/s",
                    last_loss.unwrap_or(f64::NAN),
                    window_tokens as f64 / secs
                ));
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
            if self
                .config
                .save_steps
                .is_some_and(|n| step.is_multiple_of(n))
                && step < total
            {
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
        })
    }

    /// Writes a checkpoint of the current state (and prunes old ones past the limit).
    ///
    /// # Errors
    /// I/O failures.
    pub fn save(&mut self) -> Result<PathBuf> {
        let model = self.model()?;
        let dir = save_checkpoint(
            &self.config.output_dir,
            model,
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

    fn train_record(&self, window: &[(f64, Metrics)], grad_norm: f64, lr: f64) -> LogRecord {
        let n = window.len().max(1) as f64;
        let loss = window.iter().map(|(l, _)| l).sum::<f64>() / n;
        let mut values = vec![
            ("loss".to_string(), loss),
            ("grad_norm".to_string(), grad_norm),
            ("learning_rate".to_string(), lr),
            (
                "epoch".to_string(),
                self.order.epoch_at(self.state.next_micro_batch),
            ),
        ];
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

    fn micro_indices(&mut self, micro: usize) -> Vec<usize> {
        self.order.batch(micro)
    }

    fn collate(&self, rows: &TrainRows, indices: &[usize]) -> Result<Collated> {
        let max_length = self.config.max_length;
        Ok(match rows.select(indices) {
            TrainRows::Sequences(mut seqs) => {
                if let Some(n) = max_length {
                    seqs.iter_mut().for_each(|s| s.truncate(n));
                }
                Collated::Sequences(collate_sft(&seqs, &self.pad)?)
            }
            TrainRows::Packed(blocks) => Collated::Sequences(collate_packed(&blocks, &self.pad)?),
            TrainRows::Preference(pairs) => Collated::Preference {
                batch: collate_preference(&pairs, max_length, &self.pad)?,
                rows: indices.to_vec(),
            },
            TrainRows::Unpaired(rows) => {
                let with_kl =
                    matches!(&self.config.objective, Objective::Kto(c) if c.loss_type.needs_kl());
                Collated::Unpaired(collate_unpaired(&rows, max_length, &self.pad, with_kl)?)
            }
        })
    }

    /// One optimizer step: `(window loss, averaged metrics, tokens, grad norm)`.
    fn step(&mut self) -> Result<(f64, Metrics, usize, f64)> {
        let step_no = self.state.step + 1;
        let ga = self.config.gradient_accumulation_steps;
        let first = self.state.next_micro_batch;
        let mut collated = Vec::with_capacity(ga);
        for m in first..first + ga {
            let idx = self.micro_indices(m);
            collated.push(self.collate(&self.train, &idx)?);
        }
        let token_scaled = self.config.objective.token_scaled();
        let num_items: usize = collated.iter().map(Collated::targets).sum();
        let num_items = (token_scaled && num_items > 0).then_some(num_items);
        let tokens: usize = collated.iter().map(Collated::tokens).sum();

        let mut accumulator = GradientsAccumulator::<LlamaForCausalLM>::new();
        let mut window_loss = 0.0;
        let mut metrics = Vec::with_capacity(ga);
        for c in &collated {
            let model = self.model()?;
            let out = self
                .loss(model, c, num_items, true)
                .map_err(|e| self.non_finite(e, step_no))?;
            let loss = if token_scaled {
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
            let mut grads = loss.backward();
            let params = match &self.trainable {
                None => GradientsParams::from_module(&mut grads, model),
                Some(ids) => GradientsParams::from_params(&mut grads, model, ids),
            };
            accumulator.accumulate(model, params);
        }
        let mut grads = accumulator.grads();
        let model = self.model()?;
        let grad_norm = match self.config.clip_norm() {
            Some(max) => clip_grad_norm(model, &mut grads, max),
            None => global_grad_norm(model, &grads),
        };
        if !grad_norm.is_finite() {
            return Err(self.nan_error(step_no, grad_norm));
        }
        let lr = self.schedule.lr(self.state.step);
        let model = self
            .model
            .take()
            .ok_or_else(|| TrainError::Data("the model is being updated".into()))?;
        self.model = Some(self.optim.step(lr, model, grads));
        self.state.step = step_no;
        self.state.next_micro_batch = first + ga;
        self.state.num_tokens += tokens as f64;
        Ok((
            window_loss,
            average(metrics.iter()).into_iter().collect(),
            tokens,
            grad_norm,
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
        let model = self.model()?.valid();
        let n = eval.len();
        let bs = self.config.batch_size;
        let mut losses = Vec::new();
        let mut metrics = Vec::new();
        for start in (0..n).step_by(bs) {
            let idx: Vec<usize> = (start..(start + bs).min(n)).collect();
            let c = self.collate(eval, &idx)?;
            let out = self.loss(&model, &c, None, false)?;
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

    /// The objective's loss of one collated micro-batch. `training`: row indices refer to the
    /// training rows (for the reference cache).
    fn loss(
        &self,
        model: &LlamaForCausalLM,
        c: &Collated,
        num_items: Option<usize>,
        training: bool,
    ) -> Result<LossOutput> {
        let device = model.device();
        let objective = &self.config.objective;
        match c {
            Collated::Sequences(batch) => {
                let (logps, stats) = self.policy_logps(model, batch, &device)?;
                let cfg = match objective {
                    Objective::Cpt(cfg) | Objective::Sft(cfg) => cfg,
                    other => return Err(wrong_rows(other, "sequences")),
                };
                Ok(causal_lm_loss(cfg, &logps, num_items, Some(&stats))?)
            }
            Collated::Preference { batch, rows } => {
                let b = batch.num_pairs;
                let tensors = batch.batch.to_tensors(&device);
                let opts = forward_options(&batch.batch);
                let hidden = model.forward_hidden(tensors.input_ids, &opts, None)?;
                let (logps, stats) = chunked_token_logps_with_stats(
                    hidden.clone(),
                    lm_head_weight(model),
                    tensors.labels,
                    tensors.attention_mask,
                    &self.chunk,
                )?;
                let policy = PairLogps::from_stacked(&logps)?;
                match objective {
                    Objective::Dpo(cfg) => {
                        let reference = self.pair_reference(model, &batch.batch, rows, training)?;
                        Ok(dpo_loss(cfg, &policy, &reference, Some(&stats))?)
                    }
                    Objective::Orpo(cfg) => {
                        let full = if cfg.nll == OrpoNll::PromptAndCompletion {
                            let labels = batch.batch.attended_labels();
                            let t = labels.first().map_or(0, Vec::len);
                            let h = hidden.dims()[2];
                            let labels = labels_tensor(&labels, &device).slice([0..b, 0..t]);
                            Some(chunked_token_logps(
                                hidden.slice([0..b, 0..t, 0..h]),
                                lm_head_weight(model),
                                labels,
                                &self.chunk,
                            )?)
                        } else {
                            None
                        };
                        Ok(orpo_loss(cfg, &policy, full.as_ref(), Some(&stats))?)
                    }
                    Objective::Simpo(_) | Objective::Cpo(_) => {
                        let cfg = objective
                            .cpo_config()
                            .ok_or_else(|| wrong_rows(objective, "preference pairs"))?;
                        Ok(cpo_loss(&cfg, &policy, Some(&stats))?)
                    }
                    other => Err(wrong_rows(other, "preference pairs")),
                }
            }
            Collated::Unpaired(ub) => {
                let Objective::Kto(cfg) = objective else {
                    return Err(wrong_rows(objective, "unpaired rows"));
                };
                let (logps, stats) = self.policy_logps(model, &ub.batch, &device)?;
                let reference = tensor1(self.reference_sums(model, &ub.batch)?, &device);
                let kl = match &ub.kl {
                    Some(klb) => {
                        let tensors = klb.to_tensors(&device);
                        let opts = forward_options(klb);
                        let hidden = model.forward_hidden(tensors.input_ids, &opts, None)?;
                        let lp = chunked_token_logps(
                            hidden,
                            lm_head_weight(model),
                            tensors.labels,
                            &self.chunk,
                        )?;
                        Some(KlLogps {
                            policy: lp.sum().detach(),
                            reference: tensor1(self.reference_sums(model, klb)?, &device),
                        })
                    }
                    None => None,
                };
                let kto = KtoBatch {
                    policy: logps.sum(),
                    reference,
                    desirable: ub.label.clone(),
                    kl,
                };
                Ok(kto_loss(cfg, &kto, Some(&stats))?)
            }
        }
    }

    fn policy_logps(
        &self,
        model: &LlamaForCausalLM,
        batch: &Batch,
        device: &Device,
    ) -> Result<(TokenLogps, TokenStats)> {
        let tensors = batch.to_tensors(device);
        let opts = forward_options(batch);
        let hidden = model.forward_hidden(tensors.input_ids, &opts, None)?;
        Ok(chunked_token_logps_with_stats(
            hidden,
            lm_head_weight(model),
            tensors.labels,
            tensors.attention_mask,
            &self.chunk,
        )?)
    }

    /// Σ completion log-probs of every row of `batch` under the reference, on the host.
    fn reference_sums(&self, policy: &LlamaForCausalLM, batch: &Batch) -> Result<Vec<f32>> {
        let logps = match &self.reference {
            Reference::Model(reference) => {
                let device = reference.device();
                let tensors = batch.to_tensors(&device);
                let hidden =
                    reference.forward_hidden(tensors.input_ids, &forward_options(batch), None)?;
                chunked_token_logps(
                    hidden,
                    lm_head_weight(reference),
                    tensors.labels,
                    &self.chunk,
                )?
            }
            Reference::FromFineTuning => {
                let device = policy.device();
                let tensors = batch.to_tensors(&device);
                let hidden = self
                    .fine_tuning
                    .reference_hidden(policy, tensors.input_ids, &forward_options(batch))
                    .ok_or_else(|| {
                        TrainError::Config(format!(
                            "fine-tuning method `{}` has no built-in reference",
                            self.fine_tuning.name()
                        ))
                    })??
                    .detach();
                chunked_token_logps(
                    hidden,
                    lm_head_weight(policy).detach(),
                    tensors.labels,
                    &self.chunk,
                )?
            }
            Reference::Cache(_) | Reference::None => {
                return Err(TrainError::Config(
                    "this objective needs a reference model here".into(),
                ));
            }
        };
        Ok(host(logps.sum()))
    }

    fn pair_reference(
        &self,
        policy: &LlamaForCausalLM,
        batch: &Batch,
        rows: &[usize],
        training: bool,
    ) -> Result<RefLogps> {
        let device = policy.device();
        if let Reference::Cache(cache) = &self.reference {
            if !training {
                return Err(TrainError::Config(
                    "the reference cache covers the training pairs only".into(),
                ));
            }
            let pick = |v: &[f32]| -> Result<Vec<f32>> {
                rows.iter()
                    .map(|&i| {
                        v.get(i).copied().ok_or_else(|| {
                            TrainError::Data(format!("pair {i} is not in the reference cache"))
                        })
                    })
                    .collect()
            };
            return Ok(RefLogps::from_values(
                &pick(&cache.chosen_logps)?,
                &pick(&cache.rejected_logps)?,
                &device,
            )?);
        }
        let sums = self.reference_sums(policy, batch)?;
        let b = sums.len() / 2;
        Ok(RefLogps::from_values(&sums[..b], &sums[b..], &device)?)
    }
}

/// Puts every autodiff float parameter of `module` under burn's balanced gradient
/// checkpointing, keeping ids, values and which parameters require gradients.
///
/// In burn 0.22 the strategy travels with each tensor and is set by the device a parameter is
/// created on; `Module::to_device`/`fork` keep the tensors' own strategy, and `to_device` of
/// an initialized autodiff module is itself a differentiable op (the parameters become
/// non-leaf nodes: the second backward then fails with "graph tape has already been
/// consumed"). This re-roots each parameter as a leaf carrying the strategy instead.
/// Parameters already under it, or without autodiff, are left as they are.
pub fn with_gradient_checkpointing<M: Module>(module: M) -> M {
    struct Balanced;
    impl ModuleMapper for Balanced {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| {
                let strategy = GradientCheckpointingStrategy::Balanced;
                if !t.is_autodiff() || t.gradient_checkpointing_strategy() == Some(strategy) {
                    return t;
                }
                let require_grad = t.is_require_grad();
                let t = t.detach().with_gradient_checkpointing_strategy(strategy);
                if require_grad { t.require_grad() } else { t }
            })
        }
    }
    module.map(&mut Balanced)
}

fn adamw(config: &TrainerConfig) -> FusedAdamWConfig {
    FusedAdamWConfig {
        adam_beta1: config.adam_beta1 as f32,
        adam_beta2: config.adam_beta2 as f32,
        adam_epsilon: config.adam_epsilon as f32,
        weight_decay: config.weight_decay as f32,
    }
}

/// Per-name mean over micro-batches/steps, in first-seen order.
fn average<'a>(all: impl Iterator<Item = &'a Metrics>) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64, usize)> = Vec::new();
    for m in all {
        for (name, v) in m.iter() {
            match sums.iter_mut().find(|(n, _, _)| n == name) {
                Some(e) => {
                    e.1 += v;
                    e.2 += 1;
                }
                None => sums.push((name.to_string(), v, 1)),
            }
        }
    }
    sums.into_iter()
        .map(|(n, s, c)| (n, s / c.max(1) as f64))
        .collect()
}

fn wrong_rows(objective: &Objective, rows: &str) -> TrainError {
    TrainError::Data(format!(
        "objective `{}` cannot train on {rows}",
        objective.name()
    ))
}

fn check_rows(objective: &Objective, rows: &TrainRows) -> Result<()> {
    let ok = match rows {
        TrainRows::Sequences(_) | TrainRows::Packed(_) => objective.token_scaled(),
        TrainRows::Preference(_) => objective.is_preference(),
        TrainRows::Unpaired(_) => matches!(objective, Objective::Kto(_)),
    };
    if rows.is_empty() {
        return Err(TrainError::Data(format!("no {}", rows.kind())));
    }
    if ok {
        Ok(())
    } else {
        Err(wrong_rows(objective, rows.kind()))
    }
}
