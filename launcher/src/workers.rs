//! Spawning, watching and stopping the ranks of one node.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use crate::Args;

/// How one rank ended.
#[derive(Debug, Clone)]
pub struct Failure {
    pub local_rank: usize,
    pub rank: usize,
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub time: SystemTime,
    pub error_file: PathBuf,
    pub stderr_log: Option<PathBuf>,
}

pub enum Outcome {
    Succeeded,
    /// Failures in the order they were observed; the first is the root cause.
    Failed(Vec<Failure>),
    Signalled(i32),
    /// Every worker ended, some having saved and stopped on request (exit code
    /// [`fomaml_store::EXIT_PREEMPTED`]), none failing.
    Preempted,
    /// Another node failed (or its news could not be had); why.
    Stopped(String),
}

struct Worker {
    local_rank: usize,
    rank: usize,
    child: Child,
    error_file: PathBuf,
    stderr_log: Option<PathBuf>,
    done: bool,
    preempted: bool,
}

/// The signals a trainer answers by finishing its step and saving: the first one the launcher
/// receives is passed on and the workers get the time to do so; any later one stops them.
const GRACEFUL: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGUSR2];

pub struct Group {
    workers: Vec<Worker>,
    pumps: Vec<JoinHandle<()>>,
}

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(sig: libc::c_int) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// Signals the launcher forwards to its workers (which run in their own process groups and so do
/// not see a terminal's Ctrl-C themselves).
pub struct Signals;

pub fn install_signal_forwarding() -> Result<Signals> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        let previous = unsafe { libc::signal(sig, remember_signal as *const () as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            anyhow::bail!("cannot install a handler for signal {sig}");
        }
    }
    Ok(Signals)
}

impl Signals {
    pub fn take(&self) -> Option<i32> {
        match RECEIVED.swap(0, Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        }
    }
}

pub fn new_run_id() -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

fn stream_mode(mask: u8, bit: u8) -> bool {
    mask & bit != 0
}

/// Copies a worker's stream into its log file and onto ours, each line prefixed with the rank.
fn tee(mut source: impl Read + Send + 'static, mut file: File, rank: usize, to_stderr: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(&mut source);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).map(|n| n > 0).unwrap_or(false) {
            let _ = file.write_all(&line);
            let mut prefixed = format!("[{rank}]:").into_bytes();
            prefixed.extend_from_slice(&line);
            let _ =
                if to_stderr { std::io::stderr().write_all(&prefixed) } else { std::io::stdout().write_all(&prefixed) };
            line.clear();
        }
    })
}

/// The rank gets SIGKILL when the launcher dies, however it dies (an OOM kill, `scancel -s KILL`):
/// no orphan rank goes on training and writing checkpoints beside a relaunch. A launcher that
/// died before the rank could ask for this is noticed by its parent pid.
fn die_with_launcher(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let launcher = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != launcher {
                libc::_exit(137);
            }
            Ok(())
        });
    }
}

impl Group {
    pub fn start(args: &Args, master_addr: &str, run_id: &str, attempt: u32) -> Result<Self> {
        let attempt_dir = match &args.log_dir {
            Some(dir) => dir.join(run_id).join(format!("attempt_{attempt}")),
            None => std::env::temp_dir().join(format!("fomaml-launch-{run_id}")).join(format!("attempt_{attempt}")),
        };
        let world_size = args.nproc * args.nnodes;
        let mut group = Group { workers: Vec::new(), pumps: Vec::new() };
        for local_rank in 0..args.nproc {
            let rank = args.node_rank * args.nproc + local_rank;
            // The global rank, which is the local rank on a single node: nodes sharing a file
            // system (or a machine) would otherwise write into each other's directories.
            let rank_dir = attempt_dir.join(rank.to_string());
            fs::create_dir_all(&rank_dir).with_context(|| format!("cannot create {}", rank_dir.display()))?;
            let error_file = rank_dir.join("error.json");
            let _ = fs::remove_file(&error_file);

            let mut cmd = Command::new(&args.command[0]);
            cmd.args(&args.command[1..])
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", local_rank.to_string())
                .env("GROUP_RANK", args.node_rank.to_string())
                .env("ROLE_RANK", rank.to_string())
                .env("ROLE_NAME", "default")
                .env("WORLD_SIZE", world_size.to_string())
                .env("LOCAL_WORLD_SIZE", args.nproc.to_string())
                .env("GROUP_WORLD_SIZE", args.nnodes.to_string())
                .env("ROLE_WORLD_SIZE", world_size.to_string())
                .env("MASTER_ADDR", master_addr)
                .env("MASTER_PORT", args.master_port.to_string())
                .env("TORCHELASTIC_RESTART_COUNT", attempt.to_string())
                .env("TORCHELASTIC_MAX_RESTARTS", args.max_restarts.to_string())
                .env("TORCHELASTIC_RUN_ID", run_id)
                .env("TORCHELASTIC_ERROR_FILE", &error_file)
                // torchrun's name: the store at MASTER_ADDR:MASTER_PORT is up (hosted by node 0's
                // launcher), so no rank may try to host it.
                .env("TORCHELASTIC_USE_AGENT_STORE", "True")
                // Own process group: stopping a worker stops everything it started.
                .process_group(0);
            if std::env::var_os("OMP_NUM_THREADS").is_none() {
                // torchrun's default: N ranks each spawning one thread per core oversubscribe the node.
                let threads = (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) / args.nproc).max(1);
                cmd.env("OMP_NUM_THREADS", threads.to_string());
            }
            let log = |name: &str| rank_dir.join(name);
            let (redirects, tee_mode) = (args.redirects.for_rank(local_rank), args.tee.for_rank(local_rank));
            let want_file = |bit: u8| args.log_dir.is_some() && stream_mode(redirects | tee_mode, bit);
            let on_console = args.local_ranks_filter.as_ref().is_none_or(|f| f.0.contains(&local_rank));
            for (bit, name) in [(1u8, "stdout.log"), (2u8, "stderr.log")] {
                let stdio = if want_file(bit) && stream_mode(tee_mode, bit) && on_console {
                    Stdio::piped()
                } else if want_file(bit) {
                    Stdio::from(
                        File::create(log(name)).with_context(|| format!("cannot create {}", log(name).display()))?,
                    )
                } else if on_console {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                };
                if bit == 1 {
                    cmd.stdout(stdio);
                } else {
                    cmd.stderr(stdio);
                }
            }
            die_with_launcher(&mut cmd);
            let mut child =
                cmd.spawn().with_context(|| format!("cannot start `{}` for rank {rank}", args.command[0]))?;
            if let Some(out) = child.stdout.take() {
                group.pumps.push(tee(out, File::create(log("stdout.log"))?, rank, false));
            }
            if let Some(err) = child.stderr.take() {
                group.pumps.push(tee(err, File::create(log("stderr.log"))?, rank, true));
            }
            let stderr_log = want_file(2).then(|| log("stderr.log"));
            group.workers.push(Worker {
                local_rank,
                rank,
                child,
                error_file,
                stderr_log,
                done: false,
                preempted: false,
            });
        }
        Ok(group)
    }

    /// Waits until every worker succeeded (or saved and stopped on request), one failed, the
    /// launcher got a signal that stops them, or `peer_stopped` gives a reason to stop (another
    /// node failed).
    pub fn watch(
        &mut self,
        interval: Duration,
        signals: &Signals,
        mut peer_stopped: impl FnMut() -> Option<String>,
    ) -> Outcome {
        let mut forwarded = None;
        loop {
            if let Some(sig) = signals.take() {
                self.signal_all(sig);
                if forwarded.is_some() || !GRACEFUL.contains(&sig) {
                    return Outcome::Signalled(sig);
                }
                eprintln!(
                    "fomaml-launch: received signal {sig}; passed on to the workers, waiting for them to save and stop"
                );
                forwarded = Some(sig);
            }
            let mut failures = Vec::new();
            for w in self.workers.iter_mut().filter(|w| !w.done) {
                let Ok(Some(status)) = w.child.try_wait() else { continue };
                w.done = true;
                w.preempted = status.code() == Some(fomaml_store::EXIT_PREEMPTED as i32);
                if !status.success() && !w.preempted {
                    failures.push(Failure {
                        local_rank: w.local_rank,
                        rank: w.rank,
                        pid: w.child.id(),
                        exit_code: status.code(),
                        signal: status.signal(),
                        time: SystemTime::now(),
                        error_file: w.error_file.clone(),
                        stderr_log: w.stderr_log.clone(),
                    });
                }
            }
            match (failures.is_empty(), forwarded) {
                (false, Some(sig)) => return Outcome::Signalled(sig),
                (false, None) => return Outcome::Failed(failures),
                (true, _) => {}
            }
            if self.workers.iter().all(|w| w.done) {
                return match self.workers.iter().any(|w| w.preempted) {
                    true => Outcome::Preempted,
                    false => Outcome::Succeeded,
                };
            }
            if let Some(why) = peer_stopped() {
                return Outcome::Stopped(why);
            }
            std::thread::sleep(interval);
        }
    }

    fn signal_all(&self, sig: i32) {
        for w in self.workers.iter().filter(|w| !w.done) {
            // SAFETY: kill(2) on the worker's own process group (negative pid).
            unsafe { libc::kill(-(w.child.id() as i32), sig) };
        }
    }

    /// SIGTERM to every live worker's process group, SIGKILL after `grace`, then reap them all.
    pub fn stop(&mut self, grace: Duration) {
        self.signal_all(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self.workers.iter_mut().any(|w| !w.done && !matches!(w.child.try_wait(), Ok(Some(_))))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_all(libc::SIGKILL);
        for w in &mut self.workers {
            let _ = w.child.wait();
            w.done = true;
        }
        for pump in self.pumps.drain(..) {
            let _ = pump.join();
        }
    }
}
