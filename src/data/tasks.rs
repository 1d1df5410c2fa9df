//! A task as the trainer sees it: its encoded support / query / test examples and one resumable
//! sampler per split, so each split is walked epoch by epoch (DESIGN.md trap 2: never the same
//! first batch forever).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::sampler::{stable_hash, EpochSampler, SamplerPosition, SplitMix64};
use super::sft::{encode_example, Collate, EncodedExample, SftBatch, Truncation};
use super::task_files::{read_split, Columns};
use super::tokenizer::ChatTokenizer;
use crate::config::schema::{DataSection, TaskSection};

/// How examples are read and encoded (the `data` section, with the tokenizer it needs).
pub struct Encoding<'a> {
    pub tokenizer: &'a ChatTokenizer,
    pub columns: Columns,
    pub max_length: usize,
    pub truncation: Truncation,
    pub template_variables: &'a Map<String, Json>,
    /// A row cap keeps a seeded sample (data.shuffle), else the file's first rows.
    pub sample_caps: bool,
}

impl<'a> Encoding<'a> {
    pub fn new(tokenizer: &'a ChatTokenizer, data: &'a DataSection) -> Self {
        Self {
            tokenizer,
            columns: Columns { prompt: data.prompt_key.clone(), response: data.response_key.clone() },
            max_length: data.max_length,
            truncation: data.truncation,
            template_variables: &data.chat_template_vars,
            sample_caps: data.shuffle,
        }
    }
}

/// The split an example came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Support,
    Query,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Support => "support",
            Split::Query => "query",
            Split::Test => "test",
        }
    }
}

struct SplitData {
    examples: Vec<EncodedExample>,
    sampler: EpochSampler,
}

pub struct TaskData {
    pub name: String,
    support: SplitData,
    query: SplitData,
    /// Absent when the task lists no test files.
    test: Option<Vec<EncodedExample>>,
}

/// Sampler positions of one task, saved in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPosition {
    pub support: SamplerPosition,
    pub query: SamplerPosition,
}

fn encode_split(
    section: &TaskSection,
    split: Split,
    files: &[String],
    limit: Option<usize>,
    seed: u64,
    encoding: &Encoding,
) -> Result<Vec<EncodedExample>> {
    let paths: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
    let examples = read_split(&section.name, split.name(), &paths, &encoding.columns, None)?;
    // A cap keeps a seeded sample, not the first rows: files are often sorted (by level, by
    // source), and their head is not representative.
    let mut rows: Vec<usize> = (0..examples.len()).collect();
    if let Some(limit) = limit.filter(|l| *l < rows.len()) {
        if encoding.sample_caps {
            let key = seed ^ stable_hash(&format!("{}/{}/cap", section.name, split.name()));
            SplitMix64::new(key).shuffle(&mut rows);
        }
        rows.truncate(limit);
        rows.sort_unstable();
    }
    rows.into_iter()
        .map(|row| (row, &examples[row]))
        .map(|(row, e)| {
            encode_example(
                encoding.tokenizer,
                &e.prompt,
                &e.response,
                Some(encoding.max_length),
                encoding.truncation,
                encoding.template_variables,
            )
            .with_context(|| format!("task `{}`, {} example {row}", section.name, split.name()))
        })
        .collect()
}

/// A split's row cap: the task's, else the data section's; 0 or negative (the original's -1)
/// means every row.
fn cap(task: Option<i64>, data: Option<i64>) -> Option<usize> {
    task.or(data).filter(|n| *n > 0).map(|n| n as usize)
}

impl TaskData {
    /// Reads and encodes a task. Each split's sampler is seeded from (seed, task, split) and
    /// shards the split across `world_size` ranks.
    pub fn load(
        section: &TaskSection,
        encoding: &Encoding,
        data: &DataSection,
        seed: u64,
        rank: usize,
        world_size: usize,
    ) -> Result<Self> {
        let split = |split: Split, files: &[String], limit: Option<usize>| -> Result<SplitData> {
            let examples = encode_split(section, split, files, limit, seed, encoding)?;
            let split_seed = seed ^ stable_hash(&format!("{}/{}", section.name, split.name()));
            let sampler = EpochSampler::new(examples.len(), split_seed, rank, world_size)
                .with_context(|| format!("task `{}`, {} split", section.name, split.name()))?;
            Ok(SplitData { examples, sampler })
        };
        let test = if section.test_files.is_empty() {
            None
        } else {
            Some(encode_split(section, Split::Test, &section.test_files, None, seed, encoding)?)
        };
        Ok(Self {
            name: section.name.clone(),
            support: split(
                Split::Support,
                &section.support_files,
                cap(section.support_max_samples, data.support_max_samples),
            )?,
            query: split(Split::Query, &section.query_files, cap(section.query_max_samples, data.query_max_samples))?,
            test,
        })
    }

    /// A task over already-encoded examples (benchmarks, synthetic data built in memory), one rank,
    /// samplers seeded the way [`TaskData::load`] does.
    pub fn from_examples(
        name: &str,
        support: Vec<EncodedExample>,
        query: Vec<EncodedExample>,
        seed: u64,
    ) -> Result<Self> {
        let split = |split: Split, examples: Vec<EncodedExample>| -> Result<SplitData> {
            let split_seed = seed ^ stable_hash(&format!("{name}/{}", split.name()));
            let sampler = EpochSampler::new(examples.len(), split_seed, 0, 1)
                .with_context(|| format!("task `{name}`, {} split", split.name()))?;
            Ok(SplitData { examples, sampler })
        };
        Ok(Self {
            name: name.to_string(),
            support: split(Split::Support, support)?,
            query: split(Split::Query, query)?,
            test: None,
        })
    }

    /// The next `n` examples of a split, as `collate` batches them.
    pub fn next_batch(&mut self, split: Split, n: usize, collate: Collate) -> SftBatch {
        let data = match split {
            Split::Support => &mut self.support,
            Split::Query => &mut self.query,
            Split::Test => panic!("the test split is read whole, not sampled"),
        };
        let indices = data.sampler.next_batch(n);
        let examples: Vec<&EncodedExample> = indices.iter().map(|&i| &data.examples[i]).collect();
        collate.batch(&examples)
    }

    /// All examples of a split, in file order.
    pub fn examples(&self, split: Split) -> &[EncodedExample] {
        match split {
            Split::Support => &self.support.examples,
            Split::Query => &self.query.examples,
            Split::Test => self.test.as_deref().unwrap_or(&[]),
        }
    }

    pub fn position(&self) -> TaskPosition {
        TaskPosition { support: self.support.sampler.position(), query: self.query.sampler.position() }
    }

    pub fn restore(&mut self, position: TaskPosition) {
        self.support.sampler.restore(position.support);
        self.query.sampler.restore(position.query);
    }
}
