//! Helpers shared by the launcher's test files.
// Each test file uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Slurm's variables, which the launcher reads; a test sets the ones it means.
const SLURM: [&str; 5] = ["SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID"];

/// `fomaml-launch` with `args`, untouched by any Slurm job the tests themselves run in.
pub fn launcher(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fomaml-launch"));
    cmd.args(args);
    for var in SLURM {
        cmd.env_remove(var);
    }
    cmd
}

pub fn launch(args: &[&str]) -> Output {
    launcher(args).output().expect("run fomaml-launch")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The port a launcher started with `--master-port 0` reports on stderr (`the store listens on
/// HOST:PORT`): the system picked it when the store bound it, so no other process can hold it.
pub fn reported_port(stderr: &str) -> Option<u16> {
    let line = stderr.lines().find_map(|l| l.split_once("the store listens on "))?.1;
    line.trim().rsplit_once(':')?.1.parse().ok()
}

pub fn wait_for(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear within {timeout:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A launcher running in the background, killed if the test ends before it does.
pub struct Running {
    child: Child,
    out: tempfile::TempDir,
    pub started: Instant,
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From start to exit, as seen by polling.
    pub took: Duration,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let out = tempfile::tempdir().unwrap();
        let file = |name: &str| Stdio::from(std::fs::File::create(out.path().join(name)).unwrap());
        let child = cmd.stdout(file("stdout")).stderr(file("stderr")).spawn().expect("start fomaml-launch");
        Running { child, out, started: Instant::now() }
    }

    /// The port of the store this launcher (node 0, `--master-port 0`) hosts, once it says.
    pub fn store_port(&mut self, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = std::fs::read_to_string(self.out.path().join("stderr")).unwrap_or_default();
            if let Some(port) = reported_port(&stderr) {
                return port;
            }
            assert!(self.is_running(), "fomaml-launch exited before reporting its port:\n{stderr}");
            assert!(Instant::now() < deadline, "no port reported within {timeout:?}:\n{stderr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits up to `timeout` for the launcher to exit; a launcher still running then fails the test.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                self.stop();
                let err = std::fs::read_to_string(self.out.path().join("stderr")).unwrap_or_default();
                panic!("fomaml-launch still running after {timeout:?}; its stderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = self.started.elapsed();
        let read = |name: &str| std::fs::read_to_string(self.out.path().join(name)).unwrap();
        Finished { status, stdout: read("stdout"), stderr: read("stderr"), took }
    }
}

impl Running {
    /// SIGKILL to the launcher alone (an OOM kill): it cannot stop its workers itself.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM first, so that the launcher stops its workers too; SIGKILL if it lingers.
    fn stop(&mut self) {
        if self.is_running() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
