//! One TCP connection between two ranks of the CPU backend: the frame format and a writer thread.
//!
//! Every frame starts with a 28-byte header (magic, frame kind, op, dtype, root, sequence number,
//! length). Writes go through a thread per peer, so a rank never blocks on a full socket while
//! its peers wait for it to read: with all sends queued up front and reads done in rank order,
//! no collective can deadlock on socket buffers whatever its size. Reads happen on the caller's
//! thread, each with a timeout.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::Range;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::Kind;

use super::comm::{OpDesc, OpKind};

pub(crate) const HEADER_LEN: usize = 28;
const MAGIC: u32 = u32::from_le_bytes(*b"FMCM");
/// An abort's reason is a one-line message; anything longer is a corrupt stream.
pub(crate) const MAX_ABORT_LEN: u64 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// "I have entered this collective": carries the caller's `OpDesc`.
    Hello = 1,
    /// Tensor bytes of the collective `seq`.
    Data = 2,
    /// The sender's collective failed; the payload says why.
    Abort = 3,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: FrameKind,
    pub op: u8,
    pub dtype: u8,
    pub root: u32,
    pub seq: u64,
    /// Hello: the op's byte count; Data / Abort: the payload's length.
    pub len: u64,
}

impl Header {
    pub fn hello(d: &OpDesc) -> Header {
        Header {
            kind: FrameKind::Hello,
            op: d.op.code(),
            dtype: d.dtype.map_or(NO_KIND, kind_code),
            root: d.root,
            seq: d.seq,
            len: d.bytes,
        }
    }

    pub fn data(d: &OpDesc, len: usize) -> Header {
        Header { kind: FrameKind::Data, op: d.op.code(), dtype: NO_KIND, root: 0, seq: d.seq, len: len as u64 }
    }

    pub fn abort(seq: u64, len: usize) -> Header {
        Header { kind: FrameKind::Abort, op: 0, dtype: NO_KIND, root: 0, seq, len: len as u64 }
    }

    /// A Hello's announcement, or why it cannot be one.
    pub fn desc(&self) -> Result<OpDesc, String> {
        let op = OpKind::from_code(self.op).ok_or_else(|| format!("unknown op code {}", self.op))?;
        let dtype = match self.dtype {
            NO_KIND => None,
            c => Some(kind_from_code(c).ok_or_else(|| format!("unknown dtype code {c}"))?),
        };
        Ok(OpDesc { op, seq: self.seq, bytes: self.len, dtype, root: self.root })
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4] = self.kind as u8;
        b[5] = self.op;
        b[6] = self.dtype;
        b[8..12].copy_from_slice(&self.root.to_le_bytes());
        b[12..20].copy_from_slice(&self.seq.to_le_bytes());
        b[20..28].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, String> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| (u32_at(i) as u64) | ((u32_at(i + 4) as u64) << 32);
        if u32_at(0) != MAGIC {
            return Err("bad frame magic (stream out of step or not a fomaml peer)".into());
        }
        let kind = match b[4] {
            1 => FrameKind::Hello,
            2 => FrameKind::Data,
            3 => FrameKind::Abort,
            k => return Err(format!("unknown frame kind {k}")),
        };
        Ok(Header { kind, op: b[5], dtype: b[6], root: u32_at(8), seq: u64_at(12), len: u64_at(20) })
    }
}

const NO_KIND: u8 = 0xff;

/// c10's ScalarType numbers (tch keeps its own mapping private).
const KINDS: [(Kind, u8); 20] = [
    (Kind::Uint8, 0),
    (Kind::Int8, 1),
    (Kind::Int16, 2),
    (Kind::Int, 3),
    (Kind::Int64, 4),
    (Kind::Half, 5),
    (Kind::Float, 6),
    (Kind::Double, 7),
    (Kind::ComplexHalf, 8),
    (Kind::ComplexFloat, 9),
    (Kind::ComplexDouble, 10),
    (Kind::Bool, 11),
    (Kind::QInt8, 12),
    (Kind::QUInt8, 13),
    (Kind::QInt32, 14),
    (Kind::BFloat16, 15),
    (Kind::Float8e5m2, 23),
    (Kind::Float8e4m3fn, 24),
    (Kind::Float8e5m2fnuz, 25),
    (Kind::Float8e4m3fnuz, 26),
];

fn kind_code(k: Kind) -> u8 {
    KINDS.iter().find(|(kind, _)| *kind == k).map_or(NO_KIND, |(_, c)| *c)
}

fn kind_from_code(c: u8) -> Option<Kind> {
    KINDS.iter().find(|(_, code)| *code == c).map(|(k, _)| *k)
}

/// Bytes shared by several sends (one buffer, a range per peer) without copies.
pub(crate) type Shared = Arc<[u8]>;

struct Outgoing {
    header: [u8; HEADER_LEN],
    payload: Option<(Shared, Range<usize>)>,
}

/// The connection to one peer.
pub(crate) struct Peer {
    stream: TcpStream,
    tx: Option<Sender<Outgoing>>,
    writer: Option<JoinHandle<()>>,
    write_error: Arc<Mutex<Option<(io::ErrorKind, String)>>>,
}

impl Peer {
    /// Takes over a connected, handshaken stream. `timeout` bounds each write (a peer that stops
    /// reading for that long is given up on).
    pub fn new(rank: usize, stream: TcpStream, timeout: Duration) -> io::Result<Peer> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        let mut out = stream.try_clone()?;
        let write_error = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&write_error);
        let (tx, rx) = channel::<Outgoing>();
        let writer = std::thread::Builder::new().name(format!("comm-send-{rank}")).spawn(move || {
            for msg in rx {
                let mut r = out.write_all(&msg.header);
                if let (Ok(()), Some((buf, range))) = (&r, &msg.payload) {
                    r = out.write_all(&buf[range.clone()]);
                }
                if let Err(e) = r {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((e.kind(), e.to_string()));
                    // Wakes our own reader too, which then reports this error instead of waiting.
                    let _ = out.shutdown(Shutdown::Both);
                    return;
                }
            }
        })?;
        Ok(Peer { stream, tx: Some(tx), writer: Some(writer), write_error })
    }

    /// Queues a frame. A writer that already failed is not an error here: the failure has shut
    /// the socket down, and the next read from this peer reports it.
    pub fn send(&self, header: &Header, payload: Option<(Shared, Range<usize>)>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Outgoing { header: header.encode(), payload });
        }
    }

    /// Why the writer stopped, if it did.
    pub fn write_error(&self) -> Option<io::Error> {
        let failed = self.write_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        failed.map(|(kind, message)| io::Error::new(kind, message))
    }

    /// The next frame's header, waiting at most `timeout` for each piece of it.
    pub fn read_header(&mut self, timeout: Duration) -> io::Result<Header> {
        self.stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut b = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut b)?;
        Header::decode(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// `len` payload bytes; the timeout applies to each read, i.e. to a stall, not to the total.
    pub fn read_payload(&mut self, len: u64, timeout: Duration) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "length overflow"))?;
        self.stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Closes the queue; the writer drains what is queued (an abort, say) and exits.
    pub fn close_queue(&mut self) {
        self.tx = None;
    }

    /// Waits for the writer until `deadline`, then cuts the connection.
    pub fn finish(&mut self, deadline: Instant) {
        while self.writer.as_ref().is_some_and(|w| !w.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        // Unblocks a writer stuck on a peer that stopped reading.
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// I/O errors that mean "the peer's end is gone" rather than "nothing yet" (on a read or a write).
pub(crate) fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}
