//! Hugging Face checkpoint loading: `model.safetensors` or a sharded `model.safetensors.index.json`.
//!
//! Files are memory-mapped and each tensor is copied out, converted and moved on its own, so peak
//! host memory is one tensor beyond the mapped (page-cache backed, reclaimable) file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind};

use super::{ModelConfig, ModelError, Weights};
use crate::tensor_io::{kind_of, tensor_from_view, MappedSafetensors};

/// Everything wrong between a checkpoint's tensors and what the config expects, reported at once.
#[derive(Debug, Default)]
pub struct Mismatch {
    pub dir: PathBuf,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (name, expected shape, found shape)
    pub misshaped: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl Mismatch {
    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.misshaped.is_empty()
    }
}

impl std::error::Error for Mismatch {}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 4;
        fn list(names: impl Iterator<Item = String>, total: usize) -> String {
            let mut s: Vec<String> = names.take(SHOWN).collect();
            if total > SHOWN {
                s.push(format!("… {} more", total - SHOWN));
            }
            s.join(", ")
        }
        write!(f, "{}: checkpoint does not match config.json:", self.dir.display())?;
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            let names = list(self.missing.iter().cloned(), self.missing.len());
            parts.push(format!(" {} missing ({names})", self.missing.len()));
        }
        if !self.unexpected.is_empty() {
            let names = list(self.unexpected.iter().cloned(), self.unexpected.len());
            parts.push(format!(" {} unexpected ({names})", self.unexpected.len()));
        }
        if !self.misshaped.is_empty() {
            let names = self.misshaped.iter().map(|(n, want, got)| format!("{n}: expected {want:?}, found {got:?}"));
            parts.push(format!(" {} mis-shaped ({})", self.misshaped.len(), list(names, self.misshaped.len())));
        }
        write!(f, "{}", parts.join(";"))
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The safetensors files that make up the checkpoint in `dir`.
fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|source| ModelError::Io { path: index_path.clone(), source })?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config { path: index_path.clone(), reason: e.to_string() })?;
        let files: BTreeSet<&String> = index.weight_map.values().collect();
        return files
            .into_iter()
            .map(|f| {
                let path = dir.join(f);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(ModelError::Config {
                        path: index_path.clone(),
                        reason: format!("lists shard `{f}`, which does not exist"),
                    })
                }
            })
            .collect();
    }
    if !dir.is_dir() {
        return Err(ModelError::NoModelDir { dir: dir.to_path_buf() });
    }
    Err(ModelError::NoWeights { dir: dir.to_path_buf(), has_pickle: dir.join("pytorch_model.bin").exists() })
}

/// Tensors a checkpoint may carry that are not parameters of the decoder.
fn ignorable(name: &str, cfg: &ModelConfig) -> bool {
    name.ends_with(".rotary_emb.inv_freq") || (cfg.tie_word_embeddings && name == "lm_head.weight")
}

/// Loads and validates the weights in `dir` against `cfg`, converting to `kind` on `device`.
pub fn load_weights(dir: &Path, cfg: &ModelConfig, kind: Kind, device: Device) -> Result<Weights, ModelError> {
    let files = checkpoint_files(dir)?;
    let mapped: Vec<MappedSafetensors> = files
        .iter()
        .map(|p| MappedSafetensors::open(p).map_err(|source| ModelError::Io { path: p.clone(), source }))
        .collect::<Result<_, _>>()?;
    let parsed = mapped
        .iter()
        .map(|m| {
            m.parse().map_err(|e| ModelError::BadSafetensors { path: m.path().to_path_buf(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Where each tensor lives: name -> index of its file.
    let mut location: HashMap<String, usize> = HashMap::new();
    for (i, st) in parsed.iter().enumerate() {
        for name in st.names() {
            location.insert(name.to_string(), i);
        }
    }

    let expected = cfg.parameter_shapes();
    let mut mismatch = Mismatch { dir: dir.to_path_buf(), ..Default::default() };
    for (name, shape) in &expected {
        match location.get(name) {
            None => mismatch.missing.push(name.clone()),
            Some(&i) => {
                let view = parsed[i].tensor(name).expect("name listed by the same file");
                let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                if &found != shape {
                    mismatch.misshaped.push((name.clone(), shape.clone(), found));
                }
            }
        }
    }
    let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut unexpected: Vec<String> =
        location.keys().filter(|n| !expected_names.contains(n.as_str()) && !ignorable(n, cfg)).cloned().collect();
    unexpected.sort();
    mismatch.unexpected = unexpected;
    if !mismatch.is_empty() {
        return Err(mismatch.into());
    }

    let mut weights = Weights::new();
    for (name, _) in &expected {
        let i = location[name];
        let view = parsed[i].tensor(name).expect("validated above");
        let host = tensor_from_view(&view).ok_or_else(|| ModelError::UnsupportedDtype {
            path: files[i].clone(),
            name: name.clone(),
            dtype: format!("{:?}", view.dtype()),
        })?;
        debug_assert!(kind_of(view.dtype()).is_some());
        weights.insert(name.clone(), host.to_device(device).to_kind(kind));
    }
    Ok(weights)
}
