//! The crate's one error type, and its one mapping to `tonic::Status`.

use tonic::{Code, Status};

/// Everything that can go wrong in the teacher service and its client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad request input: names the field and the limit it broke.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// Examples of a dataset split that cannot be scored: the teacher predicts target token
    /// t from the tokens before it, so an example needs at least one input token.
    #[error(
        "split `{split}`: {count} example(s) with an empty input, first {}: the teacher predicts \
         target token t from the tokens before it, so prompt_ids must hold at least one token; \
         nothing was scored: give these examples an input (or drop them) and prepare again",
        quoted(.ids)
    )]
    EmptyInput {
        split: String,
        count: usize,
        /// The first few ids.
        ids: Vec<String>,
    },
    /// A failure while scoring some examples, named by id.
    #[error("{examples}: {source}")]
    Examples {
        examples: String,
        source: Box<Error>,
    },
    /// The batcher's queue is full; the client should back off and retry.
    #[error("server queue is full ({capacity} requests waiting); retry later")]
    QueueFull { capacity: usize },
    /// The batcher has stopped (server shutting down).
    #[error("server is shutting down")]
    ShuttingDown,
    /// The model failed on a batch (a libtorch error or a caught panic).
    #[error("model failed: {0}")]
    Model(String),
    /// Loading the teacher.
    #[error(transparent)]
    Load(#[from] edkd_models::Error),
    /// Reading or writing datasets and caches.
    #[error(transparent)]
    Data(#[from] edkd_data::Error),
    /// A gRPC call failed (client side).
    #[error("rpc failed: {}: {}", .0.code(), .0.message())]
    Rpc(Box<Status>),
    /// Connecting, binding or TLS setup.
    #[error("transport: {0}")]
    Transport(Box<tonic::transport::Error>),
    /// A response that does not match its request or the wire format.
    #[error("malformed response: {0}")]
    Wire(String),
    /// Files and sockets.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Server or client configuration.
    #[error("config: {0}")]
    Config(String),
    /// A TLS certificate or key file that cannot be used (names the file).
    #[error("TLS: {0}")]
    Tls(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn quoted(ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } | Self::EmptyInput { .. } => Code::InvalidArgument,
            Self::Examples { source, .. } => source.code(),
            Self::QueueFull { .. } => Code::ResourceExhausted,
            Self::ShuttingDown => Code::Unavailable,
            Self::Rpc(status) => status.code(),
            Self::Transport(_) => Code::Unavailable,
            Self::Model(_)
            | Self::Load(_)
            | Self::Data(_)
            | Self::Wire(_)
            | Self::Io { .. }
            | Self::Config(_)
            | Self::Tls(_) => Code::Internal,
        }
    }
}

/// The only place server errors become gRPC statuses.
impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Rpc(status) => *status,
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Self::Rpc(Box::new(status))
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Self {
        Self::Transport(Box::new(error))
    }
}
