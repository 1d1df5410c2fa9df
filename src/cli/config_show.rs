//! `fomaml config show`: the resolved configuration — file, defaults and overrides merged — and,
//! with `--sources`, where each value came from.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::Value as Json;

use crate::config::{Config, Resolved};

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the resolved config (YAML): the file's values, defaults for the rest, overrides applied.
    Show {
        /// YAML config: this project's layout or the original Python/verl trainer's (model, data,
        /// meta, optim, trainer, checkpoint).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print every key with its value and where it came from (the file, an override, the
        /// original trainer's key it was translated from, or the default) instead of YAML.
        #[arg(long)]
        sources: bool,
        /// Overrides such as meta.inner_lr=1e-4 or meta.tasks.0.name=law (values are YAML).
        overrides: Vec<String>,
    },
}

pub fn run(command: &ConfigCommand) -> Result<()> {
    let ConfigCommand::Show { config, sources, overrides } = command;
    let resolved = match config {
        Some(path) => Config::resolve(path, overrides)?,
        None => Config::resolve_yaml("", "defaults", overrides)?,
    };
    for notice in &resolved.notices {
        eprintln!("note: {notice}");
    }
    if *sources {
        print!("{}", sources_table(&resolved));
    } else {
        print!("{}", resolved.config.to_yaml());
    }
    Ok(())
}

/// One line per leaf key: `key = value  # source`.
fn sources_table(resolved: &Resolved) -> String {
    let tree = serde_json::to_value(&resolved.config).expect("config serialises");
    let mut rows = Vec::new();
    walk(&tree, "", &mut rows);
    let width = rows.iter().map(|(k, v)| k.len() + v.len()).max().unwrap_or(0) + 3;
    let mut out = String::new();
    for (key, value) in rows {
        let source = resolved.source_of(&key).map_or("default".to_string(), ToString::to_string);
        let pad = width - key.len() - value.len();
        out += &format!("{key} = {value}{:pad$}# {source}\n", "");
    }
    out
}

fn walk(tree: &Json, prefix: &str, out: &mut Vec<(String, String)>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match tree {
        Json::Object(map) if !map.is_empty() => map.iter().for_each(|(k, v)| walk(v, &join(k), out)),
        Json::Array(items) if items.iter().any(|i| i.is_object()) => {
            items.iter().enumerate().for_each(|(i, v)| walk(v, &join(&i.to_string()), out))
        }
        leaf => out.push((prefix.to_string(), leaf.to_string())),
    }
}
