//! `fomaml demo`: the embedded default end to end. Makes the synthetic bins tasks and the tiny
//! model, meta-trains it with FOMAML and, as the baseline, with plain multi-task SFT on the same
//! tasks, batches and step budget, then compares few-shot adaptation on held-out tasks.
//!
//! Each method is reported at its best adaptation learning rate from a small sweep (DESIGN.md:
//! the rate matters and differs between methods), chosen on new samples of the training tasks
//! (their test split), never on the held-out tasks it is reported on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind};

use super::prepare_data::{self, SyntheticArgs};
use crate::config::schema::{Algorithm, TaskSection};
use crate::config::Config;
use crate::data::synthetic::{Labels, SyntheticSpec};
use crate::data::tasks::{Encoding, Split, TaskData};
use crate::data::ChatTokenizer;
use crate::eval::compare::paired_bootstrap;
use crate::eval::fewshot::{evaluate_task, to_json, FewShotSettings, Passes, TaskResults};
use crate::eval::generate::GenerationConfig;
use crate::eval::{adaptation_curve, SplitScore};
use crate::meta::core::{InnerRule, Learner};
use crate::model::{load_weights, ModelConfig, Weights};
use crate::report::{write_report, MethodInput};
use crate::train::{checkpoint_weights, Trainer};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the data, both runs and the report. Re-running resumes unfinished runs.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Meta-steps per method (default: configs/embedded_default.yaml's trainer.total_steps).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Adaptation learning rates to sweep, comma separated; meta.inner_lr, the rate the inner
    /// loop trained with, is always added.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.03,0.1,0.3")]
    pub adapt_lrs: Vec<f64>,
    /// The task family's labels (see `prepare-data synthetic --labels`). permuted (the default):
    /// every cut pair with each of the six orders of the letters, 18 held-out tasks, so nothing
    /// answers a held-out task above chance (1/3) without adapting to its shots and the curve
    /// measures adaptation. ordered: A, B, C in order, where a prior alone gets most answers.
    #[arg(long, value_enum, default_value = "permuted")]
    pub labels: Labels,
    /// Config overrides applied to both runs, e.g. meta.num_inner_steps=3.
    pub overrides: Vec<String>,
}

/// Adaptation steps the report shows.
const SHOWN_STEPS: [usize; 3] = [0, 1, 5];

pub fn run(args: &DemoArgs) -> Result<()> {
    let data = args.out.join("data");
    // The family the data was made with, so that a re-run never mixes two families.
    let family_file = data.join("labels");
    let family = format!("{:?}", args.labels).to_lowercase();
    if data.join("config.yaml").is_file() {
        let made = std::fs::read_to_string(&family_file).unwrap_or_else(|_| "ordered".into());
        if made.trim() != family {
            bail!(
                "{} holds the {} family's runs, not {family}: pass --labels {} to resume them, or another --out",
                args.out.display(),
                made.trim(),
                made.trim()
            );
        }
    } else {
        let spec = SyntheticSpec::default();
        // Permuted labels come in groups of six tasks per cut pair.
        let eval_tasks = match args.labels {
            Labels::Ordered => spec.eval_tasks,
            Labels::Permuted => spec.eval_tasks.next_multiple_of(6),
        };
        prepare_data::synthetic(&SyntheticArgs {
            out: data.clone(),
            train_tasks: spec.train_tasks,
            eval_tasks,
            support: spec.support,
            query: spec.query,
            test: spec.test,
            seed: spec.seed,
            labels: args.labels,
            no_model: false,
            force: true,
            quiet: true,
        })?;
        std::fs::write(&family_file, &family).with_context(|| format!("cannot write {}", family_file.display()))?;
    }
    let mut overrides = args.overrides.clone();
    if let Some(steps) = args.steps {
        overrides.push(format!("trainer.total_steps={steps}"));
    }
    let base = super::load_config(&data.join("config.yaml"), &overrides)?;

    let mut runs = Vec::new();
    for (name, algorithm) in [("fomaml", Algorithm::Fomaml), ("sft", Algorithm::Sft)] {
        let mut config = base.clone();
        config.meta.algorithm = algorithm;
        config.trainer.experiment_name = name.into();
        config.trainer.default_local_dir = args.out.join(name).display().to_string();
        eprintln!("\n== {name}: {} steps", config.trainer.total_steps);
        let summary = Trainer::new(config).and_then(Trainer::run).with_context(|| format!("the {name} run"))?;
        runs.push((name, summary.last_checkpoint));
    }
    runs.push(("untrained", None));

    let mut lrs = args.adapt_lrs.clone();
    if !lrs.contains(&base.meta.inner_lr) {
        lrs.push(base.meta.inner_lr);
    }
    eprintln!("\n== few-shot adaptation (sweeping the adaptation rate over {lrs:?})");
    let (report, evaluations) = compare(&base, &runs, &lrs)?;
    print!("{report}");
    let path = args.out.join("report.md");
    std::fs::write(&path, &report).with_context(|| format!("cannot write {}", path.display()))?;
    println!("\n(written to {})", path.display());

    // The few-shot curves as `fomaml eval` writes them, and the plots of `fomaml report`.
    let curves = args.out.join("fewshot");
    std::fs::create_dir_all(&curves).with_context(|| format!("cannot create {}", curves.display()))?;
    let mut methods = Vec::new();
    for e in &evaluations {
        let results = curves.join(format!("{}.json", e.method));
        let json = serde_json::to_vec_pretty(&to_json(&e.curves)).expect("results serialise");
        crate::fsutil::write_atomically(&results, |f| std::io::Write::write_all(f, &json))?;
        let metrics = args.out.join(&e.method).join("metrics.jsonl");
        let metrics = metrics.is_file().then_some(metrics);
        methods.push(MethodInput { label: e.method.clone(), results, metrics });
    }
    let last = FEWSHOT_SHOTS[FEWSHOT_SHOTS.len() - 1];
    let plotted = write_report(&methods, &args.out.join("plots"), last)?;
    println!("\nHeld-out answer accuracy of the adapted model's greedy generation after {FEWSHOT_SHOTS:?} shots:");
    for e in &evaluations {
        let n = e.curves.len().max(1) as f64;
        let mean = |i: usize| e.curves.iter().map(|t| t.by_shots[i].1.accuracy_mean).sum::<f64>() / n;
        let means: Vec<String> = (0..FEWSHOT_SHOTS.len()).map(|i| format!("{:.0}%", 100.0 * mean(i))).collect();
        println!("  {:<10} {}", e.method, means.join(" / "));
    }
    print!("{}", fomaml_minus_sft(&evaluations)?);
    println!("(curves in {}, plots and tables in {})", curves.display(), plotted.display());
    Ok(())
}

/// Per number of shots, FOMAML's held-out accuracy minus SFT's, paired over items (each carrying
/// its runs) with a 95% bootstrap interval: what the demo exists to show.
fn fomaml_minus_sft(evaluations: &[Evaluation]) -> Result<String> {
    let curves = |method: &str| evaluations.iter().find(|e| e.method == method).map(|e| e.curves.as_slice());
    let (Some(fomaml), Some(sft)) = (curves("fomaml"), curves("sft")) else { return Ok(String::new()) };
    let mut out =
        String::from("\nFOMAML − SFT, held-out accuracy in points (95% interval, items resampled within tasks):\n");
    for row in paired_bootstrap(sft, fomaml, 10_000, 0.95, 0)? {
        let d = row.difference;
        let verdict = if d.low > 0.0 {
            "FOMAML ahead"
        } else if d.high < 0.0 {
            "SFT ahead"
        } else {
            "no clear difference"
        };
        let _ = writeln!(
            out,
            "  {:>2} shots: {:+.1} [{:+.1}, {:+.1}]  {verdict}",
            row.shots,
            100.0 * d.mean,
            100.0 * d.low,
            100.0 * d.high
        );
    }
    Ok(out)
}

/// Shots of the few-shot curves (drawn from each held-out task's support split).
const FEWSHOT_SHOTS: [usize; 4] = [0, 1, 5, 10];

struct Evaluation {
    method: String,
    lr: f64,
    held_out: Vec<SplitScore>,
    seen: Vec<SplitScore>,
    /// Few-shot curves on the held-out tasks (generated answers), at `lr`.
    curves: Vec<TaskResults>,
}

/// Mean score over tasks at each of `SHOWN_STEPS`.
fn mean_curve(learner: &Learner, tasks: &[TaskData], split: Split, lr: f64, batch: usize) -> Result<Vec<SplitScore>> {
    let curves: Vec<Vec<SplitScore>> = tasks
        .iter()
        .map(|t| adaptation_curve(learner, t, &SHOWN_STEPS, &InnerRule::sgd(lr), batch, split))
        .collect::<Result<_, _>>()?;
    Ok((0..SHOWN_STEPS.len())
        .map(|i| {
            let n = curves.len().max(1) as f64;
            SplitScore {
                loss: curves.iter().map(|c| c[i].loss).sum::<f64>() / n,
                exact_match: curves.iter().map(|c| c[i].exact_match).sum::<f64>() / n,
            }
        })
        .collect())
}

fn compare(config: &Config, runs: &[(&str, Option<PathBuf>)], lrs: &[f64]) -> Result<(String, Vec<Evaluation>)> {
    let model_dir = Path::new(&config.model.partial_pretrain);
    let tokenizer = ChatTokenizer::from_dir(model_dir)?;
    let cfg = ModelConfig::from_dir(model_dir)?;
    let encoding = Encoding::new(&tokenizer, &config.data);
    let load = |sections: &[TaskSection]| -> Result<Vec<TaskData>> {
        sections.iter().map(|s| TaskData::load(s, &encoding, &config.data, config.trainer.seed, 0, 1)).collect()
    };
    let held_out = load(&config.meta.eval_tasks)?;
    let seen: Vec<TaskData> =
        load(&config.meta.tasks)?.into_iter().filter(|t| !t.examples(Split::Test).is_empty()).collect();
    let batch = config.meta.inner_batch_size;

    let mut best = Vec::new();
    for (method, checkpoint) in runs {
        let weights: Weights = match checkpoint {
            Some(dir) => checkpoint_weights(dir, &cfg)?,
            None => load_weights(model_dir, &cfg, Kind::Float, Device::Cpu)?,
        };
        let learner = Learner::new(cfg.clone(), weights, Device::Cpu, Kind::Float, tokenizer.pad_id);
        let mut chosen: Option<Evaluation> = None;
        for &lr in lrs {
            let seen_curve = mean_curve(&learner, &seen, Split::Test, lr, batch)?;
            let better = chosen.as_ref().is_none_or(|c| seen_curve[2].loss < c.seen[2].loss);
            if better {
                chosen = Some(Evaluation {
                    method: method.to_string(),
                    lr,
                    held_out: Vec::new(),
                    seen: seen_curve,
                    curves: Vec::new(),
                });
            }
        }
        let mut chosen = chosen.context("--adapt-lrs is empty")?;
        chosen.held_out = mean_curve(&learner, &held_out, Split::Query, chosen.lr, batch)?;
        let settings = FewShotSettings {
            shots: FEWSHOT_SHOTS.to_vec(),
            runs: 3,
            inner: InnerRule::sgd(chosen.lr),
            passes: Passes::AtLeastSteps(config.meta.num_inner_steps),
            batch_size: batch,
            score_batch_size: batch,
            seed: config.trainer.seed,
            generation: GenerationConfig { max_new_tokens: 16, eos_ids: vec![tokenizer.eos_id], ..Default::default() },
            max_items: None,
            keep_samples: false,
        };
        for task in &held_out {
            chosen.curves.push(evaluate_task(&learner, &tokenizer, task, Split::Query, &settings, &mut || {})?);
        }
        best.push(chosen);
    }
    Ok((table(&best, held_out.len(), seen.len(), config), best))
}

fn table(rows: &[Evaluation], held_out: usize, seen: usize, config: &Config) -> String {
    let mut out = String::new();
    let meta = &config.meta;
    let _ = writeln!(
        out,
        "\nFew-shot adaptation after {} meta-steps (meta-batch {}, K={}, inner lr {}); each method at its best \
         adaptation lr, chosen on the training tasks' test split.\nQuery loss (mean token loss of the response) \
         and answer accuracy (every response token right under teacher forcing) after 0 / 1 / 5 SGD steps on \
         the support set:\n",
        config.trainer.total_steps, meta.meta_batch_size, meta.num_inner_steps, meta.inner_lr
    );
    let _ = writeln!(
        out,
        "| method | adapt lr | held-out loss 0 / 1 / 5 | held-out acc 0 / 1 / 5 | seen-task loss 0 / 1 / 5 | seen-task acc 0 / 1 / 5 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let fmt_loss = |s: &[SplitScore]| s.iter().map(|x| format!("{:.4}", x.loss)).collect::<Vec<_>>().join(" / ");
    let fmt_acc =
        |s: &[SplitScore]| s.iter().map(|x| format!("{:.0}%", 100.0 * x.exact_match)).collect::<Vec<_>>().join(" / ");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.method,
            r.lr,
            fmt_loss(&r.held_out),
            fmt_acc(&r.held_out),
            fmt_loss(&r.seen),
            fmt_acc(&r.seen)
        );
    }
    let _ = writeln!(out, "\nheld-out: {held_out} tasks never trained on (their query split); seen: {seen} training tasks (their unseen test split).");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::fewshot::{RunResult, ShotResult};

    fn evaluation(method: &str, correct: impl Fn(usize) -> bool) -> Evaluation {
        let correct: Vec<bool> = (0..60).map(correct).collect();
        let accuracy = correct.iter().filter(|c| **c).count() as f64 / 60.0;
        let run = RunResult {
            loss: 0.0,
            accuracy,
            correct,
            truncated: Vec::new(),
            item_loss: Vec::new(),
            samples: Vec::new(),
        };
        let shot = ShotResult {
            loss_mean: 0.0,
            loss_std: 0.0,
            accuracy_mean: accuracy,
            accuracy_std: 0.0,
            truncated_fraction: None,
            adaptation: None,
            runs: vec![run],
        };
        let curves = vec![TaskResults { task: "t".into(), by_shots: vec![(5, shot)] }];
        Evaluation { method: method.into(), lr: 0.1, held_out: Vec::new(), seen: Vec::new(), curves }
    }

    #[test]
    fn the_demo_prints_fomaml_minus_sft_with_its_interval_and_verdict() {
        let sft = evaluation("sft", |i| i % 3 == 0);
        let ahead = fomaml_minus_sft(&[evaluation("fomaml", |i| i % 3 != 2), sft]).unwrap();
        let line = ahead.lines().find(|l| l.contains("5 shots")).expect(&ahead);
        assert!(line.contains("+33.3 [") && line.ends_with("FOMAML ahead"), "{line}");
        let sft = evaluation("sft", |i| i % 3 == 0);
        let level = fomaml_minus_sft(&[evaluation("fomaml", |i| i % 3 == 0), sft]).unwrap();
        assert!(level.contains("+0.0 [+0.0, +0.0]  no clear difference"), "{level}");
        assert_eq!(fomaml_minus_sft(&[evaluation("untrained", |_| true)]).unwrap(), "");
    }
}
