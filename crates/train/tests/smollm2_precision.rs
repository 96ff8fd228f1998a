//! Mixed precision on the real SmolLM2-135M-Instruct: bf16-mixed SFT follows the f32 loss
//! curve over 50 steps (LoRA and full fine-tuning), and f16-mixed recovers from an injected
//! overflow of its loss scale (steps skipped, the scale halved each time, both in the metrics).
//!
//! Model: as `smollm2_lora.rs` (`TEMPER_SMOLLM2_DIR`, else `TEMPER_SMOLLM2_GGUF`).
#![allow(clippy::unwrap_used)]

mod smollm2_common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{DType, Device};
use temper_llm_arch::Pretrained;
use temper_lora::LoraConfig;
use temper_objectives::CausalLmConfig;
use temper_objectives::data::Preprocessor;
use temper_train::{
    LogRecord, LoraFineTuning, ObjectiveConfig, Reference, RowKind, RowOptions, ScheduleKind,
    TrainPrecision, TrainRows, Trainer, TrainerConfig, read_train_rows,
};

use smollm2_common::model_path;

const ROWS: [(&str, &str); 6] = [
    (
        "What makes spider dragline silk so tough?",
        " Beta-sheet nanocrystals give it strength; amorphous chains let it stretch.",
    ),
    (
        "Why is nacre tougher than aragonite?",
        " Its brick-and-mortar layers of tablets and protein deflect cracks.",
    ),
    (
        "What is bone made of?",
        " Collagen fibres and hydroxyapatite platelets, arranged in a hierarchy.",
    ),
    (
        "How does silk compare with steel?",
        " By weight it is stronger than steel and far tougher.",
    ),
    (
        "What is the mortar in nacre?",
        " A thin organic layer of proteins and beta-chitin.",
    ),
    (
        "Why are ceramics brittle?",
        " A single crack can grow without dislocations to blunt it.",
    ),
];

/// Short rows keep 2 × 50 steps of the 135M model affordable in CI (a step costs ~6 FLOPs per
/// parameter and token, ~25 GFLOP here).
const MAX_LENGTH: usize = 32;

struct Setup {
    path: PathBuf,
    rows: TrainRows,
    pad: u32,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let path = model_path();
    let pre = if path.is_dir() {
        Preprocessor::from_hf_dir(&path).unwrap()
    } else {
        Preprocessor::from_gguf(&path).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let jsonl: Vec<String> = ROWS
        .iter()
        .map(|(p, c)| serde_json::json!({"prompt": p, "completion": c}).to_string())
        .collect();
    let data = dir.path().join("rows.jsonl");
    std::fs::write(&data, jsonl.join("\n")).unwrap();
    let options = RowOptions {
        max_length: Some(MAX_LENGTH),
        completion_only_loss: true,
        packing: None,
    };
    let rows = read_train_rows(&data, RowKind::Sequences, &pre, &options).unwrap();
    // SmolLM2's pad token.
    Setup {
        path,
        rows,
        pad: 2,
        _dir: dir,
    }
}

/// Trains `steps` SFT steps in `precision` and returns the logged records.
fn train(
    s: &Setup,
    precision: TrainPrecision,
    lora: bool,
    config: TrainerConfig,
) -> Vec<LogRecord> {
    let device = Device::flex().autodiff();
    let storage = if lora {
        precision.frozen()
    } else {
        precision.master()
    };
    let model = Pretrained::load(&s.path, &device, storage).unwrap().model;
    let fine_tuning = lora.then(|| LoraFineTuning::new(LoraConfig::new(8, 16.0)));
    let model = match &fine_tuning {
        Some(l) => {
            device.seed(0);
            let adapters = precision.is_mixed().then_some(DType::F32);
            l.inject_with_dtype(model, &device, adapters).unwrap()
        }
        None => model,
    };
    let mut trainer = Trainer::new(model, config, s.rows.clone(), None, Reference::None, s.pad)
        .unwrap()
        .with_precision(precision);
    if let Some(l) = fine_tuning {
        trainer = trainer.with_fine_tuning(Box::new(l));
    }
    let t = Instant::now();
    let summary = trainer.train().unwrap();
    eprintln!(
        "{precision} {} : {} steps in {:.1?}",
        if lora { "LoRA" } else { "full" },
        summary.steps,
        t.elapsed()
    );
    summary.log_history
}

fn config(dir: &Path, lr: f64, steps: usize) -> TrainerConfig {
    TrainerConfig {
        objective: ObjectiveConfig::Sft(CausalLmConfig::default()),
        learning_rate: lr,
        max_steps: Some(steps),
        batch_size: 1,
        max_length: Some(MAX_LENGTH),
        seed: 7,
        lr_scheduler_type: ScheduleKind::Constant,
        logging_steps: 1,
        output_dir: dir.to_path_buf(),
        vocab_tile: 8192,
        ..TrainerConfig::default()
    }
}

fn losses(records: &[LogRecord]) -> Vec<f64> {
    records.iter().filter_map(|r| r.get("loss")).collect()
}

/// How closely bf16-mixed must follow f32.
#[derive(Clone, Copy)]
enum Tolerance {
    /// Step by step within this many nats or 5 % of the f32 loss, whichever is larger.
    PerStep(f64),
    /// The mean of every 10 consecutive steps within this many nats.
    PerWindow(f64),
}

/// bf16-mixed against f32 over the same 50 steps (same data order, same initial weights,
/// batch 1: each step's loss is one row's, so the curves compare row by row).
///
/// Why they differ: bf16 keeps 8 significant bits, so each product operand moves by up to 2⁻⁹
/// relative; a token's NLL moves by ~1e-2 (`make_golden_bf16.py` measures transformers' own
/// bf16-vs-f32 logit spread on this model: 0.45–1.5 at a position). Training compounds it
/// through the updates.
fn follows_f32(lora: bool, lr: f64, tolerance: Tolerance) {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let steps = 50;
    let f32_run = losses(&train(
        &s,
        TrainPrecision::F32,
        lora,
        config(&dir.path().join("f32"), lr, steps),
    ));
    let mixed = losses(&train(
        &s,
        TrainPrecision::Bf16Mixed,
        lora,
        config(&dir.path().join("bf16"), lr, steps),
    ));
    assert_eq!(f32_run.len(), steps);
    assert_eq!(mixed.len(), steps);
    eprintln!("f32   {f32_run:.3?}\nbf16m {mixed:.3?}");
    match tolerance {
        Tolerance::PerStep(nats) => {
            for (i, (a, b)) in f32_run.iter().zip(&mixed).enumerate() {
                assert!(
                    (a - b).abs() <= nats.max(0.05 * a.abs()),
                    "step {}: f32 {a} vs bf16-mixed {b}\nf32 {f32_run:?}\nbf16-mixed {mixed:?}",
                    i + 1
                );
            }
        }
        Tolerance::PerWindow(nats) => {
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            for (w, (a, b)) in f32_run.chunks(10).zip(mixed.chunks(10)).enumerate() {
                let (a, b) = (mean(a), mean(b));
                eprintln!(
                    "steps {}-{}: f32 {a:.4}, bf16-mixed {b:.4}",
                    10 * w + 1,
                    10 * w + 10
                );
                assert!(
                    (a - b).abs() <= nats,
                    "steps {}-{}: mean f32 {a} vs bf16-mixed {b}\nf32 {f32_run:?}\nbf16-mixed {mixed:?}",
                    10 * w + 1,
                    10 * w + 10
                );
            }
        }
    }
    // Both learned: the last ten losses are well below the first ten.
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for run in [&f32_run, &mixed] {
        assert!(mean(&run[40..]) < 0.3 * mean(&run[..10]), "{run:?}");
    }
    // The rounding is real: bf16 products do not reproduce f32 bit for bit.
    assert_ne!(f32_run, mixed);
}

/// Measured here: the worst step differs by 0.4 % of the loss.
#[test]
fn bf16_mixed_lora_sft_follows_the_f32_loss_curve() {
    follows_f32(true, 5e-4, Tolerance::PerStep(0.1));
}

/// Full fine-tuning follows less tightly, and for a reason that is bf16's, not Temper's: an
/// AdamW step moves a weight by ~lr = 2e-5, a tenth of bf16's spacing at SmolLM2's typical
/// weight magnitude (|w| ≈ 0.05 → 2⁻⁸·0.05 ≈ 2e-4), so the bf16 copy the products see changes
/// only when the f32 master crosses a rounding midpoint (torch's autocast does the same). The
/// curves agree within 2 % for the first ten steps and drift apart as the loss falls towards
/// zero (measured: window means 4.05/4.12, 2.68/2.79, 1.37/1.50, 0.52/0.63, 0.13/0.20); the
/// gradients themselves agree to a cosine of 0.99997 per tensor.
#[test]
fn bf16_mixed_full_sft_follows_the_f32_loss_curve() {
    follows_f32(false, 2e-5, Tolerance::PerWindow(0.25));
}

/// An initial loss scale of 2⁴⁰ overflows f16 on the first backward: those steps are skipped,
/// the scale halves each time, and once it fits training proceeds and lowers the loss.
#[test]
fn f16_mixed_recovers_from_an_injected_overflow() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 5e-4, 40);
    cfg.loss_scale.init_scale = 2f64.powi(40);
    let records = train(&s, TrainPrecision::F16Mixed, true, cfg);
    assert_eq!(records.len(), 40);
    let scales: Vec<f64> = records
        .iter()
        .map(|r| r.get("loss_scale").unwrap())
        .collect();
    let skipped: Vec<f64> = records
        .iter()
        .map(|r| r.get("skipped_steps").unwrap())
        .collect();
    let n_skipped = records
        .iter()
        .take_while(|r| r.get("grad_norm").is_none())
        .count();
    eprintln!("skipped {n_skipped}; scales {scales:?}");
    assert!(n_skipped >= 1, "2^40 did not overflow f16");
    assert!(n_skipped <= 30, "the scale never fit: {scales:?}");
    let mut scale = 2f64.powi(40);
    let mut count = 0;
    for (i, r) in records.iter().enumerate() {
        // A skipped step has no grad norm and halves the scale; an applied one keeps it (the
        // growth interval, 2000 steps, is never reached here).
        if r.get("grad_norm").is_none() {
            scale /= 2.0;
            count += 1;
        } else {
            assert!(r.get("grad_norm").unwrap().is_finite(), "step {}", i + 1);
        }
        assert_eq!(scales[i], scale, "step {}", i + 1);
        assert_eq!(skipped[i], count as f64, "step {}", i + 1);
    }
    // After the injected overflow the scale settles: at most a few later overflows (the
    // gradients grow as the loss falls; measured: one), and most steps train.
    assert!(count - n_skipped <= 3, "{scales:?}");
    assert!(records.len() - count >= 10, "{scales:?}");
    // Learning resumed: the last five rows' mean loss is well below the first five trained.
    let l = losses(&records);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&l[35..]) < 0.8 * mean(&l[n_skipped..n_skipped + 5]),
        "{l:?}"
    );
}
