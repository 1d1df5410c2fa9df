//! GSM8K (Cobbe et al., 2021): grade-school word problems with worked solutions ending in
//! `#### N`, as one task. Prompt = the question and the instruction; response = the worked
//! solution without its calculator annotations, ending in `\boxed{N}` (as gsm-symbolic's), so
//! evaluation judges it like every other task.

use std::collections::BTreeMap;
use std::path::Path;

use super::gsm_symbolic::format_answer;
use super::local_dataset::{read_rows, Columns};
use super::{split_groups, PrepareError, TaskSplits};
use crate::data::task_files::Example;

/// The original trainer's name for the task, and its shares of GSM8K for support and query.
pub const DEFAULT_TASK: &str = "word_problems";
pub const DEFAULT_SUPPORT_RATIO: f64 = 0.25;
pub const DEFAULT_QUERY_RATIO: f64 = 0.35;

/// Every problem of the selected splits, each with its place in the source as its tag.
pub fn read(source: &Path, splits: &[String], instruction: &str) -> Result<Vec<(Example, String)>, PrepareError> {
    let columns = Columns { required: &["question", "answer"], optional: &[] };
    let mut items = Vec::new();
    for row in read_rows(source, splits, &columns)? {
        let question = row.required_text("question")?;
        let response = format_answer(&row.required_text("answer")?, &row.place)?;
        let prompt = if instruction.is_empty() { question } else { format!("{question} {instruction}") };
        items.push((Example { prompt, response }, row.place_under(source)));
    }
    Ok(items)
}

/// The one task, split by the ratios.
pub fn split(
    items: Vec<(Example, String)>,
    task: &str,
    support: f64,
    query: f64,
    seed: u64,
) -> Result<BTreeMap<String, TaskSplits>, PrepareError> {
    split_groups(BTreeMap::from([(task.to_string(), items)]), support, query, seed)
}
