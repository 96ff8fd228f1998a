//! PEFT 0.21.2 adapters on Qwen2 and Qwen3 (fixtures made by `tests/fixtures/qwen/make_fixtures.py`
//! on temper-llm-arch's tiny transformers models): the seven PEFT target names select the same
//! projections, the adapted and merged logits equal PEFT's, and merging keeps the base's q/k/v
//! biases and Qwen3's q/k norms untouched; the merged directory reloads (its `config.json`
//! keeps the family and Qwen2's sliding layers) with the same logits.

use std::path::PathBuf;

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use temper_backend::FloatPrecision;
use temper_llm_arch::checkpoint::hf_tensors;
use temper_llm_arch::{Family, ForwardOptions, LlamaForCausalLM};
use temper_lora::{adapter_paths, load_adapter, merge_and_unload, save_merged};

mod common;
use common::{assert_close, fixtures, load_dir, read_f32};

fn base_dir(name: &str) -> PathBuf {
    fixtures()
        .join("../../../llm-arch/tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> (Vec<usize>, Vec<f32>) {
    read_f32(&fixtures().join("qwen/expected.safetensors"), name)
}

fn logits(model: &LlamaForCausalLM, device: &Device) -> Vec<f32> {
    let (shape, ids) = expected("input_ids");
    let ids: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [shape[0], shape[1]]), device);
    model
        .forward(ids, &ForwardOptions::default())
        .expect("forward")
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32")
}

/// Tensors of `model` whose name ends with one of `suffixes`.
fn vectors(model: &LlamaForCausalLM, suffixes: &[&str]) -> Vec<(String, Vec<f32>)> {
    hf_tensors(model)
        .into_iter()
        .filter(|(n, _)| suffixes.iter().any(|s| n.ends_with(s)))
        .map(|(n, t)| (n, t.data))
        .collect()
}

fn check(base: &str, family: Family, kept: &[&str], kept_count: usize) {
    let d = Device::flex();
    let model = load_dir(&base_dir(base), &d);
    assert_eq!(model.config().family(), family);
    let before = vectors(&model, kept);
    assert_eq!(
        before.len(),
        kept_count,
        "{base}: vectors the adapter must not touch"
    );

    let (adapted, config) =
        load_adapter(model, fixtures().join(format!("qwen/{base}_adapter")), &d).expect("load");
    assert_eq!(config.r, 4);
    assert_eq!(
        adapter_paths(&adapted).len(),
        7 * adapted.config().num_hidden_layers
    );
    let (_, want) = expected(&format!("{base}_adapter_logits"));
    assert_close(base, &logits(&adapted, &d), &want, 1e-4);

    let merged = merge_and_unload(adapted.clone()).expect("merge");
    assert!(adapter_paths(&merged).is_empty());
    let (_, want_merged) = expected(&format!("{base}_merged_logits"));
    assert_close(base, &logits(&merged, &d), &want_merged, 1e-4);
    assert_eq!(
        vectors(&merged, kept),
        before,
        "{base}: biases / norms changed"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    save_merged(&adapted, dir.path(), FloatPrecision::F32).expect("save merged");
    let reloaded = load_dir(dir.path(), &d);
    assert_eq!(reloaded.config().family(), family);
    assert_eq!(
        reloaded.config().sliding_layers,
        merged.config().sliding_layers
    );
    assert_close(base, &logits(&reloaded, &d), &logits(&merged, &d), 0.0);
}

#[test]
fn qwen2_adapter_matches_peft_and_merges_keeping_its_biases() {
    // 3 layers × q, k, v biases.
    check("tiny_qwen2", Family::Qwen2, &["_proj.bias"], 9);
}

#[test]
fn qwen3_adapter_matches_peft_and_merges_keeping_its_head_norms() {
    // 2 layers × (q, k, v, o biases + q_norm, k_norm).
    check(
        "tiny_qwen3",
        Family::Qwen3,
        &["_proj.bias", "q_norm.weight", "k_norm.weight"],
        12,
    );
}
