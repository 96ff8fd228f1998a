//! SFT packing through `run_stage` (TRL `packing=True`): a packed run trains on fewer, fuller
//! rows, so the same epochs take fewer steps; the packing keys are refused, by name, where
//! they do not apply.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use temper_objectives::data::PackingStrategy;
use temper_train::{StageConfig, TrainSummary};

mod common;
use common::{losses, write_base};

/// Eight prompt/completion rows of a few tokens each.
fn write_rows(dir: &Path) {
    let rows: Vec<String> = [
        ("the cat", " sat on the mat"),
        ("a dog", " ran on a mat"),
        ("the dog", " sat on a mat"),
        ("a cat", " ran on the mat"),
    ]
    .iter()
    .cycle()
    .take(8)
    .map(|(p, c)| format!(r#"{{"prompt": "{p}", "completion": "{c}"}}"#))
    .collect();
    std::fs::write(dir.join("rows.jsonl"), rows.join("\n")).unwrap();
}

fn stage(dir: &Path, out: &str, packing: &str) -> StageConfig {
    let text = format!(
        r#"
model = "base"
train_file = "rows.jsonl"
eval_file = "rows.jsonl"
{packing}

[trainer]
learning_rate = 1e-2
num_train_epochs = 2
batch_size = 2
logging_steps = 1
max_length = 32
vocab_tile = 16
output_dir = "{out}"

[trainer.objective]
type = "sft"
"#
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, text).unwrap();
    StageConfig::from_toml_file(&path).unwrap()
}

fn run(stage: &StageConfig) -> TrainSummary {
    temper_train::run_stage(stage, false).unwrap()
}

/// 8 rows at 2 per step take 4 steps an epoch unpacked; packed into 32-token blocks they fill
/// fewer rows, so the two epochs take fewer steps, and the losses stay finite and fall (with
/// gradient checkpointing too).
#[test]
fn packed_sft_runs_take_fewer_steps_for_the_same_epochs() {
    let dir = tempfile::tempdir().unwrap();
    write_base(dir.path());
    write_rows(dir.path());
    let plain = run(&stage(dir.path(), "plain", ""));
    assert_eq!(plain.steps, 8);
    for strategy in PackingStrategy::NAMES {
        let packing = format!("packing = true\npacking_strategy = \"{strategy}\"");
        let config = stage(dir.path(), strategy, &packing);
        assert_eq!(config.sft_packing().map(|s| s.name()), Some(strategy));
        let packed = run(&config);
        assert!(
            packed.steps < plain.steps && packed.steps >= 2,
            "{strategy}: {} packed steps vs {} unpacked",
            packed.steps,
            plain.steps
        );
        let l = losses(&packed);
        assert!(l.iter().all(|x| x.is_finite()), "{strategy}: {l:?}");
        assert!(l.last() < l.first(), "{strategy}: {l:?}");
        assert!(packed.eval_loss.is_some_and(f64::is_finite));
        if strategy == "bfd" {
            // The recomputing backward of gradient checkpointing sees the same packed mask.
            let mut ckpt = stage(dir.path(), "bfd-ckpt", &packing);
            ckpt.trainer.gradient_checkpointing = true;
            let again = losses(&run(&ckpt));
            assert_eq!(again.len(), l.len());
            for (a, b) in l.iter().zip(&again) {
                assert!((a - b).abs() < 1e-5, "{l:?} vs {again:?}");
            }
        }
    }
}

fn refusal(objective: &str, keys: &str) -> String {
    let text = format!(
        "model = 'm'\ntrain_file = 't'\n{keys}\n[trainer]\noutput_dir = 'o'\n\
         [trainer.objective]\ntype = '{objective}'\n"
    );
    match StageConfig::from_toml_str(&text) {
        Ok(_) => panic!("{objective} accepted {keys}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn packing_keys_are_refused_where_they_do_not_apply() {
    for objective in ["dpo", "orpo", "kto"] {
        let err = refusal(objective, "packing = true");
        assert!(
            err.contains("packing = true") && err.contains(objective),
            "{err}"
        );
        let err = refusal(objective, "packing_strategy = 'wrapped'");
        assert!(err.contains("packing_strategy"), "{err}");
    }
    let err = refusal("cpt", "packing_strategy = 'bfd'");
    assert!(
        err.contains("packing_strategy = \"bfd\"") && err.contains("wrapped"),
        "{err}"
    );
    let err = refusal("sft", "packing = true\npacking_strategy = 'ffd'");
    assert!(err.contains("ffd"), "{err}");
    // CPT always packs: `packing` is accepted either way, and so is "wrapped".
    for keys in [
        "packing = false",
        "packing = true\npacking_strategy = 'wrapped'",
    ] {
        let text = format!(
            "model = 'm'\ntrain_file = 't'\n{keys}\n[trainer]\noutput_dir = 'o'\n\
             [trainer.objective]\ntype = 'cpt'\n"
        );
        let stage = StageConfig::from_toml_str(&text).unwrap();
        assert_eq!(stage.sft_packing(), None);
    }
}
