//! AdamW with decoupled weight decay (none on norms and biases), optional fp32 master
//! weights for bf16 models, gradient clipping, and learning-rate schedules.

use tch::{Kind, Tensor, nn::VarStore};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

struct Param {
    name: String,
    /// The model's variable (f32, or bf16 when master weights are kept).
    var: Tensor,
    /// fp32 copy that the update is applied to, when `var` is lower precision.
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// Norm weights and biases are not decayed.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("norm"))
}

pub struct AdamW {
    params: Vec<Param>,
    cfg: AdamWConfig,
    step: i64,
}

impl AdamW {
    /// Optimises every trainable variable of `vs`. Variables that are not f32 get fp32
    /// master copies (bf16 compute, fp32 accumulation of updates).
    pub fn new(vs: &VarStore, cfg: AdamWConfig) -> Self {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, var)| {
                let master = (var.kind() != Kind::Float).then(|| var.detach().to_kind(Kind::Float));
                let zeros = || Tensor::zeros(var.size(), (Kind::Float, var.device()));
                Param {
                    decay: decays(&name),
                    m: zeros(),
                    v: zeros(),
                    name,
                    var,
                    master,
                }
            })
            .collect();
        Self {
            params,
            cfg,
            step: 0,
        }
    }

    pub fn steps_taken(&self) -> i64 {
        self.step
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Global L2 norm of the gradients; scales them down to `max_norm` when above it
    /// (`max_norm <= 0` disables clipping). Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.var.grad())
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).norm())
            .collect();
        let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
        if max_norm > 0.0 && total > max_norm {
            let scale = max_norm / (total + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
        total
    }

    /// One update at learning rate `lr` (PyTorch AdamW's exact arithmetic).
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.var.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(Kind::Float);
                let mut w = p
                    .master
                    .as_ref()
                    .map_or_else(|| p.var.shallow_clone(), Tensor::shallow_clone);
                if p.decay && c.weight_decay > 0.0 {
                    let _ = w.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = p.m.g_mul_scalar_(c.beta1);
                let _ = p.m.g_add_(&(&g * (1.0 - c.beta1)));
                let _ = p.v.g_mul_scalar_(c.beta2);
                let _ = p.v.g_add_(&(&g * &g * (1.0 - c.beta2)));
                let denom = p.v.sqrt() / bc2.sqrt() + c.eps;
                let _ = w.g_add_(&(&p.m / denom * (-lr / bc1)));
                if p.master.is_some() {
                    p.var.copy_(&w.to_kind(p.var.kind()));
                }
            }
        });
    }

    /// Optimizer state as named tensors (for `optimizer.safetensors`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step]))];
        for p in &self.params {
            out.push((format!("m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("v.{}", p.name), p.v.shallow_clone()));
            if let Some(master) = &p.master {
                out.push((format!("master.{}", p.name), master.shallow_clone()));
            }
        }
        out
    }

    /// Restores what [`AdamW::state`] saved; names the first missing or mis-shaped entry.
    pub fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<(), String> {
        let find = |k: &str| named.iter().find(|(n, _)| n == k).map(|(_, t)| t);
        self.step = find("step")
            .ok_or("optimizer state lacks `step`")?
            .int64_value(&[0]);
        tch::no_grad(|| {
            for p in &mut self.params {
                let targets = [
                    ("m", Some(&mut p.m)),
                    ("v", Some(&mut p.v)),
                    ("master", p.master.as_mut()),
                ];
                for (prefix, slot) in targets {
                    let Some(slot) = slot else { continue };
                    let key = format!("{prefix}.{}", p.name);
                    let src = find(&key).ok_or_else(|| format!("optimizer state lacks `{key}`"))?;
                    if src.size() != slot.size() {
                        return Err(format!(
                            "optimizer state `{key}` has shape {:?}, expected {:?}",
                            src.size(),
                            slot.size()
                        ));
                    }
                    slot.copy_(src);
                }
            }
            Ok(())
        })
    }
}

/// Learning rate as a function of the optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Linear warmup, then cosine decay to `min_ratio * peak` at `total` steps.
    WarmupCosine {
        warmup: i64,
        total: i64,
        min_ratio: f64,
    },
    /// Warmup-stable-decay: linear warmup, constant, then a linear decay over the last
    /// `decay_fraction` of `total` steps down to `min_ratio * peak`.
    WarmupStableDecay {
        warmup: i64,
        total: i64,
        decay_fraction: f64,
        min_ratio: f64,
    },
}

impl Schedule {
    pub fn lr(&self, peak: f64, step: i64) -> f64 {
        let warm = |warmup: i64| {
            if warmup > 0 && step < warmup {
                Some(peak * (step + 1) as f64 / warmup as f64)
            } else {
                None
            }
        };
        match *self {
            Schedule::Constant => peak,
            Schedule::WarmupCosine {
                warmup,
                total,
                min_ratio,
            } => warm(warmup).unwrap_or_else(|| {
                let span = (total - warmup).max(1) as f64;
                let progress = (((step - warmup) as f64) / span).clamp(0.0, 1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                peak * (min_ratio + (1.0 - min_ratio) * cos)
            }),
            Schedule::WarmupStableDecay {
                warmup,
                total,
                decay_fraction,
                min_ratio,
            } => warm(warmup).unwrap_or_else(|| {
                let decay_steps = ((total as f64) * decay_fraction).round().max(1.0);
                let decay_start = total as f64 - decay_steps;
                if (step as f64) < decay_start {
                    peak
                } else {
                    let progress = ((step as f64 - decay_start) / decay_steps).clamp(0.0, 1.0);
                    peak * (1.0 - (1.0 - min_ratio) * progress)
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn schedules_warm_up_then_decay_to_the_floor() {
        let cos = Schedule::WarmupCosine {
            warmup: 10,
            total: 110,
            min_ratio: 0.1,
        };
        assert!((cos.lr(1.0, 0) - 0.1).abs() < 1e-12);
        assert!((cos.lr(1.0, 9) - 1.0).abs() < 1e-12);
        assert!((cos.lr(1.0, 60) - 0.55).abs() < 1e-12);
        assert!((cos.lr(1.0, 110) - 0.1).abs() < 1e-12);
        let wsd = Schedule::WarmupStableDecay {
            warmup: 10,
            total: 100,
            decay_fraction: 0.2,
            min_ratio: 0.0,
        };
        assert_eq!(wsd.lr(2.0, 50), 2.0);
        assert_eq!(wsd.lr(2.0, 79), 2.0);
        assert!((wsd.lr(2.0, 90) - 1.0).abs() < 1e-12);
        assert!(wsd.lr(2.0, 100).abs() < 1e-12);
    }
}
