//! The first-order meta-gradient, FOMAML's and META-LoRA's (DESIGN.md "The algorithms,
//! precisely"); they differ only in the inner rule and in what θ is (the model, or an adapter):
//!
//! for each task i of the meta-batch, from θ:
//!     θ′ ← K steps of the inner rule on support batches    (FOMAML: SGD at α), create_graph off
//!     g_i = ∇_{θ′} L_query(θ′)
//!     θ′ ← θ                                                restored bit for bit
//! g = mean_i g_i                                            (clipped and applied by the outer optimizer)

use super::core::{accumulate, adapt, zero_, InnerRule, Learner};
use super::{resolve, PendingOutcome, TaskOutcome};
use crate::config::schema::MetaSection;
use crate::data::tasks::{Split, TaskData};
use crate::distributed::CommError;

/// FOMAML's meta-gradient (inner SGD at `meta.inner_lr`) into `meta_grad` (overwritten); what
/// each task did.
pub fn meta_gradient(
    learner: &Learner,
    tasks: &mut [&mut TaskData],
    meta: &MetaSection,
    meta_grad: &[tch::Tensor],
) -> Result<Vec<TaskOutcome>, CommError> {
    first_order_meta_gradient(learner, tasks, meta, &InnerRule::sgd(meta.inner_lr), meta_grad)
}

/// The first-order meta-gradient under any inner `rule` into `meta_grad` (overwritten).
pub fn first_order_meta_gradient(
    learner: &Learner,
    tasks: &mut [&mut TaskData],
    meta: &MetaSection,
    rule: &InnerRule,
    meta_grad: &[tch::Tensor],
) -> Result<Vec<TaskOutcome>, CommError> {
    zero_(meta_grad);
    let theta = learner.snapshot();
    let scale = 1.0 / tasks.len() as f64;
    let mut pending = Vec::with_capacity(tasks.len());
    for task in tasks.iter_mut() {
        let mut inner = adapt(learner, task, meta, rule)?;
        let query = task.next_batch(Split::Query, meta.query_batch_size, learner.training_batches());
        let (query_loss, grads) = learner.loss_and_grads(&query)?;
        accumulate(meta_grad, &grads, scale);
        learner.restore(&theta);
        pending.push(PendingOutcome {
            name: task.name.clone(),
            support_loss: inner.support_losses.pop(),
            query_loss: Some(query_loss.detach()),
            tokens: inner.tokens + query.tokens(),
        });
    }
    Ok(resolve(pending))
}
