//! The algorithms, each a short file over the shared inner/outer-loop core, and their loss.

pub mod core;
pub mod fomaml;
pub mod loss;
pub mod maml;
pub mod meta_lora;
pub mod reptile;
pub mod sft;

use tch::{Device, Kind, Tensor};

/// One task's part of a step: the original trainer's per-task metrics.
#[derive(Debug, Clone, Default)]
pub struct TaskOutcome {
    pub name: String,
    /// Support loss at the last inner step (before its update); none without inner steps (K = 0).
    pub support_loss: Option<f64>,
    /// Query loss at the adapted parameters θ′.
    pub query_loss: f64,
    /// Non-padding tokens processed for this task.
    pub tokens: i64,
}

/// A task's outcome while its losses may still be computing on the device (0-dim tensors).
/// [`resolve`] reads a whole meta-step's losses at once: one wait on the device per meta-step
/// instead of one per inner step.
#[derive(Debug)]
pub struct PendingOutcome {
    pub name: String,
    pub support_loss: Option<Tensor>,
    pub query_loss: Option<Tensor>,
    pub tokens: i64,
}

impl PendingOutcome {
    pub fn new(name: &str) -> Self {
        PendingOutcome { name: name.to_string(), support_loss: None, query_loss: None, tokens: 0 }
    }
}

/// The losses of `pending` as numbers (a missing query loss reads as NaN).
pub fn resolve(pending: Vec<PendingOutcome>) -> Vec<TaskOutcome> {
    let losses: Vec<Tensor> = pending
        .iter()
        .flat_map(|p| [&p.support_loss, &p.query_loss])
        .flatten()
        .map(|t| t.detach().to_kind(Kind::Double).reshape([1]))
        .collect();
    // Concatenated where they are, then one copy to the host: the only wait.
    let mut values = match losses.is_empty() {
        true => Vec::new(),
        false => Vec::<f64>::try_from(Tensor::cat(&losses, 0).to_device(Device::Cpu)).expect("fp64 losses read back"),
    }
    .into_iter();
    let mut next = |t: &Option<Tensor>| t.as_ref().map(|_| values.next().expect("one value per loss"));
    pending
        .iter()
        .map(|p| TaskOutcome {
            name: p.name.clone(),
            support_loss: next(&p.support_loss),
            query_loss: next(&p.query_loss).unwrap_or(f64::NAN),
            tokens: p.tokens,
        })
        .collect()
}

impl TaskOutcome {
    /// The adaptation gap: query loss − support loss (none without inner steps).
    pub fn adaptation_gap(&self) -> Option<f64> {
        self.support_loss.map(|support| self.query_loss - support)
    }
}
