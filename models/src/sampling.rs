//! Token selection for generation: greedy, or seeded temperature / top-k / top-p sampling.

use tch::{Kind, Tensor};

/// A small, fast, seedable generator (SplitMix64): sampling must be reproducible across
/// runs and machines, independent of libtorch's global RNG.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Applied in the order temperature, top-k, top-p (as Hugging Face does).
    Sample {
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
    },
}

/// Picks one token per row of `logits` (`[b, vocab]`).
pub fn select(logits: &Tensor, sampling: &Sampling, rng: &mut Rng) -> Vec<i64> {
    match sampling {
        Sampling::Greedy => Vec::<i64>::try_from(logits.argmax(-1, false)).expect("argmax to i64"),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
        } => {
            let rows = logits.to_kind(Kind::Float).to_device(tch::Device::Cpu);
            let (b, v) = rows.size2().expect("[b, vocab] logits");
            let flat = Vec::<f32>::try_from(rows.reshape([-1])).expect("f32 logits");
            (0..b as usize)
                .map(|i| {
                    let row = &flat[i * v as usize..(i + 1) * v as usize];
                    sample_row(row, *temperature, *top_k, *top_p, rng)
                })
                .collect()
        }
    }
}

fn sample_row(
    row: &[f32],
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    rng: &mut Rng,
) -> i64 {
    let t = temperature.max(1e-6);
    let mut cand: Vec<(usize, f64)> = row.iter().map(|&x| x as f64 / t).enumerate().collect();
    // Highest first; ties by lower id so the order is total and reproducible.
    cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if let Some(k) = top_k.filter(|&k| k > 0) {
        cand.truncate(k);
    }
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|&(_, x)| (x - max).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if let Some(p) = top_p.filter(|&p| p < 1.0) {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (i, q) in probs.iter().enumerate() {
            cum += q;
            if cum >= p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= z);
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    for (i, q) in probs.iter().enumerate() {
        cum += q;
        if u < cum {
            return cand[i].0 as i64;
        }
    }
    cand[probs.len() - 1].0 as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let logits = Tensor::from_slice(&[0.1f32, 2.0, 0.5, 1.9, -1.0, 0.0]).reshape([2, 3]);
        let mut rng = Rng::new(7);
        let one = Sampling::Sample {
            temperature: 1.0,
            top_k: Some(1),
            top_p: None,
        };
        assert_eq!(select(&logits, &one, &mut rng), vec![1, 0]);
        let any = Sampling::Sample {
            temperature: 1.5,
            top_k: None,
            top_p: Some(0.9),
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .flat_map(|_| select(&logits, &any, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn top_p_drops_the_tail() {
        // p = [0.7, 0.2, 0.1]: top_p 0.6 keeps only the first token.
        let logits = Tensor::from_slice(&[0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()]).reshape([1, 3]);
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.6),
        };
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            assert_eq!(select(&logits, &s, &mut rng), vec![0]);
        }
    }
}
