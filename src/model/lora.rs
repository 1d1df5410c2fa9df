//! LoRA (Hu et al. 2021) as PEFT defines it: a targeted linear layer computes
//! `W x + (alpha / r) · B A dropout(x)`, with A [r, in] initialised uniform(±1/√in) (PEFT's
//! kaiming-uniform with a = √5) and B [out, r] at zero, so training starts from the base model.
//!
//! The adapter tensors are ordinary named weights (`<linear>.lora_A.weight`, `<linear>.lora_B.weight`)
//! beside the base ones; the decoder picks them up when present. Export writes PEFT's layout
//! (`base_model.model.` prefix, adapter_config.json) so the Python `peft` package loads it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use tch::{Kind, Tensor};

use super::{ModelConfig, Weights};
use crate::data::sampler::{stable_hash, SplitMix64};

/// The linear layers LoRA can target, by their Hugging Face module names.
pub const LINEAR_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
const PEFT_PREFIX: &str = "base_model.model.";

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names from [`LINEAR_MODULES`].
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// From `model.lora_rank` (0: no LoRA), `lora_alpha`, `lora_dropout` and `target_modules`
    /// ("all-linear" or a list of names).
    pub fn from_settings(rank: usize, alpha: f64, dropout: f64, target_modules: &Json) -> Result<Option<Self>> {
        if rank == 0 {
            return Ok(None);
        }
        let targets: Vec<String> = match target_modules {
            Json::String(s) if s == "all-linear" => LINEAR_MODULES.iter().map(|m| m.to_string()).collect(),
            Json::String(s) => vec![s.clone()],
            Json::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .context("model.target_modules: expected \"all-linear\" or a list of module names")?,
            other => bail!("model.target_modules: expected \"all-linear\" or a list of module names, got {other}"),
        };
        if let Some(bad) = targets.iter().find(|t| !LINEAR_MODULES.contains(&t.as_str())) {
            bail!("model.target_modules: `{bad}` is not one of all-linear, {}", LINEAR_MODULES.join(", "));
        }
        if !(0.0..1.0).contains(&dropout) {
            bail!("model.lora_dropout must be in [0, 1), got {dropout}");
        }
        Ok(Some(Self { rank: rank as i64, alpha, dropout, targets }))
    }

    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// (name, shape) of every adapter tensor, in model order.
    pub fn adapter_shapes(&self, cfg: &ModelConfig) -> Vec<(String, Vec<i64>)> {
        let mut shapes = Vec::new();
        for (name, shape) in cfg.parameter_shapes() {
            let Some(linear) = name.strip_suffix(".weight") else { continue };
            let module = linear.rsplit('.').next().unwrap_or("");
            if shape.len() == 2 && self.targets.iter().any(|t| t == module) {
                let (out, inp) = (shape[0], shape[1]);
                shapes.push((format!("{linear}.lora_A.weight"), vec![self.rank, inp]));
                shapes.push((format!("{linear}.lora_B.weight"), vec![out, self.rank]));
            }
        }
        shapes
    }

    /// A fresh adapter: A uniform(±1/√in) from `seed` (SplitMix64, not libtorch's generator), B zero.
    pub fn init_adapter(&self, cfg: &ModelConfig, seed: u64) -> Weights {
        let mut rng = SplitMix64::new(seed ^ stable_hash("lora-init"));
        let mut adapter = Weights::new();
        for (name, shape) in self.adapter_shapes(cfg) {
            let tensor = if name.ends_with("lora_A.weight") {
                let bound = 1.0 / (shape[1] as f64).sqrt();
                let n: i64 = shape.iter().product();
                let values: Vec<f32> = (0..n)
                    .map(|_| ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * bound as f32)
                    .collect();
                Tensor::from_slice(&values).view(shape.as_slice())
            } else {
                Tensor::zeros(shape.as_slice(), (Kind::Float, tch::Device::Cpu))
            };
            adapter.insert(name, tensor);
        }
        adapter
    }

    /// Writes adapter_config.json and adapter_model.safetensors (PEFT's names) into `dir`.
    pub fn write_peft(&self, dir: &Path, base_model: &str, adapter: &[(&str, &Tensor)]) -> Result<()> {
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
        });
        std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
        let renamed: Vec<(String, Tensor)> =
            adapter.iter().map(|(n, t)| (format!("{PEFT_PREFIX}{n}"), t.to_kind(Kind::Float))).collect();
        let refs: Vec<(&str, &Tensor)> = renamed.iter().map(|(n, t)| (n.as_str(), t)).collect();
        crate::tensor_io::write_safetensors(&dir.join("adapter_model.safetensors"), &refs, None).map(drop)
    }

    /// Base weights with the adapter merged in: W + (alpha / r) · B A for every adapted linear.
    pub fn merge(&self, base: &Weights, adapter: &Weights) -> Result<Weights> {
        let _guard = tch::no_grad_guard();
        let mut merged = Weights::new();
        for (name, w) in base.iter() {
            let linear = name.strip_suffix(".weight").unwrap_or(name);
            let a = format!("{linear}.lora_A.weight");
            let w = if adapter.contains(&a) {
                let (a, b) = (adapter.get(&a)?, adapter.get(&format!("{linear}.lora_B.weight"))?);
                (w.to_kind(Kind::Float) + b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * self.scale())
                    .to_kind(w.kind())
            } else {
                w.shallow_clone()
            };
            merged.insert(name, w);
        }
        Ok(merged)
    }
}

/// One adapted linear layer's adapter, as the decoder uses it.
pub(crate) struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
    pub train: bool,
}

impl LoraPair {
    /// (alpha / r) · B A dropout(x)
    pub fn delta(&self, x: &Tensor) -> Tensor {
        let x = if self.train && self.dropout > 0.0 { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        x.linear::<Tensor>(&self.a, None).linear::<Tensor>(&self.b, None) * self.scale
    }
}
