//! Plain multi-task SFT, the baseline: the same tasks, batches and number of forward/backward
//! passes as a FOMAML meta-step (K support batches and one query batch per task), but every
//! gradient is taken at θ, with no adaptation; their mean is the update direction.

use super::core::{accumulate, zero_, Learner, SupportBatches};
use super::{resolve, PendingOutcome, TaskOutcome};
use crate::config::schema::MetaSection;
use crate::data::tasks::{Split, TaskData};
use crate::distributed::CommError;

pub fn gradient(
    learner: &Learner,
    tasks: &mut [&mut TaskData],
    meta: &MetaSection,
    grad: &[tch::Tensor],
) -> Result<Vec<TaskOutcome>, CommError> {
    zero_(grad);
    let batches_per_task = meta.num_inner_steps + 1;
    let scale = 1.0 / (tasks.len() * batches_per_task) as f64;
    let mut pending = Vec::with_capacity(tasks.len());
    for task in tasks.iter_mut() {
        let mut outcome = PendingOutcome::new(&task.name);
        let mut support = SupportBatches::new(meta);
        for _ in 0..meta.num_inner_steps {
            let batch = support.next(task, learner);
            let (loss, grads) = learner.loss_and_grads(batch)?;
            outcome.support_loss = Some(loss.detach());
            outcome.tokens += batch.tokens();
            accumulate(grad, &grads, scale);
        }
        let query = task.next_batch(Split::Query, meta.query_batch_size, learner.training_batches());
        let (loss, grads) = learner.loss_and_grads(&query)?;
        outcome.query_loss = Some(loss.detach());
        outcome.tokens += query.tokens();
        accumulate(grad, &grads, scale);
        pending.push(outcome);
    }
    Ok(resolve(pending))
}
