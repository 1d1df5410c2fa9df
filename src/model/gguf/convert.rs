//! A GGUF model as a Hugging Face checkpoint: config.json from the metadata, GGUF tensor names to
//! HF names, and llama.cpp's q/k row permutation undone.
//!
//! convert_hf_to_gguf.py permutes the rows of Llama's q_proj and k_proj (weight and bias) from HF's
//! rotate-half layout back to Meta's interleaved one: per head, rows viewed as [2, head_dim/2] are
//! transposed to [head_dim/2, 2] (q over the attention heads, k over the kv heads). Qwen2/Qwen3 are
//! converted without it. The inverse here views each head's rows as [head_dim/2, 2] and transposes.

use serde_json::{json, Value as Json};
use tch::{Kind, Tensor};

use super::tokenizer::TokenizerFiles;
use super::{GgufError, GgufFile};
use crate::model::{Architecture, ModelConfig};
use crate::tensor_io::TensorSpec;

pub const SUPPORTED_ARCHITECTURES: &str = "llama, qwen2, qwen3";

/// HF suffix of each per-layer GGUF tensor (`blk.N.<gguf>` -> `model.layers.N.<hf>`).
const LAYER_TENSORS: [(&str, &str); 12] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    // Older conversions spell the attention output `attn_out`.
    ("attn_out", "self_attn.o_proj"),
];

/// The HF name of a GGUF tensor, `None` for names that have none.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    layer.parse::<u32>().ok()?;
    let (base, param) = rest.rsplit_once('.')?;
    let (_, hf) = LAYER_TENSORS.iter().find(|(g, _)| *g == base)?;
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

/// Undoes llama.cpp's permutation of q/k rows (`heads` heads; weight [rows, cols] or bias [rows]).
pub fn unpermute_rows(t: &Tensor, heads: i64) -> Tensor {
    let shape = t.size();
    let head_dim = shape[0] / heads;
    t.reshape([heads, head_dim / 2, 2, -1]).transpose(1, 2).reshape(shape.as_slice())
}

/// The Llama 3 rope factors convert_hf_to_gguf.py stores as `rope_freqs.weight` for `params`
/// (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).
fn llama3_rope_factors(theta: f64, head_dim: i64, params: [f64; 4]) -> Vec<f64> {
    let [factor, low, high, original] = params;
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// The rope_scaling of config.json behind the factors of a `rope_freqs.weight` tensor. The file
/// keeps only the factors, so they are accepted when Llama 3.1's published parameters (any factor)
/// reproduce them, and anything else is refused rather than guessed.
fn llama3_scaling(found: &[f64], theta: f64, head_dim: i64) -> Result<Json, String> {
    if found.len() as i64 != head_dim / 2 {
        return Err(format!("has {} rope factors for head_dim {head_dim}", found.len()));
    }
    let factor = found.iter().cloned().fold(1.0, f64::max).round();
    let expected = llama3_rope_factors(theta, head_dim, [factor, 1.0, 4.0, 8192.0]);
    if found.iter().zip(&expected).any(|(f, e)| (f - e).abs() > 1e-4 * e.abs()) {
        return Err(format!(
            "holds rope factors that are not Llama 3's scaling (factor {factor}, low_freq_factor 1, \
             high_freq_factor 4, original_max_position_embeddings 8192); other rope scalings are not supported"
        ));
    }
    Ok(json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}))
}

struct Planned {
    hf_name: String,
    tensor: usize,
    /// Heads to undo the q/k permutation over.
    unpermute: Option<i64>,
}

/// What an import will write: config.json and the tensors, checked against each other.
pub struct Conversion<'a> {
    file: &'a GgufFile,
    pub config_json: Json,
    pub config: ModelConfig,
    planned: Vec<Planned>,
}

impl<'a> Conversion<'a> {
    /// Reads the hyperparameters, builds config.json and maps every tensor, reporting all missing,
    /// unexpected and mis-shaped tensors at once.
    pub fn plan(file: &'a GgufFile, dtype: Kind) -> Result<Self, GgufError> {
        // 1. config.json from the file's hyperparameters.
        let (architecture, config_json) = hf_config(file, dtype)?;
        let config = ModelConfig::from_json(&config_json.to_string()).map_err(|reason| GgufError::Invalid {
            path: file.path().to_path_buf(),
            key: format!("{}.*", config_json["model_type"].as_str().unwrap_or_default()),
            reason,
        })?;
        // 2. Every tensor onto the HF parameter it becomes, all problems reported at once.
        let planned = map_tensors(file, architecture, &config)?;
        Ok(Self { file, config_json, config, planned })
    }

    /// Puts the tokenizer's special ids into config.json, as transformers' configs carry them.
    pub fn set_special_ids(&mut self, tokenizer: &TokenizerFiles) {
        self.config_json["bos_token_id"] = json!(tokenizer.bos_id);
        self.config_json["eos_token_id"] = json!(tokenizer.eos_id);
        self.config_json["pad_token_id"] = json!(tokenizer.pad_id);
    }

    pub fn tensor_count(&self) -> usize {
        self.planned.len()
    }

    /// Number of weights written.
    pub fn numel(&self) -> u64 {
        self.planned.iter().map(|p| self.file.tensors()[p.tensor].numel()).sum()
    }

    /// Name, dtype and shape of every tensor as written, in the file's order.
    pub fn specs(&self, kind: Kind) -> Vec<TensorSpec> {
        let shape = |p: &Planned| self.file.tensors()[p.tensor].shape();
        self.planned.iter().map(|p| TensorSpec { name: p.hf_name.clone(), kind, shape: shape(p) }).collect()
    }

    /// The `index`-th tensor of [`Self::specs`]: dequantized to fp32, q/k rows un-permuted, cast
    /// to `kind`.
    pub fn tensor(&self, index: usize, kind: Kind) -> Result<Tensor, GgufError> {
        let p = &self.planned[index];
        let info = &self.file.tensors()[p.tensor];
        let t = Tensor::f_from_slice(&self.file.dequantize(info))?.f_reshape(info.shape().as_slice())?;
        let t = match p.unpermute {
            Some(heads) => unpermute_rows(&t, heads),
            None => t,
        };
        Ok(t.f_to_kind(kind)?)
    }
}

/// The GGUF's architecture and the config.json its hyperparameters make.
fn hf_config(file: &GgufFile, dtype: Kind) -> Result<(Architecture, Json), GgufError> {
    let path = file.path().to_path_buf();
    let arch_name = file.str("general.architecture")?;
    let architecture = match arch_name {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        other => return Err(GgufError::UnsupportedArchitecture { path, arch: other.into() }),
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let embed = file
        .tensor("token_embd.weight")
        .ok_or_else(|| GgufError::Tensors { path: path.clone(), reason: " token_embd.weight is missing".into() })?;
    let vocab_size = embed.shape()[0];
    let hidden = file.usize(&key("embedding_length"))? as i64;
    let (heads, kv_heads, head_dim) = attention_shape(file, arch_name, hidden)?;
    let (rope_theta, rope_scaling) = rope(file, arch_name, head_dim)?;
    let eps_key = key("attention.layer_norm_rms_epsilon");
    let rms_norm_eps = file.opt_f64(&eps_key)?.ok_or(GgufError::MissingKey { path, key: eps_key })?;
    let tied = file.tensor("output.weight").is_none();
    let has_bias = file.tensor("blk.0.attn_q.bias").is_some();

    let dtype_name = match dtype {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    };
    let mut config = json!({
        "architectures": [architecture.hf_name()],
        "model_type": arch_name,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": file.usize(&key("feed_forward_length"))?,
        "num_hidden_layers": file.usize(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": file.usize(&key("context_length"))?,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": tied,
        "attention_bias": has_bias && architecture != Architecture::Qwen2,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "use_cache": true,
        "torch_dtype": dtype_name,
    });
    if architecture != Architecture::Llama {
        config["use_sliding_window"] = json!(false);
    }
    Ok((architecture, config))
}

/// Heads, key-value heads and the head dimension, checked against each other.
fn attention_shape(file: &GgufFile, arch: &str, hidden: i64) -> Result<(i64, i64, i64), GgufError> {
    let key = |k: &str| format!("{arch}.{k}");
    let invalid = |k: &str, reason: String| GgufError::Invalid { path: file.path().to_path_buf(), key: key(k), reason };
    let heads = file.usize(&key("attention.head_count"))? as i64;
    let kv_heads = file.opt_usize(&key("attention.head_count_kv"))?.map_or(heads, |n| n as i64);
    if heads == 0 || (hidden % heads != 0 && file.get(&key("attention.key_length")).is_none()) {
        return Err(invalid("attention.head_count", format!("{heads} heads do not divide the hidden size {hidden}")));
    }
    let head_dim = file.opt_usize(&key("attention.key_length"))?.map_or(hidden / heads, |n| n as i64);
    if let Some(v) = file.opt_usize(&key("attention.value_length"))? {
        if v as i64 != head_dim {
            return Err(invalid("attention.value_length", format!("{v} differs from key_length {head_dim}")));
        }
    }
    if let Some(rope_dim) = file.opt_usize(&key("rope.dimension_count"))? {
        if rope_dim as i64 != head_dim {
            let reason = format!("{rope_dim}: partial rotary (head_dim {head_dim}) is not supported");
            return Err(invalid("rope.dimension_count", reason));
        }
    }
    Ok((heads, kv_heads, head_dim))
}

/// RoPE's base and its scaling (Llama 3's, recovered from `rope_freqs.weight`), as config.json has them.
fn rope(file: &GgufFile, arch: &str, head_dim: i64) -> Result<(f64, Json), GgufError> {
    let path = file.path().to_path_buf();
    if let Some(kind) = file.opt_str(&format!("{arch}.rope.scaling.type"))? {
        if kind != "none" {
            let reason = format!("`{kind}` rope scaling is not supported");
            return Err(GgufError::Invalid { path, key: format!("{arch}.rope.scaling.type"), reason });
        }
    }
    let rope_theta = file.opt_f64(&format!("{arch}.rope.freq_base"))?.unwrap_or(10000.0);
    let rope_scaling = match file.tensor("rope_freqs.weight") {
        Some(info) => {
            let factors: Vec<f64> = file.dequantize(info).into_iter().map(f64::from).collect();
            llama3_scaling(&factors, rope_theta, head_dim).map_err(|reason| GgufError::BadTensor {
                path,
                tensor: info.name.clone(),
                reason,
            })?
        }
        None => Json::Null,
    };
    Ok((rope_theta, rope_scaling))
}

/// Every tensor of the file onto the HF parameter `config` expects, with the q/k un-permutation
/// Llama needs; all missing, unexpected and mis-shaped tensors are reported at once.
fn map_tensors(file: &GgufFile, architecture: Architecture, config: &ModelConfig) -> Result<Vec<Planned>, GgufError> {
    let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
    let expected: std::collections::HashMap<String, Vec<i64>> = config.parameter_shapes().into_iter().collect();
    let (mut planned, mut unexpected, mut misshaped) = (Vec::new(), Vec::new(), Vec::new());
    for (index, info) in file.tensors().iter().enumerate() {
        if info.name == "rope_freqs.weight" {
            continue;
        }
        let Some(hf) = hf_name(&info.name).filter(|n| expected.contains_key(n)) else {
            unexpected.push(info.name.clone());
            continue;
        };
        if planned.iter().any(|p: &Planned| p.hf_name == hf) {
            unexpected.push(format!("{} (a second time)", info.name));
            continue;
        }
        if expected[&hf] != info.shape() {
            misshaped.push(format!("{} (as {hf}): expected {:?}, found {:?}", info.name, expected[&hf], info.shape()));
            continue;
        }
        let unpermute = match (architecture, hf.rsplit('.').nth(1)) {
            (Architecture::Llama, Some("q_proj")) => Some(heads),
            (Architecture::Llama, Some("k_proj")) => Some(kv_heads),
            _ => None,
        };
        planned.push(Planned { hf_name: hf, tensor: index, unpermute });
    }
    let found: std::collections::HashSet<&str> = planned.iter().map(|p| p.hf_name.as_str()).collect();
    let missing: Vec<String> =
        config.parameter_shapes().into_iter().map(|(n, _)| n).filter(|n| !found.contains(n.as_str())).collect();
    let mut reason = String::new();
    for (what, list) in [("missing (HF names)", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)] {
        if !list.is_empty() {
            let shown: Vec<&str> = list.iter().take(4).map(String::as_str).collect();
            let more = if list.len() > 4 { format!(", … {} more", list.len() - 4) } else { String::new() };
            reason.push_str(&format!(" {} {what} ({}{more});", list.len(), shown.join(", ")));
        }
    }
    if !reason.is_empty() {
        return Err(GgufError::Tensors {
            path: file.path().to_path_buf(),
            reason: reason.trim_end_matches(';').to_string(),
        });
    }
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert_eq!(hf_name("blk.12.attn_q.bias").unwrap(), "model.layers.12.self_attn.q_proj.bias");
        assert_eq!(hf_name("blk.0.ffn_down.weight").unwrap(), "model.layers.0.mlp.down_proj.weight");
        assert_eq!(hf_name("blk.3.attn_k_norm.weight").unwrap(), "model.layers.3.self_attn.k_norm.weight");
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("mm.0.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: rows viewed as [heads, 2, head_dim/2] become [heads, head_dim/2, 2].
        let (heads, head_dim, cols) = (3, 8, 5);
        let hf =
            Tensor::arange(heads * head_dim * cols, (Kind::Float, tch::Device::Cpu)).view([heads * head_dim, cols]);
        let gguf = hf.reshape([heads, 2, head_dim / 2, cols]).transpose(1, 2).reshape([heads * head_dim, cols]);
        assert!(unpermute_rows(&gguf, heads).equal(&hf));
        let bias = Tensor::arange(heads * head_dim, (Kind::Float, tch::Device::Cpu));
        let permuted = bias.reshape([heads, 2, head_dim / 2]).transpose(1, 2).reshape([heads * head_dim]);
        assert!(unpermute_rows(&permuted, heads).equal(&bias));
    }

    #[test]
    fn llama3_rope_factors_match_the_published_scaling() {
        // Llama 3.1 8B: theta 500000, head_dim 128, factor 8: the lowest frequencies are scaled by 8,
        // the highest by 1, and the band between blends.
        let f = llama3_rope_factors(500000.0, 128, [8.0, 1.0, 4.0, 8192.0]);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
    }

    #[test]
    fn llama3_scaling_is_recovered_from_stored_factors_and_others_refused() {
        // Llama 3.2 1B: factor 32; the file holds the factors as f32.
        let stored: Vec<f64> =
            llama3_rope_factors(500000.0, 64, [32.0, 1.0, 4.0, 8192.0]).iter().map(|&f| f as f32 as f64).collect();
        let scaling = llama3_scaling(&stored, 500000.0, 64).unwrap();
        assert_eq!(scaling["factor"], 32.0);
        assert_eq!(scaling["rope_type"], "llama3");
        let cfg = ModelConfig::from_json(
            &json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 64,
                    "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
                    "rms_norm_eps": 1e-5, "max_position_embeddings": 8, "rope_theta": 500000.0,
                    "rope_scaling": scaling})
            .to_string(),
        )
        .unwrap();
        assert!(matches!(cfg.rope_scaling, crate::model::RopeScaling::Llama3 { factor, .. } if factor == 32.0));

        let other_context = llama3_rope_factors(500000.0, 64, [32.0, 1.0, 4.0, 4096.0]);
        assert!(llama3_scaling(&other_context, 500000.0, 64).unwrap_err().contains("not Llama 3's scaling"));
        assert!(llama3_scaling(&stored[1..], 500000.0, 64).unwrap_err().contains("head_dim 64"));
    }
}
