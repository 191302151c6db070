//! The encoder-decoder student. Encoder: pre-norm self-attention (bidirectional, RoPE on
//! optionally centred positions) and MLP. Decoder: pre-norm causal self-attention (RoPE),
//! pre-norm cross-attention over the encoder output (no RoPE), pre-norm MLP. A final
//! RMSNorm closes each stack. Training and generation run the same code.

use tch::{Kind, Tensor, nn, nn::Module};

use super::config::{FfnKind, StudentConfig};
use crate::nn::attention::padding_mask;
use crate::nn::{
    Attention, AttentionConfig, AttnMask, GatedMlp, KvCache, PlainMlp, RmsNorm, RopeConfig, dropout,
};

#[derive(Debug)]
enum Mlp {
    Gated(GatedMlp),
    Plain(PlainMlp),
}

impl Mlp {
    fn new(p: nn::Path<'_>, c: &StudentConfig) -> Self {
        match c.ffn_kind {
            FfnKind::Swiglu => Mlp::Gated(GatedMlp::new(
                p,
                c.d_model,
                c.ffn_dim,
                c.ffn_bias,
                false,
                c.activation(),
            )),
            FfnKind::GeluTanh => Mlp::Plain(PlainMlp::new(
                p,
                c.d_model,
                c.ffn_dim,
                c.ffn_bias,
                c.activation(),
            )),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Mlp::Gated(m) => m.forward(x),
            Mlp::Plain(m) => m.forward(x),
        }
    }
}

#[derive(Debug)]
struct EncoderLayer {
    self_attn_norm: RmsNorm,
    self_attn: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

#[derive(Debug)]
struct DecoderLayer {
    self_attn_norm: RmsNorm,
    self_attn: Attention,
    cross_attn_norm: RmsNorm,
    cross_attn: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

/// The encoder's output for a batch, with its padding mask (`valid`, `[b, s]`, bool).
pub struct Encoded {
    pub memory: Tensor,
    pub valid: Tensor,
    /// True when no row has padding (lets attention skip the mask).
    pub dense: bool,
}

/// Decoder state for cached generation: self-attention K/V per layer, and cross-attention
/// K/V of the encoder output per layer, computed once per input.
pub struct DecoderCache {
    self_kv: Vec<KvCache>,
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Which cached decoder tokens are not the pad id (`[b, len]`), when
    /// `mask_pad_tokens` is on.
    self_valid: Option<Tensor>,
}

impl DecoderCache {
    pub fn len(&self) -> i64 {
        self.self_kv.first().map_or(0, KvCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct Student {
    embed_tokens: nn::Embedding,
    encoder_layers: Vec<EncoderLayer>,
    encoder_norm: RmsNorm,
    decoder_layers: Vec<DecoderLayer>,
    decoder_norm: RmsNorm,
    lm_head: Option<nn::Linear>,
    /// `lm_head.bias` of a tied head (an untied head keeps its bias in `lm_head`).
    tied_head_bias: Option<Tensor>,
    rope: RopeConfig,
    pub config: StudentConfig,
}

impl Student {
    pub fn new(root: &nn::Path<'_>, c: &StudentConfig) -> Self {
        let embed_tokens = nn::embedding(
            root / "embed_tokens",
            c.vocab_size,
            c.d_model,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                ..Default::default()
            },
        );
        let attn = AttentionConfig {
            d_model: c.d_model,
            n_heads: c.num_heads,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim(),
            qkv_bias: c.attn_bias,
            o_bias: c.o_bias(),
            fused_qkv: false,
            gqa: c.gqa_mapping,
            dropout: c.dropout,
        };
        let norm = |p: nn::Path<'_>| RmsNorm::new(p, c.d_model, c.rms_norm_eps);
        let enc = root / "encoder";
        let encoder_layers = (0..c.encoder_layers)
            .map(|i| {
                let p = &enc / "layers" / i;
                EncoderLayer {
                    self_attn_norm: norm(&p / "self_attn_norm"),
                    self_attn: Attention::new(&p / "self_attn", &attn),
                    mlp_norm: norm(&p / "mlp_norm"),
                    mlp: Mlp::new(&p / "mlp", c),
                }
            })
            .collect();
        let dec = root / "decoder";
        let decoder_layers = (0..c.decoder_layers)
            .map(|i| {
                let p = &dec / "layers" / i;
                DecoderLayer {
                    self_attn_norm: norm(&p / "self_attn_norm"),
                    self_attn: Attention::new(&p / "self_attn", &attn),
                    cross_attn_norm: norm(&p / "cross_attn_norm"),
                    cross_attn: Attention::new(&p / "cross_attn", &attn),
                    mlp_norm: norm(&p / "mlp_norm"),
                    mlp: Mlp::new(&p / "mlp", c),
                }
            })
            .collect();
        let lm_head = (!c.tie_word_embeddings).then(|| {
            nn::linear(
                root / "lm_head",
                c.d_model,
                c.vocab_size,
                nn::LinearConfig {
                    bias: c.lm_head_bias,
                    ..Default::default()
                },
            )
        });
        let tied_head_bias = (c.tie_word_embeddings && c.lm_head_bias)
            .then(|| (root / "lm_head").zeros("bias", &[c.vocab_size]));
        Self {
            embed_tokens,
            encoder_layers,
            encoder_norm: norm(&enc / "norm"),
            decoder_layers,
            decoder_norm: norm(&dec / "norm"),
            lm_head,
            tied_head_bias,
            rope: c.rope(),
            config: c.clone(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.embed_tokens.ws.kind()
    }

    pub fn device(&self) -> tch::Device {
        self.embed_tokens.ws.device()
    }

    /// Encoder positions per row: `i`, or `i - (len-1) div 2` of the row's real length.
    fn encoder_positions(&self, valid: &Tensor) -> Tensor {
        let (b, s) = valid.size2().expect("[b, s] mask");
        let i = Tensor::arange(s, (Kind::Int64, valid.device()))
            .unsqueeze(0)
            .expand([b, s], false);
        if !self.config.centered_encoder_positions {
            return i;
        }
        let len = valid
            .to_kind(Kind::Int64)
            .sum_dim_intlist(-1, true, Kind::Int64); // [b, 1]
        i - (len - 1).floor_divide_scalar(2)
    }

    /// Token embeddings `[b, s, d]` of `ids` (`[b, s]`), before dropout.
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        self.embed_tokens.forward(ids)
    }

    /// The encoder's key mask for right-padded `input_ids`: `valid`, and with
    /// `mask_pad_tokens` also every pad-id token (the reference's `ids != pad`).
    pub fn key_valid(&self, input_ids: &Tensor, valid: &Tensor) -> Tensor {
        if self.config.mask_pad_tokens {
            valid.logical_and(&input_ids.ne(self.config.pad_token_id))
        } else {
            valid.shallow_clone()
        }
    }

    /// Runs the encoder over right-padded `input_ids` (`[b, s]`) with `valid` marking real tokens.
    pub fn encode(&self, input_ids: &Tensor, valid: &Tensor, train: bool) -> Encoded {
        self.encode_embeds(
            &self.embed(input_ids),
            &self.key_valid(input_ids, valid),
            train,
        )
    }

    /// Runs the encoder over input embeddings `x` (`[b, s, d]`, right-padded, `valid`
    /// `[b, s]` bool): the entry for inputs that are not all token ids (image patches
    /// spliced into the text, [`crate::multimodal`]). [`Student::encode`] is this after the
    /// embedding lookup, so text and image inputs share one code path.
    pub fn encode_embeds(&self, x: &Tensor, valid: &Tensor, train: bool) -> Encoded {
        #![allow(clippy::assign_op_pattern)] // out-of-place residuals: autograd saved `x`
        let dense = valid.all().int64_value(&[]) == 1;
        let mask = if dense {
            AttnMask::Full
        } else {
            AttnMask::Explicit(padding_mask(valid))
        };
        let mut x = dropout(x, self.config.dropout, train);
        let rope = self
            .config
            .rope_encoder
            .then(|| self.rope.tables(&self.encoder_positions(valid), x.kind()));
        let p = self.config.dropout;
        for layer in &self.encoder_layers {
            let h = layer.self_attn.forward_self(
                &layer.self_attn_norm.forward(&x),
                rope.as_ref(),
                &mask,
                None,
                train,
            );
            x = x + dropout(&h, p, train);
            let h = layer.mlp.forward(&layer.mlp_norm.forward(&x));
            x = x + dropout(&h, p, train);
        }
        Encoded {
            memory: self.encoder_norm.forward(&x),
            valid: valid.shallow_clone(),
            dense,
        }
    }

    fn cross_mask(enc: &Encoded) -> AttnMask {
        if enc.dense {
            AttnMask::Full
        } else {
            AttnMask::Explicit(padding_mask(&enc.valid))
        }
    }

    /// Decoder hidden states for `decoder_ids` (`[b, t]`) at positions `start..start+t`.
    /// Without a cache this is the training pass (causal, right padding needs no extra
    /// mask: real tokens never see later padding). With a cache, the new tokens attend to
    /// everything cached so far.
    pub fn decode(
        &self,
        decoder_ids: &Tensor,
        enc: &Encoded,
        cache: Option<&mut DecoderCache>,
        train: bool,
    ) -> Tensor {
        #![allow(clippy::assign_op_pattern)]
        let (b, t) = decoder_ids.size2().expect("[b, t] decoder ids");
        let start = cache.as_ref().map_or(0, |c| c.len());
        let positions = Tensor::arange_start(start, start + t, (Kind::Int64, decoder_ids.device()))
            .unsqueeze(0)
            .expand([b, t], false);
        let mut x = dropout(
            &self.embed_tokens.forward(decoder_ids),
            self.config.dropout,
            train,
        );
        let rope = self
            .config
            .rope_decoder
            .then(|| self.rope.tables(&positions, x.kind()));
        let mut cache = cache;
        let self_mask = if self.config.mask_pad_tokens {
            let new_valid = decoder_ids.ne(self.config.pad_token_id); // [b, t]
            let key_valid = match cache.as_deref_mut() {
                Some(c) => {
                    let all = match &c.self_valid {
                        Some(past) => Tensor::cat(&[past, &new_valid], 1),
                        None => new_valid,
                    };
                    c.self_valid = Some(all.shallow_clone());
                    all
                }
                None => new_valid,
            };
            AttnMask::Explicit(pad_token_mask(&key_valid, start, t))
        } else if t == 1 {
            AttnMask::Full
        } else if start == 0 {
            AttnMask::Causal
        } else {
            let valid = Tensor::ones([b, start + t], (Kind::Bool, decoder_ids.device()));
            AttnMask::Explicit(crate::nn::attention::causal_padding_mask(&valid, start, t))
        };
        let cross_mask = Self::cross_mask(enc);
        let p = self.config.dropout;
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            let (self_kv, cross_kv) = match cache.as_deref_mut() {
                Some(c) => (Some(&mut c.self_kv[i]), Some(&c.cross_kv[i])),
                None => (None, None),
            };
            let h = layer.self_attn.forward_self(
                &layer.self_attn_norm.forward(&x),
                rope.as_ref(),
                &self_mask,
                self_kv,
                train,
            );
            x = x + dropout(&h, p, train);
            let q = layer.cross_attn_norm.forward(&x);
            let h = match cross_kv {
                Some(kv) => layer.cross_attn.forward_cross(&q, kv, &cross_mask, train),
                None => layer.cross_attn.forward_cross(
                    &q,
                    &layer.cross_attn.project_kv(&enc.memory),
                    &cross_mask,
                    train,
                ),
            };
            x = x + dropout(&h, p, train);
            let h = layer.mlp.forward(&layer.mlp_norm.forward(&x));
            x = x + dropout(&h, p, train);
        }
        self.decoder_norm.forward(&x)
    }

    /// Vocabulary logits for decoder hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let logits = crate::nn::lm_logits(hidden, self.lm_head.as_ref(), &self.embed_tokens);
        match &self.tied_head_bias {
            Some(bias) => logits + bias,
            None => logits,
        }
    }

    /// Teacher-forced logits `[b, t, vocab]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        input_valid: &Tensor,
        decoder_ids: &Tensor,
        train: bool,
    ) -> Tensor {
        let enc = self.encode(input_ids, input_valid, train);
        self.logits(&self.decode(decoder_ids, &enc, None, train))
    }

    /// A cache for generating up to `capacity` decoder tokens over `enc`.
    pub fn new_cache(&self, enc: &Encoded, capacity: i64) -> DecoderCache {
        let b = enc.memory.size()[0];
        DecoderCache {
            self_kv: self
                .decoder_layers
                .iter()
                .map(|l| {
                    l.self_attn
                        .new_cache(b, capacity, self.kind(), self.device())
                })
                .collect(),
            cross_kv: self
                .decoder_layers
                .iter()
                .map(|l| l.cross_attn.project_kv(&enc.memory))
                .collect(),
            self_valid: None,
        }
    }
}

/// The reference's decoder self-attention mask (`[b, 1, t_q, t_k]`): causal, and no key
/// whose token is the pad id, the query's own included. A query left with no key (its row
/// starts with pad ids) sees itself, so softmax stays finite.
fn pad_token_mask(key_valid: &Tensor, past: i64, t_q: i64) -> Tensor {
    let (_, t_k) = key_valid.size2().expect("[b, t_k] key mask");
    let device = key_valid.device();
    let q_slot = Tensor::arange_start(past, past + t_q, (Kind::Int64, device)).unsqueeze(1);
    let k_slot = Tensor::arange(t_k, (Kind::Int64, device)).unsqueeze(0);
    let allowed = k_slot
        .le_tensor(&q_slot)
        .logical_and(&key_valid.unsqueeze(1)); // [b, t_q, t_k]
    let none = allowed.any_dim(-1, true).logical_not(); // [b, t_q, 1]
    let own = k_slot.eq_tensor(&q_slot); // [t_q, t_k]
    allowed.logical_or(&own.logical_and(&none)).unsqueeze(1)
}
