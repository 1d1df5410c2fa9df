//! The integration tests that need no process of their own, in one test binary: each of these
//! files used to be a binary of its own, and every one of them linked libtorch. Separate binaries
//! remain for the tests that measure their process's memory (load_memory, train_memory), start
//! copies of themselves (comm), kill ranks (sharded), or take the GPU in turns (nccl_gpu).

#[path = "../common/mod.rs"]
mod common;

mod algorithms;
mod cli;
mod configs;
mod encoding;
mod eval_cli;
mod export;
mod generate;
mod golden;
mod import_gguf;
mod loader;
mod lora;
mod metrics;
mod preemption;
mod prepare_data;
mod prepare_sources;
mod run_dir;
mod task_files;
mod train;
mod train_cli;
mod unpadded;
