//! `temper compare`: two records files → the per-category table, compare.json and an SVG; runs
//! that share no question are an error naming both files.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn write_run(dir: &Path, outcomes: &[(&str, &str, bool)]) {
    std::fs::create_dir_all(dir).unwrap();
    let text: String = outcomes
        .iter()
        .map(|(id, cat, ok)| {
            format!(
                "{}\n",
                serde_json::json!({"id": id, "category": cat, "gold": "x", "prediction": "x",
                                   "correct": ok})
            )
        })
        .collect();
    std::fs::write(dir.join("records.jsonl"), text).unwrap();
}

#[test]
fn compares_two_runs_per_category() {
    let tmp = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..30).map(|i| format!("q{i}")).collect();
    let a: Vec<(&str, &str, bool)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.as_str(),
                if i < 20 { "numerical" } else { "general" },
                true,
            )
        })
        .collect();
    let b: Vec<(&str, &str, bool)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.as_str(),
                if i < 20 { "numerical" } else { "general" },
                i >= 20,
            )
        })
        .collect();
    write_run(&tmp.path().join("a"), &a);
    write_run(&tmp.path().join("b"), &b);
    let out = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args([
            "compare",
            "a",
            "b/records.jsonl",
            "--resamples",
            "500",
            "--out",
            "cmp",
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // numerical: A right on all 20, B on none → McNemar 20/0, p = 2·0.5^20.
    let numerical = stdout.lines().find(|l| l.starts_with("numerical")).unwrap();
    assert!(numerical.contains("20/0"), "{numerical}");
    assert!(numerical.contains("1.000"), "{numerical}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("cmp/compare.json")).unwrap(),
    )
    .unwrap();
    let p = json["categories"][1]["mcnemar"]["p_value"]
        .as_f64()
        .unwrap();
    assert!((p - 2.0 * 0.5f64.powi(20)).abs() < 1e-15, "{json}");
    // Holm over two categories: the smaller p doubled.
    let holm = json["categories"][1]["p_holm"].as_f64().unwrap();
    assert!((holm - 2.0 * p).abs() < 1e-15);
    assert_eq!(json["overall"]["n"], 30);
    let svg = std::fs::read_to_string(tmp.path().join("cmp/compare.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("numerical (n = 20)"),
        "{svg}"
    );

    write_run(&tmp.path().join("c"), &[("other", "general", true)]);
    let out = Command::new(env!("CARGO_BIN_EXE_temper"))
        .args(["compare", "a", "c"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("a/records.jsonl")
            && stderr.contains("c/records.jsonl")
            && stderr.contains("share no question"),
        "{stderr}"
    );
}
