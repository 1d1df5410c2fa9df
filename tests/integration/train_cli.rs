//! `fomaml train` as a user runs it: prepare the synthetic family, train, get killed (SIGKILL,
//! possibly mid-checkpoint), re-run, and end exactly where an uninterrupted run ends. Plus the
//! errors a bad config gives.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fomaml::metrics::read_jsonl;

fn fomaml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fomaml"))
}

fn check(out: Output) -> Output {
    assert!(out.status.success(), "fomaml failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn prepare(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data");
    let args = ["--train-tasks", "6", "--eval-tasks", "2", "--support", "8", "--query", "8", "--test", "8", "--quiet"];
    check(fomaml().args(["prepare-data", "synthetic", "--out", data.to_str().unwrap()]).args(args).output().unwrap());
    data.join("config.yaml")
}

fn train_args(config: &Path, run_dir: &Path) -> Vec<String> {
    [
        "train",
        "--config",
        config.to_str().unwrap(),
        "trainer.total_steps=150",
        "trainer.test_freq=50",
        "trainer.logger=[jsonl]",
        "checkpoint.save_freq=10",
        "meta.num_inner_steps=1",
        "meta.meta_batch_size=2",
        "meta.inner_batch_size=2",
        "meta.query_batch_size=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("trainer.default_local_dir={}", run_dir.display())])
    .collect()
}

fn without_timing(run_dir: &Path) -> Vec<(u64, Vec<(String, f64)>)> {
    read_jsonl(run_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| (r.step, r.scalars.into_iter().filter(|(n, _)| !n.starts_with("perf/")).collect()))
        .collect()
}

fn final_theta(run_dir: &Path) -> Vec<u8> {
    std::fs::read(run_dir.join("checkpoints/step_00000150/model.safetensors")).unwrap()
}

#[test]
fn a_killed_run_resumes_and_ends_like_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = prepare(dir.path());
    let whole = dir.path().join("whole");
    check(fomaml().args(train_args(&config, &whole)).output().unwrap());

    let killed = dir.path().join("killed");
    let mut child = fomaml().args(train_args(&config, &killed)).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while !killed.join("checkpoints/step_00000020").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("checkpoints/step_00000150").exists(), "the run finished before the kill");

    let resumed = check(fomaml().args(train_args(&config, &killed)).output().unwrap());
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("resuming from"), "{stderr}");

    assert!(final_theta(&whole) == final_theta(&killed), "θ differs from the uninterrupted run");
    assert_eq!(without_timing(&whole), without_timing(&killed), "metrics differ from the uninterrupted run");
}

#[test]
fn bad_configs_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = prepare(dir.path());
    // A run directory of its own: the config's relative default would land in the working directory.
    let run_dir = format!("trainer.default_local_dir={}", dir.path().join("run").display());
    let run = |extra: &str| {
        let out = fomaml().args(["train", "--config", config.to_str().unwrap(), &run_dir, extra]).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(run("meta.meta_batch_size=99").contains("meta.meta_batch_size"));
    assert!(run("meta.inner_lrr=0.1").contains("did you mean `meta.inner_lr`"));
    assert!(run("meta.algorithm=meta_lora").contains("model.lora_rank"));
    assert!(run("meta.algorithm=reptil").contains("meta.algorithm"));
    assert!(run("model.partial_pretrain=/nonexistent").contains("/nonexistent"));
    assert!(run("trainer.logger=[neptune]").contains("trainer.logger"));
    assert!(run("meta.outer_lr=-0.001").contains("override `meta.outer_lr=-0.001`: `meta.outer_lr`"));
}
