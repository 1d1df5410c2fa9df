//! Every config in configs/bins/ trains the embedded default: the synthetic tasks prepared as the
//! README says, each algorithm for a few meta-steps, with finite losses and a checkpoint.

use std::path::Path;

use fomaml::config::Config;
use fomaml::train::Trainer;

#[test]
fn every_algorithm_config_trains_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    // The layout the configs expect: data/bins/ beside configs/bins/.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fomaml"))
        .args(["prepare-data", "synthetic", "--quiet", "--out"])
        .arg(dir.path().join("data/bins"))
        .status()
        .unwrap();
    assert!(status.success());
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/bins");
    let copied = dir.path().join("configs/bins");
    std::fs::create_dir_all(&copied).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&configs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 7, "{names:?}");
    for name in &names {
        std::fs::copy(configs.join(name), copied.join(name)).unwrap();
        let run_dir = dir.path().join("runs").join(name);
        let overrides = [
            "trainer.total_steps=2".to_string(),
            "trainer.test_freq=2".into(),
            "trainer.num_threads=1".into(),
            format!("trainer.default_local_dir={}", run_dir.display()),
        ];
        let config = Config::load(&copied.join(name), &overrides).unwrap_or_else(|e| panic!("{name}: {e}"));
        let summary = Trainer::new(config).unwrap().run().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let record = summary.last_record.expect("a logged step");
        let value = |key: &str| record.scalars.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let loss = value("meta/loss").unwrap_or_else(|| panic!("{name}: no meta/loss"));
        assert!(loss.is_finite() && loss > 0.0, "{name}: meta/loss {loss}");
        assert!(value("eval/loss_after_adaptation").is_some_and(f64::is_finite), "{name}: no evaluation");
        assert!(summary.last_checkpoint.as_ref().unwrap().join("meta.json").is_file(), "{name}: no checkpoint");
    }
}

/// `data.support_max_samples` keeps a seeded sample of the file's rows (in file order), not its
/// head: prepared files can be sorted (by level, by source).
#[test]
fn a_row_cap_is_a_seeded_sample_not_the_first_rows() {
    use fomaml::data::tasks::{Encoding, Split, TaskData};
    use fomaml::data::ChatTokenizer;
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fomaml"))
        .args(["prepare-data", "synthetic", "--quiet", "--out"])
        .arg(dir.path().join("bins"))
        .status()
        .unwrap();
    assert!(status.success());
    let config = Config::load(&dir.path().join("bins/config.yaml"), &[]).unwrap();
    let tokenizer = ChatTokenizer::from_dir(Path::new(&config.model.partial_pretrain)).unwrap();
    let section = &config.meta.tasks[0];
    let load_with = |cap: Option<i64>, task_cap: Option<i64>, shuffle: bool, seed: u64| {
        let mut data = config.data.clone();
        (data.support_max_samples, data.shuffle) = (cap, shuffle);
        let mut section = section.clone();
        section.support_max_samples = task_cap;
        let encoding = Encoding::new(&tokenizer, &data);
        let task = TaskData::load(&section, &encoding, &data, seed, 0, 1).unwrap();
        task.examples(Split::Support).iter().map(|e| e.input_ids.clone()).collect::<Vec<_>>()
    };
    let load = |cap: Option<i64>, seed: u64| load_with(cap, None, true, seed);
    let all = load(None, 42);
    let capped = load(Some(8), 42);
    assert_eq!(capped.len(), 8);
    assert_ne!(capped, all[..8], "the cap took the first rows");
    // A subset, in file order, repeatable, and another seed draws another sample.
    let positions: Vec<usize> = capped.iter().map(|c| all.iter().position(|a| a == c).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(capped, load(Some(8), 42));
    assert_ne!(capped, load(Some(8), 43));
    // Caps nest: the sample-count ablations train on growing supersets.
    assert!(load(Some(4), 42).iter().all(|r| capped.contains(r)));
    // The original trainer's spellings: a task's own cap wins, -1 is every row, and
    // `data.shuffle: false` keeps the first rows.
    assert_eq!(load_with(Some(100), Some(8), true, 42), capped);
    assert_eq!(load_with(Some(8), Some(-1), true, 42), all);
    assert_eq!(load_with(Some(8), None, false, 42), all[..8]);
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/original").join(name)
}

fn resolve(name: &str) -> fomaml::config::Resolved {
    Config::resolve(&fixture(name), &[]).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Issue: the original trainer's config files load unchanged apart from paths, every key either
/// honoured or accepted with a notice; the fragments its documentation prints load verbatim.
#[test]
fn the_original_trainers_configs_load_as_they_are() {
    use fomaml::config::schema::{Algorithm, ResumeMode};
    use fomaml::config::Source;

    let r = resolve("maml_sft_example.yaml");
    let c = &r.config;
    assert_eq!((c.meta.algorithm, c.meta.inner_lr, c.meta.outer_lr), (Algorithm::Fomaml, 1e-4, 3e-5));
    assert_eq!((c.optim.warmup_steps_ratio, c.optim.betas), (0.1, [0.9, 0.999]));
    assert_eq!((c.checkpoint.save_freq, c.checkpoint.max_ckpt_to_keep), (500, Some(5)));
    assert_eq!((c.checkpoint.resume_mode, c.checkpoint.resume_path.as_deref()), (ResumeMode::Auto, None));
    assert_eq!((c.trainer.seed, c.data.shuffle), (42, true));
    assert_eq!(c.trainer.logger, ["tensorboard"]);
    assert_eq!((c.meta.tasks[3].support_max_samples, c.meta.tasks[3].query_max_samples), (Some(1000), Some(500)));
    let origin = fixture("maml_sft_example.yaml").display().to_string();
    assert_eq!(
        r.source_of("checkpoint.save_freq"),
        Some(&Source::Translated { origin: origin.clone(), key: "trainer.save_freq".into() })
    );
    assert_eq!(r.source_of("meta.inner_lr"), Some(&Source::File(origin)));
    assert_eq!(r.source_of("meta.fresh_support_batch_per_step"), None);
    for key in [
        "model.use_fsdp",
        "model.fsdp_config",
        "data.use_shm",
        "data.pad_mode",
        "data.balance_dp_token",
        "trainer.default_hdfs_dir",
        "checkpoint.save_contents",
        "checkpoint.load_contents",
        "trainer.logger `wandb`",
    ] {
        assert!(r.notices.iter().any(|n| n.contains(key)), "no notice for {key}: {:#?}", r.notices);
    }

    let r = resolve("qwen3_4b_math.yaml");
    assert_eq!((r.config.meta.tasks.len(), r.config.meta.tasks[0].support_max_samples), (7, Some(-1)));

    let r = resolve("meta_lora_example.yaml");
    let c = &r.config;
    assert_eq!((c.meta.algorithm, c.meta.outer_lr, c.meta.num_inner_steps), (Algorithm::MetaLora, 5e-5, 10));
    assert_eq!((c.model.lora_rank, c.model.lora_alpha, c.model.lora_dropout), (16, 32.0, 0.05));
    assert_eq!(c.meta.tasks[4].support_files, ["DATA_DIR/science_physics_support.parquet"]);
    assert_eq!((c.meta.tasks[4].support_max_samples, c.meta.tasks[4].query_max_samples), (Some(100), Some(200)));

    // The config the original's prepare_math_science_data.py generates: its FOMAML trainer never
    // applied the LoRA keys it sets, so the run is full-parameter here too, with a notice.
    let r = resolve("config_fomaml_math_science.yaml");
    let c = &r.config;
    assert_eq!((c.meta.algorithm, c.model.lora_rank), (Algorithm::Fomaml, 0));
    assert_eq!((c.meta.inner_lr, c.meta.outer_lr, c.meta.meta_batch_size), (5e-5, 2e-5, 3));
    assert_eq!(c.meta.tasks[7].name, "word_problems");
    assert!(
        r.notices.iter().any(|n| n.contains("`model.lora_rank: 16`") && n.contains("`model.target_modules")),
        "{:#?}",
        r.notices
    );

    let c = resolve("changelog_fragment.yaml").config;
    assert_eq!((c.meta.inner_lr, c.meta.outer_lr, c.meta.meta_batch_size), (1e-4, 3e-5, 4));
    let c = resolve("guide_fragment.yaml").config;
    assert_eq!((c.meta.inner_lr, c.meta.outer_lr, c.meta.tasks[0].name.as_str()), (1e-4, 3e-5, "medical"));
}

/// `fomaml config show` on an original config: the resolved YAML, and with --sources where each
/// value came from; the notices go to stderr.
#[test]
fn config_show_says_where_every_value_came_from() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fomaml"))
        .args(["config", "show", "--sources", "--config"])
        .arg(fixture("qwen3_4b_math.yaml"))
        .arg("meta.num_inner_steps=3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key}:\n{stdout}"))
            .to_string()
    };
    assert!(line("meta.outer_lr").contains("(original key `optim.lr`)"), "{}", line("meta.outer_lr"));
    assert!(line("meta.num_inner_steps").ends_with("# override `meta.num_inner_steps=3`"));
    assert!(line("meta.inner_lr").ends_with("qwen3_4b_math.yaml"), "{}", line("meta.inner_lr"));
    assert!(line("meta.fresh_support_batch_per_step").ends_with("# default"));
    assert!(stderr.contains("note: ") && stderr.contains("`model.use_fsdp` has no effect here"), "{stderr}");
}

/// Issue: bad settings are refused when the config loads, all unknown keys at once, each error
/// naming its key and where the value came from.
#[test]
fn settings_are_checked_at_load_and_errors_name_their_origin() {
    let err = |yaml: &str, overrides: &[&str]| {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Config::from_yaml(yaml, "x.yaml", &overrides).unwrap_err().to_string()
    };
    let e = err("meta: {outer_lr: 0.001}\n", &["meta.outer_lr=-0.001"]);
    assert!(e.starts_with("override `meta.outer_lr=-0.001`: `meta.outer_lr`: -0.001 is out of range"), "{e}");
    let e = err("meta: {outer_lr: -0.001}\n", &[]);
    assert!(e.starts_with("x.yaml: `meta.outer_lr`"), "{e}");
    let e = err("meta:\n  inner_lr: .nan\n", &[]);
    assert!(e.contains("`meta.inner_lr`: NaN is not a finite number"), "{e}");
    let e = err("meta:\n  inner_lr: 0.1\nmeta:\n  outer_lr: 0.1\n", &[]);
    assert!(e.contains("`meta` appears twice"), "{e}");
    let e = err("checkpoint: {resume_path: /ckpt}\n", &[]);
    assert!(e.contains("`checkpoint.resume_path`") && e.contains("resume_mode: resume_path"), "{e}");
    let e = err("meta: {inner_lrr: 1, outr_lr: 2}\ntrainer: {zzz: 1}\n", &[]);
    assert!(e.starts_with("x.yaml: 3 unknown keys:"), "{e}");
    assert!(e.contains("`meta.inner_lrr` (did you mean `meta.inner_lr`?)") && e.contains("`trainer.zzz`"), "{e}");
    let e = err("optim: {lr: 1.0e-4}\nmeta: {outer_lr: 3.0e-5}\n", &[]);
    assert!(e.contains("`optim.lr: 0.0001`") && e.contains("meta.outer_lr"), "{e}");
    let e = err("", &["meta.tasks.0.name=x"]);
    assert!(e.contains("override `meta.tasks.0.name=x`"), "{e}");
    let e = err("meta: {tasks: [{name: a}]}\n", &["meta.tasks.0.nmae=x"]);
    assert!(e.contains("override `meta.tasks.0.nmae=x`: unknown key `meta.tasks.0.nmae`"), "{e}");
}
