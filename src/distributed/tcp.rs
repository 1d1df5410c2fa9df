//! The CPU backend: a full mesh of TCP connections, for CPU-only multi-process runs and the tests.
//!
//! Protocol of one collective (sequence number `seq`, counted from 1 on every rank):
//! 1. every rank queues to every peer a Hello frame (op, seq, byte count, dtype, root) followed by
//!    the data that peer needs from it — nothing waits on anyone before sending;
//! 2. every rank reads the peers' Hellos in rank order under one deadline (the collective
//!    timeout) and compares them with its own: a different op, seq, size, dtype or root is a
//!    mismatch naming both ranks and both ops; a silent peer is a timeout naming the ranks missing
//!    and those that arrived; a closed socket names the peer at once;
//! 3. the data phase reads what the op needs, again in rank order.
//!
//! Reduction order (all_reduce, reduce_scatter): the flattened tensor is cut into `world`
//! contiguous chunks (chunk q = elements [q·n/world, (q+1)·n/world)); rank q sums chunk q as the
//! left fold `((x_0 + x_1) + x_2) + … + x_{world-1}` in the tensor's dtype, one elementwise add per
//! rank, whatever order the bytes arrived in; for all_reduce it then sends the sum to every rank.
//! Each element is thus computed once, by one rank, in rank order: bitwise identical on all ranks
//! and across runs, and equal to a single process adding the ranks' tensors in rank order.
//!
//! After any failure the rank sends an Abort frame with its error to every peer (so they fail at
//! once, with the reason, instead of timing out) and refuses further collectives.
//!
//! Tensors may live on any device: bytes go through host memory (an NCCL backend will not).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fomaml_store::StoreClient;
use tch::{Kind, Tensor};

use super::comm::{check, CommError, Communicator, OpDesc, OpKind};
use super::link::{is_closed, is_timeout, FrameKind, Header, Peer, Shared, MAX_ABORT_LEN};

pub struct TcpComm {
    rank: usize,
    world: usize,
    /// Indexed by rank; `None` at our own.
    peers: Vec<Option<Peer>>,
    timeout: Duration,
    seq: u64,
    /// The first failure's message, once there was one.
    broken: Option<String>,
}

/// How long a timed-out rank keeps listening to the peers after the one it waited for, to report
/// which of them had arrived.
const PROBE: Duration = Duration::from_millis(20);
/// How long dropping a communicator lets queued frames (aborts) drain before cutting connections.
const DRAIN: Duration = Duration::from_secs(1);

impl TcpComm {
    /// Joins the mesh of `world_size` ranks. Addresses are exchanged through the store under
    /// `group` (distinct groups can coexist in one store); `timeout` bounds the set-up and every
    /// collective's wait.
    pub fn connect(
        store: &mut StoreClient,
        rank: usize,
        world_size: usize,
        group: &str,
        timeout: Duration,
    ) -> Result<TcpComm, CommError> {
        let setup = |detail: String| CommError::Setup { rank, world_size, detail };
        if rank >= world_size {
            return Err(setup(format!("rank {rank} is outside a world of {world_size}")));
        }
        let peers = super::tcp_setup::mesh(store, rank, world_size, group, timeout).map_err(setup)?;
        let mut slots: Vec<Option<Peer>> = (0..world_size).map(|_| None).collect();
        for (q, stream) in peers {
            let peer = Peer::new(q, stream, timeout).map_err(|e| setup(format!("connection to rank {q}: {e}")))?;
            slots[q] = Some(peer);
        }
        Ok(TcpComm { rank, world: world_size, peers: slots, timeout, seq: 0, broken: None })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one collective: numbers it, and on failure aborts the peers and poisons `self`.
    fn run(&mut self, op: OpKind, body: impl FnOnce(&mut Self, u64) -> Result<(), CommError>) -> Result<(), CommError> {
        if let Some(first) = &self.broken {
            return Err(CommError::Broken { op, rank: self.rank, first: first.clone() });
        }
        self.seq += 1;
        let seq = self.seq;
        let result = tch::no_grad(|| body(self, seq));
        if let Err(e) = &result {
            let reason = e.to_string();
            let mut bytes = reason.clone().into_bytes();
            bytes.truncate(MAX_ABORT_LEN as usize);
            let n = bytes.len();
            let payload: Shared = bytes.into();
            for p in self.peers.iter().flatten() {
                p.send(&Header::abort(seq, n), Some((Arc::clone(&payload), 0..n)));
            }
            self.broken = Some(reason);
        }
        result
    }

    fn peer_ranks(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.world).filter(move |&q| q != self.rank)
    }

    fn peer(&mut self, q: usize) -> &mut Peer {
        // Only called with q from peer_ranks(), whose slots are all filled by connect().
        self.peers[q].as_mut().expect("a connected peer")
    }

    fn bad(&self, desc: &OpDesc, detail: String) -> CommError {
        CommError::InvalidArgument { op: desc.op, seq: desc.seq, rank: self.rank, detail }
    }

    fn tensor_err(&self, desc: &OpDesc, e: impl std::fmt::Display) -> CommError {
        CommError::Tensor { op: desc.op, seq: desc.seq, rank: self.rank, detail: e.to_string() }
    }

    /// Queues our Hello to every peer.
    fn announce(&self, desc: &OpDesc) {
        let h = Header::hello(desc);
        for p in self.peers.iter().flatten() {
            p.send(&h, None);
        }
    }

    fn send_data(&self, desc: &OpDesc, q: usize, buf: &Shared, range: std::ops::Range<usize>) {
        if let Some(p) = &self.peers[q] {
            p.send(&Header::data(desc, range.len()), Some((Arc::clone(buf), range)));
        }
    }

    /// A read error from peer `q` as the error to report. A failed write shuts our own socket, so
    /// then the read error says nothing and the write error decides: a broken pipe or reset means
    /// the peer went away, like an end of file on the read side (which of the two a rank sees first
    /// is a race).
    fn link_error(&self, desc: &OpDesc, q: usize, e: io::Error) -> CommError {
        let (op, seq, rank) = (desc.op, desc.seq, self.rank);
        let write_error = self.peers[q].as_ref().and_then(Peer::write_error);
        match write_error {
            Some(w) if is_closed(&w) => CommError::PeerClosed { op, seq, rank, peer: q },
            Some(w) => CommError::Link { op, seq, rank, peer: q, detail: format!("sending failed: {w}") },
            None if is_closed(&e) => CommError::PeerClosed { op, seq, rank, peer: q },
            None => CommError::Link { op, seq, rank, peer: q, detail: e.to_string() },
        }
    }

    /// A frame from `q` that is not what the protocol expects here.
    fn unexpected(&mut self, desc: &OpDesc, q: usize, h: Header, expected: &str) -> CommError {
        let (op, seq, rank) = (desc.op, desc.seq, self.rank);
        if h.kind == FrameKind::Abort {
            let timeout = self.timeout;
            let reason = match h.len {
                n if n > MAX_ABORT_LEN => format!("(abort message of {n} bytes refused)"),
                n => match self.peer(q).read_payload(n, timeout) {
                    Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                    Err(e) => format!("(its reason was lost: {e})"),
                },
            };
            return CommError::PeerAborted { op, seq, rank, peer: q, reason };
        }
        let got = match h.kind {
            FrameKind::Hello => h.desc().map_or_else(|e| format!("a bad hello ({e})"), |d| format!("hello of {d}")),
            _ => format!("{} data bytes of #{}", h.len, h.seq),
        };
        CommError::Link { op, seq, rank, peer: q, detail: format!("protocol error: expected {expected}, got {got}") }
    }

    /// Step 2 of the protocol: every peer's Hello, checked against ours.
    fn collect_hellos(&mut self, desc: &OpDesc) -> Result<(), CommError> {
        let deadline = Instant::now() + self.timeout;
        let mut arrived = vec![self.rank];
        let peers: Vec<usize> = self.peer_ranks().collect();
        for (i, &q) in peers.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.peer(q).read_header(remaining) {
                Ok(h) if h.kind == FrameKind::Hello => {
                    let theirs = h.desc().map_err(|e| CommError::Link {
                        op: desc.op,
                        seq: desc.seq,
                        rank: self.rank,
                        peer: q,
                        detail: format!("bad hello: {e}"),
                    })?;
                    if theirs != *desc {
                        return Err(CommError::Mismatch { rank: self.rank, ours: desc.clone(), peer: q, theirs });
                    }
                    arrived.push(q);
                }
                Ok(h) => return Err(self.unexpected(desc, q, h, "a hello")),
                Err(e) if is_timeout(&e) => {
                    let mut waiting_for = vec![q];
                    for &later in &peers[i + 1..] {
                        match self.peer(later).read_header(PROBE) {
                            Ok(h) if h.kind == FrameKind::Hello => arrived.push(later),
                            _ => waiting_for.push(later),
                        }
                    }
                    arrived.sort_unstable();
                    let (op, seq, timeout) = (desc.op, desc.seq, self.timeout);
                    return Err(CommError::Timeout { op, seq, timeout, waiting_for, arrived });
                }
                Err(e) => return Err(self.link_error(desc, q, e)),
            }
        }
        Ok(())
    }

    /// The next Data frame of this collective from `q`, which must hold `len` bytes.
    fn recv_data(&mut self, desc: &OpDesc, q: usize, len: usize) -> Result<Vec<u8>, CommError> {
        let timeout = self.timeout;
        let data_timeout = || CommError::DataTimeout { op: desc.op, seq: desc.seq, timeout, peer: q };
        let h = match self.peer(q).read_header(timeout) {
            Ok(h) => h,
            Err(e) if is_timeout(&e) => return Err(data_timeout()),
            Err(e) => return Err(self.link_error(desc, q, e)),
        };
        if h.kind != FrameKind::Data || h.seq != desc.seq || h.len != len as u64 {
            return Err(self.unexpected(desc, q, h, &format!("{len} data bytes of #{}", desc.seq)));
        }
        match self.peer(q).read_payload(h.len, timeout) {
            Ok(b) => Ok(b),
            Err(e) if is_timeout(&e) => Err(data_timeout()),
            Err(e) => Err(self.link_error(desc, q, e)),
        }
    }

    /// Our share of a reduction: chunk `self.rank` summed over ranks in rank order (see the module
    /// documentation); `own` is our contribution to it.
    fn reduce_chunk(&mut self, desc: &OpDesc, kind: Kind, own: &[u8]) -> Result<Vec<u8>, CommError> {
        let elems = own.len() / kind.elt_size_in_bytes();
        let mut acc: Option<Tensor> = None;
        for q in 0..self.world {
            let bytes = if q == self.rank { own.to_vec() } else { self.recv_data(desc, q, own.len())? };
            let part = Tensor::f_from_data_size(&bytes, &[elems as i64], kind).map_err(|e| self.tensor_err(desc, e))?;
            acc = Some(match acc {
                None => part,
                Some(a) => a.f_add(&part).map_err(|e| self.tensor_err(desc, e))?,
            });
        }
        let acc = acc.expect("world_size >= 1");
        let mut out = vec![0u8; own.len()];
        acc.f_copy_data_u8(&mut out, elems).map_err(|e| self.tensor_err(desc, e))?;
        Ok(out)
    }

    fn bytes_of(&self, desc: &OpDesc, t: &Tensor) -> Result<Vec<u8>, CommError> {
        let n = t.numel();
        let mut v = vec![0u8; n * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut v, n).map_err(|e| self.tensor_err(desc, e))?;
        Ok(v)
    }

    fn write_back(&self, desc: &OpDesc, t: &Tensor, bytes: &[u8]) -> Result<(), CommError> {
        let src = Tensor::f_from_data_size(bytes, &t.size(), t.kind()).map_err(|e| self.tensor_err(desc, e))?;
        t.shallow_clone().f_copy_(&src).map_err(|e| self.tensor_err(desc, e))
    }
}

fn desc(op: OpKind, seq: u64, t: &Tensor, root: usize) -> OpDesc {
    let bytes = (t.numel() * t.kind().elt_size_in_bytes()) as u64;
    OpDesc { op, seq, bytes, dtype: Some(t.kind()), root: root as u32 }
}

/// Byte range of chunk `q` when `n` elements of `elt` bytes are cut into `world` chunks.
fn chunk(q: usize, n: usize, world: usize, elt: usize) -> std::ops::Range<usize> {
    let bound = |q: usize| ((q as u128 * n as u128) / world as u128) as usize * elt;
    bound(q)..bound(q + 1)
}

impl Communicator for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<(), CommError> {
        self.run(OpKind::AllReduce, |me, seq| {
            let d = desc(OpKind::AllReduce, seq, tensor, 0);
            check::writable("tensor", tensor).and(check::summable(tensor.kind())).map_err(|e| me.bad(&d, e))?;
            let (kind, n, world) = (tensor.kind(), tensor.numel(), me.world);
            let elt = kind.elt_size_in_bytes();
            let input: Shared = me.bytes_of(&d, tensor)?.into();
            me.announce(&d);
            for q in me.peer_ranks() {
                me.send_data(&d, q, &input, chunk(q, n, world, elt));
            }
            me.collect_hellos(&d)?;
            let mine = chunk(me.rank, n, world, elt);
            let reduced: Shared = me.reduce_chunk(&d, kind, &input[mine.clone()])?.into();
            for q in me.peer_ranks() {
                me.send_data(&d, q, &reduced, 0..reduced.len());
            }
            let mut out = vec![0u8; input.len()];
            out[mine].copy_from_slice(&reduced);
            for q in 0..world {
                if q != me.rank {
                    let range = chunk(q, n, world, elt);
                    let part = me.recv_data(&d, q, range.len())?;
                    out[range].copy_from_slice(&part);
                }
            }
            me.write_back(&d, tensor, &out)
        })
    }

    fn all_gather(&mut self, input: &Tensor, output: &Tensor) -> Result<(), CommError> {
        self.run(OpKind::AllGather, |me, seq| {
            let d = desc(OpKind::AllGather, seq, input, 0);
            check::gathered(input, output, me.world).map_err(|e| me.bad(&d, e))?;
            let mine: Shared = me.bytes_of(&d, input)?.into();
            let len = mine.len();
            me.announce(&d);
            for q in me.peer_ranks() {
                me.send_data(&d, q, &mine, 0..len);
            }
            me.collect_hellos(&d)?;
            let mut out = vec![0u8; len * me.world];
            for q in 0..me.world {
                let part = if q == me.rank { mine.to_vec() } else { me.recv_data(&d, q, len)? };
                out[q * len..(q + 1) * len].copy_from_slice(&part);
            }
            me.write_back(&d, output, &out)
        })
    }

    fn reduce_scatter_sum(&mut self, input: &Tensor, output: &Tensor) -> Result<(), CommError> {
        self.run(OpKind::ReduceScatter, |me, seq| {
            let d = desc(OpKind::ReduceScatter, seq, input, 0);
            check::scattered(input, output, me.world).map_err(|e| me.bad(&d, e))?;
            let all: Shared = me.bytes_of(&d, input)?.into();
            let len = all.len() / me.world;
            me.announce(&d);
            for q in me.peer_ranks() {
                me.send_data(&d, q, &all, q * len..(q + 1) * len);
            }
            me.collect_hellos(&d)?;
            let r = me.rank;
            let reduced = me.reduce_chunk(&d, input.kind(), &all[r * len..(r + 1) * len])?;
            me.write_back(&d, output, &reduced)
        })
    }

    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<(), CommError> {
        self.run(OpKind::Broadcast, |me, seq| {
            let d = desc(OpKind::Broadcast, seq, tensor, root);
            check::writable("tensor", tensor).and(check::root(root, me.world)).map_err(|e| me.bad(&d, e))?;
            me.announce(&d);
            if me.rank == root {
                let data: Shared = me.bytes_of(&d, tensor)?.into();
                for q in me.peer_ranks() {
                    me.send_data(&d, q, &data, 0..data.len());
                }
            }
            me.collect_hellos(&d)?;
            if me.rank != root {
                let data = me.recv_data(&d, root, d.bytes as usize)?;
                me.write_back(&d, tensor, &data)?;
            }
            Ok(())
        })
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.run(OpKind::Barrier, |me, seq| {
            let d = OpDesc { op: OpKind::Barrier, seq, bytes: 0, dtype: None, root: 0 };
            me.announce(&d);
            me.collect_hellos(&d)
        })
    }
}

impl Drop for TcpComm {
    fn drop(&mut self) {
        let peers: Vec<&mut Peer> = self.peers.iter_mut().flatten().collect();
        let deadline = Instant::now() + DRAIN;
        let mut peers = peers;
        for p in peers.iter_mut() {
            p.close_queue();
        }
        for p in peers {
            p.finish(deadline);
        }
    }
}
