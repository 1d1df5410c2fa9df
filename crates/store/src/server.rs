//! The store's server: one thread per connection over a shared map; blocking gets and waits sleep
//! on a condition variable that every write wakes.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::wire::{decode_hello, read_frame, write_frame, Request, Response, VERSION};

/// A bound, not yet serving store. `serve` blocks; `spawn` runs it in a thread.
pub struct StoreServer {
    listener: TcpListener,
    run_id: String,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    data: Mutex<HashMap<String, Vec<u8>>>,
    changed: Condvar,
    stop: AtomicBool,
    /// Open connections, so that stopping can unblock their reads.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

impl Shared {
    fn data(&self) -> MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // A poisoned lock means a connection thread panicked mid-update of a plain map; the map
        // itself is still consistent, so keep serving the other ranks.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StoreServer {
    /// Binds the listening socket (port 0 picks a free one; see `local_addr`).
    pub fn bind(addr: impl ToSocketAddrs, run_id: impl Into<String>) -> io::Result<StoreServer> {
        Ok(StoreServer { listener: TcpListener::bind(addr)?, run_id: run_id.into(), shared: Arc::default() })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until stopped through a `StoreServerHandle` (never, when called directly).
    pub fn serve(self) -> io::Result<()> {
        for stream in self.listener.incoming() {
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            // A failed accept (the peer reset before we got to it) concerns that peer only.
            let Ok(stream) = stream else { continue };
            let id = self.shared.next_conn.fetch_add(1, Ordering::SeqCst);
            if let Ok(clone) = stream.try_clone() {
                self.shared.conns().insert(id, clone);
            }
            let shared = Arc::clone(&self.shared);
            let run_id = self.run_id.clone();
            std::thread::Builder::new().name(format!("store-conn-{id}")).spawn(move || {
                // Errors end this connection only; the client sees them as a closed socket.
                let _ = serve_connection(&shared, &run_id, stream);
                shared.conns().remove(&id);
            })?;
        }
        Ok(())
    }

    /// Serves from a background thread until the handle is dropped.
    pub fn spawn(self) -> io::Result<StoreServerHandle> {
        let addr = self.local_addr()?;
        let shared = Arc::clone(&self.shared);
        let thread = std::thread::Builder::new().name("store-server".into()).spawn(move || self.serve())?;
        Ok(StoreServerHandle { addr, shared, thread: Some(thread) })
    }
}

/// A running server; dropping it stops it and closes its connections.
pub struct StoreServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl StoreServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StoreServerHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        // accept() has no timeout: a connection of our own wakes it to see the flag.
        let wake = match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
            SocketAddr::V6(a) if a.ip().is_unspecified() => SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], a.port())),
            a => a,
        };
        let woke = TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok();
        for conn in self.shared.conns().values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            if woke {
                let _ = t.join();
            }
        }
    }
}

fn serve_connection(shared: &Shared, run_id: &str, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    // A client that connects and says nothing must not hold a thread for ever.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let hello = read_frame(&mut stream)?;
    let reply = match decode_hello(&hello) {
        Err(e) => Response::Error(e),
        Ok((v, _)) if v != VERSION => Response::Error(format!("store protocol version {v}, server speaks {VERSION}")),
        Ok((_, run)) if run != run_id => Response::WrongRun(run_id.to_string()),
        Ok(_) => Response::Ok,
    };
    let accepted = matches!(reply, Response::Ok);
    write_frame(&mut stream, &reply.encode())?;
    if !accepted {
        return Ok(());
    }
    // Ranks may sit idle between requests for as long as they like.
    stream.set_read_timeout(None)?;
    loop {
        let body = match read_frame(&mut stream) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let reply = match Request::decode(&body) {
            Ok(req) => handle(shared, req),
            Err(e) => {
                // The stream may be out of step now; answer once and hang up.
                write_frame(&mut stream, &Response::Error(format!("bad request: {e}")).encode())?;
                return Ok(());
            }
        };
        write_frame(&mut stream, &reply.encode())?;
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

fn handle(shared: &Shared, req: Request) -> Response {
    match req {
        Request::Set { key, value } => {
            shared.data().insert(key, value);
            shared.changed.notify_all();
            Response::Ok
        }
        Request::Add { key, delta } => {
            let mut data = shared.data();
            // Counters are stored as decimal text, as torch's TCPStore does, so `get` reads them.
            let current = match data.get(&key) {
                None => 0,
                Some(v) => match std::str::from_utf8(v).ok().and_then(|s| s.parse::<i64>().ok()) {
                    Some(n) => n,
                    None => return Response::Error(format!("add: the value of {key:?} is not an integer")),
                },
            };
            let Some(new) = current.checked_add(delta) else {
                return Response::Error(format!("add: {key:?} overflows ({current} + {delta})"));
            };
            data.insert(key, new.to_string().into_bytes());
            drop(data);
            shared.changed.notify_all();
            Response::Int(new)
        }
        Request::Get { key, timeout_ms } => {
            let keys = [key];
            match wait_for(shared, &keys, timeout_ms) {
                Ok(data) => Response::Value(data.get(&keys[0]).cloned().unwrap_or_default()),
                Err(missing) => missing,
            }
        }
        Request::Wait { keys, timeout_ms } => match wait_for(shared, &keys, timeout_ms) {
            Ok(_) => Response::Ok,
            Err(missing) => missing,
        },
    }
}

/// Blocks until every key exists; on timeout (or shutdown) the response listing the missing ones.
fn wait_for<'a>(
    shared: &'a Shared,
    keys: &[String],
    timeout_ms: u64,
) -> Result<MutexGuard<'a, HashMap<String, Vec<u8>>>, Response> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut data = shared.data();
    loop {
        let missing: Vec<String> = keys.iter().filter(|k| !data.contains_key(*k)).cloned().collect();
        if missing.is_empty() {
            return Ok(data);
        }
        if shared.stop.load(Ordering::SeqCst) {
            return Err(Response::Error("the store is shutting down".into()));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Response::Timeout(missing));
        }
        data = shared.changed.wait_timeout(data, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
    }
}
