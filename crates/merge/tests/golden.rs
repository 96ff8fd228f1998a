//! mergekit 0.1.5's own outputs reproduced (`tests/fixtures/mergekit`, see its README).
//!
//! Every sub-directory with a `config.yml` is a case: its models are resolved relative to the
//! fixture directory, the merge is run through the public API, and every output tensor is
//! compared with `output/model.safetensors`. Set `TEMPER_MERGE_GOLDEN_DIR` to run other fixture
//! directories of the same layout through the same test.
//!
//! Tolerances (the fixture README explains them): elementwise methods (`linear`,
//! `task_arithmetic`, `ties`, ...) bit-identical; SLERP-family methods within 1e-6 × the
//! tensor's RMS in f32 and within one ULP in bf16/f16 (their norm/dot reductions sum in a
//! different order than torch's).
//!
//! `tests/mergekit_extra/` holds mergekit 0.1.5 outputs for the other methods (its README
//! says how they were made), over the same input models; every one of those methods reduces,
//! so f32 results are compared within 1e-6 × RMS and bf16 within one ULP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use temper_merge::{DType, MergeConfig, MergeOptions, NoProgress, run_merge};

fn fixture_dir() -> PathBuf {
    match std::env::var_os("TEMPER_MERGE_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mergekit"),
    }
}

fn load(path: &Path) -> BTreeMap<String, (DType, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = DType::from_safetensors(view.dtype()).expect("float tensor");
            let mut values = vec![0f32; view.data().len() / dtype.size()];
            dtype.decode(view.data(), &mut values);
            (name, (dtype, view.shape().to_vec(), values))
        })
        .collect()
}

/// Distance in units in the last place of `dtype` (monotone integer mapping).
fn ulps(dtype: DType, a: f32, b: f32) -> u64 {
    let key = |v: f32| -> i64 {
        let bits = match dtype {
            DType::F32 => i64::from(v.to_bits()),
            DType::BF16 => i64::from(half::bf16::from_f32(v).to_bits()),
            DType::F16 => i64::from(half::f16::from_f32(v).to_bits()),
        };
        let sign = match dtype {
            DType::F32 => 1i64 << 31,
            _ => 1i64 << 15,
        };
        if bits & sign != 0 {
            -(bits - sign)
        } else {
            bits
        }
    };
    key(a).abs_diff(key(b))
}

fn is_slerp_family(method: &str) -> bool {
    matches!(method, "slerp" | "nuslerp" | "multislerp" | "karcher")
}

/// How closely a case must match.
#[derive(Clone, Copy)]
enum Tolerance {
    /// Bit-identical except SLERP-family methods (the shared fixtures' rule).
    ByMethod,
    /// 1e-6 × RMS in f32, one ULP in bf16/f16, for every method.
    Reductions,
}

fn run_case(root: &Path, models: &Path, case: &str, tolerance: Tolerance) -> Result<usize, String> {
    let dir = root.join(case);
    let cfg_path = dir.join("config.yml");
    let config = MergeConfig::from_file(&cfg_path).map_err(|e| e.to_string())?;
    // The mergekit command line is recorded in mergekit.log.
    let log = std::fs::read_to_string(dir.join("mergekit.log")).unwrap_or_default();
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = tmp.path().join("out");
    let options = MergeOptions {
        config_dir: Some(models.to_path_buf()),
        unsafe_truncate_embeddings: log.contains("--unsafe-truncate-embeddings"),
        write_model_card: false,
        ..MergeOptions::default()
    };
    let summary =
        run_merge(&config, None, &out, &options, &NoProgress).map_err(|e| e.to_string())?;

    let ours = load(&out.join("model.safetensors"));
    let gold = load(&dir.join("output/model.safetensors"));
    let names = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<Vec<_>>();
    if names(&ours) != names(&gold) {
        return Err(format!(
            "tensor sets differ: ours {:?} vs mergekit {:?}",
            names(&ours),
            names(&gold)
        ));
    }
    let slerpish = match tolerance {
        Tolerance::ByMethod => is_slerp_family(&config.merge_method),
        Tolerance::Reductions => true,
    };
    for (name, (gd, gs, gv)) in &gold {
        let (od, os, ov) = &ours[name];
        if od != gd || os != gs {
            return Err(format!("{name}: ours {od}/{os:?} vs mergekit {gd}/{gs:?}"));
        }
        let rms = (gv.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / gv.len() as f64).sqrt();
        for (i, (g, o)) in gv.iter().zip(ov).enumerate() {
            let ok = if !slerpish {
                g.to_bits() == o.to_bits()
            } else if *gd == DType::F32 {
                f64::from((g - o).abs()) <= 1e-6 * rms
            } else {
                ulps(*gd, *g, *o) <= 1
            };
            if !ok {
                return Err(format!(
                    "{name}[{i}]: ours {o:e} vs mergekit {g:e} (rms {rms:e}, {} ulp)",
                    ulps(*gd, *g, *o)
                ));
            }
        }
    }

    // SLERP cases list the t of every tensor: the report must show the same (as f32).
    let t_path = dir.join("expected_t.json");
    if t_path.exists() {
        let text = std::fs::read_to_string(&t_path).map_err(|e| e.to_string())?;
        let expected: BTreeMap<String, f64> =
            serde_json::from_str(&text).map_err(|e| e.to_string())?;
        for r in &summary.reports {
            let want = expected
                .get(&r.name)
                .ok_or_else(|| format!("expected_t.json lacks {}", r.name))?;
            if r.method.t != Some(*want as f32) {
                return Err(format!("{}: t {:?} vs expected {want}", r.name, r.method.t));
            }
        }
    }

    // config.json: the base model's, with the layer count and dtype of the output.
    let gold_cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("output/config.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let our_cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("config.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    for key in [
        "num_hidden_layers",
        "dtype",
        "tie_word_embeddings",
        "hidden_size",
    ] {
        if gold_cfg.get(key) != our_cfg.get(key) {
            return Err(format!(
                "config.json {key}: ours {:?} vs mergekit {:?}",
                our_cfg.get(key),
                gold_cfg.get(key)
            ));
        }
    }
    // Temper writes the vocabulary size the tensors actually have (mergekit keeps the old one).
    let rows = ours
        .get("model.embed_tokens.weight")
        .map(|(_, s, _)| s[0] as u64);
    if rows.is_some()
        && our_cfg
            .get("vocab_size")
            .and_then(serde_json::Value::as_u64)
            != rows
    {
        return Err(format!(
            "config.json vocab_size {:?} vs embedding rows {rows:?}",
            our_cfg.get("vocab_size")
        ));
    }
    Ok(gold.len())
}

fn run_all(root: &Path, models: &Path, tolerance: Tolerance) {
    let mut cases: Vec<String> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("fixture dir {}: {e}", root.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.yml").is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", root.display());
    let mut failures = Vec::new();
    for case in &cases {
        match run_case(root, models, case, tolerance) {
            Ok(n) => eprintln!("{case}: {n} tensors match"),
            Err(e) => failures.push(format!("{case}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn mergekit_fixtures_are_reproduced() {
    let root = fixture_dir();
    run_all(&root, &root, Tolerance::ByMethod);
}

#[test]
fn mergekit_outputs_of_the_other_methods_are_reproduced() {
    let extra = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mergekit_extra");
    run_all(&extra, &fixture_dir(), Tolerance::Reductions);
}
