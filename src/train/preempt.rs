//! Stopping cleanly when asked: a cluster's preemption warning (Slurm's SIGTERM, or
//! `--signal=USR1@90`) or Ctrl-C. The handler only records the signal; the training loop looks at
//! the end of each meta-step, saves, and stops with [`EXIT_PREEMPTED`]. Under `fomaml-launch` the
//! ranks agree (a sum over ranks) so every rank stops after the same step. A second SIGINT stops
//! at once: the user meant it.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use crate::config::schema::PreemptSignal;

/// The exit code of a run that saved and stopped on request (EX_TEMPFAIL: run it again to resume).
pub use fomaml_store::EXIT_PREEMPTED;

static REQUESTED: AtomicI32 = AtomicI32::new(0);
static INTERRUPTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGINT && INTERRUPTS.fetch_add(1, Ordering::SeqCst) >= 1 {
        const MESSAGE: &[u8] = b"\nsecond SIGINT: stopping now, without saving\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
            libc::_exit(128 + libc::SIGINT);
        }
    }
    REQUESTED.store(sig, Ordering::SeqCst);
}

/// Routes `signals` and SIGINT to the handler (restarting interrupted system calls, so a
/// collective in flight is not disturbed).
pub fn install(signals: &[PreemptSignal]) -> anyhow::Result<()> {
    for sig in signals.iter().map(|s| s.number()).chain([libc::SIGINT]) {
        // SAFETY: a zeroed sigaction with a handler that only touches atomics (and, on a second
        // SIGINT, write/_exit), all async-signal-safe.
        let failed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut()) != 0
        };
        if failed {
            anyhow::bail!("cannot install a handler for signal {sig}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The signal that asked this process to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGUSR1 => "SIGUSR1".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        libc::SIGHUP => "SIGHUP".into(),
        other => format!("signal {other}"),
    }
}

/// A run that saved and stopped because it was asked to; the CLI exits with [`EXIT_PREEMPTED`].
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped after meta-step {step} on {}: saved {}; run the same command again to resume",
    .signal.map_or("a signal to another rank".to_string(), signal_name),
    .saved.display()
)]
pub struct Preempted {
    /// The signal this rank received (None: another rank was signalled).
    pub signal: Option<i32>,
    pub step: u64,
    pub saved: std::path::PathBuf,
}
