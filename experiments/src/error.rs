//! The crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] edkd_models::Error),
    #[error(transparent)]
    Export(#[from] edkd_export::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{script} failed: {msg}")]
    Script { script: String, msg: String },
    #[error("measurement worker failed: {0}")]
    Worker(String),
    #[error("invalid {field}: {msg}")]
    Input { field: &'static str, msg: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
