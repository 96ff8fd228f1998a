//! Merging Qwen2 / Qwen3 checkpoints (temper-llm-arch's tiny transformers fixtures): the
//! name-based plan carries q/k/v biases and Qwen3's per-head `q_norm` / `k_norm` like any other
//! layer tensor, and a layer stack keeps `layer_types` (which layers use the sliding window)
//! one entry per output layer, taken from the layer each came from.

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use serde_json::{Value, json};
use temper_merge::{MergeConfig, MergeOptions, NoProgress, run_merge};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../llm-arch/tests/fixtures")
}

fn merge(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let config = MergeConfig::from_yaml(yaml, "test.yml").expect("config");
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("out");
    let options = MergeOptions {
        config_dir: Some(fixtures()),
        ..MergeOptions::default()
    };
    run_merge(&config, Some(yaml), &out, &options, &NoProgress).expect("merge");
    (tmp, out)
}

fn f32s(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn slerp_of_qwen3_with_itself_keeps_every_tensor_including_head_norms() {
    let yaml = "merge_method: slerp\nbase_model: tiny_qwen3\nmodels:\n  - model: tiny_qwen3\n  - model: tiny_qwen3\nparameters:\n  t: 0.5\ndtype: float32\n";
    let (_tmp, out) = merge(yaml);
    let merged = std::fs::read(out.join("model.safetensors")).expect("read");
    let merged = SafeTensors::deserialize(&merged).expect("parse");
    let src = std::fs::read(fixtures().join("tiny_qwen3/model.safetensors")).expect("src");
    let src = SafeTensors::deserialize(&src).expect("parse src");
    let mut names = merged.names();
    let mut want = src.names();
    names.sort();
    want.sort();
    assert_eq!(names, want);
    assert!(names.iter().any(|n| n.ends_with("self_attn.q_norm.weight")));
    assert!(names.iter().any(|n| n.ends_with("self_attn.o_proj.bias")));
    for name in names {
        let (a, b) = (f32s(&merged, name), f32s(&src, name));
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(d <= 1e-6, "{name}: {d}");
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["model_type"], "qwen3");
    assert_eq!(
        config["layer_types"],
        json!(["full_attention", "full_attention"])
    );
}

#[test]
fn stacked_qwen2_layers_keep_their_biases_and_their_window() {
    // Output layers: 0 ← 0 (full), 1 ← 1, 2 ← 2, 3 ← 2 (sliding).
    let yaml = "slices:\n  - sources:\n      - model: tiny_qwen2\n        layer_range: [0, 3]\n  - sources:\n      - model: tiny_qwen2\n        layer_range: [2, 3]\nmerge_method: passthrough\ndtype: float32\n";
    let (_tmp, out) = merge(yaml);
    let merged = std::fs::read(out.join("model.safetensors")).expect("read");
    let merged = SafeTensors::deserialize(&merged).expect("parse");
    let src = std::fs::read(fixtures().join("tiny_qwen2/model.safetensors")).expect("src");
    let src = SafeTensors::deserialize(&src).expect("parse src");
    for (o, s) in [(0, 0), (1, 1), (2, 2), (3, 2)] {
        for t in ["q_proj.bias", "k_proj.bias", "v_proj.bias"] {
            assert_eq!(
                f32s(&merged, &format!("model.layers.{o}.self_attn.{t}")),
                f32s(&src, &format!("model.layers.{s}.self_attn.{t}")),
            );
        }
    }
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["num_hidden_layers"], 4);
    assert_eq!(
        config["layer_types"],
        json!([
            "full_attention",
            "sliding_attention",
            "sliding_attention",
            "sliding_attention"
        ])
    );
}
