//! FSDP-style sharding of the decoder (DESIGN.md "Distributed design").
//!
//! The model is cut into units: the embeddings, each decoder layer, the final norm with the LM
//! head. A unit's parameters, flattened in a fixed order, form one buffer padded to a multiple of
//! the world size; rank r keeps the r-th equal slice ([`Layout`]). A unit's full weights exist only
//! while it computes: gathered, used, dropped; gathered again in the backward pass, which
//! recomputes the unit from the activation saved at its input (tch exposes no autograd hooks, so
//! the backward is driven here, unit by unit, from the head down). Each unit's gradient is
//! reduce-scattered as soon as it is known, so a rank holds at most one unit's full gradient.
//!
//! Every rank runs the same collectives in the same order for every batch, including a rank whose
//! share of a batch is empty (it contributes zeros), so ranks never wait on each other forever.

use std::cell::RefCell;
use std::rc::Rc;

use tch::{Device, Kind, Tensor};

use super::comm::{CommError, Communicator};
use super::layout::Layout;
use super::layout::NORM;
use crate::data::sft::SftBatch;
use crate::model::llama::{embed, DecoderLayer, LayerInputs, RmsNorm, Rotary};
use crate::model::{ModelConfig, Weights};

/// The communicator, shared by the sharded model and the trainer (single-threaded).
pub type SharedComm = Rc<RefCell<Box<dyn Communicator>>>;

const EMBED: &str = "model.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";

/// Each rank's contiguous run of whole examples, balanced by real tokens rather than rows: rank r's
/// run ends at the example boundary nearest to (r + 1) / world of the batch's tokens. Every rank
/// computes the same split from the same lengths; the loss keeps the global scored-token
/// normaliser, so the ranks' parts still sum to the one-process loss.
pub fn token_shares(lengths: &[i64], world: usize) -> Vec<std::ops::Range<usize>> {
    let mut cumulative = vec![0i64];
    for len in lengths {
        cumulative.push(cumulative.last().expect("starts at 0") + len);
    }
    let total = *cumulative.last().expect("starts at 0") as f64;
    let mut shares = Vec::with_capacity(world);
    let mut start = 0;
    for r in 1..=world {
        let target = total * r as f64 / world as f64;
        let distance = |i: usize| (cumulative[i] as f64 - target).abs();
        let end = match r == world {
            true => lengths.len(),
            // The nearest boundary at or after this run's start (the first of equally near ones).
            false => (start..=lengths.len()).min_by(|&a, &b| distance(a).total_cmp(&distance(b))).expect("non-empty"),
        };
        shares.push(start..end);
        start = end;
    }
    shares
}

/// Frozen weights (the base under LoRA): sharded like θ, kept in the compute dtype, never updated.
pub struct Frozen {
    pub layout: Layout,
    pub shards: Vec<Tensor>,
}

/// One unit's full buffers while it computes.
struct Gathered {
    theta: Option<Tensor>,
    frozen: Option<Tensor>,
}

/// Runs the decoder over θ's shards, one unit at a time.
pub struct Fsdp {
    cfg: ModelConfig,
    comm: SharedComm,
    rank: usize,
    world: usize,
    /// θ's layout (what the optimizer updates).
    pub layout: Layout,
    frozen: Option<Frozen>,
    rotary: Rotary,
    kind: Kind,
    device: Device,
    /// LoRA's scale and dropout when θ is an adapter.
    lora: Option<(f64, f64)>,
}

impl Fsdp {
    pub fn new(
        cfg: ModelConfig,
        comm: SharedComm,
        layout: Layout,
        frozen: Option<Frozen>,
        kind: Kind,
        device: Device,
        lora: Option<(f64, f64)>,
    ) -> Fsdp {
        let (rank, world) = {
            let c = comm.borrow();
            (c.rank(), c.world_size())
        };
        let rotary = Rotary::new(&cfg, device);
        Fsdp { cfg, comm, rank, world, layout, frozen, rotary, kind, device, lora }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    pub fn comm(&self) -> &SharedComm {
        &self.comm
    }

    /// This rank's examples of a global batch: its [`token_shares`] run of whole examples;
    /// `None` when it gets none (fewer examples than ranks, or a few long ones).
    pub fn local_rows(&self, batch: &SftBatch) -> Option<SftBatch> {
        let share = token_shares(batch.example_tokens(), self.world).swap_remove(self.rank);
        (!share.is_empty()).then(|| batch.slice_rows(share.start as i64, share.len() as i64))
    }

    /// Sums a scalar (or any small fp tensor) across ranks, in place; returns it.
    pub fn all_reduce(&self, t: Tensor) -> Result<Tensor, CommError> {
        self.comm.borrow_mut().all_reduce_sum(&t)?;
        Ok(t)
    }

    /// The decoder's output at this rank's rows, through `head(rows, final hidden states, LM head
    /// weight)`, without gradients. `None` (after taking part in every gather) when the rank has
    /// no rows. `train` turns LoRA dropout on.
    pub fn forward<T>(
        &self,
        shards: &[Tensor],
        batch: Option<&SftBatch>,
        train: bool,
        head: impl FnOnce(&SftBatch, &Tensor, &Tensor) -> T,
    ) -> Result<Option<T>, CommError> {
        let _guard = tch::no_grad_guard();
        let dropout_seed = self.dropout_seed(train);
        let inputs = batch.map(|b| self.layer_inputs(b));
        let boundaries = self.trunk(shards, batch, inputs.as_ref(), train, dropout_seed, false)?;
        let head_unit = self.layout.units.len() - 1;
        let gathered = self.gather_unit(head_unit, shards)?;
        let tied = if self.cfg.tie_word_embeddings { Some(self.gather_unit(0, shards)?) } else { None };
        let (Some(batch), Some(last)) = (batch, boundaries.last()) else { return Ok(None) };
        let w = self.head_weights(&gathered, tied.as_ref());
        let norm = RmsNorm::new(&w, NORM, self.cfg.rms_norm_eps).expect("the head unit holds the final norm");
        let lm_head = w.get(if tied.is_some() { EMBED } else { LM_HEAD }).expect("the LM head is gathered");
        Ok(Some(head(batch, &norm.forward(last), &lm_head)))
    }

    /// The value of `head(rows, final hidden states, LM head weight)` at this rank's rows and its
    /// gradient with respect to θ, as this rank's shards: the sum over ranks of every rank's
    /// gradient (reduce-scattered). The value is this rank's part (None without rows).
    pub fn forward_backward(
        &self,
        shards: &[Tensor],
        batch: Option<&SftBatch>,
        head: impl FnOnce(&SftBatch, &Tensor, &Tensor) -> Tensor,
    ) -> Result<(Option<Tensor>, Vec<Tensor>), CommError> {
        let grads: Vec<Tensor> = shards.iter().map(|s| s.zeros_like()).collect();
        let dropout_seed = self.dropout_seed(true);
        // 1. Forward without a graph, keeping each layer's input (the unit boundaries).
        // Rotary angles and the mask serve the forward pass and every recomputation.
        let inputs = batch.map(|b| self.layer_inputs(b));
        let boundaries = tch::no_grad(|| self.trunk(shards, batch, inputs.as_ref(), true, dropout_seed, true))?;
        let last = self.layout.units.len() - 1;
        let layers = self.cfg.num_hidden_layers as usize;

        // 2. The head unit (and the embeddings again when tied): value, its gradients and the
        //    gradient at the last boundary.
        let gathered = self.gather_unit(last, shards)?;
        let tied = if self.cfg.tie_word_embeddings { Some(self.gather_unit(0, shards)?) } else { None };
        let leaf_head = leaf(&gathered);
        let leaf_tied = tied.as_ref().and_then(leaf);
        let mut value = None;
        let mut upstream = None;
        let (mut head_grad, mut tied_grad) = (None, None);
        if let Some(batch) = batch {
            let x = boundaries[layers].detach().set_requires_grad(true);
            let with_leaves = |g: &Gathered, l: &Option<Tensor>| Gathered {
                theta: l.as_ref().map(Tensor::shallow_clone),
                frozen: g.frozen.as_ref().map(Tensor::shallow_clone),
            };
            let tied_leaves = tied.as_ref().map(|t| with_leaves(t, &leaf_tied));
            let w = self.head_weights(&with_leaves(&gathered, &leaf_head), tied_leaves.as_ref());
            let norm = RmsNorm::new(&w, NORM, self.cfg.rms_norm_eps).expect("the head unit holds the final norm");
            let lm_head = w.get(if tied.is_some() { EMBED } else { LM_HEAD }).expect("the LM head is gathered");
            let v = head(batch, &norm.forward(&x), &lm_head);
            let inputs: Vec<&Tensor> =
                [leaf_head.as_ref(), leaf_tied.as_ref(), Some(&x)].into_iter().flatten().collect();
            let mut g = Tensor::run_backward(&[&v], &inputs, false, false).into_iter();
            head_grad = leaf_head.as_ref().map(|_| g.next().expect("one gradient per input"));
            tied_grad = leaf_tied.as_ref().map(|_| g.next().expect("one gradient per input"));
            upstream = g.next();
            value = Some(v.detach());
        }
        drop((gathered, tied));
        self.reduce_into(last, head_grad, &grads[last])?;
        if self.cfg.tie_word_embeddings {
            self.reduce_into(0, tied_grad, &grads[0])?;
        }

        // 3. Layers from the top: re-gather, recompute from the boundary, backward, reduce-scatter.
        for i in (0..layers).rev() {
            let unit = 1 + i;
            let gathered = self.gather_unit(unit, shards)?;
            let leaf_w = leaf(&gathered);
            let mut grad = None;
            if let (Some(dy), Some(inputs)) = (&upstream, &inputs) {
                let x = boundaries[i].detach().set_requires_grad(true);
                let w = self.unit_weights(
                    unit,
                    &Gathered { theta: leaf_w.as_ref().map(Tensor::shallow_clone), frozen: gathered.frozen },
                );
                self.seed_dropout(dropout_seed, i);
                let y = self.layer(i as i64, &w, true).forward(&x, inputs);
                let surrogate = (y * dy).sum(Kind::Double);
                let wrt: Vec<&Tensor> = leaf_w.iter().chain(std::iter::once(&x)).collect();
                let mut g = Tensor::run_backward(&[&surrogate], &wrt, false, false).into_iter();
                grad = leaf_w.as_ref().map(|_| g.next().expect("one gradient per input"));
                upstream = g.next();
            }
            self.reduce_into(unit, grad, &grads[unit])?;
        }

        // 4. The embeddings, when θ includes them.
        if self.layout.units[0].numel > 0 {
            let gathered = self.gather_unit(0, shards)?;
            let leaf_w = leaf(&gathered);
            let mut grad = None;
            if let (Some(dy), Some(batch), Some(leaf_w)) = (&upstream, batch, &leaf_w) {
                let w = self.unit_weights(0, &Gathered { theta: Some(leaf_w.shallow_clone()), frozen: None });
                let h = embed(&w.get(EMBED).expect("the embedding unit holds the embeddings"), &batch.input_ids);
                let surrogate = (h * dy).sum(Kind::Double);
                grad = Tensor::run_backward(&[&surrogate], &[leaf_w], false, false).pop();
            }
            self.reduce_into(0, grad, &grads[0])?;
        }
        Ok((value, grads))
    }

    /// Embeddings and decoder layers over this rank's rows: the input of each layer and the last
    /// layer's output (`keep`), or the last output alone. Empty without rows (gathers still run).
    fn trunk(
        &self,
        shards: &[Tensor],
        batch: Option<&SftBatch>,
        inputs: Option<&LayerInputs>,
        train: bool,
        dropout_seed: Option<i64>,
        keep: bool,
    ) -> Result<Vec<Tensor>, CommError> {
        let gathered = self.gather_unit(0, shards)?;
        let mut h = batch.map(|b| {
            let w = self.unit_weights(0, &gathered);
            embed(&w.get(EMBED).expect("the embedding unit holds the embeddings"), &b.input_ids)
        });
        drop(gathered);
        let mut boundaries = Vec::new();
        for i in 0..self.cfg.num_hidden_layers {
            let gathered = self.gather_unit(1 + i as usize, shards)?;
            if let (Some(x), Some(inputs)) = (&h, inputs) {
                let w = self.unit_weights(1 + i as usize, &gathered);
                self.seed_dropout(dropout_seed, i as usize);
                let y = self.layer(i, &w, train).forward(x, inputs);
                if keep {
                    boundaries.push(x.shallow_clone());
                }
                h = Some(y);
            }
        }
        boundaries.extend(h);
        Ok(boundaries)
    }

    fn layer_inputs(&self, batch: &SftBatch) -> LayerInputs {
        crate::meta::core::layer_inputs(&self.rotary, batch, self.kind)
    }

    fn layer(&self, index: i64, w: &Weights, train: bool) -> DecoderLayer {
        let layer = DecoderLayer::new(&self.cfg, w, index).expect("the unit holds its layer's weights");
        match self.lora {
            Some((scale, dropout)) => layer.with_lora(scale, dropout, train),
            None => layer,
        }
    }

    /// LoRA dropout must draw the same masks in the forward pass and in the backward pass's
    /// recomputation: each layer sets libtorch's generator from one draw per pass.
    fn dropout_seed(&self, train: bool) -> Option<i64> {
        let dropout = self.lora.map_or(0.0, |(_, p)| p);
        (train && dropout > 0.0).then(|| Tensor::randint(1 << 40, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]))
    }

    fn seed_dropout(&self, seed: Option<i64>, layer: usize) {
        if let Some(seed) = seed {
            tch::manual_seed(seed + layer as i64);
        }
    }

    fn gather(&self, shard: &Tensor, numel: i64) -> Result<Option<Tensor>, CommError> {
        if numel == 0 {
            return Ok(None);
        }
        let full = Tensor::empty([shard.numel() as i64 * self.world as i64], (shard.kind(), self.device));
        self.comm.borrow_mut().all_gather(shard, &full)?;
        Ok(Some(full))
    }

    fn gather_unit(&self, unit: usize, shards: &[Tensor]) -> Result<Gathered, CommError> {
        let theta = self.gather(&shards[unit], self.layout.units[unit].numel)?;
        let frozen = match &self.frozen {
            Some(f) => self.gather(&f.shards[unit], f.layout.units[unit].numel)?,
            None => None,
        };
        Ok(Gathered { theta, frozen })
    }

    /// A unit's weights by name, as views of its gathered buffers cast to the compute dtype.
    fn unit_weights(&self, unit: usize, gathered: &Gathered) -> Weights {
        let mut w = Weights::new();
        let frozen = self.frozen.as_ref().map(|f| &f.layout);
        for (layout, full) in [(Some(&self.layout), &gathered.theta), (frozen, &gathered.frozen)] {
            if let (Some(layout), Some(full)) = (layout, full) {
                for (name, t) in layout.unflatten(unit, full) {
                    let t = if t.kind() == self.kind { t } else { t.to_kind(self.kind) };
                    w.insert(name, t);
                }
            }
        }
        w
    }

    fn head_weights(&self, head: &Gathered, tied: Option<&Gathered>) -> Weights {
        let mut w = self.unit_weights(self.layout.units.len() - 1, head);
        if let Some(tied) = tied {
            for (name, t) in self.unit_weights(0, tied).iter() {
                w.insert(name, t.shallow_clone());
            }
        }
        w
    }

    /// Reduce-scatters a unit's full gradient (zeros when this rank had no rows) and adds this
    /// rank's slice into `acc`.
    fn reduce_into(&self, unit: usize, full: Option<Tensor>, acc: &Tensor) -> Result<(), CommError> {
        let numel = self.layout.units[unit].numel;
        if numel == 0 {
            return Ok(());
        }
        // A gradient of the gathered (already padded) buffer goes as it is; without rows, zeros.
        let padded = acc.numel() as i64 * self.world as i64;
        let input = match full {
            Some(g) => g.reshape([padded]).contiguous(),
            None => Tensor::zeros([padded], (acc.kind(), self.device)),
        };
        let part = acc.empty_like();
        self.comm.borrow_mut().reduce_scatter_sum(&input, &part)?;
        let _ = acc.shallow_clone().g_add_(&part);
        Ok(())
    }
}

/// The gathered θ buffer as a fresh leaf that collects this unit's gradient.
fn leaf(g: &Gathered) -> Option<Tensor> {
    g.theta.as_ref().map(|t| t.detach().set_requires_grad(true))
}

#[cfg(test)]
mod tests {
    use super::token_shares;
    use crate::data::sampler::SplitMix64;
    use crate::data::synthetic::math_like_lengths;

    /// The split by rows it replaces: even counts, in rank order.
    fn row_shares(n: usize, world: usize) -> Vec<std::ops::Range<usize>> {
        (0..world)
            .map(|r| {
                let start = r * (n / world) + r.min(n % world);
                start..start + n / world + usize::from(r < n % world)
            })
            .collect()
    }

    /// The slowest rank's tokens over the mean rank's: what every gather waits for.
    fn imbalance(lengths: &[i64], shares: &[std::ops::Range<usize>]) -> f64 {
        let tokens: Vec<i64> = shares.iter().map(|s| lengths[s.clone()].iter().sum()).collect();
        let mean = tokens.iter().sum::<i64>() as f64 / tokens.len() as f64;
        *tokens.iter().max().unwrap() as f64 / mean
    }

    #[test]
    fn shares_are_contiguous_whole_examples_and_balance_tokens_better_than_rows() {
        let mut rng = SplitMix64::new(11);
        for (rows, world) in [(16, 4), (8, 2), (32, 4)] {
            let (mut by_rows, mut by_tokens) = (0.0, 0.0);
            let batches = 500;
            for _ in 0..batches {
                let lengths: Vec<i64> = math_like_lengths(&mut rng, rows, 2048).into_iter().map(|l| l as i64).collect();
                let shares = token_shares(&lengths, world);
                assert_eq!(shares.len(), world);
                assert_eq!((shares[0].start, shares[world - 1].end), (0, rows));
                assert!(shares.windows(2).all(|w| w[0].end == w[1].start), "{shares:?}");
                by_rows += imbalance(&lengths, &row_shares(rows, world)) / batches as f64;
                by_tokens += imbalance(&lengths, &shares) / batches as f64;
            }
            eprintln!("{rows} rows over {world} ranks: slowest / mean rank tokens {by_rows:.3} by rows, {by_tokens:.3} by tokens");
            assert!(by_tokens < by_rows, "{rows} rows, {world} ranks: {by_tokens} is no better than {by_rows}");
        }
        // Fewer examples than ranks: some ranks get none; one long example takes a rank alone.
        assert_eq!(token_shares(&[5, 7], 4), [0..1, 1..1, 1..2, 2..2]);
        assert_eq!(token_shares(&[100, 1, 1, 1], 2), [0..1, 1..4]);
        assert_eq!(token_shares(&[], 2), [0..0, 0..0]);
    }
}
