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
use crate::tensor_io::{tensor_from_view, MappedSafetensors};

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
///
/// Pass 1 reads only headers and reports every mismatch at once; pass 2 copies tensors file by
/// file, releasing each tensor's pages once copied, so peak host memory stays near the size of the
/// loaded weights rather than weights plus checkpoint.
pub fn load_weights(dir: &Path, cfg: &ModelConfig, kind: Kind, device: Device) -> Result<Weights, ModelError> {
    let files = checkpoint_files(dir)?;
    let mapped: Vec<MappedSafetensors> = files
        .iter()
        .map(|p| MappedSafetensors::open(p).map_err(|source| ModelError::Io { path: p.clone(), source }))
        .collect::<Result<_, _>>()?;

    // Pass 1: name -> (file index, shape), from the headers.
    let mut location: HashMap<String, (usize, Vec<i64>)> = HashMap::new();
    for (i, m) in mapped.iter().enumerate() {
        for (name, view) in parse(m)?.tensors() {
            location.insert(name, (i, view.shape().iter().map(|&d| d as i64).collect()));
        }
    }
    let expected = cfg.parameter_shapes();
    check_against_config(dir, cfg, &expected, &location)?;

    // Pass 2: copy out, file by file.
    let mut loaded: HashMap<&str, tch::Tensor> = HashMap::new();
    for (i, m) in mapped.iter().enumerate() {
        let st = parse(m)?;
        for (name, _) in expected.iter().filter(|(n, _)| location[n].0 == i) {
            let view = st.tensor(name).expect("validated in pass 1");
            let host = tensor_from_view(&view).ok_or_else(|| ModelError::UnsupportedDtype {
                path: files[i].clone(),
                name: name.clone(),
                dtype: format!("{:?}", view.dtype()),
            })?;
            m.release(view.data());
            loaded.insert(name, host.to_device(device).to_kind(kind));
        }
    }
    let mut weights = Weights::new();
    for (name, _) in &expected {
        weights.insert(name.clone(), loaded.remove(name.as_str()).expect("every expected tensor was loaded"));
    }
    Ok(weights)
}

fn parse(m: &MappedSafetensors) -> Result<safetensors::SafeTensors<'_>, ModelError> {
    m.parse().map_err(|e| ModelError::BadSafetensors { path: m.path().to_path_buf(), reason: e.to_string() })
}

fn check_against_config(
    dir: &Path,
    cfg: &ModelConfig,
    expected: &[(String, Vec<i64>)],
    location: &HashMap<String, (usize, Vec<i64>)>,
) -> Result<(), Mismatch> {
    let mut mismatch = Mismatch { dir: dir.to_path_buf(), ..Default::default() };
    for (name, shape) in expected {
        match location.get(name) {
            None => mismatch.missing.push(name.clone()),
            Some((_, found)) if found != shape => mismatch.misshaped.push((name.clone(), shape.clone(), found.clone())),
            Some(_) => {}
        }
    }
    let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    mismatch.unexpected =
        location.keys().filter(|n| !expected_names.contains(n.as_str()) && !ignorable(n, cfg)).cloned().collect();
    mismatch.unexpected.sort();
    if mismatch.is_empty() {
        Ok(())
    } else {
        Err(mismatch)
    }
}
