//! A task's documents from local files, as `datasets.load_dataset` reads them for lm-eval:
//! `dataset_path: json` (JSON lines, or one JSON array) or `csv` with
//! `dataset_kwargs.data_files`, or `dataset_path` naming a local folder holding
//! `{split}.jsonl` / `{split}.json` / `{split}.csv` / `{split}.parquet` (also under `data/`),
//! or the Hub's shard layout `[data/]{split}-00000-of-00001.parquet` ([`super::parquet`]).
//! `dataset_path: parquet` reads `data_files` as Parquet.
//!
//! Relative file names are looked up beside the task YAML first, then in the working directory
//! (where `datasets` looks). CSV columns are typed as pandas infers them: a column whose every
//! value is an integer is integers, else numbers, else strings.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::config::TaskConfig;
use crate::{EvalError, Result};

/// One document: a row of the dataset.
pub type Doc = Map<String, Value>;

/// Bound on one data file (the task reader holds a split in memory, like `datasets` does
/// for small local files).
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 30;

/// Bound on the rows of one data file: checked against a Parquet footer before any page is
/// decoded (a small compressed file can declare many rows). Ten million is far above any
/// benchmark split (MMLU's test split has 14,042).
pub(crate) const MAX_ROWS: usize = 10_000_000;

fn task_error(path: &Path, key: &str, reason: impl Into<String>) -> EvalError {
    EvalError::Task {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn resolve(config: &TaskConfig, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let beside = config.path.parent().unwrap_or(Path::new(".")).join(p);
    if beside.exists() {
        beside
    } else {
        p.to_path_buf()
    }
}

fn read_text(path: &Path) -> Result<String> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    // `read_regular_to_string` refuses a FIFO, device or folder; only the size is ours.
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(task_error(
            path,
            "(file)",
            format!(
                "{} bytes is over the 1 GiB a task's data file may have",
                meta.len()
            ),
        ));
    }
    temper_formats::read_regular_to_string(path).map_err(io)
}

fn read_json(path: &Path) -> Result<Vec<Doc>> {
    let text = read_text(path)?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let rows: Vec<Value> =
            serde_json::from_str(trimmed).map_err(|e| task_error(path, "(json)", e.to_string()))?;
        return rows
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(m) => Ok(m),
                _ => Err(task_error(
                    path,
                    &format!("[{i}]"),
                    "a row must be an object",
                )),
            })
            .collect();
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(m)) => out.push(m),
            Ok(_) => {
                return Err(EvalError::Malformed {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: "a row must be a JSON object".into(),
                });
            }
            Err(e) => {
                return Err(EvalError::Malformed {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

fn read_csv(path: &Path) -> Result<Vec<Doc>> {
    let text = read_text(path)?;
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| task_error(path, "(header)", e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| EvalError::Malformed {
            path: path.to_path_buf(),
            line: i + 2,
            reason: e.to_string(),
        })?;
        rows.push(rec.iter().map(str::to_string).collect());
    }
    let typed = |col: usize| -> Box<dyn Fn(&str) -> Value> {
        let values = || rows.iter().filter_map(|r| r.get(col));
        if values().all(|v| v.parse::<i64>().is_ok()) {
            Box::new(|v| v.parse::<i64>().map_or(Value::Null, Value::from))
        } else if values().all(|v| v.parse::<f64>().is_ok()) {
            Box::new(|v| v.parse::<f64>().map_or(Value::Null, Value::from))
        } else {
            Box::new(|v| Value::String(v.to_string()))
        }
    };
    let converters: Vec<_> = (0..headers.len()).map(typed).collect();
    Ok(rows
        .iter()
        .map(|r| {
            headers
                .iter()
                .zip(&converters)
                .zip(r)
                .map(|((h, conv), v)| (h.clone(), conv(v)))
                .collect()
        })
        .collect())
}

fn read_file(path: &Path, format: &str) -> Result<Vec<Doc>> {
    match format {
        "json" => read_json(path),
        "csv" => read_csv(path),
        "parquet" => super::parquet::read_parquet(path),
        other => Err(task_error(
            path,
            "dataset_path",
            format!("`{other}` files are not supported (json, csv, parquet)"),
        )),
    }
}

fn format_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => "csv",
        Some("parquet") => "parquet",
        _ => "json",
    }
}

/// The files of `split` in a local dataset folder: the first of `{split}.{jsonl,json,csv,
/// parquet}` at the top or under `data/`; else the Hub's shards `{split}-*.parquet` (top, then
/// `data/`), all of them in name order (`-00000-of-00002` before `-00001-of-00002`), as
/// `datasets` resolves a folder without a loading script.
fn split_files(root: &Path, split: &str) -> Result<Vec<PathBuf>> {
    for sub in ["", "data/"] {
        for ext in ["jsonl", "json", "csv", "parquet"] {
            let p = root.join(format!("{sub}{split}.{ext}"));
            if p.is_file() {
                return Ok(vec![p]);
            }
        }
    }
    for dir in [root.to_path_buf(), root.join("data")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let prefix = format!("{split}-");
        let mut shards = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| EvalError::Io {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".parquet") {
                shards.push(entry.path());
            }
        }
        if !shards.is_empty() {
            shards.sort();
            return Ok(shards);
        }
    }
    Ok(Vec::new())
}

/// The data files of `split` with their format (`json`, `csv`, `parquet`).
///
/// # Errors
/// [`EvalError::Task`] naming the YAML and key for an unknown split or an unsupported
/// dataset.
pub fn split_paths(config: &TaskConfig, split: &str) -> Result<Vec<(PathBuf, &'static str)>> {
    Ok(match config.dataset_path.as_str() {
        "json" | "csv" | "parquet" => {
            let (_, names) = config
                .data_files
                .iter()
                .find(|(s, _)| s == split)
                .ok_or_else(|| {
                    task_error(
                        &config.path,
                        "dataset_kwargs.data_files",
                        format!(
                            "no files for split `{split}` (has: {})",
                            config
                                .data_files
                                .iter()
                                .map(|(s, _)| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
            let format = match config.dataset_path.as_str() {
                "csv" => "csv",
                "parquet" => "parquet",
                _ => "json",
            };
            names.iter().map(|n| (resolve(config, n), format)).collect()
        }
        dir => {
            let root = resolve(config, dir);
            if !root.is_dir() {
                return Err(task_error(
                    &config.path,
                    "dataset_path",
                    format!(
                        "`{dir}` is neither json/csv nor a local dataset folder (no hub \
                         access here)"
                    ),
                ));
            }
            let found = split_files(&root, split)?;
            if found.is_empty() {
                return Err(task_error(
                    &config.path,
                    "dataset_path",
                    format!(
                        "{} has no {split}.jsonl / .json / .csv / .parquet, nor \
                         {split}-*.parquet shards (also looked under data/)",
                        root.display()
                    ),
                ));
            }
            found
                .into_iter()
                .map(|f| {
                    let format = format_of(&f);
                    (f, format)
                })
                .collect()
        }
    })
}

/// The documents of `split`.
///
/// # Errors
/// [`EvalError::Task`] naming the YAML and key for an unknown split or an unsupported
/// dataset; I/O and parse errors naming the data file (and line).
pub fn load_split(config: &TaskConfig, split: &str) -> Result<Vec<Doc>> {
    let mut docs = Vec::new();
    for (path, format) in split_paths(config, split)? {
        let rows = read_file(&path, format)?;
        if rows.len() > MAX_ROWS {
            return Err(task_error(
                &path,
                "(file)",
                format!(
                    "{} rows; a task's data file may have at most {MAX_ROWS}",
                    rows.len()
                ),
            ));
        }
        docs.extend(rows);
    }
    Ok(docs)
}
