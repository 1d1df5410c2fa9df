//! Checkpoint directories: `<root>/step_<N>/` with one safetensors file per kind of state and a
//! `meta.json` holding the step, the trainer's resumable state and the sha256 of every file.
//!
//! A checkpoint is written into a temp directory, fsynced and renamed into place; `<root>/latest`
//! is updated last and is the authority: a checkpoint is committed when `latest` names it. A crash
//! at any point leaves the previous checkpoint named by `latest`. Retention never deletes the
//! checkpoint `latest` names. No pickle anywhere.

pub mod export;
pub mod run_dir;
pub mod shards;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::distributed::layout::Layout;
use crate::fsutil::write_atomically;
use crate::tensor_io::{hex, read_safetensors, write_safetensors, MappedSafetensors};

pub const META_FILE: &str = "meta.json";
pub const LATEST_FILE: &str = "latest";
/// 2: optimizer moments named `exp_avg/<parameter>`; sharded checkpoints.
const FORMAT_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0:#}")]
    Write(anyhow::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Everything but the tensors: what a resumed run needs to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    /// Meta-steps completed.
    pub step: u64,
    pub world_size: usize,
    /// The model directory the run started from (config.json and tokenizer files for export).
    pub model_source: String,
    /// The resolved config of the run, as YAML.
    pub config: String,
    /// Trainer state (optimizer step count, sampler positions, ...), opaque here.
    pub state: serde_json::Value,
    /// sha256 of every file of the checkpoint but meta.json.
    pub files: BTreeMap<String, String>,
    /// Sharded checkpoints: which unit holds each parameter (one file per rank holds every
    /// unit's slice); absent for a whole-model checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
}

impl CheckpointMeta {
    pub fn new(step: u64, world_size: usize, model_source: String, config: String, state: serde_json::Value) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            step,
            world_size,
            model_source,
            config,
            state,
            files: BTreeMap::new(),
            layout: None,
        }
    }
}

pub fn step_dir_name(step: u64) -> String {
    format!("step_{step:08}")
}

fn sha256_file(path: &Path) -> Result<String, CheckpointError> {
    let mut file = fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Writes `files` (file name → named tensors) and `meta` as `<root>/step_<meta.step>`, points
/// `latest` at it, and deletes the oldest checkpoints beyond `keep`.
pub fn save(
    root: &Path,
    mut meta: CheckpointMeta,
    files: &[(&str, Vec<(&str, &Tensor)>)],
    keep: Option<usize>,
) -> Result<PathBuf, CheckpointError> {
    let tmp = begin(root, meta.step)?;
    let written = files.iter().try_for_each(|(file, tensors)| {
        meta.files.insert(file.to_string(), write_file(&tmp, file, tensors)?);
        Ok(())
    });
    match written {
        Ok(()) => commit(root, &tmp, &meta, keep),
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// The staging directory a checkpoint of `step` is written into (the same on every rank).
pub fn staging_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!(".{}.tmp", step_dir_name(step)))
}

/// Creates an empty staging directory for `step` (removing a stale one) and returns it.
pub fn begin(root: &Path, step: u64) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(root).map_err(io(root))?;
    let tmp = staging_dir(root, step);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    Ok(tmp)
}

/// Writes one safetensors file into a staging directory, streamed from the tensors' own device
/// (a chunk at a time) and hashed as written; returns its sha256.
pub fn write_file(tmp: &Path, file: &str, tensors: &[(&str, &Tensor)]) -> Result<String, CheckpointError> {
    write_safetensors(&tmp.join(file), tensors, None).map_err(CheckpointError::Write)
}

/// Writes `meta` (whose `files` lists every file staged) into the staging directory, renames it to
/// `<root>/step_<N>`, points `latest` at it and prunes to `keep`.
pub fn commit(root: &Path, tmp: &Path, meta: &CheckpointMeta, keep: Option<usize>) -> Result<PathBuf, CheckpointError> {
    let name = step_dir_name(meta.step);
    let dir = root.join(&name);
    let renamed = (|| {
        let json = serde_json::to_vec_pretty(meta).expect("meta serialises");
        write_atomically(&tmp.join(META_FILE), |f| std::io::Write::write_all(f, &json))
            .map_err(CheckpointError::Write)?;
        // A step saved again: the old copy is renamed aside first (never a checkpoint by name)
        // and removed only once the new one is in place.
        let replaced = root.join(format!(".{name}.replaced"));
        if dir.exists() {
            let _ = fs::remove_dir_all(&replaced);
            fs::rename(&dir, &replaced).map_err(io(&dir))?;
        }
        fs::rename(tmp, &dir).map_err(io(&dir))?;
        fs::File::open(root).and_then(|d| d.sync_all()).map_err(io(root))?;
        if replaced.exists() {
            fs::remove_dir_all(&replaced).map_err(io(&replaced))?;
        }
        Ok(())
    })();
    if let Err(e) = renamed {
        let _ = fs::remove_dir_all(tmp);
        return Err(e);
    }
    write_atomically(&root.join(LATEST_FILE), |f| std::io::Write::write_all(f, name.as_bytes()))
        .map_err(CheckpointError::Write)?;
    if let Some(keep) = keep {
        prune(root, keep.max(1))?;
    }
    Ok(dir)
}

/// Complete checkpoints under `root` (those with a meta.json), oldest first.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("step_").and_then(|s| s.parse::<u64>().ok()) {
            if entry.path().join(META_FILE).is_file() {
                found.push((step, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes the oldest checkpoints beyond `keep`, never the one `latest` names.
fn prune(root: &Path, keep: usize) -> Result<(), CheckpointError> {
    let all = list(root)?;
    let named = latest_named(root);
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep)) {
        if Some(dir) != named.as_ref() {
            fs::remove_dir_all(dir).map_err(io(dir))?;
        }
    }
    Ok(())
}

/// The complete checkpoint `latest` names, if any.
fn latest_named(root: &Path) -> Option<PathBuf> {
    let named = root.join(fs::read_to_string(root.join(LATEST_FILE)).ok()?.trim());
    named.join(META_FILE).is_file().then_some(named)
}

/// The checkpoint to resume: the one `latest` names; without a usable `latest` (a directory of an
/// older version, or `latest` removed), the highest complete step.
pub fn newest(root: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    match latest_named(root) {
        Some(named) => Ok(Some(named)),
        None => Ok(list(root)?.pop().map(|(_, dir)| dir)),
    }
}

pub struct Loaded {
    pub meta: CheckpointMeta,
    /// File name → tensor name → tensor.
    pub files: HashMap<String, HashMap<String, Tensor>>,
}

/// Reads a checkpoint directory, checking every file against its recorded sha256.
pub fn load(dir: &Path) -> Result<Loaded, CheckpointError> {
    let meta = read_meta(dir)?;
    let mut files = HashMap::new();
    for file in meta.files.keys() {
        let path = verified(dir, &meta, file)?;
        let tensors = read_safetensors(&path)
            .map_err(|e| CheckpointError::Corrupt { path: path.clone(), reason: format!("{e:#}") })?;
        files.insert(file.clone(), tensors.into_iter().collect());
    }
    Ok(Loaded { meta, files })
}

/// A checkpoint's meta.json, of a format version this build reads.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let meta_path = dir.join(META_FILE);
    let text = fs::read_to_string(&meta_path).map_err(io(&meta_path))?;
    let meta: CheckpointMeta = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Corrupt { path: meta_path.clone(), reason: e.to_string() })?;
    if meta.format_version != FORMAT_VERSION {
        return Err(CheckpointError::Corrupt {
            path: meta_path,
            reason: format!("format version {} (this build reads {FORMAT_VERSION})", meta.format_version),
        });
    }
    Ok(meta)
}

/// The path of `file` of the checkpoint, once its sha256 matches the one meta.json records.
fn verified(dir: &Path, meta: &CheckpointMeta, file: &str) -> Result<PathBuf, CheckpointError> {
    let path = dir.join(file);
    let expected = meta.files.get(file).ok_or_else(|| CheckpointError::Corrupt {
        path: dir.join(META_FILE),
        reason: format!("no sha256 recorded for {file}"),
    })?;
    let actual = sha256_file(&path)?;
    if &actual != expected {
        return Err(CheckpointError::Corrupt {
            path,
            reason: format!("sha256 {actual} differs from {expected} recorded in meta.json"),
        });
    }
    Ok(path)
}

/// A checkpoint opened for reading parts of it: its meta.json, and each file memory-mapped and
/// checked against its sha256 when first asked for, once however often it is read.
pub struct CheckpointReader {
    pub dir: PathBuf,
    pub meta: CheckpointMeta,
    files: RefCell<BTreeMap<String, Rc<MappedSafetensors>>>,
}

impl CheckpointReader {
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        Ok(Self { dir: dir.to_path_buf(), meta: read_meta(dir)?, files: RefCell::default() })
    }

    /// `name` of the checkpoint, verified and mapped.
    pub fn file(&self, name: &str) -> Result<Rc<MappedSafetensors>, CheckpointError> {
        if let Some(mapped) = self.files.borrow().get(name) {
            return Ok(mapped.clone());
        }
        let path = verified(&self.dir, &self.meta, name)?;
        let mapped = Rc::new(MappedSafetensors::open(&path).map_err(io(&path))?);
        self.files.borrow_mut().insert(name.to_string(), mapped.clone());
        Ok(mapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(step: u64) -> CheckpointMeta {
        CheckpointMeta::new(step, 1, "model".into(), "config".into(), serde_json::json!({"k": step}))
    }

    #[test]
    fn save_load_prune_and_detect_corruption() {
        let root = tempfile::tempdir().unwrap();
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        for step in [10, 20, 30] {
            save(root.path(), meta(step), &[("model.safetensors", vec![("w", &t)])], Some(2)).unwrap();
        }
        let steps: Vec<u64> = list(root.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, [20, 30]);
        let newest_dir = newest(root.path()).unwrap().unwrap();
        assert!(newest_dir.ends_with("step_00000030"));
        let loaded = load(&newest_dir).unwrap();
        assert_eq!(loaded.meta.state["k"], 30);
        assert!(loaded.files["model.safetensors"]["w"].equal(&t));

        // A flipped byte is caught by the checksum and named.
        let file = newest_dir.join("model.safetensors");
        let mut bytes = fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&file, bytes).unwrap();
        let err = load(&newest_dir).err().unwrap().to_string();
        assert!(err.contains("model.safetensors") && err.contains("sha256"), "{err}");
    }

    #[test]
    fn a_step_saved_again_is_replaced_whole_and_latest_is_the_authority() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (Tensor::from_slice(&[1.0f32]), Tensor::from_slice(&[2.0f32]));
        save(root.path(), meta(4), &[("model.safetensors", vec![("w", &a)])], None).unwrap();
        save(root.path(), meta(5), &[("model.safetensors", vec![("w", &a)])], None).unwrap();
        let dir = save(root.path(), meta(5), &[("model.safetensors", vec![("w", &b)])], None).unwrap();
        assert!(load(&dir).unwrap().files["model.safetensors"]["w"].equal(&b));
        let names: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains("replaced")), "{names:?}");

        // What a crash between the two renames of a re-save leaves: the old step 5 aside, the new
        // one still staged. `latest` names a step that is gone: the newest complete one is used.
        fs::rename(&dir, root.path().join(".step_00000005.replaced")).unwrap();
        fs::create_dir(staging_dir(root.path(), 5)).unwrap();
        assert!(newest(root.path()).unwrap().unwrap().ends_with("step_00000004"));

        // `latest` wins over a higher step, and retention never deletes what it names.
        save(root.path(), meta(6), &[("model.safetensors", vec![("w", &a)])], None).unwrap();
        fs::write(root.path().join(LATEST_FILE), step_dir_name(4)).unwrap();
        assert!(newest(root.path()).unwrap().unwrap().ends_with("step_00000004"));
        prune(root.path(), 1).unwrap();
        let steps: Vec<u64> = list(root.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, [4, 6]);
    }

    #[test]
    fn an_incomplete_directory_is_not_a_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let t = Tensor::from_slice(&[1.0f32]);
        save(root.path(), meta(5), &[("model.safetensors", vec![("w", &t)])], None).unwrap();
        // A later step whose meta.json never got written (killed mid-save) and a stale `latest`.
        fs::create_dir(root.path().join(step_dir_name(9))).unwrap();
        assert!(newest(root.path()).unwrap().unwrap().ends_with("step_00000005"));
        fs::write(root.path().join(LATEST_FILE), "step_00000009").unwrap();
        assert!(newest(root.path()).unwrap().unwrap().ends_with("step_00000005"));
    }
}
