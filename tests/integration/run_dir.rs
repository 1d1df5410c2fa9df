//! One run directory, one writer, one lineage: resuming from an older step, a fresh run in a used
//! directory, two trainers on one directory, and runs that save nothing at the end.

use std::path::{Path, PathBuf};

use crate::common::train::synthetic_run;
use fomaml::checkpoint::run_dir::RunLock;
use fomaml::checkpoint::{newest, step_dir_name};
use fomaml::config::schema::ResumeMode;
use fomaml::config::Config;
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::metrics::read_jsonl;
use fomaml::train::Trainer;

fn spec() -> SyntheticSpec {
    SyntheticSpec { train_tasks: 4, eval_tasks: 0, support: 8, query: 8, test: 0, seed: 9 }
}

/// A config of `steps` steps saving every step, keeping all checkpoints.
fn config(run: &crate::common::train::SyntheticRun, steps: usize) -> Config {
    let mut c = run.config.clone();
    (c.trainer.total_steps, c.trainer.test_freq, c.checkpoint.save_freq) = (steps, 0, 1);
    c.checkpoint.max_ckpt_to_keep = None;
    c
}

fn steps_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step_"))
        .collect();
    names.sort();
    names
}

fn logged_steps(run_dir: &Path) -> Vec<u64> {
    read_jsonl(run_dir.join("metrics.jsonl")).unwrap().iter().map(|r| r.step).collect()
}

/// The single folder under `<root>/<kind>/`.
fn set_aside(root: &Path, kind: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join(kind)).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(dirs.len(), 1, "{kind}: {dirs:?}");
    dirs.pop().unwrap()
}

#[test]
fn resuming_from_an_older_step_abandons_the_later_ones_and_never_resumes_them() {
    let run = synthetic_run(&spec());
    let c = config(&run, 4);
    let root = Path::new(&c.trainer.default_local_dir).join("checkpoints");
    Trainer::new(c.clone()).unwrap().run().unwrap();
    assert_eq!(steps_in(&root).len(), 4);

    // Rewind to step 2 and train to 3 (keeping one checkpoint: the retention must not delete the
    // checkpoint it resumes from before the new one is written, nor pick the old step 4 later).
    let mut rewind = c.clone();
    rewind.checkpoint.resume_mode = ResumeMode::ResumePath;
    rewind.checkpoint.resume_path = Some(root.join(step_dir_name(2)).display().to_string());
    rewind.checkpoint.max_ckpt_to_keep = Some(1);
    // The same total_steps (the lr schedule depends on it), stopped at 3.
    Trainer::new(rewind).unwrap().run_until(Some(3)).unwrap();

    let abandoned = set_aside(&root, "abandoned");
    assert!(abandoned.file_name().unwrap().to_string_lossy().ends_with("after_step_00000002"));
    assert_eq!(steps_in(&abandoned), [step_dir_name(3), step_dir_name(4)]);
    assert_eq!(steps_in(&root), [step_dir_name(3)], "keep 1: the new step 3 only");
    assert_eq!(std::fs::read_to_string(root.join("latest")).unwrap(), step_dir_name(3));
    let theta = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(
        theta(&root.join(step_dir_name(3))) == theta(&abandoned.join(step_dir_name(3))),
        "step 3 again, bit for bit"
    );
    assert_eq!(logged_steps(Path::new(&c.trainer.default_local_dir)), [1, 2, 3]);

    // `auto` continues the new lineage.
    let summary = Trainer::new(c.clone()).unwrap().run().unwrap();
    assert!(summary.resumed_from.unwrap().ends_with(step_dir_name(3)));
    assert_eq!(logged_steps(Path::new(&c.trainer.default_local_dir)), [1, 2, 3, 4]);
    assert_eq!(newest(&root).unwrap().unwrap(), root.join(step_dir_name(4)));
}

#[test]
fn a_fresh_run_in_a_used_directory_is_refused_unless_the_old_run_is_archived() {
    let run = synthetic_run(&spec());
    let c = config(&run, 3);
    let run_dir = PathBuf::from(&c.trainer.default_local_dir);
    let root = run_dir.join("checkpoints");
    Trainer::new(c.clone()).unwrap().run().unwrap();

    let mut fresh = c.clone();
    fresh.checkpoint.resume_mode = ResumeMode::Disable;
    fresh.trainer.total_steps = 2;
    let e = Trainer::new(fresh.clone()).err().unwrap().to_string();
    assert!(e.contains("holds checkpoints of another run (up to step 3)") && e.contains("archive_previous"), "{e}");
    assert_eq!(steps_in(&root).len(), 3, "a refused run touches nothing");

    fresh.checkpoint.archive_previous = true;
    Trainer::new(fresh).unwrap().run().unwrap();
    let archived = set_aside(&root, "archived");
    assert_eq!(steps_in(&archived).len(), 3);
    assert_eq!(logged_steps(&archived), [1, 2, 3], "the old run's metrics went with it");
    assert_eq!(logged_steps(&run_dir), [1, 2], "the new run's metrics alone");
    assert_eq!(steps_in(&root), [step_dir_name(1), step_dir_name(2)]);
    // `auto` resumes the new run, never the archived step 3.
    let summary = Trainer::new(c).unwrap().run().unwrap();
    assert!(summary.resumed_from.unwrap().ends_with(step_dir_name(2)));
}

#[test]
fn one_trainer_per_run_directory() {
    let run = synthetic_run(&spec());
    let c = config(&run, 1);
    let first = Trainer::new(c.clone()).unwrap();
    let e = Trainer::new(c.clone()).err().unwrap().to_string();
    let holder = format!("pid {}", std::process::id());
    assert!(e.contains("in use by another trainer") && e.contains(&holder), "{e}");
    first.run().unwrap();
    Trainer::new(c.clone()).unwrap().run().unwrap();

    // A lock file left by a process that died: taken over, with a notice naming it.
    let run_dir = Path::new(&c.trainer.default_local_dir);
    std::fs::write(run_dir.join(".lock"), "host gone, pid 4242").unwrap();
    let (lock, notice) = RunLock::acquire(run_dir).unwrap();
    assert!(notice.unwrap().contains("host gone, pid 4242"));
    drop(lock);
    let (_lock, notice) = RunLock::acquire(run_dir).unwrap();
    assert!(notice.is_none(), "a clean release leaves nothing to take over");
}

#[test]
fn save_final_false_writes_no_end_of_run_checkpoint() {
    let run = synthetic_run(&spec());
    let mut c = config(&run, 3);
    (c.checkpoint.save_freq, c.checkpoint.save_final) = (2, false);
    let summary = Trainer::new(c.clone()).unwrap().run().unwrap();
    let root = Path::new(&c.trainer.default_local_dir).join("checkpoints");
    assert_eq!(steps_in(&root), [step_dir_name(2)]);
    assert_eq!(summary.last_checkpoint.unwrap(), root.join(step_dir_name(2)));

    c.checkpoint.save_freq = 0;
    c.trainer.default_local_dir = run.run_dir("nothing").display().to_string();
    assert!(Trainer::new(c).unwrap().run().unwrap().last_checkpoint.is_none());
}

/// An asynchronous save writes what a synchronous one writes, byte for byte (so resuming from it
/// is resuming from the synchronous one, tested bit for bit elsewhere), and every checkpoint is
/// committed by the end of the run; each save's stall is logged.
#[test]
fn asynchronous_saves_write_the_synchronous_bytes() {
    let run = synthetic_run(&spec());
    let mut checkpoints = Vec::new();
    for async_save in [false, true] {
        let mut c = config(&run, 4);
        c.checkpoint.async_save = async_save;
        c.trainer.default_local_dir = run.run_dir(&format!("async_{async_save}")).display().to_string();
        Trainer::new(c.clone()).unwrap().run().unwrap();
        let root = Path::new(&c.trainer.default_local_dir).join("checkpoints");
        assert_eq!(steps_in(&root), (1..=4).map(step_dir_name).collect::<Vec<_>>());
        assert_eq!(newest(&root).unwrap().unwrap(), root.join(step_dir_name(4)));
        let records = read_jsonl(Path::new(&c.trainer.default_local_dir).join("metrics.jsonl")).unwrap();
        assert!(records.iter().all(|r| r.scalars.iter().any(|(n, v)| n == "perf/save_stall_s" && *v >= 0.0)));
        checkpoints.push(root);
    }
    for step in 1..=4 {
        let [sync, background] = [&checkpoints[0], &checkpoints[1]].map(|root| root.join(step_dir_name(step)));
        for file in [fomaml::train::MODEL_FILE, fomaml::train::OPTIMIZER_FILE] {
            let same = std::fs::read(sync.join(file)).unwrap() == std::fs::read(background.join(file)).unwrap();
            assert!(same, "step {step}: {file} differs between synchronous and asynchronous saves");
        }
    }
}

/// A save that never committed (the run stopped while writing) leaves its staging directory; the
/// next trainer on the run directory removes it, and only it.
#[test]
fn unfinished_writes_are_removed_at_start() {
    let run = synthetic_run(&spec());
    let c = config(&run, 2);
    let root = Path::new(&c.trainer.default_local_dir).join("checkpoints");
    Trainer::new(c.clone()).unwrap().run().unwrap();
    // A step this run never saves, so only the clean-up at start can remove it.
    let stale = root.join(".step_00000009.tmp");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("rank_00000.safetensors"), b"half a file").unwrap();
    let mut more = c.clone();
    more.trainer.total_steps = 3;
    Trainer::new(more).unwrap().run().unwrap();
    assert!(!stale.exists(), "the stale staging directory is gone");
    assert_eq!(steps_in(&root), (1..=3).map(step_dir_name).collect::<Vec<_>>());
}
