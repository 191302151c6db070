//! The CLIP ViT vision tower: patch embedding, class token and learned positions,
//! `pre_layrnorm`, pre-norm encoder blocks, `post_layernorm` on the pooled class token.
//! Variable names mirror transformers' `CLIPVisionModel` under the path it is built at.

use tch::{Kind, Tensor, nn, nn::Module};

use super::config::ClipVisionConfig;
use super::layer::{ClipEncoderLayer, layer_norm};
use crate::error::{Error, Result};

/// Which hidden state a vision-language model reads, indexed like transformers'
/// `hidden_states` tuple: 0 is the embedding output (after `pre_layrnorm`), `i` the output of
/// block `i`, negative values count from the end (-1 is the last block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeatureLayer(pub i64);

impl FeatureLayer {
    /// LLaVA's `mm_vision_select_layer`: the second-to-last block, whose features are less
    /// specialised to CLIP's contrastive objective than the last.
    pub const LLAVA: FeatureLayer = FeatureLayer(-2);

    /// The index into the `num_layers + 1` hidden states.
    pub fn resolve(self, num_layers: i64) -> Result<usize> {
        let count = num_layers + 1;
        let index = if self.0 < 0 { count + self.0 } else { self.0 };
        if !(0..count).contains(&index) {
            return Err(Error::Input(format!(
                "feature layer {} is out of range for a tower with {num_layers} blocks \
                 (valid: {} to {})",
                self.0, -count, num_layers
            )));
        }
        Ok(index as usize)
    }
}

/// Which tokens of the feature layer to keep (LLaVA's `mm_vision_select_feature`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSelect {
    /// Patch tokens only, the class token dropped (LLaVA's default).
    #[default]
    Patch,
    /// The class token followed by the patch tokens.
    ClsPatch,
}

/// What a full forward pass returns, as transformers' `BaseModelOutputWithPooling`.
#[derive(Debug)]
pub struct VisionOutput {
    /// `num_layers + 1` tensors `[b, 1 + patches, d]`.
    pub hidden_states: Vec<Tensor>,
    /// The last block's output, without `post_layernorm` (`[b, 1 + patches, d]`).
    pub last_hidden_state: Tensor,
    /// `post_layernorm` of the last block's class token (`[b, d]`).
    pub pooler_output: Tensor,
}

#[derive(Debug)]
struct ClipVisionEmbeddings {
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    position_embedding: nn::Embedding,
}

impl ClipVisionEmbeddings {
    fn new(p: nn::Path<'_>, c: &ClipVisionConfig) -> Self {
        let d = c.hidden_size;
        let std = |s: f64| nn::Init::Randn {
            mean: 0.0,
            stdev: s,
        };
        let conv = nn::ConvConfig {
            stride: c.patch_size,
            bias: false,
            ws_init: std(0.02),
            ..Default::default()
        };
        let emb = nn::EmbeddingConfig {
            ws_init: std(0.02),
            ..Default::default()
        };
        Self {
            class_embedding: p.var("class_embedding", &[d], std((d as f64).powf(-0.5))),
            patch_embedding: nn::conv2d(
                &p / "patch_embedding",
                c.num_channels,
                d,
                c.patch_size,
                conv,
            ),
            position_embedding: nn::embedding(
                &p / "position_embedding",
                c.num_patches() + 1,
                d,
                emb,
            ),
        }
    }

    /// `[b, c, s, s]` -> `[b, 1 + patches, d]`.
    fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let w = &self.patch_embedding.ws;
        let patches = self
            .patch_embedding
            .forward(&pixel_values.to_kind(w.kind()))
            .flatten(2, -1)
            .transpose(1, 2); // [b, patches, d]
        let (b, _, d) = patches.size3().expect("rank-3 patch tokens");
        let cls = self
            .class_embedding
            .view([1, 1, d])
            .expand([b, 1, d], false);
        Tensor::cat(&[cls, patches], 1) + self.position_embedding.ws.unsqueeze(0)
    }
}

/// A CLIP vision tower (`CLIPVisionModel` without the contrastive projection).
#[derive(Debug)]
pub struct ClipVisionModel {
    embeddings: ClipVisionEmbeddings,
    pre_layrnorm: nn::LayerNorm,
    layers: Vec<ClipEncoderLayer>,
    post_layernorm: nn::LayerNorm,
    pub config: ClipVisionConfig,
}

impl ClipVisionModel {
    /// Builds the tower under `p` (`p/embeddings/...`, `p/encoder/layers/{i}/...`); a
    /// trainer freezes it by that path.
    pub fn new(p: &nn::Path<'_>, config: &ClipVisionConfig) -> Self {
        let c = config;
        let layers = p / "encoder" / "layers";
        Self {
            embeddings: ClipVisionEmbeddings::new(p / "embeddings", c),
            pre_layrnorm: layer_norm(p / "pre_layrnorm", c.hidden_size, c.layer_norm_eps),
            layers: (0..c.num_layers)
                .map(|i| ClipEncoderLayer::new(&layers / i, c))
                .collect(),
            post_layernorm: layer_norm(p / "post_layernorm", c.hidden_size, c.layer_norm_eps),
            config: c.clone(),
        }
    }

    pub fn kind(&self) -> Kind {
        self.embeddings.class_embedding.kind()
    }

    pub fn device(&self) -> tch::Device {
        self.embeddings.class_embedding.device()
    }

    /// Rejects pixel tensors the tower cannot read, naming the shape it expected.
    fn check_pixels(&self, pixel_values: &Tensor) -> Result<()> {
        let c = &self.config;
        let want = [c.num_channels, c.image_size, c.image_size];
        let size = pixel_values.size();
        if size.len() != 4 || size[1..] != want {
            return Err(Error::Input(format!(
                "pixel_values has shape {size:?}; this tower reads [batch, {}, {}, {}]",
                want[0], want[1], want[2]
            )));
        }
        Ok(())
    }

    /// Hidden states `0..=last` (see [`FeatureLayer`]); blocks after `last` are not run.
    pub fn hidden_states(
        &self,
        pixel_values: &Tensor,
        last: usize,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        if last > self.layers.len() {
            return Err(Error::Input(format!(
                "hidden state {last} asked of a tower with {} blocks",
                self.layers.len()
            )));
        }
        self.check_pixels(pixel_values)?;
        let mut x = self
            .pre_layrnorm
            .forward(&self.embeddings.forward(pixel_values));
        let mut states = Vec::with_capacity(last + 1);
        for layer in self.layers.iter().take(last) {
            let next = layer.forward(&x, train);
            states.push(x);
            x = next;
        }
        states.push(x);
        Ok(states)
    }

    /// Every hidden state, the last one and the pooled class token.
    pub fn forward(&self, pixel_values: &Tensor, train: bool) -> Result<VisionOutput> {
        let hidden_states = self.hidden_states(pixel_values, self.layers.len(), train)?;
        let last_hidden_state = hidden_states
            .last()
            .expect("at least the embeddings")
            .shallow_clone();
        let pooler_output = self.pool(&last_hidden_state);
        Ok(VisionOutput {
            hidden_states,
            last_hidden_state,
            pooler_output,
        })
    }

    /// `post_layernorm` of the class token of `[b, 1 + patches, d]` hidden states.
    pub fn pool(&self, last_hidden_state: &Tensor) -> Tensor {
        self.post_layernorm.forward(&last_hidden_state.select(1, 0))
    }

    /// The features a vision-language model reads: the hidden state of `layer`, with or
    /// without the class token: `[b, patches, d]` or `[b, 1 + patches, d]`.
    pub fn features(
        &self,
        pixel_values: &Tensor,
        layer: FeatureLayer,
        select: FeatureSelect,
        train: bool,
    ) -> Result<Tensor> {
        let index = layer.resolve(self.config.num_layers)?;
        let mut states = self.hidden_states(pixel_values, index, train)?;
        let h = states
            .pop()
            .expect("hidden_states returns last + 1 tensors");
        Ok(match select {
            FeatureSelect::Patch => h.narrow(1, 1, self.config.num_patches()),
            FeatureSelect::ClsPatch => h,
        })
    }
}
