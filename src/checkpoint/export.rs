//! A checkpoint's θ as a Hugging Face model directory: config.json and tokenizer files from the
//! model the run started from, model.safetensors from the checkpoint.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::load;
use crate::fsutil::write_dir_atomically;
use crate::tensor_io::write_safetensors;

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
pub fn export_hf(checkpoint_dir: &Path, model_file: &str, out: &Path, kind: Kind, force: bool) -> Result<()> {
    let loaded = load(checkpoint_dir).with_context(|| format!("checkpoint {}", checkpoint_dir.display()))?;
    let source = Path::new(&loaded.meta.model_source);
    if !source.join("config.json").is_file() {
        bail!(
            "{}: the run's model directory {} has no config.json any more (it is needed for the export)",
            checkpoint_dir.display(),
            source.display()
        );
    }
    let tensors =
        loaded.files.get(model_file).with_context(|| format!("{}: no {model_file}", checkpoint_dir.display()))?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let cast: Vec<(&str, Tensor)> = names.iter().map(|n| (n.as_str(), tensors[*n].to_kind(kind))).collect();
    write_dir_atomically(out, force, |dir| {
        for name in COPIED {
            let from = source.join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.join(name)).with_context(|| format!("cannot copy {}", from.display()))?;
            }
        }
        let refs: Vec<(&str, &Tensor)> = cast.iter().map(|(n, t)| (*n, t)).collect();
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        write_safetensors(&dir.join("model.safetensors"), &refs, Some(metadata))
    })
}
