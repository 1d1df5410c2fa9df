//! The console sink: a progress bar with ETA, loss and tokens/s on a terminal; plain lines every
//! ~5% of the run (and at evaluations) when stderr is a file or a pipe, so CI logs stay readable.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::metrics::Record;

pub struct Console {
    /// Other ranks than 0 say nothing: rank 0 speaks for the run.
    silent: bool,
    enabled: bool,
    bar: Option<ProgressBar>,
    total: u64,
    every: u64,
}

fn value(record: &Record, name: &str) -> Option<f64> {
    record.scalars.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

impl Console {
    pub fn new(enabled: bool) -> Self {
        Self { silent: false, enabled, bar: None, total: 0, every: 1 }
    }

    /// The console of a rank other than 0.
    pub fn silent() -> Self {
        Self { silent: true, ..Self::new(false) }
    }

    pub fn start(&mut self, step: u64, total: u64, run_dir: &Path, resumed_from: Option<&Path>) {
        self.total = total;
        self.every = (total / 20).max(1);
        if self.silent {
            return;
        }
        // Said whatever the loggers: where a run starts matters when reading its log.
        match resumed_from {
            Some(dir) => eprintln!("resuming from {} (step {step} of {total})", dir.display()),
            None => eprintln!("training {total} steps -> {}", run_dir.display()),
        }
        if self.enabled && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total).with_position(step);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .expect("valid template")
                .progress_chars("##-"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            self.bar = Some(bar);
        }
    }

    fn summary(record: &Record) -> String {
        let mut line = format!("loss {:.4}", value(record, "meta/loss").unwrap_or(f64::NAN));
        if let Some(gap) = value(record, "meta/avg_adaptation_gap") {
            line += &format!(" | gap {gap:+.4}");
        }
        if let Some(tps) = value(record, "perf/tokens_per_s") {
            line += &format!(" | {tps:.0} tok/s");
        }
        if let Some(after) = value(record, "eval/loss_after_adaptation") {
            let before = value(record, "eval/loss_before_adaptation").unwrap_or(f64::NAN);
            line += &format!(" | eval {before:.4} -> {after:.4}");
        }
        line
    }

    pub fn step(&self, record: &Record) {
        if !self.enabled {
            return;
        }
        let line = Self::summary(record);
        match &self.bar {
            Some(bar) => {
                bar.set_position(record.step);
                bar.set_message(line.clone());
                if value(record, "eval/loss_after_adaptation").is_some() {
                    bar.println(format!("step {}: {line}", record.step));
                }
            }
            None => {
                let eval = value(record, "eval/loss_after_adaptation").is_some();
                if record.step % self.every == 0 || record.step == self.total || eval {
                    eprintln!("step {}/{}: {line}", record.step, self.total);
                }
            }
        }
    }

    pub fn warn(&self, message: &str) {
        if self.silent {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(format!("warning: {message}")),
            None => eprintln!("warning: {message}"),
        }
    }

    pub fn finish(&self, last: Option<&Record>, checkpoint: Option<&Path>) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.silent {
            return;
        }
        if let (true, Some(record)) = (self.enabled, last) {
            eprintln!("done at step {}: {}", record.step, Self::summary(record));
        }
        match checkpoint {
            Some(dir) => eprintln!("checkpoint: {}", dir.display()),
            None => eprintln!("no checkpoint saved (checkpoint.save_final: false)"),
        }
    }
}
