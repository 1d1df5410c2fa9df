//! `fomaml train`: meta-train from a config file (or the embedded default).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::train::Trainer;

/// `fomaml train --help`'s examples.
pub const EXAMPLES: &str = "\
Examples:
  fomaml train --config data/math/config.yaml
  fomaml train --config CONFIG meta.inner_lr=1e-4 trainer.total_steps=100   # overrides
  fomaml train --config CONFIG --stop-at-step 500    # for a job with a time limit; run again to resume
  fomaml-launch --nproc-per-node 4 -- fomaml train --config CONFIG             # 4 GPUs, sharded
  fomaml config show --config CONFIG --sources       # what the run will use, and from where";

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The run's YAML config: this project's layout or the original Python/verl trainer's
    /// (`fomaml prepare-data` writes one).
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
