//! The launchers' rendezvous through the store that node 0's launcher hosts.
//!
//! Node 0's launcher binds the store (`fomaml_store`, refusing any other run id) before it starts
//! a worker and serves it until it exits, across restarts; its workers and the other nodes'
//! launchers and workers are its clients. It binds the master address itself on a single node (so
//! the store is not exposed beyond what the user named) and every interface (0.0.0.0, or `::` for
//! an IPv6 master address) on several: the other nodes reach it through whichever interface
//! MASTER_ADDR resolves to for them, which need not be what that name resolves to on node 0
//! (Debian maps a host's own name to 127.0.1.1, say).
//!
//! Across nodes, through keys under `launch/` (workers should keep their keys elsewhere, and
//! under the attempt, as torch's agent store does with `/worker/attempt_<k>`):
//! - each attempt starts only when all --nnodes launchers joined it; after --rdzv-timeout the
//!   waiting launchers fail, naming the node ranks that did not come;
//! - a node whose worker fails says so for the attempt; the others notice within `POLL`, stop their
//!   workers, and every node restarts (or not) by the same rule: --nnodes, --nproc and
//!   --max-restarts are checked equal when a node joins;
//! - a launcher that gives up (restarts spent, a signal, an error) says so, and launchers waiting
//!   to join the next attempt stop at once rather than at the timeout;
//! - node 0's launcher keeps the store up until every node's workers succeeded (at most
//!   --rdzv-timeout), or briefly after a failure so that the others can read why.
//!
//! Not coordinated: a launcher killed outright (SIGKILL, a lost machine) says nothing; the others'
//! workers then fail on their own collective timeout, and if it was node 0 the others lose the
//! store and stop. A node whose workers succeeded is not restarted, so a failure elsewhere after
//! that ends the run instead of restarting it.

use std::io;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fomaml_store::{format_secs, StoreClient, StoreError, StoreServer, StoreServerHandle};

use crate::workers::Signals;
use crate::Args;

/// How often a launcher looks at the store for other nodes' news while its workers run.
const POLL: Duration = Duration::from_millis(500);
/// How long node 0's launcher keeps the store up after giving up, for the others to read why.
const LINGER: Duration = Duration::from_secs(3);
const ABANDONED: &str = "launch/abandoned";

pub struct Rendezvous {
    node_rank: usize,
    nnodes: usize,
    port: u16,
    timeout: Duration,
    /// Only with several nodes: one node needs no coordination.
    client: Option<StoreClient>,
    last_poll: Instant,
    /// Why the store connection is gone, once it is: nothing can be coordinated after that.
    lost: Option<String>,
    // Declared last: dropped after the client, so node 0 serves its own connection to the end.
    _server: Option<StoreServerHandle>,
}

/// `host:port`, bracketing an IPv6 host.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn is_ipv6(host: &str) -> bool {
    host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::Ipv6Addr>().is_ok()
}

impl Rendezvous {
    /// Node 0 binds and serves the store; the other nodes connect to it (retrying until
    /// --rdzv-timeout: node 0 may start later) and check that they were started alike.
    pub fn establish(args: &Args, run_id: &str) -> Result<Rendezvous> {
        let master = args.master_addr.as_deref().unwrap_or("127.0.0.1");
        let timeout = Duration::from_secs_f64(args.rdzv_timeout);
        let spec = format!("--nnodes {} --nproc {} --max-restarts {}", args.nnodes, args.nproc, args.max_restarts);
        let mut r = Rendezvous {
            node_rank: args.node_rank,
            nnodes: args.nnodes,
            port: args.master_port,
            timeout,
            client: None,
            last_poll: Instant::now(),
            lost: None,
            _server: None,
        };
        if args.node_rank > 0 {
            let addr = host_port(master, args.master_port);
            let node = args.node_rank;
            let mut client = StoreClient::connect(&addr, run_id, timeout).map_err(|e| match e {
                StoreError::WrongRun { addr, theirs, ours } => anyhow::anyhow!(
                    "node {node}: the store at {addr} belongs to run {theirs:?}, but this launcher's --rdzv-id is {ours:?}"
                ),
                e => anyhow::anyhow!("node {node} could not join node 0: {e}"),
            })?;
            let theirs = client
                .get("launch/spec")
                .map_err(|e| anyhow::anyhow!("node {node}: reading node 0's settings: {e}"))?;
            let theirs = String::from_utf8_lossy(&theirs);
            if theirs != spec {
                bail!("node {node} was started with {spec} but node 0 with {theirs}: every node needs the same values");
            }
            r.client = Some(client);
            return Ok(r);
        }
        let host = master.trim_start_matches('[').trim_end_matches(']');
        let bind_host = match (args.standalone, args.nnodes) {
            (true, _) => "127.0.0.1",
            (false, 1) => host,
            _ if is_ipv6(host) => "::",
            _ => "0.0.0.0",
        };
        let port = if args.standalone { 0 } else { args.master_port };
        let server = StoreServer::bind((bind_host, port), run_id).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => anyhow::anyhow!(
                "port {port} is already in use on this machine, so the store cannot listen on {}: pick a free --master-port, or use --standalone on a single node",
                host_port(bind_host, port)
            ),
            io::ErrorKind::AddrNotAvailable => anyhow::anyhow!(
                "cannot host the store on {}: is --master-addr {master} an address of this machine? ({e})",
                host_port(bind_host, port)
            ),
            _ => anyhow::anyhow!("cannot host the store on {}: {e}", host_port(bind_host, port)),
        })?;
        r.port = server.local_addr().context("the store's address")?.port();
        r._server = Some(server.spawn().context("starting the store's thread")?);
        if args.nnodes > 1 {
            let loopback = if bind_host == "::" { "::1" } else { "127.0.0.1" };
            let mut client = StoreClient::connect(&host_port(loopback, r.port), run_id, timeout)
                .context("node 0 could not connect to its own store")?;
            client.set("launch/spec", spec.as_bytes()).context("node 0 publishing its settings")?;
            r.client = Some(client);
        }
        Ok(r)
    }

    /// The store's port (chosen by the system under --standalone).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether there are other nodes to coordinate with.
    fn coordinating(&self) -> bool {
        self.client.is_some()
    }

    fn store(&mut self) -> Result<&mut StoreClient> {
        if let Some(why) = &self.lost {
            bail!("{why}");
        }
        self.client.as_mut().context("no store connection")
    }

    fn attempt_key(attempt: u32, what: &str) -> String {
        format!("launch/attempt_{attempt}/{what}")
    }

    /// The value of `key` if it exists now.
    fn peek(&mut self, key: &str) -> Result<Option<String>> {
        match self.store()?.get_timeout(key, Duration::ZERO) {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(StoreError::Timeout { .. }) => Ok(None),
            Err(e) => Err(self.lose(e)),
        }
    }

    fn lose(&mut self, e: StoreError) -> anyhow::Error {
        let why = format!("node {} lost the store (has node 0's launcher exited?): {e}", self.node_rank);
        self.lost = Some(why.clone());
        anyhow::anyhow!(why)
    }

    /// Those of `nodes` whose key (`key_of(node)`) is missing after waiting up to `within`.
    fn missing(&mut self, nodes: &[usize], key_of: impl Fn(usize) -> String, within: Duration) -> Result<Vec<usize>> {
        let keys: Vec<String> = nodes.iter().map(|&n| key_of(n)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let store = self.store()?;
        store.set_timeout(within);
        match store.wait(&refs) {
            Ok(()) => Ok(Vec::new()),
            Err(StoreError::Timeout { missing, .. }) => {
                Ok(missing.iter().filter_map(|m| keys.iter().position(|k| k == m)).map(|i| nodes[i]).collect())
            }
            Err(e) => Err(self.lose(e)),
        }
    }

    /// Waits, up to `within`, until every node's key exists, a launcher gave up, a node finished
    /// the `previous` attempt (it will not come back), or (with `signals`) a signal arrives.
    fn wait_nodes(
        &mut self,
        key_of: impl Fn(usize) -> String + Copy,
        within: Duration,
        previous: Option<u32>,
        signals: Option<&Signals>,
    ) -> Result<Waited> {
        let deadline = Instant::now() + within;
        let all: Vec<usize> = (0..self.nnodes).collect();
        loop {
            if let Some(sig) = signals.and_then(Signals::take) {
                return Ok(Waited::Signalled(sig));
            }
            if let Some(why) = self.peek(ABANDONED)? {
                return Ok(Waited::Abandoned(why));
            }
            // A node that succeeded just as another failed: the failed one restarted, it did not.
            if let Some(k) = previous {
                let done = self.finished(k)?;
                if !done.is_empty() {
                    return Ok(Waited::Abandoned(format!(
                        "node {} finished attempt {k} and will not rejoin",
                        list(&done)
                    )));
                }
            }
            let missing = self.missing(&all, key_of, POLL.min(deadline.saturating_duration_since(Instant::now())))?;
            if missing.is_empty() {
                return Ok(Waited::All);
            }
            if Instant::now() >= deadline {
                return Ok(Waited::Missing(missing));
            }
        }
    }

    /// Returns once every node joined `attempt`; `Some(signal)` when one arrived meanwhile.
    pub fn join(&mut self, attempt: u32, signals: &Signals) -> Result<Option<i32>> {
        if self.nnodes == 1 {
            return Ok(None);
        }
        let node = self.node_rank;
        let node_key = |n: usize| Self::attempt_key(attempt, &format!("node_{n}"));
        let key = node_key(node);
        let joined = self.store()?.add(&key, 1).map_err(|e| self.lose(e))?;
        if joined > 1 {
            bail!("two launchers joined attempt {attempt} as node {node}: give each node its own --node-rank");
        }
        match self.wait_nodes(node_key, self.timeout, attempt.checked_sub(1), Some(signals))? {
            Waited::All => Ok(None),
            Waited::Signalled(sig) => Ok(Some(sig)),
            Waited::Abandoned(why) => bail!("not starting attempt {attempt}: {why}"),
            Waited::Missing(missing) => bail!(
                "attempt {attempt}: node {} did not join within {} s (--rdzv-timeout); was it started with --nnodes {}, the same --master-addr, --master-port and --rdzv-id?",
                list(&missing),
                format_secs(self.timeout),
                self.nnodes
            ),
        }
    }

    /// Why this node's workers must stop: another node failed in `attempt`, or the store is gone.
    /// Asks the store at most every `POLL`.
    pub fn peer_stopped(&mut self, attempt: u32) -> Option<String> {
        if !self.coordinating() || self.last_poll.elapsed() < POLL {
            return None;
        }
        self.last_poll = Instant::now();
        self.peek(&Self::attempt_key(attempt, "stop")).unwrap_or_else(|e| Some(e.to_string()))
    }

    /// Tells the other nodes that this one failed in `attempt` (they stop their workers).
    pub fn publish_failure(&mut self, attempt: u32, why: &str) {
        if self.coordinating() && self.lost.is_none() {
            let key = Self::attempt_key(attempt, "stop");
            if let Ok(None) = self.peek(&key) {
                let _ = self.store().map(|s| s.set(&key, why.as_bytes()));
            }
        }
    }

    /// The nodes whose workers all succeeded in `attempt`.
    fn finished(&mut self, attempt: u32) -> Result<Vec<usize>> {
        let all: Vec<usize> = (0..self.nnodes).collect();
        let missing = self.missing(&all, |n| Self::attempt_key(attempt, &format!("finished_{n}")), Duration::ZERO)?;
        Ok(all.into_iter().filter(|n| !missing.contains(n)).collect())
    }

    /// Why a restart after `attempt` cannot work, if it cannot: a node already succeeded and will
    /// not rejoin, or the store is gone.
    pub fn restart_blocker(&mut self, attempt: u32) -> Option<String> {
        if !self.coordinating() {
            return None;
        }
        match self.finished(attempt) {
            Err(e) => Some(e.to_string()),
            Ok(done) if done.is_empty() => None,
            Ok(done) => Some(format!("node {} already finished and would not rejoin", list(&done))),
        }
    }

    /// This node's workers succeeded in `attempt`. Node 0 keeps the store up until every node's
    /// have (at most --rdzv-timeout); the others leave at once.
    pub fn succeeded(&mut self, attempt: u32, signals: &Signals) {
        if !self.coordinating() {
            return;
        }
        let key = Self::attempt_key(attempt, &format!("finished_{}", self.node_rank));
        if let Err(e) = self.store().and_then(|s| s.set(&key, b"1").map_err(Into::into)) {
            eprintln!(
                "fomaml-launch: warning: could not tell the other nodes that node {} finished: {e:#}",
                self.node_rank
            );
            return;
        }
        self.leave();
        if self.node_rank != 0 {
            return;
        }
        let waited = self.wait_nodes(
            |n| Self::attempt_key(attempt, &format!("finished_{n}")),
            self.timeout,
            None,
            Some(signals),
        );
        match waited {
            Ok(Waited::All) => {}
            Ok(Waited::Signalled(sig)) => {
                eprintln!("fomaml-launch: received signal {sig}; closing the store without waiting for the other nodes")
            }
            Ok(Waited::Abandoned(why)) => {
                eprintln!("fomaml-launch: warning: this node's workers succeeded, but {why}")
            }
            Ok(Waited::Missing(missing)) => eprintln!(
                "fomaml-launch: warning: node {} did not finish within {} s (--rdzv-timeout); closing the store",
                list(&missing),
                format_secs(self.timeout)
            ),
            Err(e) => eprintln!("fomaml-launch: warning: waiting for the other nodes to finish: {e:#}"),
        }
    }

    /// This launcher gives up: the other nodes stop their workers of `attempt` and do not restart.
    pub fn abandon(&mut self, attempt: u32, why: &str) {
        if !self.coordinating() || self.lost.is_some() {
            return;
        }
        self.publish_failure(attempt, why);
        if let Ok(None) = self.peek(ABANDONED) {
            let _ = self.store().map(|s| s.set(ABANDONED, why.as_bytes()));
        }
        self.leave();
        if self.node_rank == 0 {
            // Only the nodes that joined this attempt may still be listening.
            let others: Vec<usize> = (1..self.nnodes).collect();
            let absent = self.missing(&others, |n| Self::attempt_key(attempt, &format!("node_{n}")), Duration::ZERO);
            let absent = absent.unwrap_or_default();
            let joined: Vec<usize> = others.into_iter().filter(|n| !absent.contains(n)).collect();
            let _ = self.missing(&joined, |n| format!("launch/left_{n}"), LINGER);
        }
    }

    fn leave(&mut self) {
        let key = format!("launch/left_{}", self.node_rank);
        let _ = self.store().map(|s| s.set(&key, b"1"));
    }
}

enum Waited {
    All,
    Missing(Vec<usize>),
    Abandoned(String),
    Signalled(i32),
}

/// `1`, `1, 3`.
fn list(nodes: &[usize]) -> String {
    nodes.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}
