//! Section 3 of the training bench: a step's FLOPs and the machine's matmul peak.

use std::time::Instant;

use edkd_models::student::StudentConfig;
use edkd_trainer::model::Net;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// Side of the square matmul that measures the machine's fp32 peak.
pub const PEAK_N: i64 = 2048;
pub const PEAK_ITERS: usize = 5;

/// Training FLOPs of one step on a `[b, l_in]` / `[b, l_out]` batch:
/// `6 * (P_enc * T_in + P_xkv * T_in + (P_dec + d * V) * T_out)` for the weight matmuls
/// (forward 2, backward 4 per parameter and token; the tied LM head counted as `d * V`),
/// plus `12 * a * b * (n_enc * l_in^2 + n_dec * (l_out^2 + l_out * l_in))` for the
/// attention scores and weighted sums (two matmuls of `a = attn_dim` per query-key pair,
/// times 3 for training; causal self-attention counted in full, as SDPA computes it).
#[derive(Debug, Clone, Serialize)]
pub struct Flops {
    pub p_enc: i64,
    pub p_xkv: i64,
    pub p_dec: i64,
    pub head: i64,
    pub attn_dim: i64,
    pub t_in: i64,
    pub t_out: i64,
    pub per_step: f64,
}

impl Flops {
    pub fn of(c: &StudentConfig, net: &Net, b: i64, l_in: i64, l_out: i64) -> Self {
        let (mut p_enc, mut p_xkv, mut p_dec) = (0, 0, 0);
        for (name, t) in net.vs().variables() {
            let n = t.numel() as i64;
            if name.starts_with("encoder.") {
                p_enc += n;
            } else if name.contains(".cross_attn.k_proj.") || name.contains(".cross_attn.v_proj.") {
                p_xkv += n; // applied to the encoder's output: l_in tokens
            } else if name.starts_with("decoder.") {
                p_dec += n;
            }
        }
        let head = c.d_model * c.vocab_size;
        let (t_in, t_out) = (b * l_in, b * l_out);
        let weights =
            6.0 * ((p_enc + p_xkv) as f64 * t_in as f64 + (p_dec + head) as f64 * t_out as f64);
        let (li, lo) = (l_in as f64, l_out as f64);
        let attn = 12.0
            * c.attn_dim as f64
            * b as f64
            * (c.encoder_layers as f64 * li * li + c.decoder_layers as f64 * (lo * lo + lo * li));
        Self {
            p_enc,
            p_xkv,
            p_dec,
            head,
            attn_dim: c.attn_dim,
            t_in,
            t_out,
            per_step: weights + attn,
        }
    }

    /// Model FLOP utilisation of a step of `seconds` against `peak_gflops`.
    pub fn mfu(&self, seconds: f64, peak_gflops: f64) -> f64 {
        self.per_step / seconds / (peak_gflops * 1e9)
    }
}

/// fp32 matmul GFLOP/s with libtorch on this process's threads (best of a few).
pub fn matmul_peak() -> f64 {
    let opts = (Kind::Float, Device::Cpu);
    let a = Tensor::randn([PEAK_N, PEAK_N], opts);
    let b = Tensor::randn([PEAK_N, PEAK_N], opts);
    let _ = a.matmul(&b); // warm-up
    let best = (0..PEAK_ITERS)
        .map(|_| {
            let t0 = Instant::now();
            let _ = a.matmul(&b);
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (PEAK_N as f64).powi(3) / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use edkd_trainer::model::Vocab;

    #[test]
    fn parameter_groups_cover_the_student_and_the_formula_adds_up() {
        let section = crate::training::student_section().unwrap();
        let vocab = Vocab {
            size: 64,
            pad: 0,
            bos: 1,
            eos: 2,
            image_token_id: None,
        };
        let net = Net::build(&section, vocab, Device::Cpu, 0).unwrap();
        let Net::EncoderDecoder(s) = &net else {
            panic!("the bench student is an encoder-decoder");
        };
        let c = &s.model.config;
        let (b, li, lo) = (2, 10, 3);
        let f = Flops::of(c, &net, b, li, lo);
        // Everything but the (tied) embedding falls in one of the three groups.
        let embedding = c.vocab_size * c.d_model;
        assert_eq!(
            f.p_enc + f.p_xkv + f.p_dec + embedding,
            net.num_parameters()
        );
        assert!(f.p_xkv > 0 && f.p_enc > f.p_xkv);
        let weights = 6.0 * ((f.p_enc + f.p_xkv) * b * li + (f.p_dec + f.head) * b * lo) as f64;
        let attn = 12.0
            * (c.attn_dim * b) as f64
            * (c.encoder_layers * li * li + c.decoder_layers * (lo * lo + lo * li)) as f64;
        assert_eq!(f.per_step, weights + attn);
        assert!((f.mfu(2.0, f.per_step / 1e9) - 0.5).abs() < 1e-12);
    }
}
