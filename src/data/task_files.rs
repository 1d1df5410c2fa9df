//! Reading a task's support / query / test files: parquet (arrow-rs) or jsonl, with configurable
//! prompt / response column names. Every failure names the file, and the column or line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// One prompt / response pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub prompt: String,
    pub response: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskFileError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: unsupported file type (use .parquet or .jsonl)")]
    UnsupportedFormat { path: PathBuf },
    #[error("{path}: not a readable parquet file: {reason}")]
    BadParquet { path: PathBuf, reason: String },
    #[error("{path}: no column `{column}` (columns: {available}); set data.prompt_key / data.response_key")]
    MissingColumn { path: PathBuf, column: String, available: String },
    #[error("{path}: column `{column}` has type {found}, expected a string column")]
    WrongType { path: PathBuf, column: String, found: String },
    #[error("{path}: column `{column}` is null in row {row}")]
    Null { path: PathBuf, column: String, row: usize },
    #[error("{path}:{line}: {reason}")]
    BadLine { path: PathBuf, line: usize, reason: String },
    #[error("task `{task}`: its {split} files have no rows ({files})")]
    Empty { task: String, split: String, files: String },
    #[error("task `{task}`, {split} split")]
    InSplit { task: String, split: String, source: Box<TaskFileError> },
}

/// Column names of the prompt and the response (verl's prompt_key / response_key).
#[derive(Debug, Clone)]
pub struct Columns {
    pub prompt: String,
    pub response: String,
}

/// Reads the examples of one file; `limit` stops after that many rows.
pub fn read_file(path: &Path, columns: &Columns, limit: Option<usize>) -> Result<Vec<Example>, TaskFileError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet(path, columns, limit),
        Some("jsonl") => read_jsonl(path, columns, limit),
        _ => Err(TaskFileError::UnsupportedFormat { path: path.to_path_buf() }),
    }
}

/// Reads a split made of several files, in order, up to `limit` rows in total; an empty split is
/// an error naming the task.
pub fn read_split(
    task: &str,
    split: &str,
    files: &[impl AsRef<Path>],
    columns: &Columns,
    limit: Option<usize>,
) -> Result<Vec<Example>, TaskFileError> {
    let mut examples = Vec::new();
    for file in files {
        let remaining = limit.map(|l| l.saturating_sub(examples.len()));
        if remaining == Some(0) {
            break;
        }
        let read = read_file(file.as_ref(), columns, remaining);
        let in_split = |e| TaskFileError::InSplit { task: task.into(), split: split.into(), source: Box::new(e) };
        examples.extend(read.map_err(in_split)?);
    }
    if examples.is_empty() {
        let files = files.iter().map(|f| f.as_ref().display().to_string()).collect::<Vec<_>>().join(", ");
        let files = if files.is_empty() { "none given".into() } else { files };
        return Err(TaskFileError::Empty { task: task.into(), split: split.into(), files });
    }
    Ok(examples)
}

fn read_parquet(path: &Path, columns: &Columns, limit: Option<usize>) -> Result<Vec<Example>, TaskFileError> {
    let file = File::open(path).map_err(|source| TaskFileError::Io { path: path.to_path_buf(), source })?;
    let bad = |e: parquet::errors::ParquetError| TaskFileError::BadParquet {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(bad)?;
    let schema = builder.schema().clone();
    for column in [&columns.prompt, &columns.response] {
        let field = schema.field_with_name(column).map_err(|_| TaskFileError::MissingColumn {
            path: path.to_path_buf(),
            column: column.clone(),
            available: schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
        })?;
        if !matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            return Err(TaskFileError::WrongType {
                path: path.to_path_buf(),
                column: column.clone(),
                found: field.data_type().to_string(),
            });
        }
    }
    let mut examples = Vec::new();
    for batch in builder.build().map_err(bad)? {
        let batch = batch.map_err(|e| TaskFileError::BadParquet { path: path.to_path_buf(), reason: e.to_string() })?;
        let first_row = examples.len();
        let prompts = strings(path, &batch, &columns.prompt, first_row)?;
        let responses = strings(path, &batch, &columns.response, first_row)?;
        for (prompt, response) in prompts.into_iter().zip(responses) {
            if limit.is_some_and(|l| examples.len() >= l) {
                return Ok(examples);
            }
            examples.push(Example { prompt, response });
        }
    }
    Ok(examples)
}

/// The values of a string column of any of arrow's three string layouts.
fn strings(path: &Path, batch: &RecordBatch, column: &str, first_row: usize) -> Result<Vec<String>, TaskFileError> {
    let array = batch.column_by_name(column).expect("schema checked");
    let null = |i: usize| TaskFileError::Null { path: path.to_path_buf(), column: column.into(), row: first_row + i };
    if let Some(i) = (0..array.len()).find(|&i| array.is_null(i)) {
        return Err(null(i));
    }
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(|v| v.unwrap_or_default().to_string()).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(|v| v.unwrap_or_default().to_string()).collect(),
        DataType::Utf8View => array.as_string_view().iter().map(|v| v.unwrap_or_default().to_string()).collect(),
        other => unreachable!("schema checked, got {other}"),
    })
}

fn read_jsonl(path: &Path, columns: &Columns, limit: Option<usize>) -> Result<Vec<Example>, TaskFileError> {
    let file = File::open(path).map_err(|source| TaskFileError::Io { path: path.to_path_buf(), source })?;
    let mut examples = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        if limit.is_some_and(|l| examples.len() >= l) {
            break;
        }
        let line_no = i + 1;
        let line = line.map_err(|source| match source.kind() {
            std::io::ErrorKind::InvalidData => {
                TaskFileError::BadLine { path: path.to_path_buf(), line: line_no, reason: "not UTF-8 text".into() }
            }
            _ => TaskFileError::Io { path: path.to_path_buf(), source },
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TaskFileError::BadLine { path: path.to_path_buf(), line: line_no, reason };
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let field = |key: &str| match value.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(format!("`{key}` is {}, expected a string", json_kind(other)))),
            None => Err(bad(format!("no key `{key}`; set data.prompt_key / data.response_key"))),
        };
        examples.push(Example { prompt: field(&columns.prompt)?, response: field(&columns.response)? });
    }
    Ok(examples)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Writes examples as parquet with `prompt` and `response` columns plus any extra string
/// columns (e.g. level), snappy-compressed.
pub fn write_parquet(path: &Path, examples: &[Example], extra: &[(&str, Vec<String>)]) -> Result<(), TaskFileError> {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, StringArray};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

    let io = |e: parquet::errors::ParquetError| TaskFileError::BadParquet {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        ("prompt", Arc::new(StringArray::from_iter_values(examples.iter().map(|e| e.prompt.as_str())))),
        ("response", Arc::new(StringArray::from_iter_values(examples.iter().map(|e| e.response.as_str())))),
    ];
    for (name, values) in extra {
        columns.push((name, Arc::new(StringArray::from_iter_values(values.iter()))));
    }
    let batch = RecordBatch::try_from_iter(columns)
        .map_err(|e| TaskFileError::BadParquet { path: path.to_path_buf(), reason: e.to_string() })?;
    let file = File::create(path).map_err(|source| TaskFileError::Io { path: path.to_path_buf(), source })?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(io)?;
    writer.write(&batch).map_err(io)?;
    writer.close().map_err(io)?;
    Ok(())
}
