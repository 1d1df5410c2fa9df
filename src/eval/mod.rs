//! Few-shot evaluation: adapt on a task's support set with plain SGD, as the inner loop does, and
//! measure the loss on another split at chosen numbers of steps. Gradients are computed (the
//! Python original ran this under no_grad and crashed, DESIGN.md trap 3) and θ is restored after.
//!
//! Support batches are taken in file order, cycling, so an evaluation is deterministic and never
//! moves the training samplers.

use tch::Tensor;

use crate::data::sft::{EncodedExample, SftBatch};
use crate::data::tasks::{Split, TaskData};
use crate::meta::core::Learner;
use crate::meta::loss::scored_tokens;

/// Mean token loss of `examples` (all of them, in batches of `batch_size`) at the current θ.
pub fn split_loss(learner: &Learner, examples: &[EncodedExample], batch_size: usize) -> f64 {
    let _guard = tch::no_grad_guard();
    let (mut sum, mut count) = (0.0, 0i64);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&EncodedExample> = chunk.iter().collect();
        let batch = SftBatch::collate(&refs, learner.pad_id, learner.device);
        sum += learner.loss_sum(&batch).double_value(&[]);
        count += scored_tokens(&batch.loss_mask);
    }
    sum / count.max(1) as f64
}

/// The `eval_split` loss after each number of SGD steps in `at_steps` (ascending; 0 = before any
/// adaptation), adapting on support batches of `batch_size` at learning rate `lr`.
pub fn adaptation_curve(
    learner: &Learner,
    task: &TaskData,
    at_steps: &[usize],
    lr: f64,
    batch_size: usize,
    eval_split: Split,
) -> Vec<f64> {
    let theta = learner.snapshot();
    let support = task.examples(Split::Support);
    let target = task.examples(eval_split);
    let last = at_steps.iter().copied().max().unwrap_or(0);
    let mut losses = Vec::with_capacity(at_steps.len());
    for step in 0..=last {
        if at_steps.contains(&step) {
            losses.push(split_loss(learner, target, batch_size));
        }
        if step == last {
            break;
        }
        let batch: Vec<&EncodedExample> =
            (0..batch_size).map(|i| &support[(step * batch_size + i) % support.len()]).collect();
        let batch = SftBatch::collate(&batch, learner.pad_id, learner.device);
        let grads: Vec<Tensor> = learner.gradients(&learner.loss(&batch));
        learner.sgd_(&grads, lr);
    }
    learner.restore(&theta);
    losses
}
