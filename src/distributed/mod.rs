//! Communication across ranks.
//!
//! `Dist::from_env` joins the run that `fomaml-launch` (or torchrun) started: the launcher (or rank 0) hosts the
//! rendezvous store (`fomaml_store`) at MASTER_ADDR:MASTER_PORT, every rank connects to it with
//! the run id, and the ranks build a communicator: NCCL on the tensors' device pointers when the
//! model is on a GPU (`nccl`, with `nccl_lib` finding NCCL, `cuda` the driver calls and `watchdog`
//! the timeout), the CPU backend over TCP otherwise (`tcp`).

pub mod comm;
pub mod cuda;
pub mod fsdp;
pub mod layout;
mod link;
pub mod nccl;
pub mod nccl_lib;
pub mod tcp;
mod tcp_setup;
pub mod watchdog;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};
pub use comm::{CommError, Communicator, OpDesc, OpKind, SingleRank};
pub use fomaml_store::{StoreClient, StoreError, StoreServer, StoreServerHandle};
pub use fsdp::SharedComm;
pub use nccl::NcclComm;
use tch::Device;
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

/// Which communicator a run uses (`trainer.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// NCCL when the model is on a GPU, the CPU backend otherwise; no communicator on one rank.
    Auto,
    /// NCCL, also on one rank (the NCCL path end to end on one GPU).
    Nccl,
    /// The CPU backend over TCP (tensors on the CPU).
    Cpu,
}

impl Backend {
    /// Whether ranks on `device` talk through NCCL; an error when the pair cannot work.
    pub fn uses_nccl(self, device: Device) -> anyhow::Result<bool> {
        match (self, device) {
            (Backend::Nccl, Device::Cuda(_)) | (Backend::Auto, Device::Cuda(_)) => Ok(true),
            (Backend::Nccl, d) => bail!("trainer.backend: nccl needs the model on a GPU, but trainer.device is {d:?}"),
            (Backend::Cpu, Device::Cuda(_)) => {
                bail!("trainer.backend: cpu carries CPU tensors only, but trainer.device is a GPU; use nccl or auto")
            }
            _ => Ok(false),
        }
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

    /// From torchrun's variables with the CPU backend; a single rank when they are absent.
    pub fn from_env() -> anyhow::Result<Dist> {
        Dist::join(DistEnv::from_env()?.as_ref(), Device::Cpu, Backend::Auto)
    }

    /// Joins the run `env` describes (a single rank when `None`) with the communicator that
    /// `backend` picks for a model on `device`.
    pub fn join(env: Option<&DistEnv>, device: Device, backend: Backend) -> anyhow::Result<Dist> {
        let nccl = backend.uses_nccl(device)?;
        match (env, device) {
            (Some(env), _) => Dist::connect(env, nccl.then_some(device)),
            (None, Device::Cuda(ordinal)) if backend == Backend::Nccl => {
                let timeout = timeout_from(std::env::var(TIMEOUT_ENV).ok())?;
                let comm = NcclComm::single(ordinal, timeout)?;
                Ok(Dist { comm: shared(comm), ..Dist::single() })
            }
            (None, _) => Ok(Dist::single()),
        }
    }

    /// Rank 0 hosts the store unless the launcher does; every rank connects to it (retrying until
    /// the timeout: rank 0 may start later) and joins the CPU backend's mesh, or NCCL's on
    /// `nccl_device`.
    pub fn connect(env: &DistEnv, nccl_device: Option<Device>) -> anyhow::Result<Dist> {
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
        let comm = match nccl_device {
            Some(Device::Cuda(ordinal)) => {
                // The watchdog's own connection: it publishes progress while this thread computes.
                let progress = StoreClient::connect(&addr, &env.run_id, env.timeout).ok();
                let c =
                    NcclComm::connect(&mut store, progress, env.rank, env.world_size, ordinal, &group, env.timeout)?;
                shared(c)
            }
            _ => shared(TcpComm::connect(&mut store, env.rank, env.world_size, &group, env.timeout)?),
        };
        Ok(Dist {
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            comm,
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
