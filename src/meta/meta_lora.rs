//! META-LoRA, the original trainer's two-stage variant over a shared LoRA adapter:
//!
//! stage 1, for each task i, from the shared adapter φ:
//!     φ_i ← K AdamW steps (fresh state, gradients clipped to optim.clip_grad) on support batches
//! stage 2:
//!     g_i = ∇_{φ_i} L_query(φ_i);  g = mean_i g_i   (applied to φ by the outer optimizer)
//!
//! φ is restored after every task: the Python original left the last task's adapter in place of
//! the shared one (DESIGN.md trap 5).

use tch::Tensor;

use super::core::{accumulate, adapt, zero_, InnerRule, Learner};
use super::{resolve, PendingOutcome, TaskOutcome};
use crate::config::schema::{MetaSection, OptimSection};
use crate::data::tasks::{Split, TaskData};
use crate::distributed::CommError;

pub fn meta_gradient(
    learner: &Learner,
    tasks: &mut [&mut TaskData],
    meta: &MetaSection,
    optim: &OptimSection,
    meta_grad: &[Tensor],
) -> Result<Vec<TaskOutcome>, CommError> {
    zero_(meta_grad);
    let shared = learner.snapshot();
    let scale = 1.0 / tasks.len() as f64;
    let rule = InnerRule::of(meta, optim);
    let mut pending = Vec::with_capacity(tasks.len());
    for task in tasks.iter_mut() {
        // Stage 1: adapt this task's copy of the adapter.
        let mut adaptation = adapt(learner, task, meta, &rule)?;
        // Stage 2: the query gradient at the adapted adapter, into the shared update.
        let query = task.next_batch(Split::Query, meta.query_batch_size, learner.pad_id, learner.device);
        let (query_loss, grads) = learner.loss_and_grads(&query)?;
        accumulate(meta_grad, &grads, scale);
        learner.restore(&shared);
        pending.push(PendingOutcome {
            name: task.name.clone(),
            support_loss: adaptation.support_losses.pop(),
            query_loss: Some(query_loss.detach()),
            tokens: adaptation.tokens + query.tokens(),
        });
    }
    Ok(resolve(pending))
}
