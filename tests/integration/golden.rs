//! Our decoder against transformers itself (fixtures from tests/golden/make_golden.py): logits of a
//! padded batch with explicit position ids, the masked SFT loss, and the gradient of every parameter.

use crate::common::{expected, fixture, max_abs_diff, relative_error, valid_positions, ARCHS};
use fomaml::meta::loss::sft_loss;
use fomaml::model::{load_weights, CausalLm, ModelConfig};
use tch::{Device, Kind};

fn run_golden(arch: &str, kind: Kind, device: Device) -> (f64, f64, f64) {
    let dir = fixture(arch);
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    let want = expected(arch);
    let weights = load_weights(&dir, &cfg, kind, device).unwrap();
    let model = CausalLm::new(&cfg, &weights).unwrap();
    let on = |name: &str| want[name].to_device(device);
    let mask = on("attention_mask");
    let logits = tch::no_grad(|| model.forward(&on("input_ids"), Some(&mask), Some(&on("position_ids"))));
    let got = valid_positions(&logits.to_kind(Kind::Float).to_device(Device::Cpu), &want["attention_mask"]);
    let reference = valid_positions(&want["logits"], &want["attention_mask"]);
    let single = tch::no_grad(|| model.forward(&on("single_ids"), None, None)).to_device(Device::Cpu);
    (max_abs_diff(&got, &reference), relative_error(&got, &reference), relative_error(&single, &want["single_logits"]))
}

#[test]
fn fp32_logits_match_transformers() {
    for arch in ARCHS {
        let (max_abs, _, single_rel) = run_golden(arch, Kind::Float, Device::Cpu);
        println!("{arch}: fp32 logits max-abs diff {max_abs:.2e}, single-row relative {single_rel:.2e}");
        assert!(max_abs <= 1e-4, "{arch}: logits differ from transformers by {max_abs:e}");
        assert!(single_rel <= 1e-5, "{arch}: default-position logits differ by {single_rel:e}");
    }
}

#[test]
fn fp32_gradients_of_the_sft_loss_match_transformers() {
    for arch in ARCHS {
        let dir = fixture(arch);
        let cfg = ModelConfig::from_dir(&dir).unwrap();
        let want = expected(arch);
        let weights = load_weights(&dir, &cfg, Kind::Float, Device::Cpu).unwrap().requires_grad();
        let model = CausalLm::new(&cfg, &weights).unwrap();
        let ids = &want["input_ids"];
        let logits = model.forward(ids, Some(&want["attention_mask"]), Some(&want["position_ids"]));
        let loss = sft_loss(&logits, ids, &want["loss_mask"]);
        let loss_diff = (loss.double_value(&[]) - want["loss"].double_value(&[0])).abs();
        assert!(loss_diff <= 1e-5, "{arch}: loss differs by {loss_diff:e}");
        loss.backward();

        let mut worst = (0.0, String::new());
        for (name, param) in weights.iter() {
            let reference =
                want.get(&format!("grad.{name}")).unwrap_or_else(|| panic!("{arch}: no reference grad for {name}"));
            let err = relative_error(&param.grad(), reference);
            assert!(err <= 1e-4, "{arch}: gradient of {name} differs by {err:e} (relative)");
            if err > worst.0 {
                worst = (err, name.to_string());
            }
        }
        let reference_count = want.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(weights.len(), reference_count, "{arch}: parameter count differs from transformers");
        println!("{arch}: loss diff {loss_diff:.1e}; worst gradient {} at {:.2e}", worst.1, worst.0);
    }
}

#[test]
fn a_tied_head_is_one_parameter() {
    let dir = fixture("llama");
    let cfg = ModelConfig::from_dir(&dir).unwrap();
    assert!(cfg.tie_word_embeddings);
    let weights = load_weights(&dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    assert!(!weights.contains("lm_head.weight"));
    // The gradient check above covers the accumulation: transformers' embed_tokens gradient sums
    // the embedding lookup and the head, and ours matches it.
}

#[test]
fn bf16_logits_stay_close_to_the_fp32_reference_on_cpu() {
    for arch in ARCHS {
        let (_, rel, _) = run_golden(arch, Kind::BFloat16, Device::Cpu);
        println!("{arch}: bf16 logits relative error {rel:.2e}");
        assert!(rel <= 2e-2, "{arch}: bf16 logits relative error {rel:e}");
    }
}

#[test]
fn cuda_logits_match_transformers() {
    if !tch::Cuda::is_available() {
        crate::common::skip("cuda_logits_match_transformers", "no CUDA device (run on a GPU machine)");
        return;
    }
    for arch in ARCHS {
        let (max_abs, _, _) = run_golden(arch, Kind::Float, Device::Cuda(0));
        let (_, rel, _) = run_golden(arch, Kind::BFloat16, Device::Cuda(0));
        println!("{arch}: cuda fp32 max-abs {max_abs:.2e}, bf16 relative {rel:.2e}");
        assert!(max_abs <= 1e-4, "{arch}: cuda fp32 logits differ by {max_abs:e}");
        assert!(rel <= 2e-2, "{arch}: cuda bf16 logits relative error {rel:e}");
    }
}
