//! Few-shot evaluation (`fomaml eval`): for each task and each number of shots n, over several runs,
//! draw n shots from the task's support pool, adapt θ on them with the inner loop's rule (the
//! optimizer, learning rate and clipping the algorithm meta-trained with, by default), then score
//! the task's evaluation items — their teacher-forced loss, and the accuracy of the adapted model's
//! greedy generations judged by [`answer::is_correct`] — and restore θ.
//!
//! Results use the seeds' layout, `{task: {n: {loss_mean, loss_std, accuracy_mean, accuracy_std}}}`
//! (std over runs, numpy's default ddof = 0), with each run's per-item correctness under `runs` for
//! paired comparisons ([`super::compare`]). The shots never overlap the evaluated items: they come
//! from the support split, the items from the query (held-out tasks) or test split.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::answer::is_correct;
use super::generate::{generate, GenerationConfig};
use super::score_split;
use crate::data::sampler::{stable_hash, SplitMix64};
use crate::data::sft::{EncodedExample, SftBatch};
use crate::data::tasks::{Split, TaskData};
use crate::data::ChatTokenizer;
use crate::meta::core::{InnerRule, Learner};

#[derive(Debug, Clone)]
pub struct FewShotSettings {
    pub shots: Vec<usize>,
    pub runs: usize,
    /// How θ adapts to the shots, with fresh optimizer state each run, and for how many steps.
    pub inner: InnerRule,
    pub steps: usize,
    /// Rows per adaptation batch (fewer when there are fewer shots) and per scoring batch.
    pub batch_size: usize,
    pub seed: u64,
    pub generation: GenerationConfig,
    /// Evaluate at most this many items per task (file order).
    pub max_items: Option<usize>,
}

/// One run at one number of shots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub loss: f64,
    pub accuracy: f64,
    /// Per evaluated item, in order: whether the generated answer is correct.
    pub correct: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShotResult {
    pub loss_mean: f64,
    pub loss_std: f64,
    pub accuracy_mean: f64,
    pub accuracy_std: f64,
    pub runs: Vec<RunResult>,
}

impl ShotResult {
    fn new(runs: Vec<RunResult>) -> Self {
        let (loss_mean, loss_std) = mean_std(runs.iter().map(|r| r.loss));
        let (accuracy_mean, accuracy_std) = mean_std(runs.iter().map(|r| r.accuracy));
        Self { loss_mean, loss_std, accuracy_mean, accuracy_std, runs }
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

/// The n shots of one run: distinct support examples, a function of (seed, task, n, run).
fn draw_shots(pool: usize, n: usize, seed: u64, task: &str, run: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pool).collect();
    let key = seed ^ stable_hash(task) ^ (n as u64).wrapping_mul(0x9e37_79b9) ^ (run as u64).rotate_left(32);
    SplitMix64::new(key).shuffle(&mut order);
    order.truncate(n);
    order
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

/// Whether the model at the current θ answers each item correctly (greedy generation).
fn correct_answers(
    learner: &Learner,
    tokenizer: &ChatTokenizer,
    items: &[EncodedExample],
    settings: &FewShotSettings,
) -> Result<Vec<bool>> {
    let model = learner.scoring_model();
    let decode = |ids: &[i64]| tokenizer.decode(ids).unwrap_or_default();
    let mut correct = Vec::with_capacity(items.len());
    for chunk in items.chunks(settings.batch_size.max(1)) {
        let pairs = chunk.iter().map(|e| prompt_and_reference(e, tokenizer)).collect::<Result<Vec<_>>>()?;
        let prompts: Vec<Vec<i64>> = pairs.iter().map(|(p, _)| p.clone()).collect();
        let generated = generate(&model, &prompts, learner.pad_id, learner.device, &settings.generation, &decode);
        for ((_, reference), g) in pairs.iter().zip(generated) {
            let tokens = match g.tokens.last() {
                Some(t) if settings.generation.eos_ids.contains(t) => &g.tokens[..g.tokens.len() - 1],
                _ => &g.tokens[..],
            };
            correct.push(is_correct(&decode(tokens), reference));
        }
    }
    Ok(correct)
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
        for run in 0..runs {
            let theta = learner.snapshot();
            let shots = draw_shots(pool.len(), n, settings.seed, &task.name, run);
            if n > 0 {
                let batch = settings.batch_size.clamp(1, n);
                let mut optimizer = settings.inner.start(learner);
                for step in 0..settings.steps {
                    let rows: Vec<&EncodedExample> = (0..batch).map(|i| &pool[shots[(step * batch + i) % n]]).collect();
                    let (_, grads) =
                        learner.loss_and_grads(&SftBatch::collate(&rows, learner.pad_id, learner.device))?;
                    optimizer.step(learner, &grads)?;
                }
            }
            let loss = score_split(learner, items, settings.batch_size)?.loss;
            let correct = correct_answers(learner, tokenizer, items, settings)?;
            learner.restore(&theta);
            let accuracy = correct.iter().filter(|c| **c).count() as f64 / correct.len() as f64;
            results.push(RunResult { loss, accuracy, correct });
            progress();
        }
        by_shots.push((n, ShotResult::new(results)));
    }
    Ok(TaskResults { task: task.name.clone(), by_shots })
}

/// The seeds' JSON layout (shots as string keys, in evaluation order).
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
        let a = draw_shots(32, 5, 42, "t", 0);
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        assert_eq!(a, draw_shots(32, 5, 42, "t", 0));
        assert_ne!(a, draw_shots(32, 5, 42, "t", 1));
        assert_ne!(a, draw_shots(32, 5, 42, "u", 0));
    }

    #[test]
    fn json_round_trips_in_the_seeds_layout() {
        let run = |a: f64| RunResult { loss: 1.0 - a, accuracy: a, correct: vec![a > 0.5] };
        let results = vec![TaskResults {
            task: "calculus".into(),
            by_shots: vec![(0, ShotResult::new(vec![run(0.25)])), (10, ShotResult::new(vec![run(0.5), run(1.0)]))],
        }];
        let json = to_json(&results);
        assert_eq!(json["calculus"]["10"]["accuracy_mean"], 0.75);
        assert_eq!(json["calculus"]["10"]["accuracy_std"], 0.25);
        let keys: Vec<&String> = json["calculus"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["0", "10"], "shots keep their order");
        assert_eq!(from_json(&json, "x").unwrap(), results);
        assert!(from_json(&serde_json::json!({"t": {"five": {}}}), "r.json")
            .unwrap_err()
            .to_string()
            .contains("r.json"));
    }
}
