//! Extracting a LoRA adapter from a fine-tune (`extract_lora`), and applying it back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use temper_merge::{DType, ExtractOptions, ModelSource, apply_adapter, extract_lora, lora_delta};

use crate::{Lcg, Tensors, TestResult, read, t, write_model};

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
