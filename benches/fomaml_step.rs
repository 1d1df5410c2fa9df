//! The FOMAML meta-step on CPU through the library's own code path (`meta_gradient`,
//! `clip_grad_norm`, `Optimizer`, `Learner`), for comparison with `bench/fomaml_step_torch.py`
//! (the same step in PyTorch eager on transformers' LlamaForCausalLM). Run both with
//! `scripts/with-torch-env.sh bench/fomaml_step.sh`.
//!
//! Model: Llama, vocab 2048, 4 layers, hidden 256, 4 heads (no GQA: 4 kv heads), intermediate 688,
//! untied head, random init from a fixed seed, fp32. Data: random tokens, every sequence 128 real
//! tokens, loss mask on the second half. A meta-step: 4 tasks, each K = 5 inner SGD steps on fresh
//! support batches of 4 and one query batch of 4; meta-gradient clipped to 1.0; AdamW.
//!
//! With `BENCH_LENGTHS=math` the sequences instead have MATH-like lengths
//! (`synthetic::math_like_lengths`: median about 270, long tail, cut to 1024; response = the second
//! half), the workload where padding costs; `BENCH_UNPADDED=0` runs the batches padded to their
//! longest row instead of packed.
//!
//! `BENCH_MODEL` (a model directory) replaces the random Llama with a real model (random tokens of
//! its vocabulary), `BENCH_DTYPE=bf16` computes in bf16, and `BENCH_TASKS` / `BENCH_INNER_STEPS`
//! shrink the meta-step for large models on small CPUs.
//!
//! Environment: `BENCH_THREADS` (default: all cores), `BENCH_WARMUP` (2), `BENCH_STEPS` (5),
//! `BENCH_LENGTHS` (fixed), `BENCH_UNPADDED` (1), `BENCH_POOLS_OUT` (a file for the examples'
//! lengths, task by task and split by split, for bench/fomaml_step_torch.py's `BENCH_POOLS`). Prints one line `RESULT impl=rust threads=..
//! meta_steps_per_s=.. tokens_per_s=.. computed_tokens_per_step=.. peak_rss_mib=..`.

use std::time::Instant;

use fomaml::config::schema::{MetaSection, OptimSection};
use fomaml::data::sampler::SplitMix64;
use fomaml::data::sft::EncodedExample;
use fomaml::data::synthetic::math_like_lengths;
use fomaml::data::tasks::TaskData;
use fomaml::meta::core::Learner;
use fomaml::meta::fomaml::meta_gradient;
use fomaml::model::{load_weights, ModelConfig, Weights};
use fomaml::optim::{clip_grad_norm, Optimizer};
use fomaml::runtime::{peak_rss_bytes, reset_peak_rss};
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 2048;
const SEQ: usize = 128;
const TASKS: usize = 4;
/// Examples per task and split: the samplers walk through them epoch by epoch.
const POOL: usize = 64;

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// CPU seconds this process has used (user + system, all threads), from /proc/self/stat: a
/// second measure that other processes' load on a shared machine disturbs less than wall time.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (ticks).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

fn model_config() -> ModelConfig {
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": MAX_LEN,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
    });
    ModelConfig::from_json(&json.to_string()).expect("a valid Llama config")
}

/// N(0, 0.02²) matrices and unit norms, as transformers' `_init_weights` (initializer_range 0.02).
fn random_weights(cfg: &ModelConfig) -> Weights {
    tch::manual_seed(0);
    let mut w = Weights::new();
    for (name, shape) in cfg.parameter_shapes() {
        let t = if shape.len() == 1 {
            Tensor::ones(shape.as_slice(), (Kind::Float, Device::Cpu))
        } else {
            Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 0.02
        };
        w.insert(name, t);
    }
    w
}

/// Longest sequence of the MATH-like workload (the model's max_position_embeddings).
const MAX_LEN: usize = 1024;

fn random_example(rng: &mut SplitMix64, len: usize, vocab: i64) -> EncodedExample {
    let input_ids: Vec<i64> = (0..len).map(|_| rng.below(vocab as u64) as i64).collect();
    EncodedExample {
        loss_mask: (0..len).map(|i| i64::from(i >= len / 2)).collect(),
        attention_mask: vec![1; len],
        position_ids: (0..len as i64).collect(),
        input_ids,
    }
}

/// `BENCH_MODEL`'s model directory (a real checkpoint, e.g. SmolLM2-135M from `fomaml
/// import-gguf`), else the random Llama above; computing in `BENCH_DTYPE` (f32 or bf16, over fp32
/// master weights).
fn learner() -> Learner {
    let kind = match std::env::var("BENCH_DTYPE").as_deref() {
        Ok("bf16") => Kind::BFloat16,
        Ok("f32") | Err(_) => Kind::Float,
        Ok(other) => panic!("BENCH_DTYPE={other}: f32 or bf16"),
    };
    let Ok(dir) = std::env::var("BENCH_MODEL") else {
        let cfg = model_config();
        return Learner::new(cfg.clone(), random_weights(&cfg), Device::Cpu, kind, 0);
    };
    let dir = std::path::Path::new(&dir);
    let cfg = ModelConfig::from_dir(dir).unwrap_or_else(|e| panic!("BENCH_MODEL={}: {e}", dir.display()));
    let weights = load_weights(dir, &cfg, Kind::Float, Device::Cpu).expect("BENCH_MODEL's weights load");
    Learner::new(cfg, weights, Device::Cpu, kind, 0)
}

fn main() {
    let threads = env_usize("BENCH_THREADS", std::thread::available_parallelism().map_or(1, |n| n.get()));
    let warmup = env_usize("BENCH_WARMUP", 2);
    let steps = env_usize("BENCH_STEPS", 5);
    tch::set_num_threads(threads as i32);

    let math_like = match std::env::var("BENCH_LENGTHS").as_deref() {
        Ok("math") => true,
        Ok("fixed") | Err(_) => false,
        Ok(other) => panic!("BENCH_LENGTHS={other}: fixed or math"),
    };
    let (task_count, inner_steps) = (env_usize("BENCH_TASKS", TASKS), env_usize("BENCH_INNER_STEPS", 5));
    let mut learner = learner();
    let vocab = learner.config().vocab_size;
    learner.unpadded = env_usize("BENCH_UNPADDED", 1) != 0;
    let mut rng = SplitMix64::new(1);
    let pool = |rng: &mut SplitMix64| -> Vec<EncodedExample> {
        let lengths = match math_like {
            true => math_like_lengths(rng, POOL, MAX_LEN),
            false => vec![SEQ; POOL],
        };
        lengths.into_iter().map(|len| random_example(rng, len, vocab)).collect()
    };
    let mut pool_lengths = serde_json::json!({"support": [], "query": []});
    let mut tasks: Vec<TaskData> = (0..task_count)
        .map(|i| {
            let support = pool(&mut rng);
            let query = pool(&mut rng);
            for (split, examples) in [("support", &support), ("query", &query)] {
                let lengths: Vec<usize> = examples.iter().map(|e: &EncodedExample| e.input_ids.len()).collect();
                pool_lengths[split].as_array_mut().expect("a list").push(lengths.into());
            }
            TaskData::from_examples(&format!("task{i}"), support, query, 7).expect("non-empty splits")
        })
        .collect();
    // The PyTorch bench builds its pools with these lengths (bench/padding_free.sh).
    if let Ok(path) = std::env::var("BENCH_POOLS_OUT") {
        std::fs::write(&path, pool_lengths.to_string()).unwrap_or_else(|e| panic!("BENCH_POOLS_OUT={path}: {e}"));
    }
    let meta = MetaSection {
        inner_lr: 1e-3,
        num_inner_steps: inner_steps,
        inner_batch_size: 4,
        query_batch_size: 4,
        meta_batch_size: task_count,
        fresh_support_batch_per_step: true,
        ..Default::default()
    };
    let optim = OptimSection { weight_decay: 0.01, clip_grad: 1.0, ..Default::default() };
    let mut optimizer = Optimizer::new(&optim, 1e-4, learner.params());
    let grad = learner.zeros_like_params();

    let mut meta_step = || {
        let mut batch: Vec<&mut TaskData> = tasks.iter_mut().collect();
        let outcomes = meta_gradient(&learner, &mut batch, &meta, &grad).unwrap();
        let _norm = clip_grad_norm(&grad, optim.clip_grad);
        optimizer.step(learner.params(), &grad, 1.0);
        let loss = outcomes.iter().map(|o| o.query_loss).sum::<f64>() / outcomes.len() as f64;
        (outcomes.iter().map(|o| o.tokens).sum::<i64>(), loss)
    };
    for _ in 0..warmup {
        meta_step();
    }
    let (mut tokens, mut last_loss) = (0i64, f64::NAN);
    let computed_before = learner.computed_tokens();
    reset_peak_rss();
    let (started, cpu_started) = (Instant::now(), process_cpu_seconds());
    for _ in 0..steps {
        let (t, loss) = meta_step();
        tokens += t;
        last_loss = loss;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds() - cpu_started;
    let computed = learner.computed_tokens() - computed_before;
    println!(
        "RESULT impl=rust threads={threads} steps={steps} seconds={seconds:.3} cpu_seconds={cpu_seconds:.2} \
         meta_steps_per_s={:.4} tokens_per_s={:.1} tokens_per_step={} computed_tokens_per_step={} \
         peak_rss_mib={:.0} query_loss={last_loss:.4}",
        steps as f64 / seconds,
        tokens as f64 / seconds,
        tokens / steps.max(1) as i64,
        computed / steps.max(1) as i64,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
    );
}
