//! Task names under `--include-path`, group YAMLs and tags (lm-eval 0.4.13's index and group
//! semantics), and the group aggregate on numbers worked by hand.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use temper_bench_eval::task::group::{
    AggMetric, GroupSpec, Member, TaskScores, aggregate_group, aggregate_subtask_metrics,
    pooled_sample_stderr, unweighted_mean_stderr,
};
use temper_bench_eval::task::registry::TaskIndex;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-15
}

#[test]
fn aggregation_matches_lm_evals_formulas_by_hand() {
    // Two tasks: acc 0.5 on 2 documents (stderr 0.5), 0.8 on 8 (stderr 0.1).
    let (values, sizes, stderrs) = ([0.5, 0.8], [2, 8], [0.5, 0.1]);
    // Weighted by size: (0.5·2 + 0.8·8) / 10.
    assert!(close(
        aggregate_subtask_metrics(&values, &sizes, true),
        0.74
    ));
    assert!(close(
        aggregate_subtask_metrics(&values, &sizes, false),
        0.65
    ));
    // Pooled: sqrt(((2−1)·2·0.25 + (8−1)·8·0.01) / (10 − 2) / 10) = sqrt(0.01325).
    let pooled = pooled_sample_stderr(&stderrs, &sizes);
    assert!(close(pooled, 0.01325f64.sqrt()), "{pooled}");
    // lm-eval 0.4.13's own pooled_sample_stderr gives 0.11510864433221339 for these.
    assert!(close(pooled, 0.115_108_644_332_213_39));
    // Unweighted: sqrt(0.25 + 0.01) / 2.
    assert!(close(
        unweighted_mean_stderr(&stderrs),
        0.26f64.sqrt() / 2.0
    ));
    // One document per task leaves no degrees of freedom: undefined, reported "N/A".
    assert!(pooled_sample_stderr(&[0.0, 0.0], &[1, 1]).is_nan());
}

#[test]
fn a_groups_results_entry_pools_its_leaf_tasks() {
    let group = GroupSpec {
        path: PathBuf::from("g.yaml"),
        name: "g".into(),
        alias: Some("G".into()),
        aggregate: vec![
            AggMetric {
                metric: "acc".into(),
                weight_by_size: true,
                filters: None,
            },
            AggMetric {
                metric: "acc_norm".into(),
                weight_by_size: false,
                filters: None,
            },
            AggMetric {
                metric: "word_perplexity".into(),
                weight_by_size: true,
                filters: None,
            },
            // Only the `strict` filter, though both tasks report two.
            AggMetric {
                metric: "exact_match".into(),
                weight_by_size: true,
                filters: Some(vec!["strict".into()]),
            },
        ],
        members: vec![Member::Task("a".into()), Member::Task("b".into())],
        version: None,
    };
    let mut scores = BTreeMap::new();
    scores.insert(
        "a".to_string(),
        TaskScores {
            metrics: vec![
                ("acc".into(), 0.5, 0.5),
                ("acc_norm".into(), 1.0, 0.0),
                ("word_perplexity".into(), 10.0, f64::NAN),
                ("exact_match,strict".into(), 1.0, 0.0),
                ("exact_match,flexible".into(), 1.0, 0.0),
            ],
            size: 2,
        },
    );
    scores.insert(
        "b".to_string(),
        TaskScores {
            metrics: vec![
                ("acc".into(), 0.8, 0.1),
                ("acc_norm".into(), 0.5, 0.2),
                ("exact_match,strict".into(), 0.5, 0.1),
                ("exact_match,flexible".into(), 0.0, 0.0),
            ],
            size: 8,
        },
    );
    let leaves = ["a".to_string(), "b".to_string()];
    let entry = aggregate_group(&group, &leaves, &scores);
    assert_eq!(entry["alias"], "G");
    assert_eq!(entry["name"], "g");
    assert_eq!(entry["sample_len"], 10);
    assert!(close(entry["acc,none"].as_f64().unwrap(), 0.74));
    assert!(close(
        entry["acc_stderr,none"].as_f64().unwrap(),
        0.01325f64.sqrt()
    ));
    assert!(close(entry["acc_norm,none"].as_f64().unwrap(), 0.75));
    assert!(close(
        entry["acc_norm_stderr,none"].as_f64().unwrap(),
        0.04f64.sqrt() / 2.0
    ));
    // Only `a` has a perplexity: its value alone, and no stderr ("N/A", as lm-eval).
    assert_eq!(entry["word_perplexity,none"], 10.0);
    assert_eq!(entry["word_perplexity_stderr,none"], "N/A");
    // exact_match under its filter: (1·2 + 0.5·8) / 10; the unlisted filter left out.
    assert!(close(entry["exact_match,strict"].as_f64().unwrap(), 0.6));
    assert!(entry.get("exact_match,flexible").is_none());
    assert_eq!(
        entry["sample_count"],
        json!({"acc,none": 10, "acc_norm,none": 10, "word_perplexity,none": 2,
               "exact_match,strict": 10})
    );
    // Without a filter_list every filter found is aggregated (lm-eval's auto-discovery).
    let mut auto = group.clone();
    auto.aggregate = vec![AggMetric {
        metric: "exact_match".into(),
        weight_by_size: false,
        filters: None,
    }];
    let entry = aggregate_group(&auto, &leaves, &scores);
    assert!(close(entry["exact_match,strict"].as_f64().unwrap(), 0.75));
    assert!(close(entry["exact_match,flexible"].as_f64().unwrap(), 0.5));
}

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// An include path: two bio tasks tagged `bio`, a group over them (one member overriding a
/// key, one inline task), a nested group, and files that are not tasks.
fn include_path() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/bio-materials/tasks");
    let task = |name: &str, file: &str, extra: &str| {
        format!(
            "task: {name}\ntag: [bio]\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    \
             test: {}\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: \
             \"{{{{question}}}}\"\ndoc_to_target: answer\ndoc_to_choice: \"{{{{choices}}}}\"\n{extra}",
            data.join(file).display()
        )
    };
    write(
        dir.path(),
        "a/bio_mmlu_x.yaml",
        &task("bio_mmlu_x", "mmlu_test.jsonl", ""),
    );
    write(
        dir.path(),
        "b/deeper/bio_mmlu_y.yaml",
        &task("bio_mmlu_y", "mmlu_dev.jsonl", "num_fewshot: 1\n"),
    );
    write(
        dir.path(),
        "groups/bio_all.yaml",
        "group: bio_all\ngroup_alias: All bio\nnum_fewshot: 2\ntask:\n  - bio_mmlu_x\n  \
         - task: bio_mmlu_y\n    num_fewshot: 0\n  - group: bio_inner\n    task: [bio_mmlu_x]\n    \
         aggregate_metric_list:\n      - metric: acc\naggregate_metric_list:\n  - metric: acc\n    \
         aggregation: mean\n    weight_by_size: true\nmetadata:\n  version: 2.0\n",
    );
    // Not tasks: skipped as lm-eval skips them.
    write(dir.path(), "notes.yaml", "just: a note\n");
    write(dir.path(), "broken.yaml", "task: [unclosed\n");
    write(dir.path(), "__pycache__/hidden.yaml", "task: hidden\n");
    dir
}

#[test]
fn names_under_an_include_path_resolve_to_tasks_groups_and_tags() {
    let dir = include_path();
    let index = TaskIndex::build(&[dir.path().to_path_buf()]).unwrap();
    let names: Vec<&str> = index.names().collect();
    assert_eq!(names, ["bio", "bio_all", "bio_mmlu_x", "bio_mmlu_y"]);
    assert_eq!(index.skipped.len(), 2, "{:?}", index.skipped);

    // A task by name: its YAML, nothing else.
    let sel = index.resolve(&["bio_mmlu_y".into()]).unwrap();
    assert_eq!(sel.tasks.len(), 1);
    assert_eq!(sel.tasks[0].num_fewshot, 1);
    assert!(sel.groups.is_empty());

    // A tag: its tasks in name order, no aggregate.
    let sel = index.resolve(&["bio".into()]).unwrap();
    let tasks: Vec<&str> = sel.tasks.iter().map(|t| t.task.as_str()).collect();
    assert_eq!(tasks, ["bio_mmlu_x", "bio_mmlu_y"]);
    assert!(sel.groups.is_empty());

    // The group: the group's num_fewshot on its tasks, a member's own override over it.
    let sel = index.resolve(&["bio_all".into()]).unwrap();
    let shots: Vec<(&str, usize)> = sel
        .tasks
        .iter()
        .map(|t| (t.task.as_str(), t.num_fewshot))
        .collect();
    assert_eq!(shots, [("bio_mmlu_x", 2), ("bio_mmlu_y", 0)]);
    let names: Vec<&str> = sel.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["bio_all", "bio_all::bio_inner"]);
    let outer = &sel.groups[0];
    assert_eq!(outer.alias.as_deref(), Some("All bio"));
    assert_eq!(
        outer.members,
        [
            Member::Task("bio_mmlu_x".into()),
            Member::Task("bio_mmlu_y".into()),
            Member::Group("bio_all::bio_inner".into()),
        ]
    );
    // Leaves flatten the nested group (lm-eval's get_all_tasks).
    assert_eq!(
        sel.leaves(outer),
        ["bio_mmlu_x", "bio_mmlu_y", "bio_mmlu_x"]
    );
    assert_eq!(outer.version, Some(json!(2.0)));

    // The same group by file needs no include path: its folder's names are used... here the
    // members live elsewhere, so the file's own folder does not know them.
    let file = dir.path().join("groups/bio_all.yaml");
    let err = TaskIndex::default()
        .resolve(&[file.display().to_string()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bio_mmlu_x"), "{err}");
    // With the include path it resolves as by name.
    let sel = index.resolve(&[file.display().to_string()]).unwrap();
    assert_eq!(sel.groups.len(), 2);
}

#[test]
fn an_unknown_name_lists_close_matches_and_what_was_searched() {
    let dir = include_path();
    let index = TaskIndex::build(&[dir.path().to_path_buf()]).unwrap();
    let err = index
        .resolve(&["bio_mmlu_z".into()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown task, group or tag `bio_mmlu_z`"),
        "{err}"
    );
    assert!(
        err.contains("close matches: bio_mmlu_x, bio_mmlu_y"),
        "{err}"
    );
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    // Nothing close: no suggestions, the skipped files are mentioned.
    let err = index.resolve(&["zzzzzzzz".into()]).unwrap_err().to_string();
    assert!(!err.contains("close matches"), "{err}");
    assert!(err.contains("2 YAML files"), "{err}");
    // An include path that is not a folder is named.
    let err = TaskIndex::build(&[dir.path().join("nope")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("not a folder"),
        "{err}"
    );
}

#[test]
fn a_later_include_path_overrides_and_a_group_cycle_is_an_error() {
    let first = include_path();
    let second = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(first.path().join("b/deeper/bio_mmlu_y.yaml")).unwrap();
    write(
        second.path(),
        "y.yaml",
        &text.replace("num_fewshot: 1", "num_fewshot: 3"),
    );
    write(second.path(), "loop.yaml", "group: loop\ntask: [loop2]\n");
    write(second.path(), "loop2.yaml", "group: loop2\ntask: [loop]\n");
    let index =
        TaskIndex::build(&[first.path().to_path_buf(), second.path().to_path_buf()]).unwrap();
    let sel = index.resolve(&["bio_mmlu_y".into()]).unwrap();
    assert_eq!(sel.tasks[0].num_fewshot, 3);
    // loop → loop2 → loop: an error naming the group, not endless recursion.
    let err = index.resolve(&["loop".into()]).unwrap_err().to_string();
    assert!(err.contains("group `loop` contains itself"), "{err}");
}
