//! Parquet splits (`tests/fixtures/parquet/`, written by `datasets` / pyarrow with
//! `make_parquet.py`): the same documents as the JSON lines they came from, the JSON that
//! `datasets` itself gives for every column type, and clear errors for broken files.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use temper_bench_eval::task::TaskConfig;
use temper_bench_eval::task::dataset::{Doc, load_split};
use temper_bench_eval::task::parquet::read_parquet;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet")
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/bio-materials/tasks")
        .join(name)
}

fn jsonl(path: &Path) -> Vec<Doc> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Map<String, Value>>(l).unwrap())
        .collect()
}

/// A task YAML in `dir` reading `dataset` (a folder or `parquet` with `data_files`).
fn task(dir: &Path, name: &str, dataset: &str) -> TaskConfig {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "task: {name}\n{dataset}\ntest_split: test\noutput_type: multiple_choice\n\
             doc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: [a, b]\n"
        ),
    )
    .unwrap();
    TaskConfig::load(&path).unwrap()
}

#[test]
fn bio_arc_as_a_hub_dataset_folder_gives_the_json_documents() {
    // `dataset_path` names the folder; its split is data/test-00000-of-00001.parquet.
    let dir = tempfile::tempdir().unwrap();
    let folder = fixtures().join("arc");
    let config = task(
        dir.path(),
        "arc_folder",
        &format!("dataset_path: {}", folder.display()),
    );
    let from_parquet = load_split(&config, "test").unwrap();
    let from_json = jsonl(&shipped("arc.jsonl"));
    assert_eq!(from_parquet.len(), from_json.len());
    assert_eq!(from_parquet, from_json);
    // The struct column is an object of lists, as ARC's template reads it.
    assert!(from_parquet[0]["choices"]["label"].is_array());
}

#[test]
fn list_int_and_bool_columns_match_json_zstd_included() {
    let dir = tempfile::tempdir().unwrap();
    let mmlu = fixtures().join("mmlu_test.zstd.parquet");
    let boolq = fixtures().join("boolq.parquet");
    let config = task(
        dir.path(),
        "mmlu_pq",
        &format!(
            "dataset_path: parquet\ndataset_kwargs:\n  data_files:\n    test: {}",
            mmlu.display()
        ),
    );
    assert_eq!(
        load_split(&config, "test").unwrap(),
        jsonl(&shipped("mmlu_test.jsonl"))
    );
    assert_eq!(
        read_parquet(&boolq).unwrap(),
        jsonl(&shipped("boolq.jsonl"))
    );
}

#[test]
fn every_column_type_maps_to_what_datasets_gives() {
    // types.expected.jsonl is `datasets.load_dataset("parquet")` of the same file, dumped
    // by Python's json: floats widened from float32 / float16, 64-bit ints, nulls, lists of
    // structs and lists of lists, over two row groups.
    let got = read_parquet(&fixtures().join("types.parquet")).unwrap();
    let want = jsonl(&fixtures().join("types.expected.jsonl"));
    assert_eq!(got, want);
    assert_eq!(got[0]["f32"], serde_json::json!(0.10000000149011612));
}

#[test]
fn a_truncated_or_corrupt_parquet_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures().join("boolq.parquet")).unwrap();
    // Cut at several places: the footer gone, half the file gone, only the magic left.
    for (i, keep) in [bytes.len() - 1, bytes.len() / 2, 4, 0]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join(format!("cut{i}.parquet"));
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = read_parquet(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("cut{i}.parquet")) && err.contains("Parquet"),
            "{err}"
        );
    }
    // Footer intact, column pages overwritten: decoding fails with an error, not a panic.
    let mut bad = bytes.clone();
    for b in &mut bad[8..bytes.len() / 2] {
        *b = 0xA5;
    }
    let path = dir.path().join("scrambled.parquet");
    std::fs::write(&path, &bad).unwrap();
    let err = read_parquet(&path).unwrap_err().to_string();
    assert!(err.contains("scrambled.parquet"), "{err}");
    // Over the 1 GiB cap (a sparse file: nothing is written): refused before it is read.
    let path = dir.path().join("huge.parquet");
    std::fs::File::create(&path)
        .unwrap()
        .set_len((1 << 30) + 1)
        .unwrap();
    let err = read_parquet(&path).unwrap_err().to_string();
    assert!(
        err.contains("huge.parquet") && err.contains("1 GiB"),
        "{err}"
    );
    // JSON text under a .parquet name.
    let path = dir.path().join("text.parquet");
    std::fs::write(&path, "{\"a\": 1}\n").unwrap();
    let err = read_parquet(&path).unwrap_err().to_string();
    assert!(err.contains("text.parquet"), "{err}");
}

#[test]
fn a_missing_split_in_a_dataset_folder_names_the_layouts_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ds/data")).unwrap();
    // Two shards of one split are read in name order.
    let shard = std::fs::read(fixtures().join("boolq.parquet")).unwrap();
    std::fs::write(
        dir.path().join("ds/data/test-00001-of-00002.parquet"),
        &shard,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ds/data/test-00000-of-00002.parquet"),
        &shard,
    )
    .unwrap();
    let config = task(dir.path(), "t", "dataset_path: ds");
    let docs = load_split(&config, "test").unwrap();
    assert_eq!(docs.len(), 2 * 206);
    let err = load_split(&config, "validation").unwrap_err().to_string();
    assert!(
        err.contains("validation-*.parquet") && err.contains("t.yaml"),
        "{err}"
    );
}
