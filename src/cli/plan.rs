//! `fomaml plan`: will this config fit, and how long will a meta-step take?

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::data::tasks::{Encoding, Split, TaskData};
use crate::data::ChatTokenizer;
use crate::model::ModelConfig;
use crate::plan::{gpu, plan, row_tokens, Workload, GPUS};

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The training config.
    #[arg(long)]
    pub config: PathBuf,
    /// The model's config.json (a file or a model directory); default: model.partial_pretrain.
    /// configs/models/ has published ones, so no weights are needed.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// GPUs (ranks) the model is sharded over.
    #[arg(long, default_value_t = 1)]
    pub gpus: usize,
    /// a100-40gb, a100-80gb, h100-80gb, h100-94gb or h200.
    #[arg(long, default_value = "a100-80gb")]
    pub gpu: String,
    /// Tokens per example (default: data.max_length, the worst case, for memory; the time counts
    /// the tasks' measured lengths when the model's tokenizer and the task files are at hand).
    #[arg(long)]
    pub seq_len: Option<i64>,
    /// Share of an example's tokens that are scored (the response).
    #[arg(long, default_value_t = 0.5)]
    pub scored_fraction: f64,
    /// Model FLOPs utilisation assumed for the time.
    #[arg(long, default_value_t = 0.4)]
    pub mfu: f64,
    /// GiB per GPU for the CUDA context, workspaces and allocator slack.
    #[arg(long, default_value_t = 2.0)]
    pub overhead_gib: f64,
    /// Config overrides, e.g. model.lora_rank=16.
    pub overrides: Vec<String>,
}

/// The training tasks' example lengths (support and query), tokenized as training will: needs the
/// model's tokenizer and the task files; `Err` says what is missing.
fn measured_lengths(config: &Config, model: &Path) -> Result<Vec<usize>, String> {
    let dir = if model.is_dir() { model } else { model.parent().unwrap_or(Path::new(".")) };
    let tokenizer = ChatTokenizer::from_dir(dir).map_err(|_| format!("no tokenizer in {}", dir.display()))?;
    if config.meta.tasks.is_empty() {
        return Err("the config lists no tasks".into());
    }
    let encoding = Encoding::new(&tokenizer, &config.data);
    let mut lengths = Vec::new();
    for section in &config.meta.tasks {
        let task = TaskData::load(section, &encoding, &config.data, config.trainer.seed, 0, 1)
            .map_err(|e| format!("task `{}`: {e:#}", section.name))?;
        for split in [Split::Support, Split::Query] {
            lengths.extend(task.examples(split).iter().map(|e| e.input_ids.len()));
        }
    }
    Ok(lengths)
}

pub fn run(args: &PlanArgs) -> Result<()> {
    let config = super::load_config(&args.config, &args.overrides)?;
    let Some(gpu) = gpu(&args.gpu) else {
        let known: Vec<&str> = GPUS.iter().map(|g| g.name).collect();
        bail!("--gpu {}: not one of {}", args.gpu, known.join(", "));
    };
    if args.gpus == 0 || !(args.mfu > 0.0 && args.mfu <= 1.0) || !(0.0..=1.0).contains(&args.scored_fraction) {
        bail!("--gpus must be at least 1, --mfu in (0, 1] and --scored-fraction in [0, 1]");
    }
    let path = args.model_config.clone().unwrap_or_else(|| PathBuf::from(&config.model.partial_pretrain));
    let model = if path.is_dir() {
        ModelConfig::from_dir(&path)?
    } else {
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {} (give --model-config, e.g. configs/models/qwen3-4b.json)", path.display())
        })?;
        ModelConfig::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    let (lengths, lengths_note) = match (&args.seq_len, measured_lengths(&config, &path)) {
        (Some(n), _) => (None, format!("every row {n} tokens (--seq-len)")),
        (None, Ok(lengths)) => {
            let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
            let max = lengths.iter().max().copied().unwrap_or(0);
            let how = match config.data.unpadded {
                true => "real tokens (data.unpadded)",
                false => "the expected longest row of each padded batch (data.unpadded: false)",
            };
            let note = format!(
                "measured from the tasks' {} examples (mean {mean:.0}, longest {max} tokens): the time counts {how}; \
                 memory keeps the worst case, every row data.max_length ({})",
                lengths.len(),
                config.data.max_length
            );
            (Some(lengths), note)
        }
        (None, Err(why)) => (
            None,
            format!(
                "unknown ({why}): every row counted at data.max_length ({}), the worst case",
                config.data.max_length
            ),
        ),
    };
    let measured_row_tokens =
        lengths.as_deref().and_then(|l| row_tokens(l, config.meta.inner_batch_size, config.data.unpadded));
    let work = Workload {
        gpus: args.gpus,
        seq_len: args.seq_len.unwrap_or(config.data.max_length as i64),
        scored_fraction: args.scored_fraction,
        mfu: args.mfu,
        overhead_bytes: args.overhead_gib * (1u64 << 30) as f64,
        measured_row_tokens,
    };
    let p = plan(&config, &model, &work, Some(gpu)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let gib = |b: f64| b / (1u64 << 30) as f64;
    println!(
        "{}: {:?}, {:.2}B trainable + {:.2}B frozen parameters, {} × {}, sequence {} tokens, dtype {}",
        args.config.display(),
        config.meta.algorithm,
        p.trainable as f64 / 1e9,
        p.frozen as f64 / 1e9,
        args.gpus,
        gpu.name,
        work.seq_len,
        config.model.dtype
    );
    println!("lengths: {lengths_note}");
    println!("\n| per GPU | GiB | |\n|---|---|---|");
    for line in &p.lines {
        println!("| {} | {:.2} | {} |", line.what, gib(line.bytes), line.note);
    }
    let capacity = gib(gpu.memory_bytes);
    let verdict = if p.total_bytes <= gpu.memory_bytes { "fits" } else { "does NOT fit" };
    println!("| **total** | **{:.2}** | {verdict} in {capacity:.1} GiB |", gib(p.total_bytes));
    let save = match config.checkpoint.async_save {
        true => "asynchronous",
        false => "synchronous",
    };
    println!(
        "\nhost memory per rank while a checkpoint is saved ({save}): {:.2} GiB{}",
        gib(p.save_host_bytes),
        if p.save_copy_on_host { " (its copy of θ and the moments)" } else { " (streamed in chunks)" }
    );
    let seconds = p.seconds_per_step.expect("a GPU was given");
    let steps = config.trainer.total_steps as f64;
    println!(
        "\nmeta-step: {:.0} tokens, {:.2} PFLOP → {:.1} s at {:.0}% MFU on {} × {} ({:.0} TFLOPS bf16 each); \
         {} steps ≈ {:.1} h",
        p.tokens_per_step,
        p.flops_per_step / 1e15,
        seconds,
        100.0 * args.mfu,
        args.gpus,
        gpu.name,
        gpu.bf16_flops / 1e12,
        config.trainer.total_steps,
        seconds * steps / 3600.0
    );
    Ok(())
}
