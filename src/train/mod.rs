//! The training loop: any algorithm of `meta`, on one process or sharded across the ranks that
//! `fomaml-launch` started, with metrics, evaluation, checkpoints and exact resume (at the same or
//! another world size). Read [`Trainer::run_until`] top to bottom for a meta-step.
//!
//! Sharded, every rank runs this same loop on the same tasks and batches (each computes its rows);
//! losses and norms are summed across ranks, so every rank takes the same decisions. Rank 0 alone
//! writes logs; every rank writes its slice of each checkpoint.

mod console;
pub mod preempt;
mod saving;
pub mod setup;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::checkpoint::run_dir::{remove_unfinished_writes, settle_lineage, RunLock, Start};
use crate::checkpoint::shards::{read_shard, read_whole};
use crate::checkpoint::{self, CheckpointReader};
use crate::cli::device_for_rank;
use crate::config::schema::{Algorithm, NanPolicy, ResumeMode, Sharding};
use crate::config::Config;
use crate::data::sampler::{stable_hash, SplitMix64};
use crate::data::tasks::{Split, TaskData, TaskPosition};
use crate::distributed::{cuda, CommError, Dist, DistEnv};
use crate::eval::{adaptation_curve, SplitScore};
use crate::meta::core::{InnerRule, Learner};
use crate::meta::{fomaml, maml, meta_lora, reptile, sft, TaskOutcome};
use crate::metrics::{MetricSink, Record};
use crate::optim::{Optimizer, Schedule};
use crate::runtime::{peak_rss_bytes, reset_peak_rss};

pub use console::Console;

pub use crate::checkpoint::shards::{MODEL_FILE, OPTIMIZER_FILE};

/// The trainer's resumable state beyond tensors (stored in the checkpoint's meta.json).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    optimizer_steps: u64,
    skipped_steps: u64,
    task_positions: BTreeMap<String, TaskPosition>,
}

/// What a finished run reports.
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub steps: u64,
    pub resumed_from: Option<PathBuf>,
    /// None when nothing was saved (checkpoint.save_final: false and no save_freq step).
    pub last_checkpoint: Option<PathBuf>,
    pub last_record: Option<Record>,
    /// Whether this process is rank 0 (the one that reports).
    pub is_main: bool,
}

pub struct Trainer {
    /// Held by rank 0 while the trainer lives: one writer per run directory.
    _lock: Option<RunLock>,
    config: Config,
    model_dir: PathBuf,
    run_dir: PathBuf,
    learner: Learner,
    tasks: Vec<TaskData>,
    /// Few-shot evaluation targets: held-out tasks (on their query split) or, when there are
    /// none, the training tasks that have a test split.
    eval_tasks: Vec<(TaskData, Split)>,
    optimizer: Optimizer,
    schedule: Schedule,
    /// Meta-steps completed.
    step: u64,
    skipped_steps: u64,
    sinks: Vec<Box<dyn MetricSink>>,
    console: Console,
    resumed_from: Option<PathBuf>,
    last_record: Option<Record>,
    /// A checkpoint written, or being written in the background, and not yet committed.
    pending_save: Option<saving::PendingSave>,
    noted_synchronous_save: bool,
    /// This rank's place in the run (a single rank without a launcher). Declared last: the
    /// store it may host outlives everything that talks to it.
    dist: Dist,
}

impl Trainer {
    pub fn new(config: Config) -> Result<Self> {
        let env = DistEnv::from_env()?;
        // Before the rendezvous: a bad setting must not wait for the other ranks.
        setup::check(&config, env.as_ref().map_or(1, |e| e.world_size))?;
        let local_rank = env.as_ref().map_or(0, |e| e.local_rank);
        let device = device_for_rank(&config.trainer.device, local_rank).context("trainer.device")?;
        let dist = Dist::join(env.as_ref(), device, config.trainer.backend)?;
        let sharded = dist.world_size > 1 || config.trainer.sharding == Sharding::Fsdp;
        let shard_over = sharded.then(|| dist.comm.clone());
        let setup::Loaded { model_dir, learner, tasks, eval_tasks } = setup::load(&config, device, shard_over)?;
        let optimizer = Optimizer::new(&config.optim, config.meta.outer_lr, learner.params());
        let schedule = Schedule::new(&config.optim, config.trainer.total_steps);
        let run_dir = PathBuf::from(&config.trainer.default_local_dir);
        let console = match dist.is_main() {
            true => Console::new(config.trainer.logger.iter().any(|l| l == "console")),
            false => Console::silent(),
        };
        // One writer per run directory (rank 0 writes for all).
        let lock = match dist.is_main() {
            true => {
                let (lock, notice) = RunLock::acquire(&run_dir)?;
                if let Some(notice) = notice {
                    eprintln!("note: {notice}");
                }
                Some(lock)
            }
            false => None,
        };
        let mut trainer = Self {
            _lock: lock,
            model_dir,
            run_dir,
            learner,
            tasks,
            eval_tasks,
            optimizer,
            schedule,
            step: 0,
            skipped_steps: 0,
            sinks: Vec::new(),
            console,
            resumed_from: None,
            last_record: None,
            pending_save: None,
            noted_synchronous_save: false,
            config,
            dist,
        };
        if trainer.dist.world_size > 1 {
            trainer.check_shared_run_dir()?;
        }
        trainer.resume()?;
        if trainer.dist.is_main() {
            trainer.sinks = setup::sinks(&trainer.config, &trainer.run_dir, trainer.step)?;
        }
        Ok(trainer)
    }

    pub fn learner(&self) -> &Learner {
        &self.learner
    }

    pub fn checkpoint_root(&self) -> PathBuf {
        self.run_dir.join("checkpoints")
    }

    /// Trains to `trainer.total_steps`, evaluating every `test_freq` and checkpointing every
    /// `save_freq` and at the end.
    pub fn run(self) -> Result<TrainSummary> {
        self.run_until(None)
    }

    /// As [`Trainer::run`], but returns after meta-step `stop_at` (checkpointed) if that comes
    /// first: for jobs with a time limit, continued later by a resumed run.
    pub fn run_until(mut self, stop_at: Option<u64>) -> Result<TrainSummary> {
        let total = self.config.trainer.total_steps as u64;
        let end = stop_at.map_or(total, |s| s.min(total));
        if self.dist.is_main() {
            crate::fsutil::write_atomically(&self.run_dir.join("config.yaml"), |f| {
                std::io::Write::write_all(f, self.config.to_yaml().as_bytes())
            })?;
        }
        self.console.start(self.step, total, &self.run_dir, self.resumed_from.as_deref());
        let grad = self.learner.zeros_like_params();
        // What FSDP shards: this rank's θ, update direction and optimizer moments.
        let tensor_bytes = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as f64;
        let state_mib = (self.learner.params().iter().chain(&grad).map(tensor_bytes).sum::<f64>()
            + self.optimizer.state().iter().map(|(_, t)| tensor_bytes(t)).sum::<f64>())
            / (1 << 20) as f64;
        let mut last_checkpoint = None;
        while self.step < end {
            let (started, computed_before) = (Instant::now(), self.learner.computed_tokens());
            reset_peak_rss();
            // Dropout (LoRA) draws from libtorch's generator: seeded per step, so a resumed run
            // draws what the uninterrupted one did.
            tch::manual_seed((self.config.trainer.seed ^ stable_hash("dropout") ^ self.step) as i64);

            // 1. This step's tasks: a fresh draw without replacement, a function of (seed, step).
            let chosen = self.choose_tasks();
            let mut batch: Vec<&mut TaskData> = self.tasks.iter_mut().filter(|t| chosen.contains(&t.name)).collect();

            // 2. The update direction, left in `grad`: the meta-gradient, or the SFT gradient.
            let (meta, optim) = (&self.config.meta, &self.config.optim);
            let outcomes = match meta.algorithm {
                Algorithm::Fomaml | Algorithm::Maml if meta.second_order() => {
                    Ok(maml::meta_gradient(&self.learner, &mut batch, meta, &grad))
                }
                Algorithm::Fomaml | Algorithm::Maml => fomaml::meta_gradient(&self.learner, &mut batch, meta, &grad),
                Algorithm::Sft => sft::gradient(&self.learner, &mut batch, meta, &grad),
                Algorithm::MetaLora => meta_lora::meta_gradient(&self.learner, &mut batch, meta, optim, &grad),
                Algorithm::Reptile => reptile::direction(&self.learner, &mut batch, meta, optim, &grad),
            };
            let outcomes = outcomes.map_err(|e| self.comm_failure(e))?;

            // 3. Clip, then the outer update, unless a loss or the gradient is not finite.
            let grad_norm = self.learner.clip_grad_norm(&grad, optim.clip_grad).map_err(|e| self.comm_failure(e))?;
            let lr_factor = self.schedule.factor(self.step as usize);
            let update = self.check_finite(&outcomes, grad_norm)?;
            if update {
                self.optimizer.step(self.learner.params(), &grad, lr_factor);
            } else {
                self.skipped_steps += 1;
            }
            self.step += 1;

            // 4. Metrics, evaluation, checkpoint.
            let seconds = started.elapsed().as_secs_f64();
            let mut scalars = step_metrics(&outcomes, grad_norm);
            scalars.push(("lr".into(), self.optimizer.base_lr() * lr_factor));
            scalars.push(("meta/skipped_steps".into(), self.skipped_steps as f64));
            let computed = self.learner.computed_tokens() - computed_before;
            scalars.extend(self.perf_metrics(&outcomes, computed, seconds, state_mib));
            let freq = self.config.trainer.test_freq as u64;
            if freq > 0 && (self.step % freq == 0 || self.step == total) {
                scalars.extend(self.evaluate().map_err(|e| self.comm_failure(e))?);
            }
            let save_freq = self.config.checkpoint.save_freq as u64;
            let final_step = self.step == end && self.config.checkpoint.save_final;
            let mut saved_now = None;
            if final_step || (save_freq > 0 && self.step % save_freq == 0) {
                // Asynchronous, training waits only for a copy of the state.
                let stall = Instant::now();
                saved_now = Some(self.save()?);
                scalars.push(("perf/save_stall_s".into(), stall.elapsed().as_secs_f64()));
                last_checkpoint = saved_now.clone();
            }
            self.log(&Record { step: self.step, scalars })?;

            // 5. A stop request on any rank (preemption), and a background save every rank has
            // finished writing, committed.
            if let Some(signal) = self.step_boundary()? {
                return Err(self.stop_on_request(signal, saved_now)?);
            }
        }
        if last_checkpoint.is_none() && self.config.checkpoint.save_final {
            last_checkpoint = Some(self.save()?);
        }
        self.finish_save()?;
        for sink in &mut self.sinks {
            sink.flush()?;
        }
        self.console.finish(self.last_record.as_ref(), last_checkpoint.as_deref());
        Ok(TrainSummary {
            run_dir: self.run_dir,
            steps: self.step,
            resumed_from: self.resumed_from,
            last_checkpoint,
            last_record: self.last_record,
            is_main: self.dist.is_main(),
        })
    }

    /// Throughput and memory of the step just taken.
    fn perf_metrics(
        &self,
        outcomes: &[TaskOutcome],
        computed: i64,
        seconds: f64,
        state_mib: f64,
    ) -> Vec<(String, f64)> {
        let tokens = outcomes.iter().map(|o| o.tokens).sum::<i64>() as f64;
        let mut scalars = vec![
            ("perf/tokens".into(), tokens),
            ("perf/computed_tokens".into(), computed as f64),
            ("perf/tokens_per_s".into(), tokens / seconds),
            ("perf/step_time_s".into(), seconds),
            ("perf/rank_state_mib".into(), state_mib),
        ];
        if let Some(peak) = peak_rss_bytes() {
            scalars.push(("perf/peak_rss_mib".into(), peak as f64 / (1 << 20) as f64));
        }
        if let Device::Cuda(ordinal) = self.learner.device {
            // The caching allocator keeps what a step needed, so in-use at the end of a step is
            // its peak (plus the context); the report takes the max over steps.
            if let Ok(bytes) = cuda::memory_in_use(ordinal) {
                scalars.push(("perf/peak_gpu_mib".into(), bytes as f64 / (1 << 20) as f64));
            }
        }
        scalars
    }

    /// A collective failed (another rank died or diverged): the step it happened in, and why.
    fn comm_failure(&self, e: CommError) -> anyhow::Error {
        anyhow!("rank {} at meta-step {}: {e}", self.dist.rank, self.step + 1)
    }

    fn choose_tasks(&self) -> Vec<String> {
        let mut names: Vec<&str> = self.tasks.iter().map(|t| t.name.as_str()).collect();
        let seed = self.config.trainer.seed ^ stable_hash("meta-batch") ^ self.step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        SplitMix64::new(seed).shuffle(&mut names);
        names.into_iter().take(self.config.meta.meta_batch_size).map(String::from).collect()
    }

    /// Whether to apply the update. A non-finite loss or gradient aborts or skips the step, as
    /// `trainer.nan_policy` says, naming the step and the task.
    fn check_finite(&self, outcomes: &[TaskOutcome], grad_norm: f64) -> Result<bool> {
        let bad_task =
            outcomes.iter().find(|o| o.support_loss.is_some_and(|l| !l.is_finite()) || !o.query_loss.is_finite());
        let problem = match bad_task {
            Some(o) => match o.support_loss {
                Some(support) => format!("task `{}`: support loss {support}, query loss {}", o.name, o.query_loss),
                None => format!("task `{}`: query loss {}", o.name, o.query_loss),
            },
            None if !grad_norm.is_finite() => format!("gradient norm is {grad_norm}"),
            None => return Ok(true),
        };
        let step = self.step + 1;
        match self.config.trainer.nan_policy {
            NanPolicy::Abort => bail!(
                "step {step}: {problem} (trainer.nan_policy is abort; set trainer.nan_policy=skip to skip such steps)"
            ),
            NanPolicy::Skip => {
                self.console.warn(&format!("step {step}: {problem}; update skipped (trainer.nan_policy: skip)"));
                Ok(false)
            }
        }
    }

    /// Few-shot evaluation: each target task adapted as the inner loop adapts (K steps of its rule), its loss
    /// and exact match before and after; θ restored.
    fn evaluate(&self) -> Result<Vec<(String, f64)>, CommError> {
        let meta = &self.config.meta;
        let steps = [0, meta.num_inner_steps];
        let rule = InnerRule::for_evaluation(meta, &self.config.optim);
        let mut curves = Vec::new();
        for (task, split) in &self.eval_tasks {
            let curve = adaptation_curve(&self.learner, task, &steps, &rule, meta.inner_batch_size, *split)?;
            curves.push((task.name.as_str(), curve));
        }
        if curves.is_empty() {
            return Ok(Vec::new());
        }
        let mean =
            |f: &dyn Fn(&[SplitScore]) -> f64| curves.iter().map(|(_, c)| f(c)).sum::<f64>() / curves.len() as f64;
        let mut scalars = vec![
            ("eval/loss_before_adaptation".to_string(), mean(&|c| c[0].loss)),
            ("eval/loss_after_adaptation".to_string(), mean(&|c| c[1].loss)),
            ("eval/exact_match_before_adaptation".to_string(), mean(&|c| c[0].exact_match)),
            ("eval/exact_match_after_adaptation".to_string(), mean(&|c| c[1].exact_match)),
        ];
        scalars.extend(curves.iter().map(|(name, c)| (format!("eval/{name}/adapted_loss"), c[1].loss)));
        Ok(scalars)
    }

    fn log(&mut self, record: &Record) -> Result<()> {
        for sink in &mut self.sinks {
            sink.write(record)?;
        }
        self.console.step(record);
        self.last_record = Some(record.clone());
        Ok(())
    }

    /// Loads θ, optimizer state, step and sampler positions from the checkpoint that
    /// `checkpoint.resume_mode` selects, if any. The checkpoint may come from any world size.
    fn resume(&mut self) -> Result<()> {
        let root = self.checkpoint_root();
        let dir = match self.config.checkpoint.resume_mode {
            ResumeMode::Disable => None,
            ResumeMode::Auto => checkpoint::newest(&root)?,
            ResumeMode::ResumePath => match &self.config.checkpoint.resume_path {
                Some(path) => Some(PathBuf::from(path)),
                None => bail!("checkpoint.resume_mode is resume_path but checkpoint.resume_path is not set"),
            },
        };
        let checkpoint = dir
            .as_ref()
            .map(|dir| CheckpointReader::open(dir).with_context(|| format!("cannot resume from {}", dir.display())))
            .transpose()?;
        let start = match &checkpoint {
            Some(c) => Start::Resume { dir: &c.dir, step: c.meta.step },
            None => Start::Fresh,
        };
        if self.dist.is_main() {
            if let Some(notice) = remove_unfinished_writes(&root)? {
                eprintln!("note: {notice}");
            }
        }
        let archive = self.config.checkpoint.archive_previous;
        for notice in settle_lineage(&self.run_dir, &root, start, archive, self.dist.is_main())? {
            eprintln!("note: {notice}");
        }
        let (Some(dir), Some(checkpoint)) = (dir, checkpoint) else { return Ok(()) };
        let meta = &checkpoint.meta;
        let state: TrainState = serde_json::from_value(meta.state.clone())
            .with_context(|| format!("{}: trainer state", dir.join(checkpoint::META_FILE).display()))?;
        let layout = self.learner.layout();
        // A sharded rank reads only its slices.
        let shard = self.learner.fsdp().map(|f| (f.rank(), f.world_size()));
        let names = self.learner.names().to_vec();
        let read = |prefix: &str| {
            match shard {
                Some((rank, world)) => read_shard(&checkpoint, &layout, prefix, rank, world),
                None => read_whole(&checkpoint, &layout, prefix, &names),
            }
            .with_context(|| format!("cannot resume from {}", dir.display()))
        };
        let _guard = tch::no_grad_guard();
        for (param, saved) in self.learner.params().iter().zip(read("")?) {
            param.shallow_clone().copy_(&saved);
        }
        if !self.optimizer.state().is_empty() {
            let moments = [("exp_avg", read("exp_avg/")?), ("exp_avg_sq", read("exp_avg_sq/")?)];
            self.optimizer
                .load_state(state.optimizer_steps, |name| {
                    let (kind, index) = name.rsplit_once('.')?;
                    let (_, tensors) = moments.iter().find(|(k, _)| *k == kind)?;
                    tensors.get(index.parse::<usize>().ok()?).map(Tensor::shallow_clone)
                })
                .map_err(|e| anyhow!("{}: {e}", dir.display()))?;
        } else {
            self.optimizer.steps = state.optimizer_steps;
        }
        for task in &mut self.tasks {
            let position = state.task_positions.get(&task.name).with_context(|| {
                format!("{}: task `{}` is not in the checkpoint (the task list changed?)", dir.display(), task.name)
            })?;
            task.restore(*position);
        }
        self.step = meta.step;
        self.skipped_steps = state.skipped_steps;
        self.resumed_from = Some(dir);
        Ok(())
    }
}

/// The metrics of one step: means over tasks, the spread of adaptation, and per task. Without
/// inner steps (K = 0) there is no support loss, so neither it nor the adaptation gap is logged.
fn step_metrics(outcomes: &[TaskOutcome], grad_norm: f64) -> Vec<(String, f64)> {
    let n = outcomes.len().max(1) as f64;
    let mean = |f: &dyn Fn(&TaskOutcome) -> f64| outcomes.iter().map(f).sum::<f64>() / n;
    let variance =
        |f: &dyn Fn(&TaskOutcome) -> f64, m: f64| outcomes.iter().map(|o| (f(o) - m).powi(2)).sum::<f64>() / n;
    let query = mean(&|o| o.query_loss);
    let mut scalars = vec![
        ("meta/loss".to_string(), query),
        ("meta/grad_norm".to_string(), grad_norm),
        ("meta/avg_query_loss".to_string(), query),
        ("meta/task_loss_variance".to_string(), variance(&|o| o.query_loss, query)),
    ];
    let adapted = outcomes.iter().all(|o| o.support_loss.is_some());
    let support = |o: &TaskOutcome| o.support_loss.unwrap_or(f64::NAN);
    let gap_of = |o: &TaskOutcome| o.adaptation_gap().unwrap_or(f64::NAN);
    if adapted {
        let gap = mean(&gap_of);
        scalars.push(("meta/avg_support_loss".to_string(), mean(&support)));
        scalars.push(("meta/avg_adaptation_gap".to_string(), gap));
        scalars.push(("meta/adaptation_gap_std".to_string(), variance(&gap_of, gap).sqrt()));
    }
    for o in outcomes {
        if adapted {
            scalars.push((format!("{}/support_loss", o.name), support(o)));
        }
        scalars.push((format!("{}/query_loss", o.name), o.query_loss));
        if adapted {
            scalars.push((format!("{}/adaptation_gap", o.name), gap_of(o)));
        }
    }
    scalars
}

/// θ of a checkpoint (whole or sharded) as model weights (fp32, CPU), in the order `cfg` names them.
pub fn checkpoint_weights(checkpoint_dir: &Path, cfg: &crate::model::ModelConfig) -> Result<crate::model::Weights> {
    let (_, params) = checkpoint::shards::read_params(checkpoint_dir)?;
    let mut params: std::collections::HashMap<String, Tensor> = params.into_iter().collect();
    let mut weights = crate::model::Weights::new();
    for (name, shape) in cfg.parameter_shapes() {
        let t = params.remove(&name).with_context(|| format!("{}: `{name}` is missing", checkpoint_dir.display()))?;
        if t.size() != shape {
            bail!("{}: `{name}` has shape {:?}, the model {shape:?}", checkpoint_dir.display(), t.size());
        }
        weights.insert(name, t);
    }
    Ok(weights)
}
