//! The one error type of edkd-models: every variant names the file, key or field at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: missing ({what})", path.display())]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: unsupported architecture {found:?}; supported: {supported}", path.display())]
    UnsupportedArchitecture {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("{}: invalid config field `{field}`: {msg}", path.display())]
    Config {
        path: PathBuf,
        field: &'static str,
        msg: String,
    },
    #[error("{}: corrupt safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error("{}: missing tensors: {}", path.display(), keys.join(", "))]
    MissingTensors { path: PathBuf, keys: Vec<String> },
    #[error("{}: unused tensors (not part of the model): {}", path.display(), keys.join(", "))]
    UnusedTensors { path: PathBuf, keys: Vec<String> },
    #[error("{}: tensor `{key}` has shape {found:?}, expected {expected:?}", path.display())]
    Shape {
        path: PathBuf,
        key: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error("{}: tensor `{key}` has unsupported dtype {dtype}", path.display())]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{}: tokenizer: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{}: PyTorch checkpoint: {msg}", path.display())]
    Pickle { path: PathBuf, msg: String },
    #[error("{}: GGUF: {msg}", path.display())]
    Gguf { path: PathBuf, msg: String },
    #[error(
        "{}: GGUF tensor `{tensor}` has type {ggml_type}, which edkd cannot dequantize; supported: {supported}",
        path.display()
    )]
    GgufTensorType {
        path: PathBuf,
        tensor: String,
        ggml_type: String,
        supported: String,
    },
    #[error("{}: image: {msg}", path.display())]
    Image { path: PathBuf, msg: String },
    #[error("invalid input: {0}")]
    Input(String),
    #[error("{field} {value:?}: expected {expected}")]
    Value {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("unknown preset `{name}`; available: {available}")]
    UnknownPreset { name: String, available: String },
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Reads and parses a JSON file, naming the file in both failure modes.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
                what: "required file",
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_slice(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}
