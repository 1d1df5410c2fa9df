//! `fomaml eval` and `fomaml compare` end to end on a briefly trained synthetic run.

use std::process::Command;

use crate::common::assert_one_line_error;
use crate::common::train::synthetic_run;
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::train::Trainer;
use serde_json::Value;

fn fomaml() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fomaml"))
}

#[test]
fn eval_writes_the_original_layout_repeatably_and_compare_reads_it() {
    let spec = SyntheticSpec { train_tasks: 6, eval_tasks: 2, support: 16, query: 8, test: 8, seed: 5 };
    let mut run = synthetic_run(&spec);
    (run.config.trainer.total_steps, run.config.trainer.test_freq, run.config.meta.outer_lr) = (30, 0, 1e-2);
    let checkpoint = Trainer::new(run.config.clone()).unwrap().run().unwrap().last_checkpoint.unwrap();
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
    assert!(stdout.contains("| task | shots | steps | loss | accuracy | cut at max tokens |"), "{stdout}");
    assert!(stdout.contains("adapting on the shots: SGD, lr "), "FOMAML's inner loop: {stdout}");
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
                // Every response here (`\boxed{X}` + eos) has as many tokens as every other, so
                // the run's token-weighted loss is the plain mean of the items' losses.
                let items: Vec<f64> =
                    run["item_loss"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect();
                assert_eq!(items.len(), 8, "a loss per item of {task}");
                let mean = items.iter().sum::<f64>() / 8.0;
                assert!((mean - run["loss"].as_f64().unwrap()).abs() < 1e-9, "{task} {n}: {mean} vs {}", run["loss"]);
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
    assert!(stdout.contains("shots: Adam (fresh state)") && stdout.contains("clipped to norm"), "{stdout}");
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
    assert!(same.status.success() && table.contains("| 4 | 2 | 16 |") && table.contains("+0.0 pts"), "{table}");
    assert!(
        table.contains("The reference answers' loss") && table.contains("| +0.0000 | [+0.0000, +0.0000] |"),
        "{table}"
    );

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

/// Issue: with n shots, adaptation makes whole passes over all n (it used to cycle through the
/// first K·B), the rule and the passes go into the results, generations cut by the token budget
/// are counted, and --log-samples writes every judged generation.
#[test]
fn every_shot_is_used_and_the_results_say_how_adaptation_ran() {
    let spec = SyntheticSpec { train_tasks: 4, eval_tasks: 1, support: 32, query: 6, test: 0, seed: 9 };
    let run = synthetic_run(&spec);
    let config = run.path().join("config.yaml");
    std::fs::write(&config, run.config.to_yaml()).unwrap();
    let out = run.path().join("curve.json");
    // `fomaml eval --config` with `args`: its stdout and the results it wrote.
    let eval = |args: &[&str]| {
        let o = fomaml().args(["eval", "--config"]).arg(&config).args(args).arg("--out").arg(&out).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let json: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        (String::from_utf8_lossy(&o.stdout).into_owned(), json)
    };
    let (stdout, json) =
        eval(&["--n-shots", "0", "5", "10", "25", "--n-runs", "2", "--max-new-tokens", "3", "--log-samples"]);
    assert!(stdout.contains("whole passes over the shots, at least one and at least 5 steps"), "{stdout}");
    let (task, curve) = json.as_object().unwrap().iter().next().unwrap();
    // The embedded default: K = 5 inner steps of batches of 8.
    for (n, passes, steps) in [(5, 5, 5), (10, 3, 6), (25, 2, 8)] {
        let a = &curve[n.to_string()]["adaptation"];
        assert_eq!(a["shots_used"], n, "{task} {n}: {a}");
        assert_eq!((a["passes"].as_u64(), a["steps"].as_u64()), (Some(passes), Some(steps)), "{n}: {a}");
        assert!(a["rule"].as_str().unwrap().starts_with("SGD, lr 0.05"), "{a}");
        // Three new tokens never reach an answer's end: every generation is cut.
        assert_eq!(curve[n.to_string()]["truncated_fraction"], 1.0);
        for run in curve[n.to_string()]["runs"].as_array().unwrap() {
            assert_eq!(run["truncated"].as_array().unwrap().len(), 6);
        }
    }
    let samples = std::fs::read_to_string(run.path().join("curve.samples.jsonl")).unwrap();
    let lines: Vec<Value> = samples.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6 * (1 + 2 * 3), "one line per item, run and number of shots");
    let first = &lines[0];
    for key in ["task", "shots", "run", "item", "prompt", "generated", "extracted", "gold", "correct", "stop"] {
        assert!(first.get(key).is_some(), "{key} missing from {first}");
    }
    assert_eq!((first["stop"].as_str(), first["shots"].as_u64()), (Some("length"), Some(0)));

    // Exactly two passes, and the original evaluation's protocol (one shot per step, 100 passes).
    let (_, json) = eval(&["--n-shots", "10", "--n-runs", "1", "--max-new-tokens", "1", "--epochs", "2"]);
    assert_eq!(json[task]["10"]["adaptation"]["steps"], 4);
    let (stdout, json) = eval(&["--n-shots", "2", "--n-runs", "1", "--max-new-tokens", "1", "--protocol", "original"]);
    assert!(stdout.contains("Adam (fresh state), lr 0.0001, betas (0.9, 0.999), weight decay 0.01"), "{stdout}");
    assert!(stdout.contains("100 passes over the shots") && stdout.contains("batches of up to 1 rows"), "{stdout}");
    assert_eq!(json[task]["2"]["adaptation"]["steps"], 200);

    let zero_runs =
        fomaml().args(["eval", "--config"]).arg(&config).args(["--n-runs", "0", "--out", "x.json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&zero_runs.stderr);
    assert!(!zero_runs.status.success() && stderr.contains("'--n-runs <N_RUNS>': must be at least 1"), "{stderr}");
}

/// Issue: `eval --config` on a LoRA config adapts a fresh adapter over the frozen base, as the
/// LoRA runs do, not the whole model.
#[test]
fn a_lora_config_is_evaluated_with_a_fresh_adapter() {
    let spec = SyntheticSpec { train_tasks: 4, eval_tasks: 1, support: 8, query: 4, test: 0, seed: 9 };
    let mut run = synthetic_run(&spec);
    (run.config.model.lora_rank, run.config.model.lora_alpha) = (4, 8.0);
    let config = run.path().join("lora.yaml");
    std::fs::write(&config, run.config.to_yaml()).unwrap();
    let full = run.path().join("full.yaml");
    run.config.model.lora_rank = 0;
    std::fs::write(&full, run.config.to_yaml()).unwrap();
    let eval = |config: &std::path::Path, out: &str| {
        let out = run.path().join(out);
        let o = fomaml()
            .args(["eval", "--config"])
            .arg(config)
            .args(["--n-shots", "0", "4", "--n-runs", "1", "--max-new-tokens", "1", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let json: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let curve = json.as_object().unwrap().values().next().unwrap().clone();
        (curve["0"]["loss_mean"].as_f64().unwrap(), curve["4"]["loss_mean"].as_f64().unwrap())
    };
    let (lora_0, lora_4) = eval(&config, "lora.json");
    let (full_0, full_4) = eval(&full, "full.json");
    assert_eq!(lora_0, full_0, "a fresh adapter (B = 0) leaves the model unchanged before adapting");
    assert_ne!(lora_4, full_4, "adapting an adapter is not adapting the whole model");
    assert_ne!(lora_4, lora_0, "the adapter adapts");
}
