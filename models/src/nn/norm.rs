//! RMSNorm, always computed in fp32 whatever the model's dtype.

use tch::{Kind, Tensor, nn};

/// Where the weight enters and when the result returns to the model's dtype; the three
/// differ only below fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RmsNormKind {
    /// `w * cast(x_normed)` (Llama and most families).
    #[default]
    WeightAfterCast,
    /// `cast(w * x_normed)` (OLMo 2).
    WeightBeforeCast,
    /// `cast(x_normed * (1 + w))`, weights stored centred on zero (Gemma).
    OnePlusWeight,
}

#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
    kind: RmsNormKind,
}

impl RmsNorm {
    pub fn new(p: nn::Path<'_>, dim: i64, eps: f64) -> Self {
        Self::with_kind(p, dim, eps, RmsNormKind::WeightAfterCast)
    }

    pub fn with_kind(p: nn::Path<'_>, dim: i64, eps: f64, kind: RmsNormKind) -> Self {
        let init = match kind {
            RmsNormKind::OnePlusWeight => 0.0,
            _ => 1.0,
        };
        let weight = p.var("weight", &[dim], nn::Init::Const(init));
        Self { weight, eps, kind }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x32 * (var + self.eps).rsqrt();
        match self.kind {
            RmsNormKind::WeightAfterCast => &self.weight * normed.to_kind(kind),
            RmsNormKind::WeightBeforeCast => (&self.weight * normed).to_kind(kind),
            RmsNormKind::OnePlusWeight => {
                (normed * (self.weight.to_kind(Kind::Float) + 1.0)).to_kind(kind)
            }
        }
    }
}
