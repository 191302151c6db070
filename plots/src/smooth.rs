//! Smoothing for noisy training curves.

/// Points per effective smoothing window when the weight is chosen automatically: a run
/// of `n` points is smoothed over about `n / AUTO_WINDOWS` of them.
const AUTO_WINDOWS: f64 = 40.0;
/// Largest automatic weight (an effective window of 50 points).
const MAX_AUTO_WEIGHT: f64 = 0.98;

/// The EMA weight [`crate::Style::Smoothed`]`(None)` uses for `n` points: an effective
/// window of about a fortieth of the run, no smoothing for runs of 40 points or fewer.
pub fn ema_weight(n: usize) -> f64 {
    let window = (n as f64 / AUTO_WINDOWS).max(1.0);
    (1.0 - 1.0 / window).min(MAX_AUTO_WEIGHT)
}

/// TensorBoard's debiased exponential moving average of `ys` with `weight` in [0, 1):
/// `m_i = weight * m_{i-1} + (1 - weight) * y_i`, divided by `1 - weight^(i+1)` so that
/// the start is not pulled towards zero. Non-finite values are passed through (they
/// break the line) and leave the average untouched.
pub fn ema(ys: &[f64], weight: f64) -> Vec<f64> {
    let w = weight.clamp(0.0, 0.999_999);
    let (mut m, mut debias) = (0.0, 1.0);
    ys.iter()
        .map(|&y| {
            if !y.is_finite() {
                return y;
            }
            m = w * m + (1.0 - w) * y;
            debias *= w;
            m / (1.0 - debias)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ema_of_a_constant_is_the_constant_from_the_first_point() {
        let s = ema(&[2.0; 10], 0.9);
        assert!(s.iter().all(|v| (v - 2.0).abs() < 1e-12), "{s:?}");
    }

    #[test]
    fn ema_follows_the_recurrence_and_skips_gaps() {
        let s = ema(&[1.0, f64::NAN, 3.0], 0.5);
        assert_eq!(s[0], 1.0);
        assert!(s[1].is_nan());
        // m = 0.5 * 0.5 + 0.5 * 3 = 1.75, debias 1 - 0.25.
        assert!((s[2] - 1.75 / 0.75).abs() < 1e-12, "{}", s[2]);
    }

    #[test]
    fn zero_weight_is_no_smoothing_and_long_runs_get_more() {
        assert_eq!(ema(&[1.0, 5.0, 2.0], 0.0), [1.0, 5.0, 2.0]);
        assert_eq!(ema_weight(10), 0.0);
        assert!(ema_weight(400) > ema_weight(100));
        assert!(ema_weight(1_000_000) <= MAX_AUTO_WEIGHT);
    }
}
