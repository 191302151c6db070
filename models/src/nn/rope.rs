//! Rotary position embeddings (rotate-half layout) with the scaling schemes found in
//! Hugging Face checkpoints: linear, dynamic NTK, Llama-3 and Phi-3 "longrope".

use tch::{Device, Kind, Tensor};

/// How rotary frequencies are scaled beyond the trained context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// NTK-aware base growth once the sequence exceeds `original_max`.
    Dynamic {
        factor: f64,
        original_max: i64,
    },
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

impl RopeConfig {
    fn base_inv_freq(&self, base: f64) -> Vec<f64> {
        let d = self.rotary_dim;
        (0..d / 2)
            .map(|i| {
                // Computed in f32 like the reference, so cos/sin match it bit for bit.
                let exponent = ((2 * i) as f32) / (d as f32);
                1.0 / (base as f32).powf(exponent) as f64
            })
            .map(|f| f as f32 as f64)
            .collect()
    }

    /// Inverse frequencies and the attention scaling for a forward pass whose largest
    /// position is `max_pos` (dynamic schemes depend on it).
    fn inv_freq(&self, max_pos: i64) -> (Vec<f64>, f64) {
        match &self.scaling {
            RopeScaling::None => (self.base_inv_freq(self.theta), 1.0),
            RopeScaling::Linear { factor } => (
                self.base_inv_freq(self.theta)
                    .into_iter()
                    .map(|f| f / factor)
                    .collect(),
                1.0,
            ),
            RopeScaling::Dynamic {
                factor,
                original_max,
            } => {
                let seq_len = max_pos + 1;
                if seq_len <= *original_max {
                    return (self.base_inv_freq(self.theta), 1.0);
                }
                let d = self.rotary_dim as f64;
                let ratio = factor * seq_len as f64 / *original_max as f64 - (factor - 1.0);
                let base = self.theta * ratio.powf(d / (d - 2.0));
                (self.base_inv_freq(base), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max,
            } => {
                let old = *original_max as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let freqs = self
                    .base_inv_freq(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
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
                let d = self.rotary_dim;
                let freqs = (0..d / 2)
                    .map(|i| {
                        let exponent = ((2 * i) as f32) / (d as f32);
                        let base_pow = (self.theta as f32).powf(exponent);
                        1.0 / (ext[i as usize] as f32 * base_pow) as f64
                    })
                    .collect();
                (freqs, *attention_factor)
            }
        }
    }

    /// Tables for `positions` (`[b, t]`, integer), in `kind` on the positions' device.
    pub fn tables(&self, positions: &Tensor, kind: Kind) -> RopeTables {
        let max_pos = if positions.numel() == 0 {
            0
        } else {
            positions.max().int64_value(&[])
        };
        let (inv, scale) = self.inv_freq(max_pos);
        let inv: Vec<f32> = inv.into_iter().map(|f| f as f32).collect();
        let device: Device = positions.device();
        let inv = Tensor::from_slice(&inv).to_device(device); // [d/2]
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv.view([1, 1, -1]); // [b,t,d/2]
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // [b,1,t,d]
        RopeTables {
            cos: (emb.cos() * scale).to_kind(kind),
            sin: (emb.sin() * scale).to_kind(kind),
            rotary_dim: self.rotary_dim,
        }
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
