//! llama.cpp's GGUF files: the container, dequantization, and conversion to a Hugging Face model
//! directory (config.json, weights in HF layout, tokenizer.json, tokenizer_config.json).

pub mod convert;
pub mod dequant;
pub mod reader;
pub mod tokenizer;

use std::path::PathBuf;

pub use convert::{Conversion, SUPPORTED_ARCHITECTURES};
pub use dequant::GgmlType;
pub use reader::{GgufFile, TensorInfo, Value};
pub use tokenizer::TokenizerFiles;

/// Failures of reading or converting a GGUF file. Each names the file and the key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a GGUF file: it starts with {}, not `GGUF`", describe_magic(found))]
    BadMagic { path: PathBuf, found: Option<Vec<u8>> },
    #[error("{path}: GGUF version {version} is not supported (versions 2 and 3 are){}", big_endian_hint(*version))]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path} is truncated: it ends inside {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: metadata `{key}` is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata `{key}`: {reason}")]
    Invalid { path: PathBuf, key: String, reason: String },
    #[error("{path}: tensor `{tensor}` {reason}")]
    BadTensor { path: PathBuf, tensor: String, reason: String },
    #[error(
        "{path}: tensor `{tensor}` has type {found}, which cannot be dequantized (supported: {})",
        GgmlType::SUPPORTED
    )]
    UnsupportedTensorType { path: PathBuf, tensor: String, found: String },
    #[error(
        "{path}: architecture `{arch}` (general.architecture) is not supported (supported: {})",
        SUPPORTED_ARCHITECTURES
    )]
    UnsupportedArchitecture { path: PathBuf, arch: String },
    #[error("{path}: tensors do not match the model its metadata describes:{reason}")]
    Tensors { path: PathBuf, reason: String },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{0}")]
    Torch(#[from] tch::TchError),
}

fn describe_magic(found: &Option<Vec<u8>>) -> String {
    match found {
        None => "fewer than 4 bytes".into(),
        Some(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
    }
}

fn big_endian_hint(version: u32) -> &'static str {
    if matches!(version.swap_bytes(), 2 | 3) {
        "; this looks like a big-endian GGUF, which is not supported"
    } else {
        ""
    }
}
