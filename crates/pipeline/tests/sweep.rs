//! The sweeps on the smoke scale, end to end on the real SmolLM2-135M-Instruct: two merge
//! recipes on the last stage, a 2-epoch CPT sweep and both protocols; a second run skips every
//! step; a third recipe added runs only its merge and its evaluations.
//!
//! Model: `TEMPER_SMOLLM2_GGUF` (default: the preset's path under the repository root, filled by
//! `scripts/fetch-smollm2.sh`). Data: the repository's `data/bio-materials`.
#![allow(clippy::unwrap_used)]

mod common;

use temper_bench_eval::EvalMode;
use temper_pipeline::config::MergeRecipe;
use temper_pipeline::report::VariantKind;
use temper_pipeline::{PipelineConfig, PipelineOptions, run_pipeline};

fn recipe(label: &str, schedule: &str) -> MergeRecipe {
    MergeRecipe {
        label: label.into(),
        yaml: None,
        schedule: Some(schedule.into()),
        stages: Some(vec!["orpo".into()]),
    }
}

/// The smoke preset with the sweeps: CPT 2 epochs over its first section, schedules
/// A and G on the ORPO result, generation beside log-likelihood on 8 questions.
fn sweep_config() -> PipelineConfig {
    let mut config = common::smoke_config();
    config.benchmark.limit = Some(8);
    config.benchmark.also = vec![EvalMode::Generate];
    config.benchmark.max_new_tokens = 4;
    let cpt = &mut config.stages[0];
    cpt.sweep_epochs = true;
    cpt.limit = Some(1);
    cpt.trainer.remove("max_steps");
    cpt.trainer
        .insert("num_train_epochs".into(), toml::Value::Integer(2));
    config.merge.recipes = vec![recipe("SLERP_A", "A"), recipe("SLERP_G", "G")];
    config
}

#[test]
fn sweeps_run_resume_and_add_a_recipe() {
    let out = tempfile::tempdir().unwrap();
    let options = PipelineOptions {
        out_dir: out.path().to_path_buf(),
        progress: false,
    };
    let config = sweep_config();
    let report = run_pipeline(&config, &options).unwrap();

    let names: Vec<&str> = report.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Instruct",
            "Instruct-CPT@1",
            "Instruct-CPT@1-SLERP",
            "Instruct-CPT",
            "Instruct-CPT-SLERP",
            "Instruct-CPT-SFT",
            "Instruct-CPT-SFT-SLERP",
            "Instruct-CPT-SFT-ORPO",
            "Instruct-CPT-SFT-ORPO-SLERP",
            "Instruct-CPT-SFT-ORPO-SLERP_A",
            "Instruct-CPT-SFT-ORPO-SLERP_G",
        ]
    );
    // One CPT section packed into 64-token blocks, batches of 2: two epochs of equal steps.
    let steps = report.stages[0].steps;
    assert!(steps >= 2 && steps.is_multiple_of(2), "{steps}");
    assert_eq!(report.stages[0].epochs, Some(2));
    let epochs: Vec<Option<usize>> = report.variants[1..5].iter().map(|v| v.epoch).collect();
    assert_eq!(epochs, [Some(1), Some(1), Some(2), Some(2)]);
    let epoch1 = out.path().join("stages/cpt/epochs/epoch-1");
    assert!(epoch1.join("config.json").is_file());
    assert!(
        !std::fs::read_dir(out.path().join("stages/cpt/model"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("checkpoint-")),
        "checkpoints are removed once converted"
    );
    let recipes: Vec<Option<&str>> = report.variants[8..]
        .iter()
        .map(|v| v.recipe.as_deref())
        .collect();
    assert_eq!(recipes, [Some("SLERP"), Some("SLERP_A"), Some("SLERP_G")]);
    // Schedule A is a constant t = 0.5, G the linear ramps: layer 0's attention all
    // instruct, its MLP all fine-tuned.
    let t_of = |merge: &str, tensor: &str| {
        report
            .merges
            .iter()
            .find(|m| m.name == merge)
            .unwrap()
            .per_tensor
            .iter()
            .find(|t| t.name == tensor)
            .unwrap()
            .t
            .unwrap()
    };
    let q0 = "model.layers.0.self_attn.q_proj.weight";
    let mlp0 = "model.layers.0.mlp.down_proj.weight";
    assert_eq!(
        (t_of("orpo-slerp-a", q0), t_of("orpo-slerp-a", mlp0)),
        (0.5, 0.5)
    );
    assert_eq!(
        (t_of("orpo-slerp-g", q0), t_of("orpo-slerp-g", mlp0)),
        (0.0, 1.0)
    );
    assert!(report.merges.iter().any(|m| m.name == "cpt-epoch1-slerp"));
    assert_eq!(report.merges.len(), 6);
    assert_eq!(report.analyses.len(), 6);

    // The generative protocol: every variant again, its own records and analyses.
    assert_eq!(report.protocols.len(), 1);
    let generated = &report.protocols[0];
    assert_eq!(generated.mode, EvalMode::Generate);
    assert_eq!(generated.variants.len(), names.len());
    assert_eq!(generated.analyses.len(), 6);
    for v in &generated.variants {
        assert_eq!(v.summary.overall.n, 8, "{}", v.name);
        assert_eq!(v.vs_instruct.is_none(), v.kind == VariantKind::Parent);
        let records = out
            .path()
            .join("eval-generate")
            .join(v.name.to_lowercase().replace(['@', '_'], "-"))
            .join("records.jsonl");
        assert!(records.is_file(), "{}", records.display());
    }

    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for heading in [
        "## SLERP schedules",
        "## CPT epochs",
        "## Generative protocol",
    ] {
        assert!(md.contains(heading), "report.md lacks {heading}");
    }
    assert!(out.path().join("plots/epochs-cpt.svg").is_file());

    // The same config again: every step skipped.
    let again = run_pipeline(&config, &options).unwrap();
    assert!(again.stages.iter().all(|s| s.skipped));
    assert!(again.merges.iter().all(|m| m.skipped));
    assert!(again.variants.iter().all(|v| v.skipped));
    assert!(again.protocols[0].variants.iter().all(|v| v.skipped));
    let (cached, all) = again.cached_steps();
    assert_eq!(cached, all);

    // A third recipe: only its merge and its two evaluations run.
    let mut more = config.clone();
    more.merge.recipes.push(recipe("SLERP_F", "F"));
    let third = run_pipeline(&more, &options).unwrap();
    let ran = |variants: &[temper_pipeline::report::VariantResult]| -> Vec<String> {
        variants
            .iter()
            .filter(|v| !v.skipped)
            .map(|v| v.name.clone())
            .collect()
    };
    assert_eq!(ran(&third.variants), ["Instruct-CPT-SFT-ORPO-SLERP_F"]);
    assert_eq!(
        ran(&third.protocols[0].variants),
        ["Instruct-CPT-SFT-ORPO-SLERP_F"]
    );
    let merged: Vec<&str> = third
        .merges
        .iter()
        .filter(|m| !m.skipped)
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(merged, ["orpo-slerp-f"]);
    assert!(third.stages.iter().all(|s| s.skipped));
}
