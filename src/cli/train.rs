//! `fomaml train`: meta-train from a config file (or the embedded default).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::train::Trainer;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The run's YAML config (the original trainer's layout; `fomaml prepare-data` writes one).
    #[arg(long)]
    pub config: PathBuf,
    /// Stop after this meta-step (a checkpoint is written); run again to resume. For jobs with a
    /// time limit.
    #[arg(long)]
    pub stop_at_step: Option<u64>,
    /// Overrides, e.g. meta.inner_lr=1e-4 trainer.total_steps=100 (values are YAML).
    pub overrides: Vec<String>,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let config = super::load_config(&args.config, &args.overrides)?;
    let summary = Trainer::new(config)
        .and_then(|t| t.run_until(args.stop_at_step))
        .with_context(|| format!("training {}", args.config.display()))?;
    if summary.is_main {
        println!("{} steps; run directory {}", summary.steps, summary.run_dir.display());
    }
    Ok(())
}
