//! The measurement itself: for one example's cached k=128 rows and its student logits,
//! the forward KL and its gradient from f32 targets and from every compressed form, at
//! every k.

use edkd_data::packing::{self, IdOrder, Packing, Targets};
use edkd_trainer::loss::{Divergence, KdLoss, TeacherTargets};
use tch::Tensor;

use crate::error::{Error, Result};

/// How a set of targets is stored: f32 lists (cache v1), today's wire format at f16, or a
/// packing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Variant {
    /// Cache version 1: u32 ids and f32 values (the reference).
    F32,
    /// The unpacked wire format with `value_format = F16`: u32 ids, f16 values.
    WireF16,
    Packed(Packing),
}

impl Variant {
    pub fn name(&self) -> String {
        match self {
            Variant::F32 => "f32 (cache v1)".into(),
            Variant::WireF16 => "u32 + f16 (wire today)".into(),
            Variant::Packed(p) => p.name(),
        }
    }
}

/// The top `k` of a k=128 row set, with the tail recomputed: the log of the k=128 tail mass
/// plus the mass of the entries dropped (a logsumexp in f64).
pub fn truncate(t: &Targets, k: usize) -> Targets {
    let (big, p) = (t.k, t.positions());
    let mut out = Targets {
        k,
        topk_ids: Vec::with_capacity(p * k),
        topk_logprobs: Vec::with_capacity(p * k),
        tail_logmass: Vec::with_capacity(p),
        gold_logprob: t.gold_logprob.clone(),
    };
    for r in 0..p {
        let row = r * big..(r + 1) * big;
        out.topk_ids
            .extend_from_slice(&t.topk_ids[row.clone()][..k]);
        out.topk_logprobs
            .extend_from_slice(&t.topk_logprobs[row.clone()][..k]);
        let dropped = t.topk_logprobs[row][k..]
            .iter()
            .chain(std::iter::once(&t.tail_logmass[r]))
            .map(|&v| v as f64);
        out.tail_logmass.push(logsumexp(dropped) as f32);
    }
    out
}

fn logsumexp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = values.clone().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + values.map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// `t` as it reads after a trip through `variant`, and the bytes that trip stored.
/// `order` is what a `freq` packing packs by (unused by the others).
pub fn through(
    t: &Targets,
    variant: Variant,
    vocab: usize,
    order: Option<&IdOrder>,
) -> Result<(Targets, usize)> {
    let (p, k) = (t.positions(), t.k);
    match variant {
        Variant::F32 => Ok((t.clone(), p * (k * 8 + 8))),
        Variant::WireF16 => {
            let f16 = |v: &[f32]| -> Vec<f32> {
                v.iter()
                    .map(|&x| {
                        let x = if x == f32::NEG_INFINITY {
                            x
                        } else {
                            x.max(half::f16::MIN.to_f32())
                        };
                        half::f16::from_f32(x).to_f32()
                    })
                    .collect()
            };
            let back = Targets {
                k,
                topk_ids: t.topk_ids.clone(),
                topk_logprobs: f16(&t.topk_logprobs),
                tail_logmass: f16(&t.tail_logmass),
                gold_logprob: f16(&t.gold_logprob),
            };
            Ok((back, p * (k * 6 + 4)))
        }
        Variant::Packed(packing) => {
            let bad = |e: packing::PackError| Error::Measurement {
                what: "packing",
                msg: e.to_string(),
            };
            let bytes = packing::pack(&t.as_ref(), packing, vocab, order).map_err(bad)?;
            let back = packing::unpack(&bytes, packing, vocab, k, order).map_err(bad)?;
            Ok((back, bytes.len()))
        }
    }
}

/// Bytes of a packed row after zstd at `level`.
pub fn zstd_bytes(
    t: &Targets,
    packing: Packing,
    vocab: usize,
    order: Option<&IdOrder>,
    level: i32,
) -> Result<usize> {
    let bytes =
        packing::pack(&t.as_ref(), packing, vocab, order).map_err(|e| Error::Measurement {
            what: "packing",
            msg: e.to_string(),
        })?;
    zstd::bulk::compress(&bytes, level)
        .map(|c| c.len())
        .map_err(|e| Error::Measurement {
            what: "zstd",
            msg: e.to_string(),
        })
}

/// The KD term as the trainer computes it: forward KL over the top-k + tail buckets, mean
/// over positions, `T^2`-scaled, and its gradient with respect to the student logits.
pub struct KdGrad {
    pub kl: f64,
    /// `d kl / d logits`, `[positions, V]`.
    pub grad: Tensor,
}

/// Forward KL of the student `logits` (`[positions, V_s]`, f32) against `t`.
pub fn kd_and_grad(logits: &Tensor, t: &Targets, temperature: f64, vocab: i64) -> KdGrad {
    let loss = KdLoss {
        divergence: Divergence::ForwardKl,
        temperature,
        alpha: 1.0,
        label_smoothing: 0.0,
    };
    let (p, k) = (t.positions() as i64, t.k as i64);
    let ids: Vec<i64> = t.topk_ids.iter().map(|&i| i as i64).collect();
    let targets = TeacherTargets::TopK {
        ids: Tensor::from_slice(&ids).reshape([p, k]),
        logprobs: Tensor::from_slice(&t.topk_logprobs).reshape([p, k]),
        tail_logmass: Tensor::from_slice(&t.tail_logmass),
    };
    let z = logits.detach().copy().set_requires_grad(true);
    let kl = loss.distill(&z, &targets, vocab);
    let grad = Tensor::run_backward(&[&kl], &[&z], false, false)
        .pop()
        .expect("one input, one gradient");
    KdGrad {
        kl: kl.double_value(&[]),
        grad,
    }
}

/// Errors of one compressed result against its reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Errors {
    /// `|KL' - KL| / KL`.
    pub kl_rel: f64,
    /// `|KL' - KL|`, nats.
    pub kl_abs: f64,
    /// `| |g'| - |g| | / |g|`.
    pub grad_norm_rel: f64,
    /// `|g' - g| / |g|`.
    pub grad_rel: f64,
}

pub fn errors(reference: &KdGrad, got: &KdGrad) -> Errors {
    let norm = |g: &Tensor| g.norm().double_value(&[]);
    let (gr, gg) = (norm(&reference.grad), norm(&got.grad));
    let diff = norm(&(&got.grad - &reference.grad));
    let rel = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Errors {
        kl_rel: rel((got.kl - reference.kl).abs(), reference.kl.abs()),
        kl_abs: (got.kl - reference.kl).abs(),
        grad_norm_rel: rel((gg - gr).abs(), gr),
        grad_rel: rel(diff, gr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Targets {
        // Two positions, k = 4 over a vocabulary of 10.
        let lp = |ps: [f64; 4]| ps.map(|p| p.ln() as f32);
        let mut topk_logprobs = lp([0.5, 0.2, 0.1, 0.05]).to_vec();
        topk_logprobs.extend(lp([0.7, 0.1, 0.05, 0.05]));
        Targets {
            k: 4,
            topk_ids: vec![3, 1, 7, 0, 2, 9, 4, 5],
            topk_logprobs,
            tail_logmass: vec![0.15f32.ln(), 0.1f32.ln()],
            gold_logprob: vec![0.5f32.ln(), 0.1f32.ln()],
        }
    }

    #[test]
    fn truncation_moves_dropped_mass_into_the_tail() {
        let t = truncate(&row(), 2);
        assert_eq!(t.topk_ids, [3, 1, 2, 9]);
        assert!((t.tail_logmass[0].exp() - 0.30).abs() < 1e-6);
        assert!((t.tail_logmass[1].exp() - 0.20).abs() < 1e-6);
    }

    #[test]
    fn the_reference_has_no_error_and_a_packing_a_small_one() {
        let t = row();
        let logits = Tensor::from_slice(&[0.3f32, -1.0, 2.0, 0.5, 0.0, 1.0, -0.5, 0.2, 0.1, 0.0])
            .reshape([1, 10])
            .repeat([2, 1]);
        let reference = kd_and_grad(&logits, &t, 1.0, 10);
        let (same, bytes) = through(&t, Variant::F32, 10, None).unwrap();
        assert_eq!(bytes, 2 * (4 * 8 + 8));
        let e = errors(&reference, &kd_and_grad(&logits, &same, 1.0, 10));
        assert_eq!((e.kl_rel, e.grad_rel), (0.0, 0.0));
        let q4 = Variant::Packed(Packing::new(packing::IdCoding::Bits, 4));
        let (back, bytes) = through(&t, q4, 10, None).unwrap();
        assert!(bytes < 2 * (4 * 8 + 8));
        let e = errors(&reference, &kd_and_grad(&logits, &back, 1.0, 10));
        assert!(e.kl_rel > 0.0 && e.kl_rel < 0.2, "{e:?}");
        assert!(e.grad_rel > 0.0 && e.grad_rel < 0.5, "{e:?}");
    }
}
