//! A split stored as Apache Parquet (`dataset_path: parquet`, or the `*.parquet` shards of a
//! local Hugging Face dataset folder), read into the same [`Doc`] rows as JSON lines.
//!
//! `datasets` hands lm-eval each row as Python values; the JSON here is what those values are:
//! strings, integers (any width, signed or not), floats (a `float32` widened exactly, as
//! `float(np.float32(x))` is), booleans and nulls; a `list<…>` column a JSON array; a `struct`
//! column (ARC's `choices: {text: [...], label: [...]}`) an object with its fields. Columns
//! `datasets` would give as bytes, dates, decimals or maps have no JSON twin and are refused,
//! naming the file and column, rather than turned into something a template would misread.
//!
//! The file is untrusted: its size is bounded before it is opened, its row count and declared
//! uncompressed size (from the footer) before any page is decoded; a truncated or corrupt file is an error naming it. The
//! record reader of the `parquet` crate still has `expect`s on paths a corrupt file can reach,
//! so decoding runs under `catch_unwind`: a panic there becomes an error naming the file too.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{Map, Value};

use super::dataset::{Doc, MAX_FILE_BYTES, MAX_ROWS};
use crate::{EvalError, Result};

/// Bound on a file's declared uncompressed size (four times the file cap).
const MAX_DECODED_BYTES: u64 = 4 * MAX_FILE_BYTES;

fn error(path: &Path, key: &str, reason: impl Into<String>) -> EvalError {
    EvalError::Task {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The rows of one Parquet file, in file order (row group by row group).
///
/// # Errors
/// [`EvalError::Io`] if the file cannot be opened (a FIFO or folder included);
/// [`EvalError::Task`] naming the file for one over [`MAX_FILE_BYTES`] or [`MAX_ROWS`], a
/// truncated or corrupt file, or a column type without a JSON value.
pub fn read_parquet(path: &Path) -> Result<Vec<Doc>> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    // `open_regular` refuses a FIFO, device or folder before anything waits on it.
    let file = temper_formats::open_regular(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(error(
            path,
            "(file)",
            format!("{len} bytes is over the 1 GiB a task's data file may have"),
        ));
    }
    let reader = SerializedFileReader::new(file).map_err(|e| {
        error(
            path,
            "(parquet)",
            format!("not a readable Parquet file: {e}"),
        )
    })?;
    let rows = reader.metadata().file_metadata().num_rows();
    if usize::try_from(rows).map_or(true, |n| n > MAX_ROWS) {
        return Err(error(
            path,
            "(parquet)",
            format!("the footer declares {rows} rows; a task's split may have at most {MAX_ROWS}"),
        ));
    }
    // The row groups' declared uncompressed bytes bound what decoding will hold (a small
    // compressed file can expand a thousandfold).
    let declared: i64 = reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.total_byte_size().max(0))
        .fold(0i64, i64::saturating_add);
    if u64::try_from(declared).map_or(true, |n| n > MAX_DECODED_BYTES) {
        return Err(error(
            path,
            "(parquet)",
            format!(
                "the row groups declare {declared} uncompressed bytes; a task's split may \
                 decode to at most 4 GiB"
            ),
        ));
    }
    match catch_unwind(AssertUnwindSafe(|| decode(path, &reader))) {
        Ok(docs) => docs,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the Parquet decoder panicked".into());
            Err(error(
                path,
                "(parquet)",
                format!("corrupt Parquet file: {why}"),
            ))
        }
    }
}

fn decode(path: &Path, reader: &SerializedFileReader<std::fs::File>) -> Result<Vec<Doc>> {
    let corrupt = |e: parquet::errors::ParquetError| {
        error(path, "(parquet)", format!("corrupt Parquet file: {e}"))
    };
    let mut docs = Vec::new();
    // Row group by row group (not `get_row_iter`, which `expect`s every group to open).
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(corrupt)?;
        let rows = parquet::record::reader::RowIter::from_row_group(None, group.as_ref())
            .map_err(corrupt)?;
        for row in rows {
            let row = row.map_err(corrupt)?;
            if docs.len() >= MAX_ROWS {
                return Err(error(
                    path,
                    "(parquet)",
                    format!("more than {MAX_ROWS} rows (more than its footer declares)"),
                ));
            }
            docs.push(row_to_doc(path, "", row)?);
        }
    }
    Ok(docs)
}

fn row_to_doc(path: &Path, prefix: &str, row: Row) -> Result<Map<String, Value>> {
    row.into_columns()
        .into_iter()
        .map(|(name, field)| {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            Ok((name, field_to_json(path, &key, field)?))
        })
        .collect()
}

/// One value as the JSON of the Python value `datasets` would give; `key` names the column
/// (dotted into structs) for errors.
pub(crate) fn field_to_json(path: &Path, key: &str, field: Field) -> Result<Value> {
    let float = |x: f64| {
        // JSON has no NaN or infinity; a null is what a JSON split would hold there.
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    };
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(b),
        Field::Byte(x) => Value::from(x),
        Field::Short(x) => Value::from(x),
        Field::Int(x) => Value::from(x),
        Field::Long(x) => Value::from(x),
        Field::UByte(x) => Value::from(x),
        Field::UShort(x) => Value::from(x),
        Field::UInt(x) => Value::from(x),
        Field::ULong(x) => Value::from(x),
        Field::Float16(x) => float(f64::from(f32::from(x))),
        Field::Float(x) => float(f64::from(x)),
        Field::Double(x) => float(x),
        Field::Str(s) => Value::String(s),
        Field::Group(row) => Value::Object(row_to_doc(path, key, row)?),
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .map(|f| field_to_json(path, key, f.clone()))
                .collect::<Result<_>>()?,
        ),
        other @ (Field::Bytes(_)
        | Field::Decimal(_)
        | Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_)
        | Field::MapInternal(_)) => {
            return Err(error(
                path,
                key,
                format!(
                    "a {} column has no JSON value a task template could read (Temper reads \
                     strings, numbers, booleans, lists and structs)",
                    kind(&other)
                ),
            ));
        }
    })
}

fn kind(field: &Field) -> &'static str {
    match field {
        Field::Bytes(_) => "binary",
        Field::Decimal(_) => "decimal",
        Field::Date(_) => "date",
        Field::TimeMillis(_) | Field::TimeMicros(_) => "time",
        Field::TimestampMillis(_) | Field::TimestampMicros(_) => "timestamp",
        Field::MapInternal(_) => "map",
        _ => "value",
    }
}
