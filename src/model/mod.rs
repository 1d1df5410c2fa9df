//! The decoder family (Llama / Qwen2 / Qwen3), its configuration and its checkpoint loading.

pub mod config;
pub mod gguf;
pub mod llama;
pub mod loader;
pub mod lora;
pub mod weights;

use std::path::PathBuf;

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use llama::CausalLm;
pub use loader::load_weights;
pub use lora::LoraConfig;
pub use weights::Weights;

/// Failures of reading a model directory. Each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {dir} does not exist")]
    NoModelDir { dir: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(
        "{dir} has no model.safetensors or model.safetensors.index.json{}",
        if *.has_pickle { " (pytorch_model.bin is pickle and is never loaded: convert it to safetensors)" } else { "" }
    )]
    NoWeights { dir: PathBuf, has_pickle: bool },
    #[error("{path} is truncated or not a safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}` has dtype {dtype}, which cannot be loaded")]
    UnsupportedDtype { path: PathBuf, name: String, dtype: String },
    #[error("{0}")]
    Mismatch(#[from] loader::Mismatch),
    #[error("weight `{0}` is not in this model's weights")]
    MissingWeight(String),
    #[error("{0}")]
    Torch(#[from] tch::TchError),
}
