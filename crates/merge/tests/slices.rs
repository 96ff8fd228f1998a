//! `slices:` — layer stacking with passthrough, and per-slice parameters.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use temper_merge::{MergeConfig, MergeOptions, NoProgress, run_merge};

fn models() -> PathBuf {
    match std::env::var_os("TEMPER_MERGE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mergekit"),
    }
}

fn merge(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let config = MergeConfig::from_yaml(yaml, "test.yml").expect("config");
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let options = MergeOptions {
        config_dir: Some(models()),
        ..MergeOptions::default()
    };
    run_merge(&config, Some(yaml), &out, &options, &NoProgress).expect("merge");
    (tmp, out)
}

#[test]
fn passthrough_slices_stack_layers_and_update_the_layer_count() {
    let yaml = "slices:\n  - sources:\n      - model: models/a_f32\n        layer_range: [0, 3]\n  - sources:\n      - model: models/b_f32\n        layer_range: [2, 4]\nmerge_method: passthrough\ndtype: float32\n";
    let (_tmp, out) = merge(yaml);
    let merged = std::fs::read(out.join("model.safetensors")).expect("read");
    let merged = SafeTensors::deserialize(&merged).expect("parse");
    let a = std::fs::read(models().join("models/a_f32/model.safetensors")).expect("a");
    let a = SafeTensors::deserialize(&a).expect("parse a");
    let b = std::fs::read(models().join("models/b_f32/model.safetensors")).expect("b");
    let b = SafeTensors::deserialize(&b).expect("parse b");
    let q = |i: usize| format!("model.layers.{i}.self_attn.q_proj.weight");
    // Output layers 0..3 are a's 0..3, output layers 3..5 are b's 2..4.
    for i in 0..3 {
        assert_eq!(
            merged.tensor(&q(i)).expect("q").data(),
            a.tensor(&q(i)).expect("q").data()
        );
    }
    for (o, src) in [(3, 2), (4, 3)] {
        assert_eq!(
            merged.tensor(&q(o)).expect("q").data(),
            b.tensor(&q(src)).expect("q").data()
        );
    }
    assert!(merged.tensor(&q(5)).is_err());
    // Embedding from the first slice, final norm and lm_head from the last.
    let e = "model.embed_tokens.weight";
    assert_eq!(
        merged.tensor(e).expect("e").data(),
        a.tensor(e).expect("e").data()
    );
    let n = "model.norm.weight";
    assert_eq!(
        merged.tensor(n).expect("n").data(),
        b.tensor(n).expect("n").data()
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("cfg"))
            .expect("json");
    assert_eq!(cfg["num_hidden_layers"], 5);
}

#[test]
fn slice_parameters_take_precedence_over_global_ones() {
    // Two slices of SLERP: the first with its own t = 0 (returns the base exactly), the second
    // with the global t = 1 (returns the other model exactly).
    let yaml = "slices:\n  - sources:\n      - model: models/a_f32\n        layer_range: [0, 2]\n      - model: models/b_f32\n        layer_range: [0, 2]\n    parameters:\n      t: 0.0\n  - sources:\n      - model: models/a_f32\n        layer_range: [2, 4]\n      - model: models/b_f32\n        layer_range: [2, 4]\nmerge_method: slerp\nbase_model: models/a_f32\nparameters:\n  t: 1.0\ndtype: float32\n";
    let (_tmp, out) = merge(yaml);
    let merged = std::fs::read(out.join("model.safetensors")).expect("read");
    let merged = SafeTensors::deserialize(&merged).expect("parse");
    let a = std::fs::read(models().join("models/a_f32/model.safetensors")).expect("a");
    let a = SafeTensors::deserialize(&a).expect("parse a");
    let b = std::fs::read(models().join("models/b_f32/model.safetensors")).expect("b");
    let b = SafeTensors::deserialize(&b).expect("parse b");
    let name = |i: usize| format!("model.layers.{i}.mlp.down_proj.weight");
    assert_eq!(
        merged.tensor(&name(1)).expect("t").data(),
        a.tensor(&name(1)).expect("t").data()
    );
    assert_eq!(
        merged.tensor(&name(3)).expect("t").data(),
        b.tensor(&name(3)).expect("t").data()
    );
}
