//! Turning a config into what the loop needs: checked settings, the model, the tasks, the sinks.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind};

use crate::config::schema::{Algorithm, InnerOptimizerType};
use crate::config::Config;
use crate::data::tasks::{Encoding, Split, TaskData};
use crate::data::ChatTokenizer;
use crate::distributed::fsdp::SharedComm;
use crate::meta::core::Learner;
use crate::metrics::{JsonlSink, MetricSink, TensorBoardSink};
use crate::model::loader::MappedWeights;
use crate::model::{load_weights, LoraConfig, ModelConfig};

const LOGGERS: [&str; 3] = ["console", "jsonl", "tensorboard"];

/// Settings that would fail later, refused up front with the key that is wrong.
pub fn check(config: &Config, world_size: usize) -> Result<()> {
    let meta = &config.meta;
    if config.model.partial_pretrain.is_empty() {
        bail!("model.partial_pretrain is not set: give the Hugging Face model directory to start from");
    }
    if meta.tasks.is_empty() {
        bail!("meta.tasks is empty: list at least one task (see `fomaml prepare-data`)");
    }
    if meta.meta_batch_size == 0 || meta.meta_batch_size > meta.tasks.len() {
        bail!(
            "meta.meta_batch_size is {}, but tasks are drawn without replacement from {} task(s)",
            meta.meta_batch_size,
            meta.tasks.len()
        );
    }
    for (key, value) in [
        ("meta.inner_batch_size", meta.inner_batch_size),
        ("meta.query_batch_size", meta.query_batch_size),
        ("trainer.total_steps", config.trainer.total_steps),
    ] {
        if value == 0 {
            bail!("{key} must be at least 1");
        }
    }
    // Checked before any checkpoint is read: a typo must not wait behind a resume.
    if let Some(other) = config.trainer.logger.iter().find(|l| !LOGGERS.contains(&l.as_str())) {
        bail!("trainer.logger: `{other}` is not one of {}", LOGGERS.join(", "));
    }
    let mut names = std::collections::HashSet::new();
    for task in meta.tasks.iter().chain(&meta.eval_tasks) {
        if !names.insert(task.name.as_str()) {
            bail!("task name `{}` appears twice in meta.tasks / meta.eval_tasks", task.name);
        }
    }
    if meta.inner_optimizer != InnerOptimizerType::Sgd && meta.algorithm != Algorithm::Reptile {
        bail!(
            "meta.inner_optimizer: adam is for algorithm reptile ({:?}'s inner loop is fixed: AdamW for meta_lora, SGD otherwise)",
            meta.algorithm
        );
    }
    let second_order = meta.second_order();
    if second_order && world_size > 1 {
        bail!(
            "meta.algorithm maml (second order) runs on one process only: it differentiates through the inner \
             steps, which the sharded runner does not; this run has {world_size} ranks (use --nproc 1, or \
             meta.algorithm fomaml)"
        );
    }
    if second_order && config.trainer.sharding == crate::config::schema::Sharding::Fsdp {
        bail!("trainer.sharding fsdp: second-order maml needs the whole model (use trainer.sharding auto)");
    }
    if meta.algorithm == Algorithm::MetaLora && config.model.lora_rank == 0 {
        bail!("meta.algorithm meta_lora adapts a LoRA adapter: set model.lora_rank (e.g. 8)");
    }
    Ok(())
}

pub fn compute_kind(dtype: &str) -> Result<Kind> {
    match dtype.to_ascii_lowercase().as_str() {
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f32" | "fp32" | "float32" => Ok(Kind::Float),
        // Numerical checks: fp64 compute and fp64 masters, so rounding stays far below any tolerance.
        "f64" | "fp64" | "float64" => Ok(Kind::Double),
        other => bail!("model.dtype `{other}` is not one of bf16, f32, f64"),
    }
}

pub struct Loaded {
    pub model_dir: PathBuf,
    pub learner: Learner,
    pub tasks: Vec<TaskData>,
    pub eval_tasks: Vec<(TaskData, Split)>,
}

/// Loads the model onto `device` (from `cli::device_for_rank`) and the tasks. With `shard_over`,
/// θ is sharded across that communicator's ranks as it is read: no rank holds the whole model.
pub fn load(config: &Config, device: Device, shard_over: Option<SharedComm>) -> Result<Loaded> {
    if let Some(threads) = config.trainer.num_threads {
        if threads == 0 {
            bail!("trainer.num_threads must be at least 1");
        }
        tch::set_num_threads(threads as i32);
    }
    let kind = compute_kind(&config.model.dtype)?;
    let model_dir = PathBuf::from(&config.model.partial_pretrain);
    let tokenizer = ChatTokenizer::from_dir(&model_dir).context("model.partial_pretrain")?;
    let model_cfg = ModelConfig::from_dir(&model_dir).context("model.partial_pretrain")?;
    // An id past the embedding would fail deep inside a step (on a GPU as a device-side assert).
    if tokenizer.vocab_size() as i64 > model_cfg.vocab_size {
        bail!(
            "model.partial_pretrain {}: the tokenizer has {} tokens but config.json's vocab_size is {}",
            model_dir.display(),
            tokenizer.vocab_size(),
            model_cfg.vocab_size
        );
    }
    let m = &config.model;
    let lora = LoraConfig::from_settings(m.lora_rank, m.lora_alpha, m.lora_dropout, &m.target_modules)?;
    let lora = lora.map(|lora| (lora.init_adapter(&model_cfg, config.trainer.seed), lora));
    let pad_id = tokenizer.pad_id;
    let mut learner = match (shard_over, lora) {
        (Some(comm), lora) => {
            let checkpoint = MappedWeights::open(&model_dir, &model_cfg).context("model.partial_pretrain")?;
            Learner::load_sharded(model_cfg, &checkpoint, lora, device, kind, pad_id, comm)
                .context("model.partial_pretrain")?
        }
        (None, lora) => {
            let weights =
                load_weights(&model_dir, &model_cfg, Kind::Float, device).context("model.partial_pretrain")?;
            match lora {
                Some((adapter, lora)) => Learner::with_lora(model_cfg, weights, adapter, lora, device, kind, pad_id),
                None => Learner::new(model_cfg, weights, device, kind, pad_id),
            }
        }
    };
    learner.second_order = config.meta.second_order();
    learner.unpadded = config.data.unpadded;

    let encoding = Encoding::new(&tokenizer, &config.data);
    let seed = config.trainer.seed;
    let load = |section| TaskData::load(section, &encoding, &config.data, seed, 0, 1);
    let tasks = config.meta.tasks.iter().map(load).collect::<Result<Vec<_>>>()?;
    let eval_tasks = if config.meta.eval_tasks.is_empty() {
        let with_test = config.meta.tasks.iter().filter(|t| !t.test_files.is_empty());
        with_test.map(|s| Ok((load(s)?, Split::Test))).collect::<Result<Vec<_>>>()?
    } else {
        config.meta.eval_tasks.iter().map(|s| Ok((load(s)?, Split::Query))).collect::<Result<Vec<_>>>()?
    };
    Ok(Loaded { model_dir, learner, tasks, eval_tasks })
}

/// The file sinks `trainer.logger` asks for; on resume the JSONL log is cut back to `step`.
pub fn sinks(config: &Config, run_dir: &Path, step: u64) -> Result<Vec<Box<dyn MetricSink>>> {
    let mut sinks: Vec<Box<dyn MetricSink>> = Vec::new();
    for logger in &config.trainer.logger {
        match logger.as_str() {
            "console" => {}
            "jsonl" => {
                std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
                let path = run_dir.join("metrics.jsonl");
                let sink = if step > 0 { JsonlSink::resume(&path, step)? } else { JsonlSink::create(&path, false)? };
                sinks.push(Box::new(sink));
            }
            "tensorboard" => {
                let dir = run_dir.join("tensorboard");
                let sink = if step > 0 { TensorBoardSink::resume(&dir, step)? } else { TensorBoardSink::create(&dir)? };
                sinks.push(Box::new(sink));
            }
            other => bail!("trainer.logger: `{other}` is not one of {}", LOGGERS.join(", ")),
        }
    }
    Ok(sinks)
}
