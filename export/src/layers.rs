//! Transformer pieces as ONNX subgraphs, mirroring `edkd_models::nn`: linear layers (f32
//! or int8), RMSNorm in f32, rotary embeddings (rotate-half), grouped-query attention with
//! either KV-head mapping, MLPs and embeddings. Weights are read by their checkpoint names.

use std::collections::{BTreeSet, HashMap};

use edkd_models::nn::{Activation, GqaMapping, RmsNormKind};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::graph::{Attr, Elem, Graph, V};
use crate::quant::{QMAX, QMAX_INTEGER_MATMUL, Scheme, quantize, quantize_to};

/// Additive bias for masked attention scores: the lowest f32, so masked keys get zero
/// weight without the NaN an all `-inf` row would give.
pub const MASKED: f32 = f32::MIN;

/// A model's variables by checkpoint name (f32, CPU), and which ones a graph read.
pub struct Weights {
    vars: HashMap<String, Tensor>,
    used: BTreeSet<String>,
    model: String,
}

impl Weights {
    pub fn new(vs: &tch::nn::VarStore, model: &str) -> Self {
        let vars = vs
            .variables()
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float),
                )
            })
            .collect();
        Self {
            vars,
            used: BTreeSet::new(),
            model: model.to_owned(),
        }
    }

    pub fn get(&mut self, name: &str) -> Result<Tensor> {
        let t = self
            .vars
            .get(name)
            .ok_or_else(|| Error::Weights(format!("{}: no variable `{name}`", self.model)))?;
        self.used.insert(name.to_owned());
        Ok(t.shallow_clone())
    }

    pub fn has(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    /// Fails when a variable was never read: the graphs would silently drop part of the model.
    pub fn check_all_used(&self) -> Result<()> {
        let unused: Vec<&str> = self
            .vars
            .keys()
            .filter(|k| !self.used.contains(*k))
            .map(String::as_str)
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Error::Weights(format!(
                "{}: variables not exported: {}",
                self.model,
                unused.join(", ")
            )))
        }
    }
}

fn f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        &t.to_kind(Kind::Float).contiguous().flatten(0, -1),
    )?)
}

/// Attention shape and scoring options.
#[derive(Debug, Clone, Copy)]
pub struct AttnSpec {
    pub n_heads: i64,
    pub n_kv: i64,
    pub head_dim: i64,
    pub gqa: GqaMapping,
    pub scale: f32,
    pub softcap: Option<f32>,
}

/// A graph being built with the model's weights and the quantisation scheme.
pub struct Builder<'w> {
    pub g: Graph,
    pub w: &'w mut Weights,
    pub scheme: Scheme,
    /// Quantise embedding tables (and the tied head) too.
    pub quantize_embeddings: bool,
    /// int8 tables already in this graph: name -> (int8 values, per-row scales).
    qtables: HashMap<String, (V, V)>,
}

impl<'w> Builder<'w> {
    pub fn new(name: &str, w: &'w mut Weights, scheme: Scheme, quantize_embeddings: bool) -> Self {
        Self {
            g: Graph::new(name),
            w,
            scheme,
            quantize_embeddings,
            qtables: HashMap::new(),
        }
    }

    /// `x @ weight.T + bias` for a checkpoint linear layer `{prefix}.weight` (`[out, in]`).
    pub fn linear(&mut self, x: &str, prefix: &str, bias: bool) -> Result<V> {
        let weight = self.w.get(&format!("{prefix}.weight"))?;
        let b = if bias {
            Some(self.w.get(&format!("{prefix}.bias"))?)
        } else {
            None
        };
        self.linear_from(x, prefix, &weight, b.as_ref())
    }

    /// A linear layer from an explicit `[out, in]` weight (fused projections split apart).
    pub fn linear_from(
        &mut self,
        x: &str,
        name: &str,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<V> {
        let (d_out, d_in) = weight.size2()?;
        let wt = weight.tr().contiguous(); // [in, out]: MatMul(x, W) with no transpose at run time
        let y = match self.scheme {
            Scheme::None => {
                let w =
                    self.g
                        .init_f32(&format!("{name}.weight_t"), &[d_in, d_out], &f32_vec(&wt)?);
                self.g.matmul(x, &w)
            }
            Scheme::Int8 | Scheme::Int8Weight => {
                let qmax = if self.scheme == Scheme::Int8 {
                    QMAX_INTEGER_MATMUL
                } else {
                    QMAX
                };
                let q = quantize_to(&wt, 1, qmax)?;
                let wq = self
                    .g
                    .init_i8(&format!("{name}.weight_t.int8"), &[d_in, d_out], &q.q);
                let s = self
                    .g
                    .init_f32(&format!("{name}.weight_t.scale"), &[d_out], &q.scale);
                self.int8_matmul(x, &wq, &s, d_out)
            }
        };
        Ok(match bias {
            Some(b) => {
                let b = self
                    .g
                    .init_f32(&format!("{name}.bias"), &[d_out], &f32_vec(b)?);
                self.g.add(&y, &b)
            }
            None => y,
        })
    }

    /// `x @ dequant(wq, scale)` for int8 `wq` `[in, out]` with per-column `scale` `[out]`.
    fn int8_matmul(&mut self, x: &str, wq: &str, scale: &str, d_out: i64) -> V {
        match self.scheme {
            Scheme::Int8 => {
                let qs = self.g.op_n("DynamicQuantizeLinear", &[x], 3, vec![]);
                let (xq, xs, xz) = (&qs[0], &qs[1], &qs[2]);
                let acc = self.g.op("MatMulInteger", &[xq, wq, xz], vec![]);
                let acc = self.g.cast(&acc, Elem::Float32);
                let s = self.g.mul(xs, scale);
                self.g.mul(&acc, &s)
            }
            _ => {
                let zp = self.g.init_i8(
                    &format!("{wq}.zero_point"),
                    &[d_out],
                    &vec![0; d_out as usize],
                );
                let w = self.g.op(
                    "DequantizeLinear",
                    &[wq, scale, &zp],
                    vec![("axis", Attr::Int(1))],
                );
                self.g.matmul(x, &w)
            }
        }
    }

    /// RMSNorm over the last axis, in f32 (`x / sqrt(mean(x^2) + eps) * w`).
    pub fn rms_norm(&mut self, x: &str, key: &str, eps: f64, kind: RmsNormKind) -> Result<V> {
        let w = self.w.get(key)?;
        let w = match kind {
            RmsNormKind::OnePlusWeight => w + 1.0,
            // In f32 the two placements of the cast are the same computation.
            RmsNormKind::WeightAfterCast | RmsNormKind::WeightBeforeCast => w,
        };
        let n = w.size()[0];
        let w = self.g.init_f32(key, &[n], &f32_vec(&w)?);
        let two = self.g.scalar(2.0);
        let sq = self.g.op("Pow", &[x, &two], vec![]);
        let var = self.g.reduce_mean(&sq, &[-1]);
        let var = self.g.add_scalar(&var, eps as f32);
        let rms = self.g.unary("Sqrt", &var);
        let normed = self.g.div(x, &rms);
        Ok(self.g.mul(&normed, &w))
    }

    /// Looks up `ids` in the embedding table `key` (`[vocab, d]`).
    pub fn embedding(&mut self, ids: &str, key: &str) -> Result<V> {
        if self.scheme.is_quantized() && self.quantize_embeddings {
            let (q, s) = self.qtable(key)?;
            let rows = self.g.gather(&q, ids, 0);
            let rows = self.g.cast(&rows, Elem::Float32);
            let scales = self.g.gather(&s, ids, 0);
            let scales = self.g.unsqueeze(&scales, &[-1]);
            return Ok(self.g.mul(&rows, &scales));
        }
        let t = self.w.get(key)?;
        let name = self.f32_table(key, &t)?;
        Ok(self.g.gather(&name, ids, 0))
    }

    /// Logits from an embedding table used as the output head (`x @ table.T`).
    pub fn tied_head(&mut self, x: &str, key: &str) -> Result<V> {
        if self.scheme.is_quantized() && self.quantize_embeddings {
            let (q, s) = self.qtable(key)?;
            let vocab = self.w.get(key)?.size()[0];
            let qt = self.g.transpose(&q, &[1, 0]); // constant-folded by the runtime
            return Ok(self.int8_matmul(x, &qt, &s, vocab));
        }
        let t = self.w.get(key)?;
        if self.scheme.is_quantized() {
            // Embeddings kept in f32: quantise the head like any other linear layer.
            return self.linear_from(x, &format!("{key}.head"), &t, None);
        }
        let name = self.f32_table(key, &t)?;
        let tt = self.g.transpose(&name, &[1, 0]);
        Ok(self.g.matmul(x, &tt))
    }

    fn f32_table(&mut self, key: &str, t: &Tensor) -> Result<V> {
        if let Some((name, _)) = self.qtables.get(key) {
            return Ok(name.clone());
        }
        let (v, d) = t.size2()?;
        let name = self.g.init_f32(key, &[v, d], &f32_vec(t)?);
        self.qtables
            .insert(key.to_owned(), (name.clone(), String::new()));
        Ok(name)
    }

    /// The int8 version of table `key` with one scale per row, added once per graph.
    fn qtable(&mut self, key: &str) -> Result<(V, V)> {
        if let Some(pair) = self.qtables.get(key) {
            return Ok(pair.clone());
        }
        let t = self.w.get(key)?;
        let q = quantize(&t, 0)?;
        let (v, d) = (q.dims[0], q.dims[1]);
        let qn = self.g.init_i8(&format!("{key}.int8"), &[v, d], &q.q);
        let sn = self.g.init_f32(&format!("{key}.scale"), &[v], &q.scale);
        self.qtables
            .insert(key.to_owned(), (qn.clone(), sn.clone()));
        Ok((qn, sn))
    }

    /// An activation function.
    pub fn activation(&mut self, x: &str, act: Activation) -> V {
        let g = &mut self.g;
        match act {
            Activation::Silu => {
                let s = g.unary("Sigmoid", x);
                g.mul(x, &s)
            }
            Activation::Relu => g.unary("Relu", x),
            Activation::Gelu => {
                // 0.5 x (1 + erf(x / sqrt 2))
                let t = g.mul_scalar(x, std::f32::consts::FRAC_1_SQRT_2);
                let e = g.unary("Erf", &t);
                let e = g.add_scalar(&e, 1.0);
                let y = g.mul(x, &e);
                g.mul_scalar(&y, 0.5)
            }
            Activation::GeluPytorchTanh => {
                // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                const KAPPA: f32 = 0.044715;
                let beta = (2.0f64 / std::f64::consts::PI).sqrt() as f32;
                let x2 = g.mul(x, x);
                let x3 = g.mul(&x2, x);
                let k = g.mul_scalar(&x3, KAPPA);
                let inner = g.add(x, &k);
                let inner = g.mul_scalar(&inner, beta);
                let t = g.unary("Tanh", &inner);
                let t = g.add_scalar(&t, 1.0);
                let y = g.mul(x, &t);
                g.mul_scalar(&y, 0.5)
            }
        }
    }

    /// `[b, t, n * hd]` -> `[b, n, t, hd]`.
    pub fn heads(&mut self, x: &str, n: i64, hd: i64) -> V {
        let r = self.g.reshape(x, &[0, 0, n, hd]);
        self.g.transpose(&r, &[0, 2, 1, 3])
    }

    /// Scaled dot-product attention of `q` (`[b, H, t, hd]`) over `k`, `v`
    /// (`[b, KV, s, hd]`), with an additive `bias` broadcastable to `[b, 1, 1, t, s]`;
    /// returns `[b, t, H * hd]`. KV heads are shared by broadcasting, not copied: the
    /// query heads are viewed as `[KV, group]` (grouped: head `h` reads `h / group`) or
    /// `[group, KV]` (cyclic: head `h` reads `h % KV`).
    pub fn attend(&mut self, q: &str, k: &str, v: &str, bias: Option<&str>, s: &AttnSpec) -> V {
        let group = s.n_heads / s.n_kv;
        let hd = s.head_dim;
        let g = &mut self.g;
        let (q5, k5, v5) = match s.gqa {
            GqaMapping::Grouped => (
                g.reshape(q, &[0, s.n_kv, group, -1, hd]),
                g.unsqueeze(k, &[2]),
                g.unsqueeze(v, &[2]),
            ),
            GqaMapping::Cyclic => (
                g.reshape(q, &[0, group, s.n_kv, -1, hd]),
                g.unsqueeze(k, &[1]),
                g.unsqueeze(v, &[1]),
            ),
        };
        let kt = g.transpose(&k5, &[0, 1, 2, 4, 3]);
        let scores = g.matmul(&q5, &kt); // [b, A, B, t, s]
        let mut scores = g.mul_scalar(&scores, s.scale);
        if let Some(cap) = s.softcap {
            let c = g.scalar(cap);
            let x = g.div(&scores, &c);
            let x = g.unary("Tanh", &x);
            scores = g.mul_scalar(&x, cap);
        }
        if let Some(b) = bias {
            scores = g.add(&scores, b);
        }
        let p = g.softmax(&scores, -1);
        let out = g.matmul(&p, &v5); // [b, A, B, t, hd]
        let out = g.reshape(&out, &[0, s.n_heads, -1, hd]);
        let out = g.transpose(&out, &[0, 2, 1, 3]);
        g.reshape(&out, &[0, 0, s.n_heads * hd])
    }

    /// Additive key-padding bias `[b, 1, 1, 1, s]` from an int64 mask `[b, s]` (1 = real).
    pub fn padding_bias(&mut self, mask: &str) -> V {
        let g = &mut self.g;
        let valid = g.cast(mask, Elem::Bool);
        let (zero, masked) = (g.scalar(0.0), g.scalar(MASKED));
        let bias = g.where_(&valid, &zero, &masked);
        g.unsqueeze(&bias, &[1, 2, 3])
    }
}

/// Rotary tables for positions: `cos`, `sin` as `[b, 1, t, rotary_dim]`.
pub struct Rope {
    pub cos: V,
    pub sin: V,
    pub rotary_dim: i64,
}

impl Rope {
    /// Tables for int64 `positions` (`[b, t]`) from inverse frequencies `inv` (`[rot/2]`)
    /// and the cos/sin scale (YaRN's and longrope's attention factor, else 1).
    pub fn new(g: &mut Graph, positions: &str, inv: &[f32], scale: f64, name: &str) -> Self {
        let half = inv.len() as i64;
        let inv = g.init_f32(name, &[half], inv);
        let p = g.cast(positions, Elem::Float32);
        let p = g.unsqueeze(&p, &[-1]);
        let freqs = g.mul(&p, &inv); // [b, t, half]
        let emb = g.concat(&[&freqs, &freqs], -1);
        let emb = g.unsqueeze(&emb, &[1]); // [b, 1, t, rot]
        let mut cos = g.unary("Cos", &emb);
        let mut sin = g.unary("Sin", &emb);
        if scale != 1.0 {
            cos = g.mul_scalar(&cos, scale as f32);
            sin = g.mul_scalar(&sin, scale as f32);
        }
        Self {
            cos,
            sin,
            rotary_dim: 2 * half,
        }
    }

    /// Rotates `x` (`[b, h, t, head_dim]`); dimensions past `rotary_dim` pass through.
    pub fn apply(&self, g: &mut Graph, x: &str, head_dim: i64) -> V {
        let r = self.rotary_dim;
        let (rot, pass) = if r == head_dim {
            (x.to_owned(), None)
        } else {
            (g.slice(x, -1, 0, r), Some(g.slice(x, -1, r, head_dim)))
        };
        let x1 = g.slice(&rot, -1, 0, r / 2);
        let x2 = g.slice(&rot, -1, r / 2, r);
        let n2 = g.unary("Neg", &x2);
        let half = g.concat(&[&n2, &x1], -1);
        let a = g.mul(&rot, &self.cos);
        let b = g.mul(&half, &self.sin);
        let out = g.add(&a, &b);
        match pass {
            Some(p) => g.concat(&[&out, &p], -1),
            None => out,
        }
    }
}

/// The first `rows` rows (from `start`) of a 2-D weight.
pub fn rows(w: &Tensor, start: i64, n: i64) -> Tensor {
    w.narrow(0, start, n)
}
