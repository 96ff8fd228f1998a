//! lm-eval task YAMLs without a model: what is refused (naming the file and key) and what the
//! templates make of a document, hostile templates included.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::json;
use temper_bench_eval::task::TaskConfig;
use temper_bench_eval::task::dataset::load_split;
use temper_bench_eval::task::prompt::Prompter;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const BASE: &str = "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: d.jsonl\ntest_split: test\noutput_type: multiple_choice\n";

#[test]
fn refusals_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "doc_to_text: !function utils.doc_to_text\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n",
            "`doc_to_text`",
            "needs Python",
        ),
        (
            "process_docs: x\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n",
            "`process_docs`",
            "needs Python",
        ),
        (
            "filter_list: []\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n",
            "`filter_list`",
            "only a generate_until task",
        ),
        (
            "generation_kwargs: {until: [x]}\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n",
            "`generation_kwargs`",
            "only a generate_until task",
        ),
        (
            "sampler_kwargs: 1\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n",
            "`sampler_kwargs`",
            "refused rather than ignored",
        ),
        (
            "doc_to_text: q\ndoc_to_target: 0\n",
            "`doc_to_choice`",
            "needs its choices",
        ),
        (
            "doc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a]\nmetric_list:\n  - metric: bleu\n",
            "`metric_list`",
            "bleu",
        ),
        (
            "doc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a]\nnum_fewshot: -1\n",
            "`num_fewshot`",
            "0..=1024",
        ),
    ];
    for (i, (yaml, key, why)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("t{i}.yaml"), &format!("{BASE}{yaml}"));
        let err = TaskConfig::load(&p).unwrap_err().to_string();
        assert!(
            err.contains(&p.display().to_string()) && err.contains(key) && err.contains(why),
            "{err}"
        );
    }
    // An include cycle is bounded, not a stack overflow.
    let p = write(dir.path(), "loop.yaml", "include: loop.yaml\ntask: x\n");
    let err = TaskConfig::load(&p).unwrap_err().to_string();
    assert!(err.contains("nested includes"), "{err}");
}

#[test]
fn templates_render_as_lm_eval_and_hostile_ones_stop() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "d.jsonl",
        &format!(
            "{}\n{}\n",
            json!({"question": "Q1", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"}),
            json!({"question": "Q2", "choices": {"text": ["u", "v"], "label": ["A", "B"]}, "answerKey": "A"}),
        ),
    );
    let arc = "description: \"Intro\\n\\n\"\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\ndoc_to_target: \"{{choices.label.index(answerKey)}}\"\ndoc_to_choice: \"{{choices.text}}\"\n";
    let p = write(dir.path(), "arc.yaml", &format!("{BASE}{arc}"));
    let config = TaskConfig::load(&p).unwrap();
    let docs = load_split(&config, "test").unwrap();
    let prompter = Prompter::new(&config).unwrap();
    let spec = config.doc_to_choice.clone().unwrap();
    assert_eq!(
        prompter.choices(&spec, &docs[0], 0).unwrap(),
        vec!["x", "y"]
    );
    let choices = prompter.choices(&spec, &docs[0], 0).unwrap();
    assert_eq!(prompter.gold(&docs[0], 0, &choices).unwrap(), Some(1));
    // The description keeps its trailing newlines (lm-eval's keep_trailing_newline).
    assert_eq!(
        prompter.context(&docs[1], 1, &[(0, &docs[0])]).unwrap(),
        "Intro\n\nQuestion: Q1\nAnswer: y\n\nQuestion: Q2\nAnswer:"
    );

    // A doubling loop would build 2^40 bytes: stopped by the value limit, naming the key.
    let hostile = "doc_to_text: \"{% set ns = namespace(s='xx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}\"\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n";
    let p = write(dir.path(), "hostile.yaml", &format!("{BASE}{hostile}"));
    let config = TaskConfig::load(&p).unwrap();
    let prompter = Prompter::new(&config).unwrap();
    let err = prompter.context(&docs[0], 0, &[]).unwrap_err().to_string();
    assert!(
        err.contains("doc_to_text") && err.contains("limit"),
        "{err}"
    );
    // Nested loops run out of steps.
    let hostile = "doc_to_text: \"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\"\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n";
    let p = write(dir.path(), "loops.yaml", &format!("{BASE}{hostile}"));
    let config = TaskConfig::load(&p).unwrap();
    let err = Prompter::new(&config)
        .unwrap()
        .context(&docs[0], 0, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("steps"), "{err}");
    // A regex_replace that would multiply its input is refused before it runs.
    let hostile = "doc_to_text: \"{{ ('x' * 100000) | regex_replace('x', 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy') }}\"\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n";
    let p = write(dir.path(), "regex.yaml", &format!("{BASE}{hostile}"));
    let config = TaskConfig::load(&p).unwrap();
    let err = match Prompter::new(&config).unwrap().context(&docs[0], 0, &[]) {
        Ok(text) => panic!("rendered {} bytes", text.len()),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("regex_replace") && err.contains("limit"),
        "{err}"
    );
}

/// A FIFO named as a task's data file is refused at once, naming it (never read or waited on).
#[cfg(unix)]
#[test]
fn a_fifo_as_data_file_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("d.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let yaml = "doc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n";
    let p = write(dir.path(), "t.yaml", &format!("{BASE}{yaml}"));
    let config = TaskConfig::load(&p).unwrap();
    let err = load_split(&config, "test").unwrap_err().to_string();
    assert!(err.contains("d.jsonl") && err.contains("FIFO"), "{err}");
}
