//! The `temper` binary end to end: on the real SmolLM2 GGUF when it is on disk
//! (`scripts/fetch-smollm2.sh`, or `TEMPER_SMOLLM2_GGUF`), and error paths always.
#![allow(clippy::unwrap_used)]

mod common;

use common::smollm2_gguf;
use std::path::PathBuf;
use std::process::Command;

fn temper(args: &[&str]) -> (bool, String, String) {
    common::run_temper(None, args)
}

#[test]
fn tokenize_prints_json_ids_with_the_digits_pre_tokenizer() {
    let (ok, stdout, stderr) = temper(&[
        "tokenize",
        "--model",
        smollm2_gguf().to_str().unwrap(),
        "--text",
        "a  1 2024 x",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "[81,256,33,216,34,32,34,36,1792]");
}

#[test]
fn inspect_reports_architecture_parameters_and_dtypes() {
    let (ok, stdout, stderr) = temper(&["inspect", smollm2_gguf().to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("architecture: LlamaForCausalLM"),
        "{stdout}"
    );
    assert!(stdout.contains("parameters:   134515008"), "{stdout}");
    assert!(stdout.contains("F32 x61, Q4_1 x210, Q8_0 x1"), "{stdout}");
}

#[test]
fn convert_then_generate_greedy_from_the_hf_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2");
    let (ok, _, stderr) = temper(&[
        "convert",
        smollm2_gguf().to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let tok_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert!(
        tok_config["chat_template"]
            .as_str()
            .unwrap()
            .contains("<|im_start|>")
    );
    // Greedy continuation: the first 12 tokens of golden.json's `plain_spider_silk` greedy text.
    let (ok, stdout, stderr) = temper(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "The mechanical properties of spider silk",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(" are incredibly strong and flexible, making it a versatile material"),
        "{stdout:?}"
    );
}

/// `--dtype gguf` runs on the file's own Q4_1 blocks: the same greedy text as the f32 golden
/// (every step of it has a top-1/top-2 margin ≥ 0.08, far above the reduction-order noise).
/// `nf4` quantizes on load and still writes fluent text; `gguf` on a directory is refused.
#[test]
fn generate_on_quantized_weights() {
    let generate = |dtype: &str, model: &str| {
        temper(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "The mechanical properties of spider silk",
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
            "--dtype",
            dtype,
        ])
    };
    let model = smollm2_gguf();
    let (ok, stdout, stderr) = generate("gguf", model.to_str().unwrap());
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(" are incredibly strong and flexible, making it a versatile material"),
        "{stdout:?}"
    );
    let (ok, stdout, stderr) = generate("nf4", model.to_str().unwrap());
    assert!(
        ok && stdout.split_whitespace().count() >= 6,
        "{stdout:?} {stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = generate("gguf", dir.path().to_str().unwrap());
    assert!(!ok && stderr.contains("not a .gguf file"), "{stderr}");
    let (ok, _, stderr) = generate("q4", model.to_str().unwrap());
    assert!(!ok && stderr.contains("nf4, q8_0 or gguf"), "{stderr}");
}

/// `--device cuda:N` is accepted wherever `--device` is, and a machine that cannot run it says
/// why before anything is loaded: without the `cuda` feature, that the build lacks it; with it,
/// what is missing (here `CUDA_PATH` points at nothing, so the headers are missing everywhere).
#[test]
fn a_cuda_device_that_cannot_start_is_a_clear_error() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_temper"))
            .args(args)
            .env("CUDA_PATH", "/nonexistent/cuda")
            .env_remove("TEMPER_CUDA_SKIP_PROBE")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        &[
            "generate", "--model", "x.gguf", "--prompt", "hi", "--device", "cuda:0",
        ][..],
        &[
            "train", "sft", "--model", "x", "--data", "d.jsonl", "--out", "o", "--device", "cuda:1",
        ],
    ] {
        let (ok, stderr) = run(args);
        assert!(!ok, "{args:?}");
        assert!(stderr.contains("device `cuda:"), "{stderr}");
        if cfg!(feature = "cuda") {
            assert!(
                stderr.contains("cannot start") && stderr.contains("CUDA_PATH /nonexistent/cuda"),
                "{stderr}"
            );
        } else {
            assert!(stderr.contains("`cuda` cargo feature"), "{stderr}");
        }
    }
}

#[test]
fn bad_inputs_exit_nonzero_with_a_message() {
    let (ok, _, stderr) = temper(&["inspect", "/nonexistent/model"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
    let (ok, _, stderr) = temper(&[
        "generate", "--model", "x.gguf", "--prompt", "hi", "--device", "tpu",
    ]);
    assert!(!ok);
    assert!(stderr.contains("unknown backend `tpu`"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let (ok, _, stderr) = temper(&[
        "generate",
        "--model",
        junk.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert!(!ok);
    assert!(stderr.contains("junk.gguf"), "{stderr}");
    // An unknown precision is refused by name, with the accepted ones.
    let (ok, _, stderr) = temper(&[
        "train",
        "sft",
        "--model",
        "x",
        "--data",
        "d.jsonl",
        "--out",
        "o",
        "--precision",
        "fp8",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("invalid precision `fp8`") && stderr.contains("bf16-mixed"),
        "{stderr}"
    );
    // QLoRA needs LoRA, and an encoding Temper can quantize to, named with the accepted ones.
    let qlora = |extra: &[&str]| {
        let mut args = vec![
            "train", "sft", "--model", "x", "--data", "d.jsonl", "--out", "o",
        ];
        args.extend_from_slice(extra);
        temper(&args)
    };
    let (ok, _, stderr) = qlora(&["--quantize-base", "nf4"]);
    assert!(!ok && stderr.contains("--quantize-base need"), "{stderr}");
    let (ok, _, stderr) = qlora(&["--lora-r", "4", "--quantize-base", "q4_k"]);
    assert!(
        !ok && stderr.contains("quantize_base = \"q4_k\"") && stderr.contains("gguf"),
        "{stderr}"
    );
}

fn merge_fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../merge/tests/fixtures/mergekit"
    ))
}

#[test]
fn merge_writes_a_model_a_report_and_refuses_bad_configs() {
    let fixtures = merge_fixtures();
    let tmp = tempfile::tempdir().unwrap();
    // Model paths in the fixture config are relative to the fixture folder: rewrite them as
    // absolute paths in a copy of the config.
    let config = tmp.path().join("gradient.yml");
    let text = std::fs::read_to_string(fixtures.join("slerp_gradient_bf16/config.yml"))
        .unwrap()
        .replace("models/", &format!("{}/models/", fixtures.display()));
    std::fs::write(&config, text).unwrap();
    let out = tmp.path().join("merged");
    let report = tmp.path().join("report.json");
    let (ok, _, stderr) = temper(&[
        "merge",
        config.to_str().unwrap(),
        out.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("merged 39 tensors (slerp method)"),
        "{stderr}"
    );
    for f in [
        "model.safetensors",
        "config.json",
        "README.md",
        "mergekit_config.yml",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // On these bf16 inputs the file is byte-identical to mergekit's (header included).
    assert!(
        std::fs::read(out.join("model.safetensors")).unwrap()
            == std::fs::read(fixtures.join("slerp_gradient_bf16/output/model.safetensors"))
                .unwrap(),
        "output differs from mergekit's"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let rows = report.as_array().unwrap();
    assert_eq!(rows.len(), 39);
    let norm = rows
        .iter()
        .find(|r| r["name"] == "model.norm.weight")
        .unwrap();
    // RMSNorm gains of two fine-tunes are nearly colinear: SLERP falls back to lerp.
    assert_eq!(norm["linear_fallback"], true);
    assert!(norm["cosine"].as_f64().unwrap() > 0.9995);
    assert_eq!(norm["t"], 0.5);

    // Existing output: refused, untouched.
    let (ok, _, stderr) = temper(&["merge", config.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("--overwrite"), "{stderr}");

    // A typo in a key is named.
    let bad = tmp.path().join("bad.yml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("merge_method", "merge_methd"),
    )
    .unwrap();
    let (ok, _, stderr) = temper(&[
        "merge",
        bad.to_str().unwrap(),
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("merge_methd"), "{stderr}");
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn a_preset_outside_the_repository_says_where_to_run_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args(["pipeline", "--preset", "smoke", "--out", "o"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("preset reads data/bio-materials/")
            && stderr.contains("repository root")
            && stderr.contains("--config"),
        "{stderr}"
    );
    assert!(!tmp.path().join("o").exists());
}

#[test]
fn base_is_only_for_an_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = temper(&[
        "generate",
        "--model",
        smollm2_gguf().to_str().unwrap(),
        "--base",
        tmp.path().to_str().unwrap(),
        "--prompt",
        "x",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--base") && stderr.contains("not an adapter directory"),
        "{stderr}"
    );
}

#[test]
fn eval_scores_a_benchmark_and_writes_records() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = tmp.path().join("bench.jsonl");
    std::fs::write(
        &bench,
        concat!(
            r#"{"id": "q1", "category": "general", "type": "mc", "question": "What is the capital of France?", "choices": ["Berlin", "Paris", "Madrid"], "answer": 1}"#,
            "\n",
            r#"{"id": "q2", "category": "general", "type": "tf", "question": "Water freezes at 0 degrees Celsius at sea level.", "answer": true}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("eval");
    let (ok, stdout, stderr) = temper(&[
        "eval",
        "--model",
        smollm2_gguf().to_str().unwrap(),
        "--bench",
        bench.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("acc_norm"), "{stdout}");
    // stderr is a pipe here: progress comes as plain lines, the last one at 100 %.
    let last = stderr.lines().rev().find(|l| l.starts_with("eval "));
    assert!(
        last.is_some_and(|l| l.contains(" questions (100%)")),
        "{stderr}"
    );
    let records: Vec<serde_json::Value> = std::fs::read_to_string(out.join("records.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    // The log-likelihood of " Paris" after the question dwarfs the other capitals'.
    assert_eq!(records[0]["id"], "q1");
    assert_eq!(records[0]["prediction"], "Paris");
    assert_eq!(records[0]["correct"], true);
    assert_eq!(records[1]["logprobs"].as_array().unwrap().len(), 2);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["acc"]["overall"]["n"], 2);

    // A malformed line names the file and the line.
    std::fs::write(&bench, "{\"type\": \"mc\", \"question\": \"x\"}\n").unwrap();
    let (ok, _, stderr) = temper(&[
        "eval",
        "--model",
        smollm2_gguf().to_str().unwrap(),
        "--bench",
        bench.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("bench.jsonl:1"), "{stderr}");
}

/// `--task NAME --include-path DIR`: a group YAML runs its tasks and writes lm-eval's group
/// entries; an unknown name is refused with close matches before the model loads.
#[test]
fn eval_runs_a_group_by_name_and_writes_its_aggregate() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/bio-materials/tasks");
    let arc = std::fs::read_to_string(data.join("arc.jsonl")).unwrap();
    let rows: Vec<&str> = arc.lines().collect();
    // Task a has 5 documents, task b 2: the weighted mean differs from the plain one.
    std::fs::write(tasks.join("five.jsonl"), rows[..5].join("\n")).unwrap();
    std::fs::write(tasks.join("two.jsonl"), rows[5..7].join("\n")).unwrap();
    let task = |name: &str, file: &str| {
        format!(
            "task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {file}\n\
             test_split: test\noutput_type: multiple_choice\n\
             doc_to_text: \"Question: {{{{question}}}}\\nAnswer:\"\n\
             doc_to_target: \"{{{{choices.label.index(answerKey)}}}}\"\n\
             doc_to_choice: \"{{{{choices.text}}}}\"\n"
        )
    };
    std::fs::write(tasks.join("a.yaml"), task("bio_a", "five.jsonl")).unwrap();
    std::fs::write(tasks.join("b.yaml"), task("bio_b", "two.jsonl")).unwrap();
    std::fs::write(
        tasks.join("g.yaml"),
        "group: bio_g\ntask: [bio_a, bio_b]\naggregate_metric_list:\n  - metric: acc_norm\n",
    )
    .unwrap();
    let out = tmp.path().join("results.json");
    let (ok, stdout, stderr) = temper(&[
        "eval",
        "--model",
        smollm2_gguf().to_str().unwrap(),
        "--task",
        "bio_g",
        "--include-path",
        tasks.to_str().unwrap(),
        "--output-path",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Groups") && stdout.contains("bio_g"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let acc = |t: &str| json["results"][t]["acc_norm,none"].as_f64().unwrap();
    let want = (acc("bio_a") * 5.0 + acc("bio_b") * 2.0) / 7.0;
    assert!((acc("bio_g") - want).abs() < 1e-12, "{json}");
    // SmolLM2 gets 0/5 and 1/2 here, so the size weighting is visible (1/7, not 1/4).
    assert!(
        (want - (acc("bio_a") + acc("bio_b")) / 2.0).abs() > 1e-3,
        "{json}"
    );
    assert_eq!(json["groups"]["bio_g"]["sample_len"], 7);
    assert_eq!(
        json["group_subtasks"]["bio_g"],
        serde_json::json!(["bio_a", "bio_b"])
    );
    // lm-eval's pooled standard error of the two tasks' errors.
    let se = |t: &str| json["results"][t]["acc_norm_stderr,none"].as_f64().unwrap();
    let pooled = ((4.0 * 5.0 * se("bio_a").powi(2) + 2.0 * se("bio_b").powi(2)) / 5.0 / 7.0).sqrt();
    let got = json["groups"]["bio_g"]["acc_norm_stderr,none"]
        .as_f64()
        .unwrap();
    assert!((got - pooled).abs() < 1e-12, "{json}");
    // Provenance: each task's YAML and data file with its SHA-256, and the settings.
    let files = json["task_files"]["bio_a"].as_array().unwrap();
    let names: Vec<&str> = files
        .iter()
        .map(|f| f["path"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["a.yaml", "five.jsonl"]);
    let yaml = std::fs::read(tasks.join("a.yaml")).unwrap();
    assert_eq!(files[0]["bytes"], yaml.len());
    assert_eq!(files[1]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(json["config"]["temper_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["config"]["device"], "cpu");

    let (ok, _, stderr) = temper(&[
        "eval",
        "--model",
        smollm2_gguf().to_str().unwrap(),
        "--task",
        "bio_gg",
        "--include-path",
        tasks.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown task, group or tag `bio_gg`") && stderr.contains("bio_g"),
        "{stderr}"
    );
}

#[test]
fn pipeline_prints_its_config_and_rejects_bad_ones() {
    let (ok, out, err) = temper(&["pipeline", "--preset", "smoke", "--print-config"]);
    assert!(ok, "{err}");
    let config: toml::Table = toml::from_str(&out).unwrap();
    let stages: Vec<&str> = config["stage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["cpt", "sft", "orpo"]);
    assert!(out.contains("merge_method: slerp"), "{out}");

    // The printed config is a valid config file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, &out).unwrap();
    let (ok, again, err) = temper(&[
        "pipeline",
        "--config",
        path.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(ok, "{err}");
    assert_eq!(again, out);

    std::fs::write(&path, out.replace("max_steps = 2", "max_stepz = 2")).unwrap();
    let (ok, _, err) = temper(&["pipeline", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("stage `cpt`") && err.contains("max_stepz"),
        "{err}"
    );

    let (ok, _, err) = temper(&["pipeline", "--preset", "huge"]);
    assert!(!ok);
    assert!(err.contains("unknown preset `huge`"), "{err}");
}
