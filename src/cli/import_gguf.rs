//! `fomaml import-gguf`: a llama.cpp GGUF file as a Hugging Face model directory that fomaml and
//! transformers both load (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
//! generation_config.json).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value as Json};
use tch::Kind;

use crate::fsutil::write_dir_atomically;
use crate::model::gguf::{tokenizer, Conversion, GgufFile};
use crate::tensor_io::write_safetensors_streamed;

/// dtype of the written weights. Quantized tensors are dequantized to fp32 first either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportDtype {
    #[value(alias = "fp32", alias = "float32")]
    F32,
    #[value(alias = "bfloat16")]
    Bf16,
    #[value(alias = "fp16", alias = "float16")]
    F16,
}

impl ImportDtype {
    fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::F16 => Kind::Half,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ImportGgufArgs {
    /// The GGUF file (v2 or v3; architecture llama, qwen2 or qwen3; byte-level BPE tokenizer).
    pub file: PathBuf,
    /// The model directory to write; built beside it and renamed into place when complete.
    pub out_dir: PathBuf,
    /// dtype of model.safetensors.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: ImportDtype,
    /// Replace OUT_DIR if it exists.
    #[arg(long)]
    pub force: bool,
}

fn write_json(dir: &Path, name: &str, value: &Json) -> Result<()> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(args: &ImportGgufArgs) -> Result<()> {
    let file = GgufFile::open(&args.file)?;
    let kind = args.dtype.kind();
    let mut conversion = Conversion::plan(&file, kind)?;
    let tokenizer = tokenizer::build(&file)?;
    // A tokenizer.json that the tokenizers crate cannot load is refused before anything is written.
    tokenizer.tokenizer_json.to_string().parse::<tokenizers::Tokenizer>().map_err(|e| {
        anyhow::anyhow!("{}: the tokenizer built from its metadata does not load: {e}", args.file.display())
    })?;
    conversion.set_special_ids(&tokenizer);

    write_dir_atomically(&args.out_dir, args.force, |dir| {
        write_json(dir, "config.json", &conversion.config_json)?;
        write_json(dir, "tokenizer.json", &tokenizer.tokenizer_json)?;
        write_json(dir, "tokenizer_config.json", &tokenizer.tokenizer_config)?;
        let mut generation = json!({"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id});
        if let Some(pad) = tokenizer.pad_id {
            generation["pad_token_id"] = json!(pad);
        }
        write_json(dir, "generation_config.json", &generation)?;

        let bar = ProgressBar::new(conversion.tensor_count() as u64).with_style(
            ProgressStyle::with_template("dequantizing [{bar:30}] {pos}/{len} {wide_msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        let specs = conversion.specs(kind);
        // transformers refuses safetensors whose metadata lacks a known `format`.
        let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        metadata.insert("source".into(), format!("fomaml import-gguf {}", file_name(&args.file)));
        let written = write_safetensors_streamed(&dir.join("model.safetensors"), &specs, Some(metadata), |i| {
            bar.set_message(specs[i].name.clone());
            let t = conversion.tensor(i, kind)?;
            bar.inc(1);
            Ok(t)
        });
        bar.finish_and_clear();
        written.map(drop)
    })
    .with_context(|| format!("importing {}", args.file.display()))?;

    let types: std::collections::BTreeMap<&str, usize> =
        file.tensors().iter().fold(Default::default(), |mut counts, t| {
            *counts.entry(t.ggml_type.name()).or_default() += 1;
            counts
        });
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "{} (GGUF v{}, {}): {} tensors, {:.1}M weights as {}{} -> {}",
        args.file.display(),
        file.version,
        types.join(", "),
        conversion.tensor_count(),
        conversion.numel() as f64 / 1e6,
        format!("{:?}", args.dtype).to_lowercase(),
        if conversion.config.tie_word_embeddings { ", tied head" } else { "" },
        args.out_dir.display()
    );
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}
