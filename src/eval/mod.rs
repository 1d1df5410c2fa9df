//! Few-shot evaluation: adapt on a task's support set as the inner loop does (its [`InnerRule`]),
//! and measure the loss on another split at chosen numbers of steps. Gradients are computed (the
//! Python original ran this under no_grad and crashed, DESIGN.md trap 3) and θ is restored after.
//!
//! Support batches are taken in file order, cycling, so an evaluation is deterministic and never
//! moves the training samplers.

pub mod answer;
pub mod choice;
pub mod compare;
pub mod fewshot;
pub mod generate;

use tch::Tensor;

use crate::data::sft::{EncodedExample, SftBatch};
use crate::data::tasks::{Split, TaskData};
use crate::distributed::CommError;
use crate::meta::core::{InnerRule, Learner};
use crate::meta::loss::masked_nll_sum;

/// A split's score at the current θ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitScore {
    /// Mean token loss over the split's scored tokens.
    pub loss: f64,
    /// Share of examples whose every scored token is the argmax under teacher forcing (for a
    /// one-token answer in a fixed format, the answer accuracy).
    pub exact_match: f64,
}

/// Scores all of `examples`, in batches of `batch_size`, at the current θ.
pub fn score_split(learner: &Learner, examples: &[EncodedExample], batch_size: usize) -> Result<SplitScore, CommError> {
    let (mut sum, mut count, mut exact) = (0.0, 0.0, 0.0);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&EncodedExample> = chunk.iter().collect();
        let batch = SftBatch::collate(&refs, learner.pad_id, learner.device);
        let [s, c, e] = learner.summed_scores(&batch, |rows, logits| {
            [
                masked_nll_sum(logits, &rows.input_ids, &rows.loss_mask).double_value(&[]),
                rows.scored_tokens() as f64,
                exact_matches(logits, &rows.input_ids, &rows.loss_mask) as f64,
            ]
        })?;
        (sum, count, exact) = (sum + s, count + c, exact + e);
    }
    Ok(SplitScore { loss: sum / count.max(1.0), exact_match: exact / examples.len().max(1) as f64 })
}

/// Per example, its summed token loss and its number of scored tokens at the current θ (one
/// forward per example, so no example's score depends on what it was batched with).
pub fn item_scores(learner: &Learner, examples: &[EncodedExample]) -> Result<Vec<(f64, f64)>, CommError> {
    examples
        .iter()
        .map(|example| {
            let batch = SftBatch::collate(&[example], learner.pad_id, learner.device);
            let [sum, tokens] = learner.summed_scores(&batch, |rows, logits| {
                [
                    masked_nll_sum(logits, &rows.input_ids, &rows.loss_mask).double_value(&[]),
                    rows.scored_tokens() as f64,
                ]
            })?;
            Ok((sum, tokens))
        })
        .collect()
}

/// Rows whose scored next-token predictions are all argmax-correct.
fn exact_matches(logits: &Tensor, input_ids: &Tensor, loss_mask: &Tensor) -> i64 {
    let seq = input_ids.size()[1];
    let predicted = logits.narrow(1, 0, seq - 1).argmax(-1, false);
    let target = input_ids.narrow(1, 1, seq - 1);
    let scored = loss_mask.narrow(1, 1, seq - 1).ne(0);
    let wrong = predicted.ne_tensor(&target).logical_and(&scored);
    wrong.any_dim(1, false).logical_not().sum(tch::Kind::Int64).int64_value(&[])
}

/// The `eval_split` score after each number of inner steps in `at_steps` (ascending; 0 = before
/// any adaptation), adapting by `rule` (fresh optimizer state) on support batches of `batch_size`.
pub fn adaptation_curve(
    learner: &Learner,
    task: &TaskData,
    at_steps: &[usize],
    rule: &InnerRule,
    batch_size: usize,
    eval_split: Split,
) -> Result<Vec<SplitScore>, CommError> {
    let theta = learner.snapshot();
    let support = task.examples(Split::Support);
    let target = task.examples(eval_split);
    let last = at_steps.iter().copied().max().unwrap_or(0);
    // One score per entry of `at_steps`, repeats included (K = 0 asks for step 0 twice).
    let mut losses: Vec<Option<SplitScore>> = vec![None; at_steps.len()];
    let mut optimizer = rule.start(learner);
    for step in 0..=last {
        if at_steps.contains(&step) {
            let score = score_split(learner, target, batch_size)?;
            for (slot, _) in losses.iter_mut().zip(at_steps).filter(|(_, s)| **s == step) {
                *slot = Some(score);
            }
        }
        if step == last {
            break;
        }
        let batch: Vec<&EncodedExample> =
            (0..batch_size).map(|i| &support[(step * batch_size + i) % support.len()]).collect();
        let batch = SftBatch::collate(&batch, learner.pad_id, learner.device);
        let (_, grads) = learner.loss_and_grads(&batch)?;
        optimizer.step(learner, &grads)?;
    }
    let losses = losses.into_iter().map(|s| s.expect("every step up to the last is scored")).collect();
    learner.restore(&theta);
    Ok(losses)
}
