//! Rotary position embeddings (rotate-half layout) with the scaling schemes found in
//! Hugging Face checkpoints: linear, dynamic NTK, Llama-3, YaRN and Phi-3 "longrope".
//!
//! The inverse frequencies are computed with libtorch ops in f32, in the order
//! transformers' `modeling_rope_utils.py` uses, so the tables match it bit for bit (a
//! one-ulp difference in a frequency grows with the position: at position 8000 it is
//! already ~1e-4 in the logits).

use tch::{Device, Kind, Tensor};

/// How rotary frequencies are scaled beyond the trained context. Serialised (in student
/// configs) as an object tagged by `type`, e.g. `{"type": "linear", "factor": 2.0}`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    #[default]
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// NTK-aware base growth once the sequence exceeds `original_max` (transformers uses
    /// the config's `max_position_embeddings` as that threshold).
    Dynamic { factor: f64, original_max: i64 },
    /// Llama 3.x: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max: i64,
    },
    /// Phi-3 long-context: per-dimension rescale factors, chosen by sequence length.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max: i64,
        attention_factor: f64,
    },
    /// YaRN: interpolated low frequencies, extrapolated high ones, a linear ramp between
    /// the correction dimensions of `beta_fast` and `beta_slow` rotations, and cos/sin
    /// scaled by `attention_factor` (the "mscale").
    Yarn {
        factor: f64,
        original_max: i64,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
    },
}

/// YaRN's default attention factor for a scale `s` and an `mscale` multiplier.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Number of leading head dimensions that rotate (head_dim times partial_rotary_factor).
    pub rotary_dim: i64,
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// Cosine and sine tables for a batch of positions, shaped `[b, 1, t, rotary_dim]`.
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    rotary_dim: i64,
}

const F32_CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

impl RopeConfig {
    /// `2i / d` for `i < d/2`, in f32.
    fn exponents(&self) -> Tensor {
        let d = self.rotary_dim;
        Tensor::arange_start_step(0, d, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float)
            / d as f64
    }

    /// `1 / base^(2i/d)`: the unscaled inverse frequencies, `[d/2]` f32.
    fn base_inv_freq(&self, base: f64) -> Tensor {
        Tensor::pow_scalar(base, &self.exponents()).reciprocal()
    }

    /// Whether the tables depend on the largest position of the forward pass.
    pub fn length_dependent(&self) -> bool {
        matches!(
            self.scaling,
            RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. }
        )
    }

    /// Inverse frequencies (`[d/2]`, f32, CPU) and the cos/sin scaling for a forward pass
    /// whose largest position is `max_pos` (only the dynamic schemes look at it).
    pub fn inv_freq(&self, max_pos: i64) -> (Tensor, f64) {
        match &self.scaling {
            RopeScaling::None => (self.base_inv_freq(self.theta), 1.0),
            RopeScaling::Linear { factor } => (self.base_inv_freq(self.theta) / *factor, 1.0),
            RopeScaling::Dynamic {
                factor,
                original_max,
            } => {
                let seq_len = max_pos + 1;
                if seq_len <= *original_max {
                    return (self.base_inv_freq(self.theta), 1.0);
                }
                // transformers computes the grown base as an f32 tensor from the length.
                let d = self.rotary_dim as f64;
                let ratio = Tensor::from(seq_len) * *factor / *original_max as f64 - (factor - 1.0);
                let base = ratio.pow_tensor_scalar(d / (d - 2.0)) * self.theta;
                (base.pow(&self.exponents()).reciprocal(), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max,
            } => (
                self.llama3(*factor, *low_freq_factor, *high_freq_factor, *original_max),
                1.0,
            ),
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max,
                attention_factor,
            } => {
                let ext = if max_pos + 1 > *original_max {
                    long_factor
                } else {
                    short_factor
                };
                let ext: Vec<f32> = ext.iter().map(|&f| f as f32).collect();
                let ext = Tensor::from_slice(&ext);
                let freqs = (ext * Tensor::pow_scalar(self.theta, &self.exponents())).reciprocal();
                (freqs, *attention_factor)
            }
            RopeScaling::Yarn {
                factor,
                original_max,
                attention_factor,
                beta_fast,
                beta_slow,
                truncate,
            } => {
                let ramp = YarnRamp {
                    factor: *factor,
                    original_max: *original_max,
                    beta_fast: *beta_fast,
                    beta_slow: *beta_slow,
                    truncate: *truncate,
                };
                (self.yarn(&ramp), *attention_factor)
            }
        }
    }

    fn llama3(&self, factor: f64, low: f64, high: f64, original_max: i64) -> Tensor {
        let old = original_max as f64;
        let low_wavelen = old / low;
        let high_wavelen = old / high;
        let inv = self.base_inv_freq(self.theta);
        let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
        let scaled = (&inv / factor).where_self(&wavelen.gt(low_wavelen), &inv);
        let smooth = (wavelen.reciprocal() * old - low) / (high - low);
        let smoothed = (smooth.neg() + 1.0) * &scaled / factor + &smooth * &scaled;
        let medium = wavelen
            .ge(high_wavelen)
            .logical_and(&wavelen.le(low_wavelen));
        smoothed.where_self(&medium, &scaled)
    }

    fn yarn(&self, r: &YarnRamp) -> Tensor {
        let d = self.rotary_dim;
        let pos_freqs = Tensor::pow_scalar(self.theta, &self.exponents());
        let extrapolation = pos_freqs.reciprocal();
        let interpolation = (&pos_freqs * r.factor).reciprocal();
        let (low, high) = r.correction_range(d as f64, self.theta);
        let high = if low == high { high + 0.001 } else { high };
        let ramp = ((Tensor::arange(d / 2, F32_CPU) - low) / (high - low)).clamp(0.0, 1.0);
        let extrapolation_factor = ramp.neg() + 1.0;
        interpolation * (extrapolation_factor.neg() + 1.0) + extrapolation * &extrapolation_factor
    }

    /// Tables for `positions` (`[b, t]`), in `kind` on the positions' device.
    pub fn tables(&self, positions: &Tensor, kind: Kind) -> RopeTables {
        let max_pos = if !self.length_dependent() || positions.numel() == 0 {
            0
        } else {
            positions.max().int64_value(&[])
        };
        let (inv, scale) = self.inv_freq(max_pos);
        let device: Device = positions.device();
        let inv = inv.to_device(device); // [d/2]
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv.view([1, 1, -1]); // [b,t,d/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // [b,1,t,d]
        RopeTables {
            cos: (emb.cos() * scale).to_kind(kind),
            sin: (emb.sin() * scale).to_kind(kind),
            rotary_dim: self.rotary_dim,
        }
    }
}

struct YarnRamp {
    factor: f64,
    original_max: i64,
    beta_fast: f64,
    beta_slow: f64,
    truncate: bool,
}

impl YarnRamp {
    /// The (fractional) dimension at which a wavelength makes `rotations` turns over the
    /// original context.
    fn correction_dim(&self, rotations: f64, dim: f64, base: f64) -> f64 {
        let turns = self.original_max as f64 / (rotations * 2.0 * std::f64::consts::PI);
        (dim * turns.ln()) / (2.0 * base.ln())
    }

    fn correction_range(&self, dim: f64, base: f64) -> (f64, f64) {
        let mut low = self.correction_dim(self.beta_fast, dim, base);
        let mut high = self.correction_dim(self.beta_slow, dim, base);
        if self.truncate {
            low = low.floor();
            high = high.ceil();
        }
        (low.max(0.0), high.min(dim - 1.0))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

impl RopeTables {
    /// Rotates `x` (`[b, h, t, head_dim]`); dimensions past `rotary_dim` pass through.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let head_dim = x.size()[3];
        if self.rotary_dim == head_dim {
            return x * &self.cos + rotate_half(x) * &self.sin;
        }
        let rot = x.narrow(-1, 0, self.rotary_dim);
        let pass = x.narrow(-1, self.rotary_dim, head_dim - self.rotary_dim);
        let rotated = &rot * &self.cos + rotate_half(&rot) * &self.sin;
        Tensor::cat(&[&rotated, &pass], -1)
    }
}
