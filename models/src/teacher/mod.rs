//! Decoder-only teachers (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3, OLMo 2, Granite,
//! SmolLM3) loaded from Hugging Face checkpoint folders, or from GGUF files (llama, qwen2).

pub mod config;
mod family;
mod hf_json;
mod layer;
pub mod model;
pub mod rope_params;

use std::path::{Path, PathBuf};

use tch::{Device, Kind, nn::VarStore};

pub use config::{
    CausalLmConfig, EmbedScale, Family, Features, HfConfig, LayerKind, LayerRope, NormPlacement,
};
pub use model::{CausalLm, LmCache, positions_from_valid};

use crate::error::{Error, Result};

/// A teacher loaded from a folder: weights, resolved config, and its tokenizer if present.
pub struct Teacher {
    pub vs: VarStore,
    pub model: CausalLm,
    pub tokenizer: Option<crate::Tokenizer>,
    pub dir: PathBuf,
}

/// Where and in what precision to load a model.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: Device,
    pub kind: Kind,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            kind: Kind::Float,
        }
    }
}

/// Checks that `kind` is usable on `device` (fp16 matmuls on CPU are unusably slow).
pub fn check_dtype(kind: Kind, device: Device) -> Result<()> {
    let ok = match device {
        Device::Cpu => matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Double),
        _ => matches!(
            kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "dtype {kind:?} is not supported on {device:?} (CPU: f32, bf16, f64; CUDA: f32, f16, bf16, f64)"
        )))
    }
}

impl Teacher {
    /// Parameter count (tied embeddings counted once).
    pub fn num_parameters(&self) -> i64 {
        CausalLm::num_parameters(&self.vs)
    }

    /// Loads `dir` (config.json, model.safetensors or a sharded index, tokenizer.json), or
    /// a `.gguf` file (dequantized to f32, config and tokenizer rebuilt from its metadata).
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        if crate::gguf::is_gguf(dir) {
            return crate::gguf::load_teacher(dir, opts);
        }
        check_dtype(opts.kind, opts.device)?;
        let config = CausalLmConfig::from_folder(dir)?;
        let mut vs = VarStore::new(Device::Cpu);
        let model = crate::rng::exclusive(|| CausalLm::new(&vs.root(), &config));
        crate::weights::load_folder(&mut vs, dir)?;
        vs.set_kind(opts.kind);
        vs.set_device(opts.device);
        vs.freeze();
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = if tok_path.exists() {
            Some(crate::Tokenizer::from_file(&tok_path)?)
        } else {
            None
        };
        Ok(Self {
            vs,
            model,
            tokenizer,
            dir: dir.to_path_buf(),
        })
    }
}
