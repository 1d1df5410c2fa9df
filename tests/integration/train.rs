//! The FOMAML step against an independent computation, θ restored, order independence, the
//! NaN policy, bit-exact resume, and that meta-training lowers the loss.

use crate::common::train::{synthetic_run, SyntheticRun};
use fomaml::config::Config;
use fomaml::data::sft::{EncodedExample, SftBatch};
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::data::tasks::{Encoding, Split, TaskData};
use fomaml::data::ChatTokenizer;
use fomaml::meta::core::Learner;
use fomaml::meta::fomaml::meta_gradient;
use fomaml::meta::loss::sft_loss;
use fomaml::metrics::read_jsonl;
use fomaml::model::{load_weights, CausalLm, ModelConfig, Weights};
use fomaml::train::Trainer;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn small_spec() -> SyntheticSpec {
    SyntheticSpec { train_tasks: 4, eval_tasks: 2, support: 8, query: 8, test: 8, seed: 3 }
}

struct Parts {
    cfg: ModelConfig,
    tokenizer: ChatTokenizer,
}

fn parts(config: &Config) -> Parts {
    let dir = Path::new(&config.model.partial_pretrain);
    Parts { cfg: ModelConfig::from_dir(dir).unwrap(), tokenizer: ChatTokenizer::from_dir(dir).unwrap() }
}

fn learner(config: &Config, parts: &Parts) -> Learner {
    let dir = Path::new(&config.model.partial_pretrain);
    let weights = load_weights(dir, &parts.cfg, Kind::Float, Device::Cpu).unwrap();
    Learner::new(parts.cfg.clone(), weights, Device::Cpu, Kind::Float, parts.tokenizer.pad_id)
}

fn tasks(config: &Config, parts: &Parts) -> Vec<TaskData> {
    let encoding = Encoding::new(&parts.tokenizer, &config.data);
    config.meta.tasks.iter().map(|s| TaskData::load(s, &encoding, &config.data, 7, 0, 1).unwrap()).collect()
}

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-30)
}

fn batch_of(examples: &[EncodedExample], pad: i64) -> SftBatch {
    SftBatch::collate(&examples.iter().collect::<Vec<_>>(), pad, Device::Cpu)
}

/// (a) One task, one inner step: the meta-gradient is ∇L_query at θ − α∇L_support(θ), computed
/// here with plain autograd on a fresh copy of the weights.
#[test]
fn one_step_meta_gradient_equals_the_query_gradient_at_the_adapted_weights() {
    let mut run = synthetic_run(&small_spec());
    let meta = &mut run.config.meta;
    (meta.num_inner_steps, meta.inner_lr, meta.inner_batch_size, meta.query_batch_size) = (1, 0.5, 8, 8);
    let parts = parts(&run.config);
    let learner = learner(&run.config, &parts);
    let mut all = tasks(&run.config, &parts);
    let grad = learner.zeros_like_params();
    // Batches of the whole split: the sampler's order does not change a mean loss.
    let task = &mut all[0];
    let support = batch_of(task.examples(Split::Support), parts.tokenizer.pad_id);
    let query = batch_of(task.examples(Split::Query), parts.tokenizer.pad_id);
    meta_gradient(&learner, &mut [task], &run.config.meta, &grad).unwrap();

    let dir = Path::new(&run.config.model.partial_pretrain);
    let theta = load_weights(dir, &parts.cfg, Kind::Float, Device::Cpu).unwrap().requires_grad();
    let loss = |w: &Weights, b: &SftBatch| {
        let logits = CausalLm::new(&parts.cfg, w).unwrap().forward(&b.input_ids, Some(&b.attention_mask), None);
        sft_loss(&logits, &b.input_ids, &b.loss_mask)
    };
    loss(&theta, &support).backward();
    let mut adapted = Weights::new();
    for (name, t) in theta.iter() {
        adapted.insert(name, (t.detach() - t.grad() * 0.5).set_requires_grad(true));
    }
    loss(&adapted, &query).backward();
    for ((name, expected), got) in adapted.iter().zip(&grad) {
        let err = relative_error(got, &expected.grad());
        assert!(err < 1e-5, "{name}: relative error {err}");
    }
}

/// Issue: K = 0 (the multi-task control) is the query gradient at θ itself, and a run with it
/// trains and evaluates periodically (it died at step 1 with "support loss NaN"; evaluation panicked).
#[test]
fn zero_inner_steps_is_the_query_gradient_at_theta_and_trains() {
    let mut run = synthetic_run(&small_spec());
    let meta = &mut run.config.meta;
    (meta.num_inner_steps, meta.query_batch_size) = (0, 8);
    let parts = parts(&run.config);
    let learner = learner(&run.config, &parts);
    let mut all = tasks(&run.config, &parts);
    let grad = learner.zeros_like_params();
    let task = &mut all[0];
    let query = batch_of(task.examples(Split::Query), parts.tokenizer.pad_id);
    meta_gradient(&learner, &mut [task], &run.config.meta, &grad).unwrap();
    let dir = Path::new(&run.config.model.partial_pretrain);
    let theta = load_weights(dir, &parts.cfg, Kind::Float, Device::Cpu).unwrap().requires_grad();
    let logits =
        CausalLm::new(&parts.cfg, &theta).unwrap().forward(&query.input_ids, Some(&query.attention_mask), None);
    sft_loss(&logits, &query.input_ids, &query.loss_mask).backward();
    for ((name, expected), got) in theta.iter().zip(&grad) {
        let err = relative_error(got, &expected.grad());
        assert!(err < 1e-5, "{name}: relative error {err}");
    }

    (run.config.trainer.total_steps, run.config.trainer.test_freq) = (2, 1);
    let summary = Trainer::new(run.config.clone()).unwrap().run().unwrap();
    let record = summary.last_record.unwrap();
    let value = |key: &str| record.scalars.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
    assert!(value("meta/loss").is_some_and(f64::is_finite));
    assert!(value("eval/loss_after_adaptation").is_some_and(f64::is_finite));
    assert_eq!(value("eval/loss_after_adaptation"), value("eval/loss_before_adaptation"), "K = 0 adapts nothing");
    assert_eq!(value("meta/avg_support_loss"), None, "no support loss without inner steps");
}

/// (b) θ is bit-identical after a meta-gradient over several tasks with several inner steps.
#[test]
fn theta_is_restored_bit_for_bit() {
    let run = synthetic_run(&small_spec());
    let parts = parts(&run.config);
    let learner = learner(&run.config, &parts);
    let before = learner.snapshot();
    let mut all = tasks(&run.config, &parts);
    let grad = learner.zeros_like_params();
    meta_gradient(&learner, &mut all.iter_mut().collect::<Vec<_>>(), &run.config.meta, &grad).unwrap();
    for ((name, p), b) in learner.named_params().into_iter().zip(&before) {
        assert!(p.equal(b), "{name} changed");
    }
    assert!(grad.iter().any(|g| g.abs().sum(Kind::Float).double_value(&[]) > 0.0));
}

/// (c) The meta-gradient does not depend on the order of the meta-batch.
#[test]
fn meta_gradient_does_not_depend_on_task_order() {
    let run = synthetic_run(&small_spec());
    let parts = parts(&run.config);
    let learner = learner(&run.config, &parts);
    let gradient = |order: &[usize]| {
        let mut all = tasks(&run.config, &parts);
        let mut slots: Vec<Option<&mut TaskData>> = all.iter_mut().map(Some).collect();
        let mut ordered: Vec<&mut TaskData> = order.iter().map(|&i| slots[i].take().unwrap()).collect();
        let grad = learner.zeros_like_params();
        meta_gradient(&learner, &mut ordered, &run.config.meta, &grad).unwrap();
        grad
    };
    let forward = gradient(&[0, 1, 2]);
    let reverse = gradient(&[2, 0, 1]);
    for (a, b) in forward.iter().zip(&reverse) {
        let err = relative_error(a, b);
        assert!(err < 1e-5, "relative error {err}");
    }
    // And it is the mean: one task alone gives a different direction.
    let alone = gradient(&[0]);
    assert!(relative_error(&alone[0], &forward[0]) > 1e-3);
}

fn records_without_timing(path: &Path) -> Vec<(u64, Vec<(String, f64)>)> {
    read_jsonl(path)
        .unwrap()
        .into_iter()
        .map(|r| (r.step, r.scalars.into_iter().filter(|(n, _)| !n.starts_with("perf/")).collect()))
        .collect()
}

fn final_theta(run_dir: &Path) -> Vec<u8> {
    let latest = fomaml::checkpoint::newest(&run_dir.join("checkpoints")).unwrap().unwrap();
    std::fs::read(latest.join("model.safetensors")).unwrap()
}

/// 2N steps in one run equal N steps, a resume from the checkpoint, and N more: θ bit for bit
/// and every logged metric but the timings.
#[test]
fn resumed_run_equals_uninterrupted_run_bit_for_bit() {
    let mut run: SyntheticRun = synthetic_run(&small_spec());
    let c = &mut run.config;
    (c.trainer.total_steps, c.trainer.test_freq, c.checkpoint.save_freq) = (8, 3, 4);
    c.meta.num_inner_steps = 2;
    let whole = run.run_dir("whole");
    let split = run.run_dir("split");

    let mut config = run.config.clone();
    config.trainer.default_local_dir = whole.display().to_string();
    Trainer::new(config.clone()).unwrap().run().unwrap();

    config.trainer.default_local_dir = split.display().to_string();
    let first = Trainer::new(config.clone()).unwrap().run_until(Some(5)).unwrap();
    assert_eq!(first.steps, 5);
    let second = Trainer::new(config).unwrap().run().unwrap();
    assert!(second.resumed_from.unwrap().ends_with("step_00000005"));
    assert_eq!(second.steps, 8);

    assert!(final_theta(&whole) == final_theta(&split), "θ differs after resume");
    let (a, b) =
        (records_without_timing(&whole.join("metrics.jsonl")), records_without_timing(&split.join("metrics.jsonl")));
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "logged metrics differ after resume");
}

/// A NaN loss aborts with the step and task named, or skips the update.
#[test]
fn nan_policy_aborts_naming_the_step_and_task_or_skips() {
    let mut run = synthetic_run(&small_spec());
    (run.config.meta.inner_lr, run.config.trainer.total_steps) = (1e30, 2);
    let err = Trainer::new(run.config.clone()).unwrap().run().err().unwrap();
    let message = format!("{err:#}");
    assert!(message.contains("step 1: task `bins_"), "{message}");
    assert!(message.contains("nan_policy"), "{message}");

    run.config.trainer.nan_policy = fomaml::config::schema::NanPolicy::Skip;
    let trainer = Trainer::new(run.config.clone()).unwrap();
    let initial = trainer.learner().snapshot();
    let summary = trainer.run().unwrap();
    let last = summary.last_record.unwrap();
    let skipped = last.scalars.iter().find(|(n, _)| n == "meta/skipped_steps").unwrap().1;
    assert_eq!(skipped, 2.0);
    let loaded = fomaml::checkpoint::load(summary.last_checkpoint.as_ref().unwrap()).unwrap();
    let saved = &loaded.files["model.safetensors"];
    let names =
        fomaml::model::ModelConfig::from_dir(Path::new(&run.config.model.partial_pretrain)).unwrap().parameter_shapes();
    for ((name, _), init) in names.iter().zip(&initial) {
        assert!(saved[name].equal(init), "{name} moved on a skipped step");
    }
}

/// (e) Meta-training lowers meta/loss on the synthetic family.
#[test]
fn meta_loss_falls_on_the_synthetic_family() {
    let spec = SyntheticSpec { train_tasks: 16, eval_tasks: 4, support: 16, query: 16, test: 0, seed: 5 };
    let mut run = synthetic_run(&spec);
    (run.config.trainer.total_steps, run.config.trainer.test_freq) = (60, 0);
    let summary = Trainer::new(run.config.clone()).unwrap().run().unwrap();
    let records = read_jsonl(summary.run_dir.join("metrics.jsonl")).unwrap();
    let loss = |r: &fomaml::metrics::Record| r.scalars.iter().find(|(n, _)| n == "meta/loss").unwrap().1;
    let mean = |rs: &[fomaml::metrics::Record]| rs.iter().map(loss).sum::<f64>() / rs.len() as f64;
    let (first, last) = (mean(&records[..10]), mean(&records[50..]));
    assert!(last < 0.5 * first, "meta/loss {first:.4} over the first 10 steps, {last:.4} over the last 10");
}

#[test]
fn a_tokenizer_larger_than_the_embedding_is_refused_before_training() {
    let run = synthetic_run(&small_spec());
    let dir = std::path::PathBuf::from(&run.config.model.partial_pretrain);
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let tokens = ChatTokenizer::from_dir(&dir).unwrap().vocab_size();
    cfg["vocab_size"] = serde_json::json!(tokens - 1);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let e = format!("{:#}", Trainer::new(run.config.clone()).err().expect("a too-small vocabulary was accepted"));
    assert!(
        e.contains(&format!("the tokenizer has {tokens} tokens but config.json's vocab_size is {}", tokens - 1)),
        "{e}"
    );
}
