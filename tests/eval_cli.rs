//! `fomaml eval` and `fomaml compare` end to end on a briefly trained synthetic run.

mod common;

use std::process::Command;

use common::assert_one_line_error;
use common::train::synthetic_run;
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::train::Trainer;
use serde_json::Value;

fn fomaml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fomaml"))
}

#[test]
fn eval_writes_the_seeds_layout_repeatably_and_compare_reads_it() {
    let spec = SyntheticSpec { train_tasks: 6, eval_tasks: 2, support: 16, query: 8, test: 8, seed: 5 };
    let mut run = synthetic_run(&spec);
    (run.config.trainer.total_steps, run.config.trainer.test_freq, run.config.meta.outer_lr) = (30, 0, 1e-2);
    let checkpoint = Trainer::new(run.config.clone()).unwrap().run().unwrap().last_checkpoint;
    let eval = |out: &std::path::Path, extra: &[&str]| {
        let o = fomaml()
            .arg("eval")
            .arg("--checkpoint")
            .arg(&checkpoint)
            .args(["--n-shots", "0", "2", "4", "--n-runs", "2", "--max-new-tokens", "12", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let a = run.path().join("a.json");
    let shown = eval(&a, &[]);
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(stdout.contains("| task | shots | loss | accuracy |"), "{stdout}");
    assert!(stdout.contains(" steps of SGD, lr "), "FOMAML's inner loop: {stdout}");
    let json: Value = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
    let tasks = json.as_object().unwrap();
    assert_eq!(tasks.len(), 2, "the held-out tasks");
    for (task, shots) in tasks {
        let keys: Vec<&String> = shots.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["0", "2", "4"], "{task}");
        for (n, r) in shots.as_object().unwrap() {
            let runs = r["runs"].as_array().unwrap();
            assert_eq!(runs.len(), if n == "0" { 1 } else { 2 }, "{task} {n}");
            for run in runs {
                let correct = run["correct"].as_array().unwrap();
                assert_eq!(correct.len(), 8, "every query item of {task} is judged");
                let share = correct.iter().filter(|c| c.as_bool().unwrap()).count() as f64 / 8.0;
                assert_eq!(run["accuracy"].as_f64().unwrap(), share);
                assert!(run["loss"].as_f64().unwrap().is_finite());
            }
            let mean = runs.iter().map(|r| r["loss"].as_f64().unwrap()).sum::<f64>() / runs.len() as f64;
            assert!((r["loss_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        }
        // Adapting on shots moves the loss off the 0-shot value.
        assert_ne!(shots["0"]["loss_mean"], shots["4"]["loss_mean"], "{task}");
    }

    // Same seed, same results (shot draws and generation are deterministic).
    let b = run.path().join("b.json");
    eval(&b, &[]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // META-LoRA's inner rule: other adapted losses; the 0-shot row is untouched.
    let adam = run.path().join("adam.json");
    let shown = eval(&adam, &["--inner-rule", "meta_lora"]);
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(stdout.contains("steps of Adam (fresh state)") && stdout.contains("clipped to norm"), "{stdout}");
    let (sgd, adam): (Value, Value) = (
        serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap(),
        serde_json::from_slice(&std::fs::read(&adam).unwrap()).unwrap(),
    );
    for task in sgd.as_object().unwrap().keys() {
        assert_eq!(sgd[task]["0"], adam[task]["0"], "{task}");
        assert_ne!(sgd[task]["4"]["loss_mean"], adam[task]["4"]["loss_mean"], "{task}");
    }

    let same = fomaml().arg("compare").args([&a, &b]).output().unwrap();
    let table = String::from_utf8_lossy(&same.stdout);
    assert!(same.status.success() && table.contains("| 4 | 2 | 32 |") && table.contains("+0.0 pts"), "{table}");

    let bad = fomaml()
        .arg("eval")
        .arg("--checkpoint")
        .arg(&checkpoint)
        .args(["--eval-tasks", "nope", "--out"])
        .arg(run.path().join("c.json"))
        .output()
        .unwrap();
    assert_one_line_error(&bad, &["--eval-tasks", "nope"]);
    let too_many = fomaml()
        .arg("eval")
        .arg("--checkpoint")
        .arg(&checkpoint)
        .args(["--n-shots", "17", "--out"])
        .arg(run.path().join("c.json"))
        .output()
        .unwrap();
    assert_one_line_error(&too_many, &["17 shots", "16 examples"]);
    assert!(!run.path().join("c.json").exists(), "a failed eval left a result file");
}
