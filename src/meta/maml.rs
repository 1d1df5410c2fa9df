//! Second-order MAML (Finn, Abbeel, Levine 2017): the inner steps stay in the graph, so the
//! meta-gradient differentiates through them (the Python original's `param.data` swap cut that
//! graph: DESIGN.md trap 6).
//!
//! for each task i:
//!     θ′ ← θ;  K times: θ′ ← θ′ − α ∇L_support(θ′)     create_graph on
//!     g_i = ∇_θ L_query(θ′)                              through the K steps
//! g = mean_i g_i
//!
//! θ itself is never written, so nothing needs restoring; memory grows with K (the graph of every
//! inner step is kept until the task's backward).

use tch::Tensor;

use super::core::{accumulate, zero_, Learner, SupportBatches};
use super::{resolve, PendingOutcome, TaskOutcome};
use crate::config::schema::MetaSection;
use crate::data::tasks::{Split, TaskData};

pub fn meta_gradient(
    learner: &Learner,
    tasks: &mut [&mut TaskData],
    meta: &MetaSection,
    meta_grad: &[Tensor],
) -> Vec<TaskOutcome> {
    zero_(meta_grad);
    let scale = 1.0 / tasks.len() as f64;
    let mut pending = Vec::with_capacity(tasks.len());
    for task in tasks.iter_mut() {
        let mut outcome = PendingOutcome::new(&task.name);
        let mut fast: Vec<Tensor> = learner.params().iter().map(Tensor::shallow_clone).collect();
        let mut support = SupportBatches::new(meta);
        for _ in 0..meta.num_inner_steps {
            let batch = support.next(task, learner);
            let loss = learner.loss_at(&fast, batch);
            outcome.support_loss = Some(loss.detach());
            outcome.tokens += batch.tokens();
            let grads = Tensor::run_backward(&[&loss], &fast, true, true);
            fast = fast.iter().zip(&grads).map(|(w, g)| w - g * meta.inner_lr).collect();
        }
        let query = task.next_batch(Split::Query, meta.query_batch_size, learner.training_batches());
        let query_loss = learner.loss_at(&fast, &query);
        outcome.query_loss = Some(query_loss.detach());
        outcome.tokens += query.tokens();
        accumulate(meta_grad, &learner.gradients(&query_loss), scale);
        pending.push(outcome);
    }
    resolve(pending)
}
