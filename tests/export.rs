//! `fomaml export`: a trained checkpoint as a Hugging Face directory that transformers loads, with
//! the logits our decoder computes from the same checkpoint.

mod common;

use std::path::Path;
use std::process::Command;

use common::train::synthetic_run;
use common::venv_python;
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::model::{load_weights, CausalLm, ModelConfig};
use fomaml::tensor_io::read_safetensors;
use fomaml::train::Trainer;
use tch::{Device, Kind, Tensor};

const LOGITS_WITH_TRANSFORMERS: &str = r#"
import sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
text = tok.apply_chat_template([{"role": "user", "content": "Bin 42"}], tokenize=False, add_generation_prompt=True)
ids = torch.tensor([tok(text + "\\boxed{B}" + tok.eos_token, add_special_tokens=False)["input_ids"]])
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(ids).logits
save_file({"ids": ids, "logits": logits.contiguous()}, out)
"#;

#[test]
fn exported_checkpoint_loads_in_transformers_with_matching_logits() {
    let spec = SyntheticSpec { train_tasks: 4, eval_tasks: 0, support: 8, query: 8, test: 0, seed: 11 };
    let mut run = synthetic_run(&spec);
    (run.config.trainer.total_steps, run.config.trainer.test_freq) = (3, 0);
    let summary = Trainer::new(run.config.clone()).unwrap().run().unwrap();
    let out = run.path().join("exported");
    let status = Command::new(env!("CARGO_BIN_EXE_fomaml"))
        .args(["export", summary.last_checkpoint.to_str().unwrap(), out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    // Refused without --force, then replaced with it.
    let again = Command::new(env!("CARGO_BIN_EXE_fomaml"))
        .args(["export", summary.last_checkpoint.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let reference = run.path().join("reference.safetensors");
    let python = Command::new(venv_python())
        .args(["-c", LOGITS_WITH_TRANSFORMERS, out.to_str().unwrap(), reference.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        python.status.success(),
        "transformers could not load the export (run the tests through `make test`, which installs it):\n{}",
        String::from_utf8_lossy(&python.stderr)
    );
    let expected: std::collections::HashMap<String, Tensor> =
        read_safetensors(&reference).unwrap().into_iter().collect();

    // Our decoder on the checkpoint's θ, on the ids transformers' tokenizer produced.
    let cfg = ModelConfig::from_dir(&out).unwrap();
    let weights = load_weights(&out, &cfg, Kind::Float, Device::Cpu).unwrap();
    let model = CausalLm::new(&cfg, &weights).unwrap();
    let logits = tch::no_grad(|| model.forward(&expected["ids"], None, None));
    let diff = (&logits - &expected["logits"]).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "logits differ from transformers by {diff}");

    // The export holds the trained θ, not the initial weights.
    let initial = load_weights(Path::new(&run.config.model.partial_pretrain), &cfg, Kind::Float, Device::Cpu).unwrap();
    let moved = initial.iter().any(|(n, t)| !t.equal(&weights.get(n).unwrap()));
    assert!(moved, "the exported weights are the initial ones");
}
