//! The trainer's error type: every variant names what was wrong and where.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    ConfigFile(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Model(#[from] edkd_models::Error),
    #[error(transparent)]
    Data(#[from] edkd_data::Error),
    #[error("teacher service: {0}")]
    Teacher(#[from] edkd_teacher::Error),
    #[error("teacher: {0}")]
    Source(String),
    /// Images that do not fit the model or the text (a row's image without a placeholder,
    /// images for a text model).
    #[error("images: {0}")]
    Images(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("non-finite values: {0}")]
    NonFinite(String),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// `map_err` helper for I/O on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
