//! One pre-norm block of the CLIP vision encoder. Field names are the checkpoint's
//! (`self_attn.q_proj`, `layer_norm1`, `mlp.fc1`, ...), so loading is a name-for-name copy.

use tch::{Tensor, nn, nn::Module};

use super::config::{ClipVisionConfig, VisionActivation};
use crate::nn::mlp::linear;

/// LayerNorm over the last dimension with CLIP's eps (weights `weight`, `bias`).
pub(crate) fn layer_norm(p: nn::Path<'_>, dim: i64, eps: f64) -> nn::LayerNorm {
    let cfg = nn::LayerNormConfig {
        eps,
        ..Default::default()
    };
    nn::layer_norm(p, vec![dim], cfg)
}

/// Bidirectional multi-head self-attention with biases on all four projections (CLIP's
/// `out_proj` is what Llama-style code calls `o_proj`, hence not `nn::Attention`).
#[derive(Debug)]
struct ClipAttention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    num_heads: i64,
    head_dim: i64,
    dropout: f64,
}

impl ClipAttention {
    fn new(p: nn::Path<'_>, c: &ClipVisionConfig) -> Self {
        let d = c.hidden_size;
        Self {
            q_proj: linear(&p / "q_proj", d, d, true),
            k_proj: linear(&p / "k_proj", d, d, true),
            v_proj: linear(&p / "v_proj", d, d, true),
            out_proj: linear(&p / "out_proj", d, d, true),
            num_heads: c.num_heads,
            head_dim: c.head_dim,
            dropout: c.attention_dropout,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (b, t, d) = x.size3().expect("rank-3 activations [b, t, d]");
        let heads = |proj: &nn::Linear| {
            proj.forward(x)
                .reshape([b, t, self.num_heads, self.head_dim])
                .transpose(1, 2)
        }; // [b, h, t, hd]
        let dropout = if train { self.dropout } else { 0.0 };
        let out = Tensor::scaled_dot_product_attention::<Tensor>(
            &heads(&self.q_proj),
            &heads(&self.k_proj),
            &heads(&self.v_proj),
            None,
            dropout,
            false,
            None,
            false,
        ); // [b, h, t, hd]
        self.out_proj
            .forward(&out.transpose(1, 2).reshape([b, t, d]))
    }
}

/// `fc2(act(fc1(x)))` with CLIP's activation (`quick_gelu` in OpenAI's towers).
#[derive(Debug)]
struct ClipMlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    act: VisionActivation,
}

impl ClipMlp {
    fn new(p: nn::Path<'_>, c: &ClipVisionConfig) -> Self {
        Self {
            fc1: linear(&p / "fc1", c.hidden_size, c.intermediate_size, true),
            fc2: linear(&p / "fc2", c.intermediate_size, c.hidden_size, true),
            act: c.act,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(x)))
    }
}

/// `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug)]
pub struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: nn::LayerNorm,
    mlp: ClipMlp,
    layer_norm2: nn::LayerNorm,
}

impl ClipEncoderLayer {
    pub fn new(p: nn::Path<'_>, c: &ClipVisionConfig) -> Self {
        Self {
            self_attn: ClipAttention::new(&p / "self_attn", c),
            layer_norm1: layer_norm(&p / "layer_norm1", c.hidden_size, c.layer_norm_eps),
            mlp: ClipMlp::new(&p / "mlp", c),
            layer_norm2: layer_norm(&p / "layer_norm2", c.hidden_size, c.layer_norm_eps),
        }
    }

    /// `[b, t, d]` -> `[b, t, d]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let x = x + self.self_attn.forward(&self.layer_norm1.forward(x), train);
        let h = self.mlp.forward(&self.layer_norm2.forward(&x));
        x + h
    }
}
