//! Distillation losses. Every term is a masked mean over target tokens: padding never
//! contributes. Divergences are computed between two categorical distributions given as
//! log-probabilities over the same buckets: the full teacher vocabulary (in-process
//! teacher), or the teacher's top-k tokens plus one tail bucket (service or cache).
//!
//! With teacher logits `a`, student logits `z`, temperature `T`: `p = softmax(a/T)`,
//! `q = softmax(z/T)`. Every divergence is multiplied by `T^2` (Hinton et al.), so its
//! gradient scale does not depend on `T`.

use tch::{Kind, Tensor};

/// Log-probabilities below this are treated as this (keeps reverse divergences finite
/// where the teacher assigns exactly zero mass).
const LOG_FLOOR: f64 = -1e4;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Divergence {
    /// `sum p (log p - log q)`.
    ForwardKl,
    /// `sum q (log q - log p)`.
    ReverseKl,
    /// Generalised Jensen-Shannon: `m = beta p + (1-beta) q`; `beta KL(p||m) + (1-beta) KL(q||m)`.
    Jsd { beta: f64 },
    /// `KL(p || alpha p + (1-alpha) q)`.
    SkewKl { alpha: f64 },
    /// `KL(q || alpha q + (1-alpha) p)`.
    SkewReverseKl { alpha: f64 },
}

/// `sum_v p_v (log p_v - log m_v)` per row, with `0 log 0 = 0`.
fn kl_rows(log_p: &Tensor, log_m: &Tensor) -> Tensor {
    let p = log_p.exp();
    let term = &p * (log_p - log_m);
    term.where_self(&p.gt(0.0), &term.zeros_like())
        .sum_dim_intlist(-1, false, Kind::Float)
}

/// `log(w exp(a) + (1-w) exp(b))`, stably.
fn log_mix(w: f64, log_a: &Tensor, log_b: &Tensor) -> Tensor {
    Tensor::stack(&[log_a + w.ln(), log_b + (1.0 - w).ln()], 0).logsumexp([0], false)
}

impl Divergence {
    fn check(&self) -> Result<(), String> {
        let (name, w) = match *self {
            Divergence::Jsd { beta } => ("beta", beta),
            Divergence::SkewKl { alpha } | Divergence::SkewReverseKl { alpha } => ("alpha", alpha),
            _ => return Ok(()),
        };
        if w > 0.0 && w < 1.0 {
            Ok(())
        } else {
            Err(format!("{name} must be in (0, 1), got {w}"))
        }
    }

    /// Per-row divergence between teacher `log_p` and student `log_q` (`[n, K]` -> `[n]`).
    pub fn rows(&self, log_p: &Tensor, log_q: &Tensor) -> Tensor {
        let log_p = log_p.clamp_min(LOG_FLOOR);
        match *self {
            Divergence::ForwardKl => kl_rows(&log_p, log_q),
            Divergence::ReverseKl => kl_rows(log_q, &log_p),
            Divergence::Jsd { beta } => {
                let log_m = log_mix(beta, &log_p, log_q);
                kl_rows(&log_p, &log_m) * beta + kl_rows(log_q, &log_m) * (1.0 - beta)
            }
            Divergence::SkewKl { alpha } => kl_rows(&log_p, &log_mix(alpha, &log_p, log_q)),
            Divergence::SkewReverseKl { alpha } => kl_rows(log_q, &log_mix(alpha, log_q, &log_p)),
        }
    }
}

/// What the teacher says about each target position (rows already flattened to `[n, ...]`).
pub enum TeacherTargets {
    /// Raw teacher logits over the teacher vocabulary, `[n, V_t]`.
    Full { logits: Tensor },
    /// Top-k ids `[n, k]` (int64), their log-probs at temperature T `[n, k]`, and the log of
    /// the remaining mass `[n]`, all as produced by the teacher service / cache.
    TopK {
        ids: Tensor,
        logprobs: Tensor,
        tail_logmass: Tensor,
    },
}

/// `(1 - alpha) * CE + alpha * T^2 * D(teacher || student)`, masked means over targets.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KdLoss {
    pub divergence: Divergence,
    pub temperature: f64,
    /// Weight of the KD term.
    pub alpha: f64,
    pub label_smoothing: f64,
}

/// The loss and its parts (detached scalars for logging).
pub struct LossParts {
    pub total: Tensor,
    pub ce: f64,
    pub kd: f64,
    pub tokens: i64,
}

impl KdLoss {
    pub fn validate(&self) -> Result<(), String> {
        self.divergence.check()?;
        if self.temperature <= 0.0 {
            return Err(format!("temperature must be > 0, got {}", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(format!("alpha must be in [0, 1], got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        Ok(())
    }

    /// Masked mean cross-entropy of student logits `[n, V_s]` against `labels` `[n]`.
    pub fn cross_entropy(&self, student_logits: &Tensor, labels: &Tensor) -> Tensor {
        let log_q = student_logits
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float);
        self.cross_entropy_from(&log_q, labels)
    }

    /// [`Self::cross_entropy`] from the student's log-probabilities at temperature 1.
    fn cross_entropy_from(&self, log_q: &Tensor, labels: &Tensor) -> Tensor {
        let nll = -log_q
            .gather(-1, &labels.unsqueeze(-1), false)
            .squeeze_dim(-1);
        if self.label_smoothing == 0.0 {
            return nll.mean(Kind::Float);
        }
        let smooth = -log_q.mean_dim(-1, false, Kind::Float);
        (nll * (1.0 - self.label_smoothing) + smooth * self.label_smoothing).mean(Kind::Float)
    }

    /// The student's log-probabilities over the teacher vocabulary at the loss temperature.
    fn student_log_probs(&self, student_logits: &Tensor, teacher_vocab: i64) -> Tensor {
        let z = student_logits
            .to_kind(Kind::Float)
            .narrow(-1, 0, teacher_vocab);
        if self.temperature == 1.0 {
            z.log_softmax(-1, Kind::Float)
        } else {
            (z / self.temperature).log_softmax(-1, Kind::Float)
        }
    }

    /// Masked mean `T^2 * D` for student logits `[n, V_s]`; student columns beyond the
    /// teacher vocabulary `teacher_vocab` are excluded from the distribution.
    pub fn distill(
        &self,
        student_logits: &Tensor,
        teacher: &TeacherTargets,
        teacher_vocab: i64,
    ) -> Tensor {
        let log_q = self.student_log_probs(student_logits, teacher_vocab);
        self.distill_from(&log_q, teacher, teacher_vocab)
    }

    /// [`Self::distill`] from the student's log-probabilities `log_q` (`[n, V_t]`, at the
    /// loss temperature).
    fn distill_from(&self, log_q: &Tensor, teacher: &TeacherTargets, teacher_vocab: i64) -> Tensor {
        let t = self.temperature;
        let rows = match teacher {
            TeacherTargets::Full { logits } => {
                let log_p = (logits.to_kind(Kind::Float) / t).log_softmax(-1, Kind::Float);
                self.divergence.rows(&log_p, log_q)
            }
            TeacherTargets::TopK {
                ids,
                logprobs,
                tail_logmass,
            } => {
                let k = ids.size()[1];
                let log_q_top = log_q.gather(-1, ids, false);
                if k >= teacher_vocab {
                    self.divergence
                        .rows(&logprobs.to_kind(Kind::Float), &log_q_top)
                } else {
                    let log_q_tail = student_tail(log_q, ids, &log_q_top);
                    let log_p = Tensor::cat(
                        &[
                            logprobs.to_kind(Kind::Float),
                            tail_logmass.to_kind(Kind::Float).unsqueeze(-1),
                        ],
                        -1,
                    );
                    let log_q = Tensor::cat(&[log_q_top, log_q_tail.unsqueeze(-1)], -1);
                    self.divergence.rows(&log_p, &log_q)
                }
            }
        };
        rows.mean(Kind::Float) * (t * t)
    }

    /// The total loss over the positions where `mask` (`[b, t]`, bool) is true.
    /// `student_logits` is `[b, t, V_s]`, `labels` `[b, t]`; `teacher` rows are the masked
    /// positions in row-major order (as `select_rows` returns them).
    pub fn total(
        &self,
        student_logits: &Tensor,
        labels: &Tensor,
        mask: &Tensor,
        teacher: Option<(&TeacherTargets, i64)>,
    ) -> LossParts {
        let z = select_rows(student_logits, mask);
        let y = labels.masked_select(mask);
        self.total_rows(&z, &y, teacher)
    }

    /// The total loss over target rows: student logits `[n, V_s]` at the target positions
    /// only (no padding rows), `labels` `[n]`. One full-vocabulary log-softmax serves both
    /// terms when the temperature is 1 and the vocabularies agree.
    pub fn total_rows(
        &self,
        z: &Tensor,
        labels: &Tensor,
        teacher: Option<(&TeacherTargets, i64)>,
    ) -> LossParts {
        let tokens = labels.size()[0];
        let log_q1 = z.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
        let ce = self.cross_entropy_from(&log_q1, labels);
        let (total, kd) = match teacher {
            Some((targets, vocab)) if self.alpha > 0.0 => {
                let shared = self.temperature == 1.0 && vocab == z.size()[1];
                let kd = if shared {
                    self.distill_from(&log_q1, targets, vocab)
                } else {
                    self.distill(z, targets, vocab)
                };
                (
                    &ce * (1.0 - self.alpha) + &kd * self.alpha,
                    kd.double_value(&[]),
                )
            }
            _ => (ce.shallow_clone(), 0.0),
        };
        LossParts {
            total,
            ce: ce.double_value(&[]),
            kd,
            tokens,
        }
    }
}

/// Student tail masses below this are computed exactly (a logsumexp over the tokens outside
/// the teacher's top-k); above it, `log(1 - sum_S q)` from the top-k alone is accurate to
/// ~1e-5 relative in f32 and needs no second full-vocabulary pass.
const TAIL_EXACT_BELOW: f64 = 1e-2;

/// `log(1 - sum_{i in S} q_i)` per row (`[n]`): the student's log-mass outside the teacher's
/// top-k ids `S`, from its log-probs `log_q` (`[n, V]`) and `log_q_top = log_q[S]`.
fn student_tail(log_q: &Tensor, ids: &Tensor, log_q_top: &Tensor) -> Tensor {
    let top_mass = log_q_top.logsumexp([-1], false).exp(); // [n]
    // Clamped so that rows taken over by the exact path get a zero (not NaN) gradient here.
    let cheap = (-top_mass.clamp_max(1.0 - TAIL_EXACT_BELOW)).log1p();
    let exact_rows = top_mass
        .gt(1.0 - TAIL_EXACT_BELOW)
        .nonzero()
        .squeeze_dim(-1);
    if exact_rows.size()[0] == 0 {
        return cheap;
    }
    let outside = log_q.index_select(0, &exact_rows).scatter_value(
        -1,
        &ids.index_select(0, &exact_rows),
        f64::NEG_INFINITY,
    );
    let exact = outside.logsumexp([-1], false);
    cheap.index_put(&[Some(exact_rows)], &exact, false)
}

/// Rows of `x` (`[b, t, ...]`) where `mask` (`[b, t]`) is true, as `[n, ...]`.
pub fn select_rows(x: &Tensor, mask: &Tensor) -> Tensor {
    let idx = mask.reshape([-1]).nonzero().squeeze_dim(-1);
    let (b, t) = mask.size2().expect("[b, t] mask");
    let rest: Vec<i64> = x.size()[2..].to_vec();
    let mut shape = vec![b * t];
    shape.extend(rest);
    x.reshape(shape.as_slice()).index_select(0, &idx)
}
