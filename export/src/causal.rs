//! A decoder-only model (the student's Llama-shaped twin, or a teacher of any family edkd
//! loads) as one graph with past KV, `model.onnx`, in transformers' decoder-with-past
//! layout: `input_ids`, `attention_mask` (over past and new tokens), `position_ids`,
//! `logits_to_keep`, `past_key_values.{i}.key|value` -> `logits`, `present.{i}.key|value`.

use std::collections::HashMap;

use edkd_models::nn::{GqaMapping, QkNorm, RopeScaling};
use edkd_models::teacher::{CausalLmConfig, EmbedScale, Family, LayerRope, NormPlacement};

use crate::error::{Error, Result};
use crate::graph::{Dim, Elem, Graph, V};
use crate::layers::{AttnSpec, Builder, MASKED, Rope, Weights, rows};
use crate::quant::Scheme;
use crate::student::{causal_allowed, keep_last, names};

/// What the causal graph implements, for the error on anything else.
pub const SUPPORTED: &str = "Llama, Qwen2, Qwen3, Mistral, Phi-3, Gemma 2/3, OLMo 2, Granite and \
     SmolLM3 layouts with RoPE scaling none, linear, llama3 or yarn";

pub fn past_name(i: usize, kv: &str) -> String {
    format!("past_key_values.{i}.{kv}")
}

pub fn present_name(i: usize, kv: &str) -> String {
    format!("present.{i}.{kv}")
}

fn static_rope(scaling: &RopeScaling) -> std::result::Result<(), &'static str> {
    match scaling {
        RopeScaling::None
        | RopeScaling::Linear { .. }
        | RopeScaling::Llama3 { .. }
        | RopeScaling::Yarn { .. } => Ok(()),
        RopeScaling::Dynamic { .. } => Err("dynamic"),
        RopeScaling::LongRope { .. } => Err("longrope"),
    }
}

/// Refuses what the graph cannot express, naming the feature.
pub fn check(c: &CausalLmConfig, model: &str) -> Result<()> {
    let unsupported = |feature: String| Error::Unsupported {
        model: model.to_owned(),
        feature,
        supported: SUPPORTED,
    };
    let ropes = std::iter::once(&c.rope).chain(c.features.local_rope.as_ref());
    for r in ropes {
        if let Err(kind) = static_rope(&r.scaling) {
            return Err(unsupported(format!(
                "RoPE scaling `{kind}` (its frequencies depend on the sequence length)"
            )));
        }
    }
    Ok(())
}

struct Causal<'a, 'w> {
    b: Builder<'w>,
    c: &'a CausalLmConfig,
}

impl Causal<'_, '_> {
    fn norm(&mut self, x: &str, key: &str) -> Result<V> {
        let f = &self.c.features;
        self.b.rms_norm(
            x,
            &format!("{key}.weight"),
            self.c.rms_norm_eps,
            f.norm_kind,
        )
    }

    fn residual(&mut self, x: &str, h: &str) -> V {
        match self.c.features.residual_multiplier {
            Some(m) => {
                let h = self.b.g.mul_scalar(h, m as f32);
                self.b.g.add(x, &h)
            }
            None => self.b.g.add(x, h),
        }
    }

    /// q, k, v projections (`[b, t, n * hd]` each), split apart when fused (Phi-3).
    fn qkv(&mut self, x: &str, p: &str) -> Result<(V, V, V)> {
        let c = self.c;
        let (qd, kvd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let bias = c.qkv_bias;
        if c.family == Family::Phi3 {
            let w = self.b.w.get(&format!("{p}.qkv_proj.weight"))?;
            let b = if bias {
                Some(self.b.w.get(&format!("{p}.qkv_proj.bias"))?)
            } else {
                None
            };
            let part = |start: i64, n: i64| {
                (
                    rows(&w, start, n),
                    b.as_ref().map(|b| b.narrow(0, start, n)),
                )
            };
            let mut out = Vec::new();
            for (name, start, n) in [("q", 0, qd), ("k", qd, kvd), ("v", qd + kvd, kvd)] {
                let (w, b) = part(start, n);
                out.push(
                    self.b
                        .linear_from(x, &format!("{p}.qkv_proj.{name}"), &w, b.as_ref())?,
                );
            }
            let v = out.pop().expect("three");
            let k = out.pop().expect("three");
            let q = out.pop().expect("three");
            return Ok((q, k, v));
        }
        Ok((
            self.b.linear(x, &format!("{p}.q_proj"), bias)?,
            self.b.linear(x, &format!("{p}.k_proj"), bias)?,
            self.b.linear(x, &format!("{p}.v_proj"), bias)?,
        ))
    }

    fn qk_norm(&mut self, q: &str, k: &str, p: &str) -> Result<(V, V)> {
        let (eps, kind) = match self.c.features.qk_norm {
            QkNorm::None => return Ok((q.to_owned(), k.to_owned())),
            QkNorm::PerHead { eps, kind } | QkNorm::Whole { eps, kind } => (eps, kind),
        };
        Ok((
            self.b
                .rms_norm(q, &format!("{p}.q_norm.weight"), eps, kind)?,
            self.b
                .rms_norm(k, &format!("{p}.k_norm.weight"), eps, kind)?,
        ))
    }

    fn mlp(&mut self, x: &str, p: &str) -> Result<V> {
        let c = self.c;
        let (gate, up) = if c.family == Family::Phi3 {
            let w = self.b.w.get(&format!("{p}.gate_up_proj.weight"))?;
            let ff = c.intermediate_size;
            let b = if c.mlp_bias {
                Some(self.b.w.get(&format!("{p}.gate_up_proj.bias"))?)
            } else {
                None
            };
            let half = |i: i64| {
                (
                    rows(&w, i * ff, ff),
                    b.as_ref().map(|b| b.narrow(0, i * ff, ff)),
                )
            };
            let (gw, gb) = half(0);
            let (uw, ub) = half(1);
            (
                self.b
                    .linear_from(x, &format!("{p}.gate_up_proj.gate"), &gw, gb.as_ref())?,
                self.b
                    .linear_from(x, &format!("{p}.gate_up_proj.up"), &uw, ub.as_ref())?,
            )
        } else {
            (
                self.b.linear(x, &format!("{p}.gate_proj"), c.mlp_bias)?,
                self.b.linear(x, &format!("{p}.up_proj"), c.mlp_bias)?,
            )
        };
        let gate = self.b.activation(&gate, c.act);
        let h = self.b.g.mul(&gate, &up);
        self.b.linear(&h, &format!("{p}.down_proj"), c.mlp_bias)
    }
}

/// Additive bias `[b, 1, 1, t, T]`: causal, padding from `mask` (`[b, T]`, 1 = real), and
/// an optional sliding window; a query always sees its own slot (as edkd's masks do).
fn lm_bias(g: &mut Graph, mask: &str, past: &str, t: &str, window: Option<i64>) -> V {
    let (causal, kpos, qpos) = causal_allowed(g, past, t);
    let (z, m) = (g.scalar(0.0), g.scalar(MASKED));
    let valid = g.cast(mask, Elem::Bool);
    let valid = g.unsqueeze(&valid, &[1]); // [b, 1, T]
    let own = g.op("Equal", &[&kpos, &qpos], vec![]); // [t, T]
    let mut allowed = g.op("And", &[&causal, &valid], vec![]); // [b, t, T]
    if let Some(w) = window {
        let wc = g.c_i64(&[], &[w]);
        let lo = g.sub(&qpos, &wc);
        let inside = g.op("Greater", &[&kpos, &lo], vec![]);
        allowed = g.op("And", &[&allowed, &inside], vec![]);
    }
    let allowed = g.op("Or", &[&allowed, &own], vec![]);
    let bias = g.where_(&allowed, &z, &m);
    g.unsqueeze(&bias, &[1, 2])
}

fn inv(r: &edkd_models::nn::RopeConfig) -> Result<(Vec<f32>, f64)> {
    let (inv, scale) = r.inv_freq(0);
    Ok((Vec::<f32>::try_from(&inv)?, scale))
}

/// Builds `model.onnx` for a decoder-only model.
pub fn model(
    c: &CausalLmConfig,
    w: &mut Weights,
    scheme: Scheme,
    q_embed: bool,
    name: &str,
) -> Result<Graph> {
    check(c, name)?;
    let mut m = Causal {
        b: Builder::new("edkd_causal_lm", w, scheme, q_embed),
        c,
    };
    let (batch, t, past, total) = (
        Dim::from("batch"),
        Dim::from("seq_len"),
        Dim::from("past_len"),
        Dim::from("total_len"),
    );
    let (kv, hd) = (Dim::Fixed(c.num_kv_heads), Dim::Fixed(c.head_dim));
    let g = &mut m.b.g;
    let ids = g.input(
        names::INPUT_IDS,
        Elem::Int64,
        vec![batch.clone(), t.clone()],
    );
    let mask = g.input(
        names::ATTENTION_MASK,
        Elem::Int64,
        vec![batch.clone(), total.clone()],
    );
    let pos = g.input(
        names::POSITION_IDS,
        Elem::Int64,
        vec![batch.clone(), t.clone()],
    );
    let keep = g.input(names::LOGITS_TO_KEEP, Elem::Int64, vec![Dim::Fixed(1)]);
    let n = c.num_layers as usize;
    let pasts: Vec<(V, V)> = (0..n)
        .map(|i| {
            let shape = vec![batch.clone(), kv.clone(), past.clone(), hd.clone()];
            (
                g.input(&past_name(i, "key"), Elem::Float32, shape.clone()),
                g.input(&past_name(i, "value"), Elem::Float32, shape),
            )
        })
        .collect();
    let past_len = g.dim_scalar(&pasts[0].0, 2);
    let new_len = g.dim_scalar(&ids, 1);
    let mut biases: HashMap<Option<i64>, V> = HashMap::new();
    for i in 0..n {
        let window = c.layer_kind(i).window;
        if let std::collections::hash_map::Entry::Vacant(e) = biases.entry(window) {
            e.insert(lm_bias(g, &mask, &past_len, &new_len, window));
        }
    }
    let (gi, gs) = inv(&c.rope)?;
    let global = Rope::new(g, &pos, &gi, gs, "rope.inv_freq");
    let local = match &c.features.local_rope {
        Some(r) => {
            let (li, ls) = inv(r)?;
            Some(Rope::new(g, &pos, &li, ls, "rope.local_inv_freq"))
        }
        None => None,
    };
    let f = c.features.clone();
    let spec = AttnSpec {
        n_heads: c.num_heads,
        n_kv: c.num_kv_heads,
        head_dim: c.head_dim,
        gqa: GqaMapping::Grouped,
        scale: c
            .attention_scale()
            .unwrap_or_else(|| (c.head_dim as f64).powf(-0.5)) as f32,
        softcap: f.attn_softcap.map(|x| x as f32),
    };
    let mut x = m.b.embedding(&ids, "model.embed_tokens.weight")?;
    match f.embed_scale {
        EmbedScale::None => {}
        EmbedScale::Scalar(s) | EmbedScale::InDtype(s) => x = m.b.g.mul_scalar(&x, s as f32),
    }
    for (i, (pk, pv)) in pasts.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let kind = c.layer_kind(i);
        let h = match f.norm_placement {
            NormPlacement::Post => x.clone(),
            _ => m.norm(&x, &format!("{p}.input_layernorm"))?,
        };
        let a = format!("{p}.self_attn");
        let (q, k, v) = m.qkv(&h, &a)?;
        let whole = matches!(f.qk_norm, QkNorm::Whole { .. });
        let (q, k) = if whole {
            m.qk_norm(&q, &k, &a)?
        } else {
            (q, k)
        };
        let mut q = m.b.heads(&q, c.num_heads, c.head_dim);
        let mut k = m.b.heads(&k, c.num_kv_heads, c.head_dim);
        let v = m.b.heads(&v, c.num_kv_heads, c.head_dim);
        if !whole {
            (q, k) = m.qk_norm(&q, &k, &a)?;
        }
        let rope = match kind.rope {
            LayerRope::Global => Some(&global),
            LayerRope::Local => local.as_ref(),
            LayerRope::None => None,
        };
        if let Some(r) = rope {
            q = r.apply(&mut m.b.g, &q, c.head_dim);
            k = r.apply(&mut m.b.g, &k, c.head_dim);
        }
        let k = m.b.g.concat(&[pk, &k], 2);
        let v = m.b.g.concat(&[pv, &v], 2);
        let shape = vec![batch.clone(), kv.clone(), total.clone(), hd.clone()];
        m.b.g
            .output(&k, &present_name(i, "key"), Elem::Float32, shape.clone());
        m.b.g
            .output(&v, &present_name(i, "value"), Elem::Float32, shape);
        let bias = biases[&kind.window].clone();
        let h = m.b.attend(&q, &k, &v, Some(&bias), &spec);
        let mut h = m.b.linear(&h, &format!("{a}.o_proj"), c.o_bias)?;
        if f.norm_placement != NormPlacement::Pre {
            h = m.norm(&h, &format!("{p}.post_attention_layernorm"))?;
        }
        x = m.residual(&x, &h);
        let h = match f.norm_placement {
            NormPlacement::Pre => m.norm(&x, &format!("{p}.post_attention_layernorm"))?,
            NormPlacement::Sandwich => m.norm(&x, &format!("{p}.pre_feedforward_layernorm"))?,
            NormPlacement::Post => x.clone(),
        };
        let mut h = m.mlp(&h, &format!("{p}.mlp"))?;
        if f.norm_placement != NormPlacement::Pre {
            h = m.norm(&h, &format!("{p}.post_feedforward_layernorm"))?;
        }
        x = m.residual(&x, &h);
    }
    let x = keep_last(&mut m.b.g, &x, &keep);
    let x = m.norm(&x, "model.norm")?;
    let mut logits = if c.tie_word_embeddings {
        m.b.tied_head(&x, "model.embed_tokens.weight")?
    } else {
        m.b.linear(&x, "lm_head", false)?
    };
    if let Some(s) = f.logits_scaling {
        let s = m.b.g.scalar(s as f32);
        logits = m.b.g.div(&logits, &s);
    }
    if let Some(cap) = f.final_softcap {
        let s = m.b.g.scalar(cap as f32);
        let y = m.b.g.div(&logits, &s);
        let y = m.b.g.unary("Tanh", &y);
        logits = m.b.g.mul(&y, &s);
    }
    let kept = Dim::from("kept_len");
    m.b.g.output(
        &logits,
        names::LOGITS,
        Elem::Float32,
        vec![batch, kept, c.vocab_size.into()],
    );
    Ok(m.b.g)
}
