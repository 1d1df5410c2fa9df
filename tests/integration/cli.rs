//! The `fomaml` binary as a user meets it: golden output of `logits`, and one-line errors with a
//! non-zero exit on bad input.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{assert_one_line_error, copy_fixture, expected, fixture, relative_error};
use fomaml::tensor_io::read_safetensors;

fn fomaml(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fomaml")).args(args).output().expect("run fomaml")
}

fn ids_arg(arch: &str) -> String {
    let ids = &expected(arch)["single_ids"];
    let v: Vec<i64> = Vec::<i64>::try_from(ids.view([-1])).unwrap();
    v.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn logits_writes_what_transformers_computes() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in crate::common::ARCHS {
        let out_path = tmp.path().join(format!("{arch}.safetensors"));
        let model = fixture(arch);
        let out = fomaml(&[
            "logits",
            "--model",
            model.to_str().unwrap(),
            "--input-ids",
            &ids_arg(arch),
            "--device",
            "cpu",
            "--out",
            out_path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("mean next-token loss"));
        let written: std::collections::HashMap<_, _> = read_safetensors(&out_path).unwrap().into_iter().collect();
        let logits = &written["logits"];
        assert_eq!(logits.size(), [1, 7, 256]);
        let err = relative_error(logits, &expected(arch)["single_logits"]);
        assert!(err < 1e-5, "{arch}: {err:e}");
    }
}

#[test]
fn a_wrong_model_path_is_one_clear_line() {
    let out = fomaml(&["logits", "--model", "/no/such/model", "--input-ids", "1,2", "--out", "/tmp/x.safetensors"]);
    assert_one_line_error(&out, &["/no/such/model", "does not exist"]);
}

#[test]
fn an_unsupported_architecture_is_named() {
    let dir = copy_fixture("llama");
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("LlamaForCausalLM", "GPT2LMHeadModel");
    std::fs::write(&cfg, text).unwrap();
    let out = fomaml(&[
        "logits",
        "--model",
        dir.path().to_str().unwrap(),
        "--input-ids",
        "1,2",
        "--out",
        "/tmp/x.safetensors",
    ]);
    assert_one_line_error(&out, &["config.json", "GPT2LMHeadModel", "not supported"]);
}

#[test]
fn a_truncated_checkpoint_is_one_clear_line() {
    let dir = copy_fixture("llama");
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..1000]).unwrap();
    let out = fomaml(&[
        "logits",
        "--model",
        dir.path().to_str().unwrap(),
        "--input-ids",
        "1,2",
        "--out",
        "/tmp/x.safetensors",
    ]);
    assert_one_line_error(&out, &["model.safetensors", "truncated"]);
}

#[test]
fn bad_ids_and_a_bad_output_path_write_nothing() {
    let model = fixture("qwen2");
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("l.safetensors");
    let out = fomaml(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--input-ids",
        "1,999",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["999", "outside the vocabulary"]);
    let missing_dir = tmp.path().join("nope/l.safetensors");
    let out = fomaml(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--input-ids",
        "1,2",
        "--device",
        "cpu",
        "--out",
        missing_dir.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["nope", "does not exist"]);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing may be left behind");
}

#[test]
fn doctor_reports_this_machine() {
    let out = fomaml(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("libtorch") && stdout.contains("2.11") && stdout.contains("nccl"), "{stdout}");
    if !tch::Cuda::is_available() {
        let out = fomaml(&["doctor", "--require-gpu"]);
        assert_one_line_error(&out, &["cuda"]);
    }
}

#[test]
fn the_binary_finds_libtorch_without_ld_library_path() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_fomaml")).arg("--version").env_remove("LD_LIBRARY_PATH").output().unwrap();
    // Without build.rs's rpath the dynamic loader fails before main and this exits 127.
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn encode_prints_what_transformers_encodes() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/qwen3");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("expected.json")).unwrap()).unwrap();
    // The first case rendered with enable_thinking=false.
    let case = want["cases"].as_array().unwrap().iter().find(|c| c["chat_vars"]["enable_thinking"] == false).unwrap();
    let out = fomaml(&[
        "encode",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        case["prompt"].as_str().unwrap(),
        "--response",
        case["response"].as_str().unwrap(),
        "--chat-var",
        "enable_thinking=false",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["input_ids"], case["expected"]["input_ids"]);
    assert_eq!(got["loss_mask"], case["expected"]["loss_mask"]);
}

#[test]
fn encode_errors_are_one_line() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers/qwen2.5");
    let m = model.to_str().unwrap();
    let out = fomaml(&["encode", "--model", m, "--prompt", "a long prompt", "--response", "b", "--max-length", "3"]);
    assert_one_line_error(&out, &["over max_length 3", "truncation: error"]);
    let out = fomaml(&["encode", "--model", "/no/such/dir", "--prompt", "a", "--response", "b"]);
    assert_one_line_error(&out, &["/no/such/dir", "does not exist"]);
    let out = fomaml(&["encode", "--model", m, "--prompt", "a", "--response", "b", "--chat-var", "novalue"]);
    assert_one_line_error(&out, &["--chat-var `novalue`", "KEY=VALUE"]);
}

#[test]
fn config_show_resolves_the_shipped_configs_and_names_bad_keys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = fomaml(&["config", "show", "--config", path.to_str().unwrap()]);
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        }
    }
    let cfg = root.join("configs/qwen3_4b_math.yaml");
    let out = fomaml(&["config", "show", "--config", cfg.to_str().unwrap(), "meta.inner_lr=2e-4"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("inner_lr: 0.0002"));
    let out = fomaml(&["config", "show", "--config", cfg.to_str().unwrap(), "meta.innr_lr=2e-4"]);
    assert_one_line_error(&out, &["meta.innr_lr", "did you mean `meta.inner_lr`"]);
    let out = fomaml(&["config", "show", "--config", "/no/such.yaml"]);
    assert_one_line_error(&out, &["/no/such.yaml"]);
}

/// `fomaml --help` lists the subcommands in the order of a run, with examples; so does `train`.
#[test]
fn help_follows_the_workflow_with_examples() {
    let help = |args: &[&str]| {
        let out = fomaml(args);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&["--help"]);
    let at = |name: &str| top.find(&format!("\n  {name} ")).unwrap_or_else(|| panic!("{name} not listed:\n{top}"));
    let order = ["prepare-data", "train", "eval", "compare", "report", "export", "demo", "config", "plan", "doctor"];
    assert!(order.windows(2).all(|w| at(w[0]) < at(w[1])), "{top}");
    assert!(top.contains("A first run") && top.contains("fomaml-launch --nproc-per-node 4"), "{top}");
    assert!(help(&["train", "--help"]).contains("Examples:\n  fomaml train --config"));
}
