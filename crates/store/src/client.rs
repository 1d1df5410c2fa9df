//! The store's client: one connection, one request at a time.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::format_secs;
use crate::wire::{encode_hello, read_frame, write_frame, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not reach the store at {addr} within {} s: {source}", format_secs(*.timeout))]
    Unreachable { addr: String, timeout: Duration, source: io::Error },
    #[error("the store at {addr} belongs to run {theirs}, this process is run {ours}")]
    WrongRun { addr: String, theirs: String, ours: String },
    #[error("the store at {addr}: {what} timed out after {} s (missing: {})", format_secs(*.timeout), .missing.join(", "))]
    Timeout { addr: String, what: String, timeout: Duration, missing: Vec<String> },
    #[error(
        "barrier {name:?} at the store {addr} timed out after {} s: {arrived} of {world_size} ranks arrived",
        format_secs(*.timeout)
    )]
    BarrierTimeout { addr: String, name: String, timeout: Duration, arrived: i64, world_size: usize },
    #[error("the store at {addr}: {source}")]
    Io { addr: String, source: io::Error },
    #[error("the store at {addr}: {detail}")]
    Protocol { addr: String, detail: String },
}

pub struct StoreClient {
    addr: String,
    stream: TcpStream,
    timeout: Duration,
    /// Set once a request failed half way: the connection is out of step and is not reused.
    broken: bool,
}

/// Slack on top of a blocking request's own timeout before the socket gives up: the server
/// answers a timeout itself, so this only fires when the server is gone or stuck.
const REPLY_SLACK: Duration = Duration::from_secs(10);

impl StoreClient {
    /// Connects to `addr` ("host:port"), retrying with backoff until `timeout` (the server's
    /// process may start later than ours), then introduces itself as run `run_id`. `timeout` is
    /// also the default for blocking requests.
    pub fn connect(addr: &str, run_id: &str, timeout: Duration) -> Result<StoreClient, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            match try_connect(addr, run_id, deadline) {
                Ok(stream) => return Ok(StoreClient { addr: addr.to_string(), stream, timeout, broken: false }),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(source)) => {
                    let now = Instant::now();
                    if now + backoff >= deadline {
                        return Err(StoreError::Unreachable { addr: addr.into(), timeout, source });
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// This end of the connection: the interface through which the store's host reaches us,
    /// hence the one to offer to the other ranks.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        match self.request(&Request::Set { key: key.into(), value: value.to_vec() }, Duration::ZERO)? {
            Response::Ok => Ok(()),
            other => Err(self.unexpected("set", other)),
        }
    }

    /// The value of `key`, waiting for it up to the client's timeout.
    pub fn get(&mut self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.get_timeout(key, self.timeout)
    }

    pub fn get_timeout(&mut self, key: &str, timeout: Duration) -> Result<Vec<u8>, StoreError> {
        let req = Request::Get { key: key.into(), timeout_ms: millis(timeout) };
        match self.request(&req, timeout)? {
            Response::Value(v) => Ok(v),
            Response::Timeout(missing) => {
                Err(StoreError::Timeout { addr: self.addr.clone(), what: format!("get({key:?})"), timeout, missing })
            }
            other => Err(self.unexpected("get", other)),
        }
    }

    /// Adds `delta` to the counter `key` (created at 0) and returns the new value.
    pub fn add(&mut self, key: &str, delta: i64) -> Result<i64, StoreError> {
        match self.request(&Request::Add { key: key.into(), delta }, Duration::ZERO)? {
            Response::Int(v) => Ok(v),
            other => Err(self.unexpected("add", other)),
        }
    }

    /// Waits until every key exists, up to the client's timeout.
    pub fn wait(&mut self, keys: &[&str]) -> Result<(), StoreError> {
        let timeout = self.timeout;
        let req = Request::Wait { keys: keys.iter().map(|k| k.to_string()).collect(), timeout_ms: millis(timeout) };
        match self.request(&req, timeout)? {
            Response::Ok => Ok(()),
            Response::Timeout(missing) => {
                Err(StoreError::Timeout { addr: self.addr.clone(), what: format!("wait({keys:?})"), timeout, missing })
            }
            other => Err(self.unexpected("wait", other)),
        }
    }

    /// Returns once `world_size` callers have entered the barrier `name`. A name serves once:
    /// its counter is never reset, so repeated barriers need distinct names (e.g. a step suffix).
    pub fn barrier(&mut self, name: &str, world_size: usize) -> Result<(), StoreError> {
        let count_key = format!("barrier/{name}/arrived");
        let done_key = format!("barrier/{name}/done");
        let arrived = self.add(&count_key, 1)?;
        if arrived == world_size as i64 {
            self.set(&done_key, b"1")?;
        }
        match self.wait(&[&done_key]) {
            Ok(()) => Ok(()),
            Err(StoreError::Timeout { timeout, .. }) => {
                let arrived = self.add(&count_key, 0)?;
                Err(StoreError::BarrierTimeout {
                    addr: self.addr.clone(),
                    name: name.into(),
                    timeout,
                    arrived,
                    world_size,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn request(&mut self, req: &Request, blocking_for: Duration) -> Result<Response, StoreError> {
        if self.broken {
            let source = io::Error::new(io::ErrorKind::NotConnected, "connection unusable after an earlier error");
            return Err(StoreError::Io { addr: self.addr.clone(), source });
        }
        // Marked broken up front and cleared on success: any early return leaves it set.
        self.broken = true;
        let io_err = |source| StoreError::Io { addr: self.addr.clone(), source };
        self.stream.set_read_timeout(Some(blocking_for + REPLY_SLACK)).map_err(io_err)?;
        write_frame(&mut self.stream, &req.encode()).map_err(io_err)?;
        let body = read_frame(&mut self.stream).map_err(io_err)?;
        let resp = Response::decode(&body).map_err(|detail| StoreError::Protocol {
            addr: self.addr.clone(),
            detail: format!("bad reply: {detail}"),
        })?;
        self.broken = false;
        match resp {
            Response::Error(msg) => Err(StoreError::Protocol { addr: self.addr.clone(), detail: msg }),
            r => Ok(r),
        }
    }

    fn unexpected(&self, what: &str, resp: Response) -> StoreError {
        StoreError::Protocol { addr: self.addr.clone(), detail: format!("unexpected reply to {what}: {resp:?}") }
    }
}

enum Attempt {
    /// Not reachable yet; try again.
    Retry(io::Error),
    Fatal(StoreError),
}

fn try_connect(addr: &str, run_id: &str, deadline: Instant) -> Result<TcpStream, Attempt> {
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    // Resolved on every attempt: the host's name may appear later than we do.
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(Attempt::Retry)?.collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} resolves to no address"));
    for a in addrs {
        match TcpStream::connect_timeout(&a, remaining) {
            Ok(mut stream) => {
                let _ = stream.set_nodelay(true);
                stream.set_read_timeout(Some(remaining)).map_err(Attempt::Retry)?;
                write_frame(&mut stream, &encode_hello(run_id)).map_err(Attempt::Retry)?;
                // A server that accepted and died before answering is retried like one not yet up.
                let body = read_frame(&mut stream).map_err(Attempt::Retry)?;
                let protocol = |detail: String| Attempt::Fatal(StoreError::Protocol { addr: addr.into(), detail });
                return match Response::decode(&body).map_err(protocol)? {
                    Response::Ok => Ok(stream),
                    Response::WrongRun(theirs) => {
                        Err(Attempt::Fatal(StoreError::WrongRun { addr: addr.into(), theirs, ours: run_id.into() }))
                    }
                    Response::Error(msg) => Err(protocol(msg)),
                    other => Err(protocol(format!("unexpected reply to hello: {other:?}"))),
                };
            }
            Err(e) => last = e,
        }
    }
    Err(Attempt::Retry(last))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
