//! Generation against transformers: greedy continuations of a left-padded batch of prompts on the
//! golden tiny Llama / Qwen2 / Qwen3 models, token for token (fp64 on both sides, so no argmax is
//! decided by rounding). Plus eos, stop strings and sampling behaviour.

use crate::common::{fixture, venv_python, ARCHS};
use fomaml::eval::generate::{cut_at_stop, generate, GenerationConfig, StopReason};
use fomaml::model::{load_weights, CausalLm, ModelConfig};
use tch::{Device, Kind};

const MAX_NEW: usize = 12;
const PAD: i64 = 0;

const GREEDY_WITH_TRANSFORMERS: &str = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM, GenerationConfig
model_dir, prompts, max_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
width = max(len(p) for p in prompts)
ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
config = GenerationConfig(max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, pad_token_id=0,
                          eos_token_id=None, bos_token_id=1)
with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
print(json.dumps(out[:, width:].tolist()))
"#;

fn prompts() -> Vec<Vec<i64>> {
    vec![vec![1, 17, 93, 4, 250, 8, 61], vec![1, 200, 3], vec![1, 42, 42, 42, 9, 120, 77, 31, 5, 66]]
}

fn model(arch: &str) -> CausalLm {
    let dir = fixture(arch);
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    CausalLm::new(&cfg, &load_weights(&dir, &cfg, Kind::Double, Device::Cpu).unwrap()).unwrap()
}

fn no_text(_: &[i64]) -> String {
    String::new()
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    for arch in ARCHS {
        let out = std::process::Command::new(venv_python())
            .args(["-c", GREEDY_WITH_TRANSFORMERS])
            .arg(fixture(arch))
            .arg(serde_json::to_string(&prompts()).unwrap())
            .arg(MAX_NEW.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "transformers failed: {}", String::from_utf8_lossy(&out.stderr));
        let expected: Vec<Vec<i64>> = serde_json::from_slice(&out.stdout).unwrap();

        let cfg = GenerationConfig { max_new_tokens: MAX_NEW, ..Default::default() };
        let ours = generate(&model(arch), &prompts(), PAD, Device::Cpu, &cfg, &no_text);
        let ours: Vec<Vec<i64>> = ours.into_iter().map(|g| g.tokens).collect();
        assert_eq!(ours, expected, "{arch}: greedy tokens differ from transformers'");

        // Alone, each prompt continues exactly as in the padded batch.
        for (prompt, batched) in prompts().iter().zip(&expected) {
            let alone = generate(&model(arch), std::slice::from_ref(prompt), PAD, Device::Cpu, &cfg, &no_text);
            assert_eq!(&alone[0].tokens, batched, "{arch}: padding changed a continuation");
        }
    }
}

#[test]
fn eos_and_stop_strings_end_a_sequence_and_sampling_repeats_with_its_seed() {
    let m = model("llama");
    let greedy = GenerationConfig { max_new_tokens: MAX_NEW, ..Default::default() };
    let reference = generate(&m, &prompts(), PAD, Device::Cpu, &greedy, &no_text);
    assert!(reference.iter().all(|g| g.tokens.len() == MAX_NEW && g.stop == StopReason::Length));

    // The third token of row 0 as eos: row 0 stops there, the others go on unless they meet it.
    let eos = reference[0].tokens[2];
    let with_eos = GenerationConfig { eos_ids: vec![eos], ..greedy.clone() };
    let out = generate(&m, &prompts(), PAD, Device::Cpu, &with_eos, &no_text);
    let first = reference[0].tokens.iter().position(|t| *t == eos).unwrap();
    assert_eq!(out[0].tokens, reference[0].tokens[..=first]);
    assert_eq!(out[0].stop, StopReason::Eos);
    for (o, r) in out.iter().zip(&reference).skip(1) {
        let end = r.tokens.iter().position(|t| *t == eos).map_or(MAX_NEW, |p| p + 1);
        assert_eq!(o.tokens, r.tokens[..end]);
    }

    // Stop strings over a decoding that spells token ids: stop once "<id>" of the 4th token shows.
    let decode = |tokens: &[i64]| tokens.iter().map(|t| format!("<{t}>")).collect::<String>();
    let stop = format!("<{}>", reference[1].tokens[3]);
    let with_stop = GenerationConfig { stop_strings: vec![stop.clone()], ..greedy.clone() };
    let out = generate(&m, &prompts()[1..2], PAD, Device::Cpu, &with_stop, &decode);
    let at = reference[1].tokens.iter().position(|t| format!("<{t}>") == stop).unwrap();
    assert_eq!((out[0].tokens.len(), out[0].stop), (at + 1, StopReason::StopString));
    assert_eq!(cut_at_stop("x = 4 Question: next", &["Question:".into(), "\n\n".into()]), "x = 4 ");

    // Sampling: the same seed repeats, another seed differs; a tiny nucleus is greedy.
    let sample = GenerationConfig { temperature: 1.5, top_p: 1.0, seed: 7, ..greedy.clone() };
    let a = generate(&m, &prompts(), PAD, Device::Cpu, &sample, &no_text);
    let b = generate(&m, &prompts(), PAD, Device::Cpu, &sample, &no_text);
    let c = generate(&m, &prompts(), PAD, Device::Cpu, &GenerationConfig { seed: 8, ..sample.clone() }, &no_text);
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed sampled the same 36 tokens");
    assert_ne!(a, reference, "sampling at temperature 1.5 gave the greedy tokens");
    let nucleus = GenerationConfig { top_p: 1e-9, ..sample };
    assert_eq!(generate(&m, &prompts(), PAD, Device::Cpu, &nucleus, &no_text), reference);
}
