//! `temper convert --to gguf`: the real SmolLM2 GGUF re-exported as Q8_0 generates with
//! `temper generate` (when the file is on disk, `TEMPER_SMOLLM2_GGUF`), and every refusal —
//! an unknown dtype, an existing or unwritable output, a tokenizer llama.cpp's `gpt2` model
//! cannot hold — is clear and leaves no output.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use temper_llm_arch::gguf::{GgmlType, GgufFile};

mod common;

// The tiny base model writer shared with the trainer tests (a word-level tokenizer).
#[path = "../../train/tests/common/tiny_base.rs"]
mod tiny_base;

fn temper(dir: &Path, args: &[&str]) -> (bool, String, String) {
    common::run_temper(Some(dir), args)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn gguf_to_q8_0_gguf_then_generate() {
    let source = common::smollm2_gguf();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = source.to_str().unwrap();
    let (ok, _, err) = temper(
        d,
        &["convert", src, "m.gguf", "--to", "gguf", "--dtype", "q8_0"],
    );
    assert!(ok, "{err}");
    assert!(err.contains("272 tensors: Q8_0 x211, F32 x61"), "{err}");
    // Without a terminal each phase is a plain line, not a hidden spinner.
    assert!(err.starts_with(&format!("reading {src} (0s)\n")), "{err}");
    assert!(err.contains("\nwriting m.gguf ("), "{err}");
    let f = GgufFile::open(d.join("m.gguf")).unwrap();
    // general.name is carried over from the source GGUF.
    let original = GgufFile::open(&source).unwrap();
    assert_eq!(
        f.get_str("general.name").unwrap(),
        original.get_str("general.name").unwrap()
    );
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(
        f.tensor_info("blk.0.attn_q.weight").unwrap().ggml_type,
        GgmlType::Q8_0
    );
    // An existing output is kept without --overwrite, replaced with it.
    let (ok, _, err) = temper(d, &["convert", src, "m.gguf", "--to", "gguf"]);
    assert!(
        !ok && err.contains("m.gguf exists; pass --overwrite"),
        "{err}"
    );
    let (ok, stdout, err) = temper(
        d,
        &[
            "generate",
            "--model",
            "m.gguf",
            "--dtype",
            "gguf",
            "--prompt",
            "Spider silk is",
            "--max-new-tokens",
            "4",
        ],
    );
    assert!(ok, "{err}");
    assert!(!stdout.trim().is_empty());
    assert_eq!(listing(d), ["m.gguf"]);
}

#[test]
fn refusals_are_clear_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_base::write_tiny_base(&d.join("base"), 16, 64);

    let (ok, _, err) = temper(
        d,
        &[
            "convert", "base", "m.gguf", "--to", "gguf", "--dtype", "q5_k",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("unknown GGUF export dtype `q5_k` (expected f32, f16, bf16, q8_0 or q4_0)"),
        "{err}"
    );
    let (ok, _, err) = temper(d, &["convert", "base", "out", "--dtype", "q8_0"]);
    assert!(
        !ok && err.contains("invalid --dtype `q8_0` for --to hf"),
        "{err}"
    );

    // A word-level tokenizer: llama.cpp's byte-level BPE cannot hold it.
    let (ok, _, err) = temper(d, &["convert", "base", "m.gguf", "--to", "gguf"]);
    assert!(!ok);
    assert!(err.contains("only byte-level BPE exports"), "{err}");

    // An output directory that does not exist: the message names it.
    let (ok, _, err) = temper(d, &["convert", "base", "no/m.gguf", "--to", "gguf"]);
    assert!(!ok && err.contains("no/"), "{err}");
    assert_eq!(listing(d), ["base"]);
}

/// A tiny random model (hidden 64, 2 layers) with SmolLM2's real tokenizer and chat template,
/// saved as an HF directory: small enough to train in a test, with a vocabulary llama.cpp's
/// pre-tokenizer table knows.
fn tiny_with_smollm2_tokenizer(source: &Path, dir: &Path) {
    use temper_backend::{Device, FloatPrecision};
    use temper_llm_arch::{LlamaForCausalLM, ModelConfig, Pretrained};
    let original = Pretrained::load_gguf(source, &Device::flex(), FloatPrecision::F32).unwrap();
    let mut c = ModelConfig::tiny(original.model.config().vocab_size, 64, 2, 4, 2);
    c.tie_word_embeddings = true;
    c.bos_token_id = Some(1);
    c.eos_token_ids = vec![2];
    let p = Pretrained {
        model: LlamaForCausalLM::init(&c, &Device::flex()),
        ..original
    };
    p.save(dir, FloatPrecision::F32).unwrap();
}

/// `temper train --export-gguf`: full fine-tuning writes OUT/model.f32.gguf holding exactly the
/// saved model; with `--adapter-only` the adapter merged onto its base.
#[test]
fn train_export_gguf_writes_the_trained_model() {
    use temper_backend::{Device, FloatPrecision};
    use temper_llm_arch::Pretrained;
    use temper_llm_arch::checkpoint::hf_tensors;
    let source = common::smollm2_gguf();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny_with_smollm2_tokenizer(&source, &d.join("base"));
    let rows = [
        r#"{"prompt": "Spider silk is", "completion": " a protein fibre."}"#,
        r#"{"prompt": "Nacre is", "completion": " mother of pearl."}"#,
    ];
    std::fs::write(d.join("train.jsonl"), rows.join("\n")).unwrap();
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "sft",
            "--model",
            "base",
            "--data",
            "train.jsonl",
            "--out",
            out,
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        temper(d, &args)
    };
    // A bad dtype is refused before any training.
    let (ok, _, err) = train("bad", &["--export-gguf", "q3"]);
    assert!(
        !ok && err.contains("unknown GGUF export dtype `q3`"),
        "{err}"
    );
    assert!(!d.join("bad/checkpoint-2").exists());

    let device = Device::flex();
    for (out, extra) in [
        ("full", &["--export-gguf", "f32"][..]),
        (
            "adapter",
            &["--lora-r", "4", "--adapter-only", "--export-gguf", "f32"][..],
        ),
    ] {
        let (ok, _, err) = train(out, extra);
        assert!(ok, "{out}: {err}");
        let gguf = d.join(out).join("model.f32.gguf");
        assert!(err.contains("model.f32.gguf"), "{err}");
        let exported = Pretrained::load_gguf(&gguf, &device, FloatPrecision::F32).unwrap();
        let saved = if out == "adapter" {
            temper_lora::load_merged_adapter(&d.join(out), None, &device, FloatPrecision::F32)
                .unwrap()
        } else {
            Pretrained::load(d.join(out), &device, FloatPrecision::F32).unwrap()
        };
        let a: std::collections::HashMap<_, _> = hf_tensors(&exported.model)
            .into_iter()
            .map(|(n, t)| (n, t.data))
            .collect();
        let b: std::collections::HashMap<_, _> = hf_tensors(&saved.model)
            .into_iter()
            .map(|(n, t)| (n, t.data))
            .collect();
        assert_eq!(a, b, "{out}: the GGUF holds the saved model");
        assert_eq!(
            GgufFile::open(&gguf)
                .unwrap()
                .get_str("tokenizer.ggml.pre")
                .unwrap(),
            "smollm"
        );
    }
}
