//! Where the trainer's scalars go: a JSONL file (easy to diff and plot) and TensorBoard event files,
//! both written so that a run killed at any moment leaves a readable log up to the last full record.
//! Nothing here touches libtorch: callers hand over plain `f64`s.

mod crc32c;
pub mod jsonl;
pub mod tensorboard;

pub use jsonl::{read_jsonl, JsonlSink};
pub use tensorboard::TensorBoardSink;

/// One logging event: the scalars of one step, in the order they are to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub step: u64,
    pub scalars: Vec<(String, f64)>,
}

/// A destination for records. `write` hands the record to the operating system before it returns,
/// so that killing the process loses nothing already written; `flush` also asks the OS to put it on
/// disk (for checkpoints, where a machine crash should not leave the log behind the weights).
pub trait MetricSink {
    fn write(&mut self, record: &Record) -> anyhow::Result<()>;
    fn flush(&mut self) -> anyhow::Result<()>;
}

/// Writes every record to each of its sinks.
#[derive(Default)]
pub struct MultiSink {
    sinks: Vec<Box<dyn MetricSink>>,
}

impl MultiSink {
    pub fn new(sinks: Vec<Box<dyn MetricSink>>) -> Self {
        Self { sinks }
    }

    pub fn push(&mut self, sink: Box<dyn MetricSink>) {
        self.sinks.push(sink);
    }

    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Calls `op` on every sink even when one fails, so that a full disk under the TensorBoard
    /// directory does not also cost the JSONL log; the failures are reported together.
    fn each(&mut self, mut op: impl FnMut(&mut dyn MetricSink) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let errors: Vec<String> =
            self.sinks.iter_mut().filter_map(|sink| op(sink.as_mut()).err()).map(|e| format!("{e:#}")).collect();
        match errors.len() {
            0 => Ok(()),
            1 => Err(anyhow::anyhow!("{}", errors[0])),
            n => Err(anyhow::anyhow!("{n} metric sinks failed: {}", errors.join("; "))),
        }
    }
}

impl MetricSink for MultiSink {
    fn write(&mut self, record: &Record) -> anyhow::Result<()> {
        self.each(|sink| sink.write(record))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.each(|sink| sink.flush())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Recording(Arc<Mutex<Vec<u64>>>);

    impl MetricSink for Recording {
        fn write(&mut self, record: &Record) -> anyhow::Result<()> {
            self.0.lock().unwrap().push(record.step);
            Ok(())
        }
        fn flush(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
    }

    struct Failing(&'static str);

    impl MetricSink for Failing {
        fn write(&mut self, _: &Record) -> anyhow::Result<()> {
            anyhow::bail!("{} is full", self.0)
        }
        fn flush(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_sink_is_written_even_after_one_fails() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut multi = MultiSink::new(vec![Box::new(Failing("disk A")), Box::new(Recording(seen.clone()))]);
        multi.push(Box::new(Failing("disk B")));
        let err = multi.write(&Record { step: 7, scalars: vec![("loss".into(), 1.0)] }).unwrap_err();
        assert_eq!(*seen.lock().unwrap(), [7]);
        let msg = format!("{err:#}");
        assert!(msg.contains("2 metric sinks failed") && msg.contains("disk A") && msg.contains("disk B"), "{msg}");
        multi.flush().unwrap();
    }
}
