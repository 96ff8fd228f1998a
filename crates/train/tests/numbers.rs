//! Broken numbers in a training config or a checkpoint's `trainer_state.json` are errors
//! naming the field and its range, not a run that saturates, overflows or silently does
//! nothing.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use temper_objectives::CausalLmConfig;
use temper_train::{ObjectiveConfig, Reference, TrainRows, Trainer, TrainerConfig};

mod common;
use common::{config, sft_rows, tiny_model};

fn sft(dir: &Path, steps: usize) -> TrainerConfig {
    config(ObjectiveConfig::Sft(CausalLmConfig::default()), dir, steps)
}

fn trainer(cfg: TrainerConfig) -> temper_train::Result<Trainer> {
    Trainer::new(
        tiny_model(),
        cfg,
        TrainRows::Sequences(sft_rows()),
        None,
        Reference::None,
        0,
    )
}

#[test]
fn out_of_range_hyper_parameters_name_the_field_and_range() {
    let dir = tempfile::tempdir().unwrap();
    type Case = (fn(&mut TrainerConfig), &'static str);
    let cases: [Case; 8] = [
        (
            |c| {
                c.max_steps = None;
                c.num_train_epochs = 1e300;
            },
            "num_train_epochs 1e300 is out of range (must be in (0, 1099511627776.0])",
        ),
        (
            |c| {
                c.max_steps = None;
                c.num_train_epochs = f64::NAN;
            },
            "num_train_epochs NaN is out of range",
        ),
        (
            |c| c.learning_rate = f64::NAN,
            "learning_rate NaN is out of range (must be a finite number ≥ 0)",
        ),
        (
            |c| c.learning_rate = -1.0,
            "learning_rate -1 is out of range",
        ),
        (
            |c| c.warmup_ratio = -0.5,
            "warmup_ratio -0.5 is out of range (must be in [0, 1])",
        ),
        (
            |c| c.batch_size = 0,
            "batch_size 0 is out of range (must be ≥ 1)",
        ),
        (
            |c| c.gradient_accumulation_steps = 0,
            "gradient_accumulation_steps 0 is out of range (must be ≥ 1)",
        ),
        (
            |c| c.max_steps = Some(1 << 62),
            "max_steps 4611686018427387904 is out of range (must be in [1, 1099511627776])",
        ),
    ];
    for (edit, expected) in cases {
        let mut c = sft(dir.path(), 2);
        edit(&mut c);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
        // The trainer refuses it too (an embedder that skips `validate`).
        let err = trainer(c).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn epochs_that_give_too_many_steps_are_refused_once_the_data_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = sft(dir.path(), 2);
    c.max_steps = None;
    // Within the epoch bound alone, but 6 rows in batches of 4 are 2 micro-batches an epoch.
    c.num_train_epochs = 1e12;
    c.validate().unwrap();
    let err = trainer(c).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("num_train_epochs 1000000000000.0 over 2 micro-batches an epoch gives 2000000000000.0 optimizer steps (at most 1099511627776)"),
        "{err}"
    );
}

/// Train two steps with a checkpoint at the end, edit its `trainer_state.json` and resume.
fn resume_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(sft(dir.path(), 2)).unwrap();
    t.train().unwrap();
    let state = dir.path().join("checkpoint-2/trainer_state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&state, v.to_string()).unwrap();
    let mut again = trainer(sft(dir.path(), 2)).unwrap();
    let err = again.resume_latest().unwrap_err().to_string();
    assert!(err.contains("checkpoint-2"), "{err}");
    err
}

#[test]
fn a_trainer_state_with_impossible_counters_is_refused() {
    let err = resume_with(|v| v["step"] = serde_json::json!(1u64 << 63));
    assert!(
        err.contains("trainer_state.json `step` 9223372036854775808 is out of range (must be ≤ total_steps 2)"),
        "{err}"
    );
    let err = resume_with(|v| v["step"] = serde_json::json!(3));
    assert!(err.contains("`step` 3 is out of range"), "{err}");
    let err = resume_with(|v| v["total_steps"] = serde_json::json!(1u64 << 63));
    assert!(
        err.contains(
            "`total_steps` 9223372036854775808 is out of range (must be in [1, 1099511627776])"
        ),
        "{err}"
    );
    let err = resume_with(|v| v["next_micro_batch"] = serde_json::json!(u64::MAX));
    assert!(
        err.contains("`next_micro_batch` 18446744073709551615 is out of range (must be ≤ step 2 × gradient_accumulation_steps 1)"),
        "{err}"
    );
}
