//! One decoder for `LlamaForCausalLM`, `Qwen2ForCausalLM` and `Qwen3ForCausalLM`.
//!
//! The three differ only in switches resolved by [`ModelConfig`]: q/k/v (and o) biases, per-head
//! q/k RMSNorm, an explicit head_dim and the rope frequency rule. Numerics follow transformers:
//! RMSNorm and rotary angles in fp32, cast back to the compute dtype before the weight multiply.
//!
//! Modules hold shallow clones of the tensors in a [`Weights`], so building a `CausalLm` over other
//! weights (adapted parameters, a gathered shard) costs nothing and in-place updates are seen.

use tch::{Kind, Tensor};

use super::lora::LoraPair;
use super::{ModelConfig, ModelError, RopeScaling, Weights};

struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Present when the weights hold `<prefix>.lora_A.weight` / `lora_B.weight`.
    lora: Option<LoraPair>,
}

impl Linear {
    fn new(w: &Weights, prefix: &str, bias: bool) -> Result<Self, ModelError> {
        let weight = w.get(&format!("{prefix}.weight"))?;
        let bias = if bias { Some(w.get(&format!("{prefix}.bias"))?) } else { None };
        let a = format!("{prefix}.lora_A.weight");
        let lora = if w.contains(&a) {
            let b = w.get(&format!("{prefix}.lora_B.weight"))?;
            Some(LoraPair { a: w.get(&a)?, b, scale: 1.0, dropout: 0.0, train: false })
        } else {
            None
        };
        Ok(Self { weight, bias, lora })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let base = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            Some(lora) => base + lora.delta(x),
            None => base,
        }
    }
}

pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(w: &Weights, name: &str, eps: f64) -> Result<Self, ModelError> {
        Ok(Self { weight: w.get(name)?, eps })
    }

    /// Normalises over the last dimension in fp32 (fp64 stays fp64), as transformers does.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let wide = if kind == Kind::Double { Kind::Double } else { Kind::Float };
        let x32 = x.to_kind(wide);
        let variance = x32.square().mean_dim(-1, true, wide);
        let normed = x32 * (variance + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

/// Rotary position embedding: inverse frequencies fixed at construction, angles from position ids.
pub struct Rotary {
    inv_freq: Tensor,
}

impl Rotary {
    pub fn new(cfg: &ModelConfig, device: tch::Device) -> Self {
        // Computed in fp32 with the same ops as transformers, so angles agree to the last bit.
        let dim = cfg.head_dim;
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / dim as f64;
        let base = Tensor::from(cfg.rope_theta as f32).to_device(device);
        let inv_freq = base.pow(&exponents).reciprocal();
        let inv_freq = match cfg.rope_scaling {
            RopeScaling::Default => inv_freq,
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let low_freq_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_freq_wavelen = original_max_position_embeddings / high_freq_factor;
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                // Long wavelengths are stretched by `factor`, short ones kept, the band between blended.
                let scaled = inv_freq.where_self(&wavelen.le(low_freq_wavelen), &(&inv_freq / factor));
                let smooth = (wavelen.reciprocal() * original_max_position_embeddings - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed: Tensor = (1.0 - &smooth) * &scaled / factor + &smooth * &scaled;
                let is_medium = wavelen.ge(high_freq_wavelen).logical_and(&wavelen.le(low_freq_wavelen));
                smoothed.where_self(&is_medium, &scaled)
            }
        };
        Self { inv_freq }
    }

    /// cos and sin of shape [batch, 1, seq, head_dim] for `position_ids` [batch, seq].
    fn cos_sin(&self, position_ids: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = position_ids.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let angles = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (angles.cos().to_kind(kind), angles.sin().to_kind(kind))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().expect("rank >= 1") / 2;
    let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

/// What each query may attend to.
enum AttentionMask {
    /// No padding: the causal mask alone, which lets SDPA take its fused causal path.
    Causal,
    /// Boolean [batch, 1, seq, seq]: causal and key not padding.
    Explicit(Tensor),
    /// Packed examples of these lengths in one [1, Σ len] stream: causal within each example,
    /// nothing across (each example's own fused causal SDPA).
    Segments(Vec<i64>),
}

impl AttentionMask {
    /// `attention_mask` [batch, keys] over every key (cached ones first); the `queries` are the
    /// last positions. Without a mask and a cache: the plain causal mask.
    fn new(attention_mask: Option<&Tensor>, queries: i64) -> Self {
        let Some(mask) = attention_mask else { return Self::Causal };
        let (device, keys) = (mask.device(), mask.size()[1]);
        // Query i sits at position keys - queries + i and sees keys up to it (bottom-right aligned).
        let query_pos = Tensor::arange_start(keys - queries, keys, (Kind::Int64, device)).unsqueeze(1);
        let key_pos = Tensor::arange(keys, (Kind::Int64, device)).unsqueeze(0);
        let causal = key_pos.le_tensor(&query_pos);
        let real = mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1);
        // A padding query keeps itself, so no row is fully masked (which would make softmax NaN);
        // its output is never used.
        let itself = key_pos.eq_tensor(&query_pos);
        Self::Explicit(causal.logical_and(&real.logical_or(&itself)))
    }
}

/// Keys and values of the positions seen so far, per layer ([batch, kv_heads, seen, head_dim]),
/// for generation: each new token attends to them without recomputing them.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions cached so far.
    pub fn len(&self) -> i64 {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.size()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only `rows` of the batch (finished sequences dropped).
    pub fn select_rows(&mut self, rows: &Tensor) {
        for (k, v) in self.layers.iter_mut().flatten() {
            (*k, *v) = (k.index_select(0, rows), v.index_select(0, rows));
        }
    }

    fn layer(&mut self, index: usize) -> &mut Option<(Tensor, Tensor)> {
        if self.layers.len() <= index {
            self.layers.resize_with(index + 1, || None);
        }
        &mut self.layers[index]
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    twice_differentiable: bool,
}

impl Attention {
    fn new(cfg: &ModelConfig, w: &Weights, prefix: &str) -> Result<Self, ModelError> {
        let norm = |n: &str| -> Result<Option<RmsNorm>, ModelError> {
            if cfg.qk_norm {
                Ok(Some(RmsNorm::new(w, &format!("{prefix}.{n}.weight"), cfg.rms_norm_eps)?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            q_proj: Linear::new(w, &format!("{prefix}.q_proj"), cfg.qkv_bias)?,
            k_proj: Linear::new(w, &format!("{prefix}.k_proj"), cfg.qkv_bias)?,
            v_proj: Linear::new(w, &format!("{prefix}.v_proj"), cfg.qkv_bias)?,
            o_proj: Linear::new(w, &format!("{prefix}.o_proj"), cfg.o_proj_bias)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            twice_differentiable: false,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Tensor {
        let (batch, seq, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let heads = |proj: &Linear, n: i64, norm: &Option<RmsNorm>| {
            let h = proj.forward(x).view([batch, seq, n, self.head_dim]);
            let h = match norm {
                Some(norm) => norm.forward(&h),
                None => h,
            };
            h.transpose(1, 2)
        };
        // 1. Project to heads ([batch, heads, seq, head_dim]); Qwen3 normalises q and k per head.
        let q = heads(&self.q_proj, self.num_heads, &self.q_norm);
        let k = heads(&self.k_proj, self.num_kv_heads, &self.k_norm);
        let v = heads(&self.v_proj, self.num_kv_heads, &None);
        // 2. Rotate q and k by position.
        let (q, mut k) = (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin));
        let mut v = v;
        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.as_ref() {
                (k, v) = (Tensor::cat(&[past_k, &k], 2), Tensor::cat(&[past_v, &v], 2));
            }
            *cache = Some((k.shallow_clone(), v.shallow_clone()));
        }
        // 3. Scaled dot-product attention; kv heads are shared by groups of query heads. The
        // math kernel is the one libtorch can differentiate twice (second-order MAML).
        let gqa = self.num_kv_heads != self.num_heads;
        let attend = |q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>| {
            let causal = mask.is_none();
            match self.twice_differentiable {
                true => {
                    Tensor::internal_scaled_dot_product_attention_math(q, k, v, mask, 0.0, causal, None, None, gqa).0
                }
                false => Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, None, gqa),
            }
        };
        let out = match mask {
            AttentionMask::Causal => attend(&q, &k, &v, None),
            AttentionMask::Explicit(m) => attend(&q, &k, &v, Some(m)),
            AttentionMask::Segments(lengths) => {
                let (qs, ks, vs) =
                    (q.split_with_sizes(lengths, 2), k.split_with_sizes(lengths, 2), v.split_with_sizes(lengths, 2));
                let outs: Vec<Tensor> = (0..lengths.len()).map(|i| attend(&qs[i], &ks[i], &vs[i], None)).collect();
                Tensor::cat(&outs, 2)
            }
        };
        // 4. Merge heads and project back to the hidden size.
        let out = out.transpose(1, 2).reshape([batch, seq, self.num_heads * self.head_dim]);
        self.o_proj.forward(&out)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &ModelConfig, w: &Weights, prefix: &str) -> Result<Self, ModelError> {
        Ok(Self {
            gate_proj: Linear::new(w, &format!("{prefix}.gate_proj"), cfg.mlp_bias)?,
            up_proj: Linear::new(w, &format!("{prefix}.up_proj"), cfg.mlp_bias)?,
            down_proj: Linear::new(w, &format!("{prefix}.down_proj"), cfg.mlp_bias)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    pub fn new(cfg: &ModelConfig, w: &Weights, index: i64) -> Result<Self, ModelError> {
        let p = format!("model.layers.{index}");
        let eps = cfg.rms_norm_eps;
        Ok(Self {
            input_layernorm: RmsNorm::new(w, &format!("{p}.input_layernorm.weight"), eps)?,
            self_attn: Attention::new(cfg, w, &format!("{p}.self_attn"))?,
            post_attention_layernorm: RmsNorm::new(w, &format!("{p}.post_attention_layernorm.weight"), eps)?,
            mlp: Mlp::new(cfg, w, &format!("{p}.mlp"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, inputs: &LayerInputs) -> Tensor {
        self.forward_cached(x, inputs, None)
    }

    /// [`DecoderLayer::forward`] appending this step's keys and values to `cache` and attending to
    /// all of them.
    fn forward_cached(&self, x: &Tensor, inputs: &LayerInputs, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Tensor {
        let normed = self.input_layernorm.forward(x);
        let h = x + self.self_attn.forward(&normed, &inputs.cos, &inputs.sin, &inputs.mask, cache);
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }

    /// Attention through libtorch's math kernel, the one with a second derivative (the fused
    /// kernels have none), for second-order MAML. Slower; same values.
    pub fn twice_differentiable(mut self) -> Self {
        self.self_attn.twice_differentiable = true;
        self
    }

    /// Sets every LoRA-adapted projection's scale (alpha / r) and dropout; `train` turns dropout on.
    pub fn with_lora(mut self, scale: f64, dropout: f64, train: bool) -> Self {
        let (attn, mlp) = (&mut self.self_attn, &mut self.mlp);
        for linear in [
            &mut attn.q_proj,
            &mut attn.k_proj,
            &mut attn.v_proj,
            &mut attn.o_proj,
            &mut mlp.gate_proj,
            &mut mlp.up_proj,
            &mut mlp.down_proj,
        ] {
            if let Some(lora) = &mut linear.lora {
                (lora.scale, lora.dropout, lora.train) = (scale, dropout, train);
            }
        }
        self
    }
}

/// What every decoder layer of one batch shares: rotary angles and the attention mask.
pub struct LayerInputs {
    cos: Tensor,
    sin: Tensor,
    mask: AttentionMask,
}

impl LayerInputs {
    /// `attention_mask` [batch, seq] marks real tokens with 1 (None: no padding, the fused causal
    /// path); `position_ids` [batch, seq] defaults to 0..seq for every row; `kind` is the
    /// activations' dtype.
    pub fn new(
        rotary: &Rotary,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        kind: Kind,
    ) -> Self {
        let (batch, seq) = input_ids.size2().expect("input_ids are [batch, seq]");
        let default_positions;
        let positions = match position_ids {
            Some(p) => p,
            None => {
                default_positions =
                    Tensor::arange(seq, (Kind::Int64, input_ids.device())).unsqueeze(0).expand([batch, seq], false);
                &default_positions
            }
        };
        let (cos, sin) = rotary.cos_sin(positions, kind);
        Self { cos, sin, mask: AttentionMask::new(attention_mask, seq) }
    }

    /// Packed examples of `lengths` in one stream: `position_ids` [1, Σ len] restart at each
    /// example, and attention stays within it.
    pub fn packed(rotary: &Rotary, position_ids: &Tensor, lengths: &[i64], kind: Kind) -> Self {
        let (cos, sin) = rotary.cos_sin(position_ids, kind);
        Self { cos, sin, mask: AttentionMask::Segments(lengths.to_vec()) }
    }
}

/// Token embeddings [batch, seq, hidden] of `input_ids` under the embedding matrix [vocab, hidden].
pub fn embed(embed_tokens: &Tensor, input_ids: &Tensor) -> Tensor {
    Tensor::embedding(embed_tokens, input_ids, -1, false, false)
}

/// The causal language model: embeddings, decoder layers, final norm, LM head.
///
/// Its parts (`embed`, [`DecoderLayer`], [`RmsNorm`], [`LayerInputs`]) are public so that a
/// sharded runner can build and run them one unit at a time; `forward` here is the whole model.
pub struct CausalLm {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// The same tensor as `embed_tokens` when embeddings are tied, so its gradient sums both uses.
    lm_head: Tensor,
    rotary: Rotary,
    vocab_size: i64,
}

impl CausalLm {
    pub fn new(cfg: &ModelConfig, w: &Weights) -> Result<Self, ModelError> {
        let embed_tokens = w.get("model.embed_tokens.weight")?;
        let lm_head = if cfg.tie_word_embeddings { embed_tokens.shallow_clone() } else { w.get("lm_head.weight")? };
        let layers = (0..cfg.num_hidden_layers).map(|i| DecoderLayer::new(cfg, w, i)).collect::<Result<_, _>>()?;
        Ok(Self {
            rotary: Rotary::new(cfg, embed_tokens.device()),
            embed_tokens,
            layers,
            norm: RmsNorm::new(w, "model.norm.weight", cfg.rms_norm_eps)?,
            lm_head,
            vocab_size: cfg.vocab_size,
        })
    }

    /// Every layer through [`DecoderLayer::twice_differentiable`] (second-order MAML).
    pub fn twice_differentiable(mut self) -> Self {
        self.layers = self.layers.into_iter().map(DecoderLayer::twice_differentiable).collect();
        self
    }

    /// Every layer through [`DecoderLayer::with_lora`].
    pub fn with_lora(mut self, scale: f64, dropout: f64, train: bool) -> Self {
        self.layers = self.layers.into_iter().map(|l| l.with_lora(scale, dropout, train)).collect();
        self
    }

    pub fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    pub fn rotary(&self) -> &Rotary {
        &self.rotary
    }

    /// The LM head's weight [vocab, hidden] (the embedding matrix when tied).
    pub fn lm_head(&self) -> &Tensor {
        &self.lm_head
    }

    /// Logits [batch, seq, vocab] in the weights' dtype.
    ///
    /// `attention_mask` [batch, seq] marks real tokens with 1 (None: no padding); `position_ids`
    /// [batch, seq] defaults to 0..seq for every row.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
    ) -> Tensor {
        self.hidden_states(input_ids, attention_mask, position_ids).linear::<Tensor>(&self.lm_head, None)
    }

    /// Logits [batch, new, vocab] of `input_ids` [batch, new] following the `cache`d positions,
    /// which this call extends. `attention_mask` [batch, cached + new] covers every position;
    /// `position_ids` [batch, new] are the new tokens' positions.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        position_ids: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        let mut h = embed(&self.embed_tokens, input_ids);
        let inputs = LayerInputs::new(&self.rotary, input_ids, Some(attention_mask), Some(position_ids), h.kind());
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward_cached(&h, &inputs, Some(cache.layer(i)));
        }
        self.norm.forward(&h).linear::<Tensor>(&self.lm_head, None)
    }

    /// The final-norm hidden states [batch, seq, hidden] that [`CausalLm::forward`] feeds to the LM
    /// head, for callers that need logits at a few positions only (the training loss).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
    ) -> Tensor {
        let kind = self.embed_tokens.kind();
        let inputs = LayerInputs::new(&self.rotary, input_ids, attention_mask, position_ids, kind);
        self.hidden_states_with(input_ids, &inputs)
    }

    /// [`CausalLm::hidden_states`] under given rotary angles and mask (packed examples, say).
    pub fn hidden_states_with(&self, input_ids: &Tensor, inputs: &LayerInputs) -> Tensor {
        // 1. Token embeddings.
        let mut h = embed(&self.embed_tokens, input_ids);
        // 2. The decoder stack, every layer under the same rotary angles and mask.
        for layer in &self.layers {
            h = layer.forward(&h, inputs);
        }
        // 3. Final norm (the LM head is applied by the caller).
        self.norm.forward(&h)
    }
}
