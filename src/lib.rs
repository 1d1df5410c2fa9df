//! fomaml: first-order MAML meta-training for Llama / Qwen2 / Qwen3 on libtorch.
//!
//! `model` (decoder, checkpoint loading) knows nothing of training; `meta` holds the algorithms
//! and their loss; `dist` the communication across ranks; `cli` the subcommands.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod fsutil;
pub mod meta;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plan;
pub mod report;
pub mod runtime;
pub mod tensor_io;
pub mod train;
