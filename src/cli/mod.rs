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

use std::path::Path;

use anyhow::{bail, Result};
use tch::{Device, Kind};

use crate::config::Config;

/// The config of a command, its notices (original-trainer keys without effect, translated
/// spellings) printed to stderr once: by rank 0 when a launcher started several.
pub fn load_config(path: &Path, overrides: &[String]) -> Result<Config> {
    let resolved = Config::resolve(path, overrides)?;
    if std::env::var("RANK").map_or(true, |r| r == "0") {
        for notice in &resolved.notices {
            eprintln!("note: {notice}");
        }
    }
    Ok(resolved.config)
}

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
    device_for_rank(spec, 0)
}

/// As [`parse_device`] for the rank with LOCAL_RANK `local_rank`: `auto` and `cuda` mean that
/// rank's GPU (torchrun's one process per GPU); `cuda:N` is taken as written.
pub fn device_for_rank(spec: &str, local_rank: usize) -> Result<Device> {
    let count = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    resolve_device(spec, local_rank, count)
}

fn resolve_device(spec: &str, local_rank: usize, cuda_count: usize) -> Result<Device> {
    let cuda = |index: usize, how: &str| -> Result<Device> {
        if cuda_count == 0 {
            bail!("device `{spec}`: CUDA is not available here (run `fomaml doctor` to see why)");
        }
        if index >= cuda_count {
            bail!("device `{spec}`: {how} {index}, but only {cuda_count} CUDA device(s) are visible");
        }
        Ok(Device::Cuda(index))
    };
    let own = "LOCAL_RANK is";
    match spec {
        "auto" if cuda_count == 0 => Ok(Device::Cpu),
        // One visible GPU per rank (CUDA_VISIBLE_DEVICES set per process): it is this rank's.
        "auto" | "cuda" if cuda_count == 1 => cuda(0, own),
        "auto" | "cuda" => cuda(local_rank, own),
        "cpu" => Ok(Device::Cpu),
        _ => match spec.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i, "device index"),
            _ => bail!("device `{spec}` is not one of auto, cpu, cuda, cuda:N"),
        },
    }
}

#[cfg(test)]
mod device_tests {
    use super::*;

    #[test]
    fn each_rank_takes_its_own_gpu_unless_one_is_named() {
        assert_eq!(resolve_device("auto", 3, 4).unwrap(), Device::Cuda(3));
        assert_eq!(resolve_device("cuda", 2, 4).unwrap(), Device::Cuda(2));
        assert_eq!(resolve_device("cuda:1", 3, 4).unwrap(), Device::Cuda(1));
        assert_eq!(resolve_device("auto", 3, 0).unwrap(), Device::Cpu);
        assert_eq!(resolve_device("cpu", 3, 4).unwrap(), Device::Cpu);
        assert_eq!(resolve_device("cuda", 3, 1).unwrap(), Device::Cuda(0));
        let e = resolve_device("cuda", 4, 4).unwrap_err().to_string();
        assert!(e.contains("LOCAL_RANK is 4, but only 4 CUDA device(s)"), "{e}");
        let e = resolve_device("cuda:0", 0, 0).unwrap_err().to_string();
        assert!(e.contains("CUDA is not available"), "{e}");
        assert!(resolve_device("gpu", 0, 1).is_err());
    }
}
