//! Applying PEFT adapters to a base model (`apply_adapter`, `base+adapter` references).

use std::path::{Path, PathBuf};

use serde_json::json;
use temper_merge::{
    AdapterConfig, DType, MergeConfig, ModelSource, apply_adapter, lora_delta, open_models,
};

use crate::{Lcg, Tensors, TestResult, read, t, write_model, write_safetensors};

const PREFIX: &str = "base_model.model.";
const Q: &str = "model.layers.0.self_attn.q_proj";
const K: &str = "model.layers.0.self_attn.k_proj";
fn write_adapter(dir: &Path, config: &serde_json::Value, tensors: &Tensors) -> TestResult {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("adapter_config.json"), config.to_string())?;
    write_safetensors(&dir.join("adapter_model.safetensors"), tensors, DType::F32)
}

fn lora_config(r: usize, alpha: f64, targets: &[&str]) -> serde_json::Value {
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": targets,
        "use_rslora": false,
        "fan_in_fan_out": false,
    })
}

/// A one-layer base: q_proj [6, 5], k_proj [4, 5], a norm [5].
fn small_base(rng: &mut Lcg) -> Tensors {
    let mut t = Tensors::new();
    t.insert(format!("{Q}.weight"), (vec![6, 5], rng.vec(30)));
    t.insert(format!("{K}.weight"), (vec![4, 5], rng.vec(20)));
    t.insert(
        "model.layers.0.input_layernorm.weight".into(),
        (vec![5], rng.vec(5)),
    );
    t
}

/// `W + scale·B·A` in f64, the textbook definition.
fn direct(w: &[f32], a: &[f32], b: &[f32], r: usize, fan_in: usize, scale: f64) -> Vec<f64> {
    let out = w.len() / fan_in;
    let mut res = vec![0f64; w.len()];
    for o in 0..out {
        for i in 0..fan_in {
            let mut s = 0f64;
            for k in 0..r {
                s += f64::from(b[o * r + k]) * f64::from(a[k * fan_in + i]);
            }
            res[o * fan_in + i] = f64::from(w[o * fan_in + i]) + scale * s;
        }
    }
    res
}

fn max_abs_diff(x: &[f32], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(y)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max)
}

/// A base and an adapter with LoRA on q_proj and k_proj; returns (base dir, adapter dir,
/// base tensors, adapter tensors).
fn base_and_adapter(
    root: &Path,
    config: &serde_json::Value,
    r: usize,
    dtype: DType,
) -> Result<(PathBuf, PathBuf, Tensors, Tensors), Box<dyn std::error::Error>> {
    let mut rng = Lcg(0x9e37_79b9_7f4a_7c15);
    let base = small_base(&mut rng);
    let mut adapter = Tensors::new();
    adapter.insert(
        format!("{PREFIX}{Q}.lora_A.weight"),
        (vec![r, 5], rng.vec(r * 5)),
    );
    adapter.insert(
        format!("{PREFIX}{Q}.lora_B.weight"),
        (vec![6, r], rng.vec(6 * r)),
    );
    adapter.insert(
        format!("{PREFIX}{K}.lora_A.weight"),
        (vec![r, 5], rng.vec(r * 5)),
    );
    adapter.insert(
        format!("{PREFIX}{K}.lora_B.weight"),
        (vec![4, r], rng.vec(4 * r)),
    );
    let base_dir = root.join("base");
    let adapter_dir = root.join("adapter");
    write_model(&base_dir, &base, dtype)?;
    write_adapter(&adapter_dir, config, &adapter)?;
    Ok((base_dir, adapter_dir, base, adapter))
}

#[test]
fn apply_matches_direct_computation() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let config = lora_config(2, 8.0, &["q_proj", "k_proj"]);
    let (base_dir, adapter_dir, base, adapter) =
        base_and_adapter(tmp.path(), &config, 2, DType::F32)?;
    let mut source = ModelSource::open(&base_dir, "base")?;
    let applied = apply_adapter(&mut source, &adapter_dir)?;
    assert_eq!(
        applied.updated,
        vec![format!("{K}.weight"), format!("{Q}.weight")]
    );
    for (m, out) in [(Q, 6), (K, 4)] {
        let w = format!("{m}.weight");
        let expected = direct(
            t(&base, &w),
            t(&adapter, &format!("{PREFIX}{m}.lora_A.weight")),
            t(&adapter, &format!("{PREFIX}{m}.lora_B.weight")),
            2,
            5,
            4.0, // alpha / r = 8 / 2
        );
        let got = read(&source, &w)?;
        assert_eq!(got.len(), out * 5);
        assert!(max_abs_diff(&got, &expected) < 1e-5, "{m}: {got:?}");
        assert_eq!(source.shape(&w), Some(&[out, 5][..]));
        assert_eq!(source.dtype(&w), Some(DType::F32));
    }
    // Tensors the adapter does not touch are unchanged.
    let norm = "model.layers.0.input_layernorm.weight";
    assert_eq!(read(&source, norm)?, t(&base, norm));
    Ok(())
}

#[test]
fn apply_rounds_once_to_the_stored_dtype() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let config = lora_config(2, 2.0, &["q_proj", "k_proj"]);
    let (base_dir, adapter_dir, base, adapter) =
        base_and_adapter(tmp.path(), &config, 2, DType::BF16)?;
    let mut source = ModelSource::open(&base_dir, "base")?;
    apply_adapter(&mut source, &adapter_dir)?;
    let w = format!("{Q}.weight");
    assert_eq!(source.dtype(&w), Some(DType::BF16));
    // The base as stored (bf16), plus the f32 delta, rounded once.
    let stored: Vec<f32> = t(&base, &w).iter().map(|v| DType::BF16.round(*v)).collect();
    let delta = lora_delta(
        t(&adapter, &format!("{PREFIX}{Q}.lora_A.weight")),
        t(&adapter, &format!("{PREFIX}{Q}.lora_B.weight")),
        2,
        5,
        6,
        1.0,
    )?;
    let expected: Vec<f32> = stored
        .iter()
        .zip(&delta)
        .map(|(w, d)| DType::BF16.round(w + d))
        .collect();
    assert_eq!(read(&source, &w)?, expected);
    Ok(())
}

#[test]
fn rslora_scales_by_alpha_over_sqrt_r() -> TestResult {
    for (rslora, scale) in [(false, 1.0), (true, 2.0)] {
        let tmp = tempfile::tempdir()?;
        let mut config = lora_config(4, 4.0, &["q_proj", "k_proj"]);
        config["use_rslora"] = json!(rslora);
        let (base_dir, adapter_dir, base, adapter) =
            base_and_adapter(tmp.path(), &config, 4, DType::F32)?;
        let cfg = AdapterConfig::from_file(&adapter_dir.join("adapter_config.json"))?;
        assert!((cfg.scale_for(Q) - scale).abs() < 1e-12);
        let mut source = ModelSource::open(&base_dir, "base")?;
        apply_adapter(&mut source, &adapter_dir)?;
        let w = format!("{Q}.weight");
        let expected = direct(
            t(&base, &w),
            t(&adapter, &format!("{PREFIX}{Q}.lora_A.weight")),
            t(&adapter, &format!("{PREFIX}{Q}.lora_B.weight")),
            4,
            5,
            scale,
        );
        assert!(max_abs_diff(&read(&source, &w)?, &expected) < 1e-5);
    }
    Ok(())
}

#[test]
fn rank_and_alpha_patterns_apply_per_module() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut rng = Lcg(7);
    let base = small_base(&mut rng);
    let mut adapter = Tensors::new();
    // q_proj: the default r = 2 and alpha 4 → scale 2. k_proj: rank 3 by its short name,
    // alpha 9 by its full path → scale 3.
    adapter.insert(
        format!("{PREFIX}{Q}.lora_A.weight"),
        (vec![2, 5], rng.vec(10)),
    );
    adapter.insert(
        format!("{PREFIX}{Q}.lora_B.weight"),
        (vec![6, 2], rng.vec(12)),
    );
    adapter.insert(
        format!("{PREFIX}{K}.lora_A.weight"),
        (vec![3, 5], rng.vec(15)),
    );
    adapter.insert(
        format!("{PREFIX}{K}.lora_B.weight"),
        (vec![4, 3], rng.vec(12)),
    );
    let mut config = lora_config(2, 4.0, &["q_proj", "k_proj"]);
    config["rank_pattern"] = json!({"k_proj": 3});
    config["alpha_pattern"] = json!({ K: 9 });
    write_model(&tmp.path().join("base"), &base, DType::F32)?;
    write_adapter(&tmp.path().join("adapter"), &config, &adapter)?;
    let mut source = ModelSource::open(&tmp.path().join("base"), "base")?;
    apply_adapter(&mut source, &tmp.path().join("adapter"))?;
    for (m, r, scale) in [(Q, 2, 2.0), (K, 3, 3.0)] {
        let w = format!("{m}.weight");
        let expected = direct(
            t(&base, &w),
            t(&adapter, &format!("{PREFIX}{m}.lora_A.weight")),
            t(&adapter, &format!("{PREFIX}{m}.lora_B.weight")),
            r,
            5,
            scale,
        );
        assert!(max_abs_diff(&read(&source, &w)?, &expected) < 1e-5, "{m}");
    }
    Ok(())
}

#[test]
fn fan_in_fan_out_transposes_the_update() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut rng = Lcg(11);
    // A Conv1D-style weight stored [in = 5, out = 3].
    let name = "transformer.h.0.attn.c_attn";
    let mut base = Tensors::new();
    base.insert(format!("{name}.weight"), (vec![5, 3], rng.vec(15)));
    let a = rng.vec(2 * 5);
    let b = rng.vec(3 * 2);
    let mut adapter = Tensors::new();
    adapter.insert(
        format!("{PREFIX}{name}.lora_A.weight"),
        (vec![2, 5], a.clone()),
    );
    adapter.insert(
        format!("{PREFIX}{name}.lora_B.weight"),
        (vec![3, 2], b.clone()),
    );
    let mut config = lora_config(2, 2.0, &["c_attn"]);
    config["fan_in_fan_out"] = json!(true);
    write_model(&tmp.path().join("base"), &base, DType::F32)?;
    write_adapter(&tmp.path().join("adapter"), &config, &adapter)?;
    let mut source = ModelSource::open(&tmp.path().join("base"), "base")?;
    apply_adapter(&mut source, &tmp.path().join("adapter"))?;
    let w = t(&base, &format!("{name}.weight"));
    let got = read(&source, &format!("{name}.weight"))?;
    for i in 0..5 {
        for o in 0..3 {
            let d: f64 = (0..2)
                .map(|k| f64::from(b[o * 2 + k]) * f64::from(a[k * 5 + i]))
                .sum();
            let expected = f64::from(w[i * 3 + o]) + d;
            assert!((f64::from(got[i * 3 + o]) - expected).abs() < 1e-5);
        }
    }
    Ok(())
}

#[test]
fn embedding_lora_and_modules_to_save() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut rng = Lcg(13);
    let (vocab, dim, r) = (7, 4, 2);
    let mut base = Tensors::new();
    base.insert(
        "model.embed_tokens.weight".into(),
        (vec![vocab, dim], rng.vec(vocab * dim)),
    );
    base.insert(
        "lm_head.weight".into(),
        (vec![vocab, dim], rng.vec(vocab * dim)),
    );
    let a = rng.vec(r * vocab);
    let b = rng.vec(dim * r);
    let head = rng.vec(vocab * dim);
    let mut adapter = Tensors::new();
    adapter.insert(
        format!("{PREFIX}model.embed_tokens.lora_embedding_A"),
        (vec![r, vocab], a.clone()),
    );
    adapter.insert(
        format!("{PREFIX}model.embed_tokens.lora_embedding_B"),
        (vec![dim, r], b.clone()),
    );
    adapter.insert(
        format!("{PREFIX}lm_head.weight"),
        (vec![vocab, dim], head.clone()),
    );
    let mut config = lora_config(r, 2.0, &["embed_tokens"]);
    config["modules_to_save"] = json!(["lm_head"]);
    write_model(&tmp.path().join("base"), &base, DType::F32)?;
    write_adapter(&tmp.path().join("adapter"), &config, &adapter)?;
    let mut source = ModelSource::open(&tmp.path().join("base"), "base")?;
    let applied = apply_adapter(&mut source, &tmp.path().join("adapter"))?;
    assert_eq!(applied.replaced, vec!["lm_head.weight".to_string()]);
    assert_eq!(read(&source, "lm_head.weight")?, head);
    // PEFT's embedding delta: (B·A)ᵀ, B [dim, r], A [r, vocab].
    let w = t(&base, "model.embed_tokens.weight");
    let got = read(&source, "model.embed_tokens.weight")?;
    for v in 0..vocab {
        for d in 0..dim {
            let delta: f64 = (0..r)
                .map(|k| f64::from(b[d * r + k]) * f64::from(a[k * vocab + v]))
                .sum();
            let expected = f64::from(w[v * dim + d]) + delta;
            assert!((f64::from(got[v * dim + d]) - expected).abs() < 1e-5);
        }
    }
    Ok(())
}

/// Apply a broken adapter; return the error text, checking the base was left as it was.
fn apply_error(
    config: &serde_json::Value,
    tensors: &Tensors,
) -> Result<String, Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let mut rng = Lcg(0x9e37_79b9_7f4a_7c15);
    let base = small_base(&mut rng);
    write_model(&tmp.path().join("base"), &base, DType::F32)?;
    write_adapter(&tmp.path().join("adapter"), config, tensors)?;
    let mut source = ModelSource::open(&tmp.path().join("base"), "base")?;
    let err = match apply_adapter(&mut source, &tmp.path().join("adapter")) {
        Ok(_) => return Err("a bad adapter was accepted".into()),
        Err(e) => e.to_string(),
    };
    for name in base.keys() {
        assert_eq!(read(&source, name)?, t(&base, name), "{name} changed");
    }
    Ok(err)
}

fn pair(module: &str, r: usize, fan_in: usize, out: usize) -> Tensors {
    let mut rng = Lcg(3);
    let mut m = Tensors::new();
    m.insert(
        format!("{PREFIX}{module}.lora_A.weight"),
        (vec![r, fan_in], rng.vec(r * fan_in)),
    );
    m.insert(
        format!("{PREFIX}{module}.lora_B.weight"),
        (vec![out, r], rng.vec(out * r)),
    );
    m
}

#[test]
fn bad_adapters_are_rejected_with_the_key_and_shapes() -> TestResult {
    let cfg = lora_config(2, 2.0, &["q_proj", "k_proj", "v_proj"]);
    let contains = |err: &str, parts: &[&str]| {
        for p in parts {
            assert!(err.contains(p), "{err:?} lacks {p:?}");
        }
    };

    // A module the base does not have.
    let v = "model.layers.0.self_attn.v_proj";
    let err = apply_error(&cfg, &pair(v, 2, 5, 4))?;
    contains(
        &err,
        &[
            &format!("{PREFIX}{v}.lora_A.weight"),
            &format!("no tensor {v}.weight"),
        ],
    );

    // Shapes that do not fit the base weight [6, 5].
    let err = apply_error(&cfg, &pair(Q, 2, 7, 6))?;
    contains(&err, &["lora_A.weight [2, 7]", "[6, 2]", "[6, 5]"]);

    // lora_A without lora_B.
    let mut only_a = pair(Q, 2, 5, 6);
    only_a.remove(&format!("{PREFIX}{Q}.lora_B.weight"));
    let err = apply_error(&cfg, &only_a)?;
    contains(
        &err,
        &[
            &format!("{PREFIX}{Q}.lora_A.weight"),
            "[2, 5]",
            "lora_B.weight",
        ],
    );

    // A and B of different ranks.
    let mut ranks = pair(Q, 2, 5, 6);
    ranks.insert(
        format!("{PREFIX}{Q}.lora_B.weight"),
        (vec![6, 3], vec![0.0; 18]),
    );
    let err = apply_error(&cfg, &ranks)?;
    contains(&err, &["[2, 5]", "[6, 3]"]);

    // A rank that disagrees with `r`.
    let err = apply_error(&lora_config(4, 4.0, &["q_proj"]), &pair(Q, 2, 5, 6))?;
    contains(&err, &["rank 2", "rank 4"]);

    // A module outside target_modules.
    let err = apply_error(&lora_config(2, 2.0, &["v_proj"]), &pair(Q, 2, 5, 6))?;
    contains(&err, &["q_proj", "target_modules"]);

    // DoRA, by flag and by key.
    let mut dora = cfg.clone();
    dora["use_dora"] = json!(true);
    contains(&apply_error(&dora, &pair(Q, 2, 5, 6))?, &["DoRA"]);
    let mut magnitude = pair(Q, 2, 5, 6);
    magnitude.insert(
        format!("{PREFIX}{Q}.lora_magnitude_vector"),
        (vec![6], vec![1.0; 6]),
    );
    contains(
        &apply_error(&cfg, &magnitude)?,
        &["DoRA", "lora_magnitude_vector"],
    );

    // Another PEFT method.
    let mut ia3 = cfg.clone();
    ia3["peft_type"] = json!("IA3");
    contains(&apply_error(&ia3, &pair(Q, 2, 5, 6))?, &["IA3"]);

    // Keys without PEFT's prefix.
    let mut bare = Tensors::new();
    bare.insert(format!("{Q}.lora_A.weight"), (vec![2, 5], vec![0.0; 10]));
    contains(&apply_error(&cfg, &bare)?, &["unexpected key", Q]);

    // A saved module of the wrong shape.
    let mut saved = Tensors::new();
    saved.insert(format!("{PREFIX}{K}.weight"), (vec![5, 4], vec![0.0; 20]));
    contains(&apply_error(&cfg, &saved)?, &["[5, 4]", "[4, 5]"]);
    Ok(())
}

#[test]
fn missing_adapter_files_are_named() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut rng = Lcg(5);
    write_model(&tmp.path().join("base"), &small_base(&mut rng), DType::F32)?;
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir_all(&adapter)?;
    let mut source = ModelSource::open(&tmp.path().join("base"), "base")?;
    let err = apply_adapter(&mut source, &adapter)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("adapter_config.json")));
    std::fs::write(
        adapter.join("adapter_config.json"),
        lora_config(2, 2.0, &["q_proj"]).to_string(),
    )?;
    std::fs::write(adapter.join("adapter_model.bin"), b"pickle")?;
    let err = apply_adapter(&mut source, &adapter)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("adapter_model.bin")));
    Ok(())
}

#[test]
fn merge_config_lora_reference_is_applied() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let config = lora_config(2, 8.0, &["q_proj", "k_proj"]);
    let (_, _, base, adapter) = base_and_adapter(tmp.path(), &config, 2, DType::F32)?;
    let yaml = "merge_method: passthrough\nmodels:\n  - model: base+adapter\n";
    let merge = MergeConfig::from_yaml(yaml, "test.yml")?;
    let models = open_models(&merge, Some(tmp.path()))?;
    let w = format!("{Q}.weight");
    let expected = direct(
        t(&base, &w),
        t(&adapter, &format!("{PREFIX}{Q}.lora_A.weight")),
        t(&adapter, &format!("{PREFIX}{Q}.lora_B.weight")),
        2,
        5,
        4.0,
    );
    let model = models.first().ok_or("no model opened")?;
    assert!(max_abs_diff(&read(model, &w)?, &expected) < 1e-5);
    Ok(())
}
