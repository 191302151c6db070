//! The vision-language twin's folder. It cannot be a plain Hugging Face Llama folder any
//! more (the tower and projector are part of it), so its config.json is edkd's own:
//!
//! ```json
//! { "model_type": "edkd_vision_decoder",
//!   "text_config": { ...the Llama config.json a text twin would have... },
//!   "vision": { ...the student's vision section... } }
//! ```
//!
//! and model.safetensors holds the Llama keys (`model.*`, `lm_head.*`) beside
//! `vision_tower.vision_model.*` and `mm_projector.*`, LLaVA's layout less its wrappers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, nn::VarStore};

use super::config::VisionConfig;
use super::folder::{
    VisionStudentModel, apply_trainable, copy_into, copy_variables, is_vision_key, processor_of,
};
use super::twin::VisionTwin;
use crate::error::{Error, Result, read_json};
use crate::student::{StudentConfig, save_folder, twin_config};
use crate::teacher::{CausalLm, CausalLmConfig, HfConfig, LoadOptions, check_dtype};
use crate::vision::ImageProcessor;
use crate::weights::load_folder;

/// `model_type` of a vision-language twin folder.
pub const TWIN_MODEL_TYPE: &str = "edkd_vision_decoder";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TwinFolderConfig {
    model_type: String,
    /// The text model's Hugging Face config.
    text_config: serde_json::Value,
    vision: VisionConfig,
}

/// A vision-language twin with its variables, image processor and tokenizer.
pub struct VisionTwinModel {
    pub vs: VarStore,
    pub model: VisionTwin,
    pub processor: ImageProcessor,
    pub tokenizer: Option<crate::Tokenizer>,
    processor_file: Option<PathBuf>,
}

impl VisionTwinModel {
    /// The decoder-only twin of a vision-language student config, freshly initialised:
    /// the same vision section, the text model of [`twin_config`].
    pub fn init(student: &StudentConfig, device: Device, seed: i64) -> Result<Self> {
        student.validate()?;
        let vision = student.vision.as_ref().ok_or_else(|| Error::Config {
            path: "student config".into(),
            field: "vision",
            msg: "absent: a vision-language twin needs the student's vision section".into(),
        })?;
        let vs = VarStore::new(device);
        let model = crate::rng::seeded(seed, || {
            VisionTwin::new(&vs.root(), &twin_config(student), vision)
        })?;
        let size = model.embedder.tower_config().image_size as u32;
        Ok(Self::finish(
            vs,
            model,
            ImageProcessor::clip_default(size),
            None,
        ))
    }

    /// The twin of `student` with the student's very tower and projector weights (and its
    /// image processor): the two then differ only in their text models.
    pub fn init_from(student: &VisionStudentModel, seed: i64) -> Result<Self> {
        let config = student.model.config();
        let mut twin = Self::init(config, student.model.text.device(), seed)?;
        copy_variables(
            &student.vs,
            &twin.vs,
            is_vision_key,
            Path::new("the student"),
        )?;
        twin.processor = student.processor.clone();
        twin.processor_file = student.processor_file.clone();
        twin.tokenizer = student.tokenizer.clone();
        Ok(twin)
    }

    fn finish(
        vs: VarStore,
        model: VisionTwin,
        processor: ImageProcessor,
        processor_file: Option<PathBuf>,
    ) -> Self {
        apply_trainable(&vs, &model.embedder.config);
        Self {
            vs,
            model,
            processor,
            tokenizer: None,
            processor_file,
        }
    }

    /// Chooses what trains (the projector always does): records the choice in the config
    /// that is saved, and sets `requires_grad` by group ([`apply_trainable`]).
    pub fn set_trainable(&mut self, train_tower: bool, train_text: bool) {
        let v = &mut self.model.embedder.config;
        v.train_tower = train_tower;
        v.train_text = train_text;
        apply_trainable(&self.vs, v);
    }

    /// Writes the folder described in the module docs (and copies `tokenizer`).
    pub fn save(&self, dir: &Path, tokenizer: Option<&Path>) -> Result<()> {
        let config = TwinFolderConfig {
            model_type: TWIN_MODEL_TYPE.into(),
            text_config: self.model.text.config.to_hf_json(),
            vision: self.model.embedder.config.clone(),
        };
        let value = serde_json::to_value(&config).expect("config serialises");
        save_folder(dir, &value, &self.vs, tokenizer)?;
        copy_into(self.processor_file.as_deref(), dir)
    }

    /// Loads a folder written by [`VisionTwinModel::save`], strictly.
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        check_dtype(opts.kind, opts.device)?;
        let path = dir.join("config.json");
        let config: TwinFolderConfig = read_json(&path)?;
        if config.model_type != TWIN_MODEL_TYPE {
            return Err(Error::Config {
                path,
                field: "model_type",
                msg: format!("{:?} is not {TWIN_MODEL_TYPE:?}", config.model_type),
            });
        }
        let raw: HfConfig =
            serde_json::from_value(config.text_config).map_err(|source| Error::Json {
                path: path.clone(),
                source,
            })?;
        let text = CausalLmConfig::resolve(&raw, &path)?;
        let pad = text.pad_token_id.unwrap_or(-1);
        config.vision.validate(text.vocab_size, pad, &path)?;
        let mut vs = VarStore::new(Device::Cpu);
        let model = crate::rng::exclusive(|| VisionTwin::new(&vs.root(), &text, &config.vision))?;
        load_folder(&mut vs, dir)?;
        vs.set_kind(opts.kind);
        vs.set_device(opts.device);
        let (processor, file) = processor_of(dir, model.embedder.tower_config().image_size)?;
        let mut twin = Self::finish(vs, model, processor, file);
        let tok = dir.join("tokenizer.json");
        if tok.exists() {
            twin.tokenizer = Some(crate::Tokenizer::from_file(&tok)?);
        }
        Ok(twin)
    }

    /// All parameters: tower, projector and text model.
    pub fn num_parameters(&self) -> i64 {
        CausalLm::num_parameters(&self.vs)
    }
}
