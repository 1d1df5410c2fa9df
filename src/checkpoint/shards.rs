//! What a checkpoint holds, whatever world size wrote it.
//!
//! A whole-model checkpoint has `model.safetensors` (θ by parameter name) and
//! `optimizer.safetensors` (`exp_avg/<name>`, `exp_avg_sq/<name>`). A sharded one has one
//! `rank_<r>.safetensors` per rank with that rank's slice of every unit's flat buffer (`unit.<u>`,
//! `exp_avg/unit.<u>`, ...) and the layout in meta.json. Either reads back as one full flat buffer
//! per unit, which the reader cuts for its own world size: resharding is just reading.

use std::collections::HashMap;
use std::path::Path;

use tch::{Kind, Tensor};

use super::{CheckpointError, Loaded};
use crate::dist::fsdp::Layout;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The file rank `rank` writes in a sharded checkpoint.
pub fn rank_file(rank: usize) -> String {
    format!("rank_{rank:05}.safetensors")
}

/// How a parameter's state of kind `prefix` ("" for θ, "exp_avg/", "exp_avg_sq/") is named.
pub fn state_name(prefix: &str, param: &str) -> String {
    format!("{prefix}{param}")
}

/// Who reads a checkpoint: the whole model (parameters by name) or rank `rank` of `world`.
#[derive(Clone, Copy, Debug)]
pub enum Reader {
    Whole,
    Shard { rank: usize, world: usize },
}

fn corrupt(dir: &Path, reason: String) -> CheckpointError {
    CheckpointError::Corrupt { path: dir.to_path_buf(), reason }
}

/// The `prefix` state of every unit of `layout` as full flat buffers (fp32 as saved).
pub fn full_units(loaded: &Loaded, dir: &Path, layout: &Layout, prefix: &str) -> Result<Vec<Tensor>, CheckpointError> {
    match &loaded.meta.layout {
        None => {
            let file = if prefix.is_empty() { MODEL_FILE } else { OPTIMIZER_FILE };
            let tensors = loaded.files.get(file).ok_or_else(|| corrupt(dir, format!("no {file}")))?;
            let mut units = Vec::new();
            for (u, unit) in layout.units.iter().enumerate() {
                for (name, shape) in &unit.params {
                    let key = state_name(prefix, name);
                    let t = tensors.get(&key).ok_or_else(|| corrupt(dir, format!("{file}: `{key}` is missing")))?;
                    if &t.size() != shape {
                        return Err(corrupt(
                            dir,
                            format!("{file}: `{key}` has shape {:?}, the model {shape:?}", t.size()),
                        ));
                    }
                }
                units.push(layout.flatten(u, |name| tensors[&state_name(prefix, name)].to_kind(Kind::Float)));
            }
            Ok(units)
        }
        Some(saved) => {
            if saved != layout {
                return Err(corrupt(
                    dir,
                    "its parameter layout differs from this model's (another model, LoRA setting or target modules?)"
                        .into(),
                ));
            }
            let world = loaded.meta.world_size;
            let mut units = Vec::new();
            for (u, unit) in layout.units.iter().enumerate() {
                if unit.numel == 0 {
                    units.push(Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)));
                    continue;
                }
                let key = state_name(prefix, &format!("unit.{u}"));
                let mut parts = Vec::with_capacity(world);
                for rank in 0..world {
                    let file = rank_file(rank);
                    let tensors = loaded.files.get(&file).ok_or_else(|| corrupt(dir, format!("no {file}")))?;
                    let t = tensors.get(&key).ok_or_else(|| corrupt(dir, format!("{file}: `{key}` is missing")))?;
                    if t.size() != [unit.shard_len(world)] {
                        return Err(corrupt(dir, format!("{file}: `{key}` has {} elements", t.numel())));
                    }
                    parts.push(t.shallow_clone());
                }
                units.push(Tensor::cat(&parts, 0).narrow(0, 0, unit.numel));
            }
            Ok(units)
        }
    }
}

/// The `prefix` state as `reader` holds it: one tensor per name of `names` for the whole model,
/// this rank's slice of each unit for a shard.
pub fn read_for(
    loaded: &Loaded,
    dir: &Path,
    layout: &Layout,
    prefix: &str,
    reader: Reader,
    names: &[String],
) -> Result<Vec<Tensor>, CheckpointError> {
    let units = full_units(loaded, dir, layout, prefix)?;
    match reader {
        Reader::Shard { rank, world } => {
            Ok(units.iter().enumerate().map(|(u, full)| layout.shard_of(u, full, world, rank)).collect())
        }
        Reader::Whole => {
            let mut by_name: HashMap<String, Tensor> =
                units.iter().enumerate().flat_map(|(u, full)| layout.unflatten(u, full)).collect();
            names
                .iter()
                .map(|n| by_name.remove(n).ok_or_else(|| corrupt(dir, format!("`{n}` is not in the checkpoint"))))
                .collect()
        }
    }
}

/// θ by parameter name (CPU, fp32), from a whole or a sharded checkpoint: what export reads.
pub fn params_by_name(loaded: &Loaded, dir: &Path) -> Result<Vec<(String, Tensor)>, CheckpointError> {
    match &loaded.meta.layout {
        None => {
            let tensors = loaded.files.get(MODEL_FILE).ok_or_else(|| corrupt(dir, format!("no {MODEL_FILE}")))?;
            let mut named: Vec<(String, Tensor)> =
                tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(named)
        }
        Some(layout) => {
            let units = full_units(loaded, dir, layout, "")?;
            Ok(units.iter().enumerate().flat_map(|(u, full)| layout.unflatten(u, full)).collect())
        }
    }
}
