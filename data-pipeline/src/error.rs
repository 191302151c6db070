//! The crate's one error type: each variant carries the facts a user needs to fix the input.

use std::path::PathBuf;

/// Everything that can go wrong in edkd-data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: malformed JSON: {message}")]
    MalformedJson {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: missing field `{field}`")]
    MissingField {
        path: PathBuf,
        line: usize,
        field: String,
    },
    #[error(
        "{path}:{line}: record is over the limit of {limit} bytes (raise --max-record-bytes if it is meant to be this long)"
    )]
    RecordTooLarge {
        path: PathBuf,
        line: usize,
        limit: usize,
    },
    #[error("{path}:{line}: invalid UTF-8 ({detail}); the input must be UTF-8 text")]
    InvalidUtf8 {
        path: PathBuf,
        line: usize,
        /// Where in the line or record.
        detail: String,
    },
    #[error("{path}:{line}: field `{field}` is not a string or number")]
    FieldType {
        path: PathBuf,
        line: usize,
        field: String,
    },
    #[error("{path}:{line}: empty {what} (after templating and tokenization)")]
    EmptyText {
        path: PathBuf,
        line: usize,
        what: &'static str,
    },
    #[error(
        "{path}:{line}: {what} has {tokens} or more tokens, over the limit of {limit} (truncation policy `error`)"
    )]
    TooLong {
        path: PathBuf,
        line: usize,
        what: &'static str,
        tokens: usize,
        limit: usize,
    },
    #[error("{path}: unreadable Parquet file: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}:{line}: unreadable CSV: {message}")]
    Csv {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: unsupported input extension (expected .jsonl, .json, .parquet or .csv)")]
    UnknownFormat { path: PathBuf },
    #[error("input pattern `{pattern}` matched no files")]
    NoInput { pattern: String },
    #[error("duplicate example id `{id}` ({path}:{line})")]
    DuplicateId {
        id: String,
        path: PathBuf,
        line: usize,
    },
    #[error("no examples left for split `{split}` (all inputs empty or dropped)")]
    EmptySplit { split: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenizer has no special token `{token}` (needed as {role})")]
    MissingSpecial { token: String, role: &'static str },
    #[error("{path}: Arrow error: {message}")]
    Arrow { path: PathBuf, message: String },
    #[error("{path}: bad schema: {message}")]
    Schema { path: PathBuf, message: String },
    #[error("{path}: bad manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error(
        "shard {shard} is corrupt or changed: sha256 {actual} but the manifest says {expected}"
    )]
    ShardChecksum {
        shard: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("shard {shard} has {actual} rows but the manifest says {expected}")]
    ShardRows {
        shard: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "shard {shard} row {row} (example `{id}`): {column}[{position}] = {value}, not below the vocabulary size {vocab} (the shard is corrupt or was made with another tokenizer)"
    )]
    TokenOutOfRange {
        shard: PathBuf,
        row: usize,
        id: String,
        column: &'static str,
        position: usize,
        value: u32,
        vocab: usize,
    },
    #[error("{what} was made with tokenizer sha256 {found}, but this run expects {expected}")]
    TokenizerMismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("split `{split}` not in manifest (have: {available})")]
    UnknownSplit { split: String, available: String },
    #[error("cursor does not fit this reader: {message}")]
    Cursor { message: String },
    #[error("bad configuration: {message}")]
    Config { message: String },
    #[error("teacher cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("example `{id}`: image: {problem}")]
    Image {
        id: String,
        problem: Box<ImageProblem>,
    },
    #[error("{path}:{line}: example `{id}`, image field `{field}`: {problem}")]
    ImageField {
        path: PathBuf,
        line: usize,
        id: String,
        field: String,
        problem: Box<ImageProblem>,
    },
}

/// What is wrong with one example's image (inside [`Error::Image`] or [`Error::ImageField`]).
#[derive(Debug, thiserror::Error)]
pub enum ImageProblem {
    #[error("no bytes (an empty image)")]
    Empty,
    #[error("not a PNG or JPEG image (first bytes {head})")]
    NotAnImage { head: String },
    #[error("{format} images are not supported (PNG or JPEG only)")]
    Unsupported { format: &'static str },
    #[error("{width}x{height} px is over the limit of {limit} px per side")]
    TooLarge { width: u32, height: u32, limit: u32 },
    #[error("{format} does not decode: {message}")]
    Corrupt {
        format: &'static str,
        message: String,
    },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{bytes} bytes, over the record limit of {limit} bytes (--max-record-bytes)")]
    TooManyBytes { bytes: u64, limit: usize },
    #[error("`bytes` is not valid base64: {message}")]
    Base64 { message: String },
    #[error("expected {expected}, found {found}")]
    Value {
        expected: &'static str,
        found: String,
    },
}

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Wraps an Arrow error with the path it concerns.
    pub fn arrow(path: impl Into<PathBuf>) -> impl FnOnce(arrow_schema::ArrowError) -> Error {
        let path = path.into();
        move |e| Error::Arrow {
            path,
            message: e.to_string(),
        }
    }
}
