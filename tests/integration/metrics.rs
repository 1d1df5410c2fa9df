//! Metric sinks: TensorBoard event files as the Python `tensorboard` package reads them (also when
//! a run was killed mid-record), and the JSONL log's round trip and resume.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::venv_python;
use fomaml::metrics::{read_jsonl, JsonlSink, MetricSink, MultiSink, Record, TensorBoardSink};

fn record(step: u64, scalars: &[(&str, f64)]) -> Record {
    Record { step, scalars: scalars.iter().map(|(n, v)| (n.to_string(), *v)).collect() }
}

/// Five steps of several tags, nested ones like the trainer's included, and values a loss curve
/// may really hold (tiny, huge, negative, NaN and infinite).
fn training_log() -> Vec<Record> {
    (1..=5u64)
        .map(|step| {
            let s = step as f64;
            let mut scalars = vec![
                ("meta/loss", 2.5 / s),
                ("taskA/support_loss", 3.0 - 0.1 * s),
                ("taskB/query_loss", 1e-7 * s),
                ("lr", 3e-4 * s),
                ("grad_norm", -1e20 * s),
            ];
            scalars.push(("meta/diverged", [0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.0][step as usize - 1]));
            record(step, &scalars)
        })
        .collect()
}

const READ_SCALARS: &str = r#"
import sys
try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
acc = EventAccumulator(sys.argv[1])
acc.Reload()
for tag in acc.Tags()["scalars"]:
    for event in acc.Scalars(tag):
        print(f"{tag}\t{event.step}\t{event.value!r}")
"#;

/// (tag, step, value) as `tensorboard`'s EventAccumulator reads `log_dir`, in tag then step order.
fn tensorboard_scalars(log_dir: &Path) -> Vec<(String, u64, f64)> {
    let python = venv_python();
    let out = Command::new(&python)
        .arg("-c")
        .arg(READ_SCALARS)
        .arg(log_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        panic!(
            "the Python `tensorboard` package is not installed in {}: run the tests through `make test`, \
             which installs tensorboard==2.21.0 ({})",
            python.display(),
            stderr.trim()
        );
    }
    assert!(out.status.success(), "reading {} with tensorboard failed:\n{stderr}", log_dir.display());
    let mut scalars: Vec<(String, u64, f64)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let [tag, step, value] = line.split('\t').collect::<Vec<_>>()[..] else { panic!("bad line {line:?}") };
            (tag.to_string(), step.parse().unwrap(), value.parse().unwrap_or_else(|_| panic!("bad value {value}")))
        })
        .collect();
    scalars.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    scalars
}

/// What TensorBoard should show for `records`: simple_value is a float, so values as f32.
fn expected_scalars(records: &[Record]) -> Vec<(String, u64, f32)> {
    let mut scalars: Vec<_> =
        records.iter().flat_map(|r| r.scalars.iter().map(|(t, v)| (t.clone(), r.step, *v as f32))).collect();
    scalars.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    scalars
}

fn assert_same_scalars(got: &[(String, u64, f64)], want: &[(String, u64, f32)]) {
    let got_keys: Vec<_> = got.iter().map(|(t, s, _)| (t.as_str(), *s)).collect();
    let want_keys: Vec<_> = want.iter().map(|(t, s, _)| (t.as_str(), *s)).collect();
    assert_eq!(got_keys, want_keys);
    for ((tag, step, got), (_, _, want)) in got.iter().zip(want) {
        let got = *got as f32;
        assert!(got == *want || (got.is_nan() && want.is_nan()), "{tag} at step {step}: got {got}, want {want}");
    }
}

fn single_event_file(dir: &Path) -> PathBuf {
    let files: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

#[test]
fn tensorboard_reads_back_every_scalar_written_through_a_multi_sink() {
    let dir = tempfile::tempdir().unwrap();
    let tb_dir = dir.path().join("tb");
    let jsonl = dir.path().join("metrics.jsonl");
    let tb = TensorBoardSink::create(&tb_dir).unwrap();
    let tb_file = tb.path().to_path_buf();
    let name = tb.path().file_name().unwrap().to_str().unwrap().to_string();
    let parts: Vec<_> = name.split('.').collect();
    assert_eq!(parts[..3], ["events", "out", "tfevents"], "{name}");
    assert!(parts[3].parse::<u64>().unwrap() > 1_600_000_000, "{name}");
    assert_eq!(parts[parts.len() - 2..], [std::process::id().to_string().as_str(), "fomaml"], "{name}");

    let mut sink = MultiSink::new(vec![Box::new(tb), Box::new(JsonlSink::create(&jsonl, false).unwrap())]);
    let log = training_log();
    for r in &log {
        sink.write(r).unwrap();
    }
    sink.flush().unwrap();

    assert_eq!(single_event_file(&tb_dir), tb_file);
    assert_same_scalars(&tensorboard_scalars(&tb_dir), &expected_scalars(&log));
    assert_jsonl_eq(&read_jsonl(&jsonl).unwrap(), &log);
}

#[test]
fn a_file_cut_mid_record_still_reads_up_to_the_last_complete_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = training_log();
    let mut sink = TensorBoardSink::create(dir.path().join("whole")).unwrap();
    let path = sink.path().to_path_buf();
    for r in &log[..4] {
        sink.write(r).unwrap();
    }
    let after_four = fs::metadata(&path).unwrap().len();
    sink.write(&log[4]).unwrap();
    let after_five = fs::metadata(&path).unwrap().len();
    drop(sink);

    let cut = |name: &str, len: u64| {
        let cut_dir = dir.path().join(name);
        fs::create_dir(&cut_dir).unwrap();
        let copy = cut_dir.join(path.file_name().unwrap());
        fs::copy(&path, &copy).unwrap();
        fs::OpenOptions::new().write(true).open(&copy).unwrap().set_len(len).unwrap();
        cut_dir
    };

    // Cut inside the length header of step 5's first record: steps 1..4 survive.
    assert_same_scalars(&tensorboard_scalars(&cut("in_header", after_four + 5)), &expected_scalars(&log[..4]));

    // Cut inside the checksum of the last record: only step 5's last scalar is lost.
    let mut partial = log.clone();
    partial[4].scalars.pop();
    assert_same_scalars(&tensorboard_scalars(&cut("in_crc", after_five - 3)), &expected_scalars(&partial));
}

#[test]
fn a_resumed_run_replaces_the_steps_after_its_checkpoint_in_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    let log = training_log();
    let mut first = TensorBoardSink::create(dir.path()).unwrap();
    for r in &log {
        first.write(r).unwrap();
    }
    // Dated a minute back, as the killed run's file would be; the resumed file must sort after it.
    let old = first.path().to_path_buf();
    let name = old.file_name().unwrap().to_str().unwrap();
    let secs: u64 = name.split('.').nth(3).unwrap().parse().unwrap();
    fs::rename(&old, old.with_file_name(name.replacen(&secs.to_string(), &(secs - 60).to_string(), 1))).unwrap();
    drop(first);

    let mut resumed = TensorBoardSink::resume(dir.path(), 3).unwrap();
    let redo: Vec<Record> = log[3..]
        .iter()
        .map(|r| Record { step: r.step, scalars: vec![("meta/loss".into(), -(r.step as f64))] })
        .collect();
    for r in &redo {
        resumed.write(r).unwrap();
    }
    let mut want = log[..3].to_vec();
    want.extend(redo);
    assert_same_scalars(&tensorboard_scalars(dir.path()), &expected_scalars(&want));
}

/// Equal records, values bit for bit (NaN equal to NaN).
fn assert_jsonl_eq(got: &[Record], want: &[Record]) {
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.step, w.step);
        let names = |r: &Record| r.scalars.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(g), names(w), "order of the names at step {}", w.step);
        for ((name, a), (_, b)) in g.scalars.iter().zip(&w.scalars) {
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{name} at {}: {a} != {b}", w.step);
        }
    }
}

#[test]
fn jsonl_round_trips_every_f64_including_nan_and_infinities() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/metrics.jsonl");
    let extremes = [0.1, -0.0, 5e-324, f64::MAX, f64::MIN_POSITIVE, 1.0 / 3.0, 123456789.0];
    let mut log = training_log();
    log.push(record(
        6,
        &extremes.iter().enumerate().map(|(i, v)| (["a", "b", "c", "d", "e", "f", "g"][i], *v)).collect::<Vec<_>>(),
    ));
    log.push(record(7, &[]));

    let mut sink = JsonlSink::create(&path, false).unwrap();
    for r in &log {
        sink.write(r).unwrap();
    }
    sink.flush().unwrap();
    assert_jsonl_eq(&read_jsonl(&path).unwrap(), &log);

    let text = fs::read_to_string(&path).unwrap();
    let line3: serde_json::Value = serde_json::from_str(text.lines().nth(2).unwrap()).unwrap();
    assert_eq!(line3["meta/diverged"], "Infinity");
    assert!(text.contains("\"meta/diverged\":\"NaN\"") && text.contains("\"meta/diverged\":\"-Infinity\""));

    // create without resume starts over.
    JsonlSink::create(&path, false).unwrap();
    assert!(read_jsonl(&path).unwrap().is_empty());
}

#[test]
fn jsonl_resume_drops_later_steps_and_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let log = training_log();
    let mut sink = JsonlSink::create(&path, false).unwrap();
    for r in &log {
        sink.write(r).unwrap();
    }
    drop(sink);
    // The run was killed mid-write of step 6.
    let torn = "{\"step\":6,\"meta/loss\":0.4";
    fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(torn.as_bytes()).unwrap();
    assert_jsonl_eq(&read_jsonl(&path).unwrap(), &log);

    // Resumed from the checkpoint of step 3: steps 4, 5 and the torn line go, step 4 is logged again.
    let mut sink = JsonlSink::resume(&path, 3).unwrap();
    assert_jsonl_eq(&read_jsonl(&path).unwrap(), &log[..3]);
    let redo = record(4, &[("meta/loss", 0.7)]);
    sink.write(&redo).unwrap();
    drop(sink);
    let mut want = log[..3].to_vec();
    want.push(redo.clone());
    assert_jsonl_eq(&read_jsonl(&path).unwrap(), &want);
    assert!(fs::read_to_string(&path).unwrap().ends_with("{\"step\":4,\"meta/loss\":0.7}\n"));

    // create(path, true) keeps every complete line and drops only a torn one.
    fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"ste").unwrap();
    let mut sink = JsonlSink::create(&path, true).unwrap();
    sink.write(&record(5, &[("meta/loss", 0.6)])).unwrap();
    want.push(record(5, &[("meta/loss", 0.6)]));
    assert_jsonl_eq(&read_jsonl(&path).unwrap(), &want);

    // A resume past every logged step keeps everything; a missing file is created.
    JsonlSink::resume(&path, 100).unwrap();
    assert_jsonl_eq(&read_jsonl(&path).unwrap(), &want);
    let fresh = dir.path().join("new/metrics.jsonl");
    JsonlSink::resume(&fresh, 10).unwrap();
    assert!(read_jsonl(&fresh).unwrap().is_empty());
}
