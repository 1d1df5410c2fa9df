//! TensorBoard event files, written by hand: TFRecord framing around protobuf `Event` messages
//! (tensorflow/core/util/event.proto). Only the handful of fields a scalar needs are encoded, which
//! is far less code than a protobuf dependency and its generated types.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::crc32c::masked_crc32c;
use super::{MetricSink, Record};

/// Writes `events.out.tfevents.<unix secs>.<hostname>.<pid>.fomaml` in a log directory; TensorBoard
/// reads every file whose name contains `tfevents`.
pub struct TensorBoardSink {
    path: PathBuf,
    file: File,
}

impl TensorBoardSink {
    /// Creates the log directory when missing and starts a new event file in it.
    pub fn create(log_dir: impl AsRef<Path>) -> Result<Self> {
        let log_dir = log_dir.as_ref();
        fs::create_dir_all(log_dir).with_context(|| format!("cannot create log directory {}", log_dir.display()))?;
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let name = format!("events.out.tfevents.{secs}.{}.{}.fomaml", hostname(), std::process::id());
        let path = log_dir.join(name);
        // create_new: two sinks of one process started in the same second must not share a file.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create TensorBoard event file {}", path.display()))?;
        let mut sink = Self { path, file };
        let mut buf = Vec::new();
        push_record(&mut buf, &file_version_event(wall_time()));
        sink.append(&buf)?;
        Ok(sink)
    }

    /// A new event file for a run resumed from the checkpoint of `last_step`. Event files are
    /// append-only, so instead of cutting the old ones this writes a `SessionLog START` at
    /// `last_step + 1`: TensorBoard (its EventAccumulator, which tests/integration/metrics.rs checks) then
    /// discards the points of earlier files from that step on, the abandoned continuation, as it
    /// does for a restarted TensorFlow job. Files are read in name order, so by creation second.
    pub fn resume(log_dir: impl AsRef<Path>, last_step: u64) -> Result<Self> {
        let mut sink = Self::create(log_dir)?;
        let mut buf = Vec::new();
        push_record(&mut buf, &session_start_event(wall_time(), int64_step(last_step.saturating_add(1))?));
        sink.append(&buf)?;
        Ok(sink)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One `write_all` per logging event, straight to the file (no user-space buffer), so a killed
    /// process leaves at most one torn record at the end, which readers skip.
    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).with_context(|| format!("cannot write {}", self.path.display()))
    }
}

impl MetricSink for TensorBoardSink {
    fn write(&mut self, record: &Record) -> Result<()> {
        let step = int64_step(record.step)?;
        let wall_time = wall_time();
        let mut buf = Vec::new();
        for (tag, value) in &record.scalars {
            push_record(&mut buf, &scalar_event(wall_time, step, tag, *value as f32));
        }
        self.append(&buf)
    }

    fn flush(&mut self) -> Result<()> {
        self.file.sync_data().with_context(|| format!("cannot sync {}", self.path.display()))
    }
}

fn int64_step(step: u64) -> Result<i64> {
    i64::try_from(step).with_context(|| format!("step {step} does not fit TensorBoard's int64 step"))
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The file name's host part; a '.' or '/' in it would only confuse people reading the name.
fn hostname() -> String {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "localhost".into());
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// TFRecord framing: length (u64 LE), masked CRC of those 8 bytes, data, masked CRC of the data.
/// The length has its own CRC so that a reader never trusts a torn or corrupt length.
fn push_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn push_key(out: &mut Vec<u8>, field: u8, wire_type: u8) {
    // Every field used here is below 16, so the key is one byte.
    out.push((field << 3) | wire_type);
}

fn push_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    push_key(out, field, LEN);
    push_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `Event { wall_time = 1; file_version = 3 }`: TensorBoard reads the format version from the
/// first event of a file.
fn file_version_event(wall_time: f64) -> Vec<u8> {
    let mut event = Vec::new();
    push_key(&mut event, 1, FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    push_bytes(&mut event, 3, b"brain.Event:2");
    event
}

/// `Event { wall_time = 1; step = 2; session_log = 7 { status = 1 (START) } }`
fn session_start_event(wall_time: f64, step: i64) -> Vec<u8> {
    let mut session_log = Vec::new();
    push_key(&mut session_log, 1, VARINT);
    push_varint(&mut session_log, 1);

    let mut event = Vec::new();
    push_key(&mut event, 1, FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    push_key(&mut event, 2, VARINT);
    push_varint(&mut event, step as u64);
    push_bytes(&mut event, 7, &session_log);
    event
}

/// `Event { wall_time = 1; step = 2; summary = 5 { value = 1 { tag = 1; simple_value = 2 } } }`
fn scalar_event(wall_time: f64, step: i64, tag: &str, value: f32) -> Vec<u8> {
    let mut value_msg = Vec::new();
    push_bytes(&mut value_msg, 1, tag.as_bytes());
    push_key(&mut value_msg, 2, FIXED32);
    value_msg.extend_from_slice(&value.to_le_bytes());

    let mut summary = Vec::new();
    push_bytes(&mut summary, 1, &value_msg);

    let mut event = Vec::new();
    push_key(&mut event, 1, FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    push_key(&mut event, 2, VARINT);
    // int64 on the wire is the two's complement bits; steps are never negative here.
    push_varint(&mut event, step as u64);
    push_bytes(&mut event, 5, &summary);
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::crc32c::masked_crc32c;
    use crate::tensor_io::hex;

    /// Splits TFRecord framing back into payloads, checking both CRCs; stops at a torn tail.
    fn read_records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        while bytes.len() >= 12 {
            let (len, rest) = bytes.split_at(8);
            assert_eq!(rest[..4], masked_crc32c(len).to_le_bytes());
            let n = u64::from_le_bytes(len.try_into().unwrap()) as usize;
            let Some(frame) = rest.get(4..4 + n + 4) else { break };
            let (data, crc) = frame.split_at(n);
            assert_eq!(crc, masked_crc32c(data).to_le_bytes());
            records.push(data.to_vec());
            bytes = &rest[4 + n + 4..];
        }
        records
    }

    #[test]
    fn events_match_python_protobuf() {
        // event_pb2.Event(wall_time=1.5, step=3, summary=Summary(value=[Value(tag="meta/loss",
        // simple_value=0.25)])).SerializeToString().hex(), likewise for file_version and session_log.
        assert_eq!(
            hex(&scalar_event(1.5, 3, "meta/loss", 0.25)),
            "09000000000000f83f10032a120a100a096d6574612f6c6f7373150000803e"
        );
        assert_eq!(hex(&file_version_event(1.5)), "09000000000000f83f1a0d627261696e2e4576656e743a32");
        assert_eq!(hex(&session_start_event(1.5, 4)), "09000000000000f83f10043a020801");
    }

    #[test]
    fn varints_use_seven_bits_per_byte() {
        let enc = |v| {
            let mut out = Vec::new();
            push_varint(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
    }

    #[test]
    fn a_file_holds_the_version_then_one_record_per_scalar() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = TensorBoardSink::create(dir.path().join("tb")).unwrap();
        let name = sink.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("events.out.tfevents.") && name.ends_with(&format!(".{}.fomaml", std::process::id())));
        sink.write(&Record { step: 1, scalars: vec![("a".into(), 1.0), ("b/c".into(), 2.0)] }).unwrap();
        sink.write(&Record { step: 2, scalars: vec![] }).unwrap();
        sink.flush().unwrap();
        let records = read_records(&fs::read(sink.path()).unwrap());
        assert_eq!(records.len(), 3);
        assert!(records[0].ends_with(b"brain.Event:2"));
        assert!(records[2].windows(3).any(|w| w == b"b/c"));
    }

    #[test]
    fn a_step_beyond_int64_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = TensorBoardSink::create(dir.path()).unwrap();
        let err = sink.write(&Record { step: u64::MAX, scalars: vec![("a".into(), 1.0)] }).unwrap_err();
        assert!(err.to_string().contains("int64"), "{err}");
    }
}
