//! What the gRPC server is started with: addresses, request limits, TLS and token, and the
//! connection limits (see SECURITY.md for what each defends against).

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Error, Result};

/// Bytes of the gRPC message prefix (flag + length) counted against the in-flight budget.
const GRPC_PREFIX_BYTES: usize = 5;

/// Default [`ServerConfig::max_image_bytes`]: a large photo as JPEG, half the default
/// request message.
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 8 << 20;

/// PEM-encoded certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Everything `serve` needs besides the model.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// gRPC address; loopback by default.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address; none disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// Name reported by `Info` (defaults to the model folder's name).
    pub model_id: Option<String>,
    pub max_top_k: usize,
    /// Token budget per request and per forward pass.
    pub max_request_tokens: usize,
    pub max_sequences: usize,
    pub queue_capacity: usize,
    /// How long a batch waits for more requests.
    pub max_wait: Duration,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// Largest encoded image a sequence may carry (vision-language teachers), in bytes.
    pub max_image_bytes: usize,
    pub tls: Option<TlsPem>,
    /// Required bearer token on every RPC (and on `/metrics`).
    pub auth_token: Option<String>,
    /// Most connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Concurrent calls (HTTP/2 streams) per connection.
    pub max_streams_per_connection: u32,
    /// Bytes of request messages being received at once, over all connections.
    pub max_inflight_request_bytes: usize,
    /// A connection must send its first bytes (HTTP/2 preface, TLS hello) within this; also
    /// the TLS handshake's deadline.
    pub handshake_timeout: Duration,
    /// A connection with no call in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 keepalive: a ping after this much silence...
    pub keepalive_interval: Duration,
    /// ...must be answered within this, or the connection is closed.
    pub keepalive_timeout: Duration,
    /// libtorch intra-op threads of the forward passes (set on the batcher thread only, so
    /// a trainer in the same process keeps its own count); 0 keeps the process-wide count.
    pub threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: None,
            model_id: None,
            max_top_k: 256,
            max_request_tokens: 16384,
            max_sequences: 1024,
            queue_capacity: 256,
            max_wait: Duration::from_millis(2),
            max_request_bytes: 16 << 20,
            max_response_bytes: 64 << 20,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            tls: None,
            auth_token: None,
            max_connections: 256,
            max_streams_per_connection: 32,
            max_inflight_request_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            threads: 0,
        }
    }
}

impl ServerConfig {
    /// Checks the limits that must be positive and consistent.
    pub fn check(&self) -> Result<()> {
        let positive = [
            ("max_top_k", self.max_top_k),
            ("max_request_tokens", self.max_request_tokens),
            ("max_sequences", self.max_sequences),
            ("max_image_bytes", self.max_image_bytes),
            ("queue_capacity", self.queue_capacity),
            ("max_connections", self.max_connections),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection as usize,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{name} must be >= 1")));
        }
        let timeouts = [
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, v)| v.is_zero()) {
            return Err(Error::Config(format!("{name} must be > 0")));
        }
        if self.max_inflight_request_bytes < self.max_request_bytes + GRPC_PREFIX_BYTES {
            return Err(Error::Config(format!(
                "max_inflight_request_bytes {} must hold one largest request ({} + {GRPC_PREFIX_BYTES} bytes)",
                self.max_inflight_request_bytes, self.max_request_bytes
            )));
        }
        Ok(())
    }
}
