//! Decoder-only causal LMs in the Llama / Qwen2 / Phi-3 layout. Variable names mirror the
//! checkpoint keys (`model.layers.{i}.self_attn.q_proj.weight`, ...), so loading is a
//! strict name-for-name copy.

use tch::{Kind, Tensor, nn, nn::Module};

use super::config::{CausalLmConfig, Family};
use crate::nn::{Attention, AttentionConfig, AttnMask, GatedMlp, GqaMapping, KvCache, RmsNorm};

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

/// A decoder-only transformer with its LM head.
#[derive(Debug)]
pub struct CausalLm {
    embed_tokens: nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when the head is tied to the input embedding.
    lm_head: Option<nn::Linear>,
    pub config: CausalLmConfig,
}

/// One KV cache per layer.
#[derive(Debug)]
pub struct LmCache {
    pub layers: Vec<KvCache>,
}

impl LmCache {
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, KvCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CausalLm {
    /// Builds the module tree under `root` (names as in Hugging Face checkpoints).
    pub fn new(root: &nn::Path<'_>, config: &CausalLmConfig) -> Self {
        let c = config;
        let model = root / "model";
        let embed_tokens = nn::embedding(
            &model / "embed_tokens",
            c.vocab_size,
            c.hidden_size,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                ..Default::default()
            },
        );
        let attn_cfg = AttentionConfig {
            d_model: c.hidden_size,
            n_heads: c.num_heads,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            qkv_bias: c.qkv_bias,
            o_bias: c.o_bias,
            fused_qkv: c.family == Family::Phi3,
            gqa: GqaMapping::Grouped,
            dropout: c.attention_dropout,
        };
        let layers = (0..c.num_layers)
            .map(|i| {
                let p = &model / "layers" / i;
                DecoderLayer {
                    input_layernorm: RmsNorm::new(
                        &p / "input_layernorm",
                        c.hidden_size,
                        c.rms_norm_eps,
                    ),
                    self_attn: Attention::new(&p / "self_attn", &attn_cfg),
                    post_attention_layernorm: RmsNorm::new(
                        &p / "post_attention_layernorm",
                        c.hidden_size,
                        c.rms_norm_eps,
                    ),
                    mlp: GatedMlp::new(
                        &p / "mlp",
                        c.hidden_size,
                        c.intermediate_size,
                        c.mlp_bias,
                        c.family == Family::Phi3,
                        c.act,
                    ),
                }
            })
            .collect();
        let norm = RmsNorm::new(&model / "norm", c.hidden_size, c.rms_norm_eps);
        let lm_head = (!c.tie_word_embeddings).then(|| {
            nn::linear(
                root / "lm_head",
                c.hidden_size,
                c.vocab_size,
                nn::LinearConfig {
                    bias: false,
                    ..Default::default()
                },
            )
        });
        Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config: c.clone(),
        }
    }

    /// An empty cache for `batch` rows and `capacity` positions.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> LmCache {
        let w = &self.embed_tokens.ws;
        LmCache {
            layers: self
                .layers
                .iter()
                .map(|l| l.self_attn.new_cache(batch, capacity, w.kind(), w.device()))
                .collect(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.embed_tokens.ws.kind()
    }

    pub fn device(&self) -> tch::Device {
        self.embed_tokens.ws.device()
    }

    /// Final hidden states `[b, t, d]` for `input_ids` at `positions` (both `[b, t]`).
    pub fn hidden(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &AttnMask,
        mut cache: Option<&mut LmCache>,
        train: bool,
    ) -> Tensor {
        // Residual adds stay out of place: the norms saved `x` for backward.
        #![allow(clippy::assign_op_pattern)]
        let mut x = self.embed_tokens.forward(input_ids);
        let rope = self.config.rope.tables(positions, x.kind());
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let h = layer.input_layernorm.forward(&x);
            let h = layer
                .self_attn
                .forward_self(&h, Some(&rope), mask, layer_cache, train);
            x = x + h;
            let h = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&x));
            x = x + h;
        }
        self.norm.forward(&x)
    }

    /// Vocabulary logits for hidden states `[..., d]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        crate::nn::lm_logits(hidden, self.lm_head.as_ref(), &self.embed_tokens)
    }

    /// Logits `[b, t, vocab]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut LmCache>,
        train: bool,
    ) -> Tensor {
        self.logits(&self.hidden(input_ids, positions, mask, cache, train))
    }

    /// Logits for a right- or left-padded batch: `valid` (`[b, t]`, bool) marks real tokens;
    /// positions count real tokens only, as Hugging Face does from the attention mask.
    pub fn forward_padded(&self, input_ids: &Tensor, valid: &Tensor) -> Tensor {
        let positions = positions_from_valid(valid);
        let all_valid = valid.all().int64_value(&[]) == 1;
        let mask = if all_valid {
            AttnMask::Causal
        } else {
            let t = valid.size()[1];
            AttnMask::Explicit(crate::nn::attention::causal_padding_mask(valid, 0, t))
        };
        self.forward(input_ids, &positions, &mask, None, false)
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(vs: &nn::VarStore) -> i64 {
        vs.variables()
            .values()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum()
    }
}

/// `cumsum(valid) - 1`, with padding slots at position 0.
pub fn positions_from_valid(valid: &Tensor) -> Tensor {
    let v = valid.to_kind(Kind::Int64);
    (v.cumsum(-1, Kind::Int64) - 1).clamp_min(0) * &v
}
