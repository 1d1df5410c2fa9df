//! Unpadded (packed) batches against padded ones: the same examples, as one stream of their real
//! tokens with attention kept within each example, give the padded batch's loss and gradient to
//! fp64 rounding, for the three model families, LoRA and second-order MAML's attention. (The
//! sharded runner on packed batches against one process: tests/sharded.rs, which trains packed by
//! default.)

use crate::common::{fixture, relative_error, ARCHS};
use fomaml::data::sft::{EncodedExample, SftBatch};
use fomaml::meta::core::Learner;
use fomaml::model::{load_weights, LoraConfig, ModelConfig, Weights};
use tch::{Device, Kind, Tensor};

/// fp64 rounding through a few layers, with room: the two layouts sum in different orders.
const TOLERANCE: f64 = 1e-11;

/// Examples of very different lengths (one of a single response token, prompts of 1 to 9 tokens).
fn examples(vocab: i64) -> Vec<EncodedExample> {
    [(3, 2), (9, 14), (1, 1), (5, 30), (2, 6)]
        .iter()
        .enumerate()
        .map(|(i, &(prompt, response))| {
            let n = prompt + response;
            EncodedExample {
                input_ids: (0..n).map(|t| (7 * t + 13 * i as i64 + 3) % vocab).collect(),
                loss_mask: (0..n).map(|t| i64::from(t >= prompt)).collect(),
                attention_mask: vec![1; n as usize],
                position_ids: (0..n).collect(),
            }
        })
        .collect()
}

fn assert_same_loss_and_gradient(what: &str, learner: &Learner, examples: &[EncodedExample]) {
    let refs: Vec<&EncodedExample> = examples.iter().collect();
    let padded = SftBatch::collate(&refs, learner.pad_id, Device::Cpu);
    let packed = SftBatch::pack(&refs, Device::Cpu);
    assert_eq!(packed.input_ids.size(), [1, padded.tokens()]);
    assert_eq!((packed.tokens(), packed.scored_tokens()), (padded.tokens(), padded.scored_tokens()));
    assert!(packed.computed_tokens() < padded.computed_tokens());
    let (loss_a, grads_a) = learner.loss_and_grads(&padded).unwrap();
    let (loss_b, grads_b) = learner.loss_and_grads(&packed).unwrap();
    let loss_err = relative_error(&loss_b, &loss_a);
    let grad_err = grads_a.iter().zip(&grads_b).map(|(a, b)| relative_error(b, a)).fold(0.0, f64::max);
    eprintln!(
        "{what}: loss {:.6}, relative error loss {loss_err:.1e}, worst gradient {grad_err:.1e}",
        loss_a.double_value(&[])
    );
    assert!(loss_err < TOLERANCE && grad_err < TOLERANCE, "{what}: loss {loss_err:e}, gradient {grad_err:e}");
}

fn learner(arch: &str) -> (ModelConfig, Learner) {
    let dir = fixture(arch);
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let weights = load_weights(&dir, &cfg, Kind::Double, Device::Cpu).unwrap();
    (cfg.clone(), Learner::new(cfg, weights, Device::Cpu, Kind::Double, 0))
}

#[test]
fn packed_batches_give_the_padded_loss_and_gradient_for_every_family() {
    for arch in ARCHS {
        let (cfg, mut learner) = learner(arch);
        let examples = examples(cfg.vocab_size);
        assert_same_loss_and_gradient(arch, &learner, &examples);
        // Second-order MAML's attention (the math kernel), per example.
        learner.second_order = true;
        assert_same_loss_and_gradient(&format!("{arch}, twice-differentiable attention"), &learner, &examples);
    }
}

#[test]
fn packed_batches_give_the_padded_loss_and_gradient_under_lora() {
    let (cfg, _) = learner("qwen3");
    let dir = fixture("qwen3");
    let base = load_weights(&dir, &cfg, Kind::Double, Device::Cpu).unwrap();
    let targets = serde_json::json!(["q_proj", "v_proj", "down_proj"]);
    let lora = LoraConfig::from_settings(4, 8.0, 0.0, &targets).unwrap().expect("rank 4 is LoRA");
    let mut adapter = Weights::new();
    tch::manual_seed(3);
    for (name, shape) in lora.adapter_shapes(&cfg) {
        // B non-zero too, so the adapter takes part in the forward pass.
        adapter.insert(name, Tensor::randn(shape.as_slice(), (Kind::Double, Device::Cpu)) * 0.05);
    }
    let learner = Learner::with_lora(cfg.clone(), base, adapter, lora, Device::Cpu, Kind::Double, 0);
    assert_same_loss_and_gradient("qwen3 + LoRA", &learner, &examples(cfg.vocab_size));
}
