//! Tokenizer, chat templates and SFT encoding against transformers (fixtures from
//! tests/golden/make_tokenizer_golden.py, rendering the real Llama 3.2, Qwen2.5 and Qwen3 templates).

use std::path::{Path, PathBuf};

use fomaml::data::sft::{EncodeError, SftBatch};
use fomaml::data::{encode_example, ChatTokenizer, Truncation};
use serde_json::Value as Json;
use tch::Device;

const FAMILIES: [&str; 3] = ["llama3.2", "qwen2.5", "qwen3"];

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers").join(family)
}

fn expected(family: &str) -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture(family).join("expected.json")).unwrap()).unwrap()
}

fn ids(v: &Json) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn prompts_render_and_encode_exactly_as_transformers_does() {
    for family in FAMILIES {
        let tokenizer = ChatTokenizer::from_dir(&fixture(family)).unwrap();
        let want = expected(family);
        assert_eq!(tokenizer.eos_token, want["eos_token"].as_str().unwrap());
        assert_eq!(tokenizer.pad_id, want["pad_token_id"].as_i64().unwrap());
        let cases = want["cases"].as_array().unwrap();
        for (i, case) in cases.iter().enumerate() {
            let vars = case["chat_vars"].as_object().unwrap();
            let expected = &case["expected"];
            let rendered = tokenizer
                .apply_chat_template(&serde_json::json!([{"role": "user", "content": case["prompt"]}]), true, vars)
                .unwrap();
            assert_eq!(rendered, expected["prompt_text"].as_str().unwrap(), "{family} case {i}: rendered prompt");

            let truncation = match case.get("truncation").and_then(Json::as_str) {
                Some("left") => Truncation::Left,
                Some("right") => Truncation::Right,
                _ => Truncation::Error,
            };
            let max_length = expected.get("max_length").and_then(Json::as_u64).map(|m| m as usize);
            let got = encode_example(
                &tokenizer,
                case["prompt"].as_str().unwrap(),
                case["response"].as_str().unwrap(),
                max_length,
                truncation,
                vars,
            );
            match expected.get("error").and_then(Json::as_str) {
                Some("over max_length") => {
                    assert!(matches!(got, Err(EncodeError::TooLong { .. })), "{family} case {i}: expected too long");
                    continue;
                }
                Some(_) => {
                    assert!(
                        matches!(got, Err(EncodeError::NothingScored { .. })),
                        "{family} case {i}: expected refusal"
                    );
                    continue;
                }
                None => {}
            }
            let got = got.unwrap();
            assert_eq!(got.input_ids, ids(&expected["input_ids"]), "{family} case {i}: input_ids");
            assert_eq!(got.loss_mask, ids(&expected["loss_mask"]), "{family} case {i}: loss_mask");
            assert_eq!(got.position_ids, (0..got.input_ids.len() as i64).collect::<Vec<_>>());
            assert!(got.attention_mask.iter().all(|&m| m == 1));
        }
        println!("{family}: {} cases match transformers", cases.len());
    }
}

#[test]
fn batches_pad_to_their_longest_example_like_verl() {
    let tokenizer = ChatTokenizer::from_dir(&fixture("qwen2.5")).unwrap();
    let vars = serde_json::Map::new();
    let short = encode_example(&tokenizer, "Hi", "Yo", None, Truncation::Error, &vars).unwrap();
    let long =
        encode_example(&tokenizer, "A longer prompt here", "and a longer answer", None, Truncation::Error, &vars)
            .unwrap();
    let batch = SftBatch::collate(&[&short, &long], tokenizer.pad_id, Device::Cpu);
    let width = long.input_ids.len() as i64;
    assert_eq!(batch.input_ids.size(), [2, width]);
    let row = |t: &tch::Tensor| Vec::<i64>::try_from(t.get(0)).unwrap();
    let n = short.input_ids.len();
    let pad = (width as usize) - n;
    assert_eq!(row(&batch.input_ids)[n..], vec![tokenizer.pad_id; pad]);
    assert_eq!(row(&batch.attention_mask)[n..], vec![0; pad]);
    assert_eq!(row(&batch.loss_mask)[n..], vec![0; pad]);
    // verl's compute_position_id_with_mask: clip(cumsum(mask) - 1, 0).
    assert_eq!(row(&batch.position_ids)[n..], vec![n as i64 - 1; pad]);
}

#[test]
fn missing_tokenizer_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = ChatTokenizer::from_dir(dir.path()).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("qwen3").join(f), dir.path().join(f)).unwrap();
    }
    // No chat template anywhere: rendering says where it looked.
    let config = dir.path().join("tokenizer_config.json");
    let mut cfg: serde_json::Map<String, Json> =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    cfg.remove("chat_template");
    std::fs::write(&config, serde_json::to_string(&cfg).unwrap()).unwrap();
    let tok = ChatTokenizer::from_dir(dir.path()).unwrap();
    let err = encode_example(&tok, "a", "b", None, Truncation::Error, &serde_json::Map::new()).unwrap_err().to_string();
    assert!(err.contains("no chat template"), "{err}");
}
