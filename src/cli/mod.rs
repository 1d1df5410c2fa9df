//! The `fomaml` subcommands. Each takes its clap args and returns `anyhow::Result`; `main` prints
//! the error chain on one line and exits non-zero.

pub mod config_show;
pub mod demo;
pub mod doctor;
pub mod encode;
pub mod eval;
pub mod export;
pub mod import_gguf;
pub mod logits;
pub mod plan;
pub mod prepare_data;
pub mod report;
pub mod train;

use anyhow::{bail, Result};
use tch::{Device, Kind};

/// Compute dtype of a command: fp32, or bf16 (weights cast, norms and rotary still in fp32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    #[value(alias = "fp32", alias = "float32")]
    F32,
    #[value(alias = "bfloat16")]
    Bf16,
}

impl Dtype {
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// `auto` (the first GPU when there is one, else CPU), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let cuda_count = || if tch::Cuda::is_available() { tch::Cuda::device_count() } else { 0 };
    let cuda = |index: usize| -> Result<Device> {
        let count = cuda_count();
        if count == 0 {
            bail!("device `{spec}`: CUDA is not available here (run `fomaml doctor` to see why)");
        }
        if index as i64 >= count {
            bail!("device `{spec}`: only {count} CUDA device(s) are visible");
        }
        Ok(Device::Cuda(index))
    };
    match spec {
        "auto" => Ok(if cuda_count() > 0 { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => bail!("device `{spec}` is not one of auto, cpu, cuda, cuda:N"),
        },
    }
}
