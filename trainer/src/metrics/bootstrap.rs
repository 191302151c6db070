//! Percentile bootstrap confidence intervals for per-example scores: the mean of one
//! system, and the mean difference of two systems scored on the same examples (paired:
//! each resample draws example indices, so the per-example correlation is kept, which
//! makes the interval of a difference much tighter than two separate intervals suggest).
//! Seeded, so a report's intervals are reproducible.

use serde::{Deserialize, Serialize};

/// Resamples of a report's intervals.
pub const RESAMPLES: usize = 2000;
/// Two-sided level of a report's intervals.
pub const LEVEL: f64 = 0.95;

/// A mean and its bootstrap interval `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    /// Whether the interval contains `x`.
    pub fn contains(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }
}

/// SplitMix64: a small seeded generator (the resampling needs no more).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-32 for any n we see).
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

/// The `q`-quantile of sorted `xs`, linearly interpolated (numpy's default).
fn quantile(xs: &[f64], q: f64) -> f64 {
    let pos = q * (xs.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match xs.get(i + 1) {
        Some(next) => xs[i] + (next - xs[i]) * frac,
        None => xs[i],
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Bootstrap interval of the mean of `f(i)` over `n` examples.
fn bootstrap(
    n: usize,
    f: impl Fn(usize) -> f64,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Interval {
    let all: Vec<f64> = (0..n).map(&f).collect();
    let m = mean(&all);
    if n == 0 || resamples == 0 {
        return Interval {
            mean: m,
            lo: m,
            hi: m,
        };
    }
    let mut rng = SplitMix(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| all[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    Interval {
        mean: m,
        lo: quantile(&means, tail),
        hi: quantile(&means, 1.0 - tail),
    }
}

/// Percentile bootstrap interval of the mean of `values` at `level` (e.g. 0.95).
pub fn mean_interval(values: &[f64], resamples: usize, level: f64, seed: u64) -> Interval {
    bootstrap(values.len(), |i| values[i], resamples, level, seed)
}

/// Paired percentile bootstrap interval of `mean(a - b)`, `a[i]` and `b[i]` being two
/// systems' scores on example `i`. An interval that excludes 0 is a difference the test
/// set resolves at that level.
pub fn paired_difference(
    a: &[f64],
    b: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Interval {
    assert_eq!(a.len(), b.len(), "paired scores need the same examples");
    bootstrap(a.len(), |i| a[i] - b[i], resamples, level, seed)
}

/// Two-level percentile bootstrap of the mean of `scores[s][i]`, system runs `s` (seeds)
/// by examples `i`: each resample draws seeds and examples with replacement, so the
/// interval carries the spread between training seeds as well as between examples. With
/// one seed it is [`mean_interval`] of that seed's scores.
pub fn seeds_and_examples_interval(
    scores: &[Vec<f64>],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Interval {
    let (k, n) = (scores.len(), scores.first().map_or(0, Vec::len));
    assert!(
        scores.iter().all(|r| r.len() == n),
        "every seed needs the same examples"
    );
    let m = mean(&scores.iter().map(|r| mean(r)).collect::<Vec<_>>());
    if k == 0 || n == 0 || resamples == 0 {
        return Interval {
            mean: m,
            lo: m,
            hi: m,
        };
    }
    let mut rng = SplitMix(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let seeds: Vec<usize> = (0..k).map(|_| rng.below(k)).collect();
            let mut sum = 0.0;
            for _ in 0..n {
                let i = rng.below(n);
                sum += seeds.iter().map(|&s| scores[s][i]).sum::<f64>();
            }
            sum / (n * k) as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    Interval {
        mean: m,
        lo: quantile(&means, tail),
        hi: quantile(&means, 1.0 - tail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bernoulli(p) scores from the generator.
    fn coin(n: usize, p: f64, seed: u64) -> Vec<f64> {
        let mut rng = SplitMix(seed);
        (0..n)
            .map(|_| {
                f64::from(u8::from(
                    ((rng.next() >> 11) as f64 / (1u64 << 53) as f64) < p,
                ))
            })
            .collect()
    }

    #[test]
    fn constant_scores_have_a_point_interval_and_seeds_reproduce() {
        let i = mean_interval(&[0.25; 50], 500, 0.95, 1);
        assert_eq!((i.mean, i.lo, i.hi), (0.25, 0.25, 0.25));
        let x = coin(300, 0.4, 9);
        assert_eq!(
            mean_interval(&x, 500, 0.95, 3),
            mean_interval(&x, 500, 0.95, 3)
        );
        assert_ne!(
            mean_interval(&x, 500, 0.95, 3),
            mean_interval(&x, 500, 0.95, 4)
        );
    }

    #[test]
    fn the_width_follows_the_binomial_standard_error() {
        // n = 2000, p ~ 0.3: the 95% interval is about 2 * 1.96 * sqrt(p(1-p)/n) wide.
        let x = coin(2000, 0.3, 5);
        let i = mean_interval(&x, RESAMPLES, LEVEL, 7);
        let p = i.mean;
        let expected = 2.0 * 1.96 * (p * (1.0 - p) / 2000.0).sqrt();
        let width = i.hi - i.lo;
        assert!(
            (width / expected - 1.0).abs() < 0.12,
            "{width} vs {expected}"
        );
        assert!(i.lo < p && p < i.hi);
    }

    #[test]
    fn intervals_cover_the_true_mean_about_95_percent_of_the_time() {
        let covered = (0..200)
            .filter(|&s| mean_interval(&coin(400, 0.6, 100 + s), 400, 0.95, s).contains(0.6))
            .count();
        assert!((180..=198).contains(&covered), "covered {covered} of 200");
    }

    #[test]
    fn paired_differences_keep_the_correlation() {
        let a = coin(500, 0.5, 11);
        // b agrees with a except on 20 examples where a scored 1.
        let mut b = a.clone();
        let mut flipped = 0;
        for v in b.iter_mut() {
            if *v == 1.0 && flipped < 20 {
                *v = 0.0;
                flipped += 1;
            }
        }
        let d = paired_difference(&a, &b, RESAMPLES, LEVEL, 2);
        assert!((d.mean - 0.04).abs() < 1e-12);
        assert!(
            d.lo > 0.0,
            "a paired difference of 20/500 is resolved: {d:?}"
        );
        // Unpaired, the two intervals overlap: the paired test is the one that resolves it.
        let (ia, ib) = (
            mean_interval(&a, RESAMPLES, LEVEL, 2),
            mean_interval(&b, RESAMPLES, LEVEL, 3),
        );
        assert!(ia.lo < ib.hi);
        let same = paired_difference(&a, &a, 100, LEVEL, 2);
        assert_eq!((same.lo, same.hi), (0.0, 0.0));
    }

    #[test]
    fn seed_spread_widens_the_two_level_interval() {
        let x = coin(400, 0.5, 21);
        // One seed: the one-level interval exactly (same draws of examples).
        let one = seeds_and_examples_interval(std::slice::from_ref(&x), 500, LEVEL, 4);
        assert!((one.mean - mean(&x)).abs() < 1e-12);
        // Three seeds that agree on every example: as wide as one seed.
        let same = seeds_and_examples_interval(&[x.clone(), x.clone(), x.clone()], 500, LEVEL, 4);
        // Three seeds offset by -0.1, 0, +0.1: the seed spread adds width.
        let shifted: Vec<Vec<f64>> = [-0.1, 0.0, 0.1]
            .iter()
            .map(|d| x.iter().map(|v| v + d).collect())
            .collect();
        let spread = seeds_and_examples_interval(&shifted, 500, LEVEL, 4);
        assert!((spread.mean - same.mean).abs() < 1e-12);
        let (w_same, w_spread) = (same.hi - same.lo, spread.hi - spread.lo);
        assert!(w_spread > 1.5 * w_same, "{w_spread} vs {w_same}");
        assert!((w_same / (one.hi - one.lo) - 1.0).abs() < 0.25);
    }
}
