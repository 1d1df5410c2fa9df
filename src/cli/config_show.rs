//! `fomaml config show`: the resolved configuration — file, defaults and overrides merged.

use std::path::PathBuf;

use anyhow::Result;

use crate::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the resolved config (YAML): the file's values, defaults for the rest, overrides applied.
    Show {
        /// YAML config in the seeds' layout (model, data, meta, optim, trainer, checkpoint).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides such as meta.inner_lr=1e-4 or meta.tasks.0.name=law (values are YAML).
        overrides: Vec<String>,
    },
}

pub fn run(command: &ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Show { config, overrides } => {
            let cfg = match config {
                Some(path) => Config::load(path, overrides)?,
                None => Config::from_yaml("", "defaults", overrides)?,
            };
            print!("{}", cfg.to_yaml());
            Ok(())
        }
    }
}
