//! Communication across ranks.
//!
//! `Dist::from_env` joins the run that `fomaml-launch` (or torchrun) started: the launcher (or rank 0) hosts the
//! rendezvous store (`fomaml_store`) at MASTER_ADDR:MASTER_PORT, every rank connects to it with
//! the run id, and the ranks build a communicator. Today that is the CPU backend (`tcp`); the NCCL
//! backend will implement the same `Communicator` trait on device pointers. `nccl_lib` finds NCCL.

pub mod comm;
pub mod fsdp;
mod link;
pub mod nccl_lib;
pub mod tcp;
mod tcp_setup;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};
pub use comm::{CommError, Communicator, OpDesc, OpKind, SingleRank};
pub use fomaml_store::{StoreClient, StoreError, StoreServer, StoreServerHandle};
pub use fsdp::SharedComm;
pub use tcp::TcpComm;

/// Seconds a collective (and the rendezvous) may wait before failing.
pub const TIMEOUT_ENV: &str = "FOMAML_COLLECTIVE_TIMEOUT_S";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// torchrun's run id when none is given.
const DEFAULT_RUN_ID: &str = "none";
/// Store keys of the communicator built by `from_env`, under the attempt's prefix.
const COMM_GROUP: &str = "comm/default";

/// What the launcher tells a rank, under torchrun's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub run_id: String,
    pub timeout: Duration,
    /// The launcher hosts the store (torchrun's TORCHELASTIC_USE_AGENT_STORE); otherwise rank 0 does.
    pub agent_store: bool,
    /// TORCHELASTIC_RESTART_COUNT: the launcher's store outlives a failed attempt, so each
    /// attempt keeps its keys apart (torch's `/worker/attempt_<k>`).
    pub attempt: u32,
}

impl DistEnv {
    /// `None` when WORLD_SIZE is unset or 1: a plain single-process run.
    pub fn from_env() -> anyhow::Result<Option<DistEnv>> {
        DistEnv::from_lookup(|k| std::env::var(k).ok())
    }

    /// As `from_env`, reading variables through `var` (tests pass a map).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<DistEnv>> {
        let timeout = timeout_from(var(TIMEOUT_ENV))?;
        let Some(world) = var("WORLD_SIZE") else { return Ok(None) };
        let world_size: usize = parse("WORLD_SIZE", &world)?;
        if world_size == 0 {
            bail!("WORLD_SIZE is 0");
        }
        if world_size == 1 {
            return Ok(None);
        }
        let need = |k: &str| var(k).with_context(|| format!("{k} is not set but WORLD_SIZE={world_size} is"));
        let rank: usize = parse("RANK", &need("RANK")?)?;
        if rank >= world_size {
            bail!("RANK={rank} is not below WORLD_SIZE={world_size}");
        }
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => parse("LOCAL_RANK", &v)?,
            None => rank,
        };
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr: need("MASTER_ADDR")?,
            master_port: parse("MASTER_PORT", &need("MASTER_PORT")?)?,
            run_id: var("TORCHELASTIC_RUN_ID").unwrap_or_else(|| DEFAULT_RUN_ID.into()),
            timeout,
            agent_store: var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            attempt: match var("TORCHELASTIC_RESTART_COUNT") {
                Some(v) => parse("TORCHELASTIC_RESTART_COUNT", &v)?,
                None => 0,
            },
        }))
    }

    pub fn store_addr(&self) -> String {
        // Bracketed so that an IPv6 MASTER_ADDR still parses as host:port.
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }
}

fn parse<T: std::str::FromStr>(name: &str, v: &str) -> anyhow::Result<T> {
    v.trim().parse().ok().with_context(|| format!("{name}={v:?} is not a valid number"))
}

/// FOMAML_COLLECTIVE_TIMEOUT_S (seconds, fractions allowed), default 300.
pub fn timeout_from(v: Option<String>) -> anyhow::Result<Duration> {
    let Some(v) = v else { return Ok(DEFAULT_TIMEOUT) };
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
        _ => bail!("{TIMEOUT_ENV}={v:?}: expected a positive number of seconds"),
    }
}

/// This process's place in the run and its communicator.
pub struct Dist {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub comm: SharedComm,
    store: Option<StoreClient>,
    // Declared last: dropped after the client and communicator, so rank 0 serves the store
    // until its own users are gone.
    _server: Option<StoreServerHandle>,
}

impl Dist {
    /// One rank, no store: every collective is the identity.
    pub fn single() -> Dist {
        Dist { rank: 0, world_size: 1, local_rank: 0, comm: shared(SingleRank::new()), store: None, _server: None }
    }

    /// From torchrun's variables; a single rank when they are absent (see `DistEnv::from_env`).
    pub fn from_env() -> anyhow::Result<Dist> {
        match DistEnv::from_env()? {
            None => Ok(Dist::single()),
            Some(env) => Dist::connect(&env),
        }
    }

    /// Rank 0 hosts the store unless the launcher does; every rank connects to it (retrying until the timeout: rank 0 may
    /// start later) and joins the CPU backend's mesh.
    pub fn connect(env: &DistEnv) -> anyhow::Result<Dist> {
        let addr = env.store_addr();
        let server = if env.rank == 0 && !env.agent_store {
            let s = StoreServer::bind(addr.as_str(), env.run_id.clone())
                .with_context(|| format!("rank 0 could not host the store at {addr}"))?;
            Some(s.spawn().context("starting the store's thread")?)
        } else {
            None
        };
        let mut store = StoreClient::connect(&addr, &env.run_id, env.timeout)?;
        let group = format!("worker/attempt_{}/{COMM_GROUP}", env.attempt);
        let comm = TcpComm::connect(&mut store, env.rank, env.world_size, &group, env.timeout)?;
        Ok(Dist {
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            comm: shared(comm),
            store: Some(store),
            _server: server,
        })
    }

    /// The rendezvous store (for the NCCL unique id, say); `None` on a single rank.
    pub fn store(&mut self) -> Option<&mut StoreClient> {
        self.store.as_mut()
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

/// A communicator behind the shared handle the trainer and the sharded model both use.
pub fn shared(comm: impl Communicator + 'static) -> SharedComm {
    Rc::new(RefCell::new(Box::new(comm)))
}
