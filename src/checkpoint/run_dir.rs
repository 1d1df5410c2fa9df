//! One run directory, one writer, one lineage.
//!
//! - [`RunLock`]: an advisory lock (`<run>/.lock`, naming host and pid) held by the trainer for its
//!   whole life; a second trainer on the directory fails at once naming the holder. The kernel
//!   drops the lock of a dead process, so a lock file left behind is taken over with a notice.
//! - [`settle_lineage`]: before training, the checkpoints that must never be resumed or pruned in
//!   place leave the checkpoint folder: the later steps of a run resumed from an older step (they
//!   move to `abandoned/`), and, when asked, an earlier run's checkpoints and metrics (to
//!   `archived/`), both where `resume_mode: auto` never looks. Nothing is deleted.
//! - [`SharedToken`]: on several ranks, rank 0 writes a token with a fresh nonce into the run
//!   directory and every rank reads it back, so a run without a file system shared by its nodes
//!   stops at start, saying what it needs, rather than failing its first save.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{list, step_dir_name, LATEST_FILE};

const LOCK_FILE: &str = ".lock";

/// The run directory's writer lock; released when dropped.
pub struct RunLock {
    file: File,
}

impl RunLock {
    /// Takes the lock of `run_dir` (created if missing); returns it and, when a lock file of a
    /// process that no longer holds it was found, a notice naming that process.
    pub fn acquire(run_dir: &Path) -> Result<(Self, Option<String>)> {
        fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut previous = String::new();
        file.read_to_string(&mut previous).ok();
        let previous = previous.trim().to_string();
        // flock(2): held per open file, released by the kernel when the holder dies. (std's
        // File::try_lock needs Rust 1.89; the project builds with 1.85.)
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                let holder = if previous.is_empty() { "another process".to_string() } else { previous };
                bail!(
                    "{} is in use by another trainer ({holder}); stop it, or train into another trainer.default_local_dir",
                    run_dir.display()
                );
            }
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        let host = hostname();
        let holder = format!("host {host}, pid {}", std::process::id());
        file.set_len(0).and_then(|()| file.rewind()).with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(holder.as_bytes()).and_then(|()| file.sync_all()).ok();
        let notice = (!previous.is_empty())
            .then(|| format!("{}: took over the lock left by {previous}, which no longer holds it", run_dir.display()));
        Ok((Self { file }, notice))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Cleared, so the next trainer does not report a takeover after a clean exit.
        let _ = self.file.set_len(0);
        // Closing the file releases the lock.
    }
}

/// Removes the staging directories (`.step_<N>.tmp`) of saves that never committed: a run that
/// stopped while writing leaves one, and with one writer per run directory (the lock) none can
/// belong to a live save. Returns a notice naming them, if any.
pub fn remove_unfinished_writes(root: &Path) -> Result<Option<String>> {
    if !root.is_dir() {
        return Ok(None);
    }
    let mut removed = Vec::new();
    for entry in fs::read_dir(root).with_context(|| format!("cannot read {}", root.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".step_") && name.ends_with(".tmp") && entry.path().is_dir() {
            fs::remove_dir_all(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
            removed.push(name);
        }
    }
    removed.sort();
    Ok((!removed.is_empty()).then(|| {
        format!(
            "removed {} unfinished checkpoint write(s) left in {}: {}",
            removed.len(),
            root.display(),
            removed.join(", ")
        )
    }))
}

const TOKEN_FILE: &str = ".shared-fs-token";

/// The token rank 0 leaves in the run directory for the others to read back.
pub struct SharedToken {
    pub nonce: [u8; 32],
}

impl SharedToken {
    /// A nonce no earlier run wrote: a token left behind by one cannot pass the check.
    pub fn new(run_id: &str) -> Self {
        use sha2::{Digest, Sha256};
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = format!("{run_id} {} {} {}", hostname(), std::process::id(), now.as_nanos());
        let digest = Sha256::digest(seed.as_bytes());
        let mut nonce = [0u8; 32];
        // Printable, so the file reads as text.
        for (n, d) in nonce.iter_mut().zip(super::hex(&digest).bytes()) {
            *n = d;
        }
        Self { nonce }
    }

    /// Rank 0: writes the token (with who wrote it, for the error message of a rank that finds
    /// another).
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        let text = format!("{}\nwritten by rank 0 on host {}\n", String::from_utf8_lossy(&self.nonce), hostname());
        crate::fsutil::write_atomically(&run_dir.join(TOKEN_FILE), |f| f.write_all(text.as_bytes()))
    }

    /// Any other rank: whether it sees rank 0's token; `Err` says what it sees instead.
    pub fn check(&self, run_dir: &Path, rank: usize) -> Result<(), String> {
        let path = run_dir.join(TOKEN_FILE);
        let here = hostname();
        match fs::read_to_string(&path) {
            Ok(text) if text.as_bytes().starts_with(&self.nonce) => Ok(()),
            Ok(_) => Err(format!(
                "rank {rank} (host {here}) finds another run's {} there, not the one rank 0 just wrote",
                path.display()
            )),
            Err(e) => Err(format!("rank {rank} (host {here}) cannot read {}: {e}", path.display())),
        }
    }

    /// What a run without a shared run directory is told.
    pub fn requirement(run_dir: &Path) -> String {
        format!(
            "every rank writes its part of each checkpoint into {}, so the run directory must be on a file \
             system every node mounts at the same path (NFS, Lustre, GPFS, ...): set trainer.default_local_dir to such a path",
            run_dir.display()
        )
    }
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// How this run starts in its run directory.
pub enum Start<'a> {
    /// From nothing.
    Fresh,
    /// From the checkpoint `dir` at `step`.
    Resume { dir: &'a Path, step: u64 },
}

/// Makes the checkpoint folder `root` hold this run's lineage only (see the module docs); returns
/// what was moved, for the log. `archive` allows a fresh run in a used directory. Every rank calls
/// it, so every rank refuses alike; only the one that `acts` (rank 0) moves anything.
pub fn settle_lineage(run_dir: &Path, root: &Path, start: Start, archive: bool, acts: bool) -> Result<Vec<String>> {
    let existing = list(root)?;
    let mut notices = Vec::new();
    let own = |dir: &Path| dir.parent().and_then(|p| fs::canonicalize(p).ok()) == fs::canonicalize(root).ok();
    match start {
        Start::Resume { dir, step } if own(dir) => {
            let later: Vec<&(u64, PathBuf)> = existing.iter().filter(|(s, _)| *s > step).collect();
            if !acts {
                return Ok(notices);
            }
            if !later.is_empty() {
                let aside = set_aside(root, "abandoned", &format!("after_{}", step_dir_name(step)))?;
                for (_, dir) in &later {
                    move_into(dir, &aside)?;
                }
                let steps: Vec<String> = later.iter().map(|(s, _)| s.to_string()).collect();
                notices.push(format!(
                    "resuming from step {step}: the later checkpoints of the run it continued (steps {}) are now a dead \
                     end; moved to {} (auto-resume never looks there)",
                    steps.join(", "),
                    aside.display()
                ));
            }
            // `latest` names the checkpoint this lineage continues from.
            crate::fsutil::write_atomically(&root.join(LATEST_FILE), |f| f.write_all(step_dir_name(step).as_bytes()))?;
        }
        _ if existing.is_empty() => {}
        start => {
            let what = match start {
                Start::Fresh => "a fresh run".to_string(),
                Start::Resume { dir, .. } => format!("a run resumed from {}", dir.display()),
            };
            let (newest, _) = existing.last().expect("not empty");
            if !archive {
                bail!(
                    "{} holds checkpoints of another run (up to step {newest}); {what} would mix with them. Resume that \
                     run (checkpoint.resume_mode: auto), train into another trainer.default_local_dir, or set \
                     checkpoint.archive_previous: true to move its checkpoints and metrics aside",
                    root.display()
                );
            }
            if !acts {
                return Ok(notices);
            }
            let aside = set_aside(root, "archived", "previous_run")?;
            for (_, dir) in &existing {
                move_into(dir, &aside)?;
            }
            for file in [root.join(LATEST_FILE), run_dir.join("metrics.jsonl"), run_dir.join("tensorboard")] {
                if file.exists() {
                    move_into(&file, &aside)?;
                }
            }
            notices.push(format!(
                "{what}: the previous run's {} checkpoints (up to step {newest}) and metrics moved to {}",
                existing.len(),
                aside.display()
            ));
        }
    }
    Ok(notices)
}

/// A new folder `<root>/<kind>/<unix time>_<label>` (never reused).
fn set_aside(root: &Path, kind: &str, label: &str) -> Result<PathBuf> {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for n in 0.. {
        let dir =
            root.join(kind).join(format!("{seconds}_{label}{}", if n == 0 { String::new() } else { format!("_{n}") }));
        if !dir.exists() {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            return Ok(dir);
        }
    }
    unreachable!("some name is free")
}

fn move_into(path: &Path, dir: &Path) -> Result<()> {
    let target = dir.join(path.file_name().expect("a named entry"));
    fs::rename(path, &target).with_context(|| format!("cannot move {} to {}", path.display(), target.display()))
}
