//! `fomaml logits`: run the model on given token ids and write the logits — a debugging aid that
//! users and tests share.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::{parse_device, Dtype};
use crate::meta::loss::sft_loss;
use crate::model::{load_weights, CausalLm, ModelConfig};
use crate::tensor_io::write_safetensors;

#[derive(Debug, clap::Args)]
pub struct LogitsArgs {
    /// Hugging Face model directory (config.json + model.safetensors or a sharded index).
    #[arg(long)]
    pub model: PathBuf,
    /// Token ids, comma separated: 1,2,3.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    pub input_ids: Vec<i64>,
    /// Compute dtype.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Output safetensors file; holds `logits` [1, n, vocab], saved as fp32 whatever the dtype.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &LogitsArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let cfg = ModelConfig::from_dir(&args.model)?;
    if let Some(bad) = args.input_ids.iter().find(|&&id| id < 0 || id >= cfg.vocab_size) {
        bail!("--input-ids: token id {bad} is outside the vocabulary (0..{})", cfg.vocab_size);
    }
    let weights = load_weights(&args.model, &cfg, args.dtype.kind(), device)?;
    let model = CausalLm::new(&cfg, &weights)?;

    let n = args.input_ids.len() as i64;
    let ids = Tensor::from_slice(&args.input_ids).view([1, n]).to_device(device);
    let logits = tch::no_grad(|| model.forward(&ids, None, None)).to_kind(Kind::Float);

    let mut meta = HashMap::new();
    meta.insert("model".to_string(), args.model.display().to_string());
    meta.insert("dtype".to_string(), format!("{:?}", args.dtype).to_lowercase());
    write_safetensors(&args.out, &[("logits", &logits)], Some(meta))
        .with_context(|| format!("--out {}", args.out.display()))?;

    println!(
        "logits {:?} ({}, {:?}) -> {}",
        logits.size(),
        format!("{:?}", args.dtype).to_lowercase(),
        device,
        args.out.display()
    );
    if n > 1 {
        let all_scored = Tensor::ones([1, n], (Kind::Int64, device));
        let loss = sft_loss(&logits, &ids, &all_scored).double_value(&[]);
        println!("mean next-token loss over {} positions: {loss:.6}", n - 1);
    }
    let next = logits.get(0).get(n - 1).argmax(-1, false).int64_value(&[]);
    println!("most likely next token: {next}");
    Ok(())
}
