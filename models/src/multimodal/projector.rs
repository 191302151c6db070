//! The projector from tower features to the text model's width. Keys follow LLaVA's
//! `nn.Sequential` (`mm_projector.0` and `mm_projector.2`; index 1 is the parameterless
//! GELU), so a LLaVA `mm_projector.bin` stage-1 adapter maps name for name.

use tch::{Tensor, nn, nn::Module};

use super::config::ProjectorKind;
use crate::nn::Activation;
use crate::nn::mlp::linear;

/// `mlp2x_gelu`: `Linear(tower -> d_model) -> GELU -> Linear(d_model -> d_model)`.
#[derive(Debug)]
pub struct Projector {
    first: nn::Linear,
    second: nn::Linear,
}

/// LLaVA builds `mlp2x_gelu` with `nn.GELU()`, the exact (erf) form.
const PROJECTOR_ACT: Activation = Activation::Gelu;

impl Projector {
    /// Builds the projector under `p` (`p/0`, `p/2`).
    pub fn new(p: &nn::Path<'_>, kind: ProjectorKind, tower_dim: i64, d_model: i64) -> Self {
        match kind {
            ProjectorKind::Mlp2xGelu => Self {
                first: linear(p / "0", tower_dim, d_model, true),
                second: linear(p / "2", d_model, d_model, true),
            },
        }
    }

    /// `[.., tower_dim]` -> `[.., d_model]`.
    pub fn forward(&self, features: &Tensor) -> Tensor {
        let h = self.first.forward(&features.to_kind(self.first.ws.kind()));
        self.second.forward(&PROJECTOR_ACT.apply(&h))
    }

    /// Parameters, from the shapes.
    pub fn num_parameters(tower_dim: i64, d_model: i64) -> i64 {
        (tower_dim + 1) * d_model + (d_model + 1) * d_model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_two_linears_around_exact_gelu() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let p = Projector::new(
            &(vs.root() / "mm_projector"),
            ProjectorKind::Mlp2xGelu,
            3,
            4,
        );
        let vars = vs.variables();
        let mut names: Vec<_> = vars.keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "mm_projector.0.bias",
                "mm_projector.0.weight",
                "mm_projector.2.bias",
                "mm_projector.2.weight"
            ]
        );
        let count: i64 = vars.values().map(|t| t.numel() as i64).sum();
        assert_eq!(count, Projector::num_parameters(3, 4));
        let x = Tensor::from_slice(&[0.5f32, -1.0, 2.0]).view([1, 3]);
        let h = x.matmul(&vars["mm_projector.0.weight"].tr()) + &vars["mm_projector.0.bias"];
        // erf GELU by hand: 0.5 h (1 + erf(h / sqrt 2)), not the tanh approximation.
        let g = &h * 0.5 * ((&h / std::f64::consts::SQRT_2).erf() + 1.0);
        let want = g.matmul(&vars["mm_projector.2.weight"].tr()) + &vars["mm_projector.2.bias"];
        let got = p.forward(&x);
        assert!((got - want).abs().max().double_value(&[]) < 1e-6);
        let tanh = h.gelu("tanh").matmul(&vars["mm_projector.2.weight"].tr())
            + &vars["mm_projector.2.bias"];
        assert!(!p.forward(&x).allclose(&tanh, 0.0, 1e-9, false));
    }
}
