//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading a job spec, rendering, launching or reading a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read, written or created.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "creating", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The job spec is not valid TOML or does not match the schema (toml's message names the
    /// field and shows the line).
    #[error("job spec {path}: {message}")]
    SpecParse {
        /// Where the spec came from (a path or `<string>`).
        path: String,
        /// toml's message, naming the field.
        message: String,
    },
    /// The job spec parsed but a value is out of range or inconsistent.
    #[error("job spec field `{field}`: {message}")]
    SpecInvalid {
        /// Dotted path of the offending field, e.g. `teacher.devices[1]`.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A program the backend needs is not on PATH.
    #[error("`{program}` was not found on PATH: {hint}")]
    MissingTool {
        /// The program, e.g. `sbatch`.
        program: String,
        /// What to do instead.
        hint: String,
    },
    /// A helper program ran and failed.
    #[error("`{program}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The program, e.g. `sbatch`.
        program: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A child process could not be started.
    #[error("starting {label} (`{program}`): {source}")]
    Spawn {
        /// The child's log label, e.g. `teacher0`.
        label: String,
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A teacher replica exited or stayed unhealthy during start-up.
    #[error("teacher replica {label} at {addr} {reason}; last log lines:\n{log_tail}")]
    TeacherStartup {
        /// The replica's label, e.g. `teacher1`.
        label: String,
        /// The address it should listen on.
        addr: String,
        /// "exited with exit status: 1" or "was not SERVING after 120 s (last check: ...)".
        reason: String,
        /// Its last output lines.
        log_tail: String,
    },
    /// A JSON file of a run could not be parsed.
    #[error("parsing {path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::SpecInvalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
