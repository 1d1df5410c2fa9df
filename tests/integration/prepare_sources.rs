//! `fomaml prepare-data gsm8k | scienceqa | math-science` on fixtures written by the `datasets`
//! library in each layout users keep them in (tests/fixtures/hub/make.py): the hub's parquet
//! folder, a save_to_disk folder, jsonl, and single files; malformed rows and missing columns; and
//! the combined set trained and evaluated on the tiny model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fomaml::config::Config;
use fomaml::data::task_files::{read_file, Columns, Example};

use super::common::assert_one_line_error;
use super::prepare_data::math_tree;

fn fixture(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub").join(rel).display().to_string()
}

fn fomaml(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fomaml")).args(args).output().expect("run fomaml")
}

fn prepare(args: &[&str]) -> String {
    let out = fomaml(&[&["prepare-data"][..], args].concat());
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read(path: &Path) -> Vec<Example> {
    read_file(path, &Columns { prompt: "prompt".into(), response: "response".into() }, None).unwrap()
}

/// Every task's three splits under `out`, by task name.
fn splits(out: &Path, tasks: &[&str]) -> Vec<(String, [Vec<Example>; 3])> {
    tasks
        .iter()
        .map(|t| {
            let r = |s: &str| read(&out.join(t).join(format!("{s}.parquet")));
            (t.to_string(), [r("support"), r("query"), r("test")])
        })
        .collect()
}

#[test]
fn gsm8k_prepares_alike_from_every_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let layouts = [
        "gsm8k/hub",
        "gsm8k/saved",
        "gsm8k/train.jsonl",
        "gsm8k/hub/main/train-00000-of-00001.parquet",
        "gsm8k/saved/train/data-00000-of-00001.arrow",
    ];
    let mut first = None;
    for (i, layout) in layouts.iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let summary = prepare(&["gsm8k", "--source", &fixture(layout), "--out", out.to_str().unwrap()]);
        assert!(summary.contains("GSM8K: 20 problems") && summary.contains("1 task ->"), "{layout}: {summary}");
        let got = splits(&out, &["word_problems"]);
        // The original's shares: round(20 x 0.25) = 5 support, round(20 x 0.35) = 7 query, 8 test.
        assert_eq!(got[0].1.each_ref().map(Vec::len), [5, 7, 8], "{layout}");
        for e in got[0].1.iter().flatten() {
            assert!(e.response.ends_with('}') && e.response.contains("\\boxed{"), "{}", e.response);
            assert!(!e.response.contains("<<") && !e.response.contains("####"), "{}", e.response);
            assert!(e.prompt.ends_with("within \\boxed{}."), "{}", e.prompt);
        }
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "{layout} splits differently from {}", layouts[0]),
        }
    }
    // A hub folder's test split is there to be chosen, and pooled with train.
    let out = tmp.path().join("both");
    let summary = prepare(&[
        "gsm8k",
        "--source",
        &fixture("gsm8k/hub"),
        "--splits",
        "train,test",
        "--gsm8k-task",
        "gsm",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(summary.contains("GSM8K: 25 problems"), "{summary}");
    assert!(out.join("gsm/test.parquet").is_file());
}

#[test]
fn scienceqa_prepares_alike_from_every_layout_and_leaves_image_items_out() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = ["science_biology", "science_chemistry", "science_physics"];
    let mut first = None;
    for (i, layout) in ["scienceqa/hub", "scienceqa/saved", "scienceqa/train.jsonl"].iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let summary = prepare(&["scienceqa", "--source", &fixture(layout), "--out", out.to_str().unwrap()]);
        // 10 items per topic in train, 2 of them with an image; geography is not kept.
        assert!(
            summary.contains("24 questions") && summary.contains("6 with an image and 10 of other groups left out"),
            "{layout}: {summary}"
        );
        assert!(!out.join("science_geography").exists());
        let got = splits(&out, &tasks);
        for (task, parts) in &got {
            assert_eq!(parts.each_ref().map(Vec::len), [2, 2, 4], "{layout} {task}");
            for e in parts.iter().flatten() {
                assert!(e.prompt.contains("\n\nOptions:\n(A) ") && e.prompt.contains("\n(B) "), "{}", e.prompt);
                // The fixture's solution names the right letter: the boxed one must agree.
                let letter = e.response.rsplit("\\boxed{").next().unwrap().trim_end_matches('}');
                assert!(e.response.starts_with(&format!("Option {letter} states")), "{}", e.response);
                assert!(fomaml::eval::choice::judge(&e.prompt, &format!("\\boxed{{({letter})}}"), &e.response));
            }
        }
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got, "{layout} splits differently from the hub's files"),
        }
    }

    // The original's placement: the hint leaves the prompt for the response; by subject, all kept.
    let out = tmp.path().join("hint");
    let src = fixture("scienceqa/hub");
    prepare(&[
        "scienceqa",
        "--source",
        &src,
        "--reasoning",
        "hint",
        "--group-by",
        "subject",
        "--out",
        out.to_str().unwrap(),
    ]);
    let rows: Vec<Example> = splits(&out, &["science_natural_science", "science_social_science"])
        .into_iter()
        .flat_map(|(_, p)| p.concat())
        .collect();
    assert_eq!(rows.len(), 32);
    assert!(rows.iter().all(|e| !e.prompt.contains("Context:")));
    assert!(rows.iter().any(|e| e.response.starts_with("Read about")));
}

#[test]
fn malformed_rows_and_missing_columns_are_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 6] = [
        (&["gsm8k", "--source", &fixture("gsm8k/bad/no_final_answer.jsonl")], &["no_final_answer.jsonl:3", "#### N"]),
        (
            &["gsm8k", "--source", &fixture("gsm8k/bad/no_answer_column.parquet")],
            &["no_answer_column.parquet", "no column `answer`", "columns: question"],
        ),
        (
            &["gsm8k", "--source", &fixture("gsm8k/hub"), "--splits", "validation"],
            &["no split validation", "splits: test, train"],
        ),
        (
            &["scienceqa", "--source", &fixture("scienceqa/bad/answer_out_of_range.jsonl")],
            &["answer_out_of_range.jsonl:2", "`answer` must index `choices`", "got 7"],
        ),
        (&["scienceqa", "--source", &fixture("scienceqa/bad/no_choices_column.parquet")], &["no column `choices`"]),
        (
            &["scienceqa", "--source", &fixture("scienceqa/hub"), "--keep", "astronomy"],
            &["topic `astronomy`", "geography"],
        ),
    ];
    for (args, needles) in cases {
        let run = fomaml(&[&["prepare-data"][..], args, &["--out", o]].concat());
        assert_one_line_error(&run, needles);
        assert!(!out.exists(), "{args:?} left {o} behind");
    }
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "nothing half-written may remain: {leftovers:?}");
}

/// The original trainer's math + science set from all three sources, with the mixed SFT file.
fn math_science(root: &Path) -> PathBuf {
    math_tree(&root.join("MATH"));
    let out = root.join("math_science");
    let summary = prepare(&[
        "math-science",
        "--math",
        root.join("MATH").to_str().unwrap(),
        "--gsm8k",
        &fixture("gsm8k/hub"),
        "--scienceqa",
        &fixture("scienceqa/saved"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(summary.contains("6 tasks ->") && summary.contains("MATH: 60 problems"), "{summary}");
    out
}

#[test]
fn math_science_builds_the_set_one_config_and_the_mixed_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = math_science(tmp.path());
    let config = Config::load(&out.join("config.yaml"), &[]).unwrap();
    let names: Vec<&str> = config.meta.tasks.iter().map(|t| t.name.as_str()).collect();
    let expected = [
        "algebra",
        "counting_and_probability",
        "word_problems",
        "science_biology",
        "science_chemistry",
        "science_physics",
    ];
    assert_eq!(names, expected);
    // MATH within math-science takes the original's 0.2 / 0.3 per level: 2 + 3 of each level's 10.
    let math = splits(&out, &["algebra"]);
    assert_eq!(math[0].1.each_ref().map(Vec::len), [6, 9, 15]);

    let all = splits(&out, &expected);
    let trained: usize = all.iter().map(|(_, p)| p[0].len() + p[1].len()).sum();
    let mixed = read(&out.join("sft_mixed.parquet"));
    assert_eq!(mixed.len(), trained, "the mixed file is every task's support + query rows");
    let mut pooled: Vec<&Example> = all.iter().flat_map(|(_, p)| p[0].iter().chain(&p[1])).collect();
    let mut got: Vec<&Example> = mixed.iter().collect();
    let key = |e: &&Example| (e.prompt.clone(), e.response.clone());
    pooled.sort_by_key(key);
    got.sort_by_key(key);
    assert_eq!(pooled, got);
    assert_ne!(mixed.first(), pooled.first().copied(), "the mixed rows are shuffled");

    let sft = Config::load(&out.join("sft_mixed.yaml"), &[]).unwrap();
    assert_eq!(sft.meta.tasks.len(), 1);
    assert_eq!(sft.meta.eval_tasks.len(), 6);
    assert_eq!(sft.meta.eval_tasks[2].query_files, config.meta.tasks[2].test_files, "evaluated on the test rows");

    // Two sources may not make one task name.
    let run = fomaml(&[
        "prepare-data",
        "math-science",
        "--math",
        tmp.path().join("MATH").to_str().unwrap(),
        "--gsm8k",
        &fixture("gsm8k/hub"),
        "--gsm8k-task",
        "algebra",
        "--out",
        tmp.path().join("clash").to_str().unwrap(),
    ]);
    assert_one_line_error(&run, &["two sources make a task named `algebra`"]);
}

#[test]
fn the_math_science_set_trains_and_evaluates_on_the_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = math_science(tmp.path());
    let model = tmp.path().join("model");
    fomaml::data::synthetic::write_tiny_model(&model, 7).unwrap();
    let run = tmp.path().join("run");
    let settings = [
        format!("model.partial_pretrain={}", model.display()),
        "data.max_length=256".into(),
        "data.truncation=left".into(), // the tiny model has 256 positions
        "meta.num_inner_steps=1".into(),
        "meta.inner_batch_size=2".into(),
        "meta.query_batch_size=2".into(),
        "meta.meta_batch_size=2".into(),
        "trainer.total_steps=2".into(),
        "trainer.test_freq=0".into(),
        "trainer.device=cpu".into(),
        "trainer.logger=[jsonl]".into(),
        format!("trainer.default_local_dir={}", run.display()),
    ];
    let config = out.join("config.yaml");
    let mut train = vec!["train", "--config", config.to_str().unwrap()];
    train.extend(settings.iter().map(String::as_str));
    let trained = fomaml(&train);
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));

    let results = tmp.path().join("results.json");
    let checkpoint =
        run.join("checkpoints").join(std::fs::read_to_string(run.join("checkpoints/latest")).unwrap().trim());
    let eval = fomaml(&[
        "eval",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--n-shots",
        "0",
        "2",
        "--n-runs",
        "1",
        "--max-items",
        "2",
        "--max-new-tokens",
        "2",
        "--out",
        results.to_str().unwrap(),
    ]);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    for task in ["algebra", "word_problems", "science_physics"] {
        let acc = &json[task]["2"]["accuracy_mean"];
        assert!(acc.as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{task}: {json}");
    }
}

/// Copies the `.yaml` files under `from` to `to`, with `tasks_from: data/` made absolute under
/// `root` (config paths are from the working directory, which a test must not change).
fn copy_configs(from: &Path, to: &Path, root: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_configs(&entry.path(), &target, root);
        } else if entry.path().extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let text = text.replace("tasks_from: data/", &format!("tasks_from: {}/data/", root.display()));
            std::fs::write(target, text).unwrap();
        }
    }
}

#[test]
fn every_experiment_config_resolves_on_its_data_set() {
    let root = tempfile::tempdir().unwrap();
    let configs = root.path().join("configs/experiments");
    copy_configs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/experiments"), &configs, root.path());
    math_tree(&root.path().join("MATH"));
    let data = |name: &str| root.path().join("data").join(name).display().to_string();
    let math = root.path().join("MATH").display().to_string();
    prepare(&["math", "--source", &math, "--out", &data("math_meta")]);
    let (gsm, sqa) = (fixture("gsm8k/hub"), fixture("scienceqa/hub"));
    prepare(&[
        "math-science",
        "--math",
        &math,
        "--gsm8k",
        &gsm,
        "--scienceqa",
        &sqa,
        "--out",
        &data("math_science_meta"),
    ]);

    let mut checked = 0;
    for model in ["llama", "qwen3"] {
        for dir in [configs.join(model), configs.join(model).join("math_science")] {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                let Some(experiment) = path.file_stem().and_then(|s| s.to_str()).filter(|_| path.is_file()) else {
                    continue;
                };
                let config = Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let names: Vec<&str> = config.meta.tasks.iter().map(|t| t.name.as_str()).collect();
                let has = |t: &str| names.contains(&t);
                let expected = match (dir.ends_with("math_science"), experiment) {
                    (true, "exp5_lora_pooled") => {
                        names == ["mixed"] && config.meta.eval_tasks.iter().any(|t| t.name == "science_physics")
                    }
                    (true, _) => has("word_problems") && has("science_physics") && has("algebra"),
                    (false, e) if e.starts_with("exp4_lora_") => names == [&e["exp4_lora_".len()..]],
                    (false, _) => has("algebra") && has("counting_and_probability") && !has("word_problems"),
                };
                assert!(expected, "{} resolves to the wrong tasks: {names:?}", path.display());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * (21 + 4), "every experiment config, both models");
}
