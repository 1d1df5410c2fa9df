//! A checkpoint's θ as a Hugging Face model directory: config.json and tokenizer files from the
//! model the run started from, model.safetensors from the checkpoint.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use super::shards::read_params;
use crate::config::Config;
use crate::fsutil::write_dir_atomically;
use crate::model::{load_weights, LoraConfig, ModelConfig, Weights};
use crate::tensor_io::write_safetensors;

/// `out` may not be, hold or lie inside the run directory the checkpoint belongs to (nor the
/// checkpoint itself): `--force` replaces `out` whole, and must never take the run with it.
fn refuse_to_overwrite_the_run(checkpoint_dir: &Path, out: &Path) -> Result<()> {
    let checkpoint = std::fs::canonicalize(checkpoint_dir)
        .with_context(|| format!("checkpoint {} does not exist", checkpoint_dir.display()))?;
    // <run>/checkpoints/step_N: the run directory is two levels up, when the layout is the trainer's.
    let under_checkpoints = checkpoint.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"));
    let protected = under_checkpoints.and_then(Path::parent).unwrap_or(&checkpoint).to_path_buf();
    let out = absolute_resolved(out)?;
    if out.starts_with(&protected) || protected.starts_with(&out) {
        bail!(
            "{} {} the run directory {} of checkpoint {}; export elsewhere (--force would replace it)",
            out.display(),
            if out == protected {
                "is"
            } else if out.starts_with(&protected) {
                "lies inside"
            } else {
                "contains"
            },
            protected.display(),
            checkpoint_dir.display()
        );
    }
    Ok(())
}

/// `path` made absolute with its existing part's links resolved (the rest need not exist yet).
fn absolute_resolved(path: &Path) -> Result<std::path::PathBuf> {
    let path = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    resolved.extend(rest.iter().rev());
    Ok(resolved)
}

/// Files copied from the source model directory when present (config.json is required).
const COPIED: [&str; 8] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

/// Writes `out` from the checkpoint at `checkpoint_dir`, the weights cast to `kind`. `out` is
/// built beside itself and renamed into place; an existing `out` needs `force`.
///
/// A full-parameter run gives a Hugging Face model directory. A LoRA run gives a PEFT adapter
/// directory (adapter_config.json + adapter_model.safetensors over the run's base model), or with
/// `merge` the base model with the adapter merged in.
pub fn export_hf(checkpoint_dir: &Path, out: &Path, kind: Kind, merge: bool, force: bool) -> Result<()> {
    refuse_to_overwrite_the_run(checkpoint_dir, out)?;
    // Sharded checkpoints are consolidated here: every rank's slices joined back into tensors.
    let (meta, params) =
        read_params(checkpoint_dir).with_context(|| format!("checkpoint {}", checkpoint_dir.display()))?;
    let source = Path::new(&meta.model_source);
    if !source.join("config.json").is_file() {
        bail!(
            "{}: the run's model directory {} has no config.json any more (it is needed for the export)",
            checkpoint_dir.display(),
            source.display()
        );
    }
    let tensors: std::collections::HashMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut names: Vec<&str> = tensors.keys().copied().collect();
    names.sort();
    let is_lora = names.iter().any(|n| n.ends_with(".lora_A.weight"));
    if merge && !is_lora {
        bail!("{}: --merge is for LoRA checkpoints; this one holds full parameters", checkpoint_dir.display());
    }
    let copy_model_files = |dir: &Path| -> Result<()> {
        for name in COPIED {
            let from = source.join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.join(name)).with_context(|| format!("cannot copy {}", from.display()))?;
            }
        }
        Ok(())
    };
    let write_model = |dir: &Path, weights: &[(&str, Tensor)]| -> Result<()> {
        let refs: Vec<(&str, &Tensor)> = weights.iter().map(|(n, t)| (*n, t)).collect();
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        write_safetensors(&dir.join("model.safetensors"), &refs, Some(metadata)).map(drop)
    };
    if !is_lora {
        let cast: Vec<(&str, Tensor)> = names.iter().map(|n| (*n, tensors[n].to_kind(kind))).collect();
        return write_dir_atomically(out, force, |dir| {
            copy_model_files(dir)?;
            write_model(dir, &cast)
        });
    }
    let config = Config::from_yaml(&meta.config, "the checkpoint's config", &[])?;
    let m = &config.model;
    let lora = LoraConfig::from_settings(m.lora_rank, m.lora_alpha, m.lora_dropout, &m.target_modules)?.with_context(
        || format!("{}: LoRA tensors but model.lora_rank is 0 in its config", checkpoint_dir.display()),
    )?;
    if merge {
        let cfg = ModelConfig::from_dir(source)?;
        let base = load_weights(source, &cfg, Kind::Float, Device::Cpu)?;
        let mut adapter = Weights::new();
        for n in &names {
            adapter.insert(*n, tensors[n].shallow_clone());
        }
        let merged = lora.merge(&base, &adapter)?;
        let cast: Vec<(&str, Tensor)> = merged.iter().map(|(n, t)| (n, t.to_kind(kind))).collect();
        return write_dir_atomically(out, force, |dir| {
            copy_model_files(dir)?;
            write_model(dir, &cast)
        });
    }
    let adapter: Vec<(&str, &Tensor)> = names.iter().map(|n| (*n, tensors[n])).collect();
    write_dir_atomically(out, force, |dir| lora.write_peft(dir, &source.display().to_string(), &adapter))
}
