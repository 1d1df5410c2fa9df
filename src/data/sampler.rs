//! An endless, resumable stream of example indices for one task on one rank.
//!
//! Epoch e is a permutation of all indices drawn from (seed, task, e); like PyTorch's
//! DistributedSampler with drop_last, the permutation is cut to a multiple of the world size and
//! rank r takes every world-th index from r. Batches are consecutive runs of that rank's stream, so
//! a batch may span an epoch boundary and no example is skipped. The position (epoch, cursor) is
//! the whole state: saving and restoring it reproduces the stream exactly.
//!
//! The generator is SplitMix64, implemented here so the data order never changes with a
//! dependency's version.

use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n without modulo bias (Lemire's multiply-shift with rejection).
    pub fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// FNV-1a, to give each task its own stream from one seed.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Where a sampler is: the whole of its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerPosition {
    pub epoch: u64,
    pub cursor: usize,
}

#[derive(Debug, Clone)]
pub struct EpochSampler {
    len: usize,
    seed: u64,
    rank: usize,
    world_size: usize,
    position: SamplerPosition,
    order: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("{len} examples cannot be split across {world_size} ranks: every rank needs at least one")]
pub struct TooFewExamples {
    pub len: usize,
    pub world_size: usize,
}

impl EpochSampler {
    /// `seed` should already mix in the task (see [`stable_hash`]).
    pub fn new(len: usize, seed: u64, rank: usize, world_size: usize) -> Result<Self, TooFewExamples> {
        assert!(rank < world_size, "rank {rank} outside world size {world_size}");
        if len < world_size {
            return Err(TooFewExamples { len, world_size });
        }
        let mut sampler =
            Self { len, seed, rank, world_size, position: SamplerPosition { epoch: 0, cursor: 0 }, order: Vec::new() };
        sampler.order = sampler.rank_order(0);
        Ok(sampler)
    }

    /// This rank's indices in `epoch`.
    fn rank_order(&self, epoch: u64) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.len).collect();
        SplitMix64::new(self.seed ^ epoch.wrapping_mul(0xd1b5_4a32_d192_ed03)).shuffle(&mut all);
        let kept = self.len / self.world_size * self.world_size;
        all[..kept].iter().skip(self.rank).step_by(self.world_size).copied().collect()
    }

    /// Examples per epoch on this rank.
    pub fn per_rank(&self) -> usize {
        self.order.len()
    }

    /// The next `n` indices for this rank, crossing into the next epoch when needed.
    pub fn next_batch(&mut self, n: usize) -> Vec<usize> {
        let mut batch = Vec::with_capacity(n);
        while batch.len() < n {
            if self.position.cursor == self.order.len() {
                self.position = SamplerPosition { epoch: self.position.epoch + 1, cursor: 0 };
                self.order = self.rank_order(self.position.epoch);
            }
            let take = (n - batch.len()).min(self.order.len() - self.position.cursor);
            batch.extend_from_slice(&self.order[self.position.cursor..self.position.cursor + take]);
            self.position.cursor += take;
        }
        batch
    }

    pub fn position(&self) -> SamplerPosition {
        self.position
    }

    pub fn restore(&mut self, position: SamplerPosition) {
        self.order = self.rank_order(position.epoch);
        assert!(position.cursor <= self.order.len(), "cursor {} past this rank's epoch", position.cursor);
        self.position = position;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn each_epoch_is_a_fresh_permutation_covering_everything() {
        let mut s = EpochSampler::new(10, 7, 0, 1).unwrap();
        let first = s.next_batch(10);
        let second = s.next_batch(10);
        assert_eq!(first.iter().copied().collect::<BTreeSet<_>>(), (0..10).collect());
        assert_eq!(second.iter().copied().collect::<BTreeSet<_>>(), (0..10).collect());
        assert_ne!(first, second, "epochs must be reshuffled");
        assert_eq!(s.position(), SamplerPosition { epoch: 1, cursor: 10 });
    }

    #[test]
    fn ranks_partition_an_epoch_like_distributed_sampler_with_drop_last() {
        let (len, world) = (11, 4);
        let shards: Vec<Vec<usize>> =
            (0..world).map(|r| EpochSampler::new(len, 3, r, world).unwrap().next_batch(len / world)).collect();
        let union: BTreeSet<usize> = shards.iter().flatten().copied().collect();
        assert_eq!(union.len(), len / world * world, "disjoint shards of the kept indices");
        // Together the ranks see what one process sees, cut to a multiple of the world size.
        let single = EpochSampler::new(len, 3, 0, 1).unwrap().next_batch(len);
        assert_eq!(union, single[..8].iter().copied().collect());
        assert!(EpochSampler::new(3, 0, 0, 4).is_err());
    }

    #[test]
    fn a_restored_sampler_continues_the_same_stream() {
        let mut a = EpochSampler::new(7, 11, 1, 2).unwrap();
        a.next_batch(5);
        let saved = a.position();
        let rest: Vec<Vec<usize>> = (0..6).map(|_| a.next_batch(2)).collect();
        let mut b = EpochSampler::new(7, 11, 1, 2).unwrap();
        b.restore(saved);
        let again: Vec<Vec<usize>> = (0..6).map(|_| b.next_batch(2)).collect();
        assert_eq!(rest, again);
    }

    #[test]
    fn the_generator_is_splitmix64() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }
}
