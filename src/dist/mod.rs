//! Communication across ranks. For now: locating and loading NCCL.

pub mod nccl_lib;
