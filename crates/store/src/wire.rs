//! The store's wire format: length-prefixed frames (u32 little endian) whose bodies are built from
//! u8 / u64 / i64 and length-prefixed byte strings. Everything read from the network is checked:
//! a short, oversized or malformed frame is an error, never a panic.

use std::io::{self, Read, Write};

/// First bytes of a connection's hello; catches a client that reached some other service.
pub(crate) const MAGIC: &[u8; 4] = b"FMST";
pub(crate) const VERSION: u64 = 1;
/// Values are small (addresses, ids, counters); the cap keeps a corrupt length from allocating GiBs.
const MAX_FRAME: usize = 64 << 20;

pub(crate) fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| invalid("frame too large"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)?;
    w.flush()
}

pub(crate) fn read_frame(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(invalid(&format!("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Builds a frame body.
#[derive(Default)]
pub(crate) struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(self, v: &[u8]) -> Self {
        let mut s = self.u64(v.len() as u64);
        s.0.extend_from_slice(v);
        s
    }
    pub fn str(self, v: &str) -> Self {
        self.bytes(v.as_bytes())
    }
}

/// Reads a frame body; every accessor fails cleanly on truncated input.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| format!("truncated message ({} bytes, wanted {} more)", self.buf.len(), n))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "bad u64".to_string())?))
    }
    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = usize::try_from(self.u64()?).map_err(|_| "length overflows usize".to_string())?;
        Ok(self.take(n)?.to_vec())
    }
    pub fn str(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?).map_err(|_| "string is not UTF-8".to_string())
    }
    pub fn finish(self) -> Result<(), String> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(format!("{} unexpected trailing bytes", self.buf.len() - self.pos))
        }
    }
}

/// What a client asks. Timeouts travel with blocking requests so that the server, not only the
/// socket, gives up: the reply then arrives in order and the connection stays usable.
#[derive(Debug)]
pub(crate) enum Request {
    Set { key: String, value: Vec<u8> },
    Get { key: String, timeout_ms: u64 },
    Add { key: String, delta: i64 },
    Wait { keys: Vec<String>, timeout_ms: u64 },
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Set { key, value } => Enc::default().u8(1).str(key).bytes(value).0,
            Request::Get { key, timeout_ms } => Enc::default().u8(2).str(key).u64(*timeout_ms).0,
            Request::Add { key, delta } => Enc::default().u8(3).str(key).i64(*delta).0,
            Request::Wait { keys, timeout_ms } => {
                let mut e = Enc::default().u8(4).u64(keys.len() as u64);
                for k in keys {
                    e = e.str(k);
                }
                e.u64(*timeout_ms).0
            }
        }
    }

    pub fn decode(body: &[u8]) -> Result<Request, String> {
        let mut d = Dec::new(body);
        let req = match d.u8()? {
            1 => Request::Set { key: d.str()?, value: d.bytes()? },
            2 => Request::Get { key: d.str()?, timeout_ms: d.u64()? },
            3 => Request::Add { key: d.str()?, delta: d.i64()? },
            4 => {
                let n = d.u64()?;
                // Each key takes at least 8 bytes, so a bogus count fails before allocating.
                if n > body.len() as u64 / 8 {
                    return Err(format!("wait on {n} keys in a {}-byte message", body.len()));
                }
                let keys = (0..n).map(|_| d.str()).collect::<Result<_, _>>()?;
                Request::Wait { keys, timeout_ms: d.u64()? }
            }
            op => return Err(format!("unknown request kind {op}")),
        };
        d.finish()?;
        Ok(req)
    }
}

#[derive(Debug)]
pub(crate) enum Response {
    Ok,
    Value(Vec<u8>),
    Int(i64),
    /// A get or wait ran out of time; the keys still missing.
    Timeout(Vec<String>),
    /// The hello named another run; carries the server's run id.
    WrongRun(String),
    Error(String),
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Ok => vec![0],
            Response::Value(v) => Enc::default().u8(1).bytes(v).0,
            Response::Int(v) => Enc::default().u8(2).i64(*v).0,
            Response::Timeout(keys) => {
                let mut e = Enc::default().u8(3).u64(keys.len() as u64);
                for k in keys {
                    e = e.str(k);
                }
                e.0
            }
            Response::WrongRun(run) => Enc::default().u8(4).str(run).0,
            Response::Error(msg) => Enc::default().u8(5).str(msg).0,
        }
    }

    pub fn decode(body: &[u8]) -> Result<Response, String> {
        let mut d = Dec::new(body);
        let resp = match d.u8()? {
            0 => Response::Ok,
            1 => Response::Value(d.bytes()?),
            2 => Response::Int(d.i64()?),
            3 => {
                let n = d.u64()?;
                if n > body.len() as u64 / 8 {
                    return Err(format!("{n} missing keys in a {}-byte message", body.len()));
                }
                Response::Timeout((0..n).map(|_| d.str()).collect::<Result<_, _>>()?)
            }
            4 => Response::WrongRun(d.str()?),
            5 => Response::Error(d.str()?),
            k => return Err(format!("unknown response kind {k}")),
        };
        d.finish()?;
        Ok(resp)
    }
}

/// The first frame of a connection: magic, protocol version, run id.
pub(crate) fn encode_hello(run_id: &str) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(MAGIC);
    e.u64(VERSION).str(run_id).0
}

pub(crate) fn decode_hello(body: &[u8]) -> Result<(u64, String), String> {
    if body.len() < 4 || &body[..4] != MAGIC {
        return Err("not a fomaml store client (bad magic)".into());
    }
    let mut d = Dec::new(&body[4..]);
    let version = d.u64()?;
    let run = d.str()?;
    d.finish()?;
    Ok((version, run))
}
