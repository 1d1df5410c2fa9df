//! `fomaml prepare-data`'s sources: raw datasets as users keep them, turned into tasks of
//! support / query / test examples. What every source shares is here: the errors, the split by
//! ratios, and the seeded shuffle.

pub mod gsm8k;
pub mod gsm_symbolic;
pub mod local_dataset;
pub mod math;
pub mod scienceqa;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::data::sampler::{stable_hash, SplitMix64};
use crate::data::task_files::{Example, TaskFileError};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{0} does not exist")]
    NoSource(PathBuf),
    #[error("{path}: {reason}")]
    BadRecord { path: PathBuf, reason: String },
    #[error(transparent)]
    File(#[from] TaskFileError),
    #[error("{path}: nothing found ({expected})")]
    NothingFound { path: PathBuf, expected: String },
    #[error(
        "ratios must be positive with support + query < 1 (the rest is test): got support {support}, query {query}"
    )]
    BadRatios { support: f64, query: f64 },
    #[error("{option}: {reason}")]
    BadOption { option: &'static str, reason: String },
}

/// One task's three splits; each example keeps a tag (its level, language or problem id).
#[derive(Debug, Default)]
pub struct TaskSplits {
    pub support: Vec<(Example, String)>,
    pub query: Vec<(Example, String)>,
    pub test: Vec<(Example, String)>,
}

impl TaskSplits {
    /// Appends already-shuffled `items`: the first round(n·support) to support, the next
    /// round(n·query) to query, the rest to test.
    pub fn add_by_ratio(&mut self, items: Vec<(Example, String)>, support: f64, query: f64) {
        let n = items.len() as f64;
        let (n_support, n_query) = ((n * support).round() as usize, (n * query).round() as usize);
        for (i, item) in items.into_iter().enumerate() {
            match i {
                i if i < n_support => self.support.push(item),
                i if i < n_support + n_query => self.query.push(item),
                _ => self.test.push(item),
            }
        }
    }
}

/// Both ratios positive and leaving a test share.
pub fn check_ratios(support: f64, query: f64) -> Result<(), PrepareError> {
    if support > 0.0 && query > 0.0 && support + query < 1.0 {
        Ok(())
    } else {
        Err(PrepareError::BadRatios { support, query })
    }
}

/// Each group (a task's items) shuffled from the seed and its name, then split by the ratios.
pub fn split_groups(
    groups: BTreeMap<String, Vec<(Example, String)>>,
    support: f64,
    query: f64,
    seed: u64,
) -> Result<BTreeMap<String, TaskSplits>, PrepareError> {
    check_ratios(support, query)?;
    let mut out = BTreeMap::new();
    for (task, mut items) in groups {
        SplitMix64::new(seed ^ stable_hash(&task)).shuffle(&mut items);
        let mut splits = TaskSplits::default();
        splits.add_by_ratio(items, support, query);
        out.insert(task, splits);
    }
    Ok(out)
}
