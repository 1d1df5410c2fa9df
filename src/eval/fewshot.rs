//! Few-shot evaluation (`fomaml eval`): for each task and each number of shots n, over several runs,
//! draw n shots from the task's support pool, adapt θ on them with the inner loop's rule (the
//! optimizer, learning rate and clipping the algorithm meta-trained with, by default), then score
//! the task's evaluation items — their teacher-forced loss, and the accuracy of the adapted model's
//! greedy generations judged by [`judge`] (multiple choice, else [`is_correct`](super::answer::is_correct)) — and restore θ.
//!
//! Results use the original trainer's layout, `{task: {n: {loss_mean, loss_std, accuracy_mean, accuracy_std}}}`
//! (std over runs, numpy's default ddof = 0), with each run's per-item correctness under `runs` for
//! paired comparisons ([`super::compare`]). The shots never overlap the evaluated items: they come
//! from the support split, the items from the query (held-out tasks) or test split.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::answer::extract_answer;
use super::choice::judge;
use super::generate::{generate, GenerationConfig, StopReason};
use super::item_scores;
use crate::data::sampler::{stable_hash, SplitMix64};
use crate::data::sft::{EncodedExample, SftBatch};
use crate::data::tasks::{Split, TaskData};
use crate::data::ChatTokenizer;
use crate::meta::core::{InnerRule, Learner};

#[derive(Debug, Clone)]
pub struct FewShotSettings {
    pub shots: Vec<usize>,
    pub runs: usize,
    /// How θ adapts to the shots, with fresh optimizer state each run.
    pub inner: InnerRule,
    /// How many passes over the shots adaptation makes.
    pub passes: Passes,
    /// Rows per adaptation batch (the last of a pass holds the rest).
    pub batch_size: usize,
    /// Rows per batch when scoring and generating.
    pub score_batch_size: usize,
    pub seed: u64,
    pub generation: GenerationConfig,
    /// Evaluate at most this many items per task (file order).
    pub max_items: Option<usize>,
    /// Keep every judged generation ([`Sample`]) in the results, for `--log-samples`.
    pub keep_samples: bool,
}

/// How long adaptation on n shots runs. Every pass goes over all n shots, in batches of B,
/// reshuffled each pass from the run's seed, so no shot is left out whatever n is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passes {
    /// The fewest whole passes that make at least this many steps, and at least one pass: the
    /// default, with the inner loop's K, so small n still gets K steps and large n every shot.
    AtLeastSteps(usize),
    /// Exactly this many passes (the original evaluation's 100).
    Exactly(usize),
}

impl Passes {
    /// Passes over n shots in batches of `batch_size`.
    pub fn count(self, n: usize, batch_size: usize) -> usize {
        let per_pass = n.div_ceil(batch_size.max(1)).max(1);
        match self {
            Passes::AtLeastSteps(k) => k.div_ceil(per_pass).max(1),
            Passes::Exactly(e) => e,
        }
    }
}

impl std::fmt::Display for Passes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Passes::AtLeastSteps(k) => write!(f, "whole passes over the shots, at least one and at least {k} steps"),
            Passes::Exactly(e) => write!(f, "{e} passes over the shots"),
        }
    }
}

/// How one number of shots was adapted on: written into the results, so a curve says what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptationRecord {
    /// The inner rule (optimizer, learning rate, clipping), as printed.
    pub rule: String,
    pub batch_size: usize,
    pub passes: usize,
    pub steps: usize,
    /// Distinct shots that went into at least one step (n, unless n is 0).
    pub shots_used: usize,
}

/// One judged generation, for `--log-samples`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub task: String,
    pub shots: usize,
    pub run: usize,
    /// The item's index in the evaluated split (after `--max-items`).
    pub item: usize,
    pub prompt: String,
    pub generated: String,
    /// What the judge read as the answer (`\boxed{}`, else `####`); null when it found none.
    pub extracted: Option<String>,
    pub gold: String,
    pub correct: bool,
    /// eos, stop_string, or length (the generation budget ran out).
    pub stop: &'static str,
}

/// One run at one number of shots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub loss: f64,
    pub accuracy: f64,
    /// Per evaluated item, in order: whether the generated answer is correct.
    pub correct: Vec<bool>,
    /// Per evaluated item: whether generation stopped at the token budget (absent in older files).
    #[serde(default)]
    pub truncated: Vec<bool>,
    /// Per evaluated item: its reference response's mean loss per token (absent in older files).
    /// `loss` weighs items by their tokens; paired comparisons resample these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub item_loss: Vec<f64>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShotResult {
    pub loss_mean: f64,
    pub loss_std: f64,
    pub accuracy_mean: f64,
    pub accuracy_std: f64,
    /// Fraction of generations, over all runs, cut by the token budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_fraction: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptation: Option<AdaptationRecord>,
    pub runs: Vec<RunResult>,
}

impl ShotResult {
    fn new(runs: Vec<RunResult>, adaptation: Option<AdaptationRecord>) -> Self {
        let (loss_mean, loss_std) = mean_std(runs.iter().map(|r| r.loss));
        let (accuracy_mean, accuracy_std) = mean_std(runs.iter().map(|r| r.accuracy));
        let judged: Vec<bool> = runs.iter().flat_map(|r| r.truncated.iter().copied()).collect();
        let truncated_fraction =
            (!judged.is_empty()).then(|| judged.iter().filter(|t| **t).count() as f64 / judged.len() as f64);
        Self { loss_mean, loss_std, accuracy_mean, accuracy_std, truncated_fraction, adaptation, runs }
    }
}

/// One task's curve: results by number of shots, in the order evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResults {
    pub task: String,
    pub by_shots: Vec<(usize, ShotResult)>,
}

fn mean_std(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.collect();
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
}

/// The seed of one run's draws: a function of (seed, task, n, run).
fn run_key(seed: u64, task: &str, n: usize, run: usize) -> u64 {
    seed ^ stable_hash(task) ^ (n as u64).wrapping_mul(0x9e37_79b9) ^ (run as u64).rotate_left(32)
}

/// The n shots of one run: distinct support examples.
fn draw_shots(pool: usize, n: usize, key: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pool).collect();
    SplitMix64::new(key).shuffle(&mut order);
    order.truncate(n);
    order
}

/// The batches of one run's adaptation, as indices into the support pool: `passes` passes over
/// `shots`, each in a fresh order drawn from `key`, cut into batches of `batch_size`.
fn adaptation_batches(shots: &[usize], passes: usize, batch_size: usize, key: u64) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    for pass in 0..passes {
        let mut order = shots.to_vec();
        SplitMix64::new(key ^ (pass as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03)).shuffle(&mut order);
        batches.extend(order.chunks(batch_size.max(1)).map(<[usize]>::to_vec));
    }
    batches
}

/// An example's prompt (everything before the first scored token) and its reference response text
/// (the scored tokens but the final eos).
fn prompt_and_reference(example: &EncodedExample, tokenizer: &ChatTokenizer) -> Result<(Vec<i64>, String)> {
    let start = example.loss_mask.iter().position(|m| *m != 0).context("an example with no response tokens")?;
    let end = example.loss_mask.iter().rposition(|m| *m != 0).map_or(start, |e| e + 1);
    let mut response = &example.input_ids[start..end];
    if response.last() == Some(&tokenizer.eos_id) {
        response = &response[..response.len() - 1];
    }
    Ok((example.input_ids[..start].to_vec(), tokenizer.decode(response)?))
}

/// One item's generation at the current θ (greedy), judged.
struct Judged {
    correct: bool,
    stop: StopReason,
    prompt: String,
    generated: String,
    gold: String,
}

fn judge_items(
    learner: &Learner,
    tokenizer: &ChatTokenizer,
    items: &[EncodedExample],
    settings: &FewShotSettings,
) -> Result<Vec<Judged>> {
    let model = learner.scoring_model();
    let decode = |ids: &[i64]| tokenizer.decode(ids).unwrap_or_default();
    let mut judged = Vec::with_capacity(items.len());
    for chunk in items.chunks(settings.score_batch_size.max(1)) {
        let pairs = chunk.iter().map(|e| prompt_and_reference(e, tokenizer)).collect::<Result<Vec<_>>>()?;
        let prompts: Vec<Vec<i64>> = pairs.iter().map(|(p, _)| p.clone()).collect();
        let generated = generate(&model, &prompts, learner.pad_id, learner.device, &settings.generation, &decode);
        for ((prompt, gold), g) in pairs.into_iter().zip(generated) {
            let tokens = match g.tokens.last() {
                Some(t) if settings.generation.eos_ids.contains(t) => &g.tokens[..g.tokens.len() - 1],
                _ => &g.tokens[..],
            };
            let text = decode(tokens);
            // The prompt's text lists a multiple-choice item's options.
            let prompt = decode(&prompt);
            let correct = judge(&prompt, &text, &gold);
            let prompt = if settings.keep_samples { prompt } else { String::new() };
            judged.push(Judged { correct, stop: g.stop, prompt, generated: text, gold });
        }
    }
    Ok(judged)
}

fn stop_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Eos => "eos",
        StopReason::StopString => "stop_string",
        StopReason::Length => "length",
    }
}

/// Adapts θ on the shots of one run as `settings` say; returns how it ran.
fn adapt_on_shots(
    learner: &Learner,
    pool: &[EncodedExample],
    shots: &[usize],
    settings: &FewShotSettings,
    key: u64,
) -> Result<AdaptationRecord> {
    if shots.is_empty() {
        // Nothing to adapt on, and no optimizer state to allocate.
        return Ok(AdaptationRecord {
            rule: "none (0 shots)".into(),
            batch_size: 1,
            passes: 0,
            steps: 0,
            shots_used: 0,
        });
    }
    let batch_size = settings.batch_size.clamp(1, shots.len());
    let passes = settings.passes.count(shots.len(), batch_size);
    let batches = adaptation_batches(shots, passes, batch_size, key);
    let mut optimizer = settings.inner.start(learner);
    let mut used = std::collections::BTreeSet::new();
    for batch in &batches {
        used.extend(batch.iter().copied());
        let rows: Vec<&EncodedExample> = batch.iter().map(|&i| &pool[i]).collect();
        let (_, grads) = learner.loss_and_grads(&SftBatch::collate(&rows, learner.pad_id, learner.device))?;
        optimizer.step(learner, &grads)?;
    }
    Ok(AdaptationRecord {
        rule: settings.inner.to_string(),
        batch_size,
        passes,
        steps: batches.len(),
        shots_used: used.len(),
    })
}

/// The few-shot curve of one task, scored on `split`; `progress` is called after each run.
pub fn evaluate_task(
    learner: &Learner,
    tokenizer: &ChatTokenizer,
    task: &TaskData,
    split: Split,
    settings: &FewShotSettings,
    progress: &mut dyn FnMut(),
) -> Result<TaskResults> {
    let pool = task.examples(Split::Support);
    let mut items = task.examples(split);
    if let Some(max) = settings.max_items {
        items = &items[..items.len().min(max)];
    }
    if items.is_empty() {
        bail!("task `{}` has no {} items to evaluate", task.name, split.name());
    }
    let mut by_shots = Vec::new();
    for &n in &settings.shots {
        if n > pool.len() {
            bail!("task `{}`: {n} shots asked, its support split has {} examples", task.name, pool.len());
        }
        // Without shots there is nothing to draw: one run says it all.
        let runs = if n == 0 { 1 } else { settings.runs.max(1) };
        let mut results = Vec::with_capacity(runs);
        let mut adaptation = None;
        for run in 0..runs {
            let theta = learner.snapshot();
            let key = run_key(settings.seed, &task.name, n, run);
            let shots = draw_shots(pool.len(), n, key);
            let record = adapt_on_shots(learner, pool, &shots, settings, key)?;
            adaptation.get_or_insert(record);
            let scores = item_scores(learner, items)?;
            let loss =
                scores.iter().map(|(sum, _)| sum).sum::<f64>() / scores.iter().map(|(_, n)| n).sum::<f64>().max(1.0);
            let item_loss = scores.iter().map(|(sum, tokens)| sum / tokens.max(1.0)).collect();
            let judged = judge_items(learner, tokenizer, items, settings)?;
            learner.restore(&theta);
            let correct: Vec<bool> = judged.iter().map(|j| j.correct).collect();
            let truncated = judged.iter().map(|j| j.stop == StopReason::Length).collect();
            let accuracy = correct.iter().filter(|c| **c).count() as f64 / correct.len() as f64;
            let samples = if settings.keep_samples {
                judged
                    .into_iter()
                    .enumerate()
                    .map(|(item, j)| Sample {
                        task: task.name.clone(),
                        shots: n,
                        run,
                        item,
                        extracted: extract_answer(&j.generated),
                        prompt: j.prompt,
                        generated: j.generated,
                        gold: j.gold,
                        correct: j.correct,
                        stop: stop_name(j.stop),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            results.push(RunResult { loss, accuracy, correct, truncated, item_loss, samples });
            progress();
        }
        by_shots.push((n, ShotResult::new(results, adaptation)));
    }
    Ok(TaskResults { task: task.name.clone(), by_shots })
}

/// The original trainer's JSON layout (shots as string keys, in evaluation order).
pub fn to_json(results: &[TaskResults]) -> Value {
    let mut tasks = Map::new();
    for t in results {
        let mut shots = Map::new();
        for (n, r) in &t.by_shots {
            shots.insert(n.to_string(), serde_json::to_value(r).expect("results serialise"));
        }
        tasks.insert(t.task.clone(), Value::Object(shots));
    }
    Value::Object(tasks)
}

/// Reads [`to_json`]'s layout back; `origin` names the file in errors.
pub fn from_json(value: &Value, origin: &str) -> Result<Vec<TaskResults>> {
    let tasks = value.as_object().with_context(|| format!("{origin}: expected {{task: {{shots: ...}}}}"))?;
    let mut out = Vec::new();
    for (task, shots) in tasks {
        let shots = shots.as_object().with_context(|| format!("{origin}: `{task}` is not a mapping of shots"))?;
        let mut by_shots = Vec::new();
        for (n, r) in shots {
            let count: usize = n.parse().with_context(|| format!("{origin}: `{task}.{n}`: not a number of shots"))?;
            let r: ShotResult = serde_json::from_value(r.clone()).with_context(|| format!("{origin}: `{task}.{n}`"))?;
            by_shots.push((count, r));
        }
        out.push(TaskResults { task: task.clone(), by_shots });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shots_are_distinct_repeatable_and_differ_between_runs() {
        let a = draw_shots(32, 5, run_key(42, "t", 5, 0));
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        assert_eq!(a, draw_shots(32, 5, run_key(42, "t", 5, 0)));
        assert_ne!(a, draw_shots(32, 5, run_key(42, "t", 5, 1)));
        assert_ne!(a, draw_shots(32, 5, run_key(42, "u", 5, 0)));
    }

    /// Issue: 50 shots at K = 5, B = 4 used to adapt on 20 of them.
    #[test]
    fn every_shot_is_used_and_the_step_count_follows_the_rule() {
        for (n, b, passes, steps) in [
            (50, 4, Passes::AtLeastSteps(5), 13), // one pass of ⌈50/4⌉ batches already makes K steps
            (25, 4, Passes::AtLeastSteps(5), 7),
            (5, 4, Passes::AtLeastSteps(5), 6), // 2 batches a pass, 3 passes for 5 steps
            (1, 4, Passes::AtLeastSteps(5), 5),
            (10, 4, Passes::AtLeastSteps(0), 3), // K = 0 still makes one pass
            (10, 4, Passes::Exactly(100), 300),
        ] {
            let shots = draw_shots(60, n, run_key(7, "t", n, 0));
            let count = passes.count(n, b);
            let batches = adaptation_batches(&shots, count, b, 99);
            assert_eq!(batches.len(), steps, "n {n}, B {b}, {passes}");
            let per_pass = n.div_ceil(b);
            for pass in batches.chunks(per_pass) {
                let mut seen: Vec<usize> = pass.iter().flatten().copied().collect();
                seen.sort_unstable();
                let mut expected = shots.clone();
                expected.sort_unstable();
                assert_eq!(seen, expected, "n {n}: each pass holds every shot once");
            }
            if count > 1 && n > 1 {
                assert_ne!(batches[..per_pass], batches[per_pass..2 * per_pass], "passes are reshuffled");
            }
        }
    }

    #[test]
    fn json_round_trips_in_the_original_layout() {
        let run = |a: f64| RunResult {
            loss: 1.0 - a,
            accuracy: a,
            correct: vec![a > 0.5],
            truncated: vec![a < 0.5],
            item_loss: vec![1.0 - a],
            samples: Vec::new(),
        };
        let results = vec![TaskResults {
            task: "calculus".into(),
            by_shots: vec![
                (0, ShotResult::new(vec![run(0.25)], None)),
                (10, ShotResult::new(vec![run(0.5), run(1.0)], None)),
            ],
        }];
        let json = to_json(&results);
        assert_eq!(json["calculus"]["10"]["accuracy_mean"], 0.75);
        assert_eq!(json["calculus"]["10"]["accuracy_std"], 0.25);
        assert_eq!(
            (
                json["calculus"]["0"]["truncated_fraction"].as_f64(),
                json["calculus"]["10"]["truncated_fraction"].as_f64()
            ),
            (Some(1.0), Some(0.0))
        );
        let keys: Vec<&String> = json["calculus"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["0", "10"], "shots keep their order");
        assert_eq!(from_json(&json, "x").unwrap(), results);
        assert!(from_json(&serde_json::json!({"t": {"five": {}}}), "r.json")
            .unwrap_err()
            .to_string()
            .contains("r.json"));
    }
}
