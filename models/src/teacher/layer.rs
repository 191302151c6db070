//! One decoder layer: self-attention and a gated MLP, with the family's norm placement.

use tch::{Tensor, nn};

use super::config::{CausalLmConfig, Family, LayerKind, NormPlacement};
use crate::nn::{
    Attention, AttentionConfig, AttentionOptions, AttnMask, GatedMlp, GqaMapping, KvCache, RmsNorm,
    RopeTables,
};

#[derive(Debug)]
pub(crate) struct DecoderLayer {
    /// Absent in OLMo 2 (post-norms only).
    input_layernorm: Option<RmsNorm>,
    self_attn: Attention,
    /// Llama: the norm before the MLP; Gemma and OLMo 2: the norm of the attention output.
    post_attention_layernorm: RmsNorm,
    /// Gemma only.
    pre_feedforward_layernorm: Option<RmsNorm>,
    /// Gemma and OLMo 2.
    post_feedforward_layernorm: Option<RmsNorm>,
    mlp: GatedMlp,
    placement: NormPlacement,
    residual_multiplier: Option<f64>,
    pub kind: LayerKind,
}

impl DecoderLayer {
    pub fn new(p: nn::Path<'_>, c: &CausalLmConfig, index: usize) -> Self {
        let f = &c.features;
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
        let attn_opts = AttentionOptions {
            qk_norm: f.qk_norm,
            scale: c.attention_scale(),
            softcap: f.attn_softcap,
        };
        let norm =
            |name: &str| RmsNorm::with_kind(&p / name, c.hidden_size, c.rms_norm_eps, f.norm_kind);
        let sandwich = f.norm_placement == NormPlacement::Sandwich;
        let post = f.norm_placement == NormPlacement::Post;
        Self {
            input_layernorm: (!post).then(|| norm("input_layernorm")),
            self_attn: Attention::with_options(&p / "self_attn", &attn_cfg, &attn_opts),
            post_attention_layernorm: norm("post_attention_layernorm"),
            pre_feedforward_layernorm: sandwich.then(|| norm("pre_feedforward_layernorm")),
            post_feedforward_layernorm: (sandwich || post)
                .then(|| norm("post_feedforward_layernorm")),
            mlp: GatedMlp::new(
                &p / "mlp",
                c.hidden_size,
                c.intermediate_size,
                c.mlp_bias,
                c.family == Family::Phi3,
                c.act,
            ),
            placement: f.norm_placement,
            residual_multiplier: f.residual_multiplier,
            kind: c.layer_kind(index),
        }
    }

    pub fn new_cache(
        &self,
        batch: i64,
        capacity: i64,
        kind: tch::Kind,
        device: tch::Device,
    ) -> KvCache {
        self.self_attn.new_cache(batch, capacity, kind, device)
    }

    fn residual(&self, x: &Tensor, h: Tensor) -> Tensor {
        match self.residual_multiplier {
            Some(m) => x + h * m,
            None => x + h,
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        rope: Option<&RopeTables>,
        mask: &AttnMask,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let apply = |n: &Option<RmsNorm>, t: Tensor| match n {
            Some(n) => n.forward(&t),
            None => t,
        };
        let h = apply(&self.input_layernorm, x.shallow_clone());
        let h = self.self_attn.forward_self(&h, rope, mask, cache, train);
        let h = match self.placement {
            NormPlacement::Pre => h,
            NormPlacement::Sandwich | NormPlacement::Post => {
                self.post_attention_layernorm.forward(&h)
            }
        };
        let x = self.residual(x, h);
        let h = match self.placement {
            NormPlacement::Pre => self.post_attention_layernorm.forward(&x),
            NormPlacement::Sandwich | NormPlacement::Post => {
                apply(&self.pre_feedforward_layernorm, x.shallow_clone())
            }
        };
        let h = apply(&self.post_feedforward_layernorm, self.mlp.forward(&h));
        self.residual(&x, h)
    }
}
