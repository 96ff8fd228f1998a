//! Bad inputs give an error naming the culprit, and never leave an output directory behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, tensor::TensorView};
use temper_merge::{MergeConfig, MergeOptions, NoProgress, run_merge};

/// A tiny Llama-like checkpoint: embedding, one layer, final norm (f32, values `seed + i/100`).
fn write_model(dir: &Path, hidden: usize, vocab: usize, seed: f32, skip: Option<&str>) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("model.embed_tokens.weight", vec![vocab, hidden]),
        ("model.layers.0.input_layernorm.weight", vec![hidden]),
        (
            "model.layers.0.self_attn.q_proj.weight",
            vec![hidden, hidden],
        ),
        (
            "model.layers.0.mlp.up_proj.weight",
            vec![2 * hidden, hidden],
        ),
        ("model.norm.weight", vec![hidden]),
        ("lm_head.weight", vec![vocab, hidden]),
    ];
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .filter(|(n, _)| Some(*n) != skip)
        .map(|(n, s)| {
            let numel: usize = s.iter().product();
            let bytes = (0..numel)
                .flat_map(|i| (seed + (i % 97) as f32 / 100.0).to_le_bytes())
                .collect();
            (n.to_string(), s, bytes)
        })
        .collect();
    let views: BTreeMap<String, TensorView<'_>> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(&views, None, &dir.join("model.safetensors")).expect("write");
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "num_hidden_layers": 1, "vocab_size": vocab,
        "torch_dtype": "float32", "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
}

fn slerp_config(a: &str, b: &str) -> String {
    format!(
        "models:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\nbase_model: {a}\nparameters:\n  t: 0.5\ndtype: float32\n"
    )
}

/// Run a merge expected to fail; return the error text and check nothing was written.
fn merge_err(root: &Path, yaml: &str, options: MergeOptions) -> String {
    let out: PathBuf = root.join("out");
    let config = match MergeConfig::from_yaml(yaml, "test.yml") {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let options = MergeOptions {
        config_dir: Some(root.to_path_buf()),
        ..options
    };
    let err = run_merge(&config, Some(yaml), &out, &options, &NoProgress)
        .err()
        .map(|e| e.to_string())
        .expect("the merge should fail");
    assert!(!out.exists(), "an output directory was left behind: {err}");
    let leftovers: Vec<_> = std::fs::read_dir(root)
        .expect("read root")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("temper-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    err
}

#[test]
fn mismatched_shapes_name_the_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().expect("tmp");
    write_model(&tmp.path().join("a"), 8, 16, 0.1, None);
    write_model(&tmp.path().join("b"), 6, 16, 0.2, None);
    let err = merge_err(tmp.path(), &slerp_config("a", "b"), MergeOptions::default());
    assert!(err.contains("shape mismatch"), "{err}");
    assert!(err.contains("[16, 8]") && err.contains("[16, 6]"), "{err}");
}

#[test]
fn different_vocabularies_need_an_explicit_choice() {
    let tmp = tempfile::tempdir().expect("tmp");
    write_model(&tmp.path().join("a"), 8, 16, 0.1, None);
    write_model(&tmp.path().join("b"), 8, 12, 0.2, None);
    let err = merge_err(tmp.path(), &slerp_config("a", "b"), MergeOptions::default());
    assert!(err.contains("model.embed_tokens.weight"), "{err}");
    assert!(err.contains("--unsafe-truncate-embeddings"), "{err}");

    // With the flag the common rows are kept and config.json says so.
    let config = MergeConfig::from_yaml(&slerp_config("a", "b"), "t").expect("config");
    let out = tmp.path().join("out");
    let options = MergeOptions {
        config_dir: Some(tmp.path().to_path_buf()),
        unsafe_truncate_embeddings: true,
        ..MergeOptions::default()
    };
    run_merge(&config, None, &out, &options, &NoProgress).expect("truncating merge");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("cfg"))
            .expect("json");
    assert_eq!(cfg["vocab_size"], 12);
}

#[test]
fn missing_tensor_names_tensor_and_model() {
    let tmp = tempfile::tempdir().expect("tmp");
    write_model(&tmp.path().join("a"), 8, 16, 0.1, None);
    write_model(
        &tmp.path().join("b"),
        8,
        16,
        0.2,
        Some("model.layers.0.mlp.up_proj.weight"),
    );
    let err = merge_err(tmp.path(), &slerp_config("a", "b"), MergeOptions::default());
    assert!(err.contains("model.layers.0.mlp.up_proj.weight"), "{err}");
    assert!(err.contains("model b"), "{err}");
}

#[test]
fn truncated_shard_names_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    write_model(&tmp.path().join("a"), 8, 16, 0.1, None);
    write_model(&tmp.path().join("b"), 8, 16, 0.2, None);
    let file = tmp.path().join("b/model.safetensors");
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() - 100]).expect("truncate");
    let err = merge_err(tmp.path(), &slerp_config("a", "b"), MergeOptions::default());
    assert!(err.contains("b/model.safetensors"), "{err}");
}

#[test]
fn unknown_method_and_parameters_are_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    write_model(&tmp.path().join("a"), 8, 16, 0.1, None);
    write_model(&tmp.path().join("b"), 8, 16, 0.2, None);
    let yaml = slerp_config("a", "b").replace("merge_method: slerp", "merge_method: slurp");
    let err = merge_err(tmp.path(), &yaml, MergeOptions::default());
    assert!(err.contains("slurp"), "{err}");

    // A parameter the method does not read is ignored, as mergekit ignores it (the plan's
    // unit test checks the warning naming it): the merge runs.
    let yaml = slerp_config("a", "b").replace("t: 0.5", "t: 0.5\n  density: 0.3");
    let config = MergeConfig::from_yaml(&yaml, "test.yml").expect("config");
    let options = MergeOptions {
        config_dir: Some(tmp.path().to_path_buf()),
        ..MergeOptions::default()
    };
    let out = tmp.path().join("ignored");
    run_merge(&config, Some(&yaml), &out, &options, &NoProgress).expect("mergekit runs it");
    assert!(out.join("model.safetensors").exists());

    let yaml = slerp_config("a", "b").replace("parameters:\n  t: 0.5\n", "");
    let err = merge_err(tmp.path(), &yaml, MergeOptions::default());
    assert!(err.contains("`t`"), "{err}");

    let yaml = "models:\n  - model: a\n  - model: b\nmerge_method: linear\n";
    let err = merge_err(tmp.path(), yaml, MergeOptions::default());
    assert!(err.contains("`weight`") && err.contains("model a"), "{err}");
}

#[test]
fn existing_output_is_not_clobbered() {
    let tmp = tempfile::tempdir().expect("tmp");
    write_model(&tmp.path().join("a"), 8, 16, 0.1, None);
    write_model(&tmp.path().join("b"), 8, 16, 0.2, None);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    std::fs::write(out.join("keep.txt"), "x").expect("write");
    let config = MergeConfig::from_yaml(&slerp_config("a", "b"), "t").expect("config");
    let options = MergeOptions {
        config_dir: Some(tmp.path().to_path_buf()),
        ..MergeOptions::default()
    };
    let err = run_merge(&config, None, &out, &options, &NoProgress)
        .err()
        .map(|e| e.to_string())
        .expect("must refuse");
    assert!(err.contains("--overwrite"), "{err}");
    assert!(out.join("keep.txt").exists());
}

#[test]
fn sharded_output_round_trips_and_is_thread_count_independent() {
    let tmp = tempfile::tempdir().expect("tmp");
    write_model(&tmp.path().join("a"), 16, 64, 0.1, None);
    write_model(&tmp.path().join("b"), 16, 64, -0.3, None);
    let config = MergeConfig::from_yaml(&slerp_config("a", "b"), "t").expect("config");
    let run = |name: &str, threads: usize, shard: u64| -> PathBuf {
        let out = tmp.path().join(name);
        let options = MergeOptions {
            config_dir: Some(tmp.path().to_path_buf()),
            out_shard_size: shard,
            threads: Some(threads),
            ..MergeOptions::default()
        };
        run_merge(&config, None, &out, &options, &NoProgress).expect("merge");
        out
    };
    let one = run("one", 1, 5_000_000_000);
    let two = run("two", 2, 5_000_000_000);
    assert_eq!(
        std::fs::read(one.join("model.safetensors")).expect("read"),
        std::fs::read(two.join("model.safetensors")).expect("read")
    );
    // Small shards: an index that names every tensor, and the same tensor bytes.
    let sharded = run("sharded", 2, 3000);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sharded.join("model.safetensors.index.json")).expect("index"),
    )
    .expect("json");
    let map = index["weight_map"].as_object().expect("weight_map");
    assert_eq!(map.len(), 6);
    let whole = std::fs::read(one.join("model.safetensors")).expect("read");
    let whole = safetensors::SafeTensors::deserialize(&whole).expect("parse");
    for (name, file) in map {
        let bytes = std::fs::read(sharded.join(file.as_str().expect("str"))).expect("shard");
        let shard = safetensors::SafeTensors::deserialize(&bytes).expect("parse shard");
        assert_eq!(
            shard.tensor(name).expect("tensor").data(),
            whole.tensor(name).expect("tensor").data(),
            "{name}"
        );
    }
}
