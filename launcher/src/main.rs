//! `fomaml-launch`: torchrun's mirror. Starts `--nproc` copies of a command with torchrun's
//! environment, watches them, stops the group when one fails, restarts it while restarts remain,
//! and reports the root cause. Node 0's launcher hosts the rendezvous store; with several nodes the
//! launchers join through it (see `rdzv` for what is coordinated). It never links libtorch.

mod rdzv;
mod report;
mod slurm;
mod torchrun;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

use rdzv::Rendezvous;

const AFTER_HELP: &str = "\
Examples (torchrun's command lines run as they are, with fomaml-launch in place of torchrun):
  fomaml-launch --nproc-per-node 4 fomaml train --config configs/x.yaml
  fomaml-launch --nproc-per-node gpu -- fomaml train --config configs/x.yaml
  # on each of two nodes, NODE being 0 on the one called n1 and 1 on the other:
  fomaml-launch --nnodes 2 --node-rank NODE --rdzv-endpoint n1:29500 --rdzv-id exp7 --nproc-per-node 4 \\
      fomaml train ...
  # under Slurm (one task per node), the node count, rank, address and run id come from Slurm:
  srun --ntasks-per-node 1 fomaml-launch --nproc-per-node 4 -- fomaml train ...

Each rank gets RANK, LOCAL_RANK, GROUP_RANK, ROLE_RANK, ROLE_NAME, WORLD_SIZE, LOCAL_WORLD_SIZE,
GROUP_WORLD_SIZE, ROLE_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT,
TORCHELASTIC_MAX_RESTARTS, TORCHELASTIC_RUN_ID, TORCHELASTIC_ERROR_FILE,
TORCHELASTIC_USE_AGENT_STORE=True (node 0's launcher serves the store at MASTER_ADDR:MASTER_PORT
for as long as it runs, across restarts), and OMP_NUM_THREADS unless it is set.

torchrun's underscore spellings are accepted too: --nproc_per_node, --node_rank, --master_addr,
--master_port, --max_restarts, --monitor_interval, --log_dir, --rdzv_id, --rdzv_endpoint,
--rdzv_backend, --rdzv_timeout, --local_ranks_filter; and -r / -t for --redirects / --tee.
--run-id is an older spelling of --rdzv-id. Not elastic: --nnodes takes one number (or N:N).";

/// Starts one process per rank with torchrun's environment, watches them, restarts them, and
/// reports the root cause of a failure; node 0's launcher hosts the rendezvous store.
#[derive(Debug, Parser)]
#[command(name = "fomaml-launch", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Processes per node: a number, gpu (one per visible GPU), cpu (one per core), or auto (gpu
    /// when there are GPUs, else cpu). LOCAL_RANK binds each to a GPU.
    #[arg(long = "nproc-per-node", visible_alias = "nproc", alias = "nproc_per_node", default_value = "1",
          value_parser = torchrun::parse_nproc)]
    pub nproc_per_node: torchrun::Nproc,
    /// --nproc-per-node as a number (set by `resolve`).
    #[arg(skip)]
    pub nproc: usize,
    /// Number of nodes, each running one fomaml-launch with the same flags but --node-rank (torchrun's
    /// N:N is accepted; an elastic MIN:MAX is not). Default: SLURM_NNODES under Slurm, else 1.
    #[arg(long, env = "SLURM_NNODES", default_value = "1", value_parser = torchrun::parse_nnodes)]
    pub nnodes: usize,
    /// This node's rank among the nodes (0 hosts the store); ranks of its workers are
    /// node_rank * nproc + local_rank. Default: SLURM_NODEID under Slurm (ignored with --nnodes 1), else 0.
    #[arg(long, alias = "node_rank", env = "SLURM_NODEID", default_value_t = 0)]
    pub node_rank: usize,
    /// Address of node 0, reachable from every node. Default with several nodes under Slurm: the
    /// first host of SLURM_JOB_NODELIST (or SLURM_NODELIST); else 127.0.0.1.
    #[arg(long, alias = "master_addr")]
    pub master_addr: Option<String>,
    /// Port of the store that node 0's launcher hosts; it must be free on node 0. 0 on node 0: a
    /// port the system picks, printed as "the store listens on HOST:PORT" for the other nodes.
    #[arg(long, alias = "master_port", default_value_t = 29500)]
    pub master_port: u16,
    /// torchrun's HOST[:PORT] of the rendezvous: node 0's address (--master-addr) and the store's
    /// port (--master-port).
    #[arg(long, alias = "rdzv_endpoint", value_parser = torchrun::parse_endpoint)]
    pub rdzv_endpoint: Option<torchrun::Endpoint>,
    /// torchrun's rendezvous backend: static or c10d, which both mean node 0's launcher hosts the
    /// store; others are refused.
    #[arg(long, alias = "rdzv_backend", value_parser = torchrun::parse_backend)]
    pub rdzv_backend: Option<String>,
    /// Single node on a free port of 127.0.0.1 (overrides --master-addr/--master-port).
    #[arg(long)]
    pub standalone: bool,
    /// Seconds the launchers wait for every node to join an attempt (and node 0's for the others
    /// to finish, and the others for node 0's store to come up).
    #[arg(long, alias = "rdzv_timeout", default_value_t = 300.0)]
    pub rdzv_timeout: f64,
    /// Times the whole group (every node's) is restarted after a failure (the trainer resumes from its newest checkpoint).
    #[arg(long, alias = "max_restarts", default_value_t = 0)]
    pub max_restarts: u32,
    /// Seconds between checks of the workers.
    #[arg(long, alias = "monitor_interval", default_value_t = 0.1)]
    pub monitor_interval: f64,
    /// Seconds a worker gets between SIGTERM and SIGKILL when the group is stopped (after a failure, or a
    /// second signal). The first SIGINT, SIGTERM, SIGUSR1 or SIGUSR2 is passed on instead, and the
    /// workers get the time to save and stop (exit code 75, which this launcher then exits with).
    #[arg(long, default_value_t = 10.0)]
    pub stop_grace: f64,
    /// Directory for <run_id>/attempt_<k>/<rank>/{stdout,stderr}.log and error.json (rank = local
    /// rank on a single node; the global rank keeps nodes sharing a file system apart).
    #[arg(long, alias = "log_dir")]
    pub log_dir: Option<PathBuf>,
    /// Write streams to the log files only: 0 none, 1 stdout, 2 stderr, 3 both, for every rank or
    /// per local rank (0:1,1:2) (needs --log-dir).
    #[arg(long, short = 'r', default_value = "0", value_parser = torchrun::parse_streams)]
    pub redirects: torchrun::Streams,
    /// Write streams to the log files and the console, prefixed by rank: as --redirects.
    #[arg(long, short = 't', default_value = "0", value_parser = torchrun::parse_streams)]
    pub tee: torchrun::Streams,
    /// Only these local ranks' output reaches the console (e.g. 0 or 0,1); log files get all.
    #[arg(long, alias = "local_ranks_filter", value_parser = torchrun::parse_ranks)]
    pub local_ranks_filter: Option<torchrun::RankFilter>,
    /// Identifies this run (TORCHELASTIC_RUN_ID); the store refuses launchers and ranks of any
    /// other. Several nodes need the same one: default SLURM_JOB_ID there, else required. A
    /// single node makes one up.
    #[arg(long, alias = "rdzv_id", alias = "run-id", alias = "run_id")]
    pub rdzv_id: Option<String>,
    /// The command each rank runs (after `--`, or after the last flag as torchrun takes it).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
    /// Where --node-rank came from, for messages and for --nnodes 1 to override it.
    #[arg(skip)]
    node_rank_from_slurm: bool,
    /// Whether --master-addr / --master-port were given (they must agree with --rdzv-endpoint).
    #[arg(skip)]
    master_given: (bool, bool),
}

impl Args {
    /// Checks the flags and fills in what Slurm or --standalone decide.
    fn resolve(&mut self) -> Result<()> {
        self.nproc = self.nproc_per_node.resolve(torchrun::visible_gpus()).map_err(anyhow::Error::msg)?;
        if let Some(endpoint) = self.rdzv_endpoint.clone() {
            self.take_endpoint(endpoint)?;
        }
        if self.nnodes == 0 {
            bail!("--nnodes must be at least 1");
        }
        // An explicit single node is the whole run, whichever node of a Slurm job it is on.
        if self.nnodes == 1 && self.node_rank_from_slurm {
            self.node_rank = 0;
        }
        if self.node_rank >= self.nnodes {
            let from = if self.node_rank_from_slurm { " (from SLURM_NODEID)" } else { "" };
            bail!("--node-rank {}{from} must be below --nnodes {}", self.node_rank, self.nnodes);
        }
        if self.standalone && self.nnodes > 1 {
            bail!("--standalone is for a single node, but --nnodes is {}", self.nnodes);
        }
        if (self.redirects.any() || self.tee.any()) && self.log_dir.is_none() {
            bail!("--redirects and --tee write to per-rank log files: give --log-dir");
        }
        let interval_ok = self.monitor_interval.is_finite() && self.monitor_interval > 0.0;
        let grace_ok = self.stop_grace.is_finite() && self.stop_grace >= 0.0;
        if !interval_ok || !grace_ok {
            bail!("--monitor-interval must be positive and --stop-grace non-negative");
        }
        if !(self.rdzv_timeout.is_finite() && self.rdzv_timeout > 0.0) {
            bail!("--rdzv-timeout {} must be a positive number of seconds", self.rdzv_timeout);
        }
        if self.standalone {
            self.master_addr = Some("127.0.0.1".into());
        }
        // One node needs no name that other machines resolve: its workers reach it on 127.0.0.1,
        // while the job's first host may be another machine (several launches in one allocation).
        if self.master_addr.is_none() && self.nnodes > 1 {
            if let Some((var, list)) = slurm::nodelist_from_env() {
                let first = slurm::first_host(&list).map_err(|e| anyhow::anyhow!("{var}: {e}; give --master-addr"))?;
                self.master_addr = Some(first);
            }
        }
        if self.master_addr.is_none() {
            self.master_addr = Some("127.0.0.1".into());
        }
        if self.rdzv_id.is_none() && self.nnodes > 1 {
            // Each node would otherwise make up its own and the store would refuse all but node 0's.
            match std::env::var("SLURM_JOB_ID") {
                Ok(job) if !job.is_empty() => self.rdzv_id = Some(job),
                _ => bail!("--nnodes {} needs the same --rdzv-id on every node, e.g. the job's id", self.nnodes),
            }
        }
        Ok(())
    }
}

impl Args {
    /// --rdzv-endpoint as --master-addr and --master-port; refused where those say otherwise.
    fn take_endpoint(&mut self, endpoint: torchrun::Endpoint) -> Result<()> {
        let (addr_given, port_given) = self.master_given;
        if addr_given && self.master_addr.as_deref() != Some(endpoint.host.as_str()) {
            bail!(
                "--rdzv-endpoint {} and --master-addr {} name different hosts: give one",
                endpoint.host,
                self.master_addr.as_deref().unwrap_or_default()
            );
        }
        if let Some(port) = endpoint.port {
            if port_given && port != self.master_port {
                bail!("--rdzv-endpoint port {port} and --master-port {} differ: give one", self.master_port);
            }
            self.master_port = port;
        }
        self.master_addr = Some(endpoint.host);
        Ok(())
    }
}

/// Runs attempts until one succeeds, restarts are spent, or a signal arrives; returns the exit code.
fn supervise(args: &Args, run_id: &str, rdzv: &mut Rendezvous, attempt: &mut u32) -> Result<i32> {
    let signals = workers::install_signal_forwarding()?;
    let master_addr = args.master_addr.as_deref().unwrap_or("127.0.0.1");
    let node = args.node_rank;
    let several = args.nnodes > 1;
    loop {
        if let Some(sig) = rdzv.join(*attempt, &signals)? {
            eprintln!("fomaml-launch: received signal {sig} while waiting for the other nodes");
            rdzv.abandon(*attempt, &format!("node {node} received signal {sig}"));
            return Ok(128 + sig);
        }
        let mut group = workers::Group::start(args, master_addr, run_id, *attempt)?;
        let outcome =
            group.watch(Duration::from_secs_f64(args.monitor_interval), &signals, || rdzv.peer_stopped(*attempt));
        group.stop(Duration::from_secs_f64(args.stop_grace));
        let (why, failures) = match outcome {
            workers::Outcome::Succeeded => {
                rdzv.succeeded(*attempt, &signals);
                return Ok(0);
            }
            workers::Outcome::Preempted => {
                eprintln!("fomaml-launch: the workers saved a checkpoint and stopped on request; run the same command again to resume");
                rdzv.succeeded(*attempt, &signals);
                return Ok(fomaml_store::EXIT_PREEMPTED as i32);
            }
            workers::Outcome::Signalled(sig) => {
                eprintln!("fomaml-launch: received signal {sig}; workers stopped");
                rdzv.abandon(*attempt, &format!("node {node} received signal {sig}"));
                return Ok(128 + sig);
            }
            workers::Outcome::Failed(failures) => {
                let what = report::describe(&failures[0]);
                let why = if several { format!("node {node} failed: {what}") } else { what };
                rdzv.publish_failure(*attempt, &why);
                (why, Some(failures))
            }
            workers::Outcome::Stopped(why) => (why, None),
        };
        let blocker = rdzv.restart_blocker(*attempt);
        if *attempt < args.max_restarts && blocker.is_none() {
            *attempt += 1;
            eprintln!(
                "fomaml-launch: {why}; restarting the group (attempt {} of {} restarts)",
                *attempt, args.max_restarts
            );
            continue;
        }
        if let (Some(blocker), true) = (&blocker, *attempt < args.max_restarts) {
            eprintln!("fomaml-launch: not restarting: {blocker}");
        }
        match failures {
            Some(failures) => eprint!("{}", report::render(&args.command, &failures)),
            None => eprintln!("fomaml-launch: stopped this node's workers: {why}"),
        }
        rdzv.abandon(*attempt, &format!("{why} (no restart)"));
        return Ok(1);
    }
}

fn run(mut args: Args) -> Result<i32> {
    args.resolve()?;
    let run_id = args.rdzv_id.clone().unwrap_or_else(workers::new_run_id);
    // Before any worker: a busy port or a refused run id ends the launch here.
    if args.master_port == 0 && args.node_rank > 0 && !args.standalone {
        bail!("--master-port 0 picks a free port on node 0, which prints it: give node {} that port", args.node_rank);
    }
    let mut rdzv = Rendezvous::establish(&args, &run_id)?;
    if args.master_port == 0 && !args.standalone {
        let host = args.master_addr.as_deref().unwrap_or("127.0.0.1");
        eprintln!("fomaml-launch: the store listens on {}", rdzv::host_port(host, rdzv.port()));
    }
    args.master_port = rdzv.port();
    let mut attempt = 0;
    let result = supervise(&args, &run_id, &mut rdzv, &mut attempt);
    if let Err(e) = &result {
        rdzv.abandon(attempt, &format!("node {} stopped: {e:#}", args.node_rank));
    }
    result
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    args.node_rank_from_slurm = matches.value_source("node_rank") == Some(ValueSource::EnvVariable);
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    args.master_given = (given("master_addr"), given("master_port"));
    match run(args) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("fomaml-launch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
