//! The crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] edkd_models::Error),
    #[error(transparent)]
    Data(#[from] edkd_data::Error),
    #[error(transparent)]
    Trainer(#[from] edkd_trainer::Error),
    #[error("teacher service: {0}")]
    Teacher(#[from] edkd_teacher::Error),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
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

impl From<edkd_trainer::config::ConfigError> for Error {
    fn from(e: edkd_trainer::config::ConfigError) -> Self {
        Error::Trainer(e.into())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
