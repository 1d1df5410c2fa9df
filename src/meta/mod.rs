//! The algorithms, each a short file over the shared inner/outer-loop core, and their loss.

pub mod core;
pub mod fomaml;
pub mod loss;
pub mod maml;
pub mod meta_lora;
pub mod reptile;
pub mod sft;

/// One task's part of a step: the seeds' per-task metrics.
#[derive(Debug, Clone, Default)]
pub struct TaskOutcome {
    pub name: String,
    /// Support loss at the last inner step (before its update).
    pub support_loss: f64,
    /// Query loss at the adapted parameters θ′.
    pub query_loss: f64,
    /// Non-padding tokens processed for this task.
    pub tokens: i64,
}

impl TaskOutcome {
    /// The seeds' adaptation gap: query loss − support loss.
    pub fn adaptation_gap(&self) -> f64 {
        self.query_loss - self.support_loss
    }
}
