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
    #[arg(long, required_unless_present = "config_name", conflicts_with_all = ["config_path", "config_name"])]
    pub config: Option<PathBuf>,
    /// The original trainer's (Hydra's) spelling: the directory of the config...
    #[arg(long, requires = "config_name")]
    pub config_path: Option<PathBuf>,
    /// ...and its name without `.yaml`: --config-path D --config-name N reads D/N.yaml.
    #[arg(long)]
    pub config_name: Option<String>,
    /// Stop after this meta-step (a checkpoint is written); run again to resume. For jobs with a
    /// time limit.
    #[arg(long)]
    pub stop_at_step: Option<u64>,
    /// Overrides, e.g. meta.inner_lr=1e-4 trainer.total_steps=100 (values are YAML).
    pub overrides: Vec<String>,
}

impl TrainArgs {
    /// The config file, however it was given.
    pub fn config_file(&self) -> PathBuf {
        match (&self.config, &self.config_name) {
            (Some(path), _) => path.clone(),
            (None, Some(name)) => {
                let dir = self.config_path.clone().unwrap_or_default();
                let file = if name.ends_with(".yaml") || name.ends_with(".yml") {
                    name.clone()
                } else {
                    format!("{name}.yaml")
                };
                dir.join(file)
            }
            (None, None) => unreachable!("clap requires --config or --config-name"),
        }
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let config_file = args.config_file();
    let config = super::load_config(&config_file, &args.overrides)?;
    crate::train::preempt::install(&config.trainer.preempt_signals)?;
    let summary = Trainer::new(config)
        .and_then(|t| t.run_until(args.stop_at_step))
        .with_context(|| format!("training {}", config_file.display()))?;
    if summary.is_main {
        println!("{} steps; run directory {}", summary.steps, summary.run_dir.display());
    }
    Ok(())
}
