//! The decoder-only twin of a vision-language student: the same tower and projector, the
//! image tokens at the placeholder in its prompt, and a Llama-shaped text model sized by
//! [`crate::student::twin_config`], so the two compare at equal parameter count.

use std::path::Path;

use tch::{Kind, Tensor, nn};

use super::config::VisionConfig;
use super::embedder::{ImageEmbedder, TextBatch};
use super::merge::{Merged, Side};
use crate::error::Result;
use crate::generate::{GenerationConfig, check_ids, generate_from_embeds, right_pad};
use crate::nn::AttnMask;
use crate::nn::attention::causal_padding_mask;
use crate::teacher::{CausalLm, CausalLmConfig, positions_from_valid};

/// Tower + projector + decoder-only LM in one VarStore: the LM's Hugging Face keys
/// (`model.*`, `lm_head.*`), the tower under `vision_tower.vision_model.`, the projector
/// under `mm_projector.`.
#[derive(Debug)]
pub struct VisionTwin {
    pub embedder: ImageEmbedder,
    pub text: CausalLm,
}

impl VisionTwin {
    pub fn new(root: &nn::Path<'_>, text: &CausalLmConfig, vision: &VisionConfig) -> Result<Self> {
        Ok(Self {
            embedder: ImageEmbedder::new(root, vision, text.hidden_size, Path::new("twin config"))?,
            text: CausalLm::new(root, text),
        })
    }

    /// The prompt embeddings of right-padded `input_ids` (`[b, s]`, `valid` `[b, s]`) with
    /// the images spliced in, padded on `side` (right to train, left to generate).
    pub fn merge_inputs(
        &self,
        input_ids: &Tensor,
        valid: &Tensor,
        pixel_values: Option<&Tensor>,
        side: Side,
        train: bool,
    ) -> Result<Merged> {
        let text = TextBatch {
            input_ids,
            valid,
            key_valid: valid,
            embeds: &self.text.embed(input_ids),
        };
        self.embedder.splice(&text, pixel_values, side, train)
    }

    /// Logits `[b, L, vocab]` over the merged, right-padded sequence, with the merge that
    /// says where each text position went ([`Merged::text_position`]).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        valid: &Tensor,
        pixel_values: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Merged)> {
        let (hidden, merged) = self.hidden(input_ids, valid, pixel_values, train)?;
        Ok((self.text.logits(&hidden), merged))
    }

    /// [`VisionTwin::forward`] before the LM head: final hidden states `[b, L, d]`, so a
    /// scorer projects only the positions it needs onto the vocabulary.
    pub fn hidden(
        &self,
        input_ids: &Tensor,
        valid: &Tensor,
        pixel_values: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Merged)> {
        let merged = self.merge_inputs(input_ids, valid, pixel_values, Side::Right, train)?;
        let (_, len) = merged.valid.size2()?;
        let mask = if merged.valid.all().int64_value(&[]) == 1 {
            AttnMask::Causal
        } else {
            AttnMask::Explicit(causal_padding_mask(&merged.valid, 0, len))
        };
        let positions = positions_from_valid(&merged.valid.to_kind(Kind::Bool));
        let hidden = self
            .text
            .hidden_embeds(&merged.embeds, &positions, &mask, None, train);
        Ok((hidden, merged))
    }

    /// [`crate::generate`] with images: one prefill over the left-padded merged prompts,
    /// then cached single-token steps.
    pub fn generate(
        &self,
        prompts: &[Vec<i64>],
        pixel_values: Option<&Tensor>,
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<i64>>> {
        check_ids(prompts, self.text.config.vocab_size)?;
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, valid) = right_pad(prompts, cfg.pad_token_id, self.text.device());
        let merged =
            tch::no_grad(|| self.merge_inputs(&ids, &valid, pixel_values, Side::Left, false))?;
        generate_from_embeds(&self.text, &merged.embeds, &merged.valid, cfg)
    }
}
