//! The report rendered from a small synthetic run: the intervals in the HTML are those of
//! bench-eval's standard errors, the loss plot places the stages where they start, the
//! metadata is there, and a hostile variant name is escaped everywhere.
//!
//! `DUMP=DIR cargo nextest run -p temper-pipeline -E 'test(html_intervals)'` writes the rendered
//! files into DIR, to look at them in a browser.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use temper_bench_eval::EvalMode;
use temper_bench_eval::results::{Metric, QuestionRecord, merge_analysis, summarize};
use temper_merge::{GroupDelta, ModuleGroup};
use temper_pipeline::plots::{StageCurve, stage_spans};
use temper_pipeline::report::{
    DataFile, MergeResult, MergeRow, PipelineReport, ProtocolResult, StageResult, TensorStat,
    VariantKind, VariantResult, WeightsMoved, ci95, render_report,
};
use temper_pipeline::{PipelineConfig, Preset};

const HOSTILE: &str = "<script>alert(\"x\")</script>&Co";

/// `n` questions, the first `correct` of them right, in two categories.
fn records(n: usize, correct: usize) -> Vec<QuestionRecord> {
    (0..n)
        .map(|i| QuestionRecord {
            id: format!("q{i}"),
            category: Some(if i % 2 == 0 { "even" } else { "odd" }.into()),
            gold: "A".into(),
            prediction: Some("A".into()),
            correct: i < correct,
            correct_norm: None,
            correct_bytes: None,
            unparsed: false,
            output: None,
            logprobs: None,
        })
        .collect()
}

fn variant(name: &str, kind: VariantKind, recs: &[QuestionRecord], skipped: bool) -> VariantResult {
    VariantResult {
        name: name.into(),
        kind,
        model_dir: PathBuf::from(format!("out/{name}")),
        fingerprint: format!("fp-{}", name.len()),
        parents: None,
        seconds: 100.0,
        skipped,
        summary: summarize(recs, Metric::Acc),
        summaries: BTreeMap::new(),
        vs_instruct: None,
        stage: None,
        epoch: None,
        recipe: None,
    }
}

fn stage(name: &str, steps: usize, losses: &[(usize, f64)]) -> StageResult {
    StageResult {
        name: name.into(),
        variant: format!("Instruct-{}", name.to_uppercase()),
        objective: name.into(),
        lora_r: Some(8),
        train_rows: 10,
        skipped: true,
        seconds: 60.0,
        steps,
        epochs: None,
        final_loss: losses.last().map(|l| l.1),
        eval_loss: None,
        losses: losses.to_vec(),
        eval_losses: Vec::new(),
        metrics: BTreeMap::new(),
    }
}

fn synthetic() -> PipelineReport {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let config = PipelineConfig::preset(Preset::Smoke, &root).unwrap();
    let (instruct, trained, merged) = (records(40, 13), records(40, 16), records(40, 15));
    let mut orpo = stage("orpo", 24, &[(24, 1.7)]);
    orpo.metrics
        .insert("rewards/margins".into(), vec![(24, 0.12)]);
    orpo.metrics
        .insert("learning_rate".into(), vec![(24, 5e-6)]);
    let mut merged_variant = variant(HOSTILE, VariantKind::Merged, &merged, false);
    merged_variant.parents = Some(("Instruct-CPT".into(), "Instruct".into()));
    PipelineReport {
        name: "synthetic".into(),
        device: "cpu".into(),
        benchmark: "bench.jsonl".into(),
        questions: 40,
        mode: EvalMode::Loglik,
        metric: Metric::Acc,
        total_seconds: 0.1,
        temper_version: "9.9.9".into(),
        data_files: vec![DataFile {
            role: "benchmark".into(),
            path: "bench.jsonl".into(),
            sha256: "ab".repeat(32),
        }],
        stages: vec![
            stage("cpt", 20, &[(2, 3.6), (20, 3.1)]),
            stage("sft", 60, &[(2, 4.0), (60, 2.0)]),
            orpo,
        ],
        merges: vec![MergeResult::new(
            "cpt-slerp".into(),
            HOSTILE.into(),
            "cpt".into(),
            0.5,
            (0..2)
                .flat_map(|l| {
                    ["q_proj", "mlp.down_proj"].map(|m| TensorStat {
                        name: format!("model.layers.{l}.{m}.weight"),
                        t: Some(0.5),
                        cosine: Some(0.9999),
                        linear_fallback: Some(true),
                    })
                })
                .collect(),
        )],
        variants: vec![
            variant("Instruct", VariantKind::Parent, &instruct, true),
            variant("Instruct-CPT", VariantKind::Trained, &trained, true),
            merged_variant,
        ],
        analyses: vec![MergeRow {
            merged: HOSTILE.into(),
            finetuned: "Instruct-CPT".into(),
            instruct: "Instruct".into(),
            analysis: merge_analysis(&merged, &trained, &instruct, Metric::Acc, 200, 1).unwrap(),
        }],
        protocols: Vec::new(),
        weights: vec![WeightsMoved {
            variant: "Instruct-CPT".into(),
            parent: "Instruct".into(),
            tensors: 4,
            relative_change: 2.5e-3,
            self_attn_change: 1.5e-3,
            mlp_change: 3.25e-3,
            min_cosine: 0.999_97,
            linear_fallbacks: 3,
            groups: (0..2)
                .flat_map(|l| {
                    [ModuleGroup::SelfAttn, ModuleGroup::Mlp].map(|group| GroupDelta {
                        layer: Some(l),
                        group,
                        tensors: 1,
                        relative_change: 1e-3 * (l + 1) as f64,
                        min_cosine: 0.9999,
                        linear_fallbacks: 1,
                    })
                })
                .collect(),
        }],
        config,
    }
}

fn file<'a>(files: &'a [(PathBuf, String)], name: &str) -> &'a str {
    &files
        .iter()
        .find(|(p, _)| p == Path::new(name))
        .unwrap_or_else(|| panic!("{name} not rendered"))
        .1
}

#[test]
fn html_intervals_are_bench_evals_standard_errors_times_1_96() {
    let report = synthetic();
    let files = render_report(&report).unwrap();
    if let Some(dir) = std::env::var_os("DUMP") {
        for (p, t) in &files {
            let p = Path::new(&dir).join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        }
    }
    let html = file(&files, "report.html");
    // 16 of 40: p = 0.4, lm-eval's s.e. sqrt(p(1 − p)/(n − 1)).
    let s = &report.variants[1].summary.overall;
    let se = (0.4f64 * 0.6 / 39.0).sqrt();
    assert!((s.stderr - se).abs() < 1e-12);
    let (lo, hi) = ci95(s);
    assert!((lo - (0.4 - 1.96 * se)).abs() < 1e-12 && (hi - (0.4 + 1.96 * se)).abs() < 1e-12);
    let cell = format!("40.0 [{:.1}, {:.1}]", lo * 100.0, hi * 100.0);
    assert_eq!(cell, "40.0 [24.6, 55.4]");
    assert!(html.contains(&format!("<td>{cell}</td>")), "{cell}");
    // The accuracy plot labels the same interval, and its axis is zoomed: Instruct's interval
    // (13 of 40) starts at 17.8 %, the axis a little below (not at 0).
    let acc = file(&files, "plots/accuracy.svg");
    assert!(acc.contains("40.0%  [24.6, 55.4]"));
    let (instruct_lo, _) = ci95(&report.variants[0].summary.overall);
    assert!((instruct_lo - 0.178).abs() < 1e-3);
    assert!(acc.contains("axis from 14%"), "zoom");
    // Per category: 20 even questions, 8 of them right (ids 0, 2, ..., 14).
    let even = &report.variants[1].summary.per_category["even"];
    assert_eq!((even.correct, even.n), (8, 20));
    let (lo, hi) = ci95(even);
    assert!(html.contains(&format!(
        "<td>40.0 [{:.1}, {:.1}]</td>",
        lo * 100.0,
        hi * 100.0
    )));
    assert!(html.contains("<th>even (n=20)</th>"));
    // The legend tells the three kinds apart.
    for group in ["instruct parent", "trained", "merged with instruct"] {
        assert!(acc.contains(&format!("\n{group}\n</text>")), "{group}");
    }
}

#[test]
fn stages_sit_at_their_steps_and_metrics_get_panels() {
    let report = synthetic();
    let curves: Vec<StageCurve> = report
        .stages
        .iter()
        .map(|s| StageCurve {
            name: s.name.clone(),
            steps: s.steps,
            loss: s.losses.clone(),
            ..StageCurve::default()
        })
        .collect();
    let bounds: Vec<(usize, usize)> = stage_spans(&curves)
        .iter()
        .map(|s| (s.start, s.end))
        .collect();
    assert_eq!(bounds, [(0, 20), (20, 80), (80, 104)]);
    let files = render_report(&report).unwrap();
    let loss = file(&files, "plots/loss.svg");
    for label in ["\nCPT\n</text>", "\nSFT\n</text>", "\nORPO\n</text>"] {
        assert!(loss.contains(label), "{label}");
    }
    // The x axis runs to the end of the last stage.
    assert!(loss.contains("\n100\n</text>"));
    let metrics = file(&files, "plots/train_metrics.svg");
    assert!(
        metrics.contains("\nlearning_rate\n</text>")
            && metrics.contains("\nrewards/margins\n</text>")
    );
    let html = file(&files, "report.html");
    assert_eq!(
        html.matches("<svg").count(),
        6,
        "accuracy, Fig. 7, loss, metrics, heatmap, weights moved"
    );
    assert!(file(&files, "plots/merge_distance.svg").contains("\nq\n</text>"));
}

#[test]
fn metadata_and_both_wall_times() {
    let report = synthetic();
    // 3 stages × 60 s + a 0.5 s merge + 3 evaluations × 100 s.
    assert!((report.compute_seconds() - 480.5).abs() < 1e-9);
    let files = render_report(&report).unwrap();
    for doc in ["report.html", "report.md"] {
        let text = file(&files, doc);
        assert!(text.contains("8m01s"), "{doc}: compute time");
        assert!(text.contains("5 of 7 steps reused"), "{doc}");
        assert!(text.contains("0.1s"), "{doc}: this invocation");
        assert!(text.contains("9.9.9"), "{doc}: version");
        assert!(text.contains(&"ab".repeat(32)), "{doc}: data hash");
        assert!(text.contains("fp-12"), "{doc}: model fingerprint");
        assert!(text.contains("learning_rate"), "{doc}: hyper-parameters");
    }
}

#[test]
fn hyperparameters_one_row_per_parameter_one_column_per_stage() {
    let report = synthetic();
    let table = temper_pipeline::report::tables::hyperparameters(&report);
    let names: Vec<&str> = report
        .config
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(table.header[1..], names);
    let lr = table.rows.iter().find(|r| r[0] == "learning_rate").unwrap();
    for (stage, cell) in report.config.stages.iter().zip(&lr[1..]) {
        assert_eq!(
            *cell,
            stage.trainer["learning_rate"].to_string(),
            "{}",
            stage.name
        );
    }
}

#[test]
fn a_hostile_variant_name_is_escaped() {
    let files = render_report(&synthetic()).unwrap();
    let html = file(&files, "report.html");
    assert!(!html.contains("<script"), "unescaped name in report.html");
    assert!(html.contains("&lt;script&gt;alert("));
    // Plotters escapes the SVG text the page inlines.
    for (path, text) in &files {
        if path.extension().is_some_and(|e| e == "svg") {
            assert!(!text.contains("<script"), "{}", path.display());
        }
    }
    // The JSON round-trips the name as it was.
    let json: PipelineReport = serde_json::from_str(file(&files, "report.json")).unwrap();
    assert_eq!(json.variants[2].name, HOSTILE);
}

#[test]
fn a_report_json_of_an_older_run_still_renders() {
    // The committed study's report.json predates the metadata fields.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/results/smollm2-135m-bio-materials/report.json");
    let text = std::fs::read_to_string(path).unwrap();
    let report: PipelineReport = serde_json::from_str(&text).unwrap();
    let files = render_report(&report).unwrap();
    let html = file(&files, "report.html");
    assert!(html.contains("Instruct-CPT-SFT-ORPO-SLERP"));
    assert!(report.compute_seconds() > 600.0);
    // It had no sweeps: none of their sections.
    let md = file(&files, "report.md");
    for heading in ["SLERP schedules", "epochs", "protocol"] {
        assert!(
            !md.contains(&format!("## {heading}")) && !md.contains(&format!(" {heading}</h2>"))
        );
    }
}

/// A report with the three sweeps: two epochs of CPT (each merged under the main recipe), two
/// recipes on the last model, and the generative protocol. Each gets its section in both
/// documents, with the numbers of the variants and analyses it reads.
#[test]
fn sweep_sections_show_schedules_epochs_and_the_second_protocol() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let config = PipelineConfig::preset(Preset::Paper, &root).unwrap();
    let instruct = records(40, 13);
    let tagged = |name: &str, kind, correct, epoch, recipe: Option<&str>| {
        let mut v = variant(name, kind, &records(40, correct), false);
        v.stage = Some("cpt".into());
        v.epoch = epoch;
        v.recipe = recipe.map(str::to_string);
        if kind == VariantKind::Merged {
            let parent = name.rsplit_once('-').unwrap().0;
            v.parents = Some((parent.into(), "Instruct".into()));
        }
        (v, records(40, correct))
    };
    let made = [
        tagged("Instruct-CPT@1", VariantKind::Trained, 14, Some(1), None),
        tagged(
            "Instruct-CPT@1-SLERP",
            VariantKind::Merged,
            15,
            Some(1),
            Some("SLERP"),
        ),
        tagged("Instruct-CPT", VariantKind::Trained, 16, Some(2), None),
        tagged(
            "Instruct-CPT-SLERP",
            VariantKind::Merged,
            18,
            Some(2),
            Some("SLERP"),
        ),
        tagged(
            "Instruct-CPT-SLERP_G",
            VariantKind::Merged,
            20,
            Some(2),
            Some("SLERP_G"),
        ),
    ];
    let recs: BTreeMap<&str, &Vec<QuestionRecord>> = made
        .iter()
        .map(|(v, r)| (v.name.as_str(), r))
        .chain([("Instruct", &instruct)])
        .collect();
    let mut variants = vec![variant("Instruct", VariantKind::Parent, &instruct, false)];
    variants.extend(made.iter().map(|(v, _)| v.clone()));
    let analyses: Vec<MergeRow> = variants
        .iter()
        .filter_map(|v| {
            let (a, b) = v.parents.clone()?;
            let analysis = merge_analysis(
                recs[v.name.as_str()],
                recs[a.as_str()],
                recs[b.as_str()],
                Metric::Acc,
                200,
                1,
            )
            .unwrap();
            Some(MergeRow {
                merged: v.name.clone(),
                finetuned: a,
                instruct: b,
                analysis,
            })
        })
        .collect();
    let mut cpt = stage("cpt", 8, &[(2, 3.0), (8, 2.5)]);
    cpt.epochs = Some(2);
    let mut report = synthetic();
    report.config = config;
    report.stages = vec![cpt];
    report.merges = Vec::new();
    report.variants = variants.clone();
    report.analyses = analyses.clone();
    report.protocols = vec![ProtocolResult {
        mode: EvalMode::Generate,
        metric: Metric::Acc,
        variants,
        analyses,
    }];
    let files = render_report(&report).unwrap();
    let md = file(&files, "report.md");
    let html = file(&files, "report.html");
    for heading in ["SLERP schedules", "CPT epochs", "Generative protocol"] {
        assert!(md.contains(&format!("## {heading}")), "{heading}");
        assert!(html.contains(&format!("{heading}</h2>")), "{heading}");
    }
    // The schedule table: the two recipes of Instruct-CPT with their t as given (the main one
    // recognised as the paper's published schedule, G as the inferred ramp), 45 % ± s.e.
    let se = |k: f64| (k / 40.0 * (1.0 - k / 40.0) / 39.0).sqrt() * 100.0;
    assert!(md.contains(&format!(
        "| Instruct-CPT | SLERP_G | G (inferred) | [0, 0.3, 0.5, 0.7, 1] | [1, 0.7, 0.5, 0.3, 0] | 50.0 ± {:.1} | +10.0 |",
        se(20.0)
    )), "{md}");
    assert!(md.contains("| Instruct-CPT | SLERP | paper (published) | [0, 0.5, 0.3, 0.7, 1] |"));
    // The epoch table: each epoch's trained and merged accuracy, the merge's gain over it.
    assert!(
        md.contains(&format!(
            "| 1 | Instruct-CPT@1 | 35.0 ± {:.1} | 37.5 ± {:.1} | +2.5 |",
            se(14.0),
            se(15.0)
        )),
        "{md}"
    );
    assert!(md.contains("| 2 | Instruct-CPT | 40.0 ± "));
    let svg = file(&files, "plots/epochs-cpt.svg");
    assert_eq!(
        svg.matches("<circle").count(),
        4 + 2,
        "4 points and 2 legend markers"
    );
    // … inline in the HTML under its section, with its caption.
    let section = &html[html.find("CPT epochs</h2>").unwrap()..];
    let section = &section[..section.find("</table>").unwrap()];
    assert_eq!(section.matches("<svg").count(), 1);
    assert!(section.contains("after each CPT epoch, trained and merged"));
    // The second protocol's table: acc ± s.e., interval, paired test against Instruct.
    assert!(md.contains(&format!(
        "| Instruct-CPT-SLERP_G | merged | 50.0 ± {:.1} |",
        se(20.0)
    )));

    // A rendered report.json reads back with the sweeps.
    let back: PipelineReport = serde_json::from_str(file(&files, "report.json")).unwrap();
    assert_eq!(back.protocols.len(), 1);
    assert_eq!(back.variants[1].epoch, Some(1));
    assert_eq!(back.variants[5].recipe.as_deref(), Some("SLERP_G"));
}

#[test]
fn weight_movement_sits_next_to_its_merges_synergy() {
    let files = render_report(&synthetic()).unwrap();
    let md = file(&files, "report.md");
    let section = md
        .split("## How far the fine-tunes moved")
        .nth(1)
        .expect("a weights section");
    // The fine-tune's movement and, on the same row, its merge's verdict.
    let row = section
        .lines()
        .find(|l| l.starts_with("| Instruct-CPT |"))
        .expect("a row for the fine-tune");
    assert!(row.contains("2.50e-3") && row.contains("3/4"), "{row}");
    assert!(row.contains("| no |") || row.contains("| yes |"), "{row}");
    assert!(file(&files, "plots/weights_moved.svg").contains("Instruct-CPT"));
    assert!(file(&files, "report.html").contains("How far the fine-tunes moved"));
}
