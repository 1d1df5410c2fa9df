//! The inner / outer-loop core every algorithm is written over.
//!
//! A [`Learner`] owns θ as fp32 leaf tensors and updates them in place. Gradients are taken with
//! `autograd.grad` semantics ([`Learner::gradients`]), never accumulated into `.grad`, so an inner
//! step cannot leak into the meta-gradient and each task's graph is freed as soon as its
//! gradient is read: peak memory does not grow with the meta-batch (DESIGN.md trap 1).

use tch::{Device, Kind, Tensor};

use crate::data::sft::SftBatch;
use crate::data::tasks::{Split, TaskData};
use crate::meta::loss::{masked_nll_sum_at_scored, scored_tokens};
use crate::model::{CausalLm, ModelConfig, ModelError, Weights};

pub struct Learner {
    cfg: ModelConfig,
    names: Vec<String>,
    /// θ: fp32 leaves that require grad, updated in place.
    params: Vec<Tensor>,
    compute_kind: Kind,
    pub device: Device,
    pub pad_id: i64,
}

impl Learner {
    /// `weights` are cast to fp32 master copies on `device`; forward passes run in `compute_kind`.
    pub fn new(cfg: ModelConfig, weights: Weights, device: Device, compute_kind: Kind, pad_id: i64) -> Self {
        let weights = weights.to(device, Kind::Float).requires_grad();
        let names = weights.names().to_vec();
        let params = names.iter().map(|n| weights.get(n).expect("listed name")).collect();
        Self { cfg, names, params, compute_kind, device, pad_id }
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

    /// The decoder over the current θ (cast to the compute dtype; the cast is differentiable, so
    /// gradients arrive in fp32).
    fn model(&self) -> Result<CausalLm, ModelError> {
        let mut weights = Weights::new();
        for (name, p) in self.names.iter().zip(&self.params) {
            let w = if p.kind() == self.compute_kind { p.shallow_clone() } else { p.to_kind(self.compute_kind) };
            weights.insert(name.clone(), w);
        }
        CausalLm::new(&self.cfg, &weights)
    }

    /// The summed token loss of a batch (the caller divides by the token count it normalises by).
    ///
    /// Logits are computed at scored positions only. A right-padded batch (every one that
    /// [`SftBatch::collate`] makes) runs under the plain causal mask, SDPA's fused causal path:
    /// a real token attends only to earlier positions, which are all real, so every scored logit is
    /// the one the padding mask gives; padded positions differ but are never scored.
    pub fn loss_sum(&self, batch: &SftBatch) -> Tensor {
        let model = self.model().expect("θ holds every weight the config names");
        let mask = if is_right_padded(&batch.attention_mask) { None } else { Some(&batch.attention_mask) };
        let hidden = model.hidden_states(&batch.input_ids, mask, Some(&batch.position_ids));
        masked_nll_sum_at_scored(&hidden, model.lm_head(), &batch.input_ids, &batch.loss_mask)
    }

    /// verl's SFT loss of a batch: mean over its scored tokens.
    pub fn loss(&self, batch: &SftBatch) -> Tensor {
        self.loss_sum(batch) / scored_tokens(&batch.loss_mask).max(1) as f64
    }

    /// ∂loss/∂θ, one tensor per parameter; create_graph off, graph freed.
    pub fn gradients(&self, loss: &Tensor) -> Vec<Tensor> {
        Tensor::run_backward(&[loss], &self.params, false, false)
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

/// Whether each row of a 0/1 attention mask [batch, seq] is ones then zeros (no padding at all
/// included).
fn is_right_padded(attention_mask: &Tensor) -> bool {
    let seq = attention_mask.size()[1];
    if seq == 0 {
        return false;
    }
    let m = attention_mask.ne(0);
    let starts_real = m.narrow(1, 0, 1).all().int64_value(&[]) != 0;
    // A real token never follows padding: m[t + 1] implies m[t].
    let no_gap = m.narrow(1, 1, seq - 1).le_tensor(&m.narrow(1, 0, seq - 1)).all().int64_value(&[]) != 0;
    starts_real && no_gap
}

/// Non-padding tokens of a batch (what tokens/s counts).
pub fn batch_tokens(batch: &SftBatch) -> i64 {
    batch.attention_mask.sum(Kind::Int64).int64_value(&[])
}

/// Adds `scale · grads` into `acc` (one fused pass per tensor, no temporary).
pub fn accumulate(acc: &[Tensor], grads: &[Tensor], scale: f64) {
    let _guard = tch::no_grad_guard();
    let factor = cpu_scalar(scale);
    for (a, g) in acc.iter().zip(grads) {
        let _ = a.shallow_clone().addcmul_(g, &factor);
    }
}

/// A 0-dim fp32 CPU tensor: PyTorch takes it as a scalar operand on any device.
fn cpu_scalar(value: f64) -> Tensor {
    Tensor::scalar_tensor(value, (Kind::Float, Device::Cpu))
}

/// What the inner loop did on one task.
#[derive(Debug, Clone, Default)]
pub struct Adaptation {
    /// Support loss before each inner step (the last is the seeds' `support_loss`).
    pub support_losses: Vec<f64>,
    pub tokens: i64,
}

/// The inner loop: `steps` SGD steps on support batches of `batch_size` from the task's sampler
/// (a fresh batch per step, or the first reused when `fresh_batches` is off). θ is left at θ′.
pub fn adapt(
    learner: &Learner,
    task: &mut TaskData,
    steps: usize,
    lr: f64,
    batch_size: usize,
    fresh_batches: bool,
) -> Adaptation {
    let mut out = Adaptation::default();
    let mut batch = None;
    for step in 0..steps {
        if step == 0 || fresh_batches {
            batch = Some(task.next_batch(Split::Support, batch_size, learner.pad_id, learner.device));
        }
        let batch = batch.as_ref().expect("drawn at step 0");
        let loss = learner.loss(batch);
        out.support_losses.push(loss.double_value(&[]));
        out.tokens += batch_tokens(batch);
        let grads = learner.gradients(&loss);
        learner.sgd_(&grads, lr);
    }
    out
}
