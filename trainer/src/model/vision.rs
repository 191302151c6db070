//! Vision-language nets: building them from `[model.vision]` (a CLIP folder or an inline
//! tower shape, on a fresh preset or a text student folder) or from a saved
//! vision-language folder, turning a batch's images into pixels, and the decoder-only
//! twin's label alignment.
//!
//! The twin reads `input ++ target` with the image's patches in place of the placeholder,
//! so every text position after the placeholder moves by `patches - 1`: the position that
//! predicts label `t` is found with [`Merged::text_position`], never by arithmetic on the
//! text alone. The encoder-decoder student needs nothing of the kind: images enter its
//! encoder, and its decoder is aligned with the labels as for text.

use std::path::Path;

use edkd_data::Batch;
use edkd_data::images::RgbImage;
use edkd_models::multimodal::{
    Merged, ProjectorKind, TWIN_MODEL_TYPE, TextSource, VisionChoices, VisionStudentModel,
    VisionTwin, VisionTwinModel,
};
use edkd_models::student::MODEL_TYPE;
use edkd_models::teacher::LoadOptions;
use edkd_models::vision::{HfClipVisionConfig, ImageProcessor};
use tch::{Device, Kind, Tensor};

use super::{BatchTensors, Net, Vocab, preset_config};
use crate::config::{Architecture, ModelSection, VisionSection, check_feature_layer, field};
use crate::error::{Error, Result};

/// What kind of vision-language folder a model folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionFolder {
    /// A student folder whose config.json has a `vision` section.
    Student,
    /// A twin folder (`model_type` [`TWIN_MODEL_TYPE`]).
    Twin,
}

/// The vision-language kind of the folder `dir`; `None` for text folders, GGUF files and
/// anything unreadable (whose loader then reports the problem).
pub fn folder_kind(dir: &Path) -> Option<VisionFolder> {
    if edkd_models::gguf::is_gguf(dir) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    match v.get("model_type").and_then(|m| m.as_str()) {
        Some(TWIN_MODEL_TYPE) => Some(VisionFolder::Twin),
        Some(MODEL_TYPE) if v.get("vision").is_some_and(|s| !s.is_null()) => {
            Some(VisionFolder::Student)
        }
        _ => None,
    }
}

/// A vision-language net for `section` (see [`Net::build`]); the placeholder id is the
/// data's.
pub(crate) fn build(
    section: &ModelSection,
    vocab: Vocab,
    device: Device,
    seed: u64,
) -> Result<Net> {
    let image_token_id = vocab.image_token_id.ok_or_else(|| {
        field(
            "model.vision",
            "the data has no images (its manifest has no `images` section): prepare it with \
             --image-field, or train a text model (no model.vision, a text model.init)",
        )
    })?;
    let v = section.vision.clone().unwrap_or_default();
    let seed = seed as i64;
    let arch = section.architecture;
    let Some(dir) = section.init.as_deref() else {
        return fresh(section, &v, vocab, image_token_id, device, seed);
    };
    let opts = LoadOptions {
        device,
        kind: Kind::Float,
    };
    match (folder_kind(dir), arch) {
        (Some(VisionFolder::Student), Architecture::EncoderDecoder) => {
            refuse_folder_fields(&v, dir)?;
            let mut m = VisionStudentModel::load(dir, opts)?;
            let c = m.model.embedder.config.clone();
            check_token(c.image_token_id, image_token_id, dir)?;
            m.set_trainable(
                v.train_tower.unwrap_or(c.train_tower),
                v.train_text.unwrap_or(c.train_text),
            );
            Ok(Net::VisionEncoderDecoder(m))
        }
        (Some(VisionFolder::Twin), Architecture::DecoderOnly) => {
            refuse_folder_fields(&v, dir)?;
            let mut m = VisionTwinModel::load(dir, opts)?;
            let c = m.model.embedder.config.clone();
            check_token(c.image_token_id, image_token_id, dir)?;
            m.set_trainable(
                v.train_tower.unwrap_or(c.train_tower),
                v.train_text.unwrap_or(c.train_text),
            );
            Ok(Net::VisionDecoderOnly(m))
        }
        (Some(kind), arch) => Err(field(
            "model.architecture",
            format!(
                "{arch:?}, but model.init {} is a vision-language {} folder",
                dir.display(),
                match kind {
                    VisionFolder::Student => "encoder-decoder student",
                    VisionFolder::Twin => "decoder-only twin",
                }
            ),
        )
        .into()),
        (None, Architecture::EncoderDecoder) => {
            let tower = v.tower.as_deref().ok_or_else(|| {
                field(
                    "model.vision.tower",
                    format!(
                        "required: model.init {} is a text student; name the CLIP folder \
                         whose tower it is to read images with",
                        dir.display()
                    ),
                )
            })?;
            let choices = choices(&v, image_token_id, &tower_config(tower)?)?;
            let mut m =
                VisionStudentModel::from_parts(tower, TextSource::Folder(dir), &choices, seed)?;
            m.vs.set_device(device);
            Ok(Net::VisionEncoderDecoder(m))
        }
        (None, Architecture::DecoderOnly) => Err(field(
            "model.vision",
            format!(
                "model.init {} is a text decoder-only folder; adding a tower to one is not \
                 supported: start from a preset, or from a vision-language twin folder \
                 ({TWIN_MODEL_TYPE})",
                dir.display()
            ),
        )
        .into()),
    }
}

/// A fresh vision-language net on the preset: the tower from a CLIP folder (loaded) or an
/// inline shape (initialised), a fresh projector and text model.
fn fresh(
    section: &ModelSection,
    v: &VisionSection,
    vocab: Vocab,
    image_token_id: i64,
    device: Device,
    seed: i64,
) -> Result<Net> {
    let mut cfg = preset_config(section, vocab)?;
    let decoder_only = section.architecture == Architecture::DecoderOnly;
    if let Some(tower) = &v.tower {
        let choices = choices(v, image_token_id, &tower_config(tower)?)?;
        let mut student =
            VisionStudentModel::from_parts(tower, TextSource::Fresh(&cfg), &choices, seed)?;
        student.vs.set_device(device);
        if !decoder_only {
            return Ok(Net::VisionEncoderDecoder(student));
        }
        // The twin takes the student's loaded tower, fresh projector and processor; the
        // student's text model is built only to be dropped (once, at start).
        return Ok(Net::VisionDecoderOnly(VisionTwinModel::init_from(
            &student, seed,
        )?));
    }
    let shape = v.tower_config.as_ref().ok_or_else(|| {
        field(
            "model.vision.tower",
            "required (a CLIP folder), or tower_config for a fresh tower",
        )
    })?;
    let tower = shape.to_hf();
    cfg.vision = Some(choices(v, image_token_id, &tower)?.with_tower(tower));
    Ok(if decoder_only {
        Net::VisionDecoderOnly(VisionTwinModel::init(&cfg, device, seed)?)
    } else {
        Net::VisionEncoderDecoder(VisionStudentModel::init(&cfg, device, seed)?)
    })
}

/// The tower config of a CLIP folder.
fn tower_config(dir: &Path) -> Result<HfClipVisionConfig> {
    Ok(HfClipVisionConfig::from_folder(dir)?.0)
}

/// The section's choices (defaults: LLaVA's) for a tower of `tower`'s depth.
fn choices(
    v: &VisionSection,
    image_token_id: i64,
    tower: &HfClipVisionConfig,
) -> Result<VisionChoices> {
    let layer = v.feature_layer();
    check_feature_layer(layer.0, tower.num_hidden_layers)?;
    let llava = VisionChoices::llava(image_token_id);
    Ok(VisionChoices {
        image_token_id,
        feature_layer: layer,
        feature_select: v.feature_select.unwrap_or(llava.feature_select),
        projector: ProjectorKind::Mlp2xGelu,
        train_tower: v.train_tower.unwrap_or(llava.train_tower),
        train_text: v.train_text.unwrap_or(llava.train_text),
    })
}

/// A vision-language folder brings its tower and the features its projector was trained
/// on: the section may only choose what trains.
fn refuse_folder_fields(v: &VisionSection, dir: &Path) -> Result<()> {
    let set = [
        ("model.vision.tower", v.tower.is_some()),
        ("model.vision.feature_layer", v.feature_layer.is_some()),
        ("model.vision.feature_select", v.feature_select.is_some()),
    ];
    if let Some((name, _)) = set.iter().find(|(_, on)| *on) {
        return Err(field(
            name,
            format!(
                "model.init {} is a vision-language folder and brings its own tower and \
                 features; only train_tower and train_text may be set",
                dir.display()
            ),
        )
        .into());
    }
    Ok(())
}

fn check_token(folder: i64, data: i64, dir: &Path) -> Result<()> {
    if folder != data {
        return Err(Error::Config(format!(
            "model.init {}: its vision.image_token_id is {folder}, but the data's \
             images.image_token_id is {data}; the data was made with another tokenizer",
            dir.display()
        )));
    }
    Ok(())
}

/// The processed pixels of a batch's images (rows with an image, in row order; `None`
/// when no row has one), on the CPU. Every row must have an image exactly when its input
/// has the placeholder `image_token_id`; an error names the example.
pub fn batch_pixels(
    processor: &ImageProcessor,
    image_token_id: i64,
    b: &Batch,
) -> Result<Option<Tensor>> {
    let images = b.decode_images()?;
    for (r, image) in images.iter().enumerate() {
        let span = r * b.enc_len..(r + 1) * b.enc_len;
        let placeholders = b.encoder_ids[span.clone()]
            .iter()
            .zip(&b.encoder_mask[span])
            .filter(|&(&id, &real)| real && id == image_token_id)
            .count();
        let id = &b.ids[r];
        let problem = match (placeholders, image.is_some()) {
            (0, false) | (1, true) => continue,
            (0, true) => format!(
                "example `{id}` has an image but no placeholder (token {image_token_id}) in \
                 its input (was it truncated away? prepare with --input-truncation keep-start)"
            ),
            (1, false) => format!(
                "example `{id}` has an image placeholder (token {image_token_id}) but no image"
            ),
            (n, _) => format!(
                "example `{id}` has {n} image placeholders (token {image_token_id}); an \
                 example takes at most one image"
            ),
        };
        return Err(Error::Images(problem));
    }
    pixels(processor, &images, Device::Cpu)
}

/// Refuses a batch with any image: `who` cannot read them.
pub fn refuse_images(b: &Batch, who: &str) -> Result<()> {
    let with_image = b
        .images
        .iter()
        .flatten()
        .position(Option::is_some)
        .map(|r| &b.ids[r]);
    match with_image {
        Some(id) => Err(Error::Images(format!(
            "{who} cannot read images, but example `{id}` has one"
        ))),
        None => Ok(()),
    }
}

/// `[n, 3, s, s]` pixels of the given images (the `Some`s, in order) on `device`.
pub fn pixels(
    processor: &ImageProcessor,
    images: &[Option<RgbImage>],
    device: Device,
) -> Result<Option<Tensor>> {
    let present: Vec<RgbImage> = images.iter().flatten().cloned().collect();
    if present.is_empty() {
        return Ok(None);
    }
    Ok(Some(processor.batch(&present)?.to_device(device)))
}

/// The twin's final hidden states at the positions that predict each label, `[b, dec_len,
/// d]`: text position `target_start - 1 + t` of `teacher_ids`, moved by the image's
/// patches ([`Merged::text_position`]).
pub fn twin_target_hidden(model: &VisionTwin, t: &BatchTensors, train: bool) -> Result<Tensor> {
    let (hidden, merged) = model.hidden(
        &t.teacher_ids,
        &t.teacher_mask,
        t.pixel_values.as_ref(),
        train,
    )?;
    let idx = merged_positions(&merged, &t.teacher_positions)?.to_device(hidden.device());
    let (b, dl) = idx.size2()?;
    let d = hidden.size()[2];
    Ok(hidden.gather(1, &idx.unsqueeze(-1).expand([b, dl, d], false), false))
}

/// Logits `[b, dec_len, V]` of the twin aligned with the labels.
pub fn twin_target_logits(model: &VisionTwin, t: &BatchTensors, train: bool) -> Result<Tensor> {
    Ok(model.text.logits(&twin_target_hidden(model, t, train)?))
}

/// `text_positions` `[b, dec_len]` (indices into the text) as indices into the merged
/// sequence; padding label positions are clamped inside it (their logits are masked).
pub fn merged_positions(merged: &Merged, text_positions: &Tensor) -> Result<Tensor> {
    let (b, dl) = text_positions.size2()?;
    let width = merged.valid.size2()?.1;
    let flat = Vec::<i64>::try_from(text_positions.to_device(Device::Cpu).reshape([-1]))?;
    let moved: Vec<i64> = flat
        .chunks(dl.max(1) as usize)
        .enumerate()
        .flat_map(|(r, row)| {
            row.iter()
                .map(move |&i| merged.text_position(r, i).clamp(0, (width - 1).max(0)))
        })
        .collect();
    Ok(Tensor::from_slice(&moved).reshape([b, dl]))
}
