//! Range checks of every number in the job config: each must be finite and inside the range
//! where training stays meaningful, and a bad one is named with its field and its limits
//! (NaN and infinities used to pass, and ran to a NaN model that exited 0).

use edkd_teacher::validate::{MAX_TEMPERATURE, MIN_TEMPERATURE};

use super::{ConfigError, TrainConfig, field};

/// Largest peak learning rate: far above any working AdamW rate, far below overflow.
pub const MAX_LR: f64 = 10.0;
/// Largest decoupled weight decay (the per-step shrink is `lr * weight_decay`).
pub const MAX_WEIGHT_DECAY: f64 = 10.0;
/// Largest AdamW epsilon.
pub const MAX_EPS: f64 = 1.0;
/// Longest teacher call deadline, seconds (a day).
pub const MAX_TIMEOUT_S: f64 = 86_400.0;
/// Most batches fetched ahead (each holds a batch and its teacher answer in memory).
pub const MAX_PREFETCH: usize = 1024;
/// `threads` may be at most this many times the cores of the machine.
pub const MAX_THREADS_PER_CORE: usize = 4;

/// One end of an allowed range.
#[derive(Clone, Copy)]
enum End {
    /// The value itself is allowed.
    In(f64),
    /// Only values strictly beyond it are.
    Out(f64),
}

fn interval(lo: End, hi: End) -> String {
    let (l, lv) = match lo {
        End::In(v) => ('[', v),
        End::Out(v) => ('(', v),
    };
    let (h, hv) = match hi {
        End::In(v) => (']', v),
        End::Out(v) => (')', v),
    };
    format!("{l}{lv}, {hv}{h}")
}

/// Errors unless `value` is finite and inside `lo..hi`.
fn within(name: &str, value: f64, lo: End, hi: End) -> Result<(), ConfigError> {
    let above = match lo {
        End::In(v) => value >= v,
        End::Out(v) => value > v,
    };
    let below = match hi {
        End::In(v) => value <= v,
        End::Out(v) => value < v,
    };
    if value.is_finite() && above && below {
        Ok(())
    } else {
        Err(field(
            name,
            format!(
                "{value} is not allowed: must be a finite number in {}",
                interval(lo, hi)
            ),
        ))
    }
}

/// An f32 limit given as a short decimal (0.01, 1000) as that decimal in f64, not as the
/// f32's binary value (0.01f32 is 0.0099999998): what the service compares in f32 is then
/// what is compared here.
fn decimal(limit: f32) -> f64 {
    (f64::from(limit) * 1e6).round() / 1e6
}

/// Cores of this machine (1 if unknown).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl TrainConfig {
    /// Checks every number against its range; see the module docs.
    pub(super) fn check_numbers(&self) -> Result<(), ConfigError> {
        use End::{In, Out};
        let (min_t, max_t) = (decimal(MIN_TEMPERATURE), decimal(MAX_TEMPERATURE));
        let l = &self.loss;
        within("loss.temperature", l.temperature, In(min_t), In(max_t))?;
        within("loss.alpha", l.alpha, In(0.0), In(1.0))?;
        within("loss.label_smoothing", l.label_smoothing, In(0.0), Out(1.0))?;
        within(
            "loss.on_policy_fraction",
            l.on_policy_fraction,
            In(0.0),
            In(1.0),
        )?;
        within(
            "loss.sample_temperature",
            l.sample_temperature,
            In(min_t),
            In(max_t),
        )?;
        use crate::loss::Divergence;
        match l.divergence {
            Divergence::Jsd { beta } => within("loss.divergence.beta", beta, Out(0.0), Out(1.0))?,
            Divergence::SkewKl { alpha } | Divergence::SkewReverseKl { alpha } => {
                within("loss.divergence.alpha", alpha, Out(0.0), Out(1.0))?
            }
            Divergence::ForwardKl | Divergence::ReverseKl => {}
        }
        let o = &self.optim;
        within("optim.lr", o.lr, Out(0.0), In(MAX_LR))?;
        within(
            "optim.weight_decay",
            o.weight_decay,
            In(0.0),
            In(MAX_WEIGHT_DECAY),
        )?;
        within("optim.beta1", o.beta1, In(0.0), Out(1.0))?;
        within("optim.beta2", o.beta2, In(0.0), Out(1.0))?;
        within("optim.eps", o.eps, Out(0.0), In(MAX_EPS))?;
        // 0 turns clipping off; a negative norm would flip every gradient.
        within("optim.clip", o.clip, In(0.0), In(f64::MAX))?;
        within("optim.decay_fraction", o.decay_fraction, In(0.0), In(1.0))?;
        within("optim.min_lr_ratio", o.min_lr_ratio, In(0.0), In(1.0))?;
        within(
            "teacher.timeout_s",
            self.teacher.timeout_s,
            Out(0.0),
            In(MAX_TIMEOUT_S),
        )?;
        // 0 gives up on the first transient failure.
        within(
            "teacher.retry_for_s",
            self.teacher.retry_for_s,
            In(0.0),
            In(MAX_TIMEOUT_S),
        )?;
        if self.teacher.prefetch > MAX_PREFETCH {
            return Err(field(
                "teacher.prefetch",
                format!(
                    "{} batches ahead is more than the limit of {MAX_PREFETCH}",
                    self.teacher.prefetch
                ),
            ));
        }
        let max_threads = MAX_THREADS_PER_CORE * cores();
        if self.threads > max_threads {
            return Err(field(
                "threads",
                format!(
                    "{} is more than {MAX_THREADS_PER_CORE} x the {} cores of this machine \
                     ({max_threads}); 0 uses libtorch's default (one per core)",
                    self.threads,
                    cores()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::TrainConfig;

    fn error_of(set: &str) -> String {
        let cfg = TrainConfig::from_overrides(&["data.manifest=x".into(), set.into()])
            .unwrap_or_else(|e| panic!("{set}: {e}"));
        match cfg.validate() {
            Ok(()) => panic!("{set} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn non_finite_and_out_of_range_numbers_are_named_with_their_limits() {
        for (set, name, limit) in [
            ("optim.lr=inf", "optim.lr", "(0, 10]"),
            ("optim.lr=1e30", "optim.lr", "(0, 10]"),
            ("optim.lr=nan", "optim.lr", "(0, 10]"),
            ("loss.temperature=nan", "loss.temperature", "[0.01, 1000]"),
            ("loss.temperature=inf", "loss.temperature", "[0.01, 1000]"),
            ("loss.temperature=1e-45", "loss.temperature", "[0.01, 1000]"),
            ("loss.alpha=nan", "loss.alpha", "[0, 1]"),
            ("loss.label_smoothing=1", "loss.label_smoothing", "[0, 1)"),
            (
                "loss.on_policy_fraction=nan",
                "loss.on_policy_fraction",
                "[0, 1]",
            ),
            (
                "loss.sample_temperature=0",
                "loss.sample_temperature",
                "[0.01",
            ),
            (
                "loss.sample_temperature=-inf",
                "loss.sample_temperature",
                "[0.01",
            ),
            ("optim.clip=-1", "optim.clip", "[0, "),
            ("optim.clip=nan", "optim.clip", "[0, "),
            ("optim.weight_decay=-10", "optim.weight_decay", "[0, 10]"),
            ("optim.beta1=1", "optim.beta1", "[0, 1)"),
            ("optim.beta2=nan", "optim.beta2", "[0, 1)"),
            ("optim.eps=0", "optim.eps", "(0, 1]"),
            ("optim.eps=-1e-8", "optim.eps", "(0, 1]"),
            ("optim.min_lr_ratio=nan", "optim.min_lr_ratio", "[0, 1]"),
            ("teacher.timeout_s=-1", "teacher.timeout_s", "(0, 86400]"),
            ("teacher.timeout_s=nan", "teacher.timeout_s", "(0, 86400]"),
            ("teacher.timeout_s=1e300", "teacher.timeout_s", "(0, 86400]"),
            (
                "teacher.retry_for_s=-1",
                "teacher.retry_for_s",
                "[0, 86400]",
            ),
            (
                "teacher.retry_for_s=inf",
                "teacher.retry_for_s",
                "[0, 86400]",
            ),
            (
                "teacher.prefetch=100000000",
                "teacher.prefetch",
                "limit of 1024",
            ),
            ("threads=100000", "threads", "cores of this machine"),
            (
                "teacher.packing=\"freq-e5\"",
                "teacher.packing",
                "for caches only",
            ),
            (
                "teacher.packing=\"zip-q2\"",
                "teacher.packing",
                "unknown `zip-q2`",
            ),
            (
                "loss.divergence={ kind = \"jsd\", beta = nan }",
                "loss.divergence.beta",
                "(0, 1)",
            ),
        ] {
            let err = error_of(set);
            assert!(err.contains(&format!("`{name}`")), "{set}: {err}");
            assert!(err.contains(limit), "{set}: {err}");
        }
    }

    #[test]
    fn the_defaults_and_the_range_ends_are_accepted() {
        for set in [
            "optim.lr=10",
            "optim.clip=0",
            "optim.weight_decay=0",
            "loss.temperature=0.01",
            "loss.temperature=1000",
            "teacher.timeout_s=86400",
            "teacher.retry_for_s=0",
            "threads=1",
            "teacher.packing=\"delta-e6\"",
        ] {
            let cfg = TrainConfig::from_overrides(&["data.manifest=x".into(), set.into()]).unwrap();
            cfg.validate().unwrap_or_else(|e| panic!("{set}: {e}"));
        }
    }
}
