//! The crate's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: PNG encoding: {msg}", path.display())]
    Png { path: PathBuf, msg: String },
    /// plotters failed to draw (a font or backend error).
    #[error("drawing {what}: {msg}")]
    Draw { what: String, msg: String },
    #[error("invalid figure: {0}")]
    Input(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
