//! Transformer building blocks shared by teachers, the student and its decoder-only twin.

pub mod attention;
pub mod mlp;
pub mod norm;
pub mod rope;

pub use attention::{
    Attention, AttentionConfig, AttentionOptions, AttnMask, GqaMapping, KvCache, QkNorm,
};
pub use mlp::{Activation, GatedMlp, PlainMlp};
pub use norm::{RmsNorm, RmsNormKind};
pub use rope::{RopeConfig, RopeScaling, RopeTables};

/// Dropout that is active only when training.
pub fn dropout(x: &tch::Tensor, p: f64, train: bool) -> tch::Tensor {
    if train && p > 0.0 {
        x.dropout(p, true)
    } else {
        x.shallow_clone()
    }
}

/// Vocabulary logits from an untied head, or from the input embedding when tied.
pub fn lm_logits(
    hidden: &tch::Tensor,
    lm_head: Option<&tch::nn::Linear>,
    embed: &tch::nn::Embedding,
) -> tch::Tensor {
    use tch::nn::Module;
    match lm_head {
        Some(head) => head.forward(hidden),
        None => hidden.matmul(&embed.ws.tr()),
    }
}
