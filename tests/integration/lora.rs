//! LoRA: the base stays frozen (no gradient, no optimizer state, not in checkpoints), FOMAML-LoRA
//! trains, the adapter exports in PEFT's format and the Python `peft` package loads it onto the
//! transformers model with our logits; `--merge` gives a plain HF model with the same logits.

use std::path::Path;
use std::process::Command;

use crate::common::train::synthetic_run;
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::model::{load_weights, CausalLm, ModelConfig};
use fomaml::train::Trainer;
use tch::{Device, Kind};

const PEFT_LOGITS: &str = r#"
import sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from peft import PeftModel
base_dir, adapter_dir, merged_dir, out = sys.argv[1:5]
ids = torch.tensor([[3, 41, 80, 85, 7, 27, 30, 2, 4, 67, 73, 86, 95, 76, 75, 98, 41, 100, 2]])
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter_dir).eval()
merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
with torch.no_grad():
    save_file({"ids": ids, "peft": model(ids).logits.contiguous(), "merged": merged(ids).logits.contiguous()}, out)
"#;

#[test]
fn fomaml_lora_trains_the_adapter_only_and_round_trips_through_peft() {
    let spec = SyntheticSpec { train_tasks: 4, eval_tasks: 0, support: 8, query: 8, test: 0, seed: 17 };
    let mut run = synthetic_run(&spec);
    let model = &mut run.config.model;
    (model.lora_rank, model.lora_alpha, model.lora_dropout) = (4, 8.0, 0.1);
    model.target_modules = serde_json::json!(["q_proj", "v_proj", "down_proj"]);
    (run.config.trainer.total_steps, run.config.trainer.test_freq) = (4, 0);
    run.config.meta.outer_lr = 1e-2;
    let trainer = Trainer::new(run.config.clone()).unwrap();
    let names: Vec<String> = trainer.learner().names().to_vec();
    assert_eq!(names.len(), 2 * 3 * 2, "A and B for 3 modules in 2 layers: {names:?}");
    assert!(names.iter().all(|n| n.contains(".lora_")));
    let summary = trainer.run().unwrap();

    // The checkpoint holds the adapter alone (small), and the optimizer state only for it.
    let loaded = fomaml::checkpoint::load(summary.last_checkpoint.as_ref().unwrap()).unwrap();
    let saved = &loaded.files["model.safetensors"];
    assert_eq!(saved.len(), 12);
    assert_eq!(loaded.files["optimizer.safetensors"].len(), 24);
    assert!(saved
        .iter()
        .any(|(n, t)| n.ends_with("lora_B.weight") && t.abs().sum(Kind::Float).double_value(&[]) > 0.0));

    let base_dir = Path::new(&run.config.model.partial_pretrain);
    let adapter_dir = run.path().join("adapter");
    let merged_dir = run.path().join("merged");
    let ckpt = summary.last_checkpoint.as_ref().unwrap().to_str().unwrap();
    for (out, extra) in [(&adapter_dir, None), (&merged_dir, Some("--merge"))] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fomaml"));
        cmd.args(["export", ckpt, out.to_str().unwrap()]);
        cmd.args(extra);
        let result = cmd.output().unwrap();
        assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    }
    assert!(adapter_dir.join("adapter_config.json").is_file());

    let reference = run.path().join("peft.safetensors");
    let args = [base_dir, adapter_dir.as_path(), merged_dir.as_path(), reference.as_path()];
    let expected = crate::common::python_reference(PEFT_LOGITS, &args, &reference, "peft could not load the adapter");

    // Our logits: the merged export through our decoder, and base + adapter unmerged.
    let cfg = ModelConfig::from_dir(&merged_dir).unwrap();
    let merged = load_weights(&merged_dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    let ours = tch::no_grad(|| CausalLm::new(&cfg, &merged).unwrap().forward(&expected["ids"], None, None));
    let mut with_adapter = load_weights(base_dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    for (name, t) in saved {
        with_adapter.insert(name.clone(), t.shallow_clone());
    }
    let unmerged = tch::no_grad(|| {
        CausalLm::new(&cfg, &with_adapter).unwrap().with_lora(2.0, 0.1, false).forward(&expected["ids"], None, None)
    });
    for (what, ours, theirs) in [
        ("merged vs peft", &ours, &expected["peft"]),
        ("merged vs transformers", &ours, &expected["merged"]),
        ("unmerged vs peft", &unmerged, &expected["peft"]),
    ] {
        let diff = (ours - theirs).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{what}: logits differ by {diff}");
    }
    // And the adapter changed the model.
    let base = load_weights(base_dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    let before = tch::no_grad(|| CausalLm::new(&cfg, &base).unwrap().forward(&expected["ids"], None, None));
    assert!((&before - &ours).abs().max().double_value(&[]) > 1e-4);
}

#[test]
fn bad_lora_settings_name_the_key() {
    let spec = SyntheticSpec { train_tasks: 4, eval_tasks: 0, support: 4, query: 4, test: 0, seed: 1 };
    let mut run = synthetic_run(&spec);
    run.config.model.lora_rank = 4;
    run.config.model.target_modules = serde_json::json!(["qproj"]);
    let err = Trainer::new(run.config.clone()).err().unwrap();
    assert!(format!("{err:#}").contains("model.target_modules: `qproj`"), "{err:#}");
}
