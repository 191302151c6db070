//! What the service can serve: a text teacher (any decoder-only folder or GGUF file edkd
//! loads), or a vision-language decoder-only teacher (an `edkd_vision_decoder` folder: a
//! CLIP tower and projector in front of a Llama-shaped text model), told apart by the
//! folder's `config.json`.

use std::path::{Path, PathBuf};

use edkd_models::multimodal::{TWIN_MODEL_TYPE, VisionTwinModel};
use edkd_models::{CausalLm, LoadOptions, Teacher, Tokenizer};

use crate::error::{Error, Result};

/// Images one sequence may carry: the twin splices one image into each row
/// ([`edkd_models::multimodal::ImageSlots`] refuses a second placeholder).
pub const MAX_IMAGES_PER_SEQUENCE: usize = 1;

/// A loaded teacher.
pub enum ServedTeacher {
    Text(Box<Teacher>),
    Vision {
        twin: Box<VisionTwinModel>,
        /// The folder it was loaded from (names the model in `Info`).
        dir: PathBuf,
    },
}

/// How a vision-language teacher reads images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSpec {
    /// The placeholder token each image replaces.
    pub image_token_id: u32,
    /// Positions one image takes in the sequence (its patch embeddings).
    pub tokens_per_image: usize,
}

impl ImageSpec {
    /// Positions `images` images add beyond their placeholders.
    pub fn extra_positions(&self, images: usize) -> usize {
        images * self.tokens_per_image.saturating_sub(1)
    }
}

impl From<Teacher> for ServedTeacher {
    fn from(teacher: Teacher) -> Self {
        Self::Text(Box::new(teacher))
    }
}

/// `model_type` of a folder's config.json, if it has one that says so.
fn folder_model_type(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("config.json");
    if !dir.is_dir() || !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(&path).map_err(Error::io(format!("reading {}", path.display())))?;
    // Malformed JSON is left to the loader, which names the problem in its own words.
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    Ok(value
        .get("model_type")
        .and_then(|v| v.as_str())
        .map(str::to_owned))
}

impl ServedTeacher {
    /// Loads `dir`: an `edkd_vision_decoder` folder as a vision-language teacher, anything
    /// else as [`Teacher::load`] does (a Hugging Face folder or a GGUF file).
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        if folder_model_type(dir)?.as_deref() == Some(TWIN_MODEL_TYPE) {
            let mut twin = VisionTwinModel::load(dir, opts)?;
            // Serving only: no variable needs a gradient.
            twin.vs.freeze();
            return Ok(Self::Vision {
                twin: Box::new(twin),
                dir: dir.to_path_buf(),
            });
        }
        Ok(Self::Text(Box::new(Teacher::load(dir, opts)?)))
    }

    /// The decoder-only language model that produces the logits.
    pub fn lm(&self) -> &CausalLm {
        match self {
            Self::Text(t) => &t.model,
            Self::Vision { twin, .. } => &twin.model.text,
        }
    }

    pub fn dir(&self) -> &Path {
        match self {
            Self::Text(t) => &t.dir,
            Self::Vision { dir, .. } => dir,
        }
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        match self {
            Self::Text(t) => t.tokenizer.as_ref(),
            Self::Vision { twin, .. } => twin.tokenizer.as_ref(),
        }
    }

    /// The vision-language model, when this teacher reads images.
    pub fn vision(&self) -> Option<&VisionTwinModel> {
        match self {
            Self::Text(_) => None,
            Self::Vision { twin, .. } => Some(twin),
        }
    }

    /// How the teacher reads images; `None` for a text teacher.
    pub fn image_spec(&self) -> Option<ImageSpec> {
        self.vision().map(|twin| {
            let embedder = &twin.model.embedder;
            ImageSpec {
                image_token_id: embedder.config.image_token_id as u32,
                tokens_per_image: embedder.tokens_per_image.max(1) as usize,
            }
        })
    }
}
