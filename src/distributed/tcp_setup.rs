//! Building the CPU backend's mesh: every rank listens on the interface it reaches the store
//! through, publishes the address under `<group>/addr/<rank>`, connects to every lower rank and
//! accepts every higher one. Connecting only downwards gives one connection per pair and no cycle
//! of waits: rank 0 only accepts, and rank q's accepts never wait on a rank above q.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use fomaml_store::{format_secs, StoreClient};

use super::comm::ranks_phrase;

const MAGIC: u32 = u32::from_le_bytes(*b"FMCH");
const VERSION: u32 = 1;

/// The connection to every other rank, by rank. Errors are one-line descriptions.
pub(crate) fn mesh(
    store: &mut StoreClient,
    rank: usize,
    world: usize,
    group: &str,
    timeout: Duration,
) -> Result<Vec<(usize, TcpStream)>, String> {
    let deadline = Instant::now() + timeout;
    let ip = store.local_addr().map_err(|e| format!("the store connection's local address: {e}"))?.ip();
    let listener = TcpListener::bind((ip, 0)).map_err(|e| format!("listening on {ip}: {e}"))?;
    let me = listener.local_addr().map_err(|e| e.to_string())?;
    store.set(&format!("{group}/addr/{rank}"), me.to_string().as_bytes()).map_err(|e| e.to_string())?;

    let mut out = Vec::with_capacity(world.saturating_sub(1));
    for q in 0..rank {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let value = store.get_timeout(&format!("{group}/addr/{q}"), remaining).map_err(|e| e.to_string())?;
        let addr: SocketAddr = std::str::from_utf8(&value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("rank {q} published an unreadable address {value:?}"))?;
        let stream =
            dial(addr, rank, world, q, deadline).map_err(|e| format!("connecting to rank {q} at {addr}: {e}"))?;
        out.push((q, stream));
    }
    out.extend(accept_higher(&listener, rank, world, deadline, timeout)?);
    Ok(out)
}

fn dial(addr: SocketAddr, rank: usize, world: usize, q: usize, deadline: Instant) -> io::Result<TcpStream> {
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut s = TcpStream::connect_timeout(&addr, remaining)?;
    s.set_read_timeout(Some(remaining))?;
    s.write_all(&hello(rank, world))?;
    let (their_rank, their_world) = read_hello(&mut s)?;
    if their_rank != q || their_world != world {
        return Err(io::Error::other(format!(
            "the listener there is rank {their_rank} of {their_world}, expected rank {q} of {world}"
        )));
    }
    Ok(s)
}

/// Accepts ranks rank+1..world. A connection that is not a valid peer (a stray client, a rank of
/// another world) is dropped, and named if the peers then fail to show up.
fn accept_higher(
    listener: &TcpListener,
    rank: usize,
    world: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<(usize, TcpStream)>, String> {
    // std has no accept timeout: poll a non-blocking listener.
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut got: Vec<(usize, TcpStream)> = Vec::new();
    let mut rejected = None;
    while got.len() < world - 1 - rank {
        let now = Instant::now();
        if now >= deadline {
            let missing: Vec<usize> = (rank + 1..world).filter(|q| got.iter().all(|(r, _)| r != q)).collect();
            let why = rejected.map(|r| format!("; refused a connection: {r}")).unwrap_or_default();
            return Err(format!("{} did not connect within {} s{why}", ranks_phrase(&missing), format_secs(timeout)));
        }
        match listener.accept() {
            Ok((mut s, from)) => match greet(&mut s, rank, world, deadline) {
                Ok(q) if q > rank && q < world && got.iter().all(|(r, _)| *r != q) => got.push((q, s)),
                Ok(q) => rejected = Some(format!("{from} claimed rank {q}, unexpected here")),
                Err(e) => rejected = Some(format!("{from}: {e}")),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("accepting peers: {e}")),
        }
    }
    Ok(got)
}

/// The acceptor's half of the handshake; returns the connecting rank.
fn greet(s: &mut TcpStream, rank: usize, world: usize, deadline: Instant) -> io::Result<usize> {
    s.set_nonblocking(false)?;
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    s.set_read_timeout(Some(remaining))?;
    let (q, their_world) = read_hello(s)?;
    if their_world != world {
        return Err(io::Error::other(format!("rank {q} thinks the world has {their_world} ranks, not {world}")));
    }
    s.write_all(&hello(rank, world))?;
    Ok(q)
}

fn hello(rank: usize, world: usize) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&VERSION.to_le_bytes());
    b[8..16].copy_from_slice(&(rank as u64).to_le_bytes());
    b[16..24].copy_from_slice(&(world as u64).to_le_bytes());
    b
}

fn read_hello(s: &mut TcpStream) -> io::Result<(usize, usize)> {
    let mut b = [0u8; 24];
    s.read_exact(&mut b)?;
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let magic = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let version = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if magic != MAGIC || version != VERSION {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a fomaml peer (bad handshake)"));
    }
    let too_big = |_| io::Error::new(io::ErrorKind::InvalidData, "rank out of range");
    Ok((usize::try_from(word(8)).map_err(too_big)?, usize::try_from(word(16)).map_err(too_big)?))
}
