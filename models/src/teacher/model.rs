//! Decoder-only causal LMs in the Llama layout and its relatives (Mistral, Qwen2/3,
//! Phi-3, Gemma 2/3, OLMo 2, Granite, SmolLM3). Variable names mirror the checkpoint keys
//! (`model.layers.{i}.self_attn.q_proj.weight`, ...), so loading is a strict name-for-name
//! copy.

use tch::{Kind, Tensor, nn, nn::Module};

use super::config::{CausalLmConfig, EmbedScale, LayerRope};
use super::layer::DecoderLayer;
use crate::nn::{AttnMask, KvCache, RmsNorm, RopeTables};

/// A decoder-only transformer with its LM head.
#[derive(Debug)]
pub struct CausalLm {
    embed_tokens: nn::Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `None` when the head is tied to the input embedding.
    lm_head: Option<nn::Linear>,
    pub config: CausalLmConfig,
}

/// One KV cache per layer.
#[derive(Debug)]
pub struct LmCache {
    pub layers: Vec<KvCache>,
}

impl LmCache {
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, KvCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CausalLm {
    /// Builds the module tree under `root` (names as in Hugging Face checkpoints).
    pub fn new(root: &nn::Path<'_>, config: &CausalLmConfig) -> Self {
        let c = config;
        let model = root / "model";
        let embed_tokens = nn::embedding(
            &model / "embed_tokens",
            c.vocab_size,
            c.hidden_size,
            nn::EmbeddingConfig {
                ws_init: nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
                ..Default::default()
            },
        );
        let layers = (0..c.num_layers as usize)
            .map(|i| DecoderLayer::new(&model / "layers" / i as i64, c, i))
            .collect();
        let norm = RmsNorm::with_kind(
            &model / "norm",
            c.hidden_size,
            c.rms_norm_eps,
            c.features.norm_kind,
        );
        let lm_head = (!c.tie_word_embeddings).then(|| {
            nn::linear(
                root / "lm_head",
                c.hidden_size,
                c.vocab_size,
                nn::LinearConfig {
                    bias: false,
                    ..Default::default()
                },
            )
        });
        Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config: c.clone(),
        }
    }

    /// An empty cache for `batch` rows and `capacity` positions.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> LmCache {
        let w = &self.embed_tokens.ws;
        LmCache {
            layers: self
                .layers
                .iter()
                .map(|l| l.new_cache(batch, capacity, w.kind(), w.device()))
                .collect(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.embed_tokens.ws.kind()
    }

    pub fn device(&self) -> tch::Device {
        self.embed_tokens.ws.device()
    }

    /// Final hidden states `[b, t, d]` for `input_ids` at `positions` (both `[b, t]`).
    /// `mask` is the causal (and padding) mask of the full-attention layers; layers with a
    /// sliding window narrow it to their window.
    pub fn hidden(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut LmCache>,
        train: bool,
    ) -> Tensor {
        self.hidden_embeds(&self.embed(input_ids), positions, mask, cache, train)
    }

    /// As [`CausalLm::hidden`], from input embeddings `x` (`[b, t, d]`, already scaled as
    /// [`CausalLm::embed`] scales them): the entry for prompts with image patches spliced
    /// in ([`crate::multimodal`]); token ids take the same path after the lookup.
    pub fn hidden_embeds(
        &self,
        x: &Tensor,
        positions: &Tensor,
        mask: &AttnMask,
        mut cache: Option<&mut LmCache>,
        train: bool,
    ) -> Tensor {
        let (_, t_q, _) = x.size3().expect("[b, t, d] input embeddings");
        let past = cache.as_deref().map_or(0, LmCache::len);
        let ropes = LayerRopes::new(self, positions, x.kind());
        let mut windowed: Vec<(i64, AttnMask)> = Vec::new();
        for layer in &self.layers {
            if let Some(w) = layer.kind.window
                && !windowed.iter().any(|(seen, _)| *seen == w)
            {
                windowed.push((w, mask.with_window(w, t_q, past + t_q, x.device())));
            }
        }
        let mut x = x.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            let layer_mask = match layer.kind.window {
                Some(w) => {
                    &windowed
                        .iter()
                        .find(|(seen, _)| *seen == w)
                        .expect("built above")
                        .1
                }
                None => mask,
            };
            let rope = ropes.get(layer.kind.rope);
            x = layer.forward(&x, rope, layer_mask, layer_cache, train);
        }
        self.norm.forward(&x)
    }

    /// Token embeddings `[b, t, d]`, scaled where the family scales them.
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        let x = self.embed_tokens.forward(input_ids);
        match self.config.features.embed_scale {
            EmbedScale::None => x,
            EmbedScale::Scalar(m) => x * m,
            EmbedScale::InDtype(m) => {
                let scale = Tensor::from(m as f32)
                    .to_kind(x.kind())
                    .to_device(x.device());
                x * scale
            }
        }
    }

    /// Vocabulary logits for hidden states `[..., d]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let f = &self.config.features;
        let logits = crate::nn::lm_logits(hidden, self.lm_head.as_ref(), &self.embed_tokens);
        let logits = match f.logits_scaling {
            Some(s) => logits / s,
            None => logits,
        };
        match f.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Logits `[b, t, vocab]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: &AttnMask,
        cache: Option<&mut LmCache>,
        train: bool,
    ) -> Tensor {
        self.logits(&self.hidden(input_ids, positions, mask, cache, train))
    }

    /// Logits for a right- or left-padded batch: `valid` (`[b, t]`, bool) marks real tokens;
    /// positions count real tokens only, as Hugging Face does from the attention mask.
    pub fn forward_padded(&self, input_ids: &Tensor, valid: &Tensor) -> Tensor {
        let positions = positions_from_valid(valid);
        let all_valid = valid.all().int64_value(&[]) == 1;
        let mask = if all_valid {
            AttnMask::Causal
        } else {
            let t = valid.size()[1];
            AttnMask::Explicit(crate::nn::attention::causal_padding_mask(valid, 0, t))
        };
        self.forward(input_ids, &positions, &mask, None, false)
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_parameters(vs: &nn::VarStore) -> i64 {
        vs.variables()
            .values()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum()
    }
}

/// `cumsum(valid) - 1`, with padding slots at position 0.
pub fn positions_from_valid(valid: &Tensor) -> Tensor {
    let v = valid.to_kind(Kind::Int64);
    (v.cumsum(-1, Kind::Int64) - 1).clamp_min(0) * &v
}

/// The RoPE tables one forward pass needs (global, and local for Gemma 3).
struct LayerRopes {
    global: Option<RopeTables>,
    local: Option<RopeTables>,
}

impl LayerRopes {
    fn new(model: &CausalLm, positions: &Tensor, kind: Kind) -> Self {
        let uses = |r: LayerRope| model.layers.iter().any(|l| l.kind.rope == r);
        let c = &model.config;
        Self {
            global: uses(LayerRope::Global).then(|| c.rope.tables(positions, kind)),
            local: c
                .features
                .local_rope
                .as_ref()
                .filter(|_| uses(LayerRope::Local))
                .map(|r| r.tables(positions, kind)),
        }
    }

    fn get(&self, which: LayerRope) -> Option<&RopeTables> {
        match which {
            LayerRope::Global => self.global.as_ref(),
            LayerRope::Local => self.local.as_ref(),
            LayerRope::None => None,
        }
    }
}
