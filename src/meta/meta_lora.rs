//! META-LoRA, the seeds' two-stage variant over a shared LoRA adapter:
//!
//! stage 1, for each task i, from the shared adapter φ:
//!     φ_i ← K AdamW steps (fresh state, gradients clipped to optim.clip_grad) on support batches
//! stage 2:
//!     g_i = ∇_{φ_i} L_query(φ_i);  g = mean_i g_i   (applied to φ by the outer optimizer)
//!
//! φ is restored after every task: the Python original left the last task's adapter in place of
//! the shared one (DESIGN.md trap 5).

use tch::Tensor;

use super::core::{accumulate, zero_, Learner};
use super::{resolve, PendingOutcome, TaskOutcome};
use crate::config::schema::{MetaSection, OptimSection, OptimizerType};
use crate::data::tasks::{Split, TaskData};
use crate::dist::CommError;
use crate::optim::Optimizer;

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
    let adam = OptimSection { optimizer_type: OptimizerType::AdamW, ..optim.clone() };
    let mut pending = Vec::with_capacity(tasks.len());
    for task in tasks.iter_mut() {
        let mut outcome = PendingOutcome::new(&task.name);
        // Stage 1: adapt this task's copy of the adapter.
        let mut inner = Optimizer::new(&adam, meta.inner_lr, learner.params());
        let mut support = None;
        for step in 0..meta.num_inner_steps {
            if step == 0 || meta.fresh_support_batch_per_step {
                support = Some(task.next_batch(Split::Support, meta.inner_batch_size, learner.pad_id, learner.device));
            }
            let batch = support.as_ref().expect("drawn at step 0");
            let (loss, grads) = learner.loss_and_grads(batch)?;
            outcome.support_loss = Some(loss.detach());
            outcome.tokens += batch.tokens();
            learner.clip_grad_norm(&grads, optim.clip_grad)?;
            inner.step(learner.params(), &grads, 1.0);
        }
        // Stage 2: the query gradient at the adapted adapter, into the shared update.
        let query = task.next_batch(Split::Query, meta.query_batch_size, learner.pad_id, learner.device);
        let (query_loss, grads) = learner.loss_and_grads(&query)?;
        outcome.query_loss = Some(query_loss.detach());
        outcome.tokens += query.tokens();
        accumulate(meta_grad, &grads, scale);
        learner.restore(&shared);
        pending.push(outcome);
    }
    Ok(resolve(pending))
}
