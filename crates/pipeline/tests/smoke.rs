//! The smoke preset end to end on the real SmolLM2-135M-Instruct: every stage, merge and
//! variant runs, every report file appears; a second run skips everything; changing the last
//! stage re-runs only that stage, its merge and their evaluations.
//!
//! Model: `TEMPER_SMOLLM2_GGUF` (default: the preset's path under the repository root, filled by
//! `scripts/fetch-smollm2.sh`). Data: the repository's `data/bio-materials`.
#![allow(clippy::unwrap_used)]

mod common;

use common::smoke_config;
use temper_pipeline::report::VariantKind;
use temper_pipeline::{PipelineOptions, run_pipeline};

#[test]
fn smoke_pipeline_runs_every_variant_writes_the_report_and_resumes() {
    let out = tempfile::tempdir().unwrap();
    let options = PipelineOptions {
        out_dir: out.path().to_path_buf(),
        progress: false,
    };
    let mut config = smoke_config();
    config.export_gguf = Some("q8_0".into());
    let report = run_pipeline(&config, &options).unwrap();

    let names: Vec<&str> = report.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Instruct",
            "Instruct-CPT",
            "Instruct-CPT-SLERP",
            "Instruct-CPT-SFT",
            "Instruct-CPT-SFT-SLERP",
            "Instruct-CPT-SFT-ORPO",
            "Instruct-CPT-SFT-ORPO-SLERP",
        ]
    );
    let limit = config.benchmark.limit.unwrap();
    for v in &report.variants {
        assert_eq!(v.summary.overall.n, limit, "{}", v.name);
        assert!(!v.skipped, "{}", v.name);
        assert_eq!(
            v.vs_instruct.is_none(),
            v.kind == VariantKind::Parent,
            "{}",
            v.name
        );
        assert!(
            out.path()
                .join("eval")
                .join(v.name.to_lowercase())
                .join("records.jsonl")
                .exists()
        );
    }
    assert_eq!(report.stages.len(), 3);
    for s in &report.stages {
        assert_eq!(s.steps, 2, "{}", s.name);
        assert!(s.final_loss.is_some_and(f64::is_finite), "{}", s.name);
        assert!(!s.losses.is_empty());
        // Checkpoints are removed once the stage is done; the model stays.
        let model = out.path().join("stages").join(&s.name).join("model");
        assert!(model.join("config.json").exists());
        assert!(!std::fs::read_dir(&model).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("checkpoint-")
        }));
    }
    // Each merge saw every tensor of SmolLM2 (30 layers × 9 + embeddings + final norm).
    assert_eq!(report.merges.len(), 3);
    for m in &report.merges {
        assert_eq!(m.tensors, 30 * 9 + 2, "{}", m.name);
        assert!(
            m.per_tensor
                .iter()
                .all(|t| t.t.is_some() && t.cosine.is_some())
        );
    }
    // The paper's gradient: the first layer's attention is all instruct (t = 0), its MLP all
    // fine-tuned (t = 1).
    let t_of = |name: &str| {
        report.merges[0]
            .per_tensor
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .t
            .unwrap()
    };
    assert_eq!(t_of("model.layers.0.self_attn.q_proj.weight"), 0.0);
    assert_eq!(t_of("model.layers.0.mlp.down_proj.weight"), 1.0);
    assert_eq!(t_of("model.norm.weight"), 0.5);
    // How far each fine-tune moved, measured apart from the merge: the two computations of
    // the cosines (the merge's in f32 from normalised vectors, weight_delta's in f64) agree,
    // and each stage moved its input a little (LoRA, two steps).
    assert_eq!(report.weights.len(), 3);
    for (w, m) in report.weights.iter().zip(&report.merges) {
        assert_eq!(w.tensors, m.tensors, "{}", w.variant);
        assert!(
            w.relative_change > 0.0 && w.relative_change < 0.05,
            "{} {}",
            w.variant,
            w.relative_change
        );
        let merge_min = m.min_cosine.unwrap();
        assert!(
            (w.min_cosine - merge_min).abs() < 1e-5,
            "{}: {} vs the merge's {merge_min}",
            w.variant,
            w.min_cosine
        );
        // Per layer: attention, MLP and the two norms.
        assert_eq!(
            w.groups.iter().filter(|g| g.layer.is_some()).count(),
            30 * 3
        );
    }
    assert_eq!(report.analyses.len(), 3);
    for a in &report.analyses {
        let v = &a.analysis;
        assert_eq!(v.n, limit);
        assert!((v.expected - (v.parent_a + v.parent_b) / 2.0).abs() < 1e-12);
        assert!((0.0..=1.0).contains(&v.mcnemar.p_value));
    }

    for file in [
        "report.md",
        "report.html",
        "report.json",
        "plots/accuracy.svg",
        "plots/merge_scatter.svg",
        "plots/merge_distance.svg",
        "plots/loss.svg",
        "plots/train_metrics.svg",
        "plots/weights_moved.svg",
    ] {
        let path = out.path().join(file);
        assert!(path.metadata().unwrap().len() > 0, "{file}");
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    for name in &names {
        assert!(md.contains(name), "report.md lacks {name}");
        assert!(html.contains(name), "report.html lacks {name}");
    }
    assert_eq!(html.matches("<svg").count(), 6, "inline plots");
    // The stages' learning rates and gradient norms, as TRL names them.
    for s in &report.stages {
        for name in ["learning_rate", "grad_norm"] {
            assert_eq!(s.metrics[name].len(), s.losses.len(), "{} {name}", s.name);
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["variants"].as_array().unwrap().len(), 7);

    // export_gguf: every trained and merged variant as a GGUF file llama.cpp loads.
    let gguf = |name: &str| out.path().join("gguf").join(format!("{name}.q8_0.gguf"));
    for name in &names[1..] {
        let file = temper_llm_arch::gguf::GgufFile::open(gguf(name)).unwrap();
        assert_eq!(file.get_u32("general.file_type").unwrap(), 7, "{name}");
        assert_eq!(file.get_str("general.name").unwrap(), *name);
    }
    let modified = |name: &str| gguf(name).metadata().unwrap().modified().unwrap();
    let before = modified("Instruct-CPT-SFT-ORPO");

    // Same config again: nothing re-runs, same numbers.
    let again = run_pipeline(&config, &options).unwrap();
    assert_eq!(
        modified("Instruct-CPT-SFT-ORPO"),
        before,
        "an up-to-date GGUF is kept"
    );
    assert!(again.stages.iter().all(|s| s.skipped));
    assert!(again.merges.iter().all(|m| m.skipped));
    assert!(again.variants.iter().all(|v| v.skipped));
    for (a, b) in report.variants.iter().zip(&again.variants) {
        assert_eq!(a.summary, b.summary);
    }

    // A change to the last stage re-runs it, its merge and those two evaluations only.
    let mut changed = config.clone();
    let orpo = changed
        .stages
        .iter_mut()
        .find(|s| s.name == "orpo")
        .unwrap();
    orpo.trainer
        .insert("learning_rate".into(), toml::Value::Float(5e-5));
    let third = run_pipeline(&changed, &options).unwrap();
    let skipped: Vec<(&str, bool)> = third
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.skipped))
        .collect();
    for (name, was_skipped) in skipped {
        assert_eq!(was_skipped, !name.contains("ORPO"), "{name}");
    }
    assert_eq!(
        third.stages.iter().map(|s| s.skipped).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert!(third.variants.iter().any(|v| v.kind == VariantKind::Merged));
}
