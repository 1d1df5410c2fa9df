//! Stopping on request: SIGTERM (a cluster's preemption warning) finishes the meta-step, saves it
//! and exits with code 75; the same command then resumes and ends bit for bit where an
//! uninterrupted run ends. A second SIGINT stops at once. (Under `fomaml-launch`, every rank stops
//! after the same step: tests/sharded.rs.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::train::{synthetic_run, SyntheticRun};
use fomaml::checkpoint::{newest, step_dir_name};
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::metrics::read_jsonl;
use fomaml::train::preempt::EXIT_PREEMPTED;
use fomaml::train::{Trainer, MODEL_FILE, OPTIMIZER_FILE};

const STEPS: usize = 150;

fn run_with(steps: usize) -> SyntheticRun {
    let spec = SyntheticSpec { train_tasks: 4, eval_tasks: 0, support: 8, query: 8, test: 0, seed: 5 };
    let mut run = synthetic_run(&spec);
    let c = &mut run.config;
    (c.trainer.total_steps, c.trainer.test_freq, c.checkpoint.save_freq) = (steps, 0, 0);
    c.trainer.num_threads = Some(1);
    run
}

fn write_config(run: &SyntheticRun, name: &str) -> (PathBuf, PathBuf) {
    let mut c = run.config.clone();
    let run_dir = run.run_dir(name);
    c.trainer.default_local_dir = run_dir.display().to_string();
    let path = run.path().join(format!("{name}.yaml"));
    std::fs::write(&path, c.to_yaml()).unwrap();
    (path, run_dir)
}

fn train(config: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fomaml"));
    cmd.args(["train", "--config"]).arg(config).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn logged_steps(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Waits until the trainer has logged `steps` meta-steps (it must still be running).
fn wait_for_steps(child: &mut Child, run_dir: &Path, steps: usize) {
    let started = Instant::now();
    while logged_steps(run_dir) < steps {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be signalled");
        assert!(started.elapsed() < Duration::from_secs(120), "no step {steps} after 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap().success());
}

fn without_timing(run_dir: &Path) -> Vec<(u64, String, f64)> {
    let records = read_jsonl(run_dir.join("metrics.jsonl")).unwrap();
    let all = records.iter().flat_map(|r| r.scalars.iter().map(move |(n, v)| (r.step, n.clone(), *v)));
    all.filter(|(_, n, _)| !n.starts_with("perf/")).collect()
}

#[test]
fn sigterm_saves_the_step_it_finishes_and_the_resumed_run_ends_bit_for_bit() {
    let run = run_with(STEPS);
    let (config, run_dir) = write_config(&run, "preempted");
    let mut child = train(&config).spawn().unwrap();
    wait_for_steps(&mut child, &run_dir, 3);
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_PREEMPTED as i32), "{stderr}");
    let saved = newest(&run_dir.join("checkpoints")).unwrap().expect("a checkpoint of the step it finished");
    let step = logged_steps(&run_dir);
    assert!(step < STEPS, "stopped only at the end");
    assert_eq!(saved.file_name().unwrap().to_string_lossy(), step_dir_name(step as u64), "{stderr}");
    let message = format!("stopped after meta-step {step} on SIGTERM: saved {}", saved.display());
    assert!(stderr.contains(&message) && stderr.contains("run the same command again"), "{stderr}");

    let resumed = train(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success() && stderr.contains("resuming from"), "{stderr}");

    let mut uninterrupted = run.config.clone();
    uninterrupted.trainer.default_local_dir = run.run_dir("uninterrupted").display().to_string();
    Trainer::new(uninterrupted).unwrap().run().unwrap();
    let last = step_dir_name(STEPS as u64);
    for file in [MODEL_FILE, OPTIMIZER_FILE] {
        let a = std::fs::read(run.run_dir("uninterrupted").join("checkpoints").join(&last).join(file)).unwrap();
        let b = std::fs::read(run_dir.join("checkpoints").join(&last).join(file)).unwrap();
        assert!(a == b, "{file} differs from the uninterrupted run's");
    }
    assert_eq!(without_timing(&run.run_dir("uninterrupted")), without_timing(&run_dir));
}

#[test]
fn a_second_sigint_stops_at_once_without_saving() {
    // Slow steps (many inner steps), so that both signals land inside one.
    let mut run = run_with(STEPS);
    run.config.meta.num_inner_steps = 200;
    let (config, run_dir) = write_config(&run, "interrupted");
    let mut child = train(&config).spawn().unwrap();
    wait_for_steps(&mut child, &run_dir, 1);
    signal(&child, "INT");
    std::thread::sleep(Duration::from_millis(20));
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 2), "{stderr}");
    assert!(stderr.contains("second SIGINT: stopping now, without saving"), "{stderr}");
    assert!(newest(&run_dir.join("checkpoints")).unwrap().is_none(), "nothing is saved");
}
