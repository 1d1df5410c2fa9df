//! Batched generation with a KV cache: greedy, or sampled at a temperature with top-p (nucleus)
//! filtering; a sequence stops at an eos token, at a stop string, or after `max_new_tokens`.
//!
//! Prompts of different lengths are left-padded, as transformers does for decoder-only models,
//! with positions counted over real tokens only, so a padded prompt generates what it would alone.

use tch::{Device, Kind, Tensor};

use crate::model::llama::KvCache;
use crate::model::CausalLm;

#[derive(Debug, Clone)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0: greedy (argmax). Above 0: sample from softmax(logits / temperature).
    pub temperature: f64,
    /// Sample only from the smallest set of tokens whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    /// Seeds libtorch's generator before sampling, so a sampled run repeats.
    pub seed: u64,
    pub eos_ids: Vec<i64>,
    /// A sequence stops once its decoded text contains one of these (the text is cut before it).
    pub stop_strings: Vec<String>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            eos_ids: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

/// What one prompt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// New tokens, the eos included when one ended the sequence.
    pub tokens: Vec<i64>,
    /// Why it stopped.
    pub stop: StopReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    StopString,
    Length,
}

/// Continues every prompt (token ids) under `model`; `decode` turns tokens into text for the stop
/// strings (needed only when there are some). Runs without gradients.
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    pad_id: i64,
    device: Device,
    cfg: &GenerationConfig,
    decode: &dyn Fn(&[i64]) -> String,
) -> Vec<Generated> {
    let _guard = tch::no_grad_guard();
    let rows = prompts.len();
    let mut out: Vec<Generated> =
        prompts.iter().map(|_| Generated { tokens: Vec::new(), stop: StopReason::Length }).collect();
    if rows == 0 || cfg.max_new_tokens == 0 {
        return out;
    }
    if cfg.temperature > 0.0 {
        tch::manual_seed(cfg.seed as i64);
    }
    // 1. Left-pad the prompts; positions count real tokens (transformers' cumsum − 1).
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(rows * width);
    let mut mask = Vec::with_capacity(rows * width);
    for p in prompts {
        ids.extend(std::iter::repeat_n(pad_id, width - p.len()).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, width - p.len()).chain(std::iter::repeat_n(1, p.len())));
    }
    let shape = [rows as i64, width as i64];
    let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
    let mut mask = Tensor::from_slice(&mask).view(shape).to_device(device);
    let positions = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    let mut next_position = positions.narrow(1, width as i64 - 1, 1) + 1;

    // 2. The prompt in one pass, then one token per step against the cache.
    let mut cache = KvCache::new();
    let mut logits = last_position(&model.forward_cached(&ids, &mask, &positions, &mut cache));
    let mut done = vec![false; rows];
    for step in 0..cfg.max_new_tokens {
        let next = choose(&logits, cfg);
        let chosen: Vec<i64> = Vec::try_from(&next).expect("token ids are int64");
        for (row, &token) in chosen.iter().enumerate() {
            if done[row] {
                continue;
            }
            let generated = &mut out[row];
            generated.tokens.push(token);
            if cfg.eos_ids.contains(&token) {
                (done[row], generated.stop) = (true, StopReason::Eos);
            } else if !cfg.stop_strings.is_empty() {
                let text = decode(&generated.tokens);
                if cfg.stop_strings.iter().any(|s| text.contains(s.as_str())) {
                    (done[row], generated.stop) = (true, StopReason::StopString);
                }
            }
        }
        if done.iter().all(|d| *d) || step + 1 == cfg.max_new_tokens {
            break;
        }
        // Finished rows keep feeding a token; their outputs are ignored.
        mask = Tensor::cat(&[&mask, &mask.ones_like().narrow(1, 0, 1)], 1);
        let step_ids = next.view([rows as i64, 1]);
        logits = last_position(&model.forward_cached(&step_ids, &mask, &next_position, &mut cache));
        next_position += 1;
    }
    out
}

/// The text of a generation cut before the first stop string it contains.
pub fn cut_at_stop(text: &str, stop_strings: &[String]) -> String {
    let cut = stop_strings.iter().filter_map(|s| text.find(s.as_str())).min().unwrap_or(text.len());
    text[..cut].to_string()
}

fn last_position(logits: &Tensor) -> Tensor {
    let seq = logits.size()[1];
    logits.select(1, seq - 1).to_kind(Kind::Float)
}

/// The next token of each row: argmax, or a sample from the temperature-scaled distribution
/// restricted to its top-p nucleus.
fn choose(logits: &Tensor, cfg: &GenerationConfig) -> Tensor {
    if cfg.temperature <= 0.0 {
        return logits.argmax(-1, false);
    }
    let probs = (logits / cfg.temperature).softmax(-1, Kind::Float);
    let probs = if cfg.top_p < 1.0 {
        let (sorted, order) = probs.sort(-1, true);
        // Keep a token if the mass before it is below top_p: the first token always stays.
        let before = sorted.cumsum(-1, Kind::Float) - &sorted;
        let kept = sorted.where_scalarother(&before.lt(cfg.top_p), 0.0);
        Tensor::zeros_like(&probs).scatter(-1, &order, &kept)
    } else {
        probs
    };
    probs.multinomial(1, false).squeeze_dim(-1)
}
