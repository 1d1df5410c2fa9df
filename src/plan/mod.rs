//! `fomaml plan`: per-GPU memory and a step-time estimate for a config before renting the GPUs.
//!
//! Memory follows what the trainer allocates, not a generic rule: θ, its snapshot, the update
//! direction, one batch's gradient and the optimizer moments as this rank's padded shards of the
//! FSDP layout (exactly the sizes `perf/rank_state_mib` logs); the frozen base under LoRA as shards
//! in the compute dtype; the largest unit gathered in flight (fp32 master copy, its compute-dtype
//! cast, and in the backward its fp32 gradient, which the reduce-scatter reads); the activations kept at
//! unit boundaries plus one layer's activations during its recomputation; the logits of the scored
//! positions. Time is FLOPs over the GPUs' bf16 peak at a stated MFU.

use crate::config::schema::{Algorithm, InnerOptimizerType, OptimizerType};
use crate::config::Config;
use crate::distributed::layout::Layout;
use crate::model::{LoraConfig, ModelConfig};

/// The accelerators `--gpu` knows: memory and dense bf16 peak (no sparsity).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gpu {
    pub name: &'static str,
    pub memory_bytes: f64,
    pub bf16_flops: f64,
}

pub const GPUS: [Gpu; 5] = [
    Gpu { name: "a100-40gb", memory_bytes: 40e9, bf16_flops: 312e12 },
    Gpu { name: "a100-80gb", memory_bytes: 80e9, bf16_flops: 312e12 },
    Gpu { name: "h100-80gb", memory_bytes: 80e9, bf16_flops: 989e12 },
    Gpu { name: "h100-94gb", memory_bytes: 94e9, bf16_flops: 989e12 },
    Gpu { name: "h200", memory_bytes: 141e9, bf16_flops: 989e12 },
];

pub fn gpu(name: &str) -> Option<Gpu> {
    GPUS.iter().copied().find(|g| g.name.eq_ignore_ascii_case(name))
}

/// What the workload looks like beyond the config.
#[derive(Debug, Clone)]
pub struct Workload {
    pub gpus: usize,
    /// Tokens per example (default: data.max_length, the worst case).
    pub seq_len: i64,
    /// Share of an example's tokens that are scored (response): sizes the logits.
    pub scored_fraction: f64,
    /// Model FLOPs utilisation assumed for the time estimate.
    pub mfu: f64,
    /// CUDA context, cuBLAS workspaces and allocator slack, per GPU.
    pub overhead_bytes: f64,
    /// Tokens a batch row costs on average, measured from the tasks' examples when their lengths
    /// are known: real tokens for unpadded batches, the expected longest row for padded ones. The
    /// time estimate uses it; memory keeps `seq_len`, the worst case.
    pub measured_row_tokens: Option<f64>,
}

/// One line of the memory table.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub what: &'static str,
    pub bytes: f64,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub lines: Vec<Line>,
    /// θ + update direction + optimizer state per rank: what `perf/rank_state_mib` measures.
    pub rank_state_bytes: f64,
    /// Host memory a rank holds while it saves a checkpoint: a chunk when the save streams from θ
    /// (or from a copy on the GPU), the whole saved state when the asynchronous copy must be in
    /// host memory.
    pub save_host_bytes: f64,
    /// Whether that copy is in host memory (it did not fit on the GPU).
    pub save_copy_on_host: bool,
    pub total_bytes: f64,
    pub trainable: i64,
    pub frozen: i64,
    pub tokens_per_step: f64,
    pub flops_per_step: f64,
    pub seconds_per_step: Option<f64>,
}

/// Bytes per element of `model.dtype` (the trainer's parse of it; 2 for a name it refuses).
fn compute_bytes(dtype: &str) -> f64 {
    crate::train::setup::compute_kind(dtype).map_or(2.0, |kind| kind.elt_size_in_bytes() as f64)
}

/// Bytes per element of the master copy and optimizer state: fp32, fp64 under `model.dtype: f64`.
fn master_bytes(dtype: &str) -> f64 {
    compute_bytes(dtype).max(4.0)
}

fn shard_elements(layout: &Layout, world: usize) -> i64 {
    layout.units.iter().filter(|u| u.numel > 0).map(|u| u.shard_len(world)).sum()
}

/// What a batch row of `rows_per_batch` examples costs on average, from the examples' lengths:
/// the mean length when batches are unpadded, else the mean of the longest of `rows_per_batch`
/// draws with replacement (each row padded to it), exactly for the lengths' distribution.
pub fn row_tokens(lengths: &[usize], rows_per_batch: usize, unpadded: bool) -> Option<f64> {
    if lengths.is_empty() {
        return None;
    }
    let n = lengths.len() as f64;
    if unpadded || rows_per_batch <= 1 {
        return Some(lengths.iter().sum::<usize>() as f64 / n);
    }
    // E[max of k draws with replacement] = Σ_i x_(i) · ((i/n)^k − ((i−1)/n)^k) over sorted x.
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    let k = rows_per_batch as i32;
    let expected = sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| x as f64 * (((i + 1) as f64 / n).powi(k) - (i as f64 / n).powi(k)))
        .sum();
    Some(expected)
}

/// The estimate for `config` on `model` (its config.json) under `work`; `gpu` adds the time.
pub fn plan(config: &Config, model: &ModelConfig, work: &Workload, gpu: Option<Gpu>) -> Result<Plan, String> {
    let world = work.gpus.max(1);
    let c = compute_bytes(&config.model.dtype);
    let w = master_bytes(&config.model.dtype);
    let m = &config.model;
    let lora = LoraConfig::from_settings(m.lora_rank, m.lora_alpha, m.lora_dropout, &m.target_modules)
        .map_err(|e| e.to_string())?;
    let base_shapes = model.parameter_shapes();
    let (trainable_shapes, frozen_shapes) = match &lora {
        Some(lora) => (lora.adapter_shapes(model), base_shapes),
        None => (base_shapes, Vec::new()),
    };
    let layers = model.num_hidden_layers;
    let trainable = Layout::new(layers, &trainable_shapes)?;
    let frozen = Layout::new(layers, &frozen_shapes)?;
    let shard = shard_elements(&trainable, world) as f64;
    let meta = &config.meta;
    let adam = config.optim.optimizer_type == OptimizerType::AdamW;
    // Per-task optimizers with state: META-LoRA's AdamW, Reptile's optional Adam.
    let inner_adam = meta.algorithm == Algorithm::MetaLora
        || (meta.algorithm == Algorithm::Reptile && meta.inner_optimizer == InnerOptimizerType::Adam);
    let snapshot = meta.algorithm != Algorithm::Sft;

    let mut lines = vec![
        Line { what: "θ shard (fp32 master)", bytes: w * shard, note: format!("1/{world} of θ, padded per unit") },
        Line { what: "update direction (meta-gradient)", bytes: w * shard, note: "fp32 shard".into() },
        Line {
            what: "optimizer moments",
            bytes: if adam { 2.0 * w * shard } else { 0.0 },
            note: format!("{:?}", config.optim.optimizer_type),
        },
    ];
    let rank_state_bytes = lines.iter().map(|l| l.bytes).sum();
    lines.push(Line { what: "one batch's gradient", bytes: w * shard, note: "fp32 shard, reduce-scattered".into() });
    if snapshot {
        lines
            .push(Line { what: "θ snapshot (restored after each task)", bytes: w * shard, note: "fp32 shard".into() });
    }
    if inner_adam {
        lines.push(Line {
            what: "per-task inner Adam moments",
            bytes: 2.0 * w * shard,
            note: "fresh for each task".into(),
        });
    }
    if !frozen_shapes.is_empty() {
        let f = shard_elements(&frozen, world) as f64 * c;
        lines.push(Line { what: "frozen base shard (LoRA)", bytes: f, note: format!("{c:.0} B/param") });
    }
    // What is gathered at once: one unit, or at the head the head with the (tied) embeddings. Per
    // element of θ: the fp32 copy, its compute-dtype cast, and in the backward the fp32 gradient
    // (sent to the reduce-scatter as it is); of the frozen base: its compute-dtype copy.
    let last = trainable.units.len() - 1;
    let unit_bytes = |u: usize| trainable.units[u].numel as f64 * (2.0 * w + c) + frozen.units[u].numel as f64 * c;
    let tied = if model.tie_word_embeddings { unit_bytes(0) } else { 0.0 };
    let in_flight = (0..last).map(unit_bytes).fold(unit_bytes(last) + tied, f64::max);
    lines.push(Line {
        what: "gathered unit in flight",
        bytes: in_flight,
        note: "the largest, forward + backward buffers".into(),
    });

    let batch = meta.inner_batch_size.max(meta.query_batch_size) as f64;
    let rows = (batch / world as f64).ceil();
    let (h, i) = (model.hidden_size as f64, model.intermediate_size as f64);
    let kv = (model.num_key_value_heads * model.head_dim) as f64;
    let tokens = rows * work.seq_len as f64;
    let boundaries = (layers + 1) as f64 * tokens * h * c;
    lines.push(Line {
        what: "activations at unit boundaries",
        bytes: boundaries,
        note: format!("{} layers + 1, {rows} rows × {} tokens", layers, work.seq_len),
    });
    // One layer recomputed for its backward: its inputs, norms, q/k/v, attention output, MLP
    // gate/up/activation/product (flash attention keeps no seq² scores).
    let layer = tokens * (7.0 * h + 2.0 * kv + 4.0 * i) * c;
    lines.push(Line {
        what: "one layer's activations (recompute)",
        bytes: layer,
        note: "flash attention assumed".into(),
    });
    let scored = tokens * work.scored_fraction;
    let logits = scored * model.vocab_size as f64 * 8.0;
    lines.push(Line {
        what: "logits at scored positions",
        bytes: logits,
        note: format!("{:.0}% of tokens, fp32 + grad", 100.0 * work.scored_fraction),
    });
    lines.push(Line {
        what: "CUDA context, workspaces, allocator slack",
        bytes: work.overhead_bytes,
        note: "assumed".into(),
    });
    let mut total_bytes: f64 = lines.iter().map(|l| l.bytes).sum();
    // A save writes θ and the moments; asynchronous, from a copy: on the GPU when it fits there
    // (as the trainer decides, by trying), else in host memory.
    let saved = w * shard * if adam { 3.0 } else { 1.0 };
    let streaming = (crate::tensor_io::CHUNK_BYTES + crate::tensor_io::WRITE_BUFFER_BYTES) as f64;
    let capacity = gpu.map_or(f64::INFINITY, |g| g.memory_bytes);
    let mut save_copy_on_host = false;
    let save_host_bytes = match config.checkpoint.async_save {
        true if total_bytes + saved <= capacity => {
            lines.push(Line {
                what: "checkpoint copy (async save)",
                bytes: saved,
                note: "θ + moments, while written".into(),
            });
            total_bytes += saved;
            streaming
        }
        true => {
            let note = "no room: the copy goes to host memory".into();
            lines.push(Line { what: "checkpoint copy (async save)", bytes: 0.0, note });
            save_copy_on_host = true;
            saved + streaming
        }
        false => streaming,
    };

    // FLOPs: forward 2N, the boundary recomputation 2N, backward 4N (2N without weight gradients
    // for a frozen base) per token; causal attention 2·L·s·d per token per forward pass.
    let n_total = (trainable.numel() + frozen.numel()) as f64;
    let backward = if lora.is_some() { 2.0 * n_total + 4.0 * trainable.numel() as f64 } else { 4.0 * n_total };
    // Tokens a row costs: measured when the lengths are known, else the worst case.
    let per_row = work.measured_row_tokens.unwrap_or(work.seq_len as f64);
    let attention = 2.0 * layers as f64 * per_row * (model.num_attention_heads * model.head_dim) as f64;
    let per_token = 4.0 * n_total + backward + 4.0 * attention;
    let batches = (meta.num_inner_steps * meta.inner_batch_size + meta.query_batch_size) as f64;
    let tokens_per_step = meta.meta_batch_size as f64 * batches * per_row;
    let flops_per_step = tokens_per_step * per_token;
    let seconds_per_step = gpu.map(|g| flops_per_step / (world as f64 * g.bf16_flops * work.mfu));
    Ok(Plan {
        lines,
        rank_state_bytes,
        save_host_bytes,
        save_copy_on_host,
        total_bytes,
        trainable: trainable.numel(),
        frozen: frozen.numel(),
        tokens_per_step,
        flops_per_step,
        seconds_per_step,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharding_divides_the_state_and_lora_keeps_only_the_adapter() {
        let model = ModelConfig::from_json(include_str!("../../configs/models/qwen3-4b.json")).unwrap();
        let config = Config::from_yaml(include_str!("../../configs/qwen3_4b_math.yaml"), "qwen3", &[]).unwrap();
        let work = Workload {
            gpus: 1,
            seq_len: 2048,
            scored_fraction: 0.5,
            mfu: 0.4,
            overhead_bytes: 0.0,
            measured_row_tokens: None,
        };
        let one = plan(&config, &model, &work, gpu("a100-80gb")).unwrap();
        let four = plan(&config, &model, &Workload { gpus: 4, ..work.clone() }, gpu("a100-80gb")).unwrap();
        assert_eq!(one.trainable, 4_022_468_096);
        // AdamW: θ + direction + two moments, 16 bytes per parameter, divided by the ranks.
        assert!((one.rank_state_bytes / (16.0 * 4_022_468_096.0) - 1.0).abs() < 1e-9);
        assert!((four.rank_state_bytes / one.rank_state_bytes - 0.25).abs() < 1e-3);
        assert!(four.seconds_per_step.unwrap() < one.seconds_per_step.unwrap() / 3.9);

        let mut lora = config.clone();
        (lora.model.lora_rank, lora.model.lora_alpha) = (16, 32.0);
        let adapter = plan(&lora, &model, &work, None).unwrap();
        assert_eq!(adapter.frozen, 4_022_468_096);
        assert!(adapter.trainable > 0 && adapter.trainable < 100_000_000);
        assert!(adapter.rank_state_bytes < one.rank_state_bytes / 50.0);
        assert!(adapter.seconds_per_step.is_none());
    }

    #[test]
    fn a_padded_row_costs_the_expected_longest_of_the_batch() {
        assert_eq!(row_tokens(&[], 4, true), None);
        assert_eq!(row_tokens(&[10, 30], 4, true), Some(20.0));
        // Two equally likely lengths, batches of 2: the longest is 30 unless both draws are 10.
        assert_eq!(row_tokens(&[10, 30], 2, false), Some(0.25 * 10.0 + 0.75 * 30.0));
        assert_eq!(row_tokens(&[7, 7, 7], 8, false), Some(7.0));
    }

    /// The asynchronous save's copy (θ + two moments, 12 bytes per parameter of a rank's shard)
    /// is counted on the GPU where it fits, else in host memory; a synchronous save holds only
    /// its chunks.
    #[test]
    fn a_save_counts_its_copy_where_it_will_be() {
        let model = ModelConfig::from_json(include_str!("../../configs/models/qwen3-4b.json")).unwrap();
        let config = Config::from_yaml(include_str!("../../configs/qwen3_4b_math.yaml"), "qwen3", &[]).unwrap();
        let work = Workload {
            gpus: 4,
            seq_len: 512,
            scored_fraction: 0.5,
            mfu: 0.4,
            overhead_bytes: 0.0,
            measured_row_tokens: None,
        };
        let copy = |p: &Plan| p.lines.iter().find(|l| l.what.starts_with("checkpoint copy")).map(|l| l.bytes);
        let saved = 12.0 * 4_022_468_096.0 / 4.0;
        let roomy = plan(&config, &model, &work, gpu("h200")).unwrap();
        assert!((copy(&roomy).unwrap() / saved - 1.0).abs() < 1e-3, "{:?}", copy(&roomy));
        assert!(!roomy.save_copy_on_host && roomy.save_host_bytes < 64.0 * (1 << 20) as f64);

        let tight = plan(&config, &model, &Workload { seq_len: 4096, ..work.clone() }, gpu("a100-40gb")).unwrap();
        assert_eq!(copy(&tight), Some(0.0));
        assert!(tight.save_copy_on_host && (tight.save_host_bytes / saved - 1.0).abs() < 0.01);

        let mut synchronous = config.clone();
        synchronous.checkpoint.async_save = false;
        let streamed = plan(&synchronous, &model, &work, gpu("h200")).unwrap();
        assert_eq!(copy(&streamed), None);
        assert!(streamed.save_host_bytes < 64.0 * (1 << 20) as f64);
    }
}
