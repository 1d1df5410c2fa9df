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
        assert!(summary.last_checkpoint.join("meta.json").is_file(), "{name}: no checkpoint");
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
    let load = |cap: Option<usize>, seed: u64| {
        let mut data = config.data.clone();
        data.support_max_samples = cap;
        let encoding = Encoding::new(&tokenizer, &data);
        let task = TaskData::load(section, &encoding, &data, seed, 0, 1).unwrap();
        task.examples(Split::Support).iter().map(|e| e.input_ids.clone()).collect::<Vec<_>>()
    };
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
}
