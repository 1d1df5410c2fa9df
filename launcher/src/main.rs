//! `fomaml-launch`: torchrun's mirror. Starts `--nproc` copies of a command with torchrun's
//! environment, watches them, stops the group when one fails, restarts it while restarts remain,
//! and reports the root cause. It never links libtorch.

mod report;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;

/// Starts one process per rank with torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
/// MASTER_ADDR, MASTER_PORT, TORCHELASTIC_*), e.g.
///   fomaml-launch --nproc 4 -- fomaml train --config configs/x.yaml
#[derive(Debug, Parser)]
#[command(name = "fomaml-launch", version)]
pub struct Args {
    /// Processes per node (one per GPU); LOCAL_RANK binds each to a GPU.
    #[arg(long, alias = "nproc-per-node", alias = "nproc_per_node", default_value_t = 1)]
    pub nproc: usize,
    /// Number of nodes. Only 1 is supported until multi-node rendezvous lands.
    #[arg(long, env = "SLURM_NNODES", default_value_t = 1)]
    pub nnodes: usize,
    /// This node's rank among the nodes.
    #[arg(long, alias = "node_rank", env = "SLURM_NODEID", default_value_t = 0)]
    pub node_rank: usize,
    /// Address of the rank-0 node.
    #[arg(long, alias = "master_addr", default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port of the rank-0 node's store.
    #[arg(long, alias = "master_port", default_value_t = 29500)]
    pub master_port: u16,
    /// Single node on a free port (overrides --master-addr/--master-port).
    #[arg(long)]
    pub standalone: bool,
    /// Times the whole group is restarted after a failure (the trainer resumes from its newest checkpoint).
    #[arg(long, alias = "max_restarts", default_value_t = 0)]
    pub max_restarts: u32,
    /// Seconds between checks of the workers.
    #[arg(long, alias = "monitor_interval", default_value_t = 0.1)]
    pub monitor_interval: f64,
    /// Seconds a worker gets between SIGTERM and SIGKILL when the group is stopped.
    #[arg(long, default_value_t = 10.0)]
    pub stop_grace: f64,
    /// Directory for <run_id>/attempt_<k>/<local_rank>/{stdout,stderr}.log and error.json.
    #[arg(long, alias = "log_dir")]
    pub log_dir: Option<PathBuf>,
    /// Write streams to the log files only: 0 none, 1 stdout, 2 stderr, 3 both (needs --log-dir).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub redirects: u8,
    /// Write streams to the log files and the console, prefixed by rank: 0-3 as --redirects.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub tee: u8,
    /// Identifies this run; every rank sees it as TORCHELASTIC_RUN_ID.
    #[arg(long, alias = "run_id")]
    pub run_id: Option<String>,
    /// The command each rank runs, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

impl Args {
    fn validate(&mut self) -> Result<()> {
        if self.nproc == 0 {
            bail!("--nproc must be at least 1");
        }
        if self.nnodes != 1 {
            bail!("--nnodes {}: multi-node rendezvous is not implemented yet; run one node (--nnodes 1)", self.nnodes);
        }
        if self.node_rank != 0 {
            bail!("--node-rank {} with --nnodes 1: the only node has rank 0", self.node_rank);
        }
        if (self.redirects | self.tee) != 0 && self.log_dir.is_none() {
            bail!("--redirects and --tee write to per-rank log files: give --log-dir");
        }
        let interval_ok = self.monitor_interval.is_finite() && self.monitor_interval > 0.0;
        let grace_ok = self.stop_grace.is_finite() && self.stop_grace >= 0.0;
        if !interval_ok || !grace_ok {
            bail!("--monitor-interval must be positive and --stop-grace non-negative");
        }
        if self.standalone {
            self.master_addr = "127.0.0.1".into();
            self.master_port = workers::free_port()?;
        }
        Ok(())
    }
}

fn run(mut args: Args) -> Result<i32> {
    args.validate()?;
    let run_id = args.run_id.clone().unwrap_or_else(workers::new_run_id);
    let signals = workers::install_signal_forwarding()?;
    let mut attempt = 0;
    loop {
        let mut group = workers::Group::start(&args, &run_id, attempt)?;
        let outcome = group.watch(Duration::from_secs_f64(args.monitor_interval), &signals);
        group.stop(Duration::from_secs_f64(args.stop_grace));
        match outcome {
            workers::Outcome::Succeeded => return Ok(0),
            workers::Outcome::Signalled(sig) => {
                eprintln!("fomaml-launch: received signal {sig}; workers stopped");
                return Ok(128 + sig);
            }
            workers::Outcome::Failed(failures) => {
                if attempt < args.max_restarts {
                    attempt += 1;
                    eprintln!(
                        "fomaml-launch: {} failed; restarting the group (attempt {attempt} of {} restarts)",
                        report::describe(&failures[0]),
                        args.max_restarts
                    );
                    continue;
                }
                eprint!("{}", report::render(&args.command, &failures));
                return Ok(1);
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("fomaml-launch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
