//! SFT examples encoded as verl's SFTDataset encodes them, with DESIGN.md's loss-mask alignment.
//!
//! prompt  = chat template over one user message, with the generation prompt
//! response = response text + eos
//! Each is tokenized on its own (no special tokens added) and concatenated. `loss_mask` is in token
//! convention: 1 on response tokens and the eos, 0 on the prompt; the loss scores the logit at t
//! iff loss_mask[t + 1] is 1 (see meta::loss).

use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use tch::{Device, Kind, Tensor};

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

/// A batch padded on the right to its longest example (not to max_length).
pub struct SftBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub position_ids: Tensor,
    pub loss_mask: Tensor,
}

fn padded(values: &[i64], fill: i64, width: usize) -> impl Iterator<Item = i64> + '_ {
    values.iter().copied().chain(std::iter::repeat(fill)).take(width)
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
        let tensor =
            |v: Vec<i64>| Tensor::from_slice(&v).view([rows, width as i64]).to_kind(Kind::Int64).to_device(device);
        Self {
            input_ids: tensor(ids),
            attention_mask: tensor(attention),
            position_ids: tensor(positions),
            loss_mask: tensor(loss),
        }
    }

    pub fn rows(&self) -> i64 {
        self.input_ids.size()[0]
    }

    /// Rows `start..start + len`, cut to the longest real sequence among them (the columns after
    /// it are padding in every kept row).
    pub fn slice_rows(&self, start: i64, len: i64) -> SftBatch {
        let narrow = |t: &Tensor| t.narrow(0, start, len);
        let attention_mask = narrow(&self.attention_mask);
        let width =
            if len == 0 { 0 } else { attention_mask.sum_dim_intlist(1, false, Kind::Int64).max().int64_value(&[]) };
        let cut = |t: Tensor| t.narrow(1, 0, width.max(1).min(self.input_ids.size()[1]));
        SftBatch {
            input_ids: cut(narrow(&self.input_ids)),
            attention_mask: cut(attention_mask),
            position_ids: cut(narrow(&self.position_ids)),
            loss_mask: cut(narrow(&self.loss_mask)),
        }
    }

    /// Whether each row is real tokens then padding (no padding first, no gap): then every real
    /// position sees only real positions under the plain causal mask, SDPA's fused path.
    pub fn is_right_padded(&self) -> bool {
        let seq = self.attention_mask.size()[1];
        if seq == 0 {
            return false;
        }
        let m = self.attention_mask.ne(0);
        let starts_real = m.narrow(1, 0, 1).all().int64_value(&[]) != 0;
        // A real token never follows padding: m[t + 1] implies m[t].
        let no_gap = m.narrow(1, 1, seq - 1).le_tensor(&m.narrow(1, 0, seq - 1)).all().int64_value(&[]) != 0;
        starts_real && no_gap
    }
}
