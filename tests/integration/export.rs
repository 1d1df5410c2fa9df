//! `fomaml export`: a trained checkpoint as a Hugging Face directory that transformers loads, with
//! the logits our decoder computes from the same checkpoint.

use std::path::Path;
use std::process::Command;

use crate::common::train::synthetic_run;
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::model::{load_weights, ModelConfig};
use fomaml::train::Trainer;
use tch::{Device, Kind};

#[test]
fn exported_checkpoint_loads_in_transformers_with_matching_logits() {
    let spec = SyntheticSpec { train_tasks: 4, eval_tasks: 0, support: 8, query: 8, test: 0, seed: 11 };
    let mut run = synthetic_run(&spec);
    (run.config.trainer.total_steps, run.config.trainer.test_freq) = (3, 0);
    let summary = Trainer::new(run.config.clone()).unwrap().run().unwrap();
    let out = run.path().join("exported");
    let status = Command::new(env!("CARGO_BIN_EXE_fomaml"))
        .args(["export", summary.last_checkpoint.as_ref().unwrap().to_str().unwrap(), out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    // Refused without --force, then replaced with it.
    let again = Command::new(env!("CARGO_BIN_EXE_fomaml"))
        .args(["export", summary.last_checkpoint.as_ref().unwrap().to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    // Issue: `--force` replaces OUT whole, so OUT may never be, hold or lie inside the run.
    let checkpoint = summary.last_checkpoint.as_ref().unwrap();
    let run_dir = Path::new(&run.config.trainer.default_local_dir);
    for (target, how) in [
        (run_dir.to_path_buf(), "is"),
        (run_dir.join("checkpoints"), "lies inside"),
        (run.path().to_path_buf(), "contains"),
        (checkpoint.clone(), "lies inside"),
    ] {
        let refused = Command::new(env!("CARGO_BIN_EXE_fomaml"))
            .args(["export", checkpoint.to_str().unwrap(), target.to_str().unwrap(), "--force"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && err.contains(how) && err.contains("the run directory"),
            "{}: {err}",
            target.display()
        );
        assert!(
            checkpoint.join("meta.json").is_file() && run_dir.join("metrics.jsonl").is_file(),
            "the run was touched"
        );
    }

    let weights = crate::common::assert_transformers_logits_match(&out, run.path());

    // The export holds the trained θ, not the initial weights.
    let cfg = ModelConfig::from_dir(&out).unwrap();
    let initial = load_weights(Path::new(&run.config.model.partial_pretrain), &cfg, Kind::Float, Device::Cpu).unwrap();
    let moved = initial.iter().any(|(n, t)| !t.equal(&weights.get(n).unwrap()));
    assert!(moved, "the exported weights are the initial ones");
}
