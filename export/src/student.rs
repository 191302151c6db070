//! The encoder-decoder student as two graphs, in optimum's seq2seq layout:
//!
//! - `encoder.onnx`: `input_ids`, `attention_mask` -> `last_hidden_state` and, per decoder
//!   layer, the cross-attention keys and values `present.{i}.encoder.key|value`
//!   (computed once per input);
//! - `decoder.onnx`: `input_ids` (one or more new tokens), `position_ids`,
//!   `encoder_attention_mask`, `logits_to_keep`, and per layer the self-attention cache
//!   `past_key_values.{i}.decoder.key|value` and the cross K/V
//!   `past_key_values.{i}.encoder.key|value` -> `logits` and the grown cache
//!   `present.{i}.decoder.key|value`.

use edkd_models::nn::RmsNormKind;
use edkd_models::student::{FfnKind, StudentConfig};

use crate::error::Result;
use crate::graph::{Dim, Elem, Graph, V};
use crate::layers::Weights;
use crate::layers::{AttnSpec, Builder, MASKED, Rope};
use crate::quant::Scheme;

/// Names of the graphs' inputs and outputs.
pub mod names {
    pub const INPUT_IDS: &str = "input_ids";
    pub const ATTENTION_MASK: &str = "attention_mask";
    pub const ENCODER_MASK: &str = "encoder_attention_mask";
    pub const POSITION_IDS: &str = "position_ids";
    pub const LOGITS_TO_KEEP: &str = "logits_to_keep";
    pub const HIDDEN: &str = "last_hidden_state";
    pub const LOGITS: &str = "logits";

    pub fn cross(i: usize, kv: &str) -> String {
        format!("present.{i}.encoder.{kv}")
    }
    pub fn past_cross(i: usize, kv: &str) -> String {
        format!("past_key_values.{i}.encoder.{kv}")
    }
    pub fn past_self(i: usize, kv: &str) -> String {
        format!("past_key_values.{i}.decoder.{kv}")
    }
    pub fn present_self(i: usize, kv: &str) -> String {
        format!("present.{i}.decoder.{kv}")
    }
}

fn spec(c: &StudentConfig) -> AttnSpec {
    AttnSpec {
        n_heads: c.num_heads,
        n_kv: c.num_kv_heads,
        head_dim: c.head_dim(),
        gqa: c.gqa_mapping,
        scale: (c.head_dim() as f64).powf(-0.5) as f32,
        softcap: None,
    }
}

fn inv_freq(c: &StudentConfig) -> Vec<f32> {
    let (inv, _) = c.rope().inv_freq(0);
    Vec::<f32>::try_from(&inv).expect("f32 frequencies")
}

struct Student<'a, 'w> {
    b: Builder<'w>,
    c: &'a StudentConfig,
}

impl Student<'_, '_> {
    fn norm(&mut self, x: &str, key: &str) -> Result<V> {
        self.b.rms_norm(
            x,
            &format!("{key}.weight"),
            self.c.rms_norm_eps,
            RmsNormKind::WeightAfterCast,
        )
    }

    fn mlp(&mut self, x: &str, p: &str) -> Result<V> {
        let bias = self.c.ffn_bias;
        let act = self.c.activation();
        match self.c.ffn_kind {
            FfnKind::GeluTanh => {
                let h = self.b.linear(x, &format!("{p}.fc1"), bias)?;
                let h = self.b.activation(&h, act);
                self.b.linear(&h, &format!("{p}.fc2"), bias)
            }
            FfnKind::Swiglu => {
                let gate = self.b.linear(x, &format!("{p}.gate_proj"), bias)?;
                let gate = self.b.activation(&gate, act);
                let up = self.b.linear(x, &format!("{p}.up_proj"), bias)?;
                let h = self.b.g.mul(&gate, &up);
                self.b.linear(&h, &format!("{p}.down_proj"), bias)
            }
        }
    }

    /// `[b, t, d]` -> K or V heads `[b, kv, t, hd]` of projection `{p}.{which}_proj`.
    fn kv_heads(&mut self, x: &str, p: &str, which: &str) -> Result<V> {
        let y = self
            .b
            .linear(x, &format!("{p}.{which}_proj"), self.c.attn_bias)?;
        Ok(self.b.heads(&y, self.c.num_kv_heads, self.c.head_dim()))
    }

    fn q_heads(&mut self, x: &str, p: &str) -> Result<V> {
        let y = self.b.linear(x, &format!("{p}.q_proj"), self.c.attn_bias)?;
        Ok(self.b.heads(&y, self.c.num_heads, self.c.head_dim()))
    }

    /// Self-attention; returns the output and this step's K, V (before any cache).
    fn self_attn(&mut self, x: &str, p: &str, rope: Option<&Rope>) -> Result<(V, V, V)> {
        let hd = self.c.head_dim();
        let mut q = self.q_heads(x, p)?;
        let mut k = self.kv_heads(x, p, "k")?;
        let v = self.kv_heads(x, p, "v")?;
        if let Some(r) = rope {
            q = r.apply(&mut self.b.g, &q, hd);
            k = r.apply(&mut self.b.g, &k, hd);
        }
        Ok((q, k, v))
    }

    fn o_proj(&mut self, x: &str, p: &str) -> Result<V> {
        self.b.linear(x, &format!("{p}.o_proj"), self.c.attn_bias)
    }
}

/// Encoder positions `i`, or `i - (len - 1) div 2` of each row's real length.
fn encoder_positions(g: &mut Graph, ids: &str, mask: &str, centred: bool) -> V {
    let zero = g.c_i64(&[], &[0]);
    let s = g.dim_scalar(ids, 1);
    let i = g.range(&zero, &s); // [s]
    let i = g.unsqueeze(&i, &[0]); // [1, s]
    if !centred {
        let b = g.dim(ids, 0);
        let one = g.ints(&[1]);
        let shape = g.concat(&[&b, &one], 0);
        return g.op("Expand", &[&i, &shape], vec![]);
    }
    let len = g.reduce_sum(mask, &[1]); // [b, 1]
    let one = g.c_i64(&[], &[1]);
    let two = g.c_i64(&[], &[2]);
    let lm1 = g.sub(&len, &one);
    let half = g.div(&lm1, &two); // truncation = floor for len >= 1
    g.sub(&i, &half) // [b, s]
}

/// Builds `encoder.onnx`.
pub fn encoder(c: &StudentConfig, w: &mut Weights, scheme: Scheme, q_embed: bool) -> Result<Graph> {
    let mut s = Student {
        b: Builder::new("edkd_student_encoder", w, scheme, q_embed),
        c,
    };
    let (batch, len) = (Dim::from("batch"), Dim::from("src_len"));
    let ids = s.b.g.input(
        names::INPUT_IDS,
        Elem::Int64,
        vec![batch.clone(), len.clone()],
    );
    let mask = s.b.g.input(
        names::ATTENTION_MASK,
        Elem::Int64,
        vec![batch.clone(), len.clone()],
    );
    let bias = s.b.padding_bias(&mask);
    let rope = if c.rope_encoder {
        let pos = encoder_positions(&mut s.b.g, &ids, &mask, c.centered_encoder_positions);
        Some(Rope::new(
            &mut s.b.g,
            &pos,
            &inv_freq(c),
            1.0,
            "rope.inv_freq",
        ))
    } else {
        None
    };
    let sp = spec(c);
    let mut x = s.b.embedding(&ids, "embed_tokens.weight")?;
    for i in 0..c.encoder_layers {
        let p = format!("encoder.layers.{i}");
        let h = s.norm(&x, &format!("{p}.self_attn_norm"))?;
        let (q, k, v) = s.self_attn(&h, &format!("{p}.self_attn"), rope.as_ref())?;
        let a = s.b.attend(&q, &k, &v, Some(&bias), &sp);
        let a = s.o_proj(&a, &format!("{p}.self_attn"))?;
        x = s.b.g.add(&x, &a);
        let h = s.norm(&x, &format!("{p}.mlp_norm"))?;
        let h = s.mlp(&h, &format!("{p}.mlp"))?;
        x = s.b.g.add(&x, &h);
    }
    let memory = s.norm(&x, "encoder.norm")?;
    s.b.g.output(
        &memory,
        names::HIDDEN,
        Elem::Float32,
        vec![batch.clone(), len.clone(), c.d_model.into()],
    );
    let kv_shape = vec![batch, c.num_kv_heads.into(), len, c.head_dim().into()];
    for i in 0..c.decoder_layers as usize {
        let p = format!("decoder.layers.{i}.cross_attn");
        for which in ["k", "v"] {
            let t = s.kv_heads(&memory, &p, which)?;
            let kv = if which == "k" { "key" } else { "value" };
            s.b.g
                .output(&t, &names::cross(i, kv), Elem::Float32, kv_shape.clone());
        }
    }
    Ok(s.b.g)
}

/// Which of the `past + t` key slots each of `t` new queries may see (causally):
/// `(allowed [t, T] bool, key slots [T], query slots [t, 1])`.
pub fn causal_allowed(g: &mut Graph, past: &str, t: &str) -> (V, V, V) {
    let zero = g.c_i64(&[], &[0]);
    let total = g.add(past, t);
    let kpos = g.range(&zero, &total); // [T]
    let qpos = g.range(past, &total);
    let qpos = g.unsqueeze(&qpos, &[1]); // [t, 1]
    let allowed = g.op("LessOrEqual", &[&kpos, &qpos], vec![]); // [t, T]
    (allowed, kpos, qpos)
}

/// Builds `decoder.onnx`.
pub fn decoder(c: &StudentConfig, w: &mut Weights, scheme: Scheme, q_embed: bool) -> Result<Graph> {
    let mut s = Student {
        b: Builder::new("edkd_student_decoder", w, scheme, q_embed),
        c,
    };
    let (batch, t, src) = (
        Dim::from("batch"),
        Dim::from("tgt_len"),
        Dim::from("src_len"),
    );
    let (past, total) = (Dim::from("past_len"), Dim::from("total_len"));
    let (kv, hd) = (Dim::Fixed(c.num_kv_heads), Dim::Fixed(c.head_dim()));
    let g = &mut s.b.g;
    let ids = g.input(
        names::INPUT_IDS,
        Elem::Int64,
        vec![batch.clone(), t.clone()],
    );
    let pos = g.input(
        names::POSITION_IDS,
        Elem::Int64,
        vec![batch.clone(), t.clone()],
    );
    let enc_mask = g.input(
        names::ENCODER_MASK,
        Elem::Int64,
        vec![batch.clone(), src.clone()],
    );
    let keep = g.input(names::LOGITS_TO_KEEP, Elem::Int64, vec![Dim::Fixed(1)]);
    let layers = c.decoder_layers as usize;
    let mut past_kv = Vec::with_capacity(layers);
    let mut cross_kv = Vec::with_capacity(layers);
    for i in 0..layers {
        let shape = vec![batch.clone(), kv.clone(), past.clone(), hd.clone()];
        let k = g.input(&names::past_self(i, "key"), Elem::Float32, shape.clone());
        let v = g.input(&names::past_self(i, "value"), Elem::Float32, shape);
        past_kv.push((k, v));
        let shape = vec![batch.clone(), kv.clone(), src.clone(), hd.clone()];
        let k = g.input(&names::past_cross(i, "key"), Elem::Float32, shape.clone());
        let v = g.input(&names::past_cross(i, "value"), Elem::Float32, shape);
        cross_kv.push((k, v));
    }
    let past_len = g.dim_scalar(&past_kv[0].0, 2);
    let new_len = g.dim_scalar(&ids, 1);
    let (allowed, _, _) = causal_allowed(g, &past_len, &new_len);
    let (z, m) = (g.scalar(0.0), g.scalar(MASKED));
    let self_bias = g.where_(&allowed, &z, &m); // [t, T]
    let cross_bias = s.b.padding_bias(&enc_mask);
    let rope = c
        .rope_decoder
        .then(|| Rope::new(&mut s.b.g, &pos, &inv_freq(c), 1.0, "rope.inv_freq"));
    let sp = spec(c);
    let mut x = s.b.embedding(&ids, "embed_tokens.weight")?;
    for (i, ((pk, pv), (ck, cv))) in past_kv.iter().zip(&cross_kv).enumerate() {
        let p = format!("decoder.layers.{i}");
        let h = s.norm(&x, &format!("{p}.self_attn_norm"))?;
        let (q, k, v) = s.self_attn(&h, &format!("{p}.self_attn"), rope.as_ref())?;
        let k = s.b.g.concat(&[pk, &k], 2);
        let v = s.b.g.concat(&[pv, &v], 2);
        let shape = vec![batch.clone(), kv.clone(), total.clone(), hd.clone()];
        s.b.g.output(
            &k,
            &names::present_self(i, "key"),
            Elem::Float32,
            shape.clone(),
        );
        s.b.g
            .output(&v, &names::present_self(i, "value"), Elem::Float32, shape);
        let a = s.b.attend(&q, &k, &v, Some(&self_bias), &sp);
        let a = s.o_proj(&a, &format!("{p}.self_attn"))?;
        x = s.b.g.add(&x, &a);
        let h = s.norm(&x, &format!("{p}.cross_attn_norm"))?;
        let q = s.q_heads(&h, &format!("{p}.cross_attn"))?;
        let a = s.b.attend(&q, ck, cv, Some(&cross_bias), &sp);
        let a = s.o_proj(&a, &format!("{p}.cross_attn"))?;
        x = s.b.g.add(&x, &a);
        let h = s.norm(&x, &format!("{p}.mlp_norm"))?;
        let h = s.mlp(&h, &format!("{p}.mlp"))?;
        x = s.b.g.add(&x, &h);
    }
    let x = keep_last(&mut s.b.g, &x, &keep);
    let x = s.norm(&x, "decoder.norm")?;
    let logits = if c.tie_word_embeddings {
        s.b.tied_head(&x, "embed_tokens.weight")?
    } else {
        s.b.linear(&x, "lm_head", false)?
    };
    let kept = Dim::from("kept_len");
    s.b.g.output(
        &logits,
        names::LOGITS,
        Elem::Float32,
        vec![batch, kept, c.vocab_size.into()],
    );
    Ok(s.b.g)
}

/// The last `keep` positions of `x` (`[b, t, d]`); all of them when `keep` is 0.
pub fn keep_last(g: &mut Graph, x: &str, keep: &str) -> V {
    let start = g.unary("Neg", keep);
    let end = g.ints(&[i64::MAX]);
    let axis = g.ints(&[1]);
    g.op("Slice", &[x, &start, &end, &axis], vec![])
}
