//! How θ is cut for sharding: units (the embeddings, each decoder layer, the final norm with the LM
//! head), each a flat buffer of its parameters in a fixed order, padded to a multiple of the world
//! size, of which rank r keeps the r-th slice. The layout names parameters, not ranks, so a
//! checkpoint written at one world size is cut again for another; the sharded runner, the
//! checkpoints and `fomaml plan` share it.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

pub(super) const NORM: &str = "model.norm.weight";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnitKind {
    Embed,
    Layer(i64),
    Head,
}

/// One unit's parameters, in flattening order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub kind: UnitKind,
    pub params: Vec<(String, Vec<i64>)>,
    pub numel: i64,
}

impl Unit {
    /// Elements each rank keeps: the flat buffer padded up to a multiple of `world`, divided.
    pub fn shard_len(&self, world: usize) -> i64 {
        (self.numel + world as i64 - 1) / world as i64
    }

    /// The elements of the flat buffer rank `rank` of `world` keeps (its slice, less the padding).
    pub fn slice(&self, world: usize, rank: usize) -> std::ops::Range<i64> {
        let len = self.shard_len(world);
        (rank as i64 * len).min(self.numel)..((rank as i64 + 1) * len).min(self.numel)
    }
}

/// Which unit holds each parameter; independent of the world size, so that a checkpoint written
/// at one world size can be cut again for another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub units: Vec<Unit>,
}

impl Layout {
    /// Units embeddings, layers 0..L, head — every one present, some possibly empty (under LoRA
    /// the embeddings and head hold no adapter). Parameters keep the order of `params`.
    pub fn new(num_layers: i64, params: &[(String, Vec<i64>)]) -> Result<Layout, String> {
        let mut units: Vec<Unit> = std::iter::once(UnitKind::Embed)
            .chain((0..num_layers).map(UnitKind::Layer))
            .chain(std::iter::once(UnitKind::Head))
            .map(|kind| Unit { kind, params: Vec::new(), numel: 0 })
            .collect();
        for (name, shape) in params {
            let index = match unit_of(name) {
                Some(UnitKind::Embed) => 0,
                Some(UnitKind::Layer(i)) if i < num_layers => 1 + i as usize,
                Some(UnitKind::Head) => units.len() - 1,
                _ => return Err(format!("parameter `{name}` belongs to no unit of a {num_layers}-layer decoder")),
            };
            let unit = &mut units[index];
            unit.numel += shape.iter().product::<i64>();
            unit.params.push((name.clone(), shape.clone()));
        }
        Ok(Layout { units })
    }

    /// The unit's tensors (looked up by name) flattened into one fp32-or-wider buffer of `numel`.
    pub fn flatten(&self, unit: usize, get: impl Fn(&str) -> Tensor) -> Tensor {
        let parts: Vec<Tensor> = self.units[unit].params.iter().map(|(name, _)| get(name).reshape([-1])).collect();
        if parts.is_empty() {
            return Tensor::zeros([0], (Kind::Float, Device::Cpu));
        }
        Tensor::cat(&parts, 0)
    }

    /// Rank `rank`'s slice of a unit's full flat buffer (`numel` elements), padded with zeros.
    pub fn shard_of(&self, unit: usize, full: &Tensor, world: usize, rank: usize) -> Tensor {
        let u = &self.units[unit];
        let slice = u.slice(world, rank);
        let shard = Tensor::zeros([u.shard_len(world)], (full.kind(), full.device()));
        if !slice.is_empty() {
            shard.narrow(0, 0, slice.end - slice.start).copy_(&full.narrow(0, slice.start, slice.end - slice.start));
        }
        shard
    }

    /// [`Layout::shard_of`] of the unit's [`Layout::flatten`] in `kind` (on the CPU), copied tensor
    /// by tensor from `read` (a parameter's full tensor, given its name and shape): only the
    /// tensors that overlap the slice are read, so the unit is never whole.
    pub fn slice_from<E>(
        &self,
        unit: usize,
        world: usize,
        rank: usize,
        kind: Kind,
        mut read: impl FnMut(&str, &[i64]) -> Result<Tensor, E>,
    ) -> Result<Tensor, E> {
        let u = &self.units[unit];
        let slice = u.slice(world, rank);
        let shard = Tensor::zeros([u.shard_len(world)], (kind, Device::Cpu));
        let mut offset = 0;
        for (name, shape) in &u.params {
            let numel: i64 = shape.iter().product();
            let (from, to) = (slice.start.max(offset), slice.end.min(offset + numel));
            if from < to {
                let part = read(name, shape)?.reshape([-1]).narrow(0, from - offset, to - from);
                shard.narrow(0, from - slice.start, to - from).copy_(&part);
            }
            offset += numel;
        }
        Ok(shard)
    }

    /// Named views into a unit's full flat buffer.
    pub fn unflatten(&self, unit: usize, full: &Tensor) -> Vec<(String, Tensor)> {
        let mut offset = 0;
        let mut out = Vec::new();
        for (name, shape) in &self.units[unit].params {
            let n: i64 = shape.iter().product();
            out.push((name.clone(), full.narrow(0, offset, n).view(shape.as_slice())));
            offset += n;
        }
        out
    }

    pub fn numel(&self) -> i64 {
        self.units.iter().map(|u| u.numel).sum()
    }
}

fn unit_of(name: &str) -> Option<UnitKind> {
    if name.starts_with("model.embed_tokens.") {
        return Some(UnitKind::Embed);
    }
    if name == NORM || name.starts_with("lm_head.") {
        return Some(UnitKind::Head);
    }
    let rest = name.strip_prefix("model.layers.")?;
    let index = rest.split('.').next()?.parse().ok()?;
    Some(UnitKind::Layer(index))
}
