//! The synthetic task family of the embedded default, and the tiny model it is meant for.
//!
//! Each task sorts a number 0–99 into one of three bins A/B/C at two hidden cut points
//! (`x < lo` → A, `lo ≤ x < hi` → B, else C). The design follows what DESIGN.md records from an
//! earlier trial:
//! - the prompt shows only the number, and the task-dependent part of the response is one token
//!   (the bin letter inside `\boxed{}`), so the task cannot be read from the prompt nor inferred in
//!   context from earlier answer tokens: only adaptation on the support set reveals it;
//! - tasks share their structure and differ in a two-dimensional, ordered parameter (the cuts), so
//!   a few gradient steps can move a well-placed initialisation to a new task, and held-out tasks
//!   are new cut pairs from the same distribution;
//! - sequences are ~25 characters and the model is ~100k parameters, so thousands of meta-steps
//!   fit in a CPU demo.
//!
//! The tiny model uses a character-level tokenizer (printable ASCII plus chat specials) and a
//! minimal chat template, and is initialised from the seed with an in-house generator so that the
//! embedded default is the same on every machine and libtorch version.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use tch::{Kind, Tensor};

use super::prepare::TaskSplits;
use super::sampler::{stable_hash, SplitMix64};
use super::task_files::Example;
use crate::model::ModelConfig;

/// How many tasks and examples to make.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub train_tasks: usize,
    pub eval_tasks: usize,
    pub support: usize,
    pub query: usize,
    pub test: usize,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self { train_tasks: 48, eval_tasks: 16, support: 32, query: 32, test: 32, seed: 42 }
    }
}

/// The numbers a task sorts; support, query and test of a task use disjoint numbers.
const NUMBERS: u64 = 100;
/// Cut points are drawn from this range with at least `MIN_GAP` between them, so every bin is
/// non-empty and a task is never (nearly) a two-bin task.
const CUT_RANGE: (u64, u64) = (10, 90);
const MIN_GAP: u64 = 15;

/// The two cut points of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cuts {
    pub lo: u64,
    pub hi: u64,
}

impl Cuts {
    pub fn label(self, x: u64) -> char {
        if x < self.lo {
            'A'
        } else if x < self.hi {
            'B'
        } else {
            'C'
        }
    }

    pub fn task_name(self) -> String {
        format!("bins_{:02}_{:02}", self.lo, self.hi)
    }

    pub fn example(self, x: u64) -> Example {
        Example { prompt: format!("Bin {x}"), response: format!("\\boxed{{{}}}", self.label(x)) }
    }
}

/// Training tasks and held-out tasks (distinct cut pairs), each with support / query / test.
pub struct SyntheticTasks {
    pub train: BTreeMap<String, TaskSplits>,
    pub eval: BTreeMap<String, TaskSplits>,
}

pub fn make_tasks(spec: &SyntheticSpec) -> Result<SyntheticTasks> {
    let per_task = spec.support + spec.query + spec.test;
    if per_task as u64 > NUMBERS {
        bail!("support + query + test = {per_task}, but a task has only {NUMBERS} distinct numbers");
    }
    if spec.support == 0 || spec.query == 0 {
        bail!("support and query need at least one example each");
    }
    let wanted = spec.train_tasks + spec.eval_tasks;
    let mut all_cuts: Vec<Cuts> = (CUT_RANGE.0..=CUT_RANGE.1)
        .flat_map(|lo| (lo + MIN_GAP..=CUT_RANGE.1).map(move |hi| Cuts { lo, hi }))
        .collect();
    if wanted > all_cuts.len() {
        bail!("{wanted} tasks asked for, but only {} distinct cut pairs exist", all_cuts.len());
    }
    let mut rng = SplitMix64::new(spec.seed ^ stable_hash("synthetic-cuts"));
    rng.shuffle(&mut all_cuts);
    let mut tasks = SyntheticTasks { train: BTreeMap::new(), eval: BTreeMap::new() };
    for (i, cuts) in all_cuts.into_iter().take(wanted).enumerate() {
        let name = cuts.task_name();
        let mut numbers: Vec<u64> = (0..NUMBERS).collect();
        SplitMix64::new(spec.seed ^ stable_hash(&name)).shuffle(&mut numbers);
        let tagged = |xs: &[u64]| xs.iter().map(|&x| (cuts.example(x), cuts.label(x).to_string())).collect();
        let splits = TaskSplits {
            support: tagged(&numbers[..spec.support]),
            query: tagged(&numbers[spec.support..spec.support + spec.query]),
            test: tagged(&numbers[spec.support + spec.query..per_task]),
        };
        let set = if i < spec.train_tasks { &mut tasks.train } else { &mut tasks.eval };
        set.insert(name, splits);
    }
    Ok(tasks)
}

/// How a task names its three bins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Labels {
    /// A, B, C in order: tasks differ only in their cut points.
    #[default]
    Ordered,
    /// Each cut pair appears six times, once with every order of the letters: a task's letters are
    /// unknowable without its support examples, so no model that does not adapt can beat chance
    /// (1/3) on held-out tasks, whatever it learnt from the training tasks.
    Permuted,
}

/// The six orders of A, B and C.
const ORDERS: [[char; 3]; 6] =
    [['A', 'B', 'C'], ['A', 'C', 'B'], ['B', 'A', 'C'], ['B', 'C', 'A'], ['C', 'A', 'B'], ['C', 'B', 'A']];

/// [`make_tasks`] with `labels`: with [`Labels::Permuted`], every cut pair drawn becomes six
/// tasks (the same numbers in each split, one task per order of the letters), so task counts must
/// be multiples of six.
pub fn make_labelled_tasks(spec: &SyntheticSpec, labels: Labels) -> Result<SyntheticTasks> {
    if labels == Labels::Ordered {
        return make_tasks(spec);
    }
    if spec.train_tasks % ORDERS.len() != 0 || spec.eval_tasks % ORDERS.len() != 0 {
        bail!(
            "permuted labels need task counts that are multiples of {} (each cut pair with every order of A, B, C); \
             got {} training and {} held-out tasks",
            ORDERS.len(),
            spec.train_tasks,
            spec.eval_tasks
        );
    }
    let pairs = SyntheticSpec {
        train_tasks: spec.train_tasks / ORDERS.len(),
        eval_tasks: spec.eval_tasks / ORDERS.len(),
        ..spec.clone()
    };
    let ordered = make_tasks(&pairs)?;
    let permute = |set: BTreeMap<String, TaskSplits>| {
        let mut out = BTreeMap::new();
        for (name, splits) in set {
            for order in ORDERS {
                let relabel = |items: &[(Example, String)]| -> Vec<(Example, String)> {
                    items
                        .iter()
                        .map(|(e, bin)| {
                            let letter = order[(bin.as_bytes()[0] - b'A') as usize];
                            let example =
                                Example { prompt: e.prompt.clone(), response: format!("\\boxed{{{letter}}}") };
                            (example, letter.to_string())
                        })
                        .collect()
                };
                let splits = TaskSplits {
                    support: relabel(&splits.support),
                    query: relabel(&splits.query),
                    test: relabel(&splits.test),
                };
                out.insert(format!("{name}_{}", order.iter().collect::<String>()), splits);
            }
        }
        out
    };
    Ok(SyntheticTasks { train: permute(ordered.train), eval: permute(ordered.eval) })
}

const SPECIALS: [&str; 6] = ["<|pad|>", "<unk>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"];
const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + \
                             '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

/// Sequence lengths shaped like MATH's (problem + worked solution, in Llama-3 tokens): log-normal
/// with a median of about 270 tokens and a long tail, cut to [32, `max`]. The benchmarks' and
/// tests' variable-length workload, stated once.
pub fn math_like_lengths(rng: &mut SplitMix64, n: usize, max: usize) -> Vec<usize> {
    let uniform = |rng: &mut SplitMix64| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(rng).max(1e-12), uniform(rng));
            let normal = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            (5.6 + 0.7 * normal).exp().clamp(32.0, max as f64) as usize
        })
        .collect()
}

/// The tiny model's shape: a 2-layer Llama with GQA and tied embeddings.
pub fn tiny_config() -> Json {
    let vocab = SPECIALS.len() + 1 + 95; // specials, '\n', printable ASCII
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "silu",
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": true,
        "attention_bias": false,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "eos_token_id": 2,
        "bos_token_id": null,
        "torch_dtype": "float32",
    })
}

/// A character-level tokenizer.json: BPE with single-character tokens and no merges, so every
/// printable ASCII character is one token and the chat specials are added tokens.
fn tokenizer_json() -> Json {
    let mut vocab = serde_json::Map::new();
    let chars = std::iter::once('\n').chain((32u8..127).map(char::from));
    for (id, token) in SPECIALS.iter().map(|s| s.to_string()).chain(chars.map(String::from)).enumerate() {
        vocab.insert(token, json!(id));
    }
    let added: Vec<Json> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    })
}

fn tokenizer_config() -> Json {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|end|>",
        "pad_token": "<|pad|>",
        "unk_token": "<unk>",
        "bos_token": null,
        "model_max_length": 256,
        "chat_template": CHAT_TEMPLATE,
    })
}

/// Normal(0, std) draws from SplitMix64 (Box–Muller), so the initial weights do not depend on
/// libtorch's generator.
fn normal_tensor(rng: &mut SplitMix64, shape: &[i64], std: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let uniform = |rng: &mut SplitMix64| ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (uniform(rng), uniform(rng));
            (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// Writes the tiny model (config.json, tokenizer.json, tokenizer_config.json and model.safetensors
/// initialised from `seed` the way transformers initialises Llama: N(0, 0.02), norms at one) to `dir`.
pub fn write_tiny_model(dir: &Path, seed: u64) -> Result<()> {
    write_model(dir, &tiny_config(), seed)
}

/// As [`write_tiny_model`] with another shape: `config` is [`tiny_config`] with fields changed
/// (the vocabulary must stay the character tokenizer's).
pub fn write_model(dir: &Path, config: &Json, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write_json = |name: &str, value: &Json| -> Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write_json("config.json", config)?;
    write_json("tokenizer.json", &tokenizer_json())?;
    write_json("tokenizer_config.json", &tokenizer_config())?;

    let cfg =
        ModelConfig::from_json(&config.to_string()).map_err(|e| anyhow::anyhow!("the tiny model's config: {e}"))?;
    let std = config["initializer_range"].as_f64().unwrap_or(0.02);
    let mut rng = SplitMix64::new(seed ^ stable_hash("tiny-model-init"));
    let tensors: Vec<(String, Tensor)> = cfg
        .parameter_shapes()
        .into_iter()
        .map(|(name, shape)| {
            let tensor = if name.ends_with("norm.weight") {
                Tensor::ones(shape.as_slice(), (Kind::Float, tch::Device::Cpu))
            } else {
                normal_tensor(&mut rng, &shape, std)
            };
            (name, tensor)
        })
        .collect();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    crate::tensor_io::write_safetensors(&dir.join("model.safetensors"), &refs, None).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accuracy of the best predictor that sees only the prompt (never the task's support
    /// examples) on `set`'s `split` items: per prompt, its most frequent answer across the tasks.
    fn best_non_adaptive(set: &BTreeMap<String, TaskSplits>, split: fn(&TaskSplits) -> &[(Example, String)]) -> f64 {
        let mut counts: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
        for splits in set.values() {
            for (example, answer) in split(splits) {
                *counts.entry(example.prompt.as_str()).or_default().entry(answer.as_str()).or_default() += 1;
            }
        }
        let best: usize = counts.values().map(|answers| answers.values().max().copied().unwrap_or(0)).sum();
        let total: usize = counts.values().flat_map(|answers| answers.values()).sum();
        best as f64 / total as f64
    }

    /// The permuted family's promise: on held-out tasks (query, which evaluation scores, and test)
    /// no model that ignores the support examples beats chance, even one fitted to the held-out
    /// answers themselves. The ordered family fails the same check: a prior alone gets most of it.
    #[test]
    fn with_permuted_labels_nothing_that_skips_adaptation_beats_chance() {
        let spec = SyntheticSpec { train_tasks: 48, eval_tasks: 18, ..SyntheticSpec::default() };
        let permuted = make_labelled_tasks(&spec, Labels::Permuted).unwrap();
        assert_eq!((permuted.train.len(), permuted.eval.len()), (48, 18));
        for (name, split) in [
            ("query", (|s: &TaskSplits| &s.query[..]) as fn(&TaskSplits) -> &[(Example, String)]),
            ("test", |s| &s.test[..]),
        ] {
            let best = best_non_adaptive(&permuted.eval, split);
            assert!((best - 1.0 / 3.0).abs() < 1e-12, "held-out {name}: {best}");
            assert!((best_non_adaptive(&permuted.train, split) - 1.0 / 3.0).abs() < 1e-12, "training {name}");
        }
        let ordered = make_labelled_tasks(&spec, Labels::Ordered).unwrap();
        let leaky = best_non_adaptive(&ordered.eval, |s| &s.query[..]);
        assert!(leaky > 0.6, "the ordered family's prior should be informative: {leaky}");
        let err = make_labelled_tasks(&SyntheticSpec::default(), Labels::Permuted).err().unwrap().to_string();
        assert!(err.contains("multiples of 6") && err.contains("16 held-out"), "{err}");
    }

    #[test]
    fn tasks_are_distinct_and_splits_disjoint() {
        let tasks = make_tasks(&SyntheticSpec::default()).unwrap();
        assert_eq!(tasks.train.len(), 48);
        assert_eq!(tasks.eval.len(), 16);
        assert!(tasks.train.keys().all(|k| !tasks.eval.contains_key(k)));
        for splits in tasks.train.values().chain(tasks.eval.values()) {
            let mut prompts: Vec<&str> = [&splits.support, &splits.query, &splits.test]
                .iter()
                .flat_map(|s| s.iter().map(|(e, _)| e.prompt.as_str()))
                .collect();
            let n = prompts.len();
            prompts.sort();
            prompts.dedup();
            assert_eq!(prompts.len(), n, "a number appears in two splits of one task");
        }
    }

    #[test]
    fn labels_follow_the_cuts_and_the_prompt_hides_them() {
        let cuts = Cuts { lo: 20, hi: 50 };
        assert_eq!([cuts.label(19), cuts.label(20), cuts.label(49), cuts.label(50)], ['A', 'B', 'B', 'C']);
        let e = cuts.example(7);
        assert_eq!((e.prompt.as_str(), e.response.as_str()), ("Bin 7", "\\boxed{A}"));
        assert_eq!(Cuts { lo: 30, hi: 60 }.example(7).prompt, e.prompt);
    }

    #[test]
    fn same_seed_same_tasks() {
        let a = make_tasks(&SyntheticSpec::default()).unwrap();
        let b = make_tasks(&SyntheticSpec::default()).unwrap();
        let c = make_tasks(&SyntheticSpec { seed: 7, ..Default::default() }).unwrap();
        assert_eq!(a.train.keys().collect::<Vec<_>>(), b.train.keys().collect::<Vec<_>>());
        assert_ne!(a.train.keys().collect::<Vec<_>>(), c.train.keys().collect::<Vec<_>>());
    }

    #[test]
    fn too_many_examples_or_tasks_are_refused() {
        let err = make_tasks(&SyntheticSpec { support: 60, query: 60, ..Default::default() }).err().unwrap();
        assert!(err.to_string().contains("distinct numbers"), "{err}");
        let err = make_tasks(&SyntheticSpec { train_tasks: 5000, ..Default::default() }).err().unwrap();
        assert!(err.to_string().contains("cut pairs"), "{err}");
    }
}
