//! The algorithms beyond FOMAML against independent computations: Reptile's update direction,
//! and each algorithm lowering the loss on the synthetic family through the trainer.

use std::path::Path;

use crate::common::train::synthetic_run;
use fomaml::config::schema::{Algorithm, InnerOptimizerType};
use fomaml::data::sft::SftBatch;
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::data::tasks::{Encoding, Split, TaskData};
use fomaml::data::ChatTokenizer;
use fomaml::meta::core::{InnerRule, Learner};
use fomaml::meta::loss::sft_loss;
use fomaml::meta::reptile;
use fomaml::metrics::{read_jsonl, Record};
use fomaml::model::{load_weights, CausalLm, ModelConfig, Weights};
use fomaml::train::Trainer;
use tch::{Device, Kind, Tensor};

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

/// Reptile with SGD inner steps: the direction is θ − θ_K, θ_K computed here with plain autograd.
#[test]
fn reptile_direction_is_theta_minus_the_adapted_weights() {
    let spec = SyntheticSpec { train_tasks: 2, eval_tasks: 0, support: 8, query: 8, test: 0, seed: 9 };
    let mut run = synthetic_run(&spec);
    let meta = &mut run.config.meta;
    (meta.algorithm, meta.num_inner_steps, meta.inner_lr, meta.inner_batch_size) = (Algorithm::Reptile, 3, 0.2, 8);
    let dir = Path::new(&run.config.model.partial_pretrain);
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let tokenizer = ChatTokenizer::from_dir(dir).unwrap();
    let weights = load_weights(dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    let learner = Learner::new(cfg.clone(), weights, Device::Cpu, Kind::Float, tokenizer.pad_id);
    let encoding = Encoding::new(&tokenizer, &run.config.data);
    let mut task = TaskData::load(&run.config.meta.tasks[0], &encoding, &run.config.data, 1, 0, 1).unwrap();
    let support: Vec<_> = task.examples(Split::Support).iter().collect();
    let support = SftBatch::collate(&support, tokenizer.pad_id, Device::Cpu);

    let direction = learner.zeros_like_params();
    reptile::direction(&learner, &mut [&mut task], &run.config.meta, &run.config.optim, &direction).unwrap();

    let mut theta = load_weights(dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    let initial: Vec<Tensor> = theta.iter().map(|(_, t)| t.copy()).collect();
    for _ in 0..3 {
        let leaves = theta.requires_grad();
        let logits =
            CausalLm::new(&cfg, &leaves).unwrap().forward(&support.input_ids, Some(&support.attention_mask), None);
        sft_loss(&logits, &support.input_ids, &support.loss_mask).backward();
        let mut next = Weights::new();
        for (name, t) in leaves.iter() {
            next.insert(name, (t.detach() - t.grad() * 0.2).detach());
        }
        theta = next;
    }
    for (((name, adapted), start), got) in theta.iter().zip(&initial).zip(&direction) {
        let err = relative_error(got, &(start - adapted));
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

fn mean_loss(records: &[Record]) -> f64 {
    let loss = |r: &Record| r.scalars.iter().find(|(n, _)| n == "meta/loss").unwrap().1;
    records.iter().map(loss).sum::<f64>() / records.len() as f64
}

/// Each algorithm, through the trainer on the embedded default's settings, lowers the loss.
#[test]
fn every_algorithm_lowers_the_loss_on_the_synthetic_family() {
    let spec = SyntheticSpec { train_tasks: 12, eval_tasks: 0, support: 16, query: 16, test: 0, seed: 5 };
    for (algorithm, inner) in [
        (Algorithm::Sft, InnerOptimizerType::Sgd),
        (Algorithm::Reptile, InnerOptimizerType::Sgd),
        (Algorithm::Reptile, InnerOptimizerType::Adam),
        (Algorithm::MetaLora, InnerOptimizerType::Sgd),
        (Algorithm::Maml, InnerOptimizerType::Sgd),
    ] {
        let mut run = synthetic_run(&spec);
        if algorithm == Algorithm::MetaLora {
            (run.config.model.lora_rank, run.config.model.lora_alpha) = (8, 16.0);
            (run.config.meta.inner_lr, run.config.meta.outer_lr) = (3e-3, 3e-3);
        }
        (run.config.trainer.total_steps, run.config.trainer.test_freq) = (30, 0);
        (run.config.meta.inner_batch_size, run.config.meta.query_batch_size) = (4, 4);
        (run.config.meta.algorithm, run.config.meta.inner_optimizer) = (algorithm, inner);
        if inner == InnerOptimizerType::Adam {
            run.config.meta.inner_lr = 3e-3;
        }
        let summary = Trainer::new(run.config.clone()).unwrap().run().unwrap();
        let records = read_jsonl(summary.run_dir.join("metrics.jsonl")).unwrap();
        let (first, last) = (mean_loss(&records[..6]), mean_loss(&records[24..]));
        // LoRA over a random-init base learns slowly in 30 steps: it must fall, not by a quarter.
        let bound = if algorithm == Algorithm::MetaLora { 0.95 } else { 0.75 };
        assert!(last < bound * first, "{algorithm:?}/{inner:?}: meta/loss {first:.4} first 6 steps, {last:.4} last 6");
    }
}

/// Second-order MAML's meta-gradient is the derivative of F(θ) = L_query(θ_K(θ)) — checked with
/// central finite differences in fp64 — while FOMAML's first-order gradient is measurably not.
#[test]
fn maml_meta_gradient_matches_finite_differences() {
    let spec = SyntheticSpec { train_tasks: 1, eval_tasks: 0, support: 6, query: 6, test: 0, seed: 13 };
    let mut run = synthetic_run(&spec);
    let meta = &mut run.config.meta;
    (meta.algorithm, meta.num_inner_steps, meta.inner_lr) = (Algorithm::Maml, 2, 0.1);
    (meta.inner_batch_size, meta.query_batch_size) = (6, 6);
    let dir = Path::new(&run.config.model.partial_pretrain);
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let tokenizer = ChatTokenizer::from_dir(dir).unwrap();
    let weights = load_weights(dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    let mut learner = Learner::new(cfg, weights, Device::Cpu, Kind::Double, tokenizer.pad_id);
    learner.second_order = true;
    let encoding = Encoding::new(&tokenizer, &run.config.data);
    let load = || TaskData::load(&run.config.meta.tasks[0], &encoding, &run.config.data, 1, 0, 1).unwrap();
    let task = load();
    let batch =
        |split| SftBatch::collate(&task.examples(split).iter().collect::<Vec<_>>(), tokenizer.pad_id, Device::Cpu);
    let (support, query) = (batch(Split::Support), batch(Split::Query));

    let theta = learner.snapshot();
    let maml = learner.zeros_like_params();
    fomaml::meta::maml::meta_gradient(&learner, &mut [&mut load()], &run.config.meta, &maml);
    let first_order = learner.zeros_like_params();
    fomaml::meta::fomaml::meta_gradient(&learner, &mut [&mut load()], &run.config.meta, &first_order).unwrap();

    // F at θ + t·d, by running the inner loop on the weights themselves.
    let objective = |t: f64, d: &[Tensor]| -> f64 {
        let moved: Vec<Tensor> = theta.iter().zip(d).map(|(w, d)| w + d * t).collect();
        learner.restore(&moved);
        for _ in 0..2 {
            let grads = learner.gradients(&learner.loss(&support));
            learner.sgd_(&grads, 0.1);
        }
        let value = tch::no_grad(|| learner.loss(&query)).double_value(&[]);
        learner.restore(&theta);
        value
    };
    let dot = |a: &[Tensor], b: &[Tensor]| {
        a.iter().zip(b).map(|(x, y)| (x * y).sum(Kind::Double).double_value(&[])).sum::<f64>()
    };
    let norm = dot(&maml, &maml).sqrt();
    tch::manual_seed(0);
    let random: Vec<Tensor> = maml.iter().map(|g| g.randn_like()).collect();
    let random_norm = dot(&random, &random).sqrt();
    for (what, d) in [
        ("the gradient's direction", maml.iter().map(|g| g / norm).collect::<Vec<_>>()),
        ("a random direction", random.iter().map(|r| r / random_norm).collect()),
    ] {
        let eps = 1e-6;
        let numeric = (objective(eps, &d) - objective(-eps, &d)) / (2.0 * eps);
        let (second, first) = (dot(&maml, &d), dot(&first_order, &d));
        println!("{what}: finite difference {numeric:.9}, MAML {second:.9}, FOMAML {first:.9}");
        assert!((second - numeric).abs() < 1e-6 * norm, "{what}: MAML {second} vs finite difference {numeric}");
        if what == "the gradient's direction" {
            assert!((first - numeric).abs() > 1e-3 * norm, "FOMAML agrees too: the check cannot tell them apart");
        }
    }
}

/// META-LoRA leaves the shared adapter as it found it (the Python original left the last task's).
#[test]
fn meta_lora_restores_the_shared_adapter() {
    let spec = SyntheticSpec { train_tasks: 4, eval_tasks: 0, support: 8, query: 8, test: 0, seed: 21 };
    let mut run = synthetic_run(&spec);
    (run.config.model.lora_rank, run.config.meta.algorithm, run.config.meta.inner_lr) = (4, Algorithm::MetaLora, 0.05);
    let trainer = Trainer::new(run.config.clone()).unwrap();
    let learner = trainer.learner();
    let shared = learner.snapshot();
    let encoding_dir = Path::new(&run.config.model.partial_pretrain);
    let tokenizer = ChatTokenizer::from_dir(encoding_dir).unwrap();
    let encoding = Encoding::new(&tokenizer, &run.config.data);
    let mut tasks: Vec<TaskData> = run
        .config
        .meta
        .tasks
        .iter()
        .map(|s| TaskData::load(s, &encoding, &run.config.data, 1, 0, 1).unwrap())
        .collect();
    let grad = learner.zeros_like_params();
    fomaml::meta::meta_lora::meta_gradient(
        learner,
        &mut tasks.iter_mut().collect::<Vec<_>>(),
        &run.config.meta,
        &run.config.optim,
        &grad,
    )
    .unwrap();
    for ((name, p), s) in learner.named_params().into_iter().zip(&shared) {
        assert!(p.equal(s), "{name} is not the shared adapter any more");
    }
    assert!(grad.iter().any(|g| g.abs().sum(Kind::Float).double_value(&[]) > 0.0));
}

/// The twice-differentiable (math) attention computes what the fused kernel computes.
#[test]
fn second_order_attention_matches_the_fused_kernel() {
    let spec = SyntheticSpec { train_tasks: 1, eval_tasks: 0, support: 6, query: 6, test: 0, seed: 13 };
    let run = synthetic_run(&spec);
    let dir = Path::new(&run.config.model.partial_pretrain);
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let tokenizer = ChatTokenizer::from_dir(dir).unwrap();
    let weights = load_weights(dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    let mut learner = Learner::new(cfg, weights, Device::Cpu, Kind::Double, tokenizer.pad_id);
    let encoding = Encoding::new(&tokenizer, &run.config.data);
    let task = TaskData::load(&run.config.meta.tasks[0], &encoding, &run.config.data, 1, 0, 1).unwrap();
    let batch =
        SftBatch::collate(&task.examples(Split::Support).iter().collect::<Vec<_>>(), tokenizer.pad_id, Device::Cpu);
    let fused = learner.loss(&batch).double_value(&[]);
    let scored = learner.scoring_logits(&batch);
    learner.second_order = true;
    let math = learner.loss(&batch).double_value(&[]);
    let reference = sft_loss(&scored, &batch.input_ids, &batch.loss_mask).double_value(&[]);
    println!("fused {fused}, math {math}, explicit-mask logits {reference}");
    assert!((fused - math).abs() < 1e-10 && (fused - reference).abs() < 1e-10);
}

/// The inner rules each algorithm adapts with (in training and in `fomaml eval`), one step each
/// against its formula: clipped SGD moves θ by −α·g·min(1, c/(‖g‖ + 1e-6)) (torch's clipping); Adam's first step from fresh
/// state (bias-corrected m̂ = g, v̂ = g²) moves it by −α·g/(|g| + ε) after AdamW's decay θ·(1 − α·λ).
/// In fp64.
#[test]
fn inner_rules_take_the_steps_their_formulas_give() {
    let spec = SyntheticSpec { train_tasks: 1, eval_tasks: 0, support: 6, query: 6, test: 0, seed: 3 };
    let mut run = synthetic_run(&spec);
    let dir = Path::new(&run.config.model.partial_pretrain);
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let tokenizer = ChatTokenizer::from_dir(dir).unwrap();
    let weights = load_weights(dir, &cfg, Kind::Float, Device::Cpu).unwrap();
    let learner = Learner::new(cfg, weights, Device::Cpu, Kind::Double, tokenizer.pad_id);
    let encoding = Encoding::new(&tokenizer, &run.config.data);
    let task = TaskData::load(&run.config.meta.tasks[0], &encoding, &run.config.data, 1, 0, 1).unwrap();
    let batch =
        SftBatch::collate(&task.examples(Split::Support).iter().collect::<Vec<_>>(), tokenizer.pad_id, Device::Cpu);

    // Which rule each algorithm trains with.
    let (meta, optim) = (&mut run.config.meta, &mut run.config.optim);
    (optim.clip_grad, optim.weight_decay, meta.inner_lr) = (0.5, 0.1, 1e-2);
    meta.algorithm = Algorithm::Fomaml;
    let fomaml = InnerRule::of(meta, optim);
    assert_eq!((fomaml.optimizer, fomaml.clip_grad), (InnerOptimizerType::Sgd, None));
    (meta.algorithm, meta.inner_optimizer) = (Algorithm::Reptile, InnerOptimizerType::Adam);
    let reptile_adam = InnerRule::of(meta, optim);
    assert_eq!(
        (reptile_adam.optimizer, reptile_adam.clip_grad, reptile_adam.adam.weight_decay),
        (InnerOptimizerType::Adam, None, 0.0)
    );
    meta.algorithm = Algorithm::MetaLora;
    let meta_lora = InnerRule::of(meta, optim);
    assert_eq!((meta_lora.optimizer, meta_lora.clip_grad), (InnerOptimizerType::Adam, Some(0.5)));
    assert_eq!((meta_lora.lr, meta_lora.adam.weight_decay), (1e-2, 0.1));
    // A baseline evaluated like the method it is compared with.
    (meta.algorithm, meta.inner_optimizer) = (Algorithm::Sft, InnerOptimizerType::Sgd);
    meta.eval_inner_rule = Some(Algorithm::MetaLora);
    assert_eq!(InnerRule::for_evaluation(meta, optim).clip_grad, Some(0.5));
    assert_eq!(InnerRule::of(meta, optim).optimizer, InnerOptimizerType::Sgd, "training keeps its own");

    let step = |rule: &InnerRule| {
        let theta = learner.snapshot();
        let (_, grads) = learner.loss_and_grads(&batch).unwrap();
        let original: Vec<Tensor> = grads.iter().map(Tensor::copy).collect();
        rule.start(&learner).step(&learner, &grads).unwrap();
        let moved: Vec<Tensor> = learner.params().iter().zip(&theta).map(|(p, t)| p.detach() - t).collect();
        learner.restore(&theta);
        (theta, original, moved)
    };
    let norm = |g: &[Tensor]| g.iter().map(|t| t.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();

    // θ + Δ − θ is off by up to an ulp of θ per element, which matters where Δ is tiny next to θ.
    let same_step = |rule: &str, moved: &Tensor, expected: &Tensor, theta: &Tensor| {
        let off = (moved - expected).norm().double_value(&[]);
        let allowed = 1e-10 * expected.norm().double_value(&[]) + 2.3e-16 * theta.norm().double_value(&[]);
        assert!(off <= allowed, "{rule}: off by {off}, allowed {allowed}");
    };

    let (theta, g, moved) = step(&fomaml);
    for ((m, g), t) in moved.iter().zip(&g).zip(&theta) {
        same_step("SGD", m, &(g * -1e-2), t);
    }

    let max_norm = 0.25 * norm(&g);
    let (theta, g, moved) = step(&InnerRule { clip_grad: Some(max_norm), ..InnerRule::sgd(1e-2) });
    let clipped = max_norm / (norm(&g) + 1e-6);
    for ((m, g), t) in moved.iter().zip(&g).zip(&theta) {
        same_step("clipped SGD", m, &(g * (-1e-2 * clipped)), t);
    }

    let (theta, g, moved) = step(&meta_lora);
    let scale = (0.5 / (norm(&g) + 1e-6)).min(1.0);
    assert!(scale < 1.0, "the test must clip");
    let eps = meta_lora.adam.eps;
    for ((m, g), t) in moved.iter().zip(&g).zip(&theta) {
        let g = g * scale;
        same_step("META-LoRA's AdamW", m, &(t * (-1e-2 * 0.1) - (&g / (g.abs() + eps)) * 1e-2), t);
    }
}
