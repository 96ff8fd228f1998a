//! The config's tests (a `#[cfg(test)]` module of `config/mod.rs`): presets, sweeps, ranges
//! and errors that name their key.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::fingerprint::{Fingerprint, file_sha256};
use temper_backend::FloatPrecision;

#[test]
fn presets_parse_and_chain_the_paper_stages() {
    for preset in [Preset::Default, Preset::Smoke, Preset::Paper] {
        let c = PipelineConfig::preset(preset, Path::new("/repo")).unwrap();
        let names: Vec<_> = c.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["cpt", "sft", "orpo"]);
        let objectives: Vec<_> = c.stages.iter().map(StageSpec::objective).collect();
        assert_eq!(objectives, ["cpt", "sft", "orpo"]);
        assert!(c.instruct.starts_with("/repo"));
        assert!(c.merge.enabled);
    }
}

/// The paper preset: full fine-tuning in whole epochs, the CPT epochs swept, A–G on the
/// last stage only, both protocols (log-likelihood first).
#[test]
fn the_paper_preset_sweeps_what_the_paper_did() {
    let c = PipelineConfig::preset(Preset::Paper, Path::new("/repo")).unwrap();
    assert_eq!(c.precision, "bf16-mixed");
    for s in &c.stages {
        assert!(s.lora.is_none(), "{}", s.name);
        assert!(!s.trainer.contains_key("max_steps"), "{}", s.name);
        assert_eq!(s.trainer["lr_scheduler_type"].as_str(), Some("cosine"));
    }
    let epochs: Vec<_> = c.stages.iter().map(|s| s.swept_epochs().unwrap()).collect();
    assert_eq!(epochs, [Some(3), None, None]);
    let labels = |stage: usize| -> Vec<String> {
        c.merge
            .recipes_for(&c.stages[stage])
            .unwrap()
            .into_iter()
            .map(|r| r.label)
            .collect()
    };
    assert_eq!(labels(0), ["SLERP"]);
    assert_eq!(labels(1), ["SLERP"]);
    assert_eq!(
        labels(2),
        [
            "SLERP", "SLERP_A", "SLERP_B", "SLERP_C", "SLERP_D", "SLERP_E", "SLERP_F", "SLERP_G"
        ]
    );
    assert_eq!(
        c.benchmark.protocols(),
        [EvalMode::Loglik, EvalMode::Generate]
    );
    assert_eq!(c.benchmark.metric_for(EvalMode::Generate), Metric::Acc);
}

#[test]
fn sweeps_are_checked_and_name_the_key() {
    let base = "name = \"x\"\ninstruct = \"m\"\n[benchmark]\nfile = \"b.jsonl\"\n";
    let stage = |extra: &str, trainer: &str| {
        format!(
            "[[stage]]\nname = \"cpt\"\ndata = \"d\"\n{extra}\n[stage.trainer]\n{trainer}\n\
             [stage.trainer.objective]\ntype = \"cpt\"\n"
        )
    };
    let parse = |text: &str| PipelineConfig::from_toml_str(text, "p.toml", Path::new("."));
    let err = |text: &str| parse(text).unwrap_err().to_string();
    let plain = stage("", "max_steps = 1");
    let recipe = |body: &str| format!("[[merge.recipe]]\n{body}\n");

    // A recipe by schedule or YAML; labels and stages checked.
    let c = parse(&format!(
        "{base}{}{plain}",
        recipe("label = \"SLERP_G\"\nschedule = \"g\"")
    ))
    .unwrap();
    let recipes = c.merge.recipes_for(&c.stages[0]).unwrap();
    assert_eq!(recipes.len(), 2);
    assert_eq!(
        recipes[1].yaml,
        crate::schedules::schedule("G").unwrap().yaml()
    );
    for (body, expected) in [
        ("label = \"X\"", "give exactly one of `yaml` and `schedule`"),
        ("label = \"X\"\nschedule = \"Q\"", "unknown `schedule` `Q`"),
        (
            "label = \"slerp\"\nschedule = \"A\"",
            "collides with `SLERP`",
        ),
        ("label = \"a b\"\nschedule = \"A\"", "label `a b`"),
        (
            "label = \"X\"\nschedule = \"A\"\nstages = [\"dpo\"]",
            "no stage named `dpo`",
        ),
        (
            "label = \"X\"\nyaml = \"merge_method: slerp\"",
            "{finetuned}",
        ),
    ] {
        let e = err(&format!("{base}{}{plain}", recipe(body)));
        assert!(e.contains(expected), "{body}: {e}");
    }
    // A recipe limited to another stage does not merge this one.
    let c = parse(&format!(
        "{base}{}{plain}{}",
        recipe("label = \"G\"\nschedule = \"G\"\nstages = [\"sft\"]"),
        stage("", "max_steps = 1").replace("\"cpt\"\ndata", "\"sft\"\ndata")
    ))
    .unwrap();
    assert_eq!(c.merge.recipes_for(&c.stages[0]).unwrap().len(), 1);
    assert_eq!(c.merge.recipes_for(&c.stages[1]).unwrap().len(), 2);

    // The epoch sweep: whole epochs, no step-based keys; it sets the save strategy.
    let c = parse(&format!(
        "{base}{}",
        stage("sweep_epochs = true", "num_train_epochs = 2")
    ))
    .unwrap();
    assert_eq!(c.stages[0].swept_epochs().unwrap(), Some(2));
    let sc = c.stages[0]
        .stage_config(Path::new("m"), Path::new("d"), Path::new("o"), "cpu", "f32")
        .unwrap();
    assert_eq!(sc.trainer.save_strategy, temper_train::SaveStrategy::Epoch);
    for (trainer, expected) in [
        ("max_steps = 4", "remove `trainer.max_steps`"),
        ("save_steps = 4", "remove `trainer.save_steps`"),
        ("num_train_epochs = 2.5", "whole `trainer.num_train_epochs`"),
        ("num_train_epochs = 1", "got 1"),
    ] {
        let e = err(&format!("{base}{}", stage("sweep_epochs = true", trainer)));
        assert!(
            e.contains("stage `cpt`") && e.contains(expected),
            "{trainer}: {e}"
        );
    }

    // Protocols: `also` must not repeat one.
    let e = err(&format!(
        "{}{plain}",
        base.replace("b.jsonl\"\n", "b.jsonl\"\nalso = [\"loglik\"]\n")
    ));
    assert!(e.contains("repeats the protocol `loglik`"), "{e}");
}

#[test]
fn dtype_defaults_to_f32_parses_and_keys_the_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.jsonl"), "{}\n").unwrap();
    let stage = "[[stage]]\nname = \"cpt\"\ndata = \"d\"\n[stage.trainer]\nmax_steps = 1\n[stage.trainer.objective]\ntype = \"cpt\"\n";
    let parse = |dtype: &str| {
        let text = format!(
            "name = \"x\"\ninstruct = \"m\"\n[benchmark]\nfile = \"b.jsonl\"\n{dtype}\n{stage}"
        );
        PipelineConfig::from_toml_str(&text, "p.toml", dir.path())
    };
    let default = parse("").unwrap().benchmark;
    assert_eq!(default.dtype, FloatPrecision::F32);
    let bf16 = parse("dtype = \"bf16\"").unwrap().benchmark;
    assert_eq!(bf16.dtype, FloatPrecision::BF16);
    assert_eq!(
        parse("dtype = \"float16\"").unwrap().benchmark.dtype,
        FloatPrecision::F16
    );
    let e = parse("dtype = \"f8\"").unwrap_err().to_string();
    assert!(
        e.contains("p.toml") && e.contains("invalid dtype `f8`"),
        "{e}"
    );

    // f32 keeps the fingerprint the evaluations had before the key existed; bf16 and f16
    // each re-evaluate.
    let before = Fingerprint::new("bench")
        .str("file", &file_sha256(&default.file).unwrap())
        .json("settings", &default.eval_settings())
        .json("limit", &default.limit)
        .finish();
    let f32 = default.records_fingerprint().unwrap();
    assert_eq!(f32, before);
    let bf16 = bf16.records_fingerprint().unwrap();
    let mut f16 = default.clone();
    f16.dtype = FloatPrecision::F16;
    let f16 = f16.records_fingerprint().unwrap();
    assert!(f32 != bf16 && f32 != f16 && bf16 != f16);

    // The dtype is written back under its name (report.json holds the config).
    let json = serde_json::to_value(&default).unwrap();
    assert_eq!(json["dtype"], "f32");
}

#[test]
fn bad_configs_name_the_problem() {
    let base = "name = \"x\"\ninstruct = \"m\"\n[benchmark]\nfile = \"b.jsonl\"\n";
    let err = |text: &str| {
        PipelineConfig::from_toml_str(text, "p.toml", Path::new("."))
            .unwrap_err()
            .to_string()
    };
    assert!(err(base).contains("no `[[stage]]`"));
    let stage = "[[stage]]\nname = \"cpt\"\ndata = \"d\"\n[stage.trainer]\nmax_steps = 1\n[stage.trainer.objective]\ntype = \"cpt\"\n";
    let e = err(&format!("{base}{stage}{stage}"));
    assert!(e.contains("two stages are named `cpt`"), "{e}");
    let e = err(&format!("export_gguf = \"q5_k\"\n{base}{stage}"));
    assert!(
        e.contains("export_gguf: unknown GGUF export dtype `q5_k`"),
        "{e}"
    );
    let e = err(&format!(
        "{base}[[stage]]\nname = \"a\"\ndata = \"d\"\n[stage.trainer]\nmax_stepz = 1\n"
    ));
    assert!(e.contains("stage `a`") && e.contains("max_stepz"), "{e}");
    let e = err(&format!("{base}bogus = 1\n{stage}"));
    assert!(e.contains("bogus"), "{e}");
    let e = err(&format!(
        "{base}[[stage]]\nname = \"a\"\ndata = \"d\"\n[stage.trainer]\noutput_dir = \"x\"\n"
    ));
    assert!(e.contains("output_dir"), "{e}");
    let e = err(&format!(
        "{base}[merge]\nyaml = \"merge_method: slerp\"\n{stage}"
    ));
    assert!(e.contains("{finetuned}"), "{e}");
}

#[test]
fn out_of_range_numbers_name_the_key_and_range() {
    let base = "name = \"x\"\ninstruct = \"m\"\n";
    let stage = |trainer: &str| {
        format!(
            "[[stage]]\nname = \"cpt\"\ndata = \"d\"\n[stage.trainer]\n{trainer}\n\
             [stage.trainer.objective]\ntype = \"cpt\"\n"
        )
    };
    let err = |bench: &str, trainer: &str| {
        let text = format!(
            "{base}[benchmark]\nfile = \"b.jsonl\"\n{bench}\n{}",
            stage(trainer)
        );
        PipelineConfig::from_toml_str(&text, "p.toml", Path::new("."))
            .unwrap_err()
            .to_string()
    };
    for key in [
        "batch_size",
        "limit",
        "max_new_tokens",
        "bootstrap_resamples",
    ] {
        let e = err(&format!("{key} = 0"), "max_steps = 1");
        assert!(
            e.contains("p.toml")
                && e.contains(&format!("`benchmark.{key}` 0"))
                && e.contains("≥ 1"),
            "{key}: {e}"
        );
    }
    for (trainer, expected) in [
        (
            "num_train_epochs = 1e300",
            "num_train_epochs 1e300 is out of range",
        ),
        ("learning_rate = nan", "learning_rate NaN is out of range"),
        (
            "learning_rate = -1e-4",
            "learning_rate -0.0001 is out of range",
        ),
        (
            "warmup_ratio = 1.5\nmax_steps = 1",
            "warmup_ratio 1.5 is out of range (must be in [0, 1])",
        ),
        (
            "batch_size = 0\nmax_steps = 1",
            "batch_size 0 is out of range (must be ≥ 1)",
        ),
        (
            "max_steps = 9223372036854775807",
            "max_steps 9223372036854775807 is out of range",
        ),
    ] {
        let e = err("", trainer);
        assert!(
            e.contains("stage `cpt`") && e.contains(expected),
            "{trainer}: {e}"
        );
    }
}

/// `packing` reaches temper-train's stage (TRL's keys, refused where rows cannot be packed),
/// and a stage without it keeps the fingerprint runs made before the key existed.
#[test]
fn packing_passes_to_the_trainer_and_is_checked_there() {
    let base = "name = \"x\"\ninstruct = \"m\"\n[benchmark]\nfile = \"b.jsonl\"\n";
    let stage = |objective: &str, extra: &str| {
        format!(
            "[[stage]]\nname = \"s\"\ndata = \"d\"\n{extra}[stage.trainer]\nmax_length = 64\n\
             [stage.trainer.objective]\ntype = \"{objective}\"\n"
        )
    };
    let parse = |text: &str| PipelineConfig::from_toml_str(text, "p.toml", Path::new("."));
    let c = parse(&format!(
        "{base}{}",
        stage("sft", "packing = true\npacking_strategy = \"wrapped\"\n")
    ))
    .unwrap();
    let built = c.stages[0]
        .stage_config(Path::new("m"), Path::new("d"), Path::new("o"), "cpu", "f32")
        .unwrap();
    assert!(built.packing);
    assert_eq!(
        built.sft_packing(),
        Some(temper_objectives::data::PackingStrategy::Wrapped)
    );
    let e = parse(&format!("{base}{}", stage("orpo", "packing = true\n")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("stage `s`") && e.contains("packing"), "{e}");
    let plain = parse(&format!("{base}{}", stage("sft", ""))).unwrap();
    let json = serde_json::to_value(&plain.stages[0]).unwrap();
    assert!(json.get("packing").is_none() && json.get("packing_strategy").is_none());
}

/// `instruct` as a hub id stays a hub id (resolved from the HF cache when the run starts);
/// a relative path, or a hub-id-shaped folder next to the config, is joined to the folder.
#[test]
fn an_instruct_hub_id_is_not_taken_for_a_relative_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = |instruct: &str| {
        format!(
            "name = \"x\"\ninstruct = \"{instruct}\"\n[benchmark]\nfile = \"b.jsonl\"\n\
             [[stage]]\nname = \"s\"\ndata = \"d\"\n[stage.trainer]\nmax_steps = 1\n\
             [stage.trainer.objective]\ntype = \"cpt\"\n"
        )
    };
    let parse = |instruct: &str| {
        PipelineConfig::from_toml_str(&text(instruct), "p.toml", dir.path())
            .unwrap()
            .instruct
    };
    let id = "HuggingFaceTB/SmolLM2-135M-Instruct";
    assert_eq!(parse(id), Path::new(id));
    assert_eq!(parse("models/m.gguf"), dir.path().join("models/m.gguf"));
    std::fs::create_dir_all(dir.path().join(id)).unwrap();
    assert_eq!(parse(id), dir.path().join(id));
}
