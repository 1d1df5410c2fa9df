//! verl's SFT loss with the alignment of DESIGN.md.
//!
//! The logit at position t is scored iff token t+1 is a response token (eos included), so the last
//! prompt token's logit — which predicts the first response token — is scored, and nothing after
//! the eos is. The sum is divided by the number of scored tokens of the *global* batch, which the
//! caller supplies, so that one rank and N ranks compute the same number.

use tch::{Kind, Reduction, Tensor};

const IGNORE: i64 = -100;

/// The summed token-level cross-entropy (an fp32 scalar; fp64 for fp64 logits) of next-token prediction on scored tokens.
///
/// `logits` [batch, seq, vocab]; `input_ids` and `loss_mask` [batch, seq], loss_mask 1 on response
/// tokens and eos, 0 on prompt and padding.
pub fn masked_nll_sum(logits: &Tensor, input_ids: &Tensor, loss_mask: &Tensor) -> Tensor {
    let (batch, seq, vocab) = logits.size3().expect("logits are [batch, seq, vocab]");
    let scored = loss_mask.narrow(1, 1, seq - 1).to_kind(Kind::Bool);
    let labels = input_ids.narrow(1, 1, seq - 1).masked_fill(&scored.logical_not(), IGNORE);
    let predictions = widened(&logits.narrow(1, 0, seq - 1)).reshape([batch * (seq - 1), vocab]);
    predictions.cross_entropy_loss::<Tensor>(&labels.reshape([-1]), None, Reduction::Sum, IGNORE, 0.0)
}

/// [`masked_nll_sum`] from the final hidden states [batch, seq, hidden] and the LM head
/// [vocab, hidden], computing logits only at the scored positions: the same loss (up to float
/// rounding) without the LM head's matmul, the fp32 logits copy and the log-softmax at positions
/// that are not scored (prompt and padding). `scored` holds their flat indices b·seq + t
/// (`SftBatch::scored_positions`, or [`scored_positions`] of a loss mask).
pub fn masked_nll_sum_at_scored(hidden: &Tensor, lm_head: &Tensor, input_ids: &Tensor, scored: &Tensor) -> Tensor {
    let (batch, seq, width) = hidden.size3().expect("hidden states are [batch, seq, hidden]");
    // The label of position t is the token at t + 1 of the same row.
    let labels = input_ids.reshape([-1]).index_select(0, &(scored + 1));
    let states = hidden.reshape([batch * seq, width]).index_select(0, scored);
    let logits = widened(&states.linear::<Tensor>(lm_head, None));
    logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, IGNORE, 0.0)
}

/// Flat indices b·seq + t of the positions a loss mask scores (t with loss_mask[b, t + 1] set).
/// Reads the mask back (a device sync on a GPU); batches carry these precomputed.
pub fn scored_positions(loss_mask: &Tensor) -> Tensor {
    let (batch, seq) = loss_mask.size2().expect("loss_mask is [batch, seq]");
    let device = loss_mask.device();
    let scored =
        Tensor::cat(&[loss_mask.narrow(1, 1, seq - 1).ne(0), Tensor::zeros([batch, 1], (Kind::Bool, device))], 1);
    scored.reshape([-1]).nonzero().squeeze_dim(1)
}

/// Logits for the cross-entropy: fp32 at least (bf16 is widened); fp64 stays fp64 for numerical checks.
fn widened(logits: &Tensor) -> Tensor {
    logits.to_kind(if logits.kind() == Kind::Double { Kind::Double } else { Kind::Float })
}

/// How many tokens [`masked_nll_sum`] scores in this batch.
pub fn scored_tokens(loss_mask: &Tensor) -> i64 {
    let seq = loss_mask.size()[1];
    loss_mask.narrow(1, 1, seq - 1).ne(0).sum(Kind::Int64).int64_value(&[])
}

/// The mean loss of one process's batch: [`masked_nll_sum`] / [`scored_tokens`].
pub fn sft_loss(logits: &Tensor, input_ids: &Tensor, loss_mask: &Tensor) -> Tensor {
    let count = scored_tokens(loss_mask).max(1);
    masked_nll_sum(logits, input_ids, loss_mask) / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_prompt_token_is_scored_and_nothing_after_eos() {
        // prompt = [10, 11], response = [12, eos=2], then padding 0.
        let ids = Tensor::from_slice(&[10i64, 11, 12, 2, 0]).view([1, 5]);
        let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 0]).view([1, 5]);
        // Logits that are confident in exactly one wrong/right token per position, so the loss
        // shows which positions were scored.
        let vocab = 16;
        let logits = Tensor::zeros([1, 5, vocab], (Kind::Float, tch::Device::Cpu));
        // position 1 (last prompt token) predicts 12 correctly; position 2 predicts eos correctly.
        let _ = logits.get(0).get(1).get(12).fill_(50.0);
        let _ = logits.get(0).get(2).get(2).fill_(50.0);
        // positions 0 and 3 would be costly if they were scored.
        let _ = logits.get(0).get(0).get(5).fill_(50.0);
        let _ = logits.get(0).get(3).get(5).fill_(50.0);
        assert_eq!(scored_tokens(&mask), 2);
        let loss = sft_loss(&logits, &ids, &mask).double_value(&[]);
        assert!(loss < 1e-10, "only positions 1 and 2 are scored, and both are right: {loss}");
    }

    #[test]
    fn logits_at_scored_positions_only_give_the_same_loss_and_gradients() {
        tch::manual_seed(5);
        let (batch, seq, width, vocab) = (3, 7, 8, 11);
        let hidden = Tensor::randn([batch, seq, width], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let head = Tensor::randn([vocab, width], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let ids = Tensor::randint(vocab, [batch, seq], (Kind::Int64, tch::Device::Cpu));
        // Prompt, response, padding of different lengths per row; the last row scores nothing.
        let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]).view([3, 7]);
        let full = masked_nll_sum(&hidden.linear::<Tensor>(&head, None), &ids, &mask);
        let scored = masked_nll_sum_at_scored(&hidden, &head, &ids, &scored_positions(&mask));
        assert!((full.double_value(&[]) - scored.double_value(&[])).abs() < 1e-5);
        let g_full = Tensor::run_backward(&[&full], &[&hidden, &head], false, false);
        let g_scored = Tensor::run_backward(&[&scored], &[&hidden, &head], false, false);
        for (a, b) in g_full.iter().zip(&g_scored) {
            assert!((a - b).abs().max().double_value(&[]) < 1e-5);
        }
    }
}
