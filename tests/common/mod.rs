//! Helpers shared by the integration tests: the golden fixtures made by tests/golden/make_golden.py.
#![allow(dead_code)]

pub mod memory;
pub mod train;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fomaml::tensor_io::read_safetensors;
use tch::{Kind, Tensor};

pub const ARCHS: [&str; 3] = ["llama", "qwen2", "qwen3"];

/// A test that cannot run here says so: on stderr, and in the file `FOMAML_SKIP_LOG` names (set by
/// scripts/test.sh, which lists the skips at the end of the run instead of letting them pass
/// silently).
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("FOMAML_SKIP_LOG") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        let written = file.and_then(|mut f| writeln!(f, "{line}"));
        written.unwrap_or_else(|e| panic!("FOMAML_SKIP_LOG {}: {e}", Path::new(&path).display()));
    }
}

pub fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden").join(arch)
}

/// transformers' outputs for `arch`: logits, loss, grad.<name>, inputs.
pub fn expected(arch: &str) -> HashMap<String, Tensor> {
    read_safetensors(&fixture(arch).join("expected.safetensors")).unwrap().into_iter().collect()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// ||a - b|| / ||b||
pub fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

/// Keeps the positions where `attention_mask` is 1: padded positions compute unscored garbage.
pub fn valid_positions(logits: &Tensor, attention_mask: &Tensor) -> Tensor {
    let vocab = *logits.size().last().unwrap();
    logits.masked_select(&attention_mask.to_kind(Kind::Bool).unsqueeze(-1)).view([-1, vocab])
}

/// A copy of a fixture directory that a test may damage.
pub fn copy_fixture(arch: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(arch)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// The torch venv's python (scripts/with-torch-env.sh sets VIRTUAL_ENV; `make test` installs the
/// Python packages the tests read their references with).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV").unwrap_or_else(|| {
        panic!("VIRTUAL_ENV is not set: run the tests through `make test` (it provides the torch venv)")
    });
    Path::new(&venv).join("bin/python")
}

/// Asserts a failure whose stderr is one line containing every `needle`.
pub fn assert_one_line_error(out: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(stderr.trim_end().lines().count(), 1, "error is not one line:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
}

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

/// transformers loads the exported HF directory `export` (tokenizer, config, weights) and its
/// logits on a chat-formatted synthetic example match our decoder's on the same weights within
/// 1e-4; returns those weights. `scratch` holds the reference file.
pub fn assert_transformers_logits_match(export: &Path, scratch: &Path) -> fomaml::model::Weights {
    use fomaml::model::{load_weights, CausalLm, ModelConfig};
    let reference = scratch.join("transformers_logits.safetensors");
    let expected = python_reference(
        LOGITS_WITH_TRANSFORMERS,
        &[export, &reference],
        &reference,
        "transformers could not load the export",
    );
    // Our decoder on the exported θ, on the ids transformers' tokenizer produced.
    let cfg = ModelConfig::from_dir(export).unwrap();
    let weights = load_weights(export, &cfg, Kind::Float, tch::Device::Cpu).unwrap();
    let model = CausalLm::new(&cfg, &weights).unwrap();
    let logits = tch::no_grad(|| model.forward(&expected["ids"], None, None));
    let diff = max_abs_diff(&logits, &expected["logits"]);
    assert!(diff < 1e-4, "logits differ from transformers by {diff}");
    weights
}

/// Runs `script` with the torch venv's python on `args` (it writes the safetensors file `out`) and
/// reads `out` back; `failure` starts the message when the script fails.
pub fn python_reference(script: &str, args: &[&Path], out: &Path, failure: &str) -> HashMap<String, Tensor> {
    let python = std::process::Command::new(venv_python()).args(["-c", script]).args(args).output().unwrap();
    assert!(
        python.status.success(),
        "{failure} (run the tests through `make test`, which installs the Python packages):\n{}",
        String::from_utf8_lossy(&python.stderr)
    );
    read_safetensors(out).unwrap().into_iter().collect()
}
