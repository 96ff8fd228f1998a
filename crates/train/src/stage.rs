//! [`run_stage`]: everything `temper train` needs in one call — load the model (HF directory
//! or GGUF), inject LoRA adapters when the stage has a `[lora]` table, tokenise the JSONL data
//! for the objective, build the reference, train (resuming when asked) and save the result:
//! an HF directory `temper generate` loads (LoRA merged into the weights), or with
//! `save_adapter_only` the PEFT adapter files plus the tokenizer.

use std::path::Path;

use burn::module::Module;
use temper_backend::{DeviceSpec, TrainPrecision};
use temper_formats::peft::LayerKind;
use temper_llm_arch::{
    ChatTemplate, LlamaForCausalLM, Pretrained, ProjectionStorage, SpecialTokens, Tokenizer,
};
use temper_objectives::data::{Preprocessor, RowOptions, TrainRows, read_train_rows};
use temper_objectives::{RefCache, dataset_fingerprint};

use crate::config::{BaseQuantization, LoraSettings, ReferenceConfig, StageConfig};
use crate::finetune::LoraFineTuning;
use crate::memory::{MemoryEstimate, MemoryPlan, ProjectionBytes, available_memory};
use crate::reference::Reference;
use crate::trainer::{TrainData, TrainSummary, Trainer};
use crate::{Result, TrainError};

/// Runs one training stage end to end and saves the trained model in `trainer.output_dir`
/// (next to `checkpoint-*`, `metrics.jsonl` and `loss.svg`): an HF directory, or with LoRA and
/// `save_adapter_only` the PEFT adapter directory (plus tokenizer files).
///
/// With `[lora]`, adapters are injected after loading (initialised from the device RNG seeded
/// with `trainer.seed`), only they train, and DPO/KTO with the default reference
/// (`initial_policy`) use the base with adapters disabled instead of a second model.
///
/// # Errors
/// A precision the device cannot compute in (`bf16`/`bf16-mixed` on wgpu); loading, data,
/// training (including [`TrainError::NonFiniteLoss`]) and saving failures.
pub fn run_stage(config: &StageConfig, progress: bool) -> Result<TrainSummary> {
    config.validate()?;
    if !config.resume {
        // A resume continues in the directory it finds; a fresh run must not silently mix
        // with (or replace) what an earlier run left there.
        temper_formats::check_output_dir(&config.trainer.output_dir, config.overwrite).map_err(
            |e| {
                TrainError::Config(format!(
                    "{e}, or --resume to continue its run (`overwrite` / `resume` in a stage \
                     file)"
                ))
            },
        )?;
    }
    let tc = &config.trainer;
    let spec: DeviceSpec = config.device.parse()?;
    let precision: TrainPrecision = config.precision.parse()?;
    // Before anything is loaded: `bf16-mixed` on wgpu is refused here, naming the device.
    spec.check_precision(precision)?;
    let train_device = spec.with_autodiff(true).device()?;
    // `gradient_checkpointing` is layer-wise (the trainer records only each layer's input,
    // `temper_llm_arch::CheckpointTape`), not burn's per-op strategy, which keeps the
    // products' inputs and saves no memory on a decoder.
    let plain_device = spec.with_autodiff(false).device()?;

    // Trained weights in the master dtype (f32 under mixed precision); a LoRA base is frozen
    // and stored in the compute dtype, as PEFT users load it (`torch_dtype=bfloat16`).
    let storage = if config.lora.is_some() {
        precision.frozen()
    } else {
        precision.master()
    };
    let quantization = config
        .lora
        .as_ref()
        .map(LoraSettings::base_quantization)
        .transpose()?
        .flatten();
    let projections = match quantization {
        None => ProjectionStorage::Dense,
        Some(BaseQuantization::Gguf) => {
            if !temper_llm_arch::is_gguf_path(&config.model) {
                return Err(TrainError::Config(format!(
                    "[lora] quantize_base = \"gguf\" keeps a GGUF model's own blocks, and {} is \
                     not a .gguf file (use \"nf4\" or \"q8_0\")",
                    config.model.display()
                )));
            }
            ProjectionStorage::GgufBlocks
        }
        // QLoRA: each projection encoded as it is read, so the dense base never exists.
        Some(BaseQuantization::Quantize(ty)) => ProjectionStorage::Quantize(ty),
    };
    let pre = Preprocessor::load(&config.model)?;
    let objective = tc.objective.build();
    let rows = RowOptions {
        max_length: tc.max_length,
        completion_only_loss: config.completion_only_loss,
        packing: config.sft_packing(),
    };
    let read = |path: &Path| read_train_rows(path, objective.row_kind(), &pre, &rows);
    let train = read(&config.train_file)?;
    let eval = config.eval_file.as_deref().map(read).transpose()?;

    // The data is read first (the tokenizer needs no weights), so the estimate knows the
    // longest row, and a run that cannot fit is refused before the weights are read.
    check_memory(
        config,
        precision,
        projections,
        &train,
        objective.needs_reference(),
    )?;
    let pretrained = Pretrained::load_with(&config.model, &train_device, storage, projections)?;

    // The adapter names its base so that it loads from any working directory: a local
    // model as its absolute path, a hub id as written.
    let base_name = std::fs::canonicalize(&config.model)
        .unwrap_or_else(|_| config.model.clone())
        .display()
        .to_string();
    let lora = config.lora.as_ref().map(|l| {
        LoraFineTuning::new(
            l.to_lora_config()
                .with_base_model_name_or_path(base_name.clone()),
        )
    });

    let reference = if objective.needs_reference() {
        match &config.reference {
            ReferenceConfig::InitialPolicy if lora.is_some() => Reference::FromFineTuning,
            ReferenceConfig::InitialPolicy => Reference::Model(pretrained.model.valid()),
            ReferenceConfig::Model { path } => {
                Reference::Model(Pretrained::load(path, &plain_device, precision.frozen())?.model)
            }
            ReferenceConfig::Cache { path } => {
                let cache = RefCache::load_unchecked(path)?;
                if let TrainRows::Preference(pairs) = &train {
                    let fp = dataset_fingerprint(pairs, tc.max_length);
                    if fp != cache.dataset_fingerprint {
                        return Err(TrainError::Config(format!(
                            "{}: the reference cache was computed for other data (or another \
                             max_length)",
                            path.display()
                        )));
                    }
                }
                Reference::Cache(cache)
            }
        }
    } else {
        Reference::None
    };

    let pad_id = pretrained
        .special
        .pad
        .or_else(|| pretrained.special.eos.first().copied())
        .unwrap_or(0);
    let Pretrained {
        model,
        tokenizer,
        chat_template,
        special,
        source,
    } = pretrained;
    let model = match &lora {
        Some(l) => {
            train_device.seed(tc.seed);
            let adapters = precision.is_mixed().then_some(burn::tensor::DType::F32);
            l.inject_with_dtype(model, &train_device, adapters)?
        }
        None => model,
    };
    let data = TrainData { train, eval };
    let mut trainer =
        Trainer::with_objective(model, tc.clone(), objective, data, reference, pad_id)?
            .with_progress(progress)
            .with_precision(precision);
    if let Some(l) = &lora {
        trainer = trainer.with_fine_tuning(Box::new(l.clone()));
    }
    if config.resume {
        trainer.resume_latest()?;
    }
    let summary = trainer.train()?;
    if summary.stopped_early {
        return Ok(summary);
    }
    let model = trainer.into_model().valid();
    let out = &tc.output_dir;
    match &lora {
        Some(l) if config.save_adapter_only => {
            temper_lora::save_adapter(&model, l.config(), out)?;
            save_tokenizer_files(out, &model, &tokenizer, chat_template.as_ref(), &special)?;
        }
        _ => {
            let model = if lora.is_some() {
                temper_lora::merge_and_unload(model)?
            } else {
                model
            };
            let trained = Pretrained {
                model,
                tokenizer,
                chat_template,
                special,
                source,
            };
            // What the weights were trained in: the master dtype, or a merged LoRA's base.
            trained.save(out, storage)?;
        }
    }
    Ok(summary)
}

/// Prints the memory estimate (a `tracing` info line) and, on a CPU device with
/// `memory_check`, refuses a run whose estimate exceeds the memory available.
fn check_memory(
    config: &StageConfig,
    precision: TrainPrecision,
    projections: ProjectionStorage,
    train: &TrainRows,
    needs_reference: bool,
) -> Result<()> {
    let model_config = temper_llm_arch::read_config(&config.model)?;
    let projections_kept = projections;
    let projections = match projections {
        ProjectionStorage::Dense => ProjectionBytes::Dense,
        ProjectionStorage::Quantize(ty) => ProjectionBytes::Quantized(ty),
        ProjectionStorage::GgufBlocks => {
            ProjectionBytes::Exact(temper_llm_arch::gguf_projection_bytes(&config.model)?)
        }
    };
    let lora = config.lora.as_ref().map(LoraSettings::to_lora_config);
    let matcher = lora
        .as_ref()
        .map(|l| l.target_matcher())
        .transpose()?
        .flatten();
    let rank = |path: &str| {
        let l = lora.as_ref()?;
        matcher
            .as_ref()
            .is_some_and(|m| m.matches(path, LayerKind::Linear))
            .then(|| l.rank_for(path))
    };
    let tc = &config.trainer;
    let estimate = MemoryEstimate::new(&MemoryPlan {
        config: &model_config,
        precision,
        projections,
        lora_rank: lora
            .is_some()
            .then_some(&rank as &dyn Fn(&str) -> Option<usize>),
        sequences: tc.batch_size.saturating_mul(train.sequences_per_row()),
        seq_len: train.longest(),
        gradient_checkpointing: tc.gradient_checkpointing,
        save_merged: lora.is_none() || !config.save_adapter_only,
        load_decodes_whole_file: temper_llm_arch::is_gguf_path(&config.model)
            && projections_kept != ProjectionStorage::GgufBlocks,
        reference_model: needs_reference
            && !matches!(config.reference, ReferenceConfig::Cache { .. })
            && !(lora.is_some() && config.reference == ReferenceConfig::InitialPolicy),
    });
    let available = available_memory();
    tracing::info!(
        "memory estimate: {estimate}; available: {}",
        available.map_or_else(|| "unknown".into(), crate::memory::gib)
    );
    let on_cpu = config.device.trim().eq_ignore_ascii_case("cpu");
    match available {
        Some(bytes) if config.memory_check && on_cpu => estimate.check_fits(bytes),
        Some(bytes) if estimate.check_fits(bytes).is_err() => {
            tracing::warn!("the memory estimate exceeds the memory available; starting anyway");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `tokenizer.json` and `tokenizer_config.json` (with the chat template) next to an adapter,
/// as `Pretrained::save` writes them for a full model.
fn save_tokenizer_files(
    dir: &Path,
    model: &LlamaForCausalLM,
    tokenizer: &Tokenizer,
    chat_template: Option<&ChatTemplate>,
    special: &SpecialTokens,
) -> Result<()> {
    Ok(temper_llm_arch::save_tokenizer_files(
        dir,
        model.config(),
        tokenizer,
        chat_template,
        special,
    )?)
}

/// Writes the model of checkpoint `checkpoint` (one of `config`'s run, e.g. an epoch's with
/// `save_strategy = "epoch"`) as an HF directory `out`, as [`run_stage`] saves the final
/// model: the stage's input model (`config.model`) gives the config and tokenizer files, the
/// checkpoint the weights (full fine-tuning) or the adapter merged into them (LoRA). What the
/// pipeline's CPT-epochs sweep evaluates and merges.
///
/// # Errors
/// Loading the input model or the checkpoint (a LoRA checkpoint whose base is not
/// `config.model`), saving `out`.
pub fn save_checkpoint_as_model(config: &StageConfig, checkpoint: &Path, out: &Path) -> Result<()> {
    config.validate()?;
    let spec: DeviceSpec = config.device.parse()?;
    let precision: TrainPrecision = config.precision.parse()?;
    let device = spec.with_autodiff(false).device()?;
    // The dtypes `run_stage` loads and saves in: a LoRA base's fingerprint in the checkpoint
    // was taken in the frozen dtype.
    let storage = if config.lora.is_some() {
        precision.frozen()
    } else {
        precision.master()
    };
    let pretrained = Pretrained::load(&config.model, &device, storage)?;
    let Pretrained {
        model,
        tokenizer,
        chat_template,
        special,
        source,
    } = pretrained;
    let model = match &config.lora {
        Some(l) => {
            let lora = LoraFineTuning::new(l.to_lora_config());
            let with_adapter = crate::checkpoint::load_checkpoint_model(checkpoint, &model, &lora)?;
            temper_lora::merge_and_unload(with_adapter)?
        }
        None => crate::checkpoint::load_checkpoint_model(
            checkpoint,
            &model,
            &crate::finetune::FullFineTuning,
        )?,
    };
    Pretrained {
        model,
        tokenizer,
        chat_template,
        special,
        source,
    }
    .save(out, storage)?;
    Ok(())
}
