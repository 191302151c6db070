//! edkd's teacher service: a gRPC server that scores sequences with a libtorch teacher and
//! returns compact top-k log-probs (plus tail log-mass and the gold token's log-prob), the
//! client library, and offline annotation into the teacher-logit cache.
//!
//! Request path: handler -> [`validate`] -> [`batcher`] (actor thread owning the model;
//! it decodes images) -> [`scoring`] -> packed bytes ([`wire`]). [`served`] tells a text
//! teacher from a vision-language one.

pub mod annotate;
pub mod batcher;
pub mod client;
pub mod config;
pub mod conn;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod scoring;
pub mod served;
pub mod server;
pub mod tls;
pub mod validate;
pub mod wire;

pub use annotate::{AnnotateConfig, AnnotateSummary, annotate};
pub use client::{Client, ClientConfig, Pipeline};
pub use edkd_proto::teacher::v1 as proto;
pub use error::{Error, Result};
pub use served::ServedTeacher;
pub use server::{RunningServer, ServerConfig, TlsPem, shutdown_signal, start};
