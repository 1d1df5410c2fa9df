//! The configuration: `model`, `data`, `meta`, `optim`, `trainer`, `checkpoint`, the sections of
//! the original Python/verl trainer's files. Every field has a default, so a config file names
//! only what it changes. Every key here has an effect; the original's keys that have none here
//! (FSDP wrap classes, attention backends) are accepted with a notice by [`super::original`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::data::Truncation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Algorithm {
    Fomaml,
    Maml,
    Reptile,
    MetaLora,
    Sft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerType {
    AdamW,
    #[serde(rename = "SGD")]
    Sgd,
}

/// The inner loop's optimizer (Reptile may use Adam; FOMAML is defined with SGD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InnerOptimizerType {
    Sgd,
    Adam,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduler {
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumeMode {
    /// The newest complete checkpoint under the run directory, if there is one.
    Auto,
    Disable,
    /// The checkpoint at `checkpoint.resume_path`.
    ResumePath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    Skip,
    Abort,
}

/// A signal the trainer treats as a request to save and stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreemptSignal {
    #[serde(rename = "SIGTERM")]
    Sigterm,
    #[serde(rename = "SIGUSR1")]
    Sigusr1,
    #[serde(rename = "SIGUSR2")]
    Sigusr2,
    #[serde(rename = "SIGHUP")]
    Sighup,
}

impl PreemptSignal {
    pub fn number(self) -> i32 {
        match self {
            PreemptSignal::Sigterm => libc::SIGTERM,
            PreemptSignal::Sigusr1 => libc::SIGUSR1,
            PreemptSignal::Sigusr2 => libc::SIGUSR2,
            PreemptSignal::Sighup => libc::SIGHUP,
        }
    }
}

/// When θ is sharded FSDP-style across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharding {
    /// Sharded when there is more than one rank; the whole model in one process otherwise.
    Auto,
    /// Sharded even on one rank (the FSDP path end to end, e.g. NCCL at world size 1).
    Fsdp,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub model: ModelSection,
    pub data: DataSection,
    pub meta: MetaSection,
    pub optim: OptimSection,
    pub trainer: TrainerSection,
    pub checkpoint: CheckpointSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelSection {
    /// Hugging Face model directory to start from (verl's name for it).
    pub partial_pretrain: String,
    /// Compute dtype: bf16 or f32; master weights and optimizer state are fp32. f64 (compute,
    /// masters and state in fp64) is for numerical checks.
    pub dtype: String,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// "all-linear" or a list of module names (q_proj, k_proj, ...).
    pub target_modules: Json,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            partial_pretrain: String::new(),
            dtype: "bf16".into(),
            lora_rank: 0,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: Json::String("all-linear".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DataSection {
    pub prompt_key: String,
    pub response_key: String,
    pub max_length: usize,
    pub truncation: Truncation,
    /// Use at most this many rows of each task's support / query files (all when unset, 0 or
    /// negative); a task's own `support_max_samples` / `query_max_samples` win.
    pub support_max_samples: Option<i64>,
    pub query_max_samples: Option<i64>,
    /// A cap keeps a sample of the rows drawn from trainer.seed (true), or the file's first rows.
    pub shuffle: bool,
    /// Extra chat-template variables, e.g. {enable_thinking: false}.
    pub chat_template_vars: Map<String, Json>,
    /// Training batches run unpadded: one stream of the examples' real tokens, attention kept
    /// within each example, and under FSDP each rank gets a token-balanced run of whole examples
    /// (false: right-padded to the longest row, split by rows). Evaluation batches are padded.
    pub unpadded: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            prompt_key: "prompt".into(),
            response_key: "response".into(),
            max_length: 1024,
            truncation: Truncation::Error,
            support_max_samples: None,
            query_max_samples: None,
            shuffle: true,
            chat_template_vars: Map::new(),
            unpadded: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MetaSection {
    pub algorithm: Algorithm,
    /// The original trainer's switch; `false` with algorithm fomaml means second-order maml.
    pub use_fomaml: bool,
    pub inner_lr: f64,
    /// sgd, or adam (fresh state per task; Reptile only).
    pub inner_optimizer: InnerOptimizerType,
    pub num_inner_steps: usize,
    pub inner_batch_size: usize,
    /// The meta (outer) learning rate.
    pub outer_lr: f64,
    pub meta_batch_size: usize,
    pub query_batch_size: usize,
    /// A fresh support batch for every inner step (false: one batch reused for all K steps).
    pub fresh_support_batch_per_step: bool,
    pub tasks: Vec<TaskSection>,
    /// Held-out tasks for few-shot evaluation.
    pub eval_tasks: Vec<TaskSection>,
    /// Another config (one `prepare-data` wrote) whose meta.tasks and meta.eval_tasks this one
    /// uses, so an experiment names its data in one key; a path from the working directory, as
    /// task files are. Read when the config loads (and then unset), so a config that lists tasks
    /// itself sets this to null.
    pub tasks_from: Option<String>,
    /// Few-shot evaluation (the trainer's and `fomaml eval`'s) adapts as this algorithm's inner
    /// loop does; unset: as this run's own. Lets a baseline be evaluated exactly like the method
    /// it is compared with (standard LoRA like META-LoRA).
    pub eval_inner_rule: Option<Algorithm>,
}

impl Default for MetaSection {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Fomaml,
            use_fomaml: true,
            inner_lr: 1e-4,
            inner_optimizer: InnerOptimizerType::Sgd,
            num_inner_steps: 5,
            inner_batch_size: 4,
            outer_lr: 3e-5,
            meta_batch_size: 4,
            query_batch_size: 4,
            fresh_support_batch_per_step: true,
            eval_inner_rule: None,
            tasks: Vec::new(),
            eval_tasks: Vec::new(),
            tasks_from: None,
        }
    }
}

impl MetaSection {
    /// Whether the meta-gradient differentiates through the inner steps: algorithm maml, or the
    /// original trainer's `algorithm: fomaml` with `use_fomaml: false`. Decided here only.
    pub fn second_order(&self) -> bool {
        self.algorithm == Algorithm::Maml || (self.algorithm == Algorithm::Fomaml && !self.use_fomaml)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskSection {
    pub name: String,
    pub support_files: Vec<String>,
    pub query_files: Vec<String>,
    pub test_files: Vec<String>,
    /// This task's caps (data.support_max_samples / query_max_samples otherwise; 0 or negative: all).
    pub support_max_samples: Option<i64>,
    pub query_max_samples: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimSection {
    pub optimizer_type: OptimizerType,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub clip_grad: f64,
    pub lr_scheduler: LrScheduler,
    pub warmup_steps_ratio: f64,
    pub min_lr_ratio: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            optimizer_type: OptimizerType::AdamW,
            betas: [0.9, 0.95],
            eps: 1e-8,
            weight_decay: 0.01,
            clip_grad: 1.0,
            lr_scheduler: LrScheduler::Cosine,
            warmup_steps_ratio: 0.1,
            min_lr_ratio: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainerSection {
    pub total_steps: usize,
    pub seed: u64,
    /// Evaluate every this many meta-steps (0: never).
    pub test_freq: usize,
    /// console, jsonl, tensorboard.
    pub logger: Vec<String>,
    pub project_name: String,
    pub experiment_name: String,
    pub default_local_dir: String,
    /// auto, cpu, cuda or cuda:N.
    pub device: String,
    /// What a NaN/Inf loss or gradient does: skip the step, or abort the run.
    pub nan_policy: NanPolicy,
    /// libtorch's intra-op threads (default: libtorch's choice, OMP_NUM_THREADS when set).
    pub num_threads: Option<usize>,
    /// auto (FSDP when WORLD_SIZE > 1) or fsdp (also on one rank).
    pub sharding: Sharding,
    /// The communicator: auto (NCCL on GPUs, the CPU backend otherwise), nccl (also on one rank), cpu.
    pub backend: crate::distributed::Backend,
    /// Signals that ask the run to stop cleanly (a cluster's preemption warning): the meta-step
    /// finishes, a checkpoint is saved, and the trainer exits with code 75. SIGINT (Ctrl-C) always
    /// does the same; a second SIGINT stops at once.
    pub preempt_signals: Vec<PreemptSignal>,
}

impl Default for TrainerSection {
    fn default() -> Self {
        Self {
            total_steps: 1000,
            seed: 42,
            test_freq: 100,
            logger: vec!["console".into(), "jsonl".into()],
            project_name: "fomaml".into(),
            experiment_name: "run".into(),
            default_local_dir: "runs".into(),
            device: "auto".into(),
            nan_policy: NanPolicy::Abort,
            num_threads: None,
            sharding: Sharding::Auto,
            backend: crate::distributed::Backend::Auto,
            preempt_signals: vec![PreemptSignal::Sigterm, PreemptSignal::Sigusr1],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckpointSection {
    /// Save every this many meta-steps (0: only at the end).
    pub save_freq: usize,
    pub max_ckpt_to_keep: Option<usize>,
    pub resume_mode: ResumeMode,
    pub resume_path: Option<String>,
    /// Save when training ends (false: only every save_freq steps, e.g. for benchmarks).
    pub save_final: bool,
    /// A fresh run in a run directory holding another run's checkpoints moves them and its
    /// metrics to `checkpoints/archived/` (false: the run is refused).
    pub archive_previous: bool,
    /// Training waits only for a copy of the state (on the device when it fits, else in host
    /// memory); a background thread writes it. Falls back to a synchronous save, with a notice,
    /// when the copy would not fit.
    pub async_save: bool,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            save_freq: 500,
            max_ckpt_to_keep: Some(3),
            resume_mode: ResumeMode::Auto,
            resume_path: None,
            save_final: true,
            archive_previous: false,
            async_save: true,
        }
    }
}
