//! SFT examples encoded as verl's SFTDataset encodes them, with DESIGN.md's loss-mask alignment.
//!
//! prompt  = chat template over one user message, with the generation prompt
//! response = response text + eos
//! Each is tokenized on its own (no special tokens added) and concatenated. `loss_mask` is in token
//! convention: 1 on response tokens and the eos, 0 on the prompt; the loss scores the logit at t
//! iff loss_mask[t + 1] is 1 (see meta::loss).

use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use tch::{Device, Tensor};

use super::tokenizer::{ChatTokenizer, TokenizerError};

/// What to do with an example longer than `max_length` (verl's `truncation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Refuse it.
    Error,
    /// Keep the last `max_length` tokens (cuts the prompt's start).
    Left,
    /// Keep the first `max_length` tokens (cuts the response's end, eos included).
    Right,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("example has {length} tokens (prompt {prompt}, response {response}), over max_length {max_length} (truncation: error)")]
    TooLong { length: usize, prompt: usize, response: usize, max_length: usize },
    #[error("the response is empty after truncation to max_length {max_length}: nothing to train on")]
    NothingScored { max_length: usize },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncodedExample {
    pub input_ids: Vec<i64>,
    pub loss_mask: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub position_ids: Vec<i64>,
}

pub fn encode_example(
    tokenizer: &ChatTokenizer,
    prompt: &str,
    response: &str,
    max_length: Option<usize>,
    truncation: Truncation,
    template_variables: &Map<String, Json>,
) -> Result<EncodedExample, EncodeError> {
    let messages = json!([{"role": "user", "content": prompt}]);
    let prompt_text = tokenizer.apply_chat_template(&messages, true, template_variables)?;
    let prompt_ids = tokenizer.encode(&prompt_text)?;
    let response_ids = tokenizer.encode(&format!("{response}{}", tokenizer.eos_token))?;

    let mut input_ids: Vec<i64> = prompt_ids.iter().chain(&response_ids).copied().collect();
    let mut loss_mask: Vec<i64> =
        std::iter::repeat_n(0, prompt_ids.len()).chain(std::iter::repeat_n(1, response_ids.len())).collect();
    if let Some(max_length) = max_length.filter(|&m| input_ids.len() > m) {
        match truncation {
            Truncation::Error => {
                return Err(EncodeError::TooLong {
                    length: input_ids.len(),
                    prompt: prompt_ids.len(),
                    response: response_ids.len(),
                    max_length,
                })
            }
            Truncation::Left => {
                let cut = input_ids.len() - max_length;
                input_ids.drain(..cut);
                loss_mask.drain(..cut);
            }
            Truncation::Right => {
                input_ids.truncate(max_length);
                loss_mask.truncate(max_length);
            }
        }
        // The first token is never a prediction target, so a mask with 1s only at index 0 scores nothing.
        if loss_mask.iter().skip(1).all(|&m| m == 0) {
            return Err(EncodeError::NothingScored { max_length });
        }
    }
    let n = input_ids.len() as i64;
    Ok(EncodedExample {
        attention_mask: vec![1; input_ids.len()],
        position_ids: (0..n).collect(),
        input_ids,
        loss_mask,
    })
}

/// A batch of examples, in one of two layouts:
/// - padded: [rows, longest] tensors, each row right-padded to the batch's longest example (not to
///   max_length); evaluation and generation use these;
/// - unpadded (packed): [1, Σ len] tensors holding every example's real tokens one after another,
///   positions restarting at each example; attention stays within each example
///   ([`SftBatch::segments`]). Training uses these: no token of compute is spent on padding.
pub struct SftBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub position_ids: Tensor,
    pub loss_mask: Tensor,
    /// Flat indices (row × width + t) of the scored positions — t such that loss_mask[t + 1] is
    /// set within the same example — on the batch's device: the loss gathers them without a
    /// data-dependent `nonzero`.
    pub scored_positions: Tensor,
    /// The same facts on the host, counted when the batch was built, so that a training step never
    /// waits on the device to learn how many tokens it has.
    host: HostView,
}

#[derive(Clone, Debug)]
struct HostView {
    width: usize,
    /// Real (attention) tokens per example.
    real: Vec<i64>,
    /// loss_mask, rows × width (packed: 1 × width).
    loss: Vec<i64>,
    right_padded: bool,
    packed: bool,
}

impl HostView {
    fn new(attention: &[i64], loss: Vec<i64>, width: usize) -> HostView {
        let rows: Vec<&[i64]> = if width == 0 { Vec::new() } else { attention.chunks(width).collect() };
        let real = rows.iter().map(|r| r.iter().filter(|&&m| m != 0).count() as i64).collect();
        // Real tokens first, then padding only: m[0] set, and m[t + 1] implies m[t].
        let right_padded = width > 0 && rows.iter().all(|r| r[0] != 0 && r.windows(2).all(|w| w[1] == 0 || w[0] != 0));
        HostView { width, real, loss, right_padded, packed: false }
    }

    /// Where each example lies in the flat loss mask: (start, span). Padded rows span the width.
    fn spans(&self) -> Vec<(usize, usize)> {
        match self.packed {
            true => self
                .real
                .iter()
                .scan(0, |start, &len| {
                    let span = (*start, len as usize);
                    *start += len as usize;
                    Some(span)
                })
                .collect(),
            false => (0..self.real.len()).map(|b| (b * self.width, self.width)).collect(),
        }
    }

    fn scored_positions(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for (start, span) in self.spans() {
            let next_scored = |t: &usize| self.loss[start + t + 1] != 0;
            out.extend((0..span.saturating_sub(1)).filter(next_scored).map(|t| (start + t) as i64));
        }
        out
    }
}

/// How a split's examples become a batch: packed (unpadded) for training, else padded.
#[derive(Debug, Clone, Copy)]
pub struct Collate {
    pub pad_id: i64,
    pub device: Device,
    pub unpadded: bool,
}

impl Collate {
    pub fn batch(&self, examples: &[&EncodedExample]) -> SftBatch {
        match self.unpadded {
            true => SftBatch::pack(examples, self.device),
            false => SftBatch::collate(examples, self.pad_id, self.device),
        }
    }
}

fn padded(values: &[i64], fill: i64, width: usize) -> impl Iterator<Item = i64> + '_ {
    values.iter().copied().chain(std::iter::repeat(fill)).take(width)
}

/// Host data onto `device`. On a GPU through pinned memory with a non-blocking copy: the copy is
/// queued behind the running kernels instead of making the host wait for them.
fn to_device(t: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cpu => t,
        d => t.pin_memory(d).to_device_(d, t.kind(), true, false),
    }
}

impl SftBatch {
    pub fn collate(examples: &[&EncodedExample], pad_id: i64, device: Device) -> Self {
        let width = examples.iter().map(|e| e.input_ids.len()).max().unwrap_or(0);
        let rows = examples.len() as i64;
        let mut ids = Vec::with_capacity(examples.len() * width);
        let (mut attention, mut loss, mut positions) = (ids.clone(), ids.clone(), ids.clone());
        for e in examples {
            ids.extend(padded(&e.input_ids, pad_id, width));
            attention.extend(padded(&e.attention_mask, 0, width));
            loss.extend(padded(&e.loss_mask, 0, width));
            // verl's compute_position_id_with_mask: padding repeats the last real position.
            let last = *e.position_ids.last().unwrap_or(&0);
            positions.extend(padded(&e.position_ids, last, width));
        }
        let tensor = |v: &[i64]| to_device(Tensor::from_slice(v).view([rows, width as i64]), device);
        let host = HostView::new(&attention, loss, width);
        Self {
            input_ids: tensor(&ids),
            attention_mask: tensor(&attention),
            position_ids: tensor(&positions),
            loss_mask: tensor(&host.loss),
            scored_positions: to_device(Tensor::from_slice(&host.scored_positions()), device),
            host,
        }
    }

    /// `examples`' real tokens as one unpadded stream [1, Σ len]; each example keeps its own
    /// positions (0, 1, ... from its start), and attention stays within it.
    pub fn pack(examples: &[&EncodedExample], device: Device) -> Self {
        let (mut ids, mut loss, mut positions, mut real) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in examples {
            let kept = (0..e.input_ids.len()).filter(|&t| e.attention_mask[t] != 0);
            let before = ids.len();
            for t in kept {
                ids.push(e.input_ids[t]);
                loss.push(e.loss_mask[t]);
                positions.push(e.position_ids[t]);
            }
            real.push((ids.len() - before) as i64);
        }
        let width = ids.len();
        let tensor = |v: &[i64]| to_device(Tensor::from_slice(v).view([1, width as i64]), device);
        let host = HostView { width, real, loss, right_padded: false, packed: true };
        Self {
            input_ids: tensor(&ids),
            attention_mask: tensor(&vec![1; width]),
            position_ids: tensor(&positions),
            loss_mask: tensor(&host.loss),
            scored_positions: to_device(Tensor::from_slice(&host.scored_positions()), device),
            host,
        }
    }

    /// Examples in the batch (rows of a padded batch, segments of a packed one).
    pub fn rows(&self) -> i64 {
        self.host.real.len() as i64
    }

    /// Real (non-padding) tokens: what tokens/s counts.
    pub fn tokens(&self) -> i64 {
        self.host.real.iter().sum()
    }

    /// Real tokens of each example, in order.
    pub fn example_tokens(&self) -> &[i64] {
        &self.host.real
    }

    /// Tokens the model computes: rows × width padded, the real tokens packed.
    pub fn computed_tokens(&self) -> i64 {
        match self.host.packed {
            true => self.tokens(),
            false => (self.host.real.len() * self.host.width) as i64,
        }
    }

    /// Positions the loss scores (those whose next token is in the loss mask).
    pub fn scored_tokens(&self) -> i64 {
        self.scored_positions.size()[0]
    }

    /// A packed batch's examples' lengths: the segments attention stays within. `None` when padded.
    pub fn segments(&self) -> Option<&[i64]> {
        self.host.packed.then_some(&self.host.real[..])
    }

    /// Examples `start..start + len`. Padded, cut to the longest real sequence among them (the
    /// columns after it are padding in every kept row); packed, their stretch of the stream.
    pub fn slice_rows(&self, start: i64, len: i64) -> SftBatch {
        let (from, to) = (start as usize, (start + len) as usize);
        if self.host.packed {
            let offset: i64 = self.host.real[..from].iter().sum();
            let width: i64 = self.host.real[from..to].iter().sum();
            let (o, w) = (offset as usize, width as usize);
            let cut = |t: &Tensor| t.narrow(1, offset, width);
            let real = self.host.real[from..to].to_vec();
            let host =
                HostView { width: w, real, loss: self.host.loss[o..o + w].to_vec(), right_padded: false, packed: true };
            return self.with_host(cut, host);
        }
        let longest = self.host.real[from..to].iter().copied().max().unwrap_or(0);
        let width = longest.max(1).min(self.input_ids.size()[1]);
        let cut = |t: &Tensor| t.narrow(0, start, len).narrow(1, 0, width);
        let (w, cut_w) = (self.host.width, width as usize);
        // Only padding columns are cut, so the rows keep their real tokens and their shape.
        let host = HostView {
            width: cut_w,
            real: self.host.real[from..to].to_vec(),
            loss: (from..to).flat_map(|r| self.host.loss[r * w..r * w + cut_w].iter().copied()).collect(),
            right_padded: self.host.right_padded,
            packed: false,
        };
        self.with_host(cut, host)
    }

    fn with_host(&self, cut: impl Fn(&Tensor) -> Tensor, host: HostView) -> SftBatch {
        let device = self.input_ids.device();
        SftBatch {
            input_ids: cut(&self.input_ids),
            attention_mask: cut(&self.attention_mask),
            position_ids: cut(&self.position_ids),
            loss_mask: cut(&self.loss_mask),
            scored_positions: to_device(Tensor::from_slice(&host.scored_positions()), device),
            host,
        }
    }

    /// Whether each row is real tokens then padding (no padding first, no gap): then every real
    /// position sees only real positions under the plain causal mask, SDPA's fused path.
    pub fn is_right_padded(&self) -> bool {
        self.host.right_padded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::loss::{scored_positions, scored_tokens};

    fn example(prompt: usize, response: usize) -> EncodedExample {
        let n = prompt + response;
        EncodedExample {
            input_ids: (0..n as i64).map(|i| 3 + i).collect(),
            loss_mask: (0..n).map(|i| i64::from(i >= prompt)).collect(),
            attention_mask: vec![1; n],
            position_ids: (0..n as i64).collect(),
        }
    }

    /// The counts a batch carries from the host against the same counts read from its tensors.
    fn assert_host_matches_tensors(b: &SftBatch) {
        assert_eq!(b.tokens(), b.attention_mask.sum(tch::Kind::Int64).int64_value(&[]));
        assert_eq!(b.scored_tokens(), scored_tokens(&b.loss_mask));
        assert!(b.scored_positions.equal(&scored_positions(&b.loss_mask)), "{:?}", b.host);
        let m = b.attention_mask.ne(0);
        let seq = m.size()[1];
        let first_real = m.narrow(1, 0, 1).all().int64_value(&[]) != 0;
        let no_gap = m.narrow(1, 1, seq - 1).le_tensor(&m.narrow(1, 0, seq - 1)).all().int64_value(&[]) != 0;
        assert_eq!(b.is_right_padded(), first_real && no_gap);
    }

    #[test]
    fn host_counts_and_scored_positions_match_the_tensors_also_after_slicing() {
        let examples = [example(3, 2), example(1, 6), example(4, 1), example(2, 2)];
        let refs: Vec<&EncodedExample> = examples.iter().collect();
        let batch = SftBatch::collate(&refs, 0, Device::Cpu);
        assert_eq!((batch.tokens(), batch.scored_tokens()), (21, 11));
        assert_host_matches_tensors(&batch);
        for (start, len) in [(0, 1), (1, 2), (2, 2), (0, 4), (3, 1)] {
            let rows = batch.slice_rows(start, len);
            assert_host_matches_tensors(&rows);
            let longest = examples[start as usize..(start + len) as usize].iter().map(|e| e.input_ids.len()).max();
            assert_eq!(rows.input_ids.size()[1], longest.unwrap() as i64, "rows {start}..+{len}");
        }
        let none = batch.slice_rows(2, 0);
        assert_eq!((none.tokens(), none.scored_tokens(), none.scored_positions.numel()), (0, 0, 0));
    }
}
