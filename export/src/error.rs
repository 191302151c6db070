//! The one error type of edkd-export: each variant names the file, feature or limit.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] edkd_models::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: invalid export manifest: {msg}", path.display())]
    Manifest { path: PathBuf, msg: String },
    /// A model feature the ONNX graphs do not implement.
    #[error("ONNX export does not support {feature} ({model}); supported: {supported}")]
    Unsupported {
        model: String,
        feature: String,
        supported: &'static str,
    },
    #[error("{what} is {bytes} bytes, over the protobuf limit of {limit} bytes")]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
    /// The weights did not match what the graph builder expected.
    #[error("weights: {0}")]
    Weights(String),
    /// ONNX Runtime's shared library could not be found or loaded.
    #[error(
        "ONNX Runtime is not available: {0}. Install it with scripts/setup.sh (the onnxruntime \
         wheel ships libonnxruntime.so) or set ORT_DYLIB_PATH to the library"
    )]
    RuntimeMissing(String),
    #[error("ONNX Runtime: {context}: {msg}")]
    Ort { context: String, msg: String },
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Maps an `ort` error, saying what was being done.
    pub fn ort<R>(context: impl Into<String>) -> impl FnOnce(ort::Error<R>) -> Self {
        let context = context.into();
        move |e| Error::Ort {
            context,
            msg: e.message().to_owned(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
