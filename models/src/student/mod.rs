//! The encoder-decoder student: config and presets, the model, its folder format and the
//! import of checkpoints in the paper's reference layout.

pub mod config;
pub mod convert;
pub mod init;
pub mod model;

use std::path::{Path, PathBuf};

use tch::{Device, nn::VarStore};

pub use config::{FfnKind, MODEL_TYPE, PRESETS, StudentConfig, twin_config};
pub use model::{DecoderCache, Encoded, Student};

use crate::error::{Error, Result, read_json};
use crate::teacher::{CausalLm, LoadOptions};

/// A student with its variables (and tokenizer, when its folder has one).
pub struct StudentModel {
    pub vs: VarStore,
    pub model: Student,
    pub tokenizer: Option<crate::Tokenizer>,
}

impl StudentModel {
    /// A freshly initialised student (seeded through libtorch's global RNG).
    pub fn init(config: &StudentConfig, device: Device, seed: i64) -> Result<Self> {
        config.validate()?;
        text_only(config, Path::new("student config"))?;
        let vs = VarStore::new(device);
        let model = crate::rng::seeded(seed, || Student::new(&vs.root(), config));
        Ok(Self {
            vs,
            model,
            tokenizer: None,
        })
    }

    /// Loads a student folder (`config.json`, `model.safetensors`, optional `tokenizer.json`).
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        crate::teacher::check_dtype(opts.kind, opts.device)?;
        let config = read_config(dir)?;
        text_only(&config, &dir.join("config.json"))?;
        let mut vs = VarStore::new(Device::Cpu);
        let model = crate::rng::exclusive(|| Student::new(&vs.root(), &config));
        crate::weights::load_folder(&mut vs, dir)?;
        vs.set_kind(opts.kind);
        vs.set_device(opts.device);
        let tok = dir.join("tokenizer.json");
        let tokenizer = if tok.exists() {
            Some(crate::Tokenizer::from_file(&tok)?)
        } else {
            None
        };
        Ok(Self {
            vs,
            model,
            tokenizer,
        })
    }

    /// Writes `config.json` and `model.safetensors` (and copies `tokenizer`, if given) into `dir`.
    pub fn save(&self, dir: &Path, tokenizer: Option<&Path>) -> Result<()> {
        save_folder(
            dir,
            &serde_json::to_value(&self.model.config).expect("config serialises"),
            &self.vs,
            tokenizer,
        )
    }

    pub fn num_parameters(&self) -> i64 {
        CausalLm::num_parameters(&self.vs)
    }
}

/// Reads and validates a student folder's `config.json`, naming the file in errors.
pub fn read_config(dir: &Path) -> Result<StudentConfig> {
    let path = dir.join("config.json");
    let config: StudentConfig = read_json(&path)?;
    config.validate().map_err(|e| match e {
        Error::Config { field, msg, .. } => Error::Config {
            path: path.clone(),
            field,
            msg,
        },
        other => other,
    })?;
    Ok(config)
}

/// Refuses a config with a vision section where only a text student can be built (its
/// tower and projector would be silently left out of the folder).
fn text_only(config: &StudentConfig, path: &Path) -> Result<()> {
    if config.vision.is_some() {
        return Err(Error::Config {
            path: path.to_path_buf(),
            field: "vision",
            msg: "a vision-language student: use multimodal::VisionStudentModel".into(),
        });
    }
    Ok(())
}

/// Writes a model folder: config.json, model.safetensors, optional tokenizer.json copy.
pub fn save_folder(
    dir: &Path,
    config: &serde_json::Value,
    vs: &VarStore,
    tokenizer: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(config).expect("JSON value serialises");
    std::fs::write(&cfg_path, text + "\n").map_err(Error::io(&cfg_path))?;
    crate::weights::save_varstore(vs, &dir.join(crate::weights::SINGLE_FILE))?;
    if let Some(tok) = tokenizer {
        let dst: PathBuf = dir.join("tokenizer.json");
        if tok != dst {
            std::fs::copy(tok, &dst).map_err(Error::io(tok))?;
        }
    }
    Ok(())
}

/// What kind of model a folder holds, from its config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderKind {
    Student,
    Teacher,
}

pub fn folder_kind(dir: &Path) -> Result<FolderKind> {
    if crate::gguf::is_gguf(dir) {
        return Ok(FolderKind::Teacher);
    }
    let v: serde_json::Value = read_json(&dir.join("config.json"))?;
    Ok(
        if v.get("model_type").and_then(|m| m.as_str()) == Some(MODEL_TYPE) {
            FolderKind::Student
        } else {
            FolderKind::Teacher
        },
    )
}

/// A decoder-only twin initialised at random, saved as a Hugging Face Llama folder.
pub fn init_twin(student: &StudentConfig, device: Device, seed: i64) -> (VarStore, CausalLm) {
    let vs = VarStore::new(device);
    let model = crate::rng::seeded(seed, || CausalLm::new(&vs.root(), &twin_config(student)));
    (vs, model)
}
