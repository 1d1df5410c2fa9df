//! A small TCP key-value store for rendezvous, like torch's TCPStore.
//!
//! A [`StoreServer`] (hosted by node 0's `fomaml-launch`, or by rank 0 without it) keeps a map of
//! byte values; each rank's [`StoreClient`] sets, gets (blocking until the key exists), adds to
//! counters and waits on keys, and builds barriers on top. The first message of every connection
//! names the run (`TORCHELASTIC_RUN_ID`) and the server refuses any other run, so a rank left over
//! from a previous run cannot join this one.
//!
//! This crate uses only std (and thiserror) so that `fomaml-launch`, which never links libtorch,
//! can host the server.

mod client;
mod server;
mod wire;

pub use client::{StoreClient, StoreError};
pub use server::{StoreServer, StoreServerHandle};

/// Seconds as people write them: `2`, `0.5`.
pub fn format_secs(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{}", (s * 1000.0).round() / 1000.0)
    }
}

/// The exit code of a worker that saved a checkpoint and stopped because it was asked to (a
/// preemption signal): `fomaml-launch` passes it on and does not count it as a failure.
pub const EXIT_PREEMPTED: u8 = 75;
