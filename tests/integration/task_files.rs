//! Task files: parquet in each of arrow's string layouts, jsonl, column names, limits, and the
//! errors a user with a wrong file meets.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, LargeStringArray, RecordBatch, StringArray, StringViewArray};
use fomaml::data::task_files::{read_file, read_split, Columns, Example, TaskFileError};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

fn columns(prompt: &str, response: &str) -> Columns {
    Columns { prompt: prompt.into(), response: response.into() }
}

fn write_parquet(path: &Path, cols: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn expected() -> Vec<Example> {
    vec![
        Example { prompt: "2+3?".into(), response: "\\boxed{5}".into() },
        Example { prompt: "小明有几个苹果？".into(), response: "8 🍎".into() },
    ]
}

#[test]
fn parquet_string_columns_of_every_layout_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = ["2+3?", "小明有几个苹果？"];
    let responses = ["\\boxed{5}", "8 🍎"];
    let layouts: Vec<(&str, ArrayRef, ArrayRef)> = vec![
        ("utf8", Arc::new(StringArray::from(prompts.to_vec())), Arc::new(StringArray::from(responses.to_vec()))),
        (
            "large",
            Arc::new(LargeStringArray::from(prompts.to_vec())),
            Arc::new(LargeStringArray::from(responses.to_vec())),
        ),
        (
            "view",
            Arc::new(StringViewArray::from(prompts.to_vec())),
            Arc::new(StringViewArray::from(responses.to_vec())),
        ),
    ];
    for (name, p, r) in layouts {
        let path = dir.path().join(format!("{name}.parquet"));
        write_parquet(&path, vec![("question", p), ("answer", r)]);
        assert_eq!(read_file(&path, &columns("question", "answer"), None).unwrap(), expected(), "{name}");
        assert_eq!(read_file(&path, &columns("question", "answer"), Some(1)).unwrap(), expected()[..1], "{name}");
    }
}

#[test]
fn jsonl_is_read_and_splits_concatenate_up_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&a, "{\"prompt\": \"2+3?\", \"response\": \"\\\\boxed{5}\", \"extra\": 1}\n\n").unwrap();
    std::fs::write(
        &b,
        "{\"prompt\": \"小明有几个苹果？\", \"response\": \"8 🍎\"}\n{\"prompt\": \"x\", \"response\": \"y\"}\n",
    )
    .unwrap();
    let cols = columns("prompt", "response");
    assert_eq!(read_split("t", "support", &[&a, &b], &cols, Some(2)).unwrap(), expected());
    assert_eq!(read_split("t", "support", &[&a, &b], &cols, None).unwrap().len(), 3);
}

#[test]
fn bad_files_are_named_with_the_column_or_line() {
    let dir = tempfile::tempdir().unwrap();
    let cols = columns("prompt", "response");

    let wrong_names = dir.path().join("names.parquet");
    write_parquet(
        &wrong_names,
        vec![
            ("question", Arc::new(StringArray::from(vec!["q"])) as ArrayRef),
            ("response", Arc::new(StringArray::from(vec!["r"]))),
        ],
    );
    let err = read_file(&wrong_names, &cols, None).unwrap_err();
    assert!(matches!(err, TaskFileError::MissingColumn { .. }));
    let text = err.to_string();
    assert!(
        text.contains("names.parquet") && text.contains("no column `prompt`") && text.contains("question"),
        "{text}"
    );

    let wrong_type = dir.path().join("types.parquet");
    write_parquet(
        &wrong_type,
        vec![
            ("prompt", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("response", Arc::new(StringArray::from(vec!["r"]))),
        ],
    );
    let text = read_file(&wrong_type, &cols, None).unwrap_err().to_string();
    assert!(text.contains("types.parquet") && text.contains("`prompt` has type Int64"), "{text}");

    let nulls = dir.path().join("nulls.parquet");
    write_parquet(
        &nulls,
        vec![
            ("prompt", Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef),
            ("response", Arc::new(StringArray::from(vec!["r", "s"]))),
        ],
    );
    let text = read_file(&nulls, &cols, None).unwrap_err().to_string();
    assert!(text.contains("`prompt` is null in row 1"), "{text}");

    let garbage = dir.path().join("garbage.parquet");
    std::fs::write(&garbage, b"not parquet at all").unwrap();
    assert!(matches!(read_file(&garbage, &cols, None), Err(TaskFileError::BadParquet { .. })));

    let jsonl = dir.path().join("bad.jsonl");
    std::fs::write(&jsonl, "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": 3, \"response\": \"b\"}\n").unwrap();
    let text = read_file(&jsonl, &cols, None).unwrap_err().to_string();
    assert!(text.contains("bad.jsonl:2") && text.contains("`prompt` is a number"), "{text}");
    std::fs::write(&jsonl, "{\"prompt\": \"a\"}\n").unwrap();
    assert!(read_file(&jsonl, &cols, None).unwrap_err().to_string().contains("bad.jsonl:1: no key `response`"));
    std::fs::write(&jsonl, "{oops\n").unwrap();
    assert!(read_file(&jsonl, &cols, None).unwrap_err().to_string().contains("bad.jsonl:1: not JSON"));

    let csv = dir.path().join("data.csv");
    std::fs::write(&csv, "a,b").unwrap();
    assert!(matches!(read_file(&csv, &cols, None), Err(TaskFileError::UnsupportedFormat { .. })));
    let missing = dir.path().join("missing.jsonl");
    assert!(read_file(&missing, &cols, None).unwrap_err().to_string().contains("missing.jsonl"));
    // In a split: the task and split, the file, then the cause, each once.
    let err = anyhow::Error::from(read_split("algebra", "support", &[&missing], &cols, None).unwrap_err());
    let text = format!("{err:#}");
    assert!(
        text.starts_with("task `algebra`, support split: cannot read ") && text.contains("missing.jsonl: "),
        "{text}"
    );
    assert_eq!(text.matches("os error").count(), 1, "{text}");

    std::fs::write(&jsonl, b"{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"\xff\"}\n").unwrap();
    let text = read_file(&jsonl, &cols, None).unwrap_err().to_string();
    assert!(text.contains("bad.jsonl:2: not UTF-8 text"), "{text}");

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let text = read_split("algebra", "query", &[&empty], &cols, None).unwrap_err().to_string();
    assert!(text.contains("task `algebra`: its query files have no rows") && text.contains("empty.jsonl"), "{text}");
}
