//! Watches collectives that run asynchronously on a device and ends the process when one does not
//! complete in time.
//!
//! NCCL enqueues a collective and returns; if a peer died, hangs, or called a different collective,
//! the kernel spins forever and the next host sync never returns. So each enqueued collective is
//! followed by an event, and this thread polls the events in order. Past the timeout it builds a
//! message naming the collective and, from the progress every rank publishes, the ranks that are
//! behind; then `on_timeout` runs (production: abort the communicator, report, exit 1 so the launcher
//! restarts the group — torch's TORCH_NCCL_ASYNC_ERROR_HANDLING does the same).

use std::collections::VecDeque;
use std::ffi::c_int;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fomaml_store::format_secs;

use super::comm::OpDesc;

/// Whether the device work recorded for one collective has finished.
pub trait Completion: Send {
    /// `Ok(true)` once complete; an error (a failed kernel, say) is reported like a timeout.
    fn poll(&mut self) -> Result<bool, String>;
}

/// What the watchdog does besides waiting.
pub struct Hooks {
    /// Publishes the last completed sequence number (rate-limited by the watchdog).
    pub publish: Box<dyn FnMut(u64) + Send>,
    /// Every rank's last completed sequence number, as far as it can be read (`None`: never
    /// published, or unreadable).
    pub progress: Box<dyn FnMut() -> Vec<Option<u64>> + Send>,
    /// Called once with the failure's message; it is not expected to return in production.
    pub on_timeout: Box<dyn FnOnce(String) + Send>,
}

enum Msg {
    Watch(OpDesc, Box<dyn Completion>),
    Stop,
}

pub struct Watchdog {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

/// How often pending events are polled, and how often progress is published.
const POLL: Duration = Duration::from_millis(2);
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

impl Watchdog {
    /// `setup` runs first on the watchdog's thread (making the device's context current there).
    pub fn spawn(
        rank: usize,
        world_size: usize,
        timeout: Duration,
        setup: impl FnOnce() + Send + 'static,
        hooks: Hooks,
    ) -> Watchdog {
        let (tx, rx) = channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name(format!("nccl-watchdog-{rank}"))
            .spawn(move || {
                setup();
                let Hooks { mut publish, mut progress, on_timeout } = hooks;
                let mut pending: VecDeque<(OpDesc, Box<dyn Completion>, Instant)> = VecDeque::new();
                let (mut done, mut published, mut last_publish) = (0u64, 0u64, Instant::now());
                let mut stopping = false;
                loop {
                    let msg = if pending.is_empty() {
                        match rx.recv() {
                            Ok(m) => Some(m),
                            Err(_) => Some(Msg::Stop),
                        }
                    } else {
                        match rx.recv_timeout(POLL) {
                            Ok(m) => Some(m),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => Some(Msg::Stop),
                        }
                    };
                    match msg {
                        Some(Msg::Watch(desc, c)) => pending.push_back((desc, c, Instant::now())),
                        Some(Msg::Stop) => stopping = true,
                        None => {}
                    }
                    while let Some((desc, completion, started)) = pending.front_mut() {
                        let failure = match completion.poll() {
                            Ok(true) => {
                                done = desc.seq;
                                pending.pop_front();
                                continue;
                            }
                            Ok(false) if started.elapsed() < timeout => break,
                            Ok(false) => format!("did not complete within {} s", format_secs(timeout)),
                            Err(e) => format!("failed on the device: {e}"),
                        };
                        publish(done);
                        let ours = desc.to_string();
                        // Let the other ranks' watchdogs publish what they have completed.
                        std::thread::sleep(PUBLISH_EVERY + PUBLISH_EVERY / 2);
                        let behind = behind_phrase(desc.seq, &progress());
                        on_timeout(format!(
                            "NCCL {ours} on rank {rank} of {world_size} {failure}; {behind}. Set {} to change the timeout.",
                            super::TIMEOUT_ENV
                        ));
                        return;
                    }
                    if stopping && pending.is_empty() {
                        break;
                    }
                    if done != published && last_publish.elapsed() >= PUBLISH_EVERY {
                        publish(done);
                        (published, last_publish) = (done, Instant::now());
                    }
                }
                if done != published {
                    publish(done);
                }
            })
            .expect("spawning the NCCL watchdog thread");
        Watchdog { tx, thread: Some(thread) }
    }

    /// Watches one enqueued collective.
    pub fn watch(&self, desc: OpDesc, completion: Box<dyn Completion>) {
        // A closed channel means the watchdog already fired; the process is on its way out.
        let _ = self.tx.send(Msg::Watch(desc, completion));
    }
}

impl Drop for Watchdog {
    /// Waits until every watched collective has completed (or the watchdog fired).
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reports `message` as `main` does (stderr, TORCHELASTIC_ERROR_FILE) and ends the process with
/// status 1 at once. `_exit`, not `exit`: the main thread may be inside a CUDA call on a hung
/// stream, and atexit handlers and libtorch's static destructors would wait on it or crash; the
/// driver releases the device when the process is gone. NCCL is not aborted first: since 2.16 an
/// abort may wait for the other ranks of the node to abort too.
pub fn die(message: &str) -> ! {
    eprintln!("error: {message}");
    crate::runtime::write_error_file(message);
    extern "C" {
        fn _exit(status: c_int) -> !;
    }
    // SAFETY: _exit ends the process without running any handler; nothing here needs cleaning up.
    unsafe { _exit(1) }
}

/// Ends the process with a message unless dropped within the timeout: a bound on blocking calls
/// that have no timeout of their own (NCCL's initialisation waits for every rank).
pub struct Deadline {
    disarm: Sender<()>,
}

impl Deadline {
    pub fn arm(timeout: Duration, message: String) -> Deadline {
        let (disarm, rx) = channel::<()>();
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                die(&message);
            }
        });
        Deadline { disarm }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let _ = self.disarm.send(());
    }
}

/// "ranks 2,3 are behind (last completed: rank 0 #57, rank 1 #56, rank 2 #41, rank 3 none): they
/// died, hang, or called a different collective".
pub fn behind_phrase(seq: u64, progress: &[Option<u64>]) -> String {
    let listed = progress
        .iter()
        .enumerate()
        .map(|(r, p)| match p {
            Some(s) => format!("rank {r} #{s}"),
            None => format!("rank {r} none"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    // A rank waiting in the same collective has completed seq - 1; fewer means it never got here.
    let behind: Vec<usize> =
        progress.iter().enumerate().filter(|(_, p)| p.is_none_or(|s| s + 1 < seq)).map(|(r, _)| r).collect();
    if behind.is_empty() {
        format!("every rank reached it (last completed: {listed}): a rank hangs inside it, or the network does")
    } else {
        format!(
            "{} behind (last completed: {listed}): died, hang, or called a different collective",
            match behind.len() {
                1 => format!("rank {} is", behind[0]),
                _ => format!("{} are", super::comm::ranks_phrase(&behind)),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc, Mutex};

    use super::*;
    use crate::distributed::comm::OpKind;

    struct Flag(Arc<AtomicBool>);
    impl Completion for Flag {
        fn poll(&mut self) -> Result<bool, String> {
            Ok(self.0.load(Ordering::SeqCst))
        }
    }

    fn desc(op: OpKind, seq: u64) -> OpDesc {
        OpDesc { op, seq, bytes: 4096, dtype: Some(tch::Kind::BFloat16), root: 0 }
    }

    fn hooks(published: Arc<Mutex<Vec<u64>>>, progress: Vec<Option<u64>>, fired: mpsc::Sender<String>) -> Hooks {
        Hooks {
            publish: Box::new(move |s| published.lock().unwrap().push(s)),
            progress: Box::new(move || progress.clone()),
            on_timeout: Box::new(move |m| fired.send(m).unwrap()),
        }
    }

    #[test]
    fn a_collective_that_never_completes_is_reported_with_the_ranks_behind() {
        let (fired, rx) = mpsc::channel();
        let published = Arc::new(Mutex::new(Vec::new()));
        let progress = vec![Some(6), Some(6), Some(3)];
        let dog = Watchdog::spawn(1, 3, Duration::from_millis(50), || {}, hooks(published.clone(), progress, fired));
        let first = Arc::new(AtomicBool::new(true));
        dog.watch(desc(OpKind::AllReduce, 6), Box::new(Flag(first)));
        dog.watch(desc(OpKind::AllGather, 7), Box::new(Flag(Arc::new(AtomicBool::new(false)))));
        let message = rx.recv_timeout(Duration::from_secs(10)).expect("the watchdog did not fire");
        assert!(message.contains("all_gather #7") && message.contains("rank 1 of 3"), "{message}");
        assert!(message.contains("did not complete within 0.05 s"), "{message}");
        assert!(message.contains("rank 2 is behind") && message.contains("rank 2 #3"), "{message}");
        assert!(message.contains(crate::distributed::TIMEOUT_ENV), "{message}");
        // The completed all_reduce was published before the report was built.
        assert_eq!(published.lock().unwrap().last(), Some(&6));
        drop(dog);
    }

    #[test]
    fn completed_collectives_do_not_fire_and_drop_waits_for_them() {
        let (fired, rx) = mpsc::channel();
        let published = Arc::new(Mutex::new(Vec::new()));
        let dog = Watchdog::spawn(0, 2, Duration::from_secs(5), || {}, hooks(published.clone(), vec![], fired));
        let flag = Arc::new(AtomicBool::new(false));
        for seq in 1..=3 {
            dog.watch(desc(OpKind::ReduceScatter, seq), Box::new(Flag(flag.clone())));
        }
        let setter = flag.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            setter.store(true, Ordering::SeqCst);
        });
        drop(dog);
        t.join().unwrap();
        assert!(rx.try_recv().is_err(), "fired although every collective completed");
        assert_eq!(published.lock().unwrap().last(), Some(&3), "the final progress is published on drop");
    }

    #[test]
    fn device_errors_are_reported_at_once() {
        struct Failed;
        impl Completion for Failed {
            fn poll(&mut self) -> Result<bool, String> {
                Err("CUDA_ERROR_LAUNCH_FAILED".into())
            }
        }
        let (fired, rx) = mpsc::channel();
        let dog =
            Watchdog::spawn(0, 1, Duration::from_secs(600), || {}, hooks(Default::default(), vec![Some(0)], fired));
        dog.watch(desc(OpKind::Broadcast, 1), Box::new(Failed));
        let message = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(message.contains("failed on the device: CUDA_ERROR_LAUNCH_FAILED"), "{message}");
        assert!(message.contains("every rank reached it"), "{message}");
    }

    /// Run by `a_deadline_that_passes_ends_the_process_with_its_message` in a child process.
    #[test]
    fn deadline_child() {
        if std::env::var_os("FOMAML_DEADLINE_CHILD").is_none() {
            return;
        }
        let _never_disarmed = Deadline::arm(Duration::from_millis(50), "initialisation hung".into());
        std::thread::sleep(Duration::from_secs(20));
    }

    #[test]
    fn a_deadline_that_passes_ends_the_process_with_its_message() {
        let disarmed = Deadline::arm(Duration::from_millis(50), "must not fire".into());
        drop(disarmed);
        std::thread::sleep(Duration::from_millis(150));

        let dir = tempfile::tempdir().unwrap();
        let error_file = dir.path().join("error.json");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "distributed::watchdog::tests::deadline_child", "--nocapture", "--test-threads=1"])
            .env("FOMAML_DEADLINE_CHILD", "1")
            .env("TORCHELASTIC_ERROR_FILE", &error_file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("error: initialisation hung"), "{stderr}");
        let written = std::fs::read_to_string(&error_file).unwrap();
        assert!(written.contains("initialisation hung"), "{written}");
    }

    #[test]
    fn ranks_behind_are_named() {
        assert!(behind_phrase(10, &[Some(9), None, Some(4)]).starts_with("ranks 1,2 are behind"));
        assert!(behind_phrase(10, &[Some(9), Some(10)]).starts_with("every rank reached it"));
    }
}
