//! The MATH benchmark as meta-learning tasks: one task per subject, each split into support /
//! query / test, stratified by difficulty level, reproducibly from a seed.
//!
//! Input: the original tree `<root>/{train,test}/<subject>/*.json` (both parts pooled), or one
//! jsonl / parquet / arrow file with columns problem, solution, type, level.

use std::collections::BTreeMap;
use std::path::Path;

use super::local_dataset::{read_rows, Columns};
use super::{check_ratios, PrepareError, TaskSplits};
use crate::data::sampler::{stable_hash, SplitMix64};
use crate::data::task_files::{Example, TaskFileError};

/// verl's MATH prompt suffix.
pub const DEFAULT_INSTRUCTION: &str = "Let's think step by step and output the final answer within \\boxed{}.";

#[derive(Debug, Clone)]
pub struct Problem {
    pub problem: String,
    pub solution: String,
    /// "Algebra", "Counting & Probability", ...
    pub subject: String,
    /// "Level 3" (MATH also has "Level ?").
    pub level: String,
}

/// `Counting & Probability` -> `counting_and_probability`.
pub fn task_name(subject: &str) -> String {
    let words: Vec<String> = subject
        .replace('&', " and ")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.join("_")
}

fn field(value: &serde_json::Value, key: &str, path: &Path) -> Result<String, PrepareError> {
    value
        .get(key)
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| PrepareError::BadRecord { path: path.to_path_buf(), reason: format!("no string field `{key}`") })
}

fn problem_from_json(value: &serde_json::Value, path: &Path) -> Result<Problem, PrepareError> {
    Ok(Problem {
        problem: field(value, "problem", path)?,
        solution: field(value, "solution", path)?,
        subject: field(value, "type", path)?,
        level: field(value, "level", path)?,
    })
}

/// Reads every problem under `source`.
pub fn read_problems(source: &Path) -> Result<Vec<Problem>, PrepareError> {
    if !source.exists() {
        return Err(PrepareError::NoSource(source.to_path_buf()));
    }
    let mut problems = Vec::new();
    if source.is_dir() {
        let mut files = Vec::new();
        for part in ["train", "test"] {
            let Ok(subjects) = std::fs::read_dir(source.join(part)) else { continue };
            for subject in subjects.flatten().filter(|e| e.path().is_dir()) {
                for file in std::fs::read_dir(subject.path()).into_iter().flatten().flatten() {
                    if file.path().extension().is_some_and(|e| e == "json") {
                        files.push(file.path());
                    }
                }
            }
        }
        files.sort();
        for path in files {
            let text =
                std::fs::read_to_string(&path).map_err(|e| TaskFileError::Io { path: path.clone(), source: e })?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| PrepareError::BadRecord { path: path.clone(), reason: format!("not JSON: {e}") })?;
            problems.push(problem_from_json(&value, &path)?);
        }
    } else {
        // One .jsonl / .parquet / .arrow file, read as every other source is.
        let columns = Columns { required: &["problem", "solution", "type", "level"], optional: &[] };
        for row in read_rows(source, &[], &columns)? {
            problems.push(Problem {
                problem: row.required_text("problem")?,
                solution: row.required_text("solution")?,
                subject: row.required_text("type")?,
                level: row.required_text("level")?,
            });
        }
    }
    if problems.is_empty() {
        let expected = "MATH problems: <root>/train/<subject>/*.json, or a .jsonl / .parquet file".into();
        return Err(PrepareError::NothingFound { path: source.to_path_buf(), expected });
    }
    Ok(problems)
}

#[derive(Debug, Clone)]
pub struct SplitOptions {
    pub support_ratio: f64,
    pub query_ratio: f64,
    pub seed: u64,
    pub max_samples_per_task: Option<usize>,
    pub instruction: String,
}

/// Groups problems by subject and splits each subject level by level.
pub fn split_by_subject(
    problems: Vec<Problem>,
    opts: &SplitOptions,
) -> Result<BTreeMap<String, TaskSplits>, PrepareError> {
    check_ratios(opts.support_ratio, opts.query_ratio)?;
    let mut by_task: BTreeMap<String, BTreeMap<String, Vec<Problem>>> = BTreeMap::new();
    for p in problems {
        by_task.entry(task_name(&p.subject)).or_default().entry(p.level.clone()).or_default().push(p);
    }
    let mut out = BTreeMap::new();
    for (task, mut levels) in by_task {
        let total: usize = levels.values().map(Vec::len).sum();
        let keep = opts.max_samples_per_task.map_or(1.0, |m| (m as f64 / total as f64).min(1.0));
        let mut splits = TaskSplits::default();
        for (level, group) in levels.iter_mut() {
            SplitMix64::new(opts.seed ^ stable_hash(&format!("{task}/{level}"))).shuffle(group);
            // Each level keeps its share of the cap, so the cap does not change the level mix.
            group.truncate(((group.len() as f64) * keep).round() as usize);
            let items = group
                .iter()
                .map(|p| {
                    let prompt = if opts.instruction.is_empty() {
                        p.problem.clone()
                    } else {
                        format!("{} {}", p.problem, opts.instruction)
                    };
                    (Example { prompt, response: p.solution.clone() }, level.clone())
                })
                .collect();
            splits.add_by_ratio(items, opts.support_ratio, opts.query_ratio);
        }
        // Levels were appended in order: mix them, so that the first rows of a file (a row cap,
        // `fomaml eval --max-items`) are not the easiest problems.
        for (name, split) in
            [("support", &mut splits.support), ("query", &mut splits.query), ("test", &mut splits.test)]
        {
            SplitMix64::new(opts.seed ^ stable_hash(&format!("{task}/{name}/order"))).shuffle(split);
        }
        out.insert(task, splits);
    }
    Ok(out)
}
