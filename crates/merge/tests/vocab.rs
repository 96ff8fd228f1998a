//! Merging models with different vocabularies through `tokenizer: {source: ...}`.
//!
//! Tiny HF directories (config.json, model.safetensors, a hand-written BPE tokenizer.json) are
//! merged through [`temper_merge::run_merge`]; every output row is checked against an
//! independent re-statement of the rule: a model's own row for a token it has, else the base
//! model's row, else the single owner's, else the mean of the owners'; padding rows are the
//! mean of the model's token rows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};
use temper_merge::{DType, MergeConfig, MergeOptions, NoProgress, run_merge};

const HIDDEN: usize = 4;
const EMBED: &str = "model.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";

/// A test model: its directory, vocabulary (token → row) and vocabulary tensors.
struct Model {
    dir: PathBuf,
    vocab: HashMap<String, usize>,
    tensors: BTreeMap<String, Vec<f32>>,
}

impl Model {
    fn path(&self) -> String {
        self.dir.display().to_string()
    }

    fn row(&self, tensor: &str, token: &str) -> Option<Vec<f32>> {
        let r = *self.vocab.get(token)?;
        Some(self.tensors[tensor][r * HIDDEN..(r + 1) * HIDDEN].to_vec())
    }
}

/// A deterministic value, distinct per model, tensor, row and column.
fn value(seed: u32, salt: u32, row: usize, col: usize) -> f32 {
    let h = (seed.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503))
        .wrapping_add((row as u32).wrapping_mul(97))
        .wrapping_add((col as u32).wrapping_mul(31));
    let h = h ^ (h >> 13);
    let h = h.wrapping_mul(0x5bd1_e995);
    ((h >> 8) % 2001) as f32 / 1000.0 - 1.0
}

fn tensor(seed: u32, salt: u32, rows: usize, cols: usize, dtype: DType) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| dtype.round(value(seed, salt, i / cols, i % cols)))
        .collect()
}

/// Write a tiny Llama-like model whose tokenizer has `vocab` (ordinary tokens at ids 0..) and
/// `added` special tokens (at the following ids).
fn write_model(
    root: &Path,
    name: &str,
    seed: u32,
    vocab: &[&str],
    added: &[&str],
    dtype: DType,
) -> Model {
    write_model_rows(
        root,
        name,
        seed,
        vocab,
        added,
        dtype,
        vocab.len() + added.len(),
    )
}

/// [`write_model`] with `n` embedding rows (fewer than the tokenizer's tokens: the last ones
/// have no row).
fn write_model_rows(
    root: &Path,
    name: &str,
    seed: u32,
    vocab: &[&str],
    added: &[&str],
    dtype: DType,
    n: usize,
) -> Model {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("model dir");
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "num_hidden_layers": 1,
        "vocab_size": n,
        "torch_dtype": dtype.torch_name(),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");

    let mut tensors = BTreeMap::new();
    tensors.insert(EMBED.to_string(), tensor(seed, 1, n, HIDDEN, dtype));
    tensors.insert(LM_HEAD.to_string(), tensor(seed, 2, n, HIDDEN, dtype));
    tensors.insert(
        "model.layers.0.mlp.up_proj.weight".to_string(),
        tensor(seed, 3, HIDDEN, HIDDEN, dtype),
    );
    tensors.insert(
        "model.norm.weight".to_string(),
        tensor(seed, 4, 1, HIDDEN, dtype),
    );
    let shapes: BTreeMap<&str, Vec<usize>> = [
        (EMBED, vec![n, HIDDEN]),
        (LM_HEAD, vec![n, HIDDEN]),
        ("model.layers.0.mlp.up_proj.weight", vec![HIDDEN, HIDDEN]),
        ("model.norm.weight", vec![HIDDEN]),
    ]
    .into_iter()
    .collect();
    let bytes: BTreeMap<String, Vec<u8>> = tensors
        .iter()
        .map(|(k, v)| {
            let mut b = vec![0u8; v.len() * dtype.size()];
            dtype.encode(v, &mut b);
            (k.clone(), b)
        })
        .collect();
    let st_dtype = match dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
    };
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b)| {
            let view = TensorView::new(st_dtype, shapes[k.as_str()].clone(), b).expect("view");
            (k.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
        .expect("safetensors");

    let map: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_string(), i.into()))
        .collect();
    // Merges whose parts and result are all in the vocabulary.
    let merges: Vec<String> = vocab
        .iter()
        .flat_map(|a| vocab.iter().map(move |b| (a, b)))
        .filter(|(a, b)| vocab.contains(&format!("{a}{b}").as_str()))
        .map(|(a, b)| format!("{a} {b}"))
        .collect();
    let added_tokens: Vec<Value> = added
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": vocab.len() + i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": null,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false,
            "vocab": map, "merges": merges,
        },
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).expect("tokenizer");
    let decoder: serde_json::Map<String, Value> = added
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                (vocab.len() + i).to_string(),
                json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                       "single_word": false, "special": true}),
            )
        })
        .collect();
    let tc = json!({"tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": decoder});
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).expect("tokenizer config");

    let vocab = vocab
        .iter()
        .chain(added)
        .enumerate()
        .filter(|(i, _)| *i < n)
        .map(|(i, t)| ((*t).to_string(), i))
        .collect();
    Model {
        dir,
        vocab,
        tensors,
    }
}

fn load(path: &Path) -> BTreeMap<String, (DType, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).expect("output safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
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

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json file")).expect("json")
}

fn merge(yaml: &str, out: &Path) -> temper_merge::Result<temper_merge::MergeSummary> {
    let config = MergeConfig::from_yaml(yaml, "test.yml")?;
    let options = MergeOptions {
        write_model_card: false,
        ..MergeOptions::default()
    };
    run_merge(&config, Some(yaml), out, &options, &NoProgress)
}

/// Input `models[k]`'s `tensor` re-laid-out to `tokens` (then `pad` rows), by the documented
/// rule; `base` is an index into `models`.
fn relaid(
    models: &[&Model],
    k: usize,
    base: Option<usize>,
    tensor: &str,
    tokens: &[&str],
    rows: usize,
) -> Vec<f64> {
    let mut out = Vec::new();
    for tok in tokens {
        let row = models[k].row(tensor, tok).unwrap_or_else(|| {
            if let Some(r) = base.and_then(|b| models[b].row(tensor, tok)) {
                return r;
            }
            let owners: Vec<Vec<f32>> = models.iter().filter_map(|m| m.row(tensor, tok)).collect();
            match owners.len() {
                0 => vec![0.0; HIDDEN],
                n => (0..HIDDEN)
                    .map(|j| owners.iter().map(|r| r[j]).sum::<f32>() / n as f32)
                    .collect(),
            }
        });
        out.extend(row.iter().map(|v| f64::from(*v)));
    }
    let mean: Vec<f64> = (0..HIDDEN)
        .map(|j| out.iter().skip(j).step_by(HIDDEN).sum::<f64>() / tokens.len() as f64)
        .collect();
    for _ in tokens.len()..rows {
        out.extend(&mean);
    }
    out
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[row {}, col {}]: got {g}, want {w}",
            i / HIDDEN,
            i % HIDDEN
        );
    }
}

/// Base (a), a model with a permuted and extended vocabulary (b), and a third (c) sharing some
/// of b's new tokens, with its own special token.
fn three_models(root: &Path, dtype: DType) -> (Model, Model, Model) {
    let a = write_model(root, "a", 1, &["a", "b", "ab", "c"], &["<s>"], dtype);
    let b = write_model(root, "b", 2, &["b", "a", "ab", "d", "e"], &["<s>"], dtype);
    let c = write_model(root, "c", 3, &["a", "b", "d", "f"], &["<s>", "<x>"], dtype);
    (a, b, c)
}

#[test]
fn union_linear_three_models_with_padding() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b, c) = three_models(tmp.path(), DType::F32);
    let out = tmp.path().join("out");
    let yaml = format!(
        "merge_method: linear\nbase_model: {a}\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n  \
         - model: {b}\n    parameters: {{weight: 0.3}}\n  - model: {c}\n    parameters: {{weight: 0.2}}\n\
         tokenizer:\n  source: union\n  pad_to_multiple_of: 4\ndtype: float32\n",
        a = a.path(),
        b = b.path(),
        c = c.path()
    );
    merge(&yaml, &out).expect("merge");

    // Base tokens at their ids, then b's and c's ordinary tokens, then c's special token.
    let tokens = ["a", "b", "ab", "c", "<s>", "d", "e", "f", "<x>"];
    let rows = 12;
    let models = [&a, &b, &c];
    let weights = [0.5, 0.3, 0.2];
    let got = load(&out.join("model.safetensors"));
    for name in [EMBED, LM_HEAD] {
        let (dtype, shape, values) = &got[name];
        assert_eq!(*dtype, DType::F32);
        assert_eq!(shape, &vec![rows, HIDDEN], "{name}");
        let inputs: Vec<Vec<f64>> = (0..3)
            .map(|k| relaid(&models, k, Some(0), name, &tokens, rows))
            .collect();
        let want: Vec<f64> = (0..rows * HIDDEN)
            .map(|i| (0..3).map(|k| weights[k] * inputs[k][i]).sum::<f64>())
            .collect();
        assert_close(name, values, &want, 1e-6);
    }
    // Spot checks of the rule, without the helper: "c" only in the base → a's row everywhere;
    // "d" in b and c but not the base → a gets their mean.
    let embed = &got[EMBED].2;
    let row = |r: usize| &embed[r * HIDDEN..(r + 1) * HIDDEN];
    let ac = a.row(EMBED, "c").expect("c");
    assert_close(
        "c",
        row(3),
        &ac.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(),
        1e-6,
    );
    let (bd, cd) = (b.row(EMBED, "d").expect("d"), c.row(EMBED, "d").expect("d"));
    let want_d: Vec<f64> = (0..HIDDEN)
        .map(|j| {
            let mean = f64::from((bd[j] + cd[j]) / 2.0);
            0.5 * mean + 0.3 * f64::from(bd[j]) + 0.2 * f64::from(cd[j])
        })
        .collect();
    assert_close("d", row(5), &want_d, 1e-6);
    // Layer tensors are merged as usual.
    assert_eq!(
        got["model.layers.0.mlp.up_proj.weight"].1,
        vec![HIDDEN, HIDDEN]
    );

    let config = read_json(&out.join("config.json"));
    assert_eq!(config["vocab_size"], json!(rows));
    let tok = read_json(&out.join("tokenizer.json"));
    let added = tok["added_tokens"].as_array().expect("added_tokens");
    let appended: Vec<(u64, &str, bool)> = added
        .iter()
        .skip(1)
        .map(|e| {
            (
                e["id"].as_u64().expect("id"),
                e["content"].as_str().expect("content"),
                e["special"].as_bool().expect("special"),
            )
        })
        .collect();
    assert_eq!(
        appended,
        [
            (5, "d", false),
            (6, "e", false),
            (7, "f", false),
            (8, "<x>", true)
        ]
    );
    assert_eq!(added[1]["normalized"], json!(true));
    assert_eq!(added[1]["lstrip"], json!(false));
    // The base vocabulary itself is unchanged.
    assert_eq!(
        tok["model"]["vocab"],
        read_json(&a.dir.join("tokenizer.json"))["model"]["vocab"]
    );
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["added_tokens_decoder"]["8"]["content"], json!("<x>"));
    assert_eq!(tc["added_tokens_decoder"]["5"]["special"], json!(false));
}

#[test]
fn union_slerp_two_models() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b, _) = three_models(tmp.path(), DType::F32);
    let out = tmp.path().join("out");
    let yaml = format!(
        "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n\
         parameters:\n  t: 0.3\ntokenizer:\n  source: union\n",
        a = a.path(),
        b = b.path()
    );
    merge(&yaml, &out).expect("merge");
    let tokens = ["a", "b", "ab", "c", "<s>", "d", "e"];
    let rows = tokens.len();
    let models = [&a, &b];
    let got = load(&out.join("model.safetensors"));
    for name in [EMBED, LM_HEAD] {
        let (_, shape, values) = &got[name];
        assert_eq!(shape, &vec![rows, HIDDEN], "{name}");
        let x: Vec<f32> = relaid(&models, 0, Some(0), name, &tokens, rows)
            .iter()
            .map(|v| *v as f32)
            .collect();
        let y: Vec<f32> = relaid(&models, 1, Some(0), name, &tokens, rows)
            .iter()
            .map(|v| *v as f32)
            .collect();
        let want: Vec<f64> = temper_merge::methods::slerp(0.3, &x, &y)
            .iter()
            .map(|v| f64::from(*v))
            .collect();
        assert_close(name, values, &want, 1e-6);
    }
    assert_eq!(
        read_json(&out.join("config.json"))["vocab_size"],
        json!(rows)
    );
    let tok = read_json(&out.join("tokenizer.json"));
    let contents: Vec<&str> = tok["added_tokens"]
        .as_array()
        .expect("added_tokens")
        .iter()
        .map(|e| e["content"].as_str().expect("content"))
        .collect();
    assert_eq!(contents, ["<s>", "d", "e"]);
}

#[test]
fn base_source_fills_missing_tokens_from_the_base() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b, _) = three_models(tmp.path(), DType::F32);
    let out = tmp.path().join("out");
    // Legacy spelling; the base model listed, so its rows can fill b's missing "c".
    let yaml = format!(
        "merge_method: linear\nbase_model: {a}\nmodels:\n  - model: {a}\n    parameters: {{weight: 1.0}}\n  \
         - model: {b}\n    parameters: {{weight: 3.0}}\ntokenizer_source: base\n",
        a = a.path(),
        b = b.path()
    );
    merge(&yaml, &out).expect("merge");
    let tokens = ["a", "b", "ab", "c", "<s>"];
    let models = [&a, &b];
    let got = load(&out.join("model.safetensors"));
    for name in [EMBED, LM_HEAD] {
        let (_, shape, values) = &got[name];
        assert_eq!(shape, &vec![5, HIDDEN], "{name}");
        let x = relaid(&models, 0, Some(0), name, &tokens, 5);
        let y = relaid(&models, 1, Some(0), name, &tokens, 5);
        let want: Vec<f64> = x.iter().zip(&y).map(|(x, y)| (x + 3.0 * y) / 4.0).collect();
        assert_close(name, values, &want, 1e-6);
    }
    assert_eq!(read_json(&out.join("config.json"))["vocab_size"], json!(5));
    // The base's tokenizer files are copied as they are.
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).expect("copied"),
            std::fs::read(a.dir.join(f)).expect("source"),
            "{f}"
        );
    }
}

#[test]
fn model_source_takes_that_models_vocabulary() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b, _) = three_models(tmp.path(), DType::F32);
    let out = tmp.path().join("out");
    let yaml = format!(
        "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n\
         parameters:\n  t: 0.6\ntokenizer:\n  source: {b}\n",
        a = a.path(),
        b = b.path()
    );
    merge(&yaml, &out).expect("merge");
    let tokens = ["b", "a", "ab", "d", "e", "<s>"];
    let models = [&a, &b];
    let got = load(&out.join("model.safetensors"));
    let (_, shape, values) = &got[EMBED];
    assert_eq!(shape, &vec![6, HIDDEN]);
    let x: Vec<f32> = relaid(&models, 0, Some(0), EMBED, &tokens, 6)
        .iter()
        .map(|v| *v as f32)
        .collect();
    let y: Vec<f32> = relaid(&models, 1, Some(0), EMBED, &tokens, 6)
        .iter()
        .map(|v| *v as f32)
        .collect();
    // b's own tokenizer order: b's tensor is used as is; a's rows are permuted (and "d", "e"
    // come from b, their only owner).
    assert_eq!(y, b.tensors[EMBED]);
    let want: Vec<f64> = temper_merge::methods::slerp(0.6, &x, &y)
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    assert_close(EMBED, values, &want, 1e-6);
    assert_eq!(read_json(&out.join("config.json"))["vocab_size"], json!(6));
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).expect("copied"),
        std::fs::read(b.dir.join("tokenizer.json")).expect("source")
    );
}

#[test]
fn same_vocabulary_merges_as_without_a_tokenizer_setting() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = write_model(tmp.path(), "a", 1, &["a", "b", "ab"], &["<s>"], DType::BF16);
    let b = write_model(tmp.path(), "b", 2, &["a", "b", "ab"], &["<s>"], DType::BF16);
    let yaml = |tok: &str| {
        format!(
            "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n\
             parameters:\n  t: 0.5\ndtype: bfloat16\n{tok}",
            a = a.path(),
            b = b.path()
        )
    };
    let plain = tmp.path().join("plain");
    let union = tmp.path().join("union");
    merge(&yaml(""), &plain).expect("plain merge");
    merge(&yaml("tokenizer:\n  source: union\n"), &union).expect("union merge");
    let (p, u) = (
        load(&plain.join("model.safetensors")),
        load(&union.join("model.safetensors")),
    );
    assert_eq!(p, u);
    assert_eq!(u[EMBED].0, DType::BF16);
}

#[test]
fn bf16_union_keeps_the_dtype() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b, _) = three_models(tmp.path(), DType::BF16);
    let out = tmp.path().join("out");
    let yaml = format!(
        "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n  \
         - model: {b}\n    parameters: {{weight: 0.5}}\ntokenizer:\n  source: union\n  \
         pad_to_multiple_of: 8\n",
        a = a.path(),
        b = b.path()
    );
    merge(&yaml, &out).expect("merge");
    let tokens = ["a", "b", "ab", "c", "<s>", "d", "e"];
    let got = load(&out.join("model.safetensors"));
    let (dtype, shape, values) = &got[EMBED];
    assert_eq!(*dtype, DType::BF16);
    assert_eq!(shape, &vec![8, HIDDEN]);
    // No base_model: "c" (a only) and "d" (b only) come from their single owner.
    let models = [&a, &b];
    let x = relaid(&models, 0, None, EMBED, &tokens, 8);
    let y = relaid(&models, 1, None, EMBED, &tokens, 8);
    let want: Vec<f64> = x.iter().zip(&y).map(|(x, y)| (x + y) / 2.0).collect();
    assert_close(EMBED, values, &want, 1e-2);
    assert_eq!(read_json(&out.join("config.json"))["vocab_size"], json!(8));
}

#[test]
fn different_vocabularies_without_tokenizer_are_an_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b, _) = three_models(tmp.path(), DType::F32);
    let out = tmp.path().join("out");
    let yaml = format!(
        "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n\
         parameters:\n  t: 0.5\n",
        a = a.path(),
        b = b.path()
    );
    let err = merge(&yaml, &out)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains(EMBED), "{err}");
    assert!(err.contains("[5, 4]") && err.contains("[6, 4]"), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp listing")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("temper-tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_model_without_tokenizer_json_is_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b, _) = three_models(tmp.path(), DType::F32);
    std::fs::remove_file(b.dir.join("tokenizer.json")).expect("rm");
    let out = tmp.path().join("out");
    let yaml = format!(
        "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n\
         parameters:\n  t: 0.5\ntokenizer:\n  source: union\n",
        a = a.path(),
        b = b.path()
    );
    let err = merge(&yaml, &out)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains(&b.path()) && err.contains("tokenizer.json"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn tokenizer_and_tokenizer_source_together_are_an_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b, _) = three_models(tmp.path(), DType::F32);
    let yaml = format!(
        "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n\
         parameters:\n  t: 0.5\ntokenizer:\n  source: union\ntokenizer_source: base\n",
        a = a.path(),
        b = b.path()
    );
    let err = merge(&yaml, &tmp.path().join("out"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("tokenizer_source"), "{err}");
}

#[test]
fn tokens_without_rows_are_dropped_from_the_output_tokenizer() {
    let tmp = tempfile::tempdir().expect("tmp");
    // The tokenizer has 7 tokens but the checkpoint only 5 rows: "abc" and "<s>" have none.
    let a = write_model_rows(
        tmp.path(),
        "a",
        1,
        &["a", "b", "ab", "c", "abc"],
        &["<s>", "<pad>"],
        DType::F32,
        4,
    );
    let b = write_model(
        tmp.path(),
        "b",
        2,
        &["b", "a", "ab", "c"],
        &["<s>"],
        DType::F32,
    );
    let out = tmp.path().join("out");
    let yaml = format!(
        "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n\
         parameters:\n  t: 0.5\ntokenizer:\n  source: union\n",
        a = a.path(),
        b = b.path()
    );
    merge(&yaml, &out).expect("merge");
    // a's four tokens with rows, then b's special token (b's ordinary tokens are all in a).
    let tokens = ["a", "b", "ab", "c", "<s>"];
    let models = [&a, &b];
    let got = load(&out.join("model.safetensors"));
    let (_, shape, values) = &got[EMBED];
    assert_eq!(shape, &vec![5, HIDDEN]);
    let x: Vec<f32> = relaid(&models, 0, Some(0), EMBED, &tokens, 5)
        .iter()
        .map(|v| *v as f32)
        .collect();
    let y: Vec<f32> = relaid(&models, 1, Some(0), EMBED, &tokens, 5)
        .iter()
        .map(|v| *v as f32)
        .collect();
    let want: Vec<f64> = temper_merge::methods::slerp(0.5, &x, &y)
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    assert_close(EMBED, values, &want, 1e-6);

    let tok = read_json(&out.join("tokenizer.json"));
    let vocab = tok["model"]["vocab"].as_object().expect("vocab");
    assert_eq!(vocab.len(), 4);
    assert!(!vocab.contains_key("abc"));
    let merges: Vec<&str> = tok["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        merges,
        ["a b"],
        "the merge producing the dropped \"abc\" is gone"
    );
    let added: Vec<(u64, &str)> = tok["added_tokens"]
        .as_array()
        .expect("added_tokens")
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().expect("id"),
                e["content"].as_str().expect("content"),
            )
        })
        .collect();
    assert_eq!(added, [(4, "<s>")]);
    let tc = read_json(&out.join("tokenizer_config.json"));
    let decoder = tc["added_tokens_decoder"].as_object().expect("decoder");
    assert_eq!(decoder.keys().collect::<Vec<_>>(), ["4"]);
    assert_eq!(read_json(&out.join("config.json"))["vocab_size"], json!(5));
}
