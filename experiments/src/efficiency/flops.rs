//! What a generation costs by construction, from the configs' shapes: matmul FLOPs of the
//! first token and of the decode steps, and the bytes a decode step must read (weights it
//! multiplies by, KV caches it attends over). These are the models the measured times are
//! held against: prefill is compute-bound (time follows FLOPs), a batch-1 decode step is
//! memory-bound (time follows bytes read).
//!
//! Conventions: a matmul of `[m, k] x [k, n]` is `2 m k n` FLOPs; attention is
//! `4 x queries x keys x attn_dim` (scores and weighted values); a causal prefill counts
//! the `S (S + 1) / 2` pairs it needs, not the `S^2` a masked kernel may compute; norms,
//! softmax, RoPE and activations are left out (under 1% at these widths).

use edkd_models::student::{FfnKind, StudentConfig, twin_config};
use serde::{Deserialize, Serialize};

use super::Arch;

/// FLOPs and bytes of one generation at batch 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Input to the first token (student: encoder, cross K/V, one decoder step, LM head;
    /// twin: prefill, LM head at the last position).
    pub first_flops: f64,
    /// The part of `first_flops` spent on the input (student: encoder and cross K/V;
    /// twin: the prefill's layers).
    pub input_flops: f64,
    /// The part of `first_flops` spent on image tiles (vision tower and projector, the
    /// same on both sides); 0 for text.
    #[serde(default)]
    pub image_flops: f64,
    /// The `new_tokens - 1` steps after the first.
    pub decode_flops: f64,
    /// Weight bytes one decode step multiplies by (student: decoder layers without the
    /// cross K/V projections, which ran once, plus the LM head; twin: every layer and the
    /// LM head).
    pub step_weight_bytes: f64,
    /// KV-cache bytes one decode step reads, halfway through the generation.
    pub step_cache_bytes: f64,
}

impl Cost {
    pub fn total_flops(&self) -> f64 {
        self.first_flops + self.decode_flops
    }

    pub fn step_bytes(&self) -> f64 {
        self.step_weight_bytes + self.step_cache_bytes
    }
}

/// Matmul weights of a feed-forward block, per token.
fn ffn_weights(d: f64, f: f64, kind: FfnKind) -> f64 {
    match kind {
        FfnKind::GeluTanh => 2.0 * d * f,
        FfnKind::Swiglu => 3.0 * d * f,
    }
}

/// The cost of generating `new_tokens` after `input_len` input tokens with `arch` of the
/// student preset `cfg`, at `elem_bytes` bytes per weight and cache element.
pub fn cost(
    cfg: &StudentConfig,
    arch: Arch,
    input_len: i64,
    new_tokens: usize,
    elem_bytes: f64,
) -> Cost {
    let d = cfg.d_model as f64;
    let a = cfg.attn_dim as f64; // query width = attention inner width
    let kv = (cfg.num_kv_heads * cfg.head_dim()) as f64;
    let vocab = cfg.vocab_size as f64;
    let s = input_len as f64;
    let n = new_tokens.max(1);
    let head = 2.0 * d * vocab;
    let attn = |queries: f64, keys: f64| 4.0 * queries * keys * a;
    match arch {
        Arch::Student => {
            let (le, ld) = (cfg.encoder_layers as f64, cfg.decoder_layers as f64);
            let ffn = ffn_weights(d, cfg.ffn_dim as f64, cfg.ffn_kind);
            let enc_w = 2.0 * d * a + 2.0 * d * kv + ffn;
            // Per decoder step: self q/k/v/o, cross q/o (cross K/V were projected once), FFN.
            let dec_w = 2.0 * d * a + 2.0 * d * kv + 2.0 * d * a + ffn;
            let encoder = le * (2.0 * s * enc_w + attn(s, s));
            let cross_kv = ld * 2.0 * s * 2.0 * d * kv;
            // Step i (0-based) attends over i + 1 cached tokens and the S encoder outputs.
            let step =
                |i: usize| ld * (2.0 * dec_w + attn(1.0, i as f64 + 1.0) + attn(1.0, s)) + head;
            let mid = (n / 2) as f64 + 1.0;
            Cost {
                first_flops: encoder + cross_kv + step(0),
                input_flops: encoder + cross_kv,
                image_flops: 0.0,
                decode_flops: (1..n).map(step).sum(),
                step_weight_bytes: (ld * dec_w + d * vocab) * elem_bytes,
                step_cache_bytes: ld * 2.0 * kv * (s + mid) * elem_bytes,
            }
        }
        Arch::Twin => {
            let t = twin_config(cfg);
            let layers = t.num_layers as f64;
            let w = 2.0 * d * a + 2.0 * d * kv + 3.0 * d * t.intermediate_size as f64;
            let prefill = layers * (2.0 * s * w + attn(1.0, s * (s + 1.0) / 2.0));
            // Step i (1-based) attends over S + i cached tokens.
            let step = |i: usize| layers * (2.0 * w + attn(1.0, s + i as f64)) + head;
            let mid = (n / 2) as f64;
            Cost {
                first_flops: prefill + head,
                input_flops: prefill,
                image_flops: 0.0,
                decode_flops: (1..n).map(step).sum(),
                step_weight_bytes: (layers * w + d * vocab) * elem_bytes,
                step_cache_bytes: layers * 2.0 * kv * (s + mid) * elem_bytes,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FLOPs of a step grow by 2 per weight: checked against the parameter count.
    #[test]
    fn decode_step_flops_are_twice_the_weights_used() {
        let cfg = StudentConfig::preset("mu-330m").unwrap();
        // One input token, two new tokens: the step's attention terms are tiny.
        let c = cost(&cfg, Arch::Twin, 1, 2, 4.0);
        let weights = c.step_weight_bytes / 4.0;
        let rel = c.decode_flops / (2.0 * weights) - 1.0;
        assert!(rel.abs() < 1e-3, "{rel}");
        // The twin's per-step weights are its whole parameter count less norms.
        let params = twin_config(&cfg).num_parameters() as f64;
        assert!(
            (weights / params - 1.0).abs() < 0.01,
            "{weights} vs {params}"
        );
    }

    #[test]
    fn the_student_reads_less_per_step_and_computes_less_first() {
        let cfg = StudentConfig::preset("mu-330m").unwrap();
        for len in [128, 1024, 4096] {
            let s = cost(&cfg, Arch::Student, len, 32, 4.0);
            let t = cost(&cfg, Arch::Twin, len, 32, 4.0);
            assert!(s.step_weight_bytes < 0.6 * t.step_weight_bytes);
            assert!(s.first_flops < t.first_flops, "{len}");
            assert!(s.step_cache_bytes < t.step_cache_bytes, "{len}");
        }
    }
}
