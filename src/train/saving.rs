//! Checkpoints of a running trainer. A save stages `<root>/.step_<N>.tmp`, writes every rank's
//! files into it (streamed from the device, hashed as written), then commits: rank 0 writes
//! meta.json with every file's sha256, renames the directory into place and points `latest` at it.
//!
//! Asynchronous (`checkpoint.async_save`), the step waits only for a copy of the state that
//! training will not overwrite; a background thread writes it, and the commit happens at the end
//! of the first meta-step after every rank's writer has finished (the ranks agree on that in the
//! same sum that carries stop requests), at the next save, or at the end of the run. A crash
//! before the commit leaves the previous checkpoint and `latest` as they were.

use std::path::PathBuf;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use tch::{Device, Kind, Tensor};

use super::{preempt, TrainState, Trainer};
use crate::checkpoint::run_dir::SharedToken;
use crate::checkpoint::shards::{rank_file, state_name, MODEL_FILE, OPTIMIZER_FILE};
use crate::checkpoint::{self, CheckpointError, CheckpointMeta};
use crate::distributed::CommError;

/// File name → named tensors: what one rank writes.
type Files = Vec<(String, Vec<(String, Tensor)>)>;
/// File name → sha256 of what was written.
type Written = Vec<(String, String)>;

/// A save whose files are being (or have been) written, not yet committed.
pub(super) struct PendingSave {
    meta: CheckpointMeta,
    dir: PathBuf,
    writer: Writer,
}

enum Writer {
    Done(Result<Written, CheckpointError>),
    Background(JoinHandle<Result<Written, CheckpointError>>),
}

impl PendingSave {
    fn is_written(&self) -> bool {
        match &self.writer {
            Writer::Done(_) => true,
            Writer::Background(handle) => handle.is_finished(),
        }
    }

    fn wait(self) -> Result<(CheckpointMeta, Written)> {
        let step = self.meta.step;
        let written = match self.writer {
            Writer::Done(written) => written,
            Writer::Background(handle) => {
                handle.join().map_err(|_| anyhow!("the writer of step {step}'s checkpoint panicked"))?
            }
        };
        let written = written.with_context(|| format!("writing the checkpoint of step {step}"))?;
        Ok((self.meta, written))
    }
}

fn write_files(tmp: &std::path::Path, files: &Files) -> Result<Written, CheckpointError> {
    files
        .iter()
        .map(|(file, tensors)| {
            let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            Ok((file.clone(), checkpoint::write_file(tmp, file, &refs)?))
        })
        .collect()
}

fn bytes_of(files: &Files) -> u64 {
    files.iter().flat_map(|(_, ts)| ts).map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64).sum()
}

/// Copies of `files` that training will not overwrite: on their own device when there is room
/// there, else in host memory; `Err(why)` when neither fits (the caller saves synchronously).
fn snapshot(files: &Files) -> Result<Files, String> {
    let _guard = tch::no_grad_guard();
    let copy_all = |place: &dyn Fn(&Tensor) -> Result<Tensor, tch::TchError>| -> Result<Files, tch::TchError> {
        let mut copies = Vec::with_capacity(files.len());
        for (file, tensors) in files {
            let copied = tensors.iter().map(|(n, t)| Ok((n.clone(), place(t)?)));
            copies.push((file.clone(), copied.collect::<Result<Vec<_>, tch::TchError>>()?));
        }
        Ok(copies)
    };
    let on_device = files.iter().flat_map(|(_, ts)| ts).any(|(_, t)| t.device() != Device::Cpu);
    if on_device {
        // A failed allocation (out of device memory) is an error here, not an abort.
        let copied = copy_all(&|t| {
            let mut copy = t.f_empty_like()?;
            copy.f_copy_(t)?;
            Ok(copy)
        });
        if let Ok(copies) = copied {
            return Ok(copies);
        }
    }
    let needed = bytes_of(files);
    // What the copy leaves for everything else on the host, rank-local processes included.
    const MARGIN: u64 = 2 << 30;
    let available = crate::runtime::available_memory_bytes().unwrap_or(u64::MAX);
    if needed.saturating_add(MARGIN) > available {
        return Err(format!(
            "a copy of the state ({:.2} GiB) does not fit in the host's available memory ({:.2} GiB)",
            needed as f64 / (1u64 << 30) as f64,
            available as f64 / (1u64 << 30) as f64
        ));
    }
    copy_all(&|t| {
        let host = Tensor::f_empty(t.size(), (t.kind(), Device::Cpu))?;
        // From a GPU, into page-locked memory (a DMA copy), one tensor at a time; pageable when
        // the driver refuses to pin more.
        let mut copy = match t.device() {
            Device::Cuda(_) => host.f_pin_memory(t.device()).unwrap_or(host),
            _ => host,
        };
        copy.f_copy_(t)?;
        Ok(copy)
    })
    .map_err(|e| format!("copying the state to host memory: {e}"))
}

/// A collective of the save of `step` failed (committed later than it was taken, when asynchronous).
fn save_error(step: u64) -> impl Fn(CommError) -> anyhow::Error {
    move |e| anyhow!("saving the checkpoint of step {step}: {e}")
}

impl Trainer {
    /// What this rank saves: θ and the optimizer moments (named by parameter), the live tensors
    /// on their own device. Sharded, a rank's slices of every non-empty unit, in one file.
    fn state_files(&self) -> Files {
        let names = self.learner.names();
        let params = names.iter().zip(self.learner.params()).map(|(n, t)| (n.clone(), t.detach()));
        // The optimizer names its moments `exp_avg.<i>`; checkpoints name them by parameter.
        let moment_name = |name: &str| {
            let (kind, index) = name.rsplit_once('.').expect("optimizer state is named <kind>.<index>");
            state_name(&format!("{kind}/"), &names[index.parse::<usize>().expect("an index")])
        };
        let moments = self.optimizer.state().into_iter().map(|(n, t)| (moment_name(&n), t.detach()));
        let Some(fsdp) = self.learner.fsdp() else {
            return vec![(MODEL_FILE.into(), params.collect()), (OPTIMIZER_FILE.into(), moments.collect())];
        };
        // Empty units (no parameter of θ) have nothing to save.
        let layout = &fsdp.layout;
        let non_empty = |name: &String| {
            let unit = name.rsplit_once("unit.").and_then(|(_, u)| u.parse::<usize>().ok()).expect("unit.<u>");
            layout.units[unit].numel > 0
        };
        vec![(rank_file(self.dist.rank), params.chain(moments).filter(|(n, _)| non_empty(n)).collect())]
    }

    fn checkpoint_meta(&self) -> CheckpointMeta {
        let state = TrainState {
            optimizer_steps: self.optimizer.steps,
            skipped_steps: self.skipped_steps,
            task_positions: self.tasks.iter().map(|t| (t.name.clone(), t.position())).collect(),
        };
        let mut meta = CheckpointMeta::new(
            self.step,
            self.dist.world_size,
            self.model_dir.display().to_string(),
            self.config.to_yaml(),
            serde_json::to_value(state).expect("state serialises"),
        );
        meta.layout = self.learner.fsdp().map(|f| f.layout.clone());
        meta
    }

    /// Saves the current step (after the previous save is committed) and returns the directory
    /// it will have. Synchronous, it is committed on return; asynchronous, once written.
    pub(super) fn save(&mut self) -> Result<PathBuf> {
        self.finish_save()?;
        let root = self.checkpoint_root();
        let tmp = checkpoint::staging_dir(&root, self.step);
        if self.dist.is_main() {
            checkpoint::begin(&root, self.step)?;
        }
        if let Some(fsdp) = self.learner.fsdp() {
            // No rank writes before the staging directory exists.
            fsdp.comm().borrow_mut().barrier().map_err(save_error(self.step))?;
        }
        let files = self.state_files();
        let copies = match self.config.checkpoint.async_save {
            true => snapshot(&files).map_err(|why| self.note_synchronous(&why)).ok(),
            false => None,
        };
        let synchronous = copies.is_none();
        let writer = match copies {
            Some(copies) => Writer::Background(std::thread::spawn(move || write_files(&tmp, &copies))),
            None => Writer::Done(write_files(&tmp, &files)),
        };
        let dir = root.join(checkpoint::step_dir_name(self.step));
        self.pending_save = Some(PendingSave { meta: self.checkpoint_meta(), dir: dir.clone(), writer });
        if synchronous {
            self.finish_save()?;
        }
        Ok(dir)
    }

    fn note_synchronous(&mut self, why: &str) {
        if !self.noted_synchronous_save {
            self.console.warn(&format!("checkpoint.async_save: {why}; saving synchronously"));
            self.noted_synchronous_save = true;
        }
    }

    /// Waits for the pending save's files (every rank's) and commits it. Sharded, every rank
    /// calls this at the same point.
    pub(super) fn finish_save(&mut self) -> Result<()> {
        let Some(pending) = self.pending_save.take() else { return Ok(()) };
        let dir = pending.dir.clone();
        let (mut meta, written) = pending.wait()?;
        let root = self.checkpoint_root();
        let tmp = checkpoint::staging_dir(&root, meta.step);
        let keep = self.config.checkpoint.max_ckpt_to_keep;
        let Some(fsdp) = self.learner.fsdp() else {
            meta.files.extend(written);
            checkpoint::commit(&root, &tmp, &meta, keep)?;
            return Ok(());
        };
        let (_, sha) = written.into_iter().next().expect("a rank writes one file");
        let all = Tensor::zeros([64 * self.dist.world_size as i64], (Kind::Uint8, Device::Cpu));
        fsdp.comm()
            .borrow_mut()
            .all_gather(&Tensor::from_slice(sha.as_bytes()), &all)
            .map_err(save_error(meta.step))?;
        if self.dist.is_main() {
            let bytes = Vec::<u8>::try_from(&all).expect("uint8 bytes");
            for (rank, sha) in bytes.chunks(64).enumerate() {
                meta.files.insert(rank_file(rank), String::from_utf8_lossy(sha).into_owned());
            }
            checkpoint::commit(&root, &tmp, &meta, keep).with_context(|| format!("committing {}", dir.display()))?;
        }
        // No rank goes on (or exits) before the checkpoint is whole.
        fsdp.comm().borrow_mut().barrier().map_err(save_error(meta.step))?;
        Ok(())
    }

    /// On several ranks: every rank must see the run directory rank 0 created (checkpoints are
    /// written into it by all). Fails on every rank within one collective when one does not.
    pub(super) fn check_shared_run_dir(&self) -> Result<()> {
        let token = SharedToken::new(&self.run_dir.display().to_string());
        if self.dist.is_main() {
            token.write(&self.run_dir)?;
        }
        let comm = &self.dist.comm;
        let failed = |e: CommError| anyhow!("checking that every rank sees {}: {e}", self.run_dir.display());
        let nonce = Tensor::from_slice(&token.nonce);
        comm.borrow_mut().broadcast(&nonce, 0).map_err(failed)?;
        let nonce: Vec<u8> = Vec::try_from(&nonce).expect("uint8 bytes");
        let token = SharedToken { nonce: nonce.try_into().expect("32 bytes") };
        let seen = match self.dist.is_main() {
            true => Ok(()),
            false => token.check(&self.run_dir, self.dist.rank),
        };
        let all = Tensor::zeros([self.dist.world_size as i64], (Kind::Uint8, Device::Cpu));
        comm.borrow_mut().all_gather(&Tensor::from_slice(&[seen.is_err() as u8]), &all).map_err(failed)?;
        let blind: Vec<usize> = Vec::<u8>::try_from(&all)
            .expect("uint8 flags")
            .iter()
            .enumerate()
            .filter(|(_, f)| **f != 0)
            .map(|(r, _)| r)
            .collect();
        let requirement = SharedToken::requirement(&self.run_dir);
        match (seen, blind.is_empty()) {
            (_, true) => Ok(()),
            (Err(why), _) => anyhow::bail!("{why}: {requirement}"),
            (Ok(()), false) => anyhow::bail!(
                "{} cannot see the run directory rank 0 created: {requirement}",
                crate::distributed::comm::ranks_phrase(&blind)
            ),
        }
    }

    /// At the end of every meta-step: commits a background save that every rank has finished
    /// writing, and returns `Some(signal)` when any rank was asked to stop (`None` inside: the
    /// signal went to another rank). Sharded, the ranks decide together in one small sum.
    pub(super) fn step_boundary(&mut self) -> Result<Option<Option<i32>>> {
        let signal = preempt::requested();
        let unwritten = self.pending_save.as_ref().is_some_and(|p| !p.is_written());
        let (stop, written_everywhere) = match self.learner.fsdp() {
            None => (signal.is_some(), !unwritten),
            Some(fsdp) => {
                let flags = Tensor::from_slice(&[signal.is_some() as i64 as f32, unwritten as i64 as f32]);
                fsdp.comm().borrow_mut().all_reduce_sum(&flags).map_err(|e| self.comm_failure(e))?;
                let flags = Vec::<f32>::try_from(&flags).expect("two flags");
                (flags[0] > 0.0, flags[1] == 0.0)
            }
        };
        if self.pending_save.is_some() && written_everywhere {
            self.finish_save()?;
        }
        Ok(stop.then_some(signal))
    }

    /// Saves (unless this step was just saved), waits for the save, and returns the error that
    /// tells the CLI to exit with [`preempt::EXIT_PREEMPTED`].
    pub(super) fn stop_on_request(&mut self, signal: Option<i32>, saved: Option<PathBuf>) -> Result<anyhow::Error> {
        let saved = match saved {
            Some(dir) => dir,
            None => self.save()?,
        };
        self.finish_save()?;
        for sink in &mut self.sinks {
            sink.flush()?;
        }
        // The CLI prints it, on every rank, and exits with its code.
        Ok(preempt::Preempted { signal, step: self.step, saved }.into())
    }
}
