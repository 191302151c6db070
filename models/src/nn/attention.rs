//! Multi-head attention with grouped-query heads, an explicit KV cache and
//! `scaled_dot_product_attention` underneath. Serves decoder self-attention, encoder
//! self-attention and cross-attention.

use tch::{Kind, Tensor, nn, nn::Module};

use super::mlp::linear;
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
    cfg: AttentionConfig,
}

impl Attention {
    pub fn new(p: nn::Path<'_>, cfg: &AttentionConfig) -> Self {
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
        Self {
            qkv,
            o_proj,
            cfg: cfg.clone(),
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
        match &self.qkv {
            Qkv::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (
                self.heads(&q_proj.forward(x), self.cfg.n_heads),
                self.heads(&k_proj.forward(x), self.cfg.n_kv_heads),
                self.heads(&v_proj.forward(x), self.cfg.n_kv_heads),
            ),
            Qkv::Fused { qkv_proj } => {
                let q_dim = self.cfg.n_heads * self.cfg.head_dim;
                let kv_dim = self.cfg.n_kv_heads * self.cfg.head_dim;
                let qkv = qkv_proj.forward(x);
                let parts = qkv.split_with_sizes([q_dim, kv_dim, kv_dim], -1);
                (
                    self.heads(&parts[0], self.cfg.n_heads),
                    self.heads(&parts[1], self.cfg.n_kv_heads),
                    self.heads(&parts[2], self.cfg.n_kv_heads),
                )
            }
        }
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
        let scale = (self.cfg.head_dim as f64).powf(-0.5);
        let out = match mask {
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
        }; // [b, h, t, hd]
        let out = out
            .transpose(1, 2)
            .reshape([b, t, self.cfg.n_heads * self.cfg.head_dim]);
        self.o_proj.forward(&out)
    }
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
