//! Metrics as JSON lines: `{"step":N,"<name>":value,...}`, one per record, in the record's order.
//! JSON has no NaN or infinities, so those are written as the strings "NaN", "Infinity" and
//! "-Infinity" (what Python's json module and pandas accept) and read back as numbers.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Map, Value};

use super::{MetricSink, Record};

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    BadLine { path: PathBuf, line: usize, reason: String },
}

/// Appends one line per record to a JSONL file.
pub struct JsonlSink {
    path: PathBuf,
    file: File,
}

impl JsonlSink {
    /// Starts `path` afresh, or with `resume` keeps the complete lines already there and appends
    /// after them (a torn last line is dropped). To also drop the steps logged after the checkpoint
    /// a run resumes from, use [`JsonlSink::resume`].
    pub fn create(path: impl AsRef<Path>, resume: bool) -> anyhow::Result<Self> {
        let path = path.as_ref();
        if resume {
            return Self::resume(path, u64::MAX);
        }
        create_parent(path)?;
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// Reopens `path` for a run resumed from the checkpoint of `last_step`: the file is cut before
    /// its first line with a larger step (that line and all after it belong to the abandoned
    /// continuation, which the resumed run logs again) or before a torn last line, whichever comes
    /// first, and new records are appended. A missing file is created.
    pub fn resume(path: impl AsRef<Path>, last_step: u64) -> anyhow::Result<Self> {
        let path = path.as_ref();
        create_parent(path)?;
        let keep = match fs::read(path) {
            Ok(bytes) => Some(kept_len(path, &bytes, last_step)?),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        if let Some(len) = keep {
            file.set_len(len as u64).with_context(|| format!("cannot truncate {}", path.display()))?;
        }
        Ok(Self { path: path.to_path_buf(), file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl MetricSink for JsonlSink {
    fn write(&mut self, record: &Record) -> anyhow::Result<()> {
        let line = format_line(record)?;
        // One write_all of the whole line, unbuffered: a killed process leaves at most a torn
        // last line, which readers and `resume` drop.
        self.file.write_all(line.as_bytes()).with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.file.sync_data().with_context(|| format!("cannot sync {}", self.path.display()))
    }
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn format_line(record: &Record) -> anyhow::Result<String> {
    let mut line = format!("{{\"step\":{}", record.step);
    for (i, (name, value)) in record.scalars.iter().enumerate() {
        // A repeated name would make a JSON object that most readers silently collapse.
        if name == "step" || record.scalars[..i].iter().any(|(n, _)| n == name) {
            anyhow::bail!("step {}: scalar name `{name}` is used twice (\"step\" is taken)", record.step);
        }
        line.push(',');
        line.push_str(&serde_json::to_string(name)?);
        line.push(':');
        line.push_str(&format_value(*value));
    }
    line.push_str("}\n");
    Ok(line)
}

fn format_value(v: f64) -> String {
    match serde_json::Number::from_f64(v) {
        // serde_json prints the shortest form that parses back to the same f64.
        Some(n) => n.to_string(),
        None if v.is_nan() => "\"NaN\"".into(),
        None if v > 0.0 => "\"Infinity\"".into(),
        None => "\"-Infinity\"".into(),
    }
}

fn parse_value(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

fn parse_line(line: &[u8]) -> Result<Record, String> {
    let object: Map<String, Value> = serde_json::from_slice(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let mut step = None;
    let mut scalars = Vec::with_capacity(object.len().saturating_sub(1));
    for (name, value) in object {
        if name == "step" {
            step = Some(value.as_u64().ok_or_else(|| format!("`step` is {value}, expected a non-negative integer"))?);
        } else {
            let v = parse_value(&value).ok_or_else(|| format!("`{name}` is {value}, expected a number"))?;
            scalars.push((name, v));
        }
    }
    let step = step.ok_or("no `step`")?;
    Ok(Record { step, scalars })
}

/// The complete lines of `bytes` with their end offsets (just past the '\n'); a last line without
/// its '\n' is a write cut short by a crash and is left out. Blank lines are skipped.
fn complete_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, usize, &[u8])> {
    let mut start = 0;
    let mut number = 0;
    std::iter::from_fn(move || loop {
        let len = bytes[start..].iter().position(|&b| b == b'\n')?;
        let line = &bytes[start..start + len];
        let line_start = start;
        start += len + 1;
        number += 1;
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Some((number, line_start, line));
        }
    })
}

/// Length of the prefix of `bytes` that `resume` keeps.
fn kept_len(path: &Path, bytes: &[u8], last_step: u64) -> Result<usize, JsonlError> {
    let mut end = 0;
    for (number, start, line) in complete_lines(bytes) {
        let record =
            parse_line(line).map_err(|reason| JsonlError::BadLine { path: path.into(), line: number, reason })?;
        if record.step > last_step {
            return Ok(start);
        }
        end = start + line.len() + 1;
    }
    // Blank lines at the end go with the torn tail; nothing of value is lost.
    Ok(end)
}

/// Reads the records a [`JsonlSink`] wrote, in file order. A torn last line is ignored, so a log
/// being written by a live (or killed) run reads cleanly.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Record>, JsonlError> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|source| JsonlError::Io { path: path.into(), source })?;
    complete_lines(&bytes)
        .map(|(number, _, line)| {
            parse_line(line).map_err(|reason| JsonlError::BadLine { path: path.into(), line: number, reason })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, scalars: &[(&str, f64)]) -> Record {
        Record { step, scalars: scalars.iter().map(|(n, v)| (n.to_string(), *v)).collect() }
    }

    #[test]
    fn lines_keep_the_record_order_and_spell_non_finite_values() {
        let line = format_line(&record(3, &[("z", 1.0), ("a/b", -0.5), ("n", f64::NAN), ("i", f64::NEG_INFINITY)]));
        assert_eq!(line.unwrap(), "{\"step\":3,\"z\":1.0,\"a/b\":-0.5,\"n\":\"NaN\",\"i\":\"-Infinity\"}\n");
    }

    #[test]
    fn a_repeated_or_reserved_name_is_refused() {
        assert!(format_line(&record(1, &[("a", 1.0), ("a", 2.0)])).is_err());
        assert!(format_line(&record(1, &[("step", 1.0)])).is_err());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        fs::write(&path, "{\"step\":1,\"a\":1}\n\n{\"step\":2,\"a\":\"high\"}\n").unwrap();
        let err = read_jsonl(&path).unwrap_err().to_string();
        assert!(err.ends_with("m.jsonl:3: `a` is \"high\", expected a number"), "{err}");
        fs::write(&path, "{\"a\":1}\n").unwrap();
        assert!(read_jsonl(&path).unwrap_err().to_string().contains(":1: no `step`"));
        // resume refuses to append after a corrupt line rather than cutting the log there.
        fs::write(&path, "{\"step\":1}\nnot json\n").unwrap();
        assert!(JsonlSink::resume(&path, 5).is_err());
    }
}
