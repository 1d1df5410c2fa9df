//! A dataset as users keep it locally, read as rows of named values:
//!
//! - the dataset hub's parquet files: a folder holding `<config>/<split>-00000-of-00001.parquet`
//!   (or `<split>.parquet`) at any depth, the split being the file name up to its first `-`;
//! - a `datasets` `save_to_disk` folder: `dataset_dict.json` with one folder per split, or one
//!   split's folder (`state.json` listing its Arrow stream files);
//! - one `.parquet`, `.arrow` or `.jsonl` file (all its rows; no split selection).
//!
//! Only the columns asked for are decoded (a ScienceQA image column is large); each row keeps its
//! place (`file:line` or `file row N`) for error messages.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde_json::{Map, Value as Json};

use super::PrepareError;

/// One row: the requested columns it has, and where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub values: Map<String, Json>,
    pub place: String,
}

impl Row {
    pub fn bad(&self, reason: impl Into<String>) -> PrepareError {
        PrepareError::BadRecord { path: PathBuf::from(&self.place), reason: reason.into() }
    }

    /// A string column, null read as empty.
    pub fn text(&self, key: &str) -> Result<String, PrepareError> {
        match self.values.get(key) {
            Some(Json::String(s)) => Ok(s.clone()),
            Some(Json::Null) | None => Ok(String::new()),
            Some(other) => Err(self.bad(format!("`{key}` is {other}, expected a string"))),
        }
    }

    /// A string column that must hold text.
    pub fn required_text(&self, key: &str) -> Result<String, PrepareError> {
        let text = self.text(key)?;
        if text.trim().is_empty() {
            return Err(self.bad(format!("`{key}` is empty")));
        }
        Ok(text)
    }

    /// Where the row came from, relative to `source` (or a source file's folder), which every row
    /// shares.
    pub fn place_under(&self, source: &Path) -> String {
        let base = if source.is_file() { source.parent().unwrap_or(source) } else { source };
        let prefix = base.display().to_string();
        let short = self.place.strip_prefix(&prefix).map(|p| p.trim_start_matches('/'));
        short.filter(|p| !p.is_empty()).unwrap_or(&self.place).to_string()
    }

    /// Whether a column holds anything: not null, and for a struct (the hub's image) some field set.
    pub fn has(&self, key: &str) -> bool {
        match self.values.get(key) {
            None | Some(Json::Null) => false,
            Some(Json::String(s)) => !s.is_empty(),
            Some(Json::Object(fields)) => fields.values().any(|v| !v.is_null()),
            Some(_) => true,
        }
    }
}

/// Which columns to read: `required` must exist in every file, `optional` are read where present.
pub struct Columns<'a> {
    pub required: &'a [&'a str],
    pub optional: &'a [&'a str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Parquet,
    Arrow,
    Jsonl,
}

/// Every row of the selected `splits` under `source`, in file order.
pub fn read_rows(source: &Path, splits: &[String], columns: &Columns) -> Result<Vec<Row>, PrepareError> {
    let mut rows = Vec::new();
    for (path, format) in data_files(source, splits)? {
        match format {
            Format::Parquet => read_parquet(&path, columns, &mut rows)?,
            Format::Arrow => read_arrow(&path, columns, &mut rows)?,
            Format::Jsonl => read_jsonl(&path, columns, &mut rows)?,
        }
    }
    if rows.is_empty() {
        return Err(PrepareError::NothingFound { path: source.to_path_buf(), expected: "rows".into() });
    }
    Ok(rows)
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "parquet" => Some(Format::Parquet),
        "arrow" => Some(Format::Arrow),
        "jsonl" => Some(Format::Jsonl),
        _ => None,
    }
}

const LAYOUTS: &str = "a hub folder (<config>/<split>-*.parquet), a save_to_disk folder (dataset_dict.json or \
                       state.json), or one .parquet / .arrow / .jsonl file";

/// The files to read, in order, for the selected splits.
fn data_files(source: &Path, splits: &[String]) -> Result<Vec<(PathBuf, Format)>, PrepareError> {
    let bad = |reason: String| PrepareError::BadRecord { path: source.to_path_buf(), reason };
    if !source.exists() {
        return Err(PrepareError::NoSource(source.to_path_buf()));
    }
    if source.is_file() {
        let format = format_of(source).ok_or_else(|| bad(format!("unsupported file type; expected {LAYOUTS}")))?;
        return Ok(vec![(source.to_path_buf(), format)]);
    }
    let found: Vec<(String, PathBuf, Format)> = if source.join("dataset_dict.json").is_file() {
        let dict: Json = read_json(&source.join("dataset_dict.json"))?;
        let names = dict["splits"].as_array().ok_or_else(|| bad("dataset_dict.json has no `splits` list".into()))?;
        let mut files = Vec::new();
        for name in names.iter().filter_map(Json::as_str) {
            files.extend(saved_split(&source.join(name))?.into_iter().map(|p| (name.to_string(), p, Format::Arrow)));
        }
        files
    } else if source.join("state.json").is_file() {
        // One split's folder: the user chose the split by choosing the folder.
        return Ok(saved_split(source)?.into_iter().map(|p| (p, Format::Arrow)).collect());
    } else {
        hub_files(source)?
    };
    if found.is_empty() {
        return Err(PrepareError::NothingFound { path: source.to_path_buf(), expected: LAYOUTS.into() });
    }
    let chosen: Vec<(PathBuf, Format)> =
        found.iter().filter(|(split, ..)| splits.contains(split)).map(|(_, p, f)| (p.clone(), *f)).collect();
    if chosen.is_empty() {
        let mut have: Vec<&str> = found.iter().map(|(s, ..)| s.as_str()).collect();
        have.dedup();
        return Err(bad(format!(
            "no split {} here (splits: {}); choose with --splits",
            splits.join(", "),
            have.join(", ")
        )));
    }
    Ok(chosen)
}

fn read_json(path: &Path) -> Result<Json, PrepareError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PrepareError::BadRecord { path: path.to_path_buf(), reason: format!("cannot read: {e}") })?;
    serde_json::from_str(&text)
        .map_err(|e| PrepareError::BadRecord { path: path.to_path_buf(), reason: format!("not JSON: {e}") })
}

/// A save_to_disk split folder's Arrow files, as its state.json lists them.
fn saved_split(dir: &Path) -> Result<Vec<PathBuf>, PrepareError> {
    let state_path = dir.join("state.json");
    let state = read_json(&state_path)?;
    let files = state["_data_files"]
        .as_array()
        .ok_or_else(|| PrepareError::BadRecord { path: state_path.clone(), reason: "no `_data_files` list".into() })?;
    Ok(files.iter().filter_map(|f| f["filename"].as_str()).map(|name| dir.join(name)).collect())
}

/// Every data file under `root` with its split: the hub names them `<split>-NNNNN-of-NNNNN.parquet`.
fn hub_files(root: &Path) -> Result<Vec<(String, PathBuf, Format)>, PrepareError> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| PrepareError::BadRecord { path: dir.clone(), reason: format!("cannot list: {e}") })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(format) = format_of(&path) {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                let split = stem.split('-').next().unwrap_or(stem).to_string();
                files.push((split, path, format));
            }
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}

/// The indices of the requested columns in `schema`; a missing required one is an error.
fn projection(path: &Path, schema: &Schema, columns: &Columns) -> Result<Vec<usize>, PrepareError> {
    let mut indices = Vec::new();
    for (name, required) in
        columns.required.iter().map(|c| (c, true)).chain(columns.optional.iter().map(|c| (c, false)))
    {
        match schema.index_of(name) {
            Ok(i) => indices.push(i),
            Err(_) if required => {
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(PrepareError::BadRecord {
                    path: path.to_path_buf(),
                    reason: format!("no column `{name}` (columns: {})", have.join(", ")),
                });
            }
            Err(_) => {}
        }
    }
    indices.sort_unstable();
    Ok(indices)
}

fn read_parquet(path: &Path, columns: &Columns, rows: &mut Vec<Row>) -> Result<(), PrepareError> {
    let bad = |e: &dyn std::fmt::Display| PrepareError::BadRecord {
        path: path.to_path_buf(),
        reason: format!("not a readable parquet file: {e}"),
    };
    let file = File::open(path).map_err(|e| bad(&e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(&e))?;
    let indices = projection(path, builder.schema(), columns)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let mut next_row = 0;
    for batch in builder.with_projection(mask).build().map_err(|e| bad(&e))? {
        push_batch(path, &batch.map_err(|e| bad(&e))?, &mut next_row, rows);
    }
    Ok(())
}

fn read_arrow(path: &Path, columns: &Columns, rows: &mut Vec<Row>) -> Result<(), PrepareError> {
    let bad = |e: &dyn std::fmt::Display| PrepareError::BadRecord {
        path: path.to_path_buf(),
        reason: format!("not a readable Arrow stream: {e}"),
    };
    let file = BufReader::new(File::open(path).map_err(|e| bad(&e))?);
    let reader = arrow_ipc::reader::StreamReader::try_new(file, None).map_err(|e| bad(&e))?;
    let indices = projection(path, &reader.schema(), columns)?;
    let mut next_row = 0;
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?.project(&indices).map_err(|e| bad(&e))?;
        push_batch(path, &batch, &mut next_row, rows);
    }
    Ok(())
}

/// Appends a batch's rows; `next_row` numbers them from 0 over the file.
fn push_batch(path: &Path, batch: &RecordBatch, next_row: &mut usize, rows: &mut Vec<Row>) {
    let schema = batch.schema();
    for i in 0..batch.num_rows() {
        let values = schema.fields().iter().zip(batch.columns()).map(|(f, a)| (f.name().clone(), cell(a, i))).collect();
        rows.push(Row { values, place: format!("{} row {}", path.display(), *next_row) });
        *next_row += 1;
    }
}

/// One Arrow value as JSON; binary becomes its length (no one reads image bytes here).
fn cell(array: &dyn Array, i: usize) -> Json {
    if array.is_null(i) {
        return Json::Null;
    }
    match array.data_type() {
        DataType::Utf8 => Json::from(array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Json::from(array.as_string::<i64>().value(i)),
        DataType::Utf8View => Json::from(array.as_string_view().value(i)),
        DataType::Boolean => Json::from(array.as_boolean().value(i)),
        DataType::Int8 => Json::from(array.as_primitive::<arrow_array::types::Int8Type>().value(i)),
        DataType::Int16 => Json::from(array.as_primitive::<arrow_array::types::Int16Type>().value(i)),
        DataType::Int32 => Json::from(array.as_primitive::<arrow_array::types::Int32Type>().value(i)),
        DataType::Int64 => Json::from(array.as_primitive::<arrow_array::types::Int64Type>().value(i)),
        DataType::UInt8 => Json::from(array.as_primitive::<arrow_array::types::UInt8Type>().value(i)),
        DataType::UInt16 => Json::from(array.as_primitive::<arrow_array::types::UInt16Type>().value(i)),
        DataType::UInt32 => Json::from(array.as_primitive::<arrow_array::types::UInt32Type>().value(i)),
        DataType::UInt64 => Json::from(array.as_primitive::<arrow_array::types::UInt64Type>().value(i)),
        DataType::Float32 => Json::from(array.as_primitive::<arrow_array::types::Float32Type>().value(i)),
        DataType::Float64 => Json::from(array.as_primitive::<arrow_array::types::Float64Type>().value(i)),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Json::from("<binary>"),
        DataType::List(_) => list(array.as_list::<i32>().value(i).as_ref()),
        DataType::LargeList(_) => list(array.as_list::<i64>().value(i).as_ref()),
        DataType::Struct(fields) => {
            let s = array.as_struct();
            Json::Object(fields.iter().zip(s.columns()).map(|(f, c)| (f.name().clone(), cell(c.as_ref(), i))).collect())
        }
        other => Json::from(format!("<{other}>")),
    }
}

fn list(values: &dyn Array) -> Json {
    Json::Array((0..values.len()).map(|j| cell(values, j)).collect())
}

fn read_jsonl(path: &Path, columns: &Columns, rows: &mut Vec<Row>) -> Result<(), PrepareError> {
    let file = File::open(path)
        .map_err(|e| PrepareError::BadRecord { path: path.to_path_buf(), reason: format!("cannot read: {e}") })?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let place = format!("{}:{}", path.display(), i + 1);
        let bad = |reason: String| PrepareError::BadRecord { path: PathBuf::from(&place), reason };
        let line = line.map_err(|e| bad(format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let Json::Object(mut object) = serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))? else {
            return Err(bad("not a JSON object".into()));
        };
        if let Some(missing) = columns.required.iter().find(|c| !object.contains_key(**c)) {
            return Err(bad(format!("no key `{missing}`")));
        }
        object.retain(|k, _| columns.required.contains(&k.as_str()) || columns.optional.contains(&k.as_str()));
        rows.push(Row { values: object, place });
    }
    Ok(())
}
