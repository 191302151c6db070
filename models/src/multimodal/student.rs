//! The vision-language student (the paper's Mu-vision, LLaVA-style): image patch
//! embeddings replace each row's `<image>` placeholder in the ENCODER's input; the decoder
//! only ever sees the encoder's output, so decoding and cached generation are the text
//! student's, unchanged.

use std::path::Path;

use tch::{Tensor, nn};

use super::embedder::{ImageEmbedder, TextBatch};
use super::merge::{Merged, Side};
use crate::error::{Error, Result};
use crate::generate::{Decoding, GenerationConfig, check_ids, generate_from_encoded, right_pad};
use crate::student::{Encoded, Student, StudentConfig};

/// Tower + projector + the encoder-decoder text student, in one VarStore: the text
/// student's keys at the root, the tower under `vision_tower.vision_model.`, the projector
/// under `mm_projector.`.
#[derive(Debug)]
pub struct VisionStudent {
    pub embedder: ImageEmbedder,
    pub text: Student,
}

impl VisionStudent {
    /// Builds the model under `root`; `config.vision` must be present.
    pub fn new(root: &nn::Path<'_>, config: &StudentConfig) -> Result<Self> {
        let vision = config.vision.as_ref().ok_or_else(|| Error::Config {
            path: "student config".into(),
            field: "vision",
            msg: "absent: a vision-language student needs a vision section".into(),
        })?;
        Ok(Self {
            embedder: ImageEmbedder::new(
                root,
                vision,
                config.d_model,
                Path::new("student config"),
            )?,
            text: Student::new(root, config),
        })
    }

    pub fn config(&self) -> &StudentConfig {
        &self.text.config
    }

    /// The encoder's input: the text embeddings of right-padded `input_ids` (`[b, s]`,
    /// `valid` `[b, s]`) with `pixel_values` (`[n, c, h, w]`, one image per placeholder
    /// row, in row order) spliced in, right-padded again.
    pub fn merge_inputs(
        &self,
        input_ids: &Tensor,
        valid: &Tensor,
        pixel_values: Option<&Tensor>,
        train: bool,
    ) -> Result<Merged> {
        let text = TextBatch {
            input_ids,
            valid,
            key_valid: &self.text.key_valid(input_ids, valid),
            embeds: &self.text.embed(input_ids),
        };
        self.embedder
            .splice(&text, pixel_values, Side::Right, train)
    }

    /// Runs the encoder over text with images.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        valid: &Tensor,
        pixel_values: Option<&Tensor>,
        train: bool,
    ) -> Result<Encoded> {
        let merged = self.merge_inputs(input_ids, valid, pixel_values, train)?;
        Ok(self
            .text
            .encode_embeds(&merged.embeds, &merged.valid, train))
    }

    /// Teacher-forced logits `[b, t, vocab]` for `decoder_ids` (`[b, t]`).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        valid: &Tensor,
        pixel_values: Option<&Tensor>,
        decoder_ids: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let enc = self.encode(input_ids, valid, pixel_values, train)?;
        Ok(self
            .text
            .logits(&self.text.decode(decoder_ids, &enc, None, train)))
    }

    /// [`crate::generate_seq2seq`] with images: encode text and images once, then the text
    /// student's decoding (cached or recomputed).
    pub fn generate(
        &self,
        inputs: &[Vec<i64>],
        pixel_values: Option<&Tensor>,
        cfg: &GenerationConfig,
        decoding: Decoding,
    ) -> Result<Vec<Vec<i64>>> {
        let c = self.config();
        check_ids(inputs, c.vocab_size)?;
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, valid) = right_pad(inputs, c.pad_token_id, self.text.device());
        let enc = tch::no_grad(|| self.encode(&ids, &valid, pixel_values, false))?;
        generate_from_encoded(&self.text, &enc, cfg, decoding)
    }
}
