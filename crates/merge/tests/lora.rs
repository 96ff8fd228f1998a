//! LoRA adapters: merging PEFT adapters into a base (`lora::apply_adapter`) and extracting
//! them from a fine-tune (`extract_lora`), on tiny HF directories written here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use serde_json::json;
use temper_merge::extract_lora::{
    ExtractOptions, SvdOptions, extract_lora, jacobi_svd, truncated_svd,
};
use temper_merge::lora::{AdapterConfig, apply_adapter, lora_delta};
use temper_merge::{DType, MergeConfig, ModelSource, open_models};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PREFIX: &str = "base_model.model.";
const Q: &str = "model.layers.0.self_attn.q_proj";
const K: &str = "model.layers.0.self_attn.k_proj";

/// Deterministic values in [-1, 1) (xorshift: no test depends on a generator's version).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
    }
}

/// Write `tensors` (name → shape, values) as one safetensors file in `dtype`.
fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    dtype: DType,
) -> TestResult {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let mut bytes = vec![0u8; values.len() * dtype.size()];
            dtype.encode(values, &mut bytes);
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((
                name.clone(),
                TensorView::new(st_dtype(dtype), shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, None, path)?;
    Ok(())
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn write_model(dir: &Path, tensors: &Tensors, dtype: DType) -> TestResult {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("config.json"),
        json!({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1}).to_string(),
    )?;
    write_safetensors(&dir.join("model.safetensors"), tensors, dtype)
}

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

fn read(source: &ModelSource, name: &str) -> Result<Vec<f32>, temper_merge::MergeError> {
    Ok(source.tensor(name)?.to_vec())
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

fn t<'a>(map: &'a Tensors, key: &str) -> &'a [f32] {
    map.get(key).map(|(_, v)| v.as_slice()).unwrap_or(&[])
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

// ---- SVD ----

fn random_f64(rng: &mut Lcg, n: usize) -> Vec<f64> {
    (0..n).map(|_| f64::from(rng.next())).collect()
}

fn frob(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

#[test]
fn jacobi_svd_is_exact() -> TestResult {
    let mut rng = Lcg(17);
    for (m, n) in [(40, 30), (30, 40), (1, 5), (6, 6)] {
        let a = random_f64(&mut rng, m * n);
        let svd = jacobi_svd(&a, m, n)?;
        let k = m.min(n);
        assert_eq!(svd.rank(), k);
        let rec = svd.reconstruct();
        let err: Vec<f64> = rec.iter().zip(&a).map(|(x, y)| x - y).collect();
        assert!(frob(&err) < 1e-12 * frob(&a), "{m}×{n}");
        assert!(svd.s.windows(2).all(|w| w[0] >= w[1]));
        // Orthonormal columns of U and rows of Vᵀ.
        for i in 0..k {
            for j in 0..k {
                let uu: f64 = (0..m).map(|r| svd.u[r * k + i] * svd.u[r * k + j]).sum();
                let vv: f64 = (0..n).map(|c| svd.vt[i * n + c] * svd.vt[j * n + c]).sum();
                let id = if i == j { 1.0 } else { 0.0 };
                assert!((uu - id).abs() < 1e-10 && (vv - id).abs() < 1e-10);
            }
        }
    }
    Ok(())
}

#[test]
fn truncated_svd_recovers_an_exact_low_rank_matrix() -> TestResult {
    let mut rng = Lcg(19);
    let (m, n, r) = (64, 48, 5);
    let x = rng.vec(m * r);
    let y = rng.vec(r * n);
    let a = lora_delta(&y, &x, r, n, m, 1.0)?;
    let svd = truncated_svd(&a, m, n, r, &SvdOptions::default())?;
    assert_eq!(svd.rank(), r);
    let (fa, fb) = svd.lora_factors();
    let rec = lora_delta(&fa, &fb, r, n, m, 1.0)?;
    let err: f64 = rec
        .iter()
        .zip(&a)
        .map(|(p, q)| f64::from(p - q).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    assert!(err < 1e-5 * norm, "relative error {}", err / norm);
    Ok(())
}

/// `U·diag(s)·Vᵀ` with random orthonormal U (m×k) and V (n×k).
fn with_spectrum(
    rng: &mut Lcg,
    m: usize,
    n: usize,
    s: &[f64],
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let k = s.len();
    let u = jacobi_svd(&random_f64(rng, m * k), m, k)?.u;
    let v = jacobi_svd(&random_f64(rng, n * k), n, k)?.u;
    let mut a = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            a[i * n + j] = (0..k).map(|l| u[i * k + l] * s[l] * v[j * k + l]).sum();
        }
    }
    Ok(a)
}

#[test]
fn truncated_svd_matches_exact_svd_on_full_rank_matrices() -> TestResult {
    let mut rng = Lcg(23);
    let (m, n, r) = (40, 30, 5);
    // A decaying spectrum, as fine-tuning deltas have: the randomized method must find the
    // same leading singular values as the exact one.
    let spectrum: Vec<f64> = (0..30).map(|i| 0.8f64.powi(i)).collect();
    let a = with_spectrum(&mut rng, m, n, &spectrum)?;
    let a32: Vec<f32> = a.iter().map(|v| *v as f32).collect();
    let a_exact: Vec<f64> = a32.iter().map(|v| f64::from(*v)).collect();
    let reference = jacobi_svd(&a_exact, m, n)?;
    let options = SvdOptions {
        oversampling: 8,
        power_iterations: 2,
        seed: 1,
    };
    let svd = truncated_svd(&a32, m, n, r, &options)?;
    for (got, want) in svd.s.iter().zip(&reference.s) {
        assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
    }
    let total: f64 = reference.s.iter().map(|s| s * s).sum();
    let best: f64 = reference.s[..r].iter().map(|s| s * s).sum();
    let kept: f64 = svd.s.iter().map(|s| s * s).sum();
    assert!(
        ((kept - best) / total).abs() < 1e-8,
        "{kept} {best} {total}"
    );

    // A flat (random) spectrum is the hard case: still close to the optimum, never above it.
    let a32: Vec<f32> = rng.vec(m * n);
    let a_exact: Vec<f64> = a32.iter().map(|v| f64::from(*v)).collect();
    let reference = jacobi_svd(&a_exact, m, n)?;
    let total: f64 = reference.s.iter().map(|s| s * s).sum();
    let best: f64 = reference.s[..r].iter().map(|s| s * s).sum();
    let svd = truncated_svd(&a32, m, n, r, &SvdOptions::default())?;
    let kept: f64 = svd.s.iter().map(|s| s * s).sum();
    assert!(kept <= best * (1.0 + 1e-9));
    assert!(kept / total > 0.98 * best / total, "{kept} vs {best}");
    // And the reported energy is the projection's: ‖A − B·A‖² = ‖A‖² − Σσ².
    let rec = svd.reconstruct();
    let resid: f64 = rec.iter().zip(&a_exact).map(|(x, y)| (x - y).powi(2)).sum();
    assert!((resid - (total - kept)).abs() < 1e-9 * total);
    Ok(())
}

#[test]
fn truncated_svd_handles_zero_and_bad_input() -> TestResult {
    let svd = truncated_svd(&[0.0; 12], 3, 4, 2, &SvdOptions::default())?;
    assert!(svd.s.iter().all(|s| *s == 0.0));
    assert!(svd.reconstruct().iter().all(|v| *v == 0.0));
    assert!(truncated_svd(&[0.0; 11], 3, 4, 2, &SvdOptions::default()).is_err());
    assert!(truncated_svd(&[f32::NAN; 12], 3, 4, 2, &SvdOptions::default()).is_err());
    Ok(())
}

// ---- extraction ----

/// (name, shape) of a one-layer Llama with hidden 16, kv 8, intermediate 24, vocab 20.
fn llama_shapes() -> Vec<(String, Vec<usize>)> {
    let l = "model.layers.0";
    vec![
        ("model.embed_tokens.weight".into(), vec![20, 16]),
        (format!("{l}.self_attn.q_proj.weight"), vec![16, 16]),
        (format!("{l}.self_attn.k_proj.weight"), vec![8, 16]),
        (format!("{l}.self_attn.v_proj.weight"), vec![8, 16]),
        (format!("{l}.self_attn.o_proj.weight"), vec![16, 16]),
        (format!("{l}.mlp.gate_proj.weight"), vec![24, 16]),
        (format!("{l}.mlp.up_proj.weight"), vec![24, 16]),
        (format!("{l}.mlp.down_proj.weight"), vec![16, 24]),
        (format!("{l}.input_layernorm.weight"), vec![16]),
        (format!("{l}.post_attention_layernorm.weight"), vec![16]),
        ("model.norm.weight".into(), vec![16]),
        ("lm_head.weight".into(), vec![20, 16]),
    ]
}

/// A base, and a fine-tune whose 2-D weights selected by `changed` move by a rank-`r` delta
/// (and whose final norm changes).
fn base_and_finetune(
    root: &Path,
    r: usize,
    changed: impl Fn(&str) -> bool,
    dtype: DType,
) -> Result<(PathBuf, PathBuf, Tensors, Tensors), Box<dyn std::error::Error>> {
    let mut rng = Lcg(29);
    let mut base = Tensors::new();
    let mut ft = Tensors::new();
    for (name, shape) in llama_shapes() {
        let numel: usize = shape.iter().product();
        let w: Vec<f32> = rng.vec(numel).iter().map(|v| dtype.round(*v)).collect();
        let mut f = w.clone();
        if shape.len() == 2 && changed(&name) {
            let (rows, cols) = (shape[0], shape[1]);
            let x = rng.vec(rows * r);
            let y = rng.vec(r * cols);
            let d = lora_delta(&y, &x, r, cols, rows, 0.1)?;
            f = w.iter().zip(&d).map(|(a, b)| dtype.round(a + b)).collect();
        }
        if name == "model.norm.weight" {
            f[0] += 0.5;
        }
        base.insert(name.clone(), (shape.clone(), w));
        ft.insert(name, (shape, f));
    }
    let base_dir = root.join("base");
    let ft_dir = root.join("ft");
    write_model(&base_dir, &base, dtype)?;
    write_model(&ft_dir, &ft, dtype)?;
    Ok((base_dir, ft_dir, base, ft))
}

/// Adapter tensor name → (shape, dtype).
type AdapterIndex = BTreeMap<String, (Vec<usize>, safetensors::Dtype)>;

fn read_adapter(dir: &Path) -> Result<AdapterIndex, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.dtype())))
        .collect())
}

fn no_temp_dirs(root: &Path) -> Result<bool, std::io::Error> {
    Ok(std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .all(|e| !e.file_name().to_string_lossy().contains("temper-tmp")))
}

#[test]
fn extract_writes_a_peft_adapter_of_an_exact_low_rank_delta() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (base_dir, ft_dir, base, ft) = base_and_finetune(
        tmp.path(),
        3,
        |n| !n.contains("embed") && !n.contains("lm_head"),
        DType::F32,
    )?;
    let out = tmp.path().join("adapter");
    let summary = extract_lora(&ft_dir, &base_dir, 3, &out, &ExtractOptions::default())?;
    assert_eq!(summary.rank, 3);
    assert_eq!(
        summary.target_modules,
        [
            "down_proj",
            "gate_proj",
            "k_proj",
            "o_proj",
            "q_proj",
            "up_proj",
            "v_proj"
        ]
    );
    assert_eq!(summary.modules.len(), 7);
    for m in &summary.modules {
        assert!(m.captured > 1.0 - 1e-9, "{}: {}", m.tensor, m.captured);
        assert_eq!(m.rank, 3);
    }
    // The norm changed but is not a LoRA module: reported, not silently lost.
    assert!(
        summary
            .not_extracted
            .iter()
            .any(|(n, why)| n == "model.norm.weight" && why == "differs")
    );
    assert!(
        !summary
            .not_extracted
            .iter()
            .any(|(n, _)| n.contains("layernorm"))
    );

    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json"))?)?;
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 3);
    assert_eq!(config["lora_alpha"], 3);
    assert_eq!(config["use_rslora"], false);
    assert_eq!(
        config["base_model_name_or_path"],
        base_dir.display().to_string()
    );
    assert_eq!(config["target_modules"].as_array().map(Vec::len), Some(7));

    let tensors = read_adapter(&out)?;
    assert_eq!(tensors.len(), 14);
    let l = "base_model.model.model.layers.0";
    assert_eq!(
        tensors.get(&format!("{l}.self_attn.k_proj.lora_A.weight")),
        Some(&(vec![3, 16], safetensors::Dtype::F32))
    );
    assert_eq!(
        tensors.get(&format!("{l}.self_attn.k_proj.lora_B.weight")),
        Some(&(vec![8, 3], safetensors::Dtype::F32))
    );
    assert_eq!(
        tensors.get(&format!("{l}.mlp.down_proj.lora_A.weight")),
        Some(&(vec![3, 24], safetensors::Dtype::F32))
    );

    // B·A reproduces the delta.
    let bytes = std::fs::read(out.join("adapter_model.safetensors"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let f32s = |key: &str| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        let v = st.tensor(key)?;
        let mut out = vec![0f32; v.shape().iter().product()];
        DType::F32.decode(v.data(), &mut out);
        Ok(out)
    };
    for (name, (shape, w)) in &base {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        let key = format!("base_model.model.{module}.lora_A.weight");
        if !tensors.contains_key(&key) {
            continue;
        }
        let a = f32s(&key)?;
        let b = f32s(&format!("base_model.model.{module}.lora_B.weight"))?;
        let ba = lora_delta(&a, &b, 3, shape[1], shape[0], 1.0)?;
        let f = t(&ft, name);
        let (mut err, mut norm) = (0f64, 0f64);
        for i in 0..w.len() {
            let d = f64::from(f[i]) - f64::from(w[i]);
            err += (f64::from(ba[i]) - d).powi(2);
            norm += d * d;
        }
        assert!(err.sqrt() < 1e-5 * norm.sqrt(), "{name}");
    }
    assert!(no_temp_dirs(tmp.path())?);
    Ok(())
}

#[test]
fn extract_then_apply_round_trips() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (base_dir, ft_dir, _, ft) = base_and_finetune(tmp.path(), 2, |_| true, DType::F32)?;
    let out = tmp.path().join("adapter");
    let options = ExtractOptions {
        include_embeddings: true,
        ..ExtractOptions::default()
    };
    // Rank 12 exceeds k_proj/v_proj's 8 rows: those get rank 8 through rank_pattern.
    let summary = extract_lora(&ft_dir, &base_dir, 12, &out, &options)?;
    assert_eq!(summary.rank, 12);
    assert!(summary.target_modules.iter().any(|m| m == "embed_tokens"));
    assert!(summary.target_modules.iter().any(|m| m == "lm_head"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json"))?)?;
    assert_eq!(config["rank_pattern"]["model.layers.0.self_attn.k_proj"], 8);
    assert_eq!(
        config["alpha_pattern"]["model.layers.0.self_attn.k_proj"],
        8
    );
    let tensors = read_adapter(&out)?;
    assert_eq!(
        tensors.get("base_model.model.model.embed_tokens.lora_embedding_A"),
        Some(&(vec![12, 20], safetensors::Dtype::F32))
    );
    assert_eq!(
        tensors.get("base_model.model.model.embed_tokens.lora_embedding_B"),
        Some(&(vec![16, 12], safetensors::Dtype::F32))
    );
    assert_eq!(
        tensors.get("base_model.model.lm_head.lora_A.weight"),
        Some(&(vec![12, 16], safetensors::Dtype::F32))
    );

    let mut source = ModelSource::open(&base_dir, "base")?;
    let applied = apply_adapter(&mut source, &out)?;
    assert_eq!(applied.updated.len(), 9);
    for (name, (shape, f)) in &ft {
        if shape.len() != 2 {
            continue;
        }
        let got = read(&source, name)?;
        let worst = got
            .iter()
            .zip(f)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name}: {worst}");
    }
    Ok(())
}

#[test]
fn extract_leaves_out_unchanged_modules_and_keeps_the_model_dtype() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (base_dir, ft_dir, _, _) =
        base_and_finetune(tmp.path(), 2, |n| n.contains("q_proj"), DType::BF16)?;
    let out = tmp.path().join("adapter");
    let summary = extract_lora(&ft_dir, &base_dir, 4, &out, &ExtractOptions::default())?;
    assert_eq!(summary.target_modules, ["q_proj"]);
    assert_eq!(summary.unchanged_modules.len(), 6);
    let tensors = read_adapter(&out)?;
    assert_eq!(tensors.len(), 2);
    assert!(
        tensors
            .values()
            .all(|(_, d)| *d == safetensors::Dtype::BF16)
    );
    // Deterministic: a second run writes the same bytes.
    let out2 = tmp.path().join("adapter2");
    extract_lora(&ft_dir, &base_dir, 4, &out2, &ExtractOptions::default())?;
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors"))?,
        std::fs::read(out2.join("adapter_model.safetensors"))?
    );
    Ok(())
}

#[test]
fn extract_errors_leave_nothing_behind() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (base_dir, _, base, _) = base_and_finetune(tmp.path(), 2, |_| true, DType::F32)?;
    // A "fine-tune" whose q_proj has another shape.
    let mut other = base.clone();
    other.insert(
        "model.layers.0.self_attn.q_proj.weight".into(),
        (vec![8, 16], vec![0.0; 128]),
    );
    let bad_dir = tmp.path().join("bad");
    write_model(&bad_dir, &other, DType::F32)?;
    let out = tmp.path().join("adapter");
    let err = extract_lora(&bad_dir, &base_dir, 2, &out, &ExtractOptions::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("q_proj.weight") && err.contains("[8, 16]") && err.contains("[16, 16]"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(no_temp_dirs(tmp.path())?);

    // Rank 0, and a non-empty destination without `overwrite`.
    assert!(extract_lora(&base_dir, &base_dir, 0, &out, &ExtractOptions::default()).is_err());
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("keep.txt"), b"x")?;
    assert!(extract_lora(&base_dir, &base_dir, 2, &out, &ExtractOptions::default()).is_err());
    assert!(out.join("keep.txt").exists());
    Ok(())
}
