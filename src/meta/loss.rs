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
    // fp32 at least (bf16 logits are widened); fp64 stays fp64 for numerical checks.
    let wide = if logits.kind() == Kind::Double { Kind::Double } else { Kind::Float };
    let predictions = logits.narrow(1, 0, seq - 1).to_kind(wide).reshape([batch * (seq - 1), vocab]);
    predictions.cross_entropy_loss::<Tensor>(&labels.reshape([-1]), None, Reduction::Sum, IGNORE, 0.0)
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
}
