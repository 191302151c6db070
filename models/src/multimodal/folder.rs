//! Vision-language student folders: the text student's folder format with a `vision`
//! section in config.json and two more key prefixes in model.safetensors
//! (`vision_tower.vision_model.*`, `mm_projector.*`), plus the tower's
//! `preprocessor_config.json`. Built fresh, from a CLIP folder and a text student, or
//! loaded strictly.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use image::RgbImage;
use tch::{Device, Tensor, nn::VarStore};

use super::config::{HfClipVisionConfig, ProjectorKind, VisionConfig};
use super::embedder::{PROJECTOR_SCOPE, TOWER_SCOPE, VISION_SCOPE};
use super::student::VisionStudent;
use crate::error::{Error, Result};
use crate::student::{StudentConfig, StudentModel, read_config, save_folder};
use crate::teacher::{CausalLm, LoadOptions, check_dtype};
use crate::vision::{
    FeatureLayer, FeatureSelect, ImageProcessor, load_tower_weights, processor::PREPROCESSOR_FILE,
    set_trainable,
};
use crate::weights::{KeyPlan, load_files_planned, load_folder};

/// The vision section's choices other than the tower, which comes from a folder.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionChoices {
    pub image_token_id: i64,
    pub feature_layer: FeatureLayer,
    pub feature_select: FeatureSelect,
    pub projector: ProjectorKind,
    pub train_tower: bool,
    pub train_text: bool,
}

impl VisionChoices {
    /// LLaVA's choices ([`VisionConfig::llava`]).
    pub fn llava(image_token_id: i64) -> Self {
        let c = VisionConfig::llava(HfClipVisionConfig::default(), image_token_id);
        Self {
            image_token_id,
            feature_layer: c.feature_layer,
            feature_select: c.feature_select,
            projector: c.projector,
            train_tower: c.train_tower,
            train_text: c.train_text,
        }
    }

    pub fn with_tower(&self, tower: HfClipVisionConfig) -> VisionConfig {
        VisionConfig {
            tower,
            feature_layer: self.feature_layer,
            feature_select: self.feature_select,
            image_token_id: self.image_token_id,
            projector: self.projector,
            train_tower: self.train_tower,
            train_text: self.train_text,
        }
    }
}

/// Where the text student of [`VisionStudentModel::from_parts`] comes from.
#[derive(Debug, Clone, Copy)]
pub enum TextSource<'a> {
    /// Freshly initialised from this config (its `vision` section is replaced).
    Fresh(&'a StudentConfig),
    /// A text student folder, loaded strictly (its tokenizer comes along).
    Folder(&'a Path),
}

/// Sets `requires_grad` by group as `vision` says: the tower per `train_tower`, the
/// projector always, every other top-level scope (the text model) per `train_text`.
pub fn apply_trainable(vs: &VarStore, vision: &VisionConfig) {
    set_trainable(vs, VISION_SCOPE, vision.train_tower);
    set_trainable(vs, PROJECTOR_SCOPE, true);
    let text_scopes: BTreeSet<String> = vs
        .variables()
        .into_keys()
        .filter_map(|k| k.split_once('.').map(|(scope, _)| scope.to_string()))
        .filter(|s| s != VISION_SCOPE && s != PROJECTOR_SCOPE)
        .collect();
    for scope in text_scopes {
        set_trainable(vs, &scope, vision.train_text);
    }
}

/// The image processor of a folder, and its file when it has one (copied on save).
pub(crate) fn processor_of(
    dir: &Path,
    image_size: i64,
) -> Result<(ImageProcessor, Option<PathBuf>)> {
    let file = dir.join(PREPROCESSOR_FILE);
    let processor = ImageProcessor::from_folder(dir, image_size as u32)?;
    Ok((processor, file.is_file().then_some(file)))
}

/// Copies `file` into `dir` under its own name unless it is already there.
pub(crate) fn copy_into(file: Option<&Path>, dir: &Path) -> Result<()> {
    if let Some(src) = file {
        let dst = dir.join(src.file_name().expect("a file name"));
        if src != dst {
            std::fs::copy(src, &dst).map_err(Error::io(src))?;
        }
    }
    Ok(())
}

/// Copies every variable of `from` whose name passes `keep` into the same-named variable
/// of `to`; names or shapes that do not meet are errors naming the key.
pub(crate) fn copy_variables(
    from: &VarStore,
    to: &VarStore,
    keep: impl Fn(&str) -> bool,
    origin: &Path,
) -> Result<usize> {
    let mut dst: HashMap<String, Tensor> = to.variables();
    let mut copied = 0;
    tch::no_grad(|| -> Result<()> {
        for (name, src) in from.variables().into_iter().filter(|(n, _)| keep(n)) {
            let Some(var) = dst.get_mut(&name) else {
                return Err(Error::UnusedTensors {
                    path: origin.to_path_buf(),
                    keys: vec![name],
                });
            };
            if var.size() != src.size() {
                return Err(Error::Shape {
                    path: origin.to_path_buf(),
                    key: name,
                    found: src.size(),
                    expected: var.size(),
                });
            }
            var.f_copy_(&src.f_to_device(var.device())?.f_to_kind(var.kind())?)?;
            copied += 1;
        }
        Ok(())
    })?;
    Ok(copied)
}

/// Whether a variable belongs to the tower or the projector.
pub(crate) fn is_vision_key(name: &str) -> bool {
    name.starts_with(&format!("{VISION_SCOPE}."))
        || name.starts_with(&format!("{PROJECTOR_SCOPE}."))
}

/// A vision-language student with its variables, image processor and tokenizer.
pub struct VisionStudentModel {
    pub vs: VarStore,
    pub model: VisionStudent,
    pub processor: ImageProcessor,
    pub tokenizer: Option<crate::Tokenizer>,
    /// The `preprocessor_config.json` the processor was read from, copied on save.
    pub(crate) processor_file: Option<PathBuf>,
}

impl VisionStudentModel {
    /// Everything freshly initialised (seeded through libtorch's global RNG); the
    /// processor is CLIP's default at the tower's size.
    pub fn init(config: &StudentConfig, device: Device, seed: i64) -> Result<Self> {
        config.validate()?;
        let vs = VarStore::new(device);
        let model = crate::rng::seeded(seed, || VisionStudent::new(&vs.root(), config))?;
        let size = model.embedder.tower_config().image_size as u32;
        Self::finish(vs, model, ImageProcessor::clip_default(size), None, None)
    }

    /// A CLIP tower from `tower_dir` (a `CLIPVisionModel` or `CLIPModel` folder, loaded
    /// strictly), a fresh projector (seeded), and the text student of `text`. On the CPU in
    /// f32; move it with `vs.set_device`.
    pub fn from_parts(
        tower_dir: &Path,
        text: TextSource<'_>,
        choices: &VisionChoices,
        seed: i64,
    ) -> Result<Self> {
        let (tower, checkpoint) = HfClipVisionConfig::from_folder(tower_dir)?;
        let loaded = match text {
            TextSource::Fresh(_) => None,
            TextSource::Folder(dir) => Some(StudentModel::load(dir, LoadOptions::default())?),
        };
        let mut config = match (&loaded, text) {
            (Some(s), _) => s.model.config.clone(),
            (None, TextSource::Fresh(c)) => c.clone(),
            (None, TextSource::Folder(_)) => unreachable!("a folder is loaded above"),
        };
        config.vision = Some(choices.with_tower(tower));
        config.validate()?;
        let mut vs = VarStore::new(Device::Cpu);
        let model = crate::rng::seeded(seed, || VisionStudent::new(&vs.root(), &config))?;
        let mut tokenizer = None;
        if let (Some(s), TextSource::Folder(dir)) = (loaded, text) {
            let copied = copy_variables(&s.vs, &vs, |_| true, dir)?;
            let text_vars = vs.variables().keys().filter(|k| !is_vision_key(k)).count();
            debug_assert_eq!(
                copied, text_vars,
                "the same text config builds the same variables"
            );
            tokenizer = s.tokenizer;
        }
        load_tower_weights(&mut vs, TOWER_SCOPE, tower_dir, checkpoint)?;
        let (processor, file) = processor_of(tower_dir, model.embedder.tower_config().image_size)?;
        Self::finish(vs, model, processor, file, tokenizer)
    }

    /// Loads a folder written by [`VisionStudentModel::save`], strictly: every key of the
    /// tower, projector and text student present, nothing else.
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        check_dtype(opts.kind, opts.device)?;
        let config = read_config(dir)?;
        let mut vs = VarStore::new(Device::Cpu);
        let model = crate::rng::exclusive(|| VisionStudent::new(&vs.root(), &config)).map_err(
            |e| match e {
                Error::Config { field, msg, .. } => Error::Config {
                    path: dir.join("config.json"),
                    field,
                    msg,
                },
                other => other,
            },
        )?;
        load_folder(&mut vs, dir)?;
        vs.set_kind(opts.kind);
        vs.set_device(opts.device);
        let (processor, file) = processor_of(dir, model.embedder.tower_config().image_size)?;
        let tok = dir.join("tokenizer.json");
        let tokenizer = if tok.exists() {
            Some(crate::Tokenizer::from_file(&tok)?)
        } else {
            None
        };
        Self::finish(vs, model, processor, file, tokenizer)
    }

    fn finish(
        vs: VarStore,
        model: VisionStudent,
        processor: ImageProcessor,
        processor_file: Option<PathBuf>,
        tokenizer: Option<crate::Tokenizer>,
    ) -> Result<Self> {
        apply_trainable(&vs, &model.embedder.config);
        Ok(Self {
            vs,
            model,
            processor,
            tokenizer,
            processor_file,
        })
    }

    /// Chooses what trains (the projector always does): records the choice in the config
    /// that is saved, and sets `requires_grad` by group ([`apply_trainable`]).
    pub fn set_trainable(&mut self, train_tower: bool, train_text: bool) {
        for v in [
            Some(&mut self.model.embedder.config),
            self.model.text.config.vision.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            v.train_tower = train_tower;
            v.train_text = train_text;
        }
        apply_trainable(&self.vs, &self.model.embedder.config);
    }

    /// Loads a trained projector (LLaVA's stage-1 `mm_projector` adapter, as safetensors
    /// with keys `mm_projector.0.weight`, ...), strictly.
    pub fn load_projector(&mut self, file: &Path) -> Result<()> {
        let to = format!("{PROJECTOR_SCOPE}.");
        let plan = KeyPlan {
            from: &to,
            to: &to,
            skip: &|_| false,
        };
        load_files_planned(&mut self.vs, &[file.to_path_buf()], file, &plan)
    }

    /// Writes `config.json` (with the `vision` section), `model.safetensors`, the
    /// processor's `preprocessor_config.json` when it came from a file, and `tokenizer`.
    pub fn save(&self, dir: &Path, tokenizer: Option<&Path>) -> Result<()> {
        let config = serde_json::to_value(self.model.config()).expect("config serialises");
        save_folder(dir, &config, &self.vs, tokenizer)?;
        copy_into(self.processor_file.as_deref(), dir)
    }

    /// Processed pixels `[n, 3, s, s]` of decoded images, on the model's device.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        Ok(self
            .processor
            .batch(images)?
            .to_device(self.model.text.device()))
    }

    /// All parameters: tower, projector and text student.
    pub fn num_parameters(&self) -> i64 {
        CausalLm::num_parameters(&self.vs)
    }
}
