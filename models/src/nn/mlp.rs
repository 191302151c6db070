//! Feed-forward blocks: gated (SwiGLU-style, separate or fused gate/up) and plain fc1/fc2.

use tch::{Tensor, nn, nn::Module};

/// Activation functions named as in Hugging Face configs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    Gelu,
    #[serde(alias = "gelu_new", alias = "gelu_tanh")]
    GeluPytorchTanh,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }

    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Silu => x.silu(),
            Activation::Gelu => x.gelu("none"),
            Activation::GeluPytorchTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
        }
    }
}

pub fn linear(p: nn::Path<'_>, d_in: i64, d_out: i64, bias: bool) -> nn::Linear {
    let cfg = nn::LinearConfig {
        bias,
        ..Default::default()
    };
    nn::linear(p, d_in, d_out, cfg)
}

/// `down(act(gate(x)) * up(x))`; Phi-3 stores gate and up as one fused `gate_up_proj`.
#[derive(Debug)]
pub struct GatedMlp {
    gate_up: GateUp,
    down_proj: nn::Linear,
    act: Activation,
}

#[derive(Debug)]
enum GateUp {
    Separate {
        gate_proj: nn::Linear,
        up_proj: nn::Linear,
    },
    Fused {
        gate_up_proj: nn::Linear,
    },
}

impl GatedMlp {
    pub fn new(p: nn::Path<'_>, d: i64, ff: i64, bias: bool, fused: bool, act: Activation) -> Self {
        let gate_up = if fused {
            GateUp::Fused {
                gate_up_proj: linear(&p / "gate_up_proj", d, 2 * ff, bias),
            }
        } else {
            GateUp::Separate {
                gate_proj: linear(&p / "gate_proj", d, ff, bias),
                up_proj: linear(&p / "up_proj", d, ff, bias),
            }
        };
        let down_proj = linear(&p / "down_proj", ff, d, bias);
        Self {
            gate_up,
            down_proj,
            act,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = match &self.gate_up {
            GateUp::Separate { gate_proj, up_proj } => {
                self.act.apply(&gate_proj.forward(x)) * up_proj.forward(x)
            }
            GateUp::Fused { gate_up_proj } => {
                let both = gate_up_proj.forward(x);
                let halves = both.chunk(2, -1);
                self.act.apply(&halves[0]) * &halves[1]
            }
        };
        self.down_proj.forward(&h)
    }
}

/// `fc2(act(fc1(x)))`, the GPT-2/T5-style block (the paper's student uses GELU-tanh with bias).
#[derive(Debug)]
pub struct PlainMlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    act: Activation,
}

impl PlainMlp {
    pub fn new(p: nn::Path<'_>, d: i64, ff: i64, bias: bool, act: Activation) -> Self {
        Self {
            fc1: linear(&p / "fc1", d, ff, bias),
            fc2: linear(&p / "fc2", ff, d, bias),
            act,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(x)))
    }
}
