//! What a checkpoint holds, whatever world size wrote it.
//!
//! A whole-model checkpoint has `model.safetensors` (θ by parameter name) and
//! `optimizer.safetensors` (`exp_avg/<name>`, `exp_avg_sq/<name>`). A sharded one has one
//! `rank_<r>.safetensors` per rank with that rank's slice of every unit's flat buffer (`unit.<u>`,
//! `exp_avg/unit.<u>`, ...) and the layout in meta.json. Either is read as slices of each unit's
//! full flat buffer, cut for the reader's own world size: resharding is just reading. A rank reads
//! only its own slices ([`read_shard`]), from only the files that hold them; the whole model is
//! rank 0 of a world of one.

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{CheckpointError, CheckpointMeta, CheckpointReader};
use crate::distributed::layout::{Layout, Unit};
use crate::tensor_io::{tensor_from_view, MappedSafetensors};

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

fn corrupt(dir: &Path, reason: String) -> CheckpointError {
    CheckpointError::Corrupt { path: dir.to_path_buf(), reason }
}

/// The `prefix` state of the whole model, one tensor per name of `names`: [`read_shard`] for
/// rank 0 of a world of one, whose slices are the full units.
pub fn read_whole(
    checkpoint: &CheckpointReader,
    layout: &Layout,
    prefix: &str,
    names: &[String],
) -> Result<Vec<Tensor>, CheckpointError> {
    let dir = &checkpoint.dir;
    let units = read_shard(checkpoint, layout, prefix, 0, 1)?;
    let mut by_name: HashMap<String, Tensor> =
        units.iter().enumerate().flat_map(|(u, full)| layout.unflatten(u, full)).collect();
    names
        .iter()
        .map(|n| by_name.remove(n).ok_or_else(|| corrupt(dir, format!("`{n}` is not in the checkpoint"))))
        .collect()
}

/// Rank `rank` of `world`'s slice of every unit's `prefix` state. Only the files that hold it are
/// read (each checked against its sha256 first), out of their mappings, one saved slice at a time:
/// a resuming rank never holds the checkpoint, nor more than one unit of it.
pub fn read_shard(
    checkpoint: &CheckpointReader,
    layout: &Layout,
    prefix: &str,
    rank: usize,
    world: usize,
) -> Result<Vec<Tensor>, CheckpointError> {
    let (dir, meta) = (&checkpoint.dir, &checkpoint.meta);
    let Some(saved) = &meta.layout else {
        // A whole-model checkpoint: the tensors by name that overlap this rank's slices.
        let file = if prefix.is_empty() { MODEL_FILE } else { OPTIMIZER_FILE };
        let mapped = checkpoint.file(file)?;
        let read = |name: &str, shape: &[i64]| {
            let key = state_name(prefix, name);
            let t = copy_out(&mapped, dir, file, &key)?;
            if t.size() != shape {
                return Err(corrupt(dir, format!("{file}: `{key}` has shape {:?}, the model {shape:?}", t.size())));
            }
            Ok(t)
        };
        return (0..layout.units.len()).map(|u| layout.slice_from(u, world, rank, Kind::Float, read)).collect();
    };
    if saved != layout {
        return Err(different_layout(dir));
    }
    let pieces: Vec<Vec<Piece>> = layout.units.iter().map(|unit| pieces(unit, rank, world, meta.world_size)).collect();
    // Every file first, so a corrupt one fails before anything is copied.
    for piece in pieces.iter().flatten() {
        checkpoint.file(&rank_file(piece.saved_rank))?;
    }
    let mut shards = Vec::with_capacity(layout.units.len());
    for (u, unit) in layout.units.iter().enumerate() {
        let key = state_name(prefix, &format!("unit.{u}"));
        let mut shard: Option<Tensor> = None;
        for piece in &pieces[u] {
            let file = rank_file(piece.saved_rank);
            let saved = copy_out(&*checkpoint.file(&file)?, dir, &file, &key)?;
            if saved.size() != [unit.shard_len(meta.world_size)] {
                return Err(corrupt(dir, format!("{file}: `{key}` has {} elements", saved.numel())));
            }
            let shard =
                shard.get_or_insert_with(|| Tensor::zeros([unit.shard_len(world)], (saved.kind(), Device::Cpu)));
            shard.narrow(0, piece.at, piece.len).copy_(&saved.narrow(0, piece.from, piece.len));
        }
        shards.push(shard.unwrap_or_else(|| Tensor::zeros([unit.shard_len(world)], (Kind::Float, Device::Cpu))));
    }
    Ok(shards)
}

/// Part of a reader's slice of a unit: `len` elements at `at`, from offset `from` of the slice that
/// rank `saved_rank` saved.
struct Piece {
    saved_rank: usize,
    from: i64,
    at: i64,
    len: i64,
}

/// Where rank `rank` of `world`'s slice of `unit` lies among the slices `saved_world` ranks saved.
/// The padding past the unit's end is never read: it stays zero.
fn pieces(unit: &Unit, rank: usize, world: usize, saved_world: usize) -> Vec<Piece> {
    let std::ops::Range { start, end } = unit.slice(world, rank);
    let saved_len = unit.shard_len(saved_world);
    let mut out = Vec::new();
    let mut next = start;
    while next < end {
        let saved_rank = next / saved_len;
        let stop = end.min((saved_rank + 1) * saved_len);
        out.push(Piece {
            saved_rank: saved_rank as usize,
            from: next - saved_rank * saved_len,
            at: next - start,
            len: stop - next,
        });
        next = stop;
    }
    out
}

/// Tensor `key` of a mapped checkpoint file, copied out, its pages released.
fn copy_out(mapped: &MappedSafetensors, dir: &Path, file: &str, key: &str) -> Result<Tensor, CheckpointError> {
    let st = mapped.parse().map_err(|e| corrupt(dir, format!("{file}: {e}")))?;
    let view = st.tensor(key).map_err(|_| corrupt(dir, format!("{file}: `{key}` is missing")))?;
    let t =
        tensor_from_view(&view).ok_or_else(|| corrupt(dir, format!("{file}: `{key}` has dtype {:?}", view.dtype())))?;
    mapped.release(view.data());
    Ok(t)
}

fn different_layout(dir: &Path) -> CheckpointError {
    corrupt(
        dir,
        "its parameter layout differs from this model's (another model, LoRA setting or target modules?)".into(),
    )
}

/// θ by parameter name (CPU, sorted by name), from a whole or a sharded checkpoint: what export and
/// evaluation read. Only θ is copied out; the optimizer moments are read only by the sha256 check
/// of a sharded checkpoint's rank files, and a whole checkpoint's optimizer file is not read.
pub fn read_params(dir: &Path) -> Result<(CheckpointMeta, Vec<(String, Tensor)>), CheckpointError> {
    let checkpoint = CheckpointReader::open(dir)?;
    let mut named = match &checkpoint.meta.layout {
        None => {
            let mapped = checkpoint.file(MODEL_FILE)?;
            let names: Vec<String> = mapped
                .parse()
                .map_err(|e| corrupt(dir, format!("{MODEL_FILE}: {e}")))?
                .names()
                .into_iter()
                .map(String::from)
                .collect();
            names
                .into_iter()
                .map(|n| Ok((n.clone(), copy_out(&mapped, dir, MODEL_FILE, &n)?)))
                .collect::<Result<Vec<_>, _>>()?
        }
        // Rank 0 of a world of one holds every unit whole.
        Some(layout) => read_shard(&checkpoint, layout, "", 0, 1)?
            .iter()
            .enumerate()
            .flat_map(|(u, full)| layout.unflatten(u, full))
            .collect(),
    };
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((checkpoint.meta, named))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{save, CheckpointMeta};

    /// Two layers with odd sizes (so slices straddle saved ones) and an empty head.
    fn model() -> (Layout, Vec<(String, Tensor)>) {
        let shapes =
            [("model.embed_tokens.weight", vec![7, 3]), ("model.layers.0.w", vec![5]), ("model.layers.1.w", vec![11])];
        let named: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, (n, s))| (n.to_string(), Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)) + i as f64))
            .collect();
        let shapes: Vec<(String, Vec<i64>)> = named.iter().map(|(n, t)| (n.clone(), t.size())).collect();
        (Layout::new(2, &shapes).unwrap(), named)
    }

    fn expected(layout: &Layout, named: &[(String, Tensor)], rank: usize, world: usize) -> Vec<Tensor> {
        let by_name = |n: &str| named.iter().find(|(m, _)| m == n).unwrap().1.shallow_clone();
        (0..layout.units.len()).map(|u| layout.shard_of(u, &layout.flatten(u, by_name), world, rank)).collect()
    }

    fn write_sharded(root: &Path, layout: &Layout, named: &[(String, Tensor)], world: usize) -> std::path::PathBuf {
        let mut meta = CheckpointMeta::new(1, world, "m".into(), "c".into(), serde_json::json!({}));
        meta.layout = Some(layout.clone());
        let per_rank: Vec<(String, Vec<(String, Tensor)>)> = (0..world)
            .map(|r| {
                let slices = expected(layout, named, r, world).into_iter().enumerate();
                (rank_file(r), slices.map(|(u, t)| (format!("unit.{u}"), t)).collect())
            })
            .collect();
        let files: Vec<(&str, Vec<(&str, &Tensor)>)> =
            per_rank.iter().map(|(f, ts)| (f.as_str(), ts.iter().map(|(n, t)| (n.as_str(), t)).collect())).collect();
        save(root, meta, &files, None).unwrap()
    }

    #[test]
    fn every_rank_of_every_world_reads_its_slice_of_any_checkpoint() {
        let (layout, named) = model();
        let root = tempfile::tempdir().unwrap();
        let whole = {
            let meta = CheckpointMeta::new(1, 1, "m".into(), "c".into(), serde_json::json!({}));
            let tensors: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
            save(&root.path().join("whole"), meta, &[(MODEL_FILE, tensors)], None).unwrap()
        };
        let sharded = write_sharded(&root.path().join("sharded"), &layout, &named, 3);
        for dir in [&whole, &sharded] {
            let checkpoint = CheckpointReader::open(dir).unwrap();
            for world in 1..=5 {
                for rank in 0..world {
                    let got = read_shard(&checkpoint, &layout, "", rank, world).unwrap();
                    for (u, (g, e)) in got.iter().zip(expected(&layout, &named, rank, world)).enumerate() {
                        assert!(g.equal(&e), "{} unit {u}, rank {rank} of {world}", dir.display());
                    }
                }
            }
        }
    }

    #[test]
    fn a_rank_hashes_only_the_files_it_reads() {
        let (layout, named) = model();
        let root = tempfile::tempdir().unwrap();
        let dir = write_sharded(root.path(), &layout, &named, 3);
        let last = dir.join(rank_file(2));
        let mut bytes = std::fs::read(&last).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&last, bytes).unwrap();
        let checkpoint = CheckpointReader::open(&dir).unwrap();
        read_shard(&checkpoint, &layout, "", 0, 3).expect("rank 0 reads only its own file");
        let err = read_shard(&checkpoint, &layout, "", 2, 3).unwrap_err().to_string();
        assert!(err.contains(&rank_file(2)) && err.contains("sha256"), "{err}");
        let err = read_shard(&checkpoint, &layout, "", 1, 2).unwrap_err().to_string();
        assert!(err.contains(&rank_file(2)), "rank 1 of 2 reads the last third too: {err}");
    }
}
