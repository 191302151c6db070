//! Multi-head attention with grouped-query heads, an explicit KV cache and
//! `scaled_dot_product_attention` underneath. Serves decoder self-attention, encoder
//! self-attention and cross-attention.

use tch::{Kind, Tensor, nn, nn::Module};

use super::mlp::linear;
use super::norm::{RmsNorm, RmsNormKind};
use super::rope::RopeTables;

/// Which KV head a query head reads when there are fewer KV heads than query heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GqaMapping {
    /// Query head `h` reads KV head `h / (n_heads / n_kv_heads)` (Hugging Face).
    Grouped,
    /// Query head `h` reads KV head `h % n_kv_heads` (the paper's reference student).
    Cyclic,
}

#[derive(Debug, Clone)]
pub struct AttentionConfig {
    pub d_model: i64,
    pub n_heads: i64,
    pub n_kv_heads: i64,
    pub head_dim: i64,
    pub qkv_bias: bool,
    pub o_bias: bool,
    /// One `qkv_proj` matrix (Phi-3) instead of `q_proj`, `k_proj`, `v_proj`.
    pub fused_qkv: bool,
    pub gqa: GqaMapping,
    pub dropout: f64,
}

/// RMSNorm on queries and keys before RoPE.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum QkNorm {
    #[default]
    None,
    /// Over each head's `head_dim` (Qwen3, Gemma 3): weights `[head_dim]`.
    PerHead { eps: f64, kind: RmsNormKind },
    /// Over the whole projection before the heads are split (OLMo 2): weights
    /// `[n_heads * head_dim]` and `[n_kv_heads * head_dim]`.
    Whole { eps: f64, kind: RmsNormKind },
}

/// What some decoder families add to plain scaled dot-product attention.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttentionOptions {
    pub qk_norm: QkNorm,
    /// Multiplies `q . k`; `None` is `1 / sqrt(head_dim)`.
    pub scale: Option<f64>,
    /// Scores become `cap * tanh(scores / cap)` before the mask (Gemma 2).
    pub softcap: Option<f64>,
}

#[derive(Debug)]
enum Qkv {
    Separate {
        q_proj: nn::Linear,
        k_proj: nn::Linear,
        v_proj: nn::Linear,
    },
    Fused {
        qkv_proj: nn::Linear,
    },
}

/// Which keys each query may see.
pub enum AttnMask {
    /// Every query sees every key (encoder without padding, single-token decode).
    Full,
    /// Query `i` sees keys `0..=i` (no padding, no cached past).
    Causal,
    /// Boolean `[b, 1, t_q, t_k]` (or broadcastable), true = may attend.
    Explicit(Tensor),
}

impl AttnMask {
    /// This causal self-attention mask narrowed to a sliding window: the query in key slot
    /// `q` sees slot `k` only when `q - window < k <= q`, i.e. itself and the `window - 1`
    /// slots before it (transformers' `sliding_window_overlay`). The queries are the last
    /// `t_q` of the `t_k` key slots, as in a prefill (`t_q == t_k`) or a cached decode.
    pub fn with_window(&self, window: i64, t_q: i64, t_k: i64, device: tch::Device) -> AttnMask {
        let q_slot = Tensor::arange_start(t_k - t_q, t_k, (Kind::Int64, device)).unsqueeze(1); // [t_q, 1]
        let k_slot = Tensor::arange(t_k, (Kind::Int64, device)).unsqueeze(0); // [1, t_k]
        let band = k_slot
            .le_tensor(&q_slot)
            .logical_and(&k_slot.gt_tensor(&(&q_slot - window))); // [t_q, t_k]
        match self {
            AttnMask::Full | AttnMask::Causal => AttnMask::Explicit(band.view([1, 1, t_q, t_k])),
            AttnMask::Explicit(m) => AttnMask::Explicit(m.logical_and(&band)),
        }
    }
}

/// Keys and values of the past, preallocated to a capacity so each decode step writes in
/// place instead of reallocating. Shapes `[b, n_kv_heads, capacity, head_dim]`.
#[derive(Debug)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: i64,
}

impl KvCache {
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> i64 {
        self.k.size()[2]
    }

    fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let n = k.size()[2];
        assert!(
            self.len + n <= self.capacity(),
            "KV cache overflow: {} + {n} > capacity {}",
            self.len,
            self.capacity()
        );
        self.k.narrow(2, self.len, n).copy_(k);
        self.v.narrow(2, self.len, n).copy_(v);
        self.len += n;
        (self.k.narrow(2, 0, self.len), self.v.narrow(2, 0, self.len))
    }

    /// Keeps only the batch rows in `index` (sequences that are still generating).
    pub fn select_rows(&mut self, index: &Tensor) {
        self.k = self.k.index_select(0, index);
        self.v = self.v.index_select(0, index);
    }
}

#[derive(Debug)]
pub struct Attention {
    qkv: Qkv,
    o_proj: nn::Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    cfg: AttentionConfig,
    opts: AttentionOptions,
}

impl Attention {
    pub fn new(p: nn::Path<'_>, cfg: &AttentionConfig) -> Self {
        Self::with_options(p, cfg, &AttentionOptions::default())
    }

    pub fn with_options(p: nn::Path<'_>, cfg: &AttentionConfig, opts: &AttentionOptions) -> Self {
        let q_dim = cfg.n_heads * cfg.head_dim;
        let kv_dim = cfg.n_kv_heads * cfg.head_dim;
        let qkv = if cfg.fused_qkv {
            Qkv::Fused {
                qkv_proj: linear(
                    &p / "qkv_proj",
                    cfg.d_model,
                    q_dim + 2 * kv_dim,
                    cfg.qkv_bias,
                ),
            }
        } else {
            Qkv::Separate {
                q_proj: linear(&p / "q_proj", cfg.d_model, q_dim, cfg.qkv_bias),
                k_proj: linear(&p / "k_proj", cfg.d_model, kv_dim, cfg.qkv_bias),
                v_proj: linear(&p / "v_proj", cfg.d_model, kv_dim, cfg.qkv_bias),
            }
        };
        let o_proj = linear(&p / "o_proj", q_dim, cfg.d_model, cfg.o_bias);
        let (q_norm, k_norm) = match opts.qk_norm {
            QkNorm::None => (None, None),
            QkNorm::PerHead { eps, kind } => (
                Some(RmsNorm::with_kind(&p / "q_norm", cfg.head_dim, eps, kind)),
                Some(RmsNorm::with_kind(&p / "k_norm", cfg.head_dim, eps, kind)),
            ),
            QkNorm::Whole { eps, kind } => (
                Some(RmsNorm::with_kind(&p / "q_norm", q_dim, eps, kind)),
                Some(RmsNorm::with_kind(&p / "k_norm", kv_dim, eps, kind)),
            ),
        };
        Self {
            qkv,
            o_proj,
            q_norm,
            k_norm,
            cfg: cfg.clone(),
            opts: opts.clone(),
        }
    }

    /// Applies `norm` when the layer has one.
    fn maybe_norm(norm: &Option<RmsNorm>, x: Tensor) -> Tensor {
        match norm {
            Some(n) => n.forward(&x),
            None => x,
        }
    }

    pub fn config(&self) -> &AttentionConfig {
        &self.cfg
    }

    /// An empty cache for `batch` rows and up to `capacity` positions.
    pub fn new_cache(&self, batch: i64, capacity: i64, kind: Kind, device: tch::Device) -> KvCache {
        let shape = [batch, self.cfg.n_kv_heads, capacity, self.cfg.head_dim];
        KvCache {
            k: Tensor::zeros(shape, (kind, device)),
            v: Tensor::zeros(shape, (kind, device)),
            len: 0,
        }
    }

    /// `[b, t, n*hd]` -> `[b, n, t, hd]`.
    fn heads(&self, x: &Tensor, n: i64) -> Tensor {
        let (b, t, _) = x.size3().expect("rank-3 activations");
        x.reshape([b, t, n, self.cfg.head_dim]).transpose(1, 2)
    }

    fn project_q(&self, x: &Tensor) -> Tensor {
        match &self.qkv {
            Qkv::Separate { q_proj, .. } => self.heads(&q_proj.forward(x), self.cfg.n_heads),
            Qkv::Fused { .. } => panic!("project_q is for separate projections (cross-attention)"),
        }
    }

    /// Keys and values of `memory` in head layout (cross-attention computes these once).
    pub fn project_kv(&self, memory: &Tensor) -> (Tensor, Tensor) {
        match &self.qkv {
            Qkv::Separate { k_proj, v_proj, .. } => (
                self.heads(&k_proj.forward(memory), self.cfg.n_kv_heads),
                self.heads(&v_proj.forward(memory), self.cfg.n_kv_heads),
            ),
            Qkv::Fused { .. } => panic!("project_kv is for separate projections (cross-attention)"),
        }
    }

    fn project_qkv(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (q, k, v) = match &self.qkv {
            Qkv::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (q_proj.forward(x), k_proj.forward(x), v_proj.forward(x)),
            Qkv::Fused { qkv_proj } => {
                let q_dim = self.cfg.n_heads * self.cfg.head_dim;
                let kv_dim = self.cfg.n_kv_heads * self.cfg.head_dim;
                let qkv = qkv_proj.forward(x);
                let mut parts = qkv
                    .split_with_sizes([q_dim, kv_dim, kv_dim], -1)
                    .into_iter();
                let mut next = || parts.next().expect("three parts");
                (next(), next(), next())
            }
        }; // [b, t, n * hd]
        let whole = matches!(self.opts.qk_norm, QkNorm::Whole { .. });
        let (q, k) = if whole {
            (
                Self::maybe_norm(&self.q_norm, q),
                Self::maybe_norm(&self.k_norm, k),
            )
        } else {
            (q, k)
        };
        let q = self.heads(&q, self.cfg.n_heads); // [b, n, t, hd]
        let k = self.heads(&k, self.cfg.n_kv_heads);
        let v = self.heads(&v, self.cfg.n_kv_heads);
        if whole {
            return (q, k, v);
        }
        (
            Self::maybe_norm(&self.q_norm, q),
            Self::maybe_norm(&self.k_norm, k),
            v,
        )
    }

    /// Self-attention over `x` (`[b, t, d_model]`), appending to `cache` when given.
    pub fn forward_self(
        &self,
        x: &Tensor,
        rope: Option<&RopeTables>,
        mask: &AttnMask,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let (mut q, mut k, v) = self.project_qkv(x);
        if let Some(rope) = rope {
            q = rope.apply(&q);
            k = rope.apply(&k);
        }
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v),
            None => (k, v),
        };
        self.attend(&q, &k, &v, mask, train)
    }

    /// Cross-attention of `x` over precomputed memory keys and values.
    pub fn forward_cross(
        &self,
        x: &Tensor,
        memory_kv: &(Tensor, Tensor),
        mask: &AttnMask,
        train: bool,
    ) -> Tensor {
        let q = self.project_q(x);
        self.attend(&q, &memory_kv.0, &memory_kv.1, mask, train)
    }

    fn expand_kv(&self, t: &Tensor) -> Tensor {
        let group = self.cfg.n_heads / self.cfg.n_kv_heads;
        if group == 1 {
            return t.shallow_clone();
        }
        match self.cfg.gqa {
            GqaMapping::Grouped => t.repeat_interleave_self_int(group, 1, None),
            GqaMapping::Cyclic => t.repeat([1, group, 1, 1]),
        }
    }

    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, train: bool) -> Tensor {
        let (b, _, t, _) = q.size4().expect("rank-4 queries");
        let k = self.expand_kv(k);
        let v = self.expand_kv(v);
        let dropout = if train { self.cfg.dropout } else { 0.0 };
        let scale = self
            .opts
            .scale
            .unwrap_or_else(|| (self.cfg.head_dim as f64).powf(-0.5));
        let out = match self.opts.softcap {
            Some(cap) => softcapped_attention(q, &k, &v, mask, scale, cap, dropout),
            None => match mask {
                AttnMask::Full => Tensor::scaled_dot_product_attention::<Tensor>(
                    q, &k, &v, None, dropout, false, scale, false,
                ),
                AttnMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(
                    q, &k, &v, None, dropout, true, scale, false,
                ),
                AttnMask::Explicit(m) => Tensor::scaled_dot_product_attention(
                    q,
                    &k,
                    &v,
                    Some(m),
                    dropout,
                    false,
                    scale,
                    false,
                ),
            },
        }; // [b, h, t, hd]
        let out = out
            .transpose(1, 2)
            .reshape([b, t, self.cfg.n_heads * self.cfg.head_dim]);
        self.o_proj.forward(&out)
    }
}

/// Attention with tanh soft-capped scores (no fused kernel has the cap): softmax in fp32,
/// as transformers' eager path computes it.
fn softcapped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
    cap: f64,
    dropout: f64,
) -> Tensor {
    let scores = q.matmul(&k.transpose(-2, -1)) * scale; // [b, h, t_q, t_k]
    let scores = (scores / cap).tanh() * cap;
    let scores = match mask {
        AttnMask::Full => scores,
        AttnMask::Causal => {
            let (t_q, t_k) = (scores.size()[2], scores.size()[3]);
            let allowed = Tensor::ones([t_q, t_k], (Kind::Bool, q.device())).tril(0);
            scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY)
        }
        AttnMask::Explicit(m) => scores.masked_fill(&m.logical_not(), f64::NEG_INFINITY),
    };
    let weights = scores.softmax(-1, Kind::Float).to_kind(q.kind());
    let weights = super::dropout(&weights, dropout, dropout > 0.0);
    weights.matmul(v)
}

/// Boolean mask `[b, 1, t_q, t_k]` for self-attention where the queries sit at key slots
/// `past..past+t_q` and `key_valid` (`[b, t_k]`, bool) marks real (non-padding) keys.
/// A query always sees its own slot, so padded rows never become all-masked (NaN).
pub fn causal_padding_mask(key_valid: &Tensor, past: i64, t_q: i64) -> Tensor {
    let (_, t_k) = key_valid.size2().expect("[b, t_k] key mask");
    let device = key_valid.device();
    let q_slot = Tensor::arange_start(past, past + t_q, (Kind::Int64, device)).unsqueeze(1);
    let k_slot = Tensor::arange(t_k, (Kind::Int64, device)).unsqueeze(0);
    let causal = k_slot.le_tensor(&q_slot); // [t_q, t_k]
    let own = k_slot.eq_tensor(&q_slot);
    let allowed = causal.logical_and(&key_valid.unsqueeze(1)).logical_or(&own); // [b,t_q,t_k]
    allowed.unsqueeze(1)
}

/// Boolean mask `[b, 1, 1, t_k]` letting every query see every valid key.
pub fn padding_mask(key_valid: &Tensor) -> Tensor {
    key_valid.unsqueeze(1).unsqueeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(m: &AttnMask) -> Vec<Vec<bool>> {
        let AttnMask::Explicit(m) = m else {
            panic!("windowed masks are explicit")
        };
        let m = m.squeeze_dim(1); // [b, t_q, t_k]
        let (_, t_q, _) = m.size3().unwrap();
        (0..t_q)
            .map(|q| Vec::<bool>::try_from(m.get(0).get(q)).unwrap())
            .collect()
    }

    #[test]
    fn a_window_of_3_shows_the_query_and_the_two_slots_before_it() {
        let cpu = tch::Device::Cpu;
        let prefill = allowed(&AttnMask::Causal.with_window(3, 5, 5, cpu));
        let want = |q: usize| -> Vec<bool> { (0..5).map(|k| k <= q && q - k < 3).collect() };
        for (q, row) in prefill.iter().enumerate() {
            assert_eq!(*row, want(q), "query {q}");
        }
        // One cached decode step at slot 4: keys 2, 3, 4.
        let step = allowed(&AttnMask::Full.with_window(3, 1, 5, cpu));
        assert_eq!(step[0], vec![false, false, true, true, true]);
        // Left padding (slot 0 is padding) stays masked inside the window.
        let valid = Tensor::from_slice(&[false, true, true, true, true]).view([1, 5]);
        let padded = AttnMask::Explicit(causal_padding_mask(&valid, 0, 5));
        let rows = allowed(&padded.with_window(3, 5, 5, cpu));
        assert_eq!(rows[2], vec![false, true, true, false, false]);
        assert_eq!(rows[4], vec![false, false, true, true, true]);
    }
}
