//! `fomaml export`: a checkpoint's meta-parameters as a Hugging Face model directory.

use std::path::PathBuf;

use anyhow::Result;

use super::Dtype;
use crate::checkpoint::export::export_hf;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// A checkpoint directory (<run>/checkpoints/step_N).
    pub checkpoint: PathBuf,
    /// Output directory: config.json, model.safetensors and the tokenizer files, loadable by
    /// transformers' from_pretrained; for a LoRA run a PEFT adapter directory (unless --merge).
    pub out: PathBuf,
    /// Weight dtype of the export.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    /// For a LoRA checkpoint: the base model with the adapter merged in, instead of a PEFT adapter.
    #[arg(long)]
    pub merge: bool,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    export_hf(&args.checkpoint, &args.out, args.dtype.kind(), args.merge, args.force)?;
    println!("{} -> {}", args.checkpoint.display(), args.out.display());
    Ok(())
}
