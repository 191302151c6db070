//! Prometheus metrics (prefix `edkd_teacher_`) and a minimal HTTP endpoint serving them.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::error::{Error, Result};

const PREFIX: &str = "edkd_teacher";

/// The server's metrics, in their own registry (several servers can share a process).
pub struct Metrics {
    pub registry: Registry,
    /// Requests waiting for the batcher (a cancelled one stops counting at once).
    pub queue_depth: IntGauge,
    /// Scoring requests received and not yet answered or cancelled.
    pub in_flight: IntGauge,
    /// Padded tokens per forward pass.
    pub batch_tokens: Histogram,
    /// Target tokens scored; its rate is scored tokens/s.
    pub scored_tokens: IntCounter,
    /// Images read by a vision-language teacher in passes that succeeded.
    pub scored_images: IntCounter,
    /// Seconds per forward pass (model + top-k).
    pub forward_seconds: Histogram,
    /// End-to-end seconds per Score request (or per ScoreStream message).
    pub request_seconds: Histogram,
    /// Finished requests.
    pub requests: IntCounter,
    /// Failed requests by gRPC code.
    pub errors: IntCounterVec,
    /// Jobs dropped because their caller went away before scoring.
    pub cancelled: IntCounter,
    /// Connections closed on accept because the server held its maximum.
    pub connections_refused: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new_custom(Some(PREFIX.into()), None).map_err(prom)?;
        let latency_buckets = prometheus::exponential_buckets(0.001, 2.0, 16).map_err(prom)?;
        let token_buckets = prometheus::exponential_buckets(16.0, 2.0, 14).map_err(prom)?;
        let m = Self {
            queue_depth: IntGauge::new("queue_depth", "Requests waiting for the batcher")
                .map_err(prom)?,
            in_flight: IntGauge::new("requests_in_flight", "Scoring requests being handled")
                .map_err(prom)?,
            batch_tokens: Histogram::with_opts(
                HistogramOpts::new("batch_tokens", "Padded tokens per forward pass")
                    .buckets(token_buckets),
            )
            .map_err(prom)?,
            scored_tokens: IntCounter::new("scored_tokens_total", "Target tokens scored")
                .map_err(prom)?,
            scored_images: IntCounter::new(
                "scored_images_total",
                "Images read by a vision-language teacher",
            )
            .map_err(prom)?,
            forward_seconds: Histogram::with_opts(
                HistogramOpts::new("forward_seconds", "Seconds per forward pass")
                    .buckets(latency_buckets.clone()),
            )
            .map_err(prom)?,
            request_seconds: Histogram::with_opts(
                HistogramOpts::new("request_seconds", "Seconds per scoring request")
                    .buckets(latency_buckets),
            )
            .map_err(prom)?,
            requests: IntCounter::new("requests_total", "Finished scoring requests")
                .map_err(prom)?,
            errors: IntCounterVec::new(
                Opts::new("errors_total", "Failed requests by gRPC code"),
                &["code"],
            )
            .map_err(prom)?,
            cancelled: IntCounter::new("cancelled_total", "Requests cancelled before scoring")
                .map_err(prom)?,
            connections_refused: IntCounter::new(
                "connections_refused_total",
                "Connections closed on accept: the server held its maximum",
            )
            .map_err(prom)?,
            registry,
        };
        m.registry
            .register(Box::new(m.queue_depth.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.in_flight.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.batch_tokens.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.scored_tokens.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.scored_images.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.forward_seconds.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.request_seconds.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.requests.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.errors.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.cancelled.clone()))
            .map_err(prom)?;
        m.registry
            .register(Box::new(m.connections_refused.clone()))
            .map_err(prom)?;
        Ok(m)
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn prom(e: prometheus::Error) -> Error {
    Error::Config(format!("metrics: {e}"))
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves. With `token`, a scrape
/// must send `authorization: Bearer <token>` (Prometheus: `authorization.credentials_file`)
/// and is answered 401 otherwise: the counters tell who uses the teacher and how much.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let expected: Option<Arc<[u8]>> = token.map(|t| format!("Bearer {t}").into_bytes().into());
    let app = axum::Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let metrics = metrics.clone();
            let expected = expected.clone();
            async move {
                if let Some(expected) = expected {
                    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
                    if !given.is_some_and(|g| crate::server::same_bytes(g, &expected)) {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            "missing or invalid bearer token\n",
                        )
                            .into_response();
                    }
                }
                metrics.render().into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::io(format!("metrics server on {addr:?}")))
}
