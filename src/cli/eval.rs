//! `fomaml eval` (few-shot curves of a checkpoint or a base model) and `fomaml compare` (two result
//! files, paired bootstrap).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind};

use crate::checkpoint::{self, shards::read_params};
use crate::cli::parse_device;
use crate::config::schema::Algorithm;
use crate::config::Config;
use crate::data::tasks::{Encoding, Split, TaskData};
use crate::data::ChatTokenizer;
use crate::eval::compare::paired_bootstrap;
use crate::eval::fewshot::{evaluate_task, from_json, to_json, FewShotSettings, Passes, TaskResults};
use crate::eval::generate::GenerationConfig;
use crate::meta::core::{InnerRule, Learner};
use crate::model::{load_weights, LoraConfig, ModelConfig, Weights};
use crate::train::setup::compute_kind;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A training checkpoint (<run>/checkpoints/step_N); its config is used unless --config is given.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// A config whose model.partial_pretrain is evaluated as it is (no checkpoint), or whose tasks
    /// and settings replace the checkpoint's.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Numbers of shots (support examples adapted on) of the curve.
    #[arg(long, num_args = 1.., default_values_t = [0usize, 5, 10, 25, 50])]
    pub n_shots: Vec<usize>,
    /// Runs per number of shots, each with other shots drawn.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub n_runs: usize,
    /// Evaluate only these tasks (default: meta.eval_tasks, else the training tasks with a test split).
    #[arg(long, num_args = 1..)]
    pub eval_tasks: Vec<String>,
    /// Adapt as this algorithm's inner loop does, with fresh optimizer state each run: meta_lora
    /// is AdamW (optim's betas and weight decay) clipped to optim.clip_grad, reptile is
    /// meta.inner_optimizer, the others SGD. Default: meta.eval_inner_rule, else the checkpoint's
    /// own algorithm. Give the same rule to every run that is compared. (Adam's two moments take
    /// 8 bytes per adapted parameter while a run adapts.)
    #[arg(long, value_enum)]
    pub inner_rule: Option<Algorithm>,
    /// Adaptation learning rate (default: meta.inner_lr; 1e-4 under --protocol original).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adapt for at least this many steps, in whole passes over the shots (default:
    /// meta.num_inner_steps, and never less than one pass).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Adapt for exactly this many passes over the shots instead.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// inner-loop: adapt as the checkpoint's inner loop does (its rule, batches of
    /// meta.inner_batch_size, at least K steps). original: as the original Python/verl trainer's
    /// evaluation does, to set numbers beside its own: AdamW at 1e-4 (PyTorch's defaults),
    /// gradients clipped to 1.0, 100 passes over the shots one shot at a time.
    #[arg(long, value_enum, default_value_t = Protocol::InnerLoop)]
    pub protocol: Protocol,
    /// Rows per adaptation batch (default: meta.inner_batch_size; 1 under --protocol original).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens generated per answer at most; an answer cut there is scored as generated, and the
    /// fraction cut is reported.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Evaluate at most this many items of each task.
    #[arg(long)]
    pub max_items: Option<usize>,
    /// Seed of the shot draws and of the order of each pass (default: trainer.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write every judged generation (task, shots, run, item, prompt, generated text,
    /// extracted and gold answer, verdict, stop reason) as JSON lines to OUT with the extension
    /// .samples.jsonl.
    #[arg(long)]
    pub log_samples: bool,
    /// Where the results go (JSON: per task and number of shots, the means, each run's per-item
    /// verdicts and how adaptation ran).
    #[arg(long)]
    pub out: PathBuf,
}

/// Which adaptation protocol `fomaml eval` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    InnerLoop,
    Original,
}

/// The original evaluation's passes over the shots (its `--adaptation-steps 100` loops over
/// the shots that many times, one shot per step).
const ORIGINAL_PASSES: usize = 100;
const ORIGINAL_BATCH_SIZE: usize = 1;

fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Baseline results (`fomaml eval --out`).
    pub a: PathBuf,
    /// Results compared with the baseline: the table shows B − A.
    pub b: PathBuf,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    /// Confidence level of the intervals.
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
}

/// θ to evaluate: the checkpoint's (full, or LoRA over its base), or the config's model as it is
/// — under `model.lora_rank > 0` with a fresh adapter (B = 0, so the model is unchanged until it
/// adapts), as the LoRA runs adapt.
fn learner(config: &Config, checkpoint: Option<&Path>, pad_id: i64, device: Device, kind: Kind) -> Result<Learner> {
    let model_dir = Path::new(&config.model.partial_pretrain);
    let cfg = ModelConfig::from_dir(model_dir).context("model.partial_pretrain")?;
    let base = load_weights(model_dir, &cfg, Kind::Float, Device::Cpu).context("model.partial_pretrain")?;
    let m = &config.model;
    let lora = LoraConfig::from_settings(m.lora_rank, m.lora_alpha, m.lora_dropout, &m.target_modules)?;
    let Some(dir) = checkpoint else {
        return Ok(match lora {
            Some(lora) => {
                let adapter = lora.init_adapter(&cfg, config.trainer.seed);
                Learner::with_lora(cfg, base, adapter, lora, device, kind, pad_id)
            }
            None => Learner::new(cfg, base, device, kind, pad_id),
        });
    };
    let (_, params) = read_params(dir).with_context(|| format!("checkpoint {}", dir.display()))?;
    let mut weights = Weights::new();
    for (name, t) in params {
        weights.insert(name, t);
    }
    if !weights.names().iter().any(|n| n.contains(".lora_")) {
        return Ok(Learner::new(cfg, weights, device, kind, pad_id));
    }
    let lora =
        lora.with_context(|| format!("{}: LoRA tensors, but model.lora_rank is 0 in the config", dir.display()))?;
    Ok(Learner::with_lora(cfg, base, weights, lora, device, kind, pad_id))
}

/// The adaptation `args` ask for: the rule, the passes and the batch size.
fn adaptation(args: &EvalArgs, config: &Config) -> (InnerRule, Passes, usize) {
    let meta = &config.meta;
    let (mut inner, mut passes, batch_size) = match args.protocol {
        Protocol::InnerLoop => {
            let inner = match args.inner_rule {
                Some(algorithm) => InnerRule::as_in(algorithm, meta, &config.optim),
                None => InnerRule::for_evaluation(meta, &config.optim),
            };
            (inner, Passes::AtLeastSteps(meta.num_inner_steps), meta.inner_batch_size)
        }
        Protocol::Original => (InnerRule::original_evaluation(), Passes::Exactly(ORIGINAL_PASSES), ORIGINAL_BATCH_SIZE),
    };
    inner.lr = args.lr.unwrap_or(inner.lr);
    if let Some(steps) = args.steps {
        passes = Passes::AtLeastSteps(steps);
    }
    if let Some(epochs) = args.epochs {
        passes = Passes::Exactly(epochs);
    }
    (inner, passes, args.batch_size.unwrap_or(batch_size))
}

pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let config = match (&args.config, &args.checkpoint) {
        (Some(path), _) => super::load_config(path, &[])?,
        (None, Some(dir)) => {
            let meta = checkpoint::read_meta(dir).with_context(|| format!("checkpoint {}", dir.display()))?;
            Config::from_yaml(&meta.config, &format!("{}'s config", dir.display()), &[])?
        }
        (None, None) => bail!("give --checkpoint (a training checkpoint) or --config (a model as it is)"),
    };
    let meta = &config.meta;
    let device = parse_device(&config.trainer.device).context("trainer.device")?;
    let model_dir = Path::new(&config.model.partial_pretrain);
    let tokenizer = ChatTokenizer::from_dir(model_dir).context("model.partial_pretrain")?;
    let learner =
        learner(&config, args.checkpoint.as_deref(), tokenizer.pad_id, device, compute_kind(&config.model.dtype)?)?;

    let encoding = Encoding::new(&tokenizer, &config.data);
    let (sections, split) = if meta.eval_tasks.is_empty() {
        (meta.tasks.iter().filter(|t| !t.test_files.is_empty()).collect::<Vec<_>>(), Split::Test)
    } else {
        (meta.eval_tasks.iter().collect(), Split::Query)
    };
    for name in &args.eval_tasks {
        if !sections.iter().any(|s| &s.name == name) {
            let known: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
            bail!("--eval-tasks: no evaluation task `{name}` (known: {})", known.join(", "));
        }
    }
    let chosen = sections.into_iter().filter(|s| args.eval_tasks.is_empty() || args.eval_tasks.contains(&s.name));
    let tasks = chosen
        .map(|s| TaskData::load(s, &encoding, &config.data, config.trainer.seed, 0, 1))
        .collect::<Result<Vec<_>>>()?;
    if tasks.is_empty() {
        bail!("nothing to evaluate: meta.eval_tasks is empty and no training task has a test split");
    }

    if args.protocol == Protocol::Original && args.inner_rule.is_some() {
        bail!("--inner-rule picks the inner loop's rule; --protocol original has its own (AdamW at 1e-4)");
    }
    let (inner, passes, batch_size) = adaptation(args, &config);
    let settings = FewShotSettings {
        shots: args.n_shots.clone(),
        runs: args.n_runs,
        inner,
        passes,
        batch_size,
        score_batch_size: meta.inner_batch_size.max(1),
        seed: args.seed.unwrap_or(config.trainer.seed),
        generation: GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            eos_ids: vec![tokenizer.eos_id],
            ..Default::default()
        },
        max_items: args.max_items,
        keep_samples: args.log_samples,
    };
    if settings.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    println!(
        "adapting on the shots: {}; {}; batches of up to {} rows, reshuffled each pass",
        settings.inner, settings.passes, settings.batch_size
    );
    let runs_per_task: usize = args.n_shots.iter().map(|&n| if n == 0 { 1 } else { args.n_runs.max(1) }).sum();
    let bar = ProgressBar::new((runs_per_task * tasks.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs {msg} [{elapsed} < {eta}]").expect("template"),
    );
    // Without a terminal (a log file) the bar is hidden: a line per run instead.
    let log_lines = !std::io::stderr().is_terminal();
    let mut results = Vec::new();
    for task in &tasks {
        bar.set_message(task.name.clone());
        let mut progress = || {
            bar.inc(1);
            if log_lines {
                let elapsed = bar.elapsed().as_secs();
                eprintln!(
                    "eval: {} runs of {} done ({}, {}m{:02}s)",
                    bar.position(),
                    bar.length().unwrap_or(0),
                    task.name,
                    elapsed / 60,
                    elapsed % 60
                );
            }
        };
        results.push(evaluate_task(&learner, &tokenizer, task, split, &settings, &mut progress)?);
    }
    bar.finish_and_clear();

    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let json = serde_json::to_vec_pretty(&to_json(&results)).expect("results serialise");
    crate::fsutil::write_atomically(&args.out, |f| std::io::Write::write_all(f, &json))?;
    print!("{}", table(&results));
    println!("results -> {}", args.out.display());
    if args.log_samples {
        let path = samples_path(&args.out);
        let samples = results.iter().flat_map(|t| &t.by_shots).flat_map(|(_, r)| &r.runs).flat_map(|r| &r.samples);
        crate::fsutil::write_atomically(&path, |f| {
            let mut w = std::io::BufWriter::new(f);
            for sample in samples {
                serde_json::to_writer(&mut w, sample).map_err(std::io::Error::other)?;
                std::io::Write::write_all(&mut w, b"\n")?;
            }
            std::io::Write::flush(&mut w)
        })?;
        println!("samples -> {}", path.display());
    }
    Ok(())
}

/// Where `--log-samples` writes: beside the results, `results.json` → `results.samples.jsonl`.
pub fn samples_path(out: &Path) -> PathBuf {
    out.with_extension("samples.jsonl")
}

/// Per task and number of shots: loss and accuracy, mean ± std over runs, and the generations
/// the token budget cut.
fn table(results: &[TaskResults]) -> String {
    let mut out =
        String::from("| task | shots | steps | loss | accuracy | cut at max tokens |\n|---|---|---|---|---|---|\n");
    for t in results {
        for (n, r) in &t.by_shots {
            let steps = r.adaptation.as_ref().map_or("–".into(), |a| a.steps.to_string());
            let cut = r.truncated_fraction.map_or("–".into(), |f| format!("{:.1}%", 100.0 * f));
            out += &format!(
                "| {} | {n} | {steps} | {:.4} ± {:.4} | {:.1}% ± {:.1}% | {cut} |\n",
                t.task,
                r.loss_mean,
                r.loss_std,
                100.0 * r.accuracy_mean,
                100.0 * r.accuracy_std
            );
        }
    }
    out
}

fn read_results(path: &Path) -> Result<Vec<TaskResults>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    from_json(&value, &path.display().to_string())
}

pub fn run_compare(args: &CompareArgs) -> Result<()> {
    if !(args.level > 0.0 && args.level < 1.0) {
        bail!("--level {}: expected a number between 0 and 1, e.g. 0.95", args.level);
    }
    let (a, b) = (read_results(&args.a)?, read_results(&args.b)?);
    let rows = paired_bootstrap(&a, &b, args.resamples, args.level, 0)?;
    println!("A = {}\nB = {}", args.a.display(), args.b.display());
    println!(
        "| shots | tasks | items | accuracy A | accuracy B | B − A | {:.0}% interval (items resampled within tasks) |",
        100.0 * args.level
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let d = r.difference;
        println!(
            "| {} | {} | {} | {:.1}% | {:.1}% | {:+.1} pts | [{:+.1}, {:+.1}] |",
            r.shots,
            r.tasks,
            r.items,
            100.0 * r.accuracy_a,
            100.0 * r.accuracy_b,
            100.0 * d.mean,
            100.0 * d.low,
            100.0 * d.high
        );
    }
    if rows.iter().any(|r| r.loss.is_some()) {
        println!("\nThe reference answers' loss (mean per token of each item; lower is better):");
        println!("| shots | loss A | loss B | B − A | {:.0}% interval |", 100.0 * args.level);
        println!("|---|---|---|---|---|");
        for (r, loss) in rows.iter().filter_map(|r| r.loss.map(|l| (r, l))) {
            let d = loss.difference;
            println!(
                "| {} | {:.4} | {:.4} | {:+.4} | [{:+.4}, {:+.4}] |",
                r.shots, loss.a, loss.b, d.mean, d.low, d.high
            );
        }
    }
    Ok(())
}
