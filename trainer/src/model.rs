//! The model being trained: the encoder-decoder student, or a decoder-only (Llama-shaped)
//! model trained on the same batches with the same alignment (baselines, and the demo's
//! teacher), each as a text model or a vision-language one ([`vision`]). All give logits
//! `[b, dec_len, V]` aligned with the batch's labels.

pub mod vision;

use std::path::Path;

use edkd_data::Batch;
use edkd_data::images::RgbImage;
use edkd_models::generate::{Decoding, GenerationConfig, generate, generate_seq2seq};
use edkd_models::multimodal::{VisionStudentModel, VisionTwinModel};
use edkd_models::student::{StudentConfig, StudentModel, save_folder, twin_config};
use edkd_models::teacher::{CausalLm, LoadOptions, Teacher};
use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::config::{Architecture, ModelSection};
use crate::error::{Error, Result};

/// A batch's arrays as tensors on the training device.
pub struct BatchTensors {
    pub encoder_ids: Tensor,
    pub encoder_mask: Tensor,
    pub decoder_input_ids: Tensor,
    /// `[b, dec_len]`, -100 at padding.
    pub labels: Tensor,
    pub decoder_mask: Tensor,
    /// `[b, teacher_len]`: `input ++ target`.
    pub teacher_ids: Tensor,
    pub teacher_mask: Tensor,
    /// `[b, dec_len]`: the index into `teacher_ids` whose logits predict `labels[:, t]`.
    pub teacher_positions: Tensor,
    /// `[n, 3, s, s]`: the images of the rows that have one, in row order, processed for
    /// a vision-language model ([`Net::tensors`]); `None` for text.
    pub pixel_values: Option<Tensor>,
}

impl BatchTensors {
    pub fn new(b: &Batch, device: Device) -> Self {
        let rows = b.rows as i64;
        let t2 = |v: &[i64], cols: usize| {
            Tensor::from_slice(v)
                .reshape([rows, cols as i64])
                .to_device(device)
        };
        let m2 = |v: &[bool], cols: usize| {
            Tensor::from_slice(v)
                .reshape([rows, cols as i64])
                .to_device(device)
        };
        let mut positions = Vec::with_capacity(b.rows * b.dec_len);
        for r in 0..b.rows {
            let start = b.target_start.get(r).copied().unwrap_or(1);
            for t in 0..b.dec_len {
                let p = (start - 1 + t as i64).clamp(0, (b.teacher_len as i64 - 1).max(0));
                positions.push(p);
            }
        }
        Self {
            encoder_ids: t2(&b.encoder_ids, b.enc_len),
            encoder_mask: m2(&b.encoder_mask, b.enc_len),
            decoder_input_ids: t2(&b.decoder_input_ids, b.dec_len),
            labels: t2(&b.labels, b.dec_len),
            decoder_mask: m2(&b.decoder_mask, b.dec_len),
            teacher_ids: t2(&b.teacher_ids, b.teacher_len),
            teacher_mask: m2(&b.teacher_mask, b.teacher_len),
            teacher_positions: t2(&positions, b.dec_len),
            pixel_values: None,
        }
    }
}

/// Logits of a decoder-only model on `input ++ target`, gathered at the positions that
/// predict each label: `[b, dec_len, V]`.
pub fn causal_target_logits(model: &CausalLm, t: &BatchTensors, train: bool) -> Tensor {
    model.logits(&causal_target_hidden(model, t, train))
}

/// The final hidden states that predict each label: `[b, dec_len, d]`.
fn causal_target_hidden(model: &CausalLm, t: &BatchTensors, train: bool) -> Tensor {
    use edkd_models::nn::AttnMask;
    use edkd_models::nn::attention::causal_padding_mask;
    use edkd_models::teacher::positions_from_valid;
    let positions = positions_from_valid(&t.teacher_mask);
    let len = t.teacher_ids.size()[1];
    let mask = AttnMask::Explicit(causal_padding_mask(&t.teacher_mask, 0, len));
    let hidden = model.hidden(&t.teacher_ids, &positions, &mask, None, train);
    let d = hidden.size()[2];
    let (b, dl) = t.teacher_positions.size2().expect("[b, dec_len]");
    let idx = t.teacher_positions.unsqueeze(-1).expand([b, dl, d], false);
    hidden.gather(1, &idx, false)
}

#[allow(clippy::large_enum_variant)]
pub enum Net {
    EncoderDecoder(StudentModel),
    DecoderOnly {
        vs: VarStore,
        model: CausalLm,
    },
    /// The vision-language student: images enter the encoder.
    VisionEncoderDecoder(VisionStudentModel),
    /// Its decoder-only twin: images enter the prompt.
    VisionDecoderOnly(VisionTwinModel),
}

/// Special ids and vocabulary the model must agree with (from the data manifest).
#[derive(Debug, Clone, Copy)]
pub struct Vocab {
    /// Tokenizer vocabulary (the teacher's).
    pub size: i64,
    pub pad: i64,
    pub bos: i64,
    pub eos: i64,
    /// The image placeholder's token id when the data has images (manifest
    /// `images.image_token_id`); `None` for text data.
    pub image_token_id: Option<i64>,
}

impl Net {
    /// A fresh model from a preset (vocabulary and special ids from `vocab`), or the
    /// folder `section.init`. With `section.vision`, or an `init` folder that is a vision-language model, the
    /// model reads images ([`vision::build`]).
    pub fn build(section: &ModelSection, vocab: Vocab, device: Device, seed: u64) -> Result<Self> {
        let vision_init = section
            .init
            .as_deref()
            .is_some_and(|d| vision::folder_kind(d).is_some());
        let net = match (&section.init, section.architecture) {
            _ if section.vision.is_some() || vision_init => {
                vision::build(section, vocab, device, seed)?
            }
            (Some(dir), Architecture::EncoderDecoder) => {
                let m = StudentModel::load(
                    dir,
                    LoadOptions {
                        device,
                        kind: Kind::Float,
                    },
                )?;
                Net::EncoderDecoder(m)
            }
            (Some(dir), Architecture::DecoderOnly) => {
                let mut t = Teacher::load(
                    dir,
                    LoadOptions {
                        device,
                        kind: Kind::Float,
                    },
                )?;
                t.vs.unfreeze();
                Net::DecoderOnly {
                    vs: t.vs,
                    model: t.model,
                }
            }
            (None, arch) => {
                let cfg = preset_config(section, vocab)?;
                match arch {
                    Architecture::EncoderDecoder => {
                        Net::EncoderDecoder(StudentModel::init(&cfg, device, seed as i64)?)
                    }
                    Architecture::DecoderOnly => {
                        cfg.validate()?;
                        let lm = twin_config(&cfg);
                        let vs = VarStore::new(device);
                        let model = edkd_models::rng::seeded(seed as i64, || {
                            CausalLm::new(&vs.root(), &lm)
                        });
                        Net::DecoderOnly { vs, model }
                    }
                }
            }
        };
        let (v, eos) = (net.vocab(), net.eos());
        if v < vocab.size {
            return Err(Error::Config(format!(
                "the model's vocabulary ({v}) is smaller than the tokenizer's ({})",
                vocab.size
            )));
        }
        if eos != vocab.eos {
            return Err(Error::Config(format!(
                "the model's eos id ({eos}) differs from the data's ({})",
                vocab.eos
            )));
        }
        Ok(net)
    }

    pub fn vs(&self) -> &VarStore {
        match self {
            Net::EncoderDecoder(m) => &m.vs,
            Net::DecoderOnly { vs, .. } => vs,
            Net::VisionEncoderDecoder(m) => &m.vs,
            Net::VisionDecoderOnly(m) => &m.vs,
        }
    }

    pub fn vs_mut(&mut self) -> &mut VarStore {
        match self {
            Net::EncoderDecoder(m) => &mut m.vs,
            Net::DecoderOnly { vs, .. } => vs,
            Net::VisionEncoderDecoder(m) => &mut m.vs,
            Net::VisionDecoderOnly(m) => &mut m.vs,
        }
    }

    /// Whether the model reads images.
    pub fn is_vision(&self) -> bool {
        matches!(
            self,
            Net::VisionEncoderDecoder(_) | Net::VisionDecoderOnly(_)
        )
    }

    /// The image placeholder's token id of a vision-language model.
    pub fn image_token_id(&self) -> Option<i64> {
        match self {
            Net::VisionEncoderDecoder(m) => Some(m.model.embedder.config.image_token_id),
            Net::VisionDecoderOnly(m) => Some(m.model.embedder.config.image_token_id),
            _ => None,
        }
    }

    /// The decoder-only text model (of a text or a vision-language net), if it is one.
    fn causal(&self) -> Option<&CausalLm> {
        match self {
            Net::DecoderOnly { model, .. } => Some(model),
            Net::VisionDecoderOnly(m) => Some(&m.model.text),
            _ => None,
        }
    }

    /// The encoder-decoder student's config (of a text or a vision-language net).
    fn student_config(&self) -> Option<&StudentConfig> {
        match self {
            Net::EncoderDecoder(m) => Some(&m.model.config),
            Net::VisionEncoderDecoder(m) => Some(m.model.config()),
            _ => None,
        }
    }

    pub fn vocab(&self) -> i64 {
        match (self.student_config(), self.causal()) {
            (Some(c), _) => c.vocab_size,
            (None, Some(m)) => m.config.vocab_size,
            (None, None) => unreachable!("a net is a student or a decoder-only model"),
        }
    }

    pub fn eos(&self) -> i64 {
        match (self.student_config(), self.causal()) {
            (Some(c), _) => c.eos_token_id,
            (None, Some(m)) => m.config.eos_token_ids.first().copied().unwrap_or(-1),
            (None, None) => unreachable!("a net is a student or a decoder-only model"),
        }
    }

    pub fn pad(&self) -> i64 {
        match (self.student_config(), self.causal()) {
            (Some(c), _) => c.pad_token_id,
            (None, Some(m)) => m.config.pad_token_id.unwrap_or(0),
            (None, None) => unreachable!("a net is a student or a decoder-only model"),
        }
    }

    /// The batch's tensors on `device`, with the processed pixels of its images for a
    /// vision-language model; a text model refuses a batch with images.
    pub fn tensors(&self, b: &Batch, device: Device) -> Result<BatchTensors> {
        let mut t = BatchTensors::new(b, device);
        match self {
            Net::VisionEncoderDecoder(m) => {
                t.pixel_values =
                    vision::batch_pixels(&m.processor, m.model.embedder.config.image_token_id, b)?
                        .map(|p| p.to_device(device));
            }
            Net::VisionDecoderOnly(m) => {
                t.pixel_values =
                    vision::batch_pixels(&m.processor, m.model.embedder.config.image_token_id, b)?
                        .map(|p| p.to_device(device));
            }
            _ => vision::refuse_images(b, "the model (a text model; set model.vision)")?,
        }
        Ok(t)
    }

    pub fn num_parameters(&self) -> i64 {
        CausalLm::num_parameters(self.vs())
    }

    /// Logits `[b, dec_len, V]` aligned with `t.labels`.
    pub fn logits(&self, t: &BatchTensors, train: bool) -> Result<Tensor> {
        let px = t.pixel_values.as_ref();
        Ok(match self {
            Net::EncoderDecoder(m) => {
                m.model
                    .forward(&t.encoder_ids, &t.encoder_mask, &t.decoder_input_ids, train)
            }
            Net::DecoderOnly { model, .. } => causal_target_logits(model, t, train),
            Net::VisionEncoderDecoder(m) => m.model.forward(
                &t.encoder_ids,
                &t.encoder_mask,
                px,
                &t.decoder_input_ids,
                train,
            )?,
            Net::VisionDecoderOnly(m) => vision::twin_target_logits(&m.model, t, train)?,
        })
    }

    /// Logits `[n, V]` at the real label positions only (`t.decoder_mask`, row-major, as
    /// `loss::select_rows` orders them): the LM head runs on those rows, not on padding.
    pub fn target_logits(&self, t: &BatchTensors, train: bool) -> Result<Tensor> {
        let rows = |hidden: &Tensor| crate::loss::select_rows(hidden, &t.decoder_mask);
        Ok(match self {
            Net::EncoderDecoder(m) => {
                let enc = m.model.encode(&t.encoder_ids, &t.encoder_mask, train);
                let hidden = m.model.decode(&t.decoder_input_ids, &enc, None, train);
                m.model.logits(&rows(&hidden))
            }
            Net::DecoderOnly { model, .. } => {
                model.logits(&rows(&causal_target_hidden(model, t, train)))
            }
            Net::VisionEncoderDecoder(m) => {
                let px = t.pixel_values.as_ref();
                let enc = m.model.encode(&t.encoder_ids, &t.encoder_mask, px, train)?;
                let text = &m.model.text;
                text.logits(&rows(&text.decode(&t.decoder_input_ids, &enc, None, train)))
            }
            Net::VisionDecoderOnly(m) => {
                let hidden = vision::twin_target_hidden(&m.model, t, train)?;
                m.model.text.logits(&rows(&hidden))
            }
        })
    }

    /// Generates an answer for each input (greedy or sampled per `cfg`), cached decoding.
    pub fn generate(&self, inputs: &[Vec<i64>], cfg: &GenerationConfig) -> Result<Vec<Vec<i64>>> {
        self.generate_with_images(inputs, &[], cfg)
    }

    /// [`Net::generate`] with each input's image (`images[r]`, `None` for a row without
    /// one; empty: no images at all). A text model refuses images.
    pub fn generate_with_images(
        &self,
        inputs: &[Vec<i64>],
        images: &[Option<RgbImage>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<i64>>> {
        let any_image = images.iter().any(Option::is_some);
        Ok(match self {
            Net::EncoderDecoder(_) | Net::DecoderOnly { .. } if any_image => {
                return Err(Error::Images(
                    "the model is a text model and cannot read the inputs' images".into(),
                ));
            }
            Net::EncoderDecoder(m) => generate_seq2seq(&m.model, inputs, cfg, Decoding::Cached)?,
            Net::DecoderOnly { model, .. } => generate(model, inputs, cfg)?,
            Net::VisionEncoderDecoder(m) => {
                let px = vision::pixels(&m.processor, images, m.model.text.device())?;
                m.model
                    .generate(inputs, px.as_ref(), cfg, Decoding::Cached)?
            }
            Net::VisionDecoderOnly(m) => {
                let px = vision::pixels(&m.processor, images, m.model.text.device())?;
                m.model.generate(inputs, px.as_ref(), cfg)?
            }
        })
    }

    /// Writes a loadable model folder (student folder, a Hugging Face Llama folder, or
    /// their vision-language forms).
    pub fn save(&self, dir: &Path, tokenizer: Option<&Path>) -> Result<()> {
        match self {
            Net::EncoderDecoder(m) => m.save(dir, tokenizer)?,
            Net::DecoderOnly { vs, model } => {
                save_folder(dir, &model.config.to_hf_json(), vs, tokenizer)?
            }
            Net::VisionEncoderDecoder(m) => m.save(dir, tokenizer)?,
            Net::VisionDecoderOnly(m) => m.save(dir, tokenizer)?,
        }
        Ok(())
    }

    /// The config as JSON (for reports).
    pub fn config_json(&self) -> serde_json::Value {
        match self {
            Net::EncoderDecoder(m) => serde_json::to_value(&m.model.config).expect("serialises"),
            Net::DecoderOnly { model, .. } => model.config.to_hf_json(),
            Net::VisionEncoderDecoder(m) => {
                serde_json::to_value(m.model.config()).expect("serialises")
            }
            Net::VisionDecoderOnly(m) => serde_json::json!({
                "model_type": edkd_models::multimodal::TWIN_MODEL_TYPE,
                "text_config": m.model.text.config.to_hf_json(),
                "vision": m.model.embedder.config,
            }),
        }
    }
}

/// The student config of a fresh model: the preset with `section.overrides`, the data's
/// special ids, and its vocabulary (padded to a multiple of 64 for the encoder-decoder
/// student, the tokenizer's own for a decoder-only model).
pub(crate) fn preset_config(section: &ModelSection, vocab: Vocab) -> Result<StudentConfig> {
    let mut cfg = StudentConfig::preset(&section.preset)?;
    let mut value = serde_json::to_value(&cfg).expect("config serialises");
    for (k, v) in &section.overrides {
        let v = serde_json::to_value(v)
            .map_err(|e| Error::Config(format!("model.overrides.{k}: {e}")))?;
        match value.get_mut(k) {
            Some(slot) => *slot = v,
            None => {
                return Err(Error::Config(format!(
                    "model.overrides.{k}: the student config has no field `{k}`"
                )));
            }
        }
    }
    cfg = serde_json::from_value(value)
        .map_err(|e| Error::Config(format!("model.overrides: {e}")))?;
    cfg.pad_token_id = vocab.pad;
    cfg.bos_token_id = vocab.bos;
    cfg.eos_token_id = vocab.eos;
    cfg.vocab_size = match section.architecture {
        Architecture::EncoderDecoder => StudentConfig::padded_vocab(vocab.size),
        Architecture::DecoderOnly => vocab.size,
    };
    Ok(cfg)
}
