//! Hugging Face checkpoint loading: `model.safetensors` or a sharded `model.safetensors.index.json`.
//!
//! Files are memory-mapped and each tensor is copied out, converted and moved on its own, so peak
//! host memory is one tensor beyond the mapped (page-cache backed, reclaimable) file; the sharded
//! trainer reads them through [`MappedWeights`], only the tensors that overlap its slices.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

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
///
/// Each tensor is copied out of the mapping, moved and converted on its own (its pages released
/// once copied), so peak host memory stays near the size of the loaded weights rather than weights
/// plus checkpoint.
pub fn load_weights(dir: &Path, cfg: &ModelConfig, kind: Kind, device: Device) -> Result<Weights, ModelError> {
    let checkpoint = MappedWeights::open(dir, cfg)?;
    let mut weights = Weights::new();
    for (name, _) in checkpoint.shapes() {
        weights.insert(name.clone(), checkpoint.tensor(name)?.to_device(device).to_kind(kind));
    }
    Ok(weights)
}

/// A checkpoint's safetensors files, mapped and validated against the config (every mismatch
/// reported at once, from the headers alone), read one tensor at a time. The sharded trainer
/// builds its slices from it tensor by tensor, so no rank ever holds the whole model.
pub struct MappedWeights {
    files: Vec<PathBuf>,
    mapped: Vec<MappedSafetensors>,
    /// The file holding each expected tensor.
    file_of: HashMap<String, usize>,
    shapes: Vec<(String, Vec<i64>)>,
}

impl MappedWeights {
    pub fn open(dir: &Path, cfg: &ModelConfig) -> Result<Self, ModelError> {
        let files = checkpoint_files(dir)?;
        let mapped: Vec<MappedSafetensors> = files
            .iter()
            .map(|p| MappedSafetensors::open(p).map_err(|source| ModelError::Io { path: p.clone(), source }))
            .collect::<Result<_, _>>()?;
        let mut location: HashMap<String, (usize, Vec<i64>)> = HashMap::new();
        let mut unsupported = HashMap::new();
        for (i, m) in mapped.iter().enumerate() {
            for (name, view) in parse(m)?.tensors() {
                if kind_of(view.dtype()).is_none() {
                    unsupported.insert(name.clone(), format!("{:?}", view.dtype()));
                }
                location.insert(name, (i, view.shape().iter().map(|&d| d as i64).collect()));
            }
        }
        let shapes = cfg.parameter_shapes();
        check_against_config(dir, cfg, &shapes, &location)?;
        let file_of: HashMap<String, usize> = shapes.iter().map(|(name, _)| (name.clone(), location[name].0)).collect();
        if let Some((name, dtype)) = shapes.iter().find_map(|(n, _)| unsupported.remove_entry(n)) {
            return Err(ModelError::UnsupportedDtype { path: files[file_of[&name]].clone(), name, dtype });
        }
        Ok(Self { files, mapped, file_of, shapes })
    }

    /// The decoder's parameters and their shapes, in the config's order.
    pub fn shapes(&self) -> &[(String, Vec<i64>)] {
        &self.shapes
    }

    /// One parameter as a new CPU tensor in the checkpoint's dtype; its pages in the mapping are
    /// released once copied.
    pub fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        let i = *self.file_of.get(name).ok_or_else(|| ModelError::MissingWeight(name.to_string()))?;
        let (m, path) = (&self.mapped[i], &self.files[i]);
        let st = parse(m)?;
        let view =
            st.tensor(name).map_err(|e| ModelError::BadSafetensors { path: path.clone(), reason: e.to_string() })?;
        let host = tensor_from_view(&view).expect("dtypes checked when opened");
        m.release(view.data());
        Ok(host)
    }
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
