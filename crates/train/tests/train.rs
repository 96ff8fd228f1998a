//! Trainer tests on tiny random models built here (no downloads): every objective overfits a
//! handful of rows, full fine-tuning moves the weights, an interrupted and resumed run equals
//! an uninterrupted one bit for bit, the NaN guard names the step, global-norm clipping and
//! the LR schedules match hand computations of PyTorch/HF's formulas.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, GradientCheckpointingStrategy, Int, Tensor, TensorData};
use temper_llm_arch::checkpoint::hf_tensors;
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM};
use temper_objectives::data::{PackOptions, UnpairedTokens, pack_documents};
use temper_objectives::{CausalLmConfig, CpoConfig, DpoConfig, KtoConfig, OrpoConfig};
use temper_train::{
    LrSchedule, ObjectiveConfig, Reference, ScheduleKind, StageConfig, TrainError, TrainPrecision,
    TrainRows, Trainer, clip_grad_norm, global_grad_norm, with_gradient_checkpointing,
};

mod common;
use common::{VOCAB, config, device, losses, pairs, sft_rows, tiny_model, write_base};

fn unpaired() -> Vec<UnpairedTokens> {
    pairs()
        .into_iter()
        .enumerate()
        .map(|(i, p)| UnpairedTokens {
            prompt_ids: p.prompt_ids,
            completion_ids: if i % 2 == 0 {
                p.chosen_ids
            } else {
                p.rejected_ids
            },
            label: i % 2 == 0,
        })
        .collect()
}

/// Trains `steps` steps and checks the loss fell (mean of the last 3 vs the first 3).
fn overfits(objective: ObjectiveConfig, rows: TrainRows, with_reference: bool, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let reference = if with_reference {
        Reference::Model(model.valid())
    } else {
        Reference::None
    };
    let name = objective.name();
    let mut trainer = Trainer::new(
        model,
        config(objective, dir.path(), steps),
        rows,
        None,
        reference,
        0,
    )
    .unwrap();
    let summary = trainer.train().unwrap();
    let l = losses(&summary);
    assert_eq!(l.len(), steps);
    let head = l[..3].iter().sum::<f64>() / 3.0;
    let tail = l[l.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(tail < head * 0.8, "{name}: loss did not fall: {l:?}");
}

#[test]
fn sft_overfits_and_writes_metrics_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let before = hf_tensors(&model);
    let mut cfg = config(
        ObjectiveConfig::Sft(CausalLmConfig::default()),
        dir.path(),
        20,
    );
    cfg.logging_steps = 5;
    let mut trainer = Trainer::new(
        model,
        cfg,
        TrainRows::Sequences(sft_rows()),
        Some(TrainRows::Sequences(sft_rows()[..2].to_vec())),
        Reference::None,
        0,
    )
    .unwrap();
    let summary = trainer.train().unwrap();
    let l = losses(&summary);
    assert_eq!(l.len(), 4);
    assert!(l[3] < l[0] * 0.5, "{l:?}");
    // Full fine-tuning moved every tensor.
    let after = hf_tensors(trainer.model());
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert_ne!(a.data, b.data, "{name} did not move");
    }
    // metrics.jsonl with TRL names, one line per logging step plus the final eval.
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for key in [
        "loss",
        "learning_rate",
        "grad_norm",
        "epoch",
        "mean_token_accuracy",
        "entropy",
        "num_tokens",
        "step",
    ] {
        assert!(lines[0].get(key).is_some(), "missing {key}: {}", lines[0]);
    }
    assert!(lines[4].get("eval_loss").is_some());
    assert!(summary.eval_loss.is_some());
    let svg = std::fs::read_to_string(dir.path().join("loss.svg")).unwrap();
    assert!(svg.contains("<svg"));
    assert!(dir.path().join("checkpoint-20/model.safetensors").is_file());
    assert!(dir.path().join("checkpoint-20/optimizer.bpk").is_file());
}

#[test]
fn cpt_overfits_packed_blocks() {
    let docs: Vec<Vec<u32>> = sft_rows().into_iter().map(|r| r.input_ids).collect();
    let blocks = pack_documents(&docs, &PackOptions::new(12, Some(0))).unwrap();
    overfits(
        ObjectiveConfig::Cpt(CausalLmConfig::default()),
        TrainRows::Packed(blocks),
        false,
        15,
    );
}

#[test]
fn dpo_overfits_with_frozen_reference() {
    overfits(
        ObjectiveConfig::Dpo(DpoConfig::default()),
        TrainRows::Preference(pairs()),
        true,
        15,
    );
}

#[test]
fn dpo_overfits_with_reference_cache() {
    use temper_objectives::{RefCacheOptions, precompute_reference};
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let mut opts = RefCacheOptions::new(0, Some(16));
    opts.chunk = temper_objectives::ChunkConfig::with_vocab_tile(16);
    let cache = precompute_reference(&model.valid(), &pairs(), &opts).unwrap();
    let cfg = config(ObjectiveConfig::Dpo(DpoConfig::default()), dir.path(), 15);
    let mut trainer = Trainer::new(
        model,
        cfg,
        TrainRows::Preference(pairs()),
        None,
        Reference::Cache(cache),
        0,
    )
    .unwrap();
    let l = losses(&trainer.train().unwrap());
    // Step 1 with the cache equals ln 2 (policy = reference).
    assert!((l[0] - std::f64::consts::LN_2).abs() < 1e-4, "{l:?}");
    assert!(l[l.len() - 1] < l[0] * 0.8, "{l:?}");
}

#[test]
fn orpo_overfits() {
    overfits(
        ObjectiveConfig::Orpo(OrpoConfig::default()),
        TrainRows::Preference(pairs()),
        false,
        15,
    );
}

#[test]
fn simpo_overfits() {
    overfits(
        ObjectiveConfig::Simpo(CpoConfig::simpo(2.0, 0.5)),
        TrainRows::Preference(pairs()),
        false,
        15,
    );
}

#[test]
fn kto_overfits() {
    overfits(
        ObjectiveConfig::Kto(KtoConfig::default()),
        TrainRows::Unpaired(unpaired()),
        true,
        15,
    );
}

fn weights(m: &LlamaForCausalLM) -> Vec<(String, Vec<u32>)> {
    hf_tensors(m)
        .into_iter()
        .map(|(n, t)| (n, t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    resumed_run_equals_uninterrupted_run_in(TrainPrecision::F32);
}

/// Mixed precision resumes bit-exactly too: the f32 master weights and the AdamW moments are
/// in the checkpoint, the half-type rounding is a function of them.
#[test]
fn resumed_bf16_mixed_run_equals_uninterrupted_run() {
    resumed_run_equals_uninterrupted_run_in(TrainPrecision::Bf16Mixed);
}

/// … and f16-mixed carries its loss scale through the checkpoint.
#[test]
fn resumed_f16_mixed_run_equals_uninterrupted_run() {
    resumed_run_equals_uninterrupted_run_in(TrainPrecision::F16Mixed);
}

fn resumed_run_equals_uninterrupted_run_in(precision: TrainPrecision) {
    let init = tiny_model();
    let cfg = |dir: &Path| {
        let mut c = config(ObjectiveConfig::Sft(CausalLmConfig::default()), dir, 6);
        c.batch_size = 2;
        c.gradient_accumulation_steps = 2;
        c.save_steps = Some(2);
        c.lr_scheduler_type = ScheduleKind::Cosine;
        c.warmup_steps = 2;
        c.learning_rate = 5e-3;
        // A scale that does not overflow the tiny model's gradients, growing every 2 steps so
        // the resumed run must restore it.
        c.loss_scale.init_scale = 1024.0;
        c.loss_scale.growth_interval = 2;
        c
    };
    let rows = || TrainRows::Sequences(sft_rows());

    let a = tempfile::tempdir().unwrap();
    let mut full = Trainer::new(
        init.clone(),
        cfg(a.path()),
        rows(),
        None,
        Reference::None,
        0,
    )
    .unwrap()
    .with_precision(precision);
    let summary_a = full.train().unwrap();
    assert_eq!(summary_a.steps, 6);

    let b = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(
        init.clone(),
        cfg(b.path()),
        rows(),
        None,
        Reference::None,
        0,
    )
    .unwrap()
    .with_precision(precision)
    .with_stop_after(Some(3));
    let stopped = first.train().unwrap();
    assert!(stopped.stopped_early);
    assert_eq!(stopped.steps, 3);
    drop(first);
    // "Killed" after step 3: the newest checkpoint is step 2; resume from it.
    let mut other = Trainer::new(
        init.clone(),
        cfg(b.path()),
        rows(),
        None,
        Reference::None,
        0,
    )
    .unwrap()
    .with_precision(if precision == TrainPrecision::F32 {
        TrainPrecision::Bf16Mixed
    } else {
        TrainPrecision::F32
    });
    let err = other.resume_latest().unwrap_err().to_string();
    assert!(err.contains("precision is"), "{err}");
    let mut second = Trainer::new(init, cfg(b.path()), rows(), None, Reference::None, 0)
        .unwrap()
        .with_precision(precision);
    assert!(second.resume_latest().unwrap());
    assert_eq!(second.state().step, 2);
    let summary_b = second.train().unwrap();

    assert_eq!(weights(full.model()), weights(second.model()));
    assert_eq!(losses(&summary_a), losses(&summary_b));
    assert_eq!(summary_a.log_history, summary_b.log_history);
    let jsonl = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    assert_eq!(jsonl(a.path()), jsonl(b.path()));
    if precision == TrainPrecision::F16Mixed {
        let scales: Vec<f64> = summary_b
            .log_history
            .iter()
            .filter_map(|r| r.get("loss_scale"))
            .collect();
        assert_eq!(scales, [1024.0, 2048.0, 2048.0, 4096.0, 4096.0, 8192.0]);
    }
}

#[test]
fn nan_loss_stops_with_the_step_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = tiny_model();
    model.model.norm.weight = Param::from_tensor(Tensor::full([32], f32::NAN, &device()));
    let cfg = config(
        ObjectiveConfig::Sft(CausalLmConfig::default()),
        dir.path(),
        5,
    );
    let mut trainer = Trainer::new(
        model,
        cfg,
        TrainRows::Sequences(sft_rows()),
        None,
        Reference::None,
        0,
    )
    .unwrap();
    let ckpt = trainer.save().unwrap();
    let err = trainer.train().unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TrainError::NonFiniteLoss { step: 1, .. }),
        "{msg}"
    );
    assert!(msg.contains("step 1"), "{msg}");
    assert!(msg.contains(&ckpt.display().to_string()), "{msg}");
    assert!(ckpt.join("trainer_state.json").is_file());
}

#[derive(Module, Debug)]
struct Two {
    a: Param<Tensor<1>>,
    b: Param<Tensor<2>>,
}

#[test]
fn global_norm_clipping_matches_hand_computation() {
    let dev = device();
    let two = Two {
        a: Param::from_tensor(Tensor::zeros([3], &dev)),
        b: Param::from_tensor(Tensor::zeros([2, 2], &dev)),
    };
    let ca = [1.0f32, -2.0, 2.0];
    let cb = [3.0f32, 0.0, -4.0, 1.0];
    let grads = || {
        let ta = Tensor::<1>::from_data(TensorData::new(ca.to_vec(), [3]), &dev);
        let tb = Tensor::<2>::from_data(TensorData::new(cb.to_vec(), [2, 2]), &dev);
        let loss = (two.a.val() * ta).sum() + (two.b.val() * tb).sum();
        GradientsParams::from_grads(loss.backward(), &two)
    };
    let expected = ca
        .iter()
        .chain(&cb)
        .map(|v| f64::from(v * v))
        .sum::<f64>()
        .sqrt(); // √35
    let g = grads();
    assert!((global_grad_norm(&two, &g) - expected).abs() < 1e-5);

    // Clip to 1: every gradient scaled by 1 / (norm + 1e-6).
    let mut g = grads();
    let norm = clip_grad_norm(&two, &mut g, 1.0);
    assert!((norm - expected).abs() < 1e-5);
    let scale = 1.0 / (expected + 1e-6);
    let ga: Vec<f32> = g
        .get::<1>(two.a.id)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect();
    let gb: Vec<f32> = g
        .get::<2>(two.b.id)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect();
    for (got, want) in ga.iter().zip(&ca).chain(gb.iter().zip(&cb)) {
        assert!(
            (f64::from(*got) - f64::from(*want) * scale).abs() < 1e-6,
            "{got} vs {want}"
        );
    }
    assert!((global_grad_norm(&two, &g) - 1.0).abs() < 1e-5);

    // A large threshold leaves the gradients untouched.
    let mut g = grads();
    clip_grad_norm(&two, &mut g, 100.0);
    let ga: Vec<f32> = g
        .get::<1>(two.a.id)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect();
    assert_eq!(ga, ca.to_vec());
}

#[test]
fn lr_schedules_match_hf_formulas() {
    let s = |kind| LrSchedule {
        peak: 1.0,
        warmup: 4,
        total: 20,
        kind,
    };
    // HF get_linear_schedule_with_warmup: step/warmup, then (total - step)/(total - warmup).
    let linear = s(ScheduleKind::Linear);
    for (step, want) in [
        (0, 0.0),
        (1, 0.25),
        (3, 0.75),
        (4, 1.0),
        (12, 0.5),
        (19, 1.0 / 16.0),
        (20, 0.0),
        (25, 0.0),
    ] {
        assert!((linear.factor(step) - want).abs() < 1e-12, "linear {step}");
    }
    // HF get_cosine_schedule_with_warmup (num_cycles 0.5).
    let cosine = s(ScheduleKind::Cosine);
    for step in 4..=20 {
        let progress = (step as f64 - 4.0) / 16.0;
        let want = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        assert!((cosine.factor(step) - want).abs() < 1e-12, "cosine {step}");
    }
    assert!((cosine.factor(2) - 0.5).abs() < 1e-12);
    assert!((cosine.factor(12) - 0.5).abs() < 1e-12);
    let constant = s(ScheduleKind::Constant);
    assert_eq!(constant.factor(2), 0.5);
    assert_eq!(constant.factor(15), 1.0);
    // warmup_ratio rounds up like HF's get_warmup_steps.
    assert_eq!(LrSchedule::warmup_steps(0, 0.1, 25), 3);
    assert_eq!(LrSchedule::warmup_steps(5, 0.1, 25), 5);
    let with_peak = LrSchedule {
        peak: 2e-5,
        ..linear
    };
    assert!((with_peak.lr(12) - 1e-5).abs() < 1e-18);
}

#[test]
fn stage_config_from_toml() {
    let text = r#"
        model = "models/smol"
        train_file = "data/train.jsonl"
        eval_file = "data/eval.jsonl"
        reference = { kind = "cache", path = "ref.json" }

        [trainer]
        learning_rate = 1e-5
        max_steps = 100
        batch_size = 4
        gradient_accumulation_steps = 8
        lr_scheduler_type = "cosine"
        warmup_ratio = 0.1
        output_dir = "out"

        [trainer.objective]
        type = "dpo"
        beta = 0.2
        loss_type = ["sigmoid", "sft"]
    "#;
    let stage = StageConfig::from_toml_str(text).unwrap();
    assert_eq!(stage.trainer.gradient_accumulation_steps, 8);
    assert_eq!(stage.trainer.adam_epsilon, 1e-8);
    assert_eq!(stage.trainer.weight_decay, 0.0);
    assert_eq!(stage.trainer.max_grad_norm, Some(1.0));
    match &stage.trainer.objective {
        ObjectiveConfig::Dpo(c) => {
            assert_eq!(c.beta, 0.2);
            assert_eq!(c.loss_type.len(), 2);
        }
        other => panic!("parsed {other:?}"),
    }
    assert!(
        StageConfig::from_toml_str("model = 'm'\ntrain_file = 't'\n[trainer]\nbatch_size = 0\n")
            .is_err()
    );
    assert!(
        StageConfig::from_toml_str("model = 'm'\ntrain_file = 't'\n[trainer]\nbogus = 1\n")
            .is_err()
    );
}

/// Gradient accumulation divides the token-loss sum by the targets of the whole window: two
/// micro-batches of 2 rows give the step one batch of 4 rows gives, although the rows have
/// different numbers of targets (a mean of micro-batch means would not).
#[test]
fn accumulation_is_token_correct() {
    let mut rows = sft_rows();
    for (i, r) in rows.iter_mut().enumerate() {
        r.truncate(4 + i % 4);
    }
    let init = tiny_model();
    let run = |bs: usize, ga: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(
            ObjectiveConfig::Sft(CausalLmConfig::default()),
            dir.path(),
            1,
        );
        c.batch_size = bs;
        c.gradient_accumulation_steps = ga;
        c.max_grad_norm = None;
        c.learning_rate = 1e-3;
        // Adam's first update is lr·g/(|g| + ε): with the default ε = 1e-8 it is ≈ lr·sign(g),
        // so a last-bit difference in a near-zero gradient (summation order) flips a whole
        // lr-sized step. A larger ε makes the update a smooth function of the gradient, so
        // equal weights below really mean equal accumulated gradients.
        c.adam_epsilon = 1e-3;
        let mut t = Trainer::new(
            init.clone(),
            c,
            TrainRows::Sequences(rows.clone()),
            None,
            Reference::None,
            0,
        )
        .unwrap();
        let s = t.train().unwrap();
        (
            losses(&s)[0],
            s.log_history[0].get("grad_norm").unwrap(),
            hf_tensors(t.model()),
        )
    };
    let (loss_a, norm_a, wa) = run(4, 1);
    let (loss_b, norm_b, wb) = run(2, 2);
    assert!((loss_a - loss_b).abs() < 1e-5, "{loss_a} vs {loss_b}");
    assert!((norm_a - norm_b).abs() < 1e-4, "{norm_a} vs {norm_b}");
    for ((name, a), (_, b)) in wa.iter().zip(&wb) {
        let d = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-5, "{name}: {d}");
    }
}

/// `run_stage` from a TOML stage file: HF directory in, JSONL through the data module, SFT,
/// HF directory out that `Pretrained::load` reads.
#[test]
fn run_stage_end_to_end() {
    use temper_llm_arch::Pretrained;
    let dir = tempfile::tempdir().unwrap();
    write_base(dir.path());
    std::fs::write(
        dir.path().join("stage.toml"),
        r#"
model = "base"
train_file = "train.jsonl"
eval_file = "train.jsonl"

[trainer]
learning_rate = 1e-2
max_steps = 12
batch_size = 3
logging_steps = 4
save_steps = 6
lr_scheduler_type = "linear"
warmup_ratio = 0.1
max_length = 16
vocab_tile = 16
output_dir = "out"

[trainer.objective]
type = "sft"
"#,
    )
    .unwrap();
    let stage = StageConfig::from_toml_file(dir.path().join("stage.toml")).unwrap();
    let summary = temper_train::run_stage(&stage, false).unwrap();
    assert_eq!(summary.steps, 12);
    let l = losses(&summary);
    assert!(l[2] < l[0], "{l:?}");
    let out = dir.path().join("out");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
        "loss.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(out.join("checkpoint-6").is_dir() && out.join("checkpoint-12").is_dir());
    let trained =
        Pretrained::load(&out, &Device::flex(), temper_backend::FloatPrecision::F32).unwrap();
    assert_eq!(trained.model.config().vocab_size, VOCAB);

    // Resuming a finished run trains no further and keeps the history.
    let mut again = stage.clone();
    again.resume = true;
    let s2 = temper_train::run_stage(&again, false).unwrap();
    assert_eq!(s2.steps, 12);
    assert_eq!(losses(&s2), l);
    assert_eq!(s2.log_history, summary.log_history);
}

/// `save_strategy = "epoch"` (HF's) writes a checkpoint after the step that ends each epoch,
/// and [`temper_train::save_checkpoint_as_model`] turns one into an HF directory: the last
/// epoch's is the stage's own saved model, bit for bit, for full fine-tuning and for LoRA
/// (adapter merged). `save_steps` beside another strategy is refused, naming both keys.
#[test]
fn epoch_checkpoints_become_models() {
    use temper_llm_arch::Pretrained;
    for lora in ["", "[lora]\nr = 2\n"] {
        let dir = tempfile::tempdir().unwrap();
        write_base(dir.path());
        let text = format!(
            r#"
model = "base"
train_file = "train.jsonl"

[trainer]
learning_rate = 1e-2
num_train_epochs = 3
batch_size = 2
save_strategy = "epoch"
max_length = 16
vocab_tile = 16
output_dir = "out"

[trainer.objective]
type = "sft"

{lora}"#
        );
        std::fs::write(dir.path().join("stage.toml"), &text).unwrap();
        let stage = StageConfig::from_toml_file(dir.path().join("stage.toml")).unwrap();
        let summary = temper_train::run_stage(&stage, false).unwrap();
        // 3 rows in batches of 2: 2 steps an epoch.
        assert_eq!(summary.steps, 6, "{lora}");
        let out = dir.path().join("out");
        let steps: Vec<usize> = temper_train::checkpoint::list_checkpoints(&out)
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, [2, 4, 6], "{lora}");

        let load = |d: &Path| {
            let p =
                Pretrained::load(d, &Device::flex(), temper_backend::FloatPrecision::F32).unwrap();
            weights(&p.model)
        };
        let last = dir.path().join("epoch-3");
        temper_train::save_checkpoint_as_model(&stage, &out.join("checkpoint-6"), &last).unwrap();
        assert_eq!(load(&last), load(&out), "{lora}");
        let first = dir.path().join("epoch-1");
        temper_train::save_checkpoint_as_model(&stage, &out.join("checkpoint-2"), &first).unwrap();
        assert!(first.join("tokenizer.json").is_file());
        assert_ne!(load(&first), load(&out), "{lora}");
        assert_ne!(load(&first), load(&dir.path().join("base")), "{lora}");
    }

    let mut bad = temper_train::TrainerConfig {
        save_strategy: temper_train::SaveStrategy::Epoch,
        save_steps: Some(2),
        ..Default::default()
    };
    let e = bad.validate_hyperparameters().unwrap_err().to_string();
    assert!(e.contains("save_steps") && e.contains("\"epoch\""), "{e}");
    bad.save_strategy = temper_train::SaveStrategy::Steps;
    assert!(bad.validate_hyperparameters().is_ok());
}

/// `gradient_checkpointing` keeps only each decoder layer's input and recomputes the layers
/// one at a time in the backward pass (`CheckpointTape`): from the same initial weights, the
/// losses equal those of a run without it, with gradient accumulation, and nothing stays on
/// the tape after a step.
#[test]
fn gradient_checkpointing_gives_the_same_losses() {
    let model = tiny_model();
    let run = |model: LlamaForCausalLM, checkpointing: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(
            ObjectiveConfig::Sft(CausalLmConfig::default()),
            dir.path(),
            6,
        );
        cfg.batch_size = 2;
        cfg.gradient_accumulation_steps = 2;
        cfg.gradient_checkpointing = checkpointing;
        let mut trainer = Trainer::new(
            model,
            cfg,
            TrainRows::Sequences(sft_rows()),
            None,
            Reference::None,
            0,
        )
        .unwrap();
        let summary = trainer.train().unwrap();
        let tape = trainer.model().checkpoint_tape().map(|t| t.pending());
        (losses(&summary), tape)
    };
    let (plain, plain_tape) = run(model.clone(), false);
    let (ckpt, ckpt_tape) = run(model, true);
    assert_eq!(plain_tape, None);
    assert_eq!(
        ckpt_tape,
        Some(0),
        "every recorded forward was back-propagated"
    );
    assert_eq!(plain.len(), 6);
    assert_eq!(plain.len(), ckpt.len());
    for (a, b) in plain.iter().zip(&ckpt) {
        assert!((a - b).abs() < 1e-5, "{plain:?} vs {ckpt:?}");
    }
    assert!(plain[5] < plain[0], "{plain:?}");
}

/// The helper keeps ids and values and makes a model whose forward/backward runs twice under
/// the strategy (a model moved with `to_device` fails the second backward).
#[test]
fn with_gradient_checkpointing_keeps_weights_and_leaf_parameters() {
    let model = tiny_model();
    let before = hf_tensors(&model);
    let ids = model.model.embed_tokens.weight.id;
    let model = with_gradient_checkpointing(model);
    assert_eq!(model.model.embed_tokens.weight.id, ids);
    let device = model.device();
    assert_eq!(
        device.gradient_checkpointing_strategy(),
        Some(GradientCheckpointingStrategy::Balanced)
    );
    for ((name, a), (_, b)) in before.iter().zip(&hf_tensors(&model)) {
        assert_eq!(a.data, b.data, "{name} changed");
    }
    let input = Tensor::<2, Int>::from_data(TensorData::new((1..9i64).collect(), [1, 8]), &device);
    for _ in 0..2 {
        let hidden = model
            .forward_hidden(input.clone(), &Default::default(), None)
            .unwrap();
        let grads = hidden.sum().backward();
        assert!(model.model.embed_tokens.weight.grad(&grads).is_some());
    }
}

#[test]
fn fused_adamw_equals_burn_adamw_and_shares_its_record() {
    use burn::optim::{AdamWConfig, ModuleOptimizer};
    use temper_train::FusedAdamWConfig;

    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(
            (0..12).map(|i| (i * 5 % VOCAB) as i64).collect::<Vec<_>>(),
            [2, 6],
        ),
        &device(),
    );
    let step = |model: LlamaForCausalLM, optim: &mut ModuleOptimizer, lr: f64| {
        let logits = model
            .forward(ids.clone(), &ForwardOptions::default())
            .unwrap();
        let grads = (logits.clone() * logits).mean().backward();
        let grads = GradientsParams::from_grads(grads, &model);
        optim.step(lr, model, grads)
    };
    let burn_adamw = || {
        AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.99)
            .with_epsilon(1e-8)
            .with_weight_decay(0.05)
            .init()
    };
    let fused = FusedAdamWConfig {
        adam_beta1: 0.9,
        adam_beta2: 0.99,
        adam_epsilon: 1e-8,
        weight_decay: 0.05,
    };
    let lrs = [3e-3, 2e-3, 1e-3];

    let init = tiny_model();
    let (mut a, mut b) = (init.clone(), init.clone());
    let (mut opt_a, mut opt_b) = (burn_adamw(), fused.init());
    for (i, lr) in lrs.into_iter().enumerate() {
        a = step(a, &mut opt_a, lr);
        b = step(b, &mut opt_b, lr);
        assert_eq!(weights(&a), weights(&b), "weights after step {}", i + 1);
    }
    assert_ne!(weights(&a), weights(&init), "the steps moved the weights");

    // burn's record continues with the fused optimizer (and the other way round).
    let bytes_a = opt_a.into_bytes().unwrap();
    let bytes_b = opt_b.into_bytes().unwrap();
    let mut from_burn = fused.init().from_bytes(bytes_a).unwrap();
    let mut from_fused = burn_adamw().from_bytes(bytes_b).unwrap();
    let (a4, b4) = (
        step(a, &mut from_burn, 5e-4),
        step(b, &mut from_fused, 5e-4),
    );
    assert_eq!(weights(&a4), weights(&b4), "weights after the resumed step");
}
