//! The `Communicator` trait every backend implements, its errors, and the single-rank backend.
//!
//! Contract (what an NCCL backend can honour too): tensors live on the communicator's device; the
//! tensors written (outputs, and the in-place ones) are contiguous; every rank calls the same
//! collectives in the same order with the same sizes and dtype; each call returns when the result
//! is in place (an NCCL backend synchronises its stream, or orders on the default stream).
//! Sums are computed in a fixed order so that results are bitwise identical on every rank and
//! every run (each backend documents its order).

use std::fmt;
use std::time::Duration;

use fomaml_store::format_secs;
use tch::{Kind, Tensor};

/// Collectives over `world_size` ranks. Methods take `&mut self`: each call advances the
/// operation sequence that ranks use to check they are in step.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sums `tensor` across ranks, in place.
    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<(), CommError>;
    /// `output` (world × input elements, any shape) receives every rank's `input`, flattened and
    /// concatenated in rank order.
    fn all_gather(&mut self, input: &Tensor, output: &Tensor) -> Result<(), CommError>;
    /// `input` (world × output elements) is summed across ranks; rank r keeps the r-th slice of
    /// the flattened sum in `output`.
    fn reduce_scatter_sum(&mut self, input: &Tensor, output: &Tensor) -> Result<(), CommError>;
    /// Every rank's `tensor` receives root's, in place.
    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<(), CommError>;
    /// Returns once every rank has entered the barrier.
    fn barrier(&mut self) -> Result<(), CommError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    AllReduce,
    AllGather,
    ReduceScatter,
    Broadcast,
    Barrier,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::AllReduce => "all_reduce",
            OpKind::AllGather => "all_gather",
            OpKind::ReduceScatter => "reduce_scatter",
            OpKind::Broadcast => "broadcast",
            OpKind::Barrier => "barrier",
        }
    }

    pub(crate) fn code(self) -> u8 {
        self as u8 + 1
    }

    pub(crate) fn from_code(c: u8) -> Option<OpKind> {
        [OpKind::AllReduce, OpKind::AllGather, OpKind::ReduceScatter, OpKind::Broadcast, OpKind::Barrier]
            .into_iter()
            .find(|k| k.code() == c)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one rank announced for one collective; ranks compare these to detect mismatches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpDesc {
    pub op: OpKind,
    /// 1 for a communicator's first collective.
    pub seq: u64,
    /// Bytes of this rank's input (all_gather: per rank; reduce_scatter: the whole input).
    pub bytes: u64,
    pub dtype: Option<Kind>,
    /// broadcast's source; 0 otherwise.
    pub root: u32,
}

impl fmt::Display for OpDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{}", self.op, self.seq)?;
        if self.op == OpKind::Broadcast {
            write!(f, " from rank {}", self.root)?;
        }
        if let Some(k) = self.dtype {
            write!(f, " ({} bytes of {k:?})", self.bytes)?;
        }
        Ok(())
    }
}

/// Why a collective failed. After any error the communicator refuses further collectives: the
/// ranks are out of step and only a restart brings them back.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    #[error(
        "{op} #{seq} timed out after {} s waiting for {} ({} arrived)",
        format_secs(*.timeout), ranks_phrase(.waiting_for), ranks_phrase(.arrived)
    )]
    Timeout { op: OpKind, seq: u64, timeout: Duration, waiting_for: Vec<usize>, arrived: Vec<usize> },
    #[error("{op} #{seq} timed out after {} s waiting for data from rank {peer} (every rank had arrived)", format_secs(*.timeout))]
    DataTimeout { op: OpKind, seq: u64, timeout: Duration, peer: usize },
    #[error("{op} #{seq} on rank {rank}: rank {peer} closed its connection (it exited or dropped its communicator)")]
    PeerClosed { op: OpKind, seq: u64, rank: usize, peer: usize },
    #[error("{op} #{seq} on rank {rank}: rank {peer} aborted: {reason}")]
    PeerAborted { op: OpKind, seq: u64, rank: usize, peer: usize, reason: String },
    #[error("{ours} on rank {rank} does not match rank {peer}, which called {theirs}")]
    Mismatch { rank: usize, ours: OpDesc, peer: usize, theirs: OpDesc },
    #[error("{op} #{seq} on rank {rank}: connection to rank {peer}: {detail}")]
    Link { op: OpKind, seq: u64, rank: usize, peer: usize, detail: String },
    #[error("{op} #{seq} on rank {rank}: {detail}")]
    InvalidArgument { op: OpKind, seq: u64, rank: usize, detail: String },
    #[error("{op} #{seq} on rank {rank}: tensor operation failed: {detail}")]
    Tensor { op: OpKind, seq: u64, rank: usize, detail: String },
    #[error("{op} on rank {rank}: the communicator is unusable after an earlier failure ({first})")]
    Broken { op: OpKind, rank: usize, first: String },
    #[error("setting up rank {rank} of {world_size}: {detail}")]
    Setup { rank: usize, world_size: usize, detail: String },
}

/// "rank 2" / "ranks 0,1,3" / "no rank".
pub fn ranks_phrase(ranks: &[usize]) -> String {
    let list = ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
    match ranks.len() {
        0 => "no rank".into(),
        1 => format!("rank {list}"),
        _ => format!("ranks {list}"),
    }
}

/// Argument checks shared by the backends, so that code tested on one backend is valid on all.
pub(crate) mod check {
    use super::*;

    pub type Bad = String;

    pub fn writable(name: &str, t: &Tensor) -> Result<(), Bad> {
        if !t.is_contiguous() {
            return Err(format!("{name} must be contiguous (it is written in place)"));
        }
        Ok(())
    }

    pub fn same_kind_device(input: &Tensor, output: &Tensor) -> Result<(), Bad> {
        let (ki, ko) = (input.kind(), output.kind());
        if ki != ko {
            return Err(format!("input is {ki:?} but output is {ko:?}"));
        }
        let (di, d_o) = (input.device(), output.device());
        if di != d_o {
            return Err(format!("input is on {di:?} but output is on {d_o:?}"));
        }
        Ok(())
    }

    pub fn summable(kind: Kind) -> Result<(), Bad> {
        match kind {
            Kind::Bool
            | Kind::QInt8
            | Kind::QUInt8
            | Kind::QInt32
            | Kind::Float8e5m2
            | Kind::Float8e4m3fn
            | Kind::Float8e5m2fnuz
            | Kind::Float8e4m3fnuz => Err(format!("summing {kind:?} tensors is not supported")),
            _ => Ok(()),
        }
    }

    /// output must hold world × input elements.
    pub fn gathered(input: &Tensor, output: &Tensor, world: usize) -> Result<(), Bad> {
        same_kind_device(input, output)?;
        writable("output", output)?;
        let (ni, no) = (input.numel(), output.numel());
        if no != ni * world {
            return Err(format!("output has {no} elements, expected world size {world} × input {ni} = {}", ni * world));
        }
        Ok(())
    }

    /// input must hold world × output elements.
    pub fn scattered(input: &Tensor, output: &Tensor, world: usize) -> Result<(), Bad> {
        same_kind_device(input, output)?;
        writable("output", output)?;
        summable(input.kind())?;
        let (ni, no) = (input.numel(), output.numel());
        if ni != no * world {
            return Err(format!("input has {ni} elements, expected world size {world} × output {no} = {}", no * world));
        }
        Ok(())
    }

    pub fn root(root: usize, world: usize) -> Result<(), Bad> {
        if root >= world {
            return Err(format!("root {root} is not a rank of a world of {world}"));
        }
        Ok(())
    }
}

/// The world of one: every collective is the identity (a copy for all_gather / reduce_scatter),
/// with the same argument checks as the real backends.
#[derive(Debug, Default)]
pub struct SingleRank {
    seq: u64,
}

impl SingleRank {
    pub fn new() -> SingleRank {
        SingleRank::default()
    }

    fn step(&mut self, op: OpKind, f: impl FnOnce() -> Result<(), String>) -> Result<(), CommError> {
        self.seq += 1;
        f().map_err(|detail| CommError::InvalidArgument { op, seq: self.seq, rank: 0, detail })
    }
}

fn copy_flat(input: &Tensor, output: &Tensor) -> Result<(), String> {
    let src = input.f_reshape(output.size()).map_err(|e| e.to_string())?;
    output.shallow_clone().f_copy_(&src).map_err(|e| e.to_string())
}

impl Communicator for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<(), CommError> {
        self.step(OpKind::AllReduce, || {
            check::writable("tensor", tensor)?;
            check::summable(tensor.kind())
        })
    }
    fn all_gather(&mut self, input: &Tensor, output: &Tensor) -> Result<(), CommError> {
        self.step(OpKind::AllGather, || {
            check::gathered(input, output, 1)?;
            copy_flat(input, output)
        })
    }
    fn reduce_scatter_sum(&mut self, input: &Tensor, output: &Tensor) -> Result<(), CommError> {
        self.step(OpKind::ReduceScatter, || {
            check::scattered(input, output, 1)?;
            copy_flat(input, output)
        })
    }
    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<(), CommError> {
        self.step(OpKind::Broadcast, || {
            check::writable("tensor", tensor)?;
            check::root(root, 1)
        })
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        self.step(OpKind::Barrier, || Ok(()))
    }
}
