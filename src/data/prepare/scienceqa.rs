//! ScienceQA (Lu et al., 2022): multiple-choice science questions, as one task per topic
//! (`science_physics`, ...). The prompt lists the choices as lettered options; the response gives
//! the reasoning asked for (the solution, the lecture, the hint) and ends in `\boxed{LETTER}`.
//! Items with an image are left out and counted: the models trained here read text only.
//!
//! Physics, chemistry and biology are ScienceQA *topics*: its `subject` column holds "natural
//! science", "social science" and "language science". (The original trainer filtered `subject`
//! for them, which keeps nothing, and wrote the answer's bare index as the final answer.)

use std::collections::BTreeMap;
use std::path::Path;

use super::local_dataset::{read_rows, Columns, Row};
use super::PrepareError;
use crate::data::task_files::Example;

pub const DEFAULT_TOPICS: [&str; 3] = ["physics", "chemistry", "biology"];
/// The original trainer's shares of each ScienceQA task for support and query.
pub const DEFAULT_SUPPORT_RATIO: f64 = 0.2;
pub const DEFAULT_QUERY_RATIO: f64 = 0.3;
pub const DEFAULT_INSTRUCTION: &str = "Answer with the letter of the correct option within \\boxed{}.";

/// What a task is: a value of the `topic` column (physics, ...) or of `subject` (natural science, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    Topic,
    Subject,
}

/// A part of the response before the boxed letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reasoning {
    /// ScienceQA's explanation of this answer.
    Solution,
    /// The general background for the question's skill.
    Lecture,
    /// The question's context, moved from the prompt to the response (the original trainer's choice).
    Hint,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub splits: Vec<String>,
    pub group_by: GroupBy,
    /// Groups to keep (all when empty).
    pub keep: Vec<String>,
    pub reasoning: Vec<Reasoning>,
    pub instruction: String,
}

/// The kept items by task, and what was left out.
#[derive(Debug, Default)]
pub struct Read {
    pub tasks: BTreeMap<String, Vec<(Example, String)>>,
    pub with_image: usize,
    /// Items of groups not kept, by group.
    pub other_groups: BTreeMap<String, usize>,
}

/// `natural science` -> `science_natural_science`, `physics` -> `science_physics`.
pub fn task_name(group: &str) -> String {
    let words: Vec<String> =
        group.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    format!("science_{}", words.join("_"))
}

pub fn read(source: &Path, opts: &Options) -> Result<Read, PrepareError> {
    let group_column = match opts.group_by {
        GroupBy::Topic => "topic",
        GroupBy::Subject => "subject",
    };
    let required = ["question", "choices", "answer", group_column];
    let columns = Columns { required: &required, optional: &["image", "hint", "lecture", "solution", "grade"] };
    let mut read = Read::default();
    for row in read_rows(source, &opts.splits, &columns)? {
        let group = row.required_text(group_column)?;
        if !opts.keep.is_empty() && !opts.keep.contains(&group) {
            *read.other_groups.entry(group).or_default() += 1;
            continue;
        }
        if row.has("image") {
            read.with_image += 1;
            continue;
        }
        let example = example(&row, opts)?;
        let tag = match row.text("grade")? {
            grade if grade.is_empty() => row.place_under(source),
            grade => grade,
        };
        read.tasks.entry(task_name(&group)).or_default().push((example, tag));
    }
    if let Some(missing) = opts.keep.iter().find(|g| !read.tasks.contains_key(&task_name(g))) {
        let seen: Vec<&String> = read.other_groups.keys().collect();
        return Err(PrepareError::BadRecord {
            path: source.to_path_buf(),
            reason: format!(
                "no text-only item has {group_column} `{missing}` ({} items with an image left out; other {group_column}s: {seen:?})",
                read.with_image
            ),
        });
    }
    Ok(read)
}

/// The lettered options, as `(A) text` lines.
fn choices(row: &Row) -> Result<Vec<String>, PrepareError> {
    let Some(serde_json::Value::Array(values)) = row.values.get("choices") else {
        return Err(row.bad("`choices` is not a list"));
    };
    let texts: Vec<String> = values.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
    if texts.len() != values.len() || texts.len() < 2 || texts.len() > 26 {
        return Err(
            row.bad(format!("`choices` must be 2 to 26 strings, got {}", serde_json::Value::Array(values.clone())))
        );
    }
    Ok(texts)
}

fn example(row: &Row, opts: &Options) -> Result<Example, PrepareError> {
    let question = row.required_text("question")?;
    let choices = choices(row)?;
    let answer = row.values.get("answer").and_then(serde_json::Value::as_u64);
    let answer = match answer {
        Some(i) if (i as usize) < choices.len() => i as usize,
        _ => {
            let got = row.values.get("answer").cloned().unwrap_or_default();
            return Err(row.bad(format!("`answer` must index `choices` (0 to {}), got {got}", choices.len() - 1)));
        }
    };
    let letter = (b'A' + answer as u8) as char;
    let hint = row.text("hint")?;

    let mut prompt = question.trim().to_string();
    if !hint.trim().is_empty() && !opts.reasoning.contains(&Reasoning::Hint) {
        prompt += &format!("\n\nContext: {}", hint.trim());
    }
    prompt += "\n\nOptions:";
    for (i, choice) in choices.iter().enumerate() {
        prompt += &format!("\n({}) {}", (b'A' + i as u8) as char, choice.trim());
    }
    if !opts.instruction.is_empty() {
        prompt += &format!("\n\n{}", opts.instruction);
    }

    let mut parts = Vec::new();
    for part in &opts.reasoning {
        let key = match part {
            Reasoning::Solution => "solution",
            Reasoning::Lecture => "lecture",
            Reasoning::Hint => "hint",
        };
        let text = row.text(key)?;
        if !text.trim().is_empty() {
            parts.push(text.trim().to_string());
        }
    }
    parts.push(format!("\\boxed{{{letter}}}"));
    Ok(Example { prompt, response: parts.join("\n\n") })
}
