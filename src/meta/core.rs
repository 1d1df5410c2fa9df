//! The inner / outer-loop core every algorithm is written over.
//!
//! A [`Learner`] owns θ as fp32 leaf tensors and updates them in place. Gradients are taken with
//! `autograd.grad` semantics ([`Learner::gradients`]), never accumulated into `.grad`, so an inner
//! step cannot leak into the meta-gradient and each task's graph is freed as soon as its
//! gradient is read: peak memory does not grow with the meta-batch (DESIGN.md trap 1).

use tch::{Device, Kind, Tensor};

use crate::config::schema::{Algorithm, InnerOptimizerType, MetaSection, OptimSection, OptimizerType};
use crate::data::sft::{Collate, SftBatch};
use crate::data::tasks::{Split, TaskData};
use crate::distributed::fsdp::{Frozen, Fsdp, SharedComm};
use crate::distributed::layout::Layout;
use crate::distributed::CommError;
use crate::meta::loss::masked_nll_sum_at_scored;
use crate::model::llama::{LayerInputs, Rotary};
use crate::model::loader::MappedWeights;
use crate::model::{CausalLm, LoraConfig, ModelConfig, ModelError, Weights};
use crate::optim::{clip_to, squared_norm, Optimizer};

pub struct Learner {
    cfg: ModelConfig,
    names: Vec<String>,
    /// θ: fp32 leaves that require grad, updated in place.
    params: Vec<Tensor>,
    compute_kind: Kind,
    pub device: Device,
    pub pad_id: i64,
    /// Build the decoder with twice-differentiable attention (second-order MAML).
    pub second_order: bool,
    /// Training batches run packed, without padding (`data.unpadded`).
    pub unpadded: bool,
    /// Token positions run through the model by training losses so far (padding included).
    computed: std::cell::Cell<i64>,
    placement: Placement,
}

/// Where θ lives.
enum Placement {
    /// The whole model in this process. With LoRA, θ is the adapter alone and this holds the
    /// frozen base weights (no gradients, no optimizer state) with the adapter's settings.
    Whole { frozen: Option<(Weights, LoraConfig)> },
    /// Sharded across ranks: `params` are this rank's flat shards, one per unit of the layout, and
    /// every loss and gradient goes through the sharded runner.
    Sharded(Fsdp),
}

impl Learner {
    /// `weights` are cast to fp32 master copies on `device` (fp64 when `compute_kind` is fp64, for
    /// numerical checks); forward passes run in `compute_kind`.
    pub fn new(cfg: ModelConfig, weights: Weights, device: Device, compute_kind: Kind, pad_id: i64) -> Self {
        let weights = weights.to(device, master_kind(compute_kind)).requires_grad();
        let names = weights.names().to_vec();
        let params = names.iter().map(|n| weights.get(n).expect("listed name")).collect();
        Self::assemble(cfg, names, params, compute_kind, device, pad_id, Placement::Whole { frozen: None })
    }

    /// The learner over `params` with the defaults every constructor shares.
    fn assemble(
        cfg: ModelConfig,
        names: Vec<String>,
        params: Vec<Tensor>,
        compute_kind: Kind,
        device: Device,
        pad_id: i64,
        placement: Placement,
    ) -> Self {
        let (second_order, unpadded, computed) = (false, true, Default::default());
        Self { cfg, names, params, compute_kind, device, pad_id, second_order, unpadded, computed, placement }
    }

    /// A learner whose θ is a LoRA `adapter` over the frozen `base` (kept in the compute dtype).
    pub fn with_lora(
        cfg: ModelConfig,
        base: Weights,
        adapter: Weights,
        lora: LoraConfig,
        device: Device,
        compute_kind: Kind,
        pad_id: i64,
    ) -> Self {
        let frozen = base.to(device, compute_kind);
        let mut learner = Self::new(cfg, adapter, device, compute_kind, pad_id);
        learner.placement = Placement::Whole { frozen: Some((frozen, lora)) };
        learner
    }

    /// θ sharded across the communicator's ranks straight from a checkpoint, FSDP-style: of each
    /// unit, only the tensors overlapping this rank's slice are read, one at a time on the host, and
    /// only the slice reaches `device`, so no rank ever holds the whole model, on the host or on the
    /// device. With `lora`, θ is that adapter and the checkpoint is its frozen base (kept in the
    /// compute dtype).
    pub fn load_sharded(
        cfg: ModelConfig,
        checkpoint: &MappedWeights,
        lora: Option<(Weights, LoraConfig)>,
        device: Device,
        compute_kind: Kind,
        pad_id: i64,
        comm: SharedComm,
    ) -> Result<Self, ModelError> {
        let place = {
            let c = comm.borrow();
            Place { world: c.world_size(), rank: c.rank(), device }
        };
        let layers = cfg.num_hidden_layers;
        let master = master_kind(compute_kind);
        let read = |name: &str| checkpoint.tensor(name);
        let (theta, frozen) = match lora {
            None => (shard_units(layers, checkpoint.shapes(), read, &place, master)?, None),
            Some((adapter, lora)) => {
                let shapes: Vec<(String, Vec<i64>)> =
                    adapter.iter().map(|(name, t)| (name.to_string(), t.size())).collect();
                let theta = shard_units(layers, &shapes, |name| adapter.get(name), &place, master)?;
                let (layout, shards) = shard_units(layers, checkpoint.shapes(), read, &place, compute_kind)?;
                (theta, Some((Frozen { layout, shards }, lora)))
            }
        };
        let (layout, params) = theta;
        let names = (0..layout.units.len()).map(|u| format!("unit.{u}")).collect();
        let scale = frozen.as_ref().map(|(_, lora)| (lora.scale(), lora.dropout));
        let frozen = frozen.map(|(frozen, _)| frozen);
        let fsdp = Fsdp::new(cfg.clone(), comm, layout, frozen, compute_kind, device, scale);
        Ok(Self::assemble(cfg, names, params, compute_kind, device, pad_id, Placement::Sharded(fsdp)))
    }

    /// Token positions (padding included) that training losses have run through the model so
    /// far; with [`SftBatch::tokens`], the share of compute spent on real tokens.
    pub fn computed_tokens(&self) -> i64 {
        self.computed.get()
    }

    fn count(&self, batch: &SftBatch) {
        self.computed.set(self.computed.get() + batch.computed_tokens());
    }

    /// How training draws its batches.
    pub fn training_batches(&self) -> Collate {
        Collate { pad_id: self.pad_id, device: self.device, unpadded: self.unpadded }
    }

    /// The sharded runner, when θ is sharded.
    pub fn fsdp(&self) -> Option<&Fsdp> {
        match &self.placement {
            Placement::Sharded(fsdp) => Some(fsdp),
            Placement::Whole { .. } => None,
        }
    }

    /// Which unit holds each parameter of θ (the sharded layout, or the one it would have).
    pub fn layout(&self) -> Layout {
        match &self.placement {
            Placement::Sharded(fsdp) => fsdp.layout.clone(),
            Placement::Whole { .. } => {
                let shapes: Vec<(String, Vec<i64>)> =
                    self.names.iter().cloned().zip(self.params.iter().map(Tensor::size)).collect();
                Layout::new(self.cfg.num_hidden_layers, &shapes).expect("every parameter belongs to a unit")
            }
        }
    }

    /// The adapter's settings of a whole-model LoRA learner (a sharded runner carries its own).
    pub fn lora(&self) -> Option<&LoraConfig> {
        match &self.placement {
            Placement::Whole { frozen } => frozen.as_ref().map(|(_, lora)| lora),
            Placement::Sharded(_) => None,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    pub fn named_params(&self) -> Vec<(&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.params).collect()
    }

    /// The decoder over `params` (θ, or weights derived from it), cast to the compute dtype; the
    /// cast is differentiable, so gradients arrive in the master dtype.
    /// `train` turns LoRA dropout on.
    fn model(&self, params: &[Tensor], train: bool) -> Result<CausalLm, ModelError> {
        let Placement::Whole { frozen } = &self.placement else { panic!("the whole model is not built from shards") };
        let mut weights = Weights::new();
        if let Some((base, _)) = frozen {
            for (name, w) in base.iter() {
                weights.insert(name, w.shallow_clone());
            }
        }
        for (name, p) in self.names.iter().zip(params) {
            let w = if p.kind() == self.compute_kind { p.shallow_clone() } else { p.to_kind(self.compute_kind) };
            weights.insert(name.clone(), w);
        }
        let mut model = CausalLm::new(&self.cfg, &weights)?;
        if let Some((_, lora)) = frozen {
            model = model.with_lora(lora.scale(), lora.dropout, train);
        }
        Ok(if self.second_order { model.twice_differentiable() } else { model })
    }

    /// Logits of a batch at `params`, as training sees them (LoRA dropout on): [rows, width,
    /// vocab], or [1, Σ len, vocab] for a packed batch.
    pub fn logits_at(&self, params: &[Tensor], batch: &SftBatch) -> Tensor {
        let model = self.model(params, true).expect("θ holds every weight the config names");
        let hidden = match batch.segments() {
            Some(_) => {
                model.hidden_states_with(&batch.input_ids, &layer_inputs(model.rotary(), batch, self.compute_kind))
            }
            None => model.hidden_states(&batch.input_ids, Some(&batch.attention_mask), Some(&batch.position_ids)),
        };
        hidden.linear::<Tensor>(model.lm_head(), None)
    }

    /// Logits of a batch at the current θ, as training sees them.
    pub fn logits(&self, batch: &SftBatch) -> Tensor {
        self.logits_at(&self.params, batch)
    }

    /// Logits at the current θ for evaluation (no dropout).
    pub fn scoring_logits(&self, batch: &SftBatch) -> Tensor {
        self.scoring_model().forward(&batch.input_ids, Some(&batch.attention_mask), Some(&batch.position_ids))
    }

    /// The decoder at the current θ for evaluation and generation (no dropout; whole model only).
    pub fn scoring_model(&self) -> CausalLm {
        self.model(&self.params, false).expect("θ holds every weight the config names")
    }

    /// verl's SFT loss of a batch at `params` (LoRA dropout on): mean over its scored tokens.
    /// Logits are computed at scored positions only (see [`layer_inputs`] for the attention).
    pub fn loss_at(&self, params: &[Tensor], batch: &SftBatch) -> Tensor {
        assert!(self.fsdp().is_none(), "a loss with a graph needs the whole model; use loss_and_grads");
        self.count(batch);
        let model = self.model(params, true).expect("θ holds every weight the config names");
        let hidden =
            model.hidden_states_with(&batch.input_ids, &layer_inputs(model.rotary(), batch, self.compute_kind));
        let sum = masked_nll_sum_at_scored(&hidden, model.lm_head(), &batch.input_ids, &batch.scored_positions);
        sum / batch.scored_tokens().max(1) as f64
    }

    /// verl's SFT loss of a batch at the current θ.
    pub fn loss(&self, batch: &SftBatch) -> Tensor {
        self.loss_at(&self.params, batch)
    }

    /// ∂loss/∂θ, one tensor per parameter; create_graph off, graph freed. Whole model only
    /// (second-order MAML); everything else goes through [`Learner::loss_and_grads`].
    pub fn gradients(&self, loss: &Tensor) -> Vec<Tensor> {
        assert!(self.fsdp().is_none(), "gradients of a graph need the whole model; use loss_and_grads");
        Tensor::run_backward(&[loss], &self.params, false, false)
    }

    /// verl's SFT loss of a (global) batch at θ, detached, and its gradient, one tensor per entry
    /// of `params()`. Sharded, each rank computes its rows' share of the loss normalised by the
    /// batch's total scored tokens, so the summed gradient is that of the global mean.
    pub fn loss_and_grads(&self, batch: &SftBatch) -> Result<(Tensor, Vec<Tensor>), CommError> {
        let Placement::Sharded(fsdp) = &self.placement else {
            let loss = self.loss(batch);
            let grads = self.gradients(&loss);
            return Ok((loss.detach(), grads));
        };
        self.count(batch);
        let count = batch.scored_tokens().max(1) as f64;
        let rows = fsdp.local_rows(batch);
        let (part, grads) = fsdp.forward_backward(&self.params, rows.as_ref(), |rows, hidden, lm_head| {
            masked_nll_sum_at_scored(hidden, lm_head, &rows.input_ids, &rows.scored_positions) / count
        })?;
        Ok((self.summed_scalar(fsdp, part)?, grads))
    }

    /// The loss of a (global) batch at θ, without gradients (LoRA dropout on, as in training).
    pub fn loss_value(&self, batch: &SftBatch) -> Result<Tensor, CommError> {
        let Placement::Sharded(fsdp) = &self.placement else { return Ok(tch::no_grad(|| self.loss(batch))) };
        self.count(batch);
        let count = batch.scored_tokens().max(1) as f64;
        let rows = fsdp.local_rows(batch);
        let part = fsdp.forward(&self.params, rows.as_ref(), true, |rows, hidden, lm_head| {
            masked_nll_sum_at_scored(hidden, lm_head, &rows.input_ids, &rows.scored_positions) / count
        })?;
        self.summed_scalar(fsdp, part)
    }

    /// `score(rows, logits)` over a (global) batch's rows at θ for evaluation (no dropout),
    /// summed over ranks: per-row statistics such as loss sums and counts.
    pub fn summed_scores<const N: usize>(
        &self,
        batch: &SftBatch,
        score: impl FnOnce(&SftBatch, &Tensor) -> [f64; N],
    ) -> Result<[f64; N], CommError> {
        let _guard = tch::no_grad_guard();
        let Placement::Sharded(fsdp) = &self.placement else { return Ok(score(batch, &self.scoring_logits(batch))) };
        let rows = fsdp.local_rows(batch);
        let part = fsdp.forward(&self.params, rows.as_ref(), false, |rows, hidden, lm_head| {
            score(rows, &hidden.linear::<Tensor>(lm_head, None))
        })?;
        let total = fsdp.all_reduce(Tensor::from_slice(&part.unwrap_or([0.0; N])))?;
        let mut out = [0.0; N];
        total.copy_data(&mut out, N);
        Ok(out)
    }

    fn summed_scalar(&self, fsdp: &Fsdp, part: Option<Tensor>) -> Result<Tensor, CommError> {
        let kind = if self.compute_kind == Kind::Double { Kind::Double } else { Kind::Float };
        let part = part.map_or_else(|| Tensor::zeros([], (kind, self.device)), |p| p.to_kind(kind));
        fsdp.all_reduce(part)
    }

    /// Scales `grads` so their global L2 norm (over all ranks' shards) is at most `max_norm`
    /// (`<= 0`: only measures) and returns the norm before clipping.
    pub fn clip_grad_norm(&self, grads: &[Tensor], max_norm: f64) -> Result<f64, CommError> {
        let squared = squared_norm(grads);
        let squared = match &self.placement {
            Placement::Sharded(fsdp) => fsdp.all_reduce(squared)?,
            Placement::Whole { .. } => squared,
        };
        let norm = squared.sqrt().double_value(&[]);
        clip_to(grads, norm, max_norm);
        Ok(norm)
    }

    /// θ ← θ − lr·g, in place and outside autograd (one fused pass per tensor, no temporary).
    pub fn sgd_(&self, grads: &[Tensor], lr: f64) {
        let _guard = tch::no_grad_guard();
        let factor = cpu_scalar(-lr);
        for (p, g) in self.params.iter().zip(grads) {
            let _ = p.shallow_clone().addcmul_(g, &factor);
        }
    }

    /// A copy of θ to restore from.
    pub fn snapshot(&self) -> Vec<Tensor> {
        let _guard = tch::no_grad_guard();
        self.params.iter().map(|p| p.detach().copy()).collect()
    }

    /// θ ← snapshot, bit for bit.
    pub fn restore(&self, snapshot: &[Tensor]) {
        let _guard = tch::no_grad_guard();
        for (p, s) in self.params.iter().zip(snapshot) {
            p.shallow_clone().copy_(s);
        }
    }

    /// Zeroed fp32 buffers shaped like θ (meta-gradient accumulators).
    pub fn zeros_like_params(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.detach().zeros_like()).collect()
    }
}

/// How a training batch's tokens attend, for the whole model and the sharded runner alike:
/// - packed, each example causally within itself (per-example fused SDPA), nothing across;
/// - right-padded (every batch [`SftBatch::collate`] makes), the plain causal mask, SDPA's fused
///   causal path: a real token attends only to earlier positions, which are all real, so every
///   scored logit is the one the padding mask gives; padded positions differ but are never scored;
/// - otherwise the padding mask.
pub fn layer_inputs(rotary: &Rotary, batch: &SftBatch, kind: Kind) -> LayerInputs {
    if let Some(lengths) = batch.segments() {
        return LayerInputs::packed(rotary, &batch.position_ids, lengths, kind);
    }
    let mask = if batch.is_right_padded() { None } else { Some(&batch.attention_mask) };
    LayerInputs::new(rotary, &batch.input_ids, mask, Some(&batch.position_ids), kind)
}

/// θ's dtype: fp32 masters, fp64 when computing in fp64 (numerical checks).
fn master_kind(compute_kind: Kind) -> Kind {
    if compute_kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// Where this rank's shards live.
struct Place {
    world: usize,
    rank: usize,
    device: Device,
}

/// The layout of `shapes` and this rank's slice of each of its units in `kind`, from `read` (full
/// tensors by name, on the host) through [`Layout::slice_from`].
fn shard_units(
    layers: i64,
    shapes: &[(String, Vec<i64>)],
    read: impl Fn(&str) -> Result<Tensor, ModelError>,
    place: &Place,
    kind: Kind,
) -> Result<(Layout, Vec<Tensor>), ModelError> {
    let layout = Layout::new(layers, shapes).expect("every parameter of the decoder belongs to a unit");
    let mut shards = Vec::with_capacity(layout.units.len());
    for u in 0..layout.units.len() {
        let shard = layout.slice_from(u, place.world, place.rank, kind, |name, _| read(name))?;
        // A unit with no parameters (the embeddings under LoRA) is an empty buffer, which must
        // still live on the device: the gradient norm stacks every unit's.
        shards.push(shard.to_device(place.device));
    }
    debug_assert!(shards.iter().all(|t| t.device() == place.device), "a shard left the learner's device");
    Ok((layout, shards))
}

/// Zeroes update-direction buffers before an algorithm fills them.
pub fn zero_(buffers: &[Tensor]) {
    for b in buffers {
        let _ = b.shallow_clone().zero_();
    }
}

/// Adds `scale · grads` into `acc` (one fused pass per tensor, no temporary).
pub fn accumulate(acc: &[Tensor], grads: &[Tensor], scale: f64) {
    let _guard = tch::no_grad_guard();
    let factor = cpu_scalar(scale);
    for (a, g) in acc.iter().zip(grads) {
        let _ = a.shallow_clone().addcmul_(g, &factor);
    }
}

/// A 0-dim CPU tensor: PyTorch takes it as a scalar operand on any device, in the other
/// operand's dtype. fp64, so fp64 masters (numerical checks) get the step size unrounded; fp32
/// masters round it exactly as an fp32 scalar would.
fn cpu_scalar(value: f64) -> Tensor {
    Tensor::scalar_tensor(value, (Kind::Double, Device::Cpu))
}

/// What the inner loop did on one task.
#[derive(Debug, Default)]
pub struct Adaptation {
    /// Support loss before each inner step (the last is the original trainer's `support_loss`), on the device.
    pub support_losses: Vec<Tensor>,
    pub tokens: i64,
}

/// How the inner loop adapts θ to one task: its optimizer, step size and gradient clipping.
/// Training and `fomaml eval` build it from the same settings, so a checkpoint is evaluated with
/// the inner loop it was meta-trained for.
#[derive(Debug, Clone)]
pub struct InnerRule {
    pub optimizer: InnerOptimizerType,
    pub lr: f64,
    /// Each inner gradient is clipped to this global L2 norm first (META-LoRA's stage 1).
    pub clip_grad: Option<f64>,
    /// Adam's betas, eps and weight decay, when `optimizer` is Adam.
    pub adam: OptimSection,
}

impl InnerRule {
    /// Plain SGD at `lr`, unclipped: MAML's definition of the inner loop.
    pub fn sgd(lr: f64) -> Self {
        let adam = OptimSection { optimizer_type: OptimizerType::AdamW, ..OptimSection::default() };
        Self { optimizer: InnerOptimizerType::Sgd, lr, clip_grad: None, adam }
    }

    /// The original Python/verl trainer's few-shot adaptation: `torch.optim.AdamW(params, lr=1e-4)`
    /// as PyTorch defaults it (betas (0.9, 0.999), eps 1e-8, weight decay 0.01), gradients
    /// clipped to norm 1.0.
    pub fn original_evaluation() -> Self {
        let adam = OptimSection {
            optimizer_type: OptimizerType::AdamW,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            ..OptimSection::default()
        };
        Self { optimizer: InnerOptimizerType::Adam, lr: 1e-4, clip_grad: Some(1.0), adam }
    }

    /// The inner loop `meta.algorithm` trains with.
    pub fn of(meta: &MetaSection, optim: &OptimSection) -> Self {
        Self::as_in(meta.algorithm, meta, optim)
    }

    /// The inner loop few-shot evaluation adapts with: `meta.eval_inner_rule`'s, else the run's own.
    pub fn for_evaluation(meta: &MetaSection, optim: &OptimSection) -> Self {
        Self::as_in(meta.eval_inner_rule.unwrap_or(meta.algorithm), meta, optim)
    }

    /// The inner loop of `algorithm` under these settings. META-LoRA: AdamW with the outer
    /// optimizer's betas and weight decay, gradients clipped to `optim.clip_grad`. Every other
    /// algorithm: `meta.inner_optimizer`, SGD or Adam without weight decay (Reptile's option),
    /// unclipped.
    pub fn as_in(algorithm: Algorithm, meta: &MetaSection, optim: &OptimSection) -> Self {
        let adam = OptimSection { optimizer_type: OptimizerType::AdamW, ..optim.clone() };
        if algorithm == Algorithm::MetaLora {
            let clip_grad = (optim.clip_grad > 0.0).then_some(optim.clip_grad);
            return Self { optimizer: InnerOptimizerType::Adam, lr: meta.inner_lr, clip_grad, adam };
        }
        let adam = OptimSection { weight_decay: 0.0, ..adam };
        Self { optimizer: meta.inner_optimizer, lr: meta.inner_lr, clip_grad: None, adam }
    }

    /// The optimizer for one task, with fresh state.
    pub fn start(&self, learner: &Learner) -> InnerOptimizer {
        let update = match self.optimizer {
            InnerOptimizerType::Sgd => InnerUpdate::Sgd { lr: self.lr },
            InnerOptimizerType::Adam => InnerUpdate::Adam(Optimizer::new(&self.adam, self.lr, learner.params())),
        };
        InnerOptimizer { update, clip_grad: self.clip_grad }
    }
}

impl std::fmt::Display for InnerRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.optimizer {
            InnerOptimizerType::Sgd => write!(f, "SGD, lr {}", self.lr)?,
            InnerOptimizerType::Adam => {
                let [b1, b2] = self.adam.betas;
                write!(
                    f,
                    "Adam (fresh state), lr {}, betas ({b1}, {b2}), weight decay {}",
                    self.lr, self.adam.weight_decay
                )?
            }
        }
        match self.clip_grad {
            Some(max) => write!(f, ", gradients clipped to norm {max}"),
            None => Ok(()),
        }
    }
}

/// An [`InnerRule`] at work on one task.
pub struct InnerOptimizer {
    update: InnerUpdate,
    clip_grad: Option<f64>,
}

enum InnerUpdate {
    Sgd { lr: f64 },
    Adam(Optimizer),
}

impl InnerOptimizer {
    /// One inner step of θ along `grads` (clipped first when the rule says so, which scales
    /// `grads` in place).
    pub fn step(&mut self, learner: &Learner, grads: &[Tensor]) -> Result<(), CommError> {
        if let Some(max_norm) = self.clip_grad {
            learner.clip_grad_norm(grads, max_norm)?;
        }
        match &mut self.update {
            InnerUpdate::Sgd { lr } => learner.sgd_(grads, *lr),
            InnerUpdate::Adam(adam) => adam.step(learner.params(), grads, 1.0),
        }
        Ok(())
    }
}

/// The support batches of one task's inner loop: K = `meta.num_inner_steps` batches of
/// `meta.inner_batch_size` from the task's sampler, a fresh one per step unless
/// `meta.fresh_support_batch_per_step` is off (then the first is reused). Every inner loop — the
/// first-order ones, MAML's, SFT's support gradients — draws through it.
pub struct SupportBatches<'a> {
    meta: &'a MetaSection,
    current: Option<SftBatch>,
}

impl<'a> SupportBatches<'a> {
    pub fn new(meta: &'a MetaSection) -> Self {
        Self { meta, current: None }
    }

    /// The batch of the next inner step.
    pub fn next(&mut self, task: &mut TaskData, learner: &Learner) -> &SftBatch {
        if self.current.is_none() || self.meta.fresh_support_batch_per_step {
            let batch = task.next_batch(Split::Support, self.meta.inner_batch_size, learner.training_batches());
            self.current = Some(batch);
        }
        self.current.as_ref().expect("drawn above")
    }
}

/// The inner loop as `meta` sets it: K steps of `rule` (fresh optimizer state) on the task's
/// [`SupportBatches`]. θ is left at θ′.
pub fn adapt(
    learner: &Learner,
    task: &mut TaskData,
    meta: &MetaSection,
    rule: &InnerRule,
) -> Result<Adaptation, CommError> {
    let mut optimizer = rule.start(learner);
    let mut out = Adaptation::default();
    let mut support = SupportBatches::new(meta);
    for _ in 0..meta.num_inner_steps {
        let batch = support.next(task, learner);
        let (loss, grads) = learner.loss_and_grads(batch)?;
        out.support_losses.push(loss);
        out.tokens += batch.tokens();
        optimizer.step(learner, &grads)?;
    }
    Ok(out)
}
