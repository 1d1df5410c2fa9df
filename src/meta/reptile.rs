//! Reptile (Nichol, Achiam, Schulman 2018), batched over the meta-batch:
//!
//! for each task i, from θ:
//!     θ_i ← K steps of the inner optimizer (SGD, or Adam with fresh state) on support batches
//! θ ← θ + ε · mean_i(θ_i − θ)
//!
//! The update is handed to the outer optimizer as the direction θ − mean_i θ_i, so with
//! `optim.optimizer_type: SGD` and `meta.outer_lr` = ε it is exactly the rule above, and the
//! schedule (e.g. linear to 0) is Reptile's outer step-size decay. The query loss at θ_i is
//! measured (no gradient) for the original trainer's metrics.

use tch::Tensor;

use super::core::{accumulate, adapt, zero_, InnerRule, Learner};
use super::{resolve, PendingOutcome, TaskOutcome};
use crate::config::schema::{MetaSection, OptimSection};
use crate::data::tasks::{Split, TaskData};
use crate::distributed::CommError;

pub fn direction(
    learner: &Learner,
    tasks: &mut [&mut TaskData],
    meta: &MetaSection,
    optim: &OptimSection,
    direction: &[Tensor],
) -> Result<Vec<TaskOutcome>, CommError> {
    zero_(direction);
    let theta = learner.snapshot();
    let scale = 1.0 / tasks.len() as f64;
    let rule = InnerRule::of(meta, optim);
    let mut pending = Vec::with_capacity(tasks.len());
    for task in tasks.iter_mut() {
        let mut adaptation = adapt(learner, task, meta, &rule)?;
        let query = task.next_batch(Split::Query, meta.query_batch_size, learner.training_batches());
        let query_loss = learner.loss_value(&query)?;
        // direction += (θ − θ_i) / n
        let moved: Vec<Tensor> = theta.iter().zip(learner.params()).map(|(t, p)| t - p.detach()).collect();
        accumulate(direction, &moved, scale);
        learner.restore(&theta);
        pending.push(PendingOutcome {
            name: task.name.clone(),
            support_loss: adaptation.support_losses.pop(),
            query_loss: Some(query_loss),
            tokens: adaptation.tokens + query.tokens(),
        });
    }
    Ok(resolve(pending))
}
