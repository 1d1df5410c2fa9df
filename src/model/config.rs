//! `config.json` of a Hugging Face checkpoint, read straight into the one decoder's configuration.
//!
//! Llama, Qwen2 and Qwen3 differ only in a few switches (biases, q/k norms, head_dim, rope scaling);
//! they are resolved here once so that `llama.rs` never branches on the architecture name.
//! Both transformers v4 (`rope_theta`, `rope_scaling`, `torch_dtype`) and v5 (`rope_parameters`,
//! `dtype`) layouts are accepted: hub checkpoints use the first, `save_pretrained` today the second.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

    fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" => Some(Self::Llama),
            "Qwen2ForCausalLM" => Some(Self::Qwen2),
            "Qwen3ForCausalLM" => Some(Self::Qwen3),
            _ => None,
        }
    }

    fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// How rotary frequencies are derived from `rope_theta`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Llama 3.1+: long wavelengths divided by `factor`, a smooth blend between the two bands.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The resolved configuration of the decoder. Built only through [`ModelConfig::from_json`].
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: i64,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub o_proj_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: bool,
    /// The dtype the checkpoint was saved in (`torch_dtype` / `dtype`), if stated.
    pub saved_dtype: Option<String>,
}

/// config.json as written by transformers; only the keys the decoder needs.
#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    rms_norm_eps: f64,
    max_position_embeddings: i64,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    /// transformers < 4.45 spelled `rope_type` as `type`.
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

impl ModelConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound && !dir.exists() {
                ModelError::NoModelDir { dir: dir.to_path_buf() }
            } else {
                ModelError::Io { path: path.clone(), source }
            }
        })?;
        Self::from_json(&text).map_err(|reason| ModelError::Config { path, reason })
    }

    /// Parses config.json text; the error is a reason without the file name.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Self::resolve(raw)
    }

    fn resolve(raw: RawConfig) -> Result<Self, String> {
        let architecture = resolve_architecture(&raw)?;
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(format!("hidden_act `{act}` is not supported (only `silu`)"));
            }
        }
        if raw.use_sliding_window == Some(true) {
            return Err("use_sliding_window: true is not supported (full attention only)".into());
        }
        for (key, value) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
        ] {
            if value <= 0 {
                return Err(format!("`{key}` must be positive, got {value}"));
            }
        }

        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if num_key_value_heads <= 0 || raw.num_attention_heads % num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({num_key_value_heads})",
                raw.num_attention_heads
            ));
        }
        let head_dim = match (raw.head_dim, architecture) {
            (Some(d), _) => d,
            // Qwen3Config's default; Llama and Qwen2 derive it from the hidden size.
            (None, Architecture::Qwen3) => 128,
            (None, _) => {
                if raw.hidden_size % raw.num_attention_heads != 0 {
                    return Err(format!(
                        "hidden_size ({}) is not divisible by num_attention_heads ({}) and head_dim is not given",
                        raw.hidden_size, raw.num_attention_heads
                    ));
                }
                raw.hidden_size / raw.num_attention_heads
            }
        };
        if head_dim <= 0 || head_dim % 2 != 0 {
            return Err(format!("head_dim must be a positive even number, got {head_dim}"));
        }

        let (rope_theta, rope_scaling) = resolve_rope(&raw)?;
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_proj_bias, qk_norm) = match architecture {
            Architecture::Llama => (attention_bias, attention_bias, false),
            Architecture::Qwen2 => (true, false, false),
            Architecture::Qwen3 => (attention_bias, attention_bias, true),
        };
        let mlp_bias = architecture == Architecture::Llama && raw.mlp_bias.unwrap_or(false);

        Ok(Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_proj_bias,
            mlp_bias,
            qk_norm,
            saved_dtype: raw.dtype.or(raw.torch_dtype),
        })
    }

    /// Every parameter the decoder expects, in transformers' `named_parameters()` order.
    /// The single source of truth for loading, validation and (later) sharding.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let (h, i, v, hd) = (self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim);
        let (q_out, kv_out) = (self.num_attention_heads * hd, self.num_key_value_heads * hd);
        let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for layer in 0..self.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            let mut push = |name: String, shape: Vec<i64>| shapes.push((name, shape));
            for (proj, out, inp, bias) in [
                ("q_proj", q_out, h, self.qkv_bias),
                ("k_proj", kv_out, h, self.qkv_bias),
                ("v_proj", kv_out, h, self.qkv_bias),
                ("o_proj", h, q_out, self.o_proj_bias),
            ] {
                push(format!("{p}.self_attn.{proj}.weight"), vec![out, inp]);
                if bias {
                    push(format!("{p}.self_attn.{proj}.bias"), vec![out]);
                }
            }
            if self.qk_norm {
                push(format!("{p}.self_attn.q_norm.weight"), vec![hd]);
                push(format!("{p}.self_attn.k_norm.weight"), vec![hd]);
            }
            for (proj, out, inp) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
                push(format!("{p}.mlp.{proj}.weight"), vec![out, inp]);
                if self.mlp_bias {
                    push(format!("{p}.mlp.{proj}.bias"), vec![out]);
                }
            }
            push(format!("{p}.input_layernorm.weight"), vec![h]);
            push(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        }
        shapes.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            shapes.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        shapes
    }

    pub fn num_parameters(&self) -> i64 {
        self.parameter_shapes().iter().map(|(_, s)| s.iter().product::<i64>()).sum()
    }
}

fn resolve_architecture(raw: &RawConfig) -> Result<Architecture, String> {
    if let Some(names) = &raw.architectures {
        let name = names.first().ok_or("`architectures` is an empty list")?;
        return Architecture::from_hf_name(name)
            .ok_or_else(|| format!("architecture `{name}` is not supported (supported: {})", Architecture::SUPPORTED));
    }
    match raw.model_type.as_deref() {
        Some(t) => Architecture::from_model_type(t)
            .ok_or_else(|| format!("model_type `{t}` is not supported (supported: llama, qwen2, qwen3)")),
        None => Err("neither `architectures` nor `model_type` is given".into()),
    }
}

fn resolve_rope(raw: &RawConfig) -> Result<(f64, RopeScaling), String> {
    // v5 puts everything in rope_parameters; v4 has rope_theta at the top and rope_scaling beside it.
    let params = raw.rope_parameters.as_ref().or(raw.rope_scaling.as_ref());
    let theta = params
        .and_then(|p| p.rope_theta)
        .or(raw.rope_theta)
        .ok_or("missing field `rope_theta` (or `rope_parameters.rope_theta`)")?;
    let Some(p) = params else { return Ok((theta, RopeScaling::Default)) };
    let kind = p.rope_type.as_deref().or(p.legacy_type.as_deref()).unwrap_or("default");
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "llama3" => {
            let need = |v: Option<f64>, key: &str| v.ok_or(format!("rope type llama3 needs `{key}`"));
            RopeScaling::Llama3 {
                factor: need(p.factor, "factor")?,
                low_freq_factor: need(p.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(p.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: need(
                    p.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
            }
        }
        other => return Err(format!("rope type `{other}` is not supported (supported: default, llama3)")),
    };
    Ok((theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The config.json of meta-llama/Llama-3.2-1B as published (transformers v4 layout).
    const LLAMA_3_2_1B: &str = include_str!("../../configs/models/llama-3.2-1b.json");

    // Qwen/Qwen2.5-0.5B-Instruct (v4 layout, no head_dim, rope_scaling null).
    const QWEN2_5_0_5B: &str = include_str!("../../configs/models/qwen2.5-0.5b.json");

    // Qwen/Qwen3-4B (v4 layout, explicit head_dim 128 with hidden 2560 / 32 heads = 80).
    const QWEN3_4B: &str = include_str!("../../configs/models/qwen3-4b.json");

    #[test]
    fn published_configs_resolve_to_the_known_parameter_counts() {
        let llama = ModelConfig::from_json(LLAMA_3_2_1B).unwrap();
        assert_eq!(llama.architecture, Architecture::Llama);
        assert!(matches!(llama.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
        assert_eq!(llama.rope_theta, 500000.0);
        assert_eq!(llama.num_parameters(), 1_235_814_400);

        let qwen2 = ModelConfig::from_json(QWEN2_5_0_5B).unwrap();
        assert_eq!((qwen2.head_dim, qwen2.qkv_bias, qwen2.o_proj_bias), (64, true, false));
        assert_eq!(qwen2.rope_scaling, RopeScaling::Default);
        assert_eq!(qwen2.num_parameters(), 494_032_768);

        let qwen3 = ModelConfig::from_json(QWEN3_4B).unwrap();
        assert_eq!((qwen3.head_dim, qwen3.qk_norm, qwen3.qkv_bias), (128, true, false));
        assert_eq!(qwen3.num_parameters(), 4_022_468_096);
        assert_eq!(qwen3.saved_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn errors_name_the_offending_key() {
        let unsupported = LLAMA_3_2_1B.replace("LlamaForCausalLM", "MistralForCausalLM");
        let err = ModelConfig::from_json(&unsupported).unwrap_err();
        assert!(err.contains("MistralForCausalLM") && err.contains("supported"), "{err}");

        let missing = LLAMA_3_2_1B.replace("\"hidden_size\": 2048,", "");
        let err = ModelConfig::from_json(&missing).unwrap_err();
        assert!(err.contains("missing field `hidden_size`"), "{err}");

        let yarn = LLAMA_3_2_1B.replace("\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"");
        let err = ModelConfig::from_json(&yarn).unwrap_err();
        assert!(err.contains("rope type `yarn`"), "{err}");

        let sliding = QWEN2_5_0_5B.replace("\"use_sliding_window\": false", "\"use_sliding_window\": true");
        assert!(ModelConfig::from_json(&sliding).unwrap_err().contains("use_sliding_window"));

        let gqa = LLAMA_3_2_1B.replace("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5");
        assert!(ModelConfig::from_json(&gqa).unwrap_err().contains("multiple of num_key_value_heads"));
    }

    #[test]
    fn legacy_rope_type_key_is_accepted() {
        let legacy = LLAMA_3_2_1B.replace("\"rope_type\": \"llama3\"", "\"type\": \"llama3\"");
        let cfg = ModelConfig::from_json(&legacy).unwrap();
        assert!(matches!(cfg.rope_scaling, RopeScaling::Llama3 { .. }));
    }
}
