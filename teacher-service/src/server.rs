//! The gRPC server: `Teacher` service handlers, health, reflection (v1 and v1alpha),
//! bearer-token auth, TLS, message size limits, connection and in-flight byte limits
//! ([`crate::conn`], [`crate::policy`]), metrics endpoint and graceful shutdown.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use edkd_proto::teacher::v1::teacher_server::{self, TeacherServer};
use edkd_proto::teacher::v1::{
    InfoRequest, InfoResponse, ScoreRequest, ScoreResponse, ScoredSequence,
};
use futures_util::Stream;
use tch::{Device, Kind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::{Interceptor, InterceptorLayer};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::batcher::{Batcher, BatcherConfig};
pub use crate::config::{ServerConfig, TlsPem};
use crate::conn::{ConnLimits, LogLimiter};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::policy::PolicyLayer;
use crate::scoring::{Scorer, SeqScores};
use crate::served::{MAX_IMAGES_PER_SEQUENCE, ServedTeacher};
use crate::validate::{ImageLimits, Limits, validate};
use crate::wire;

/// Requests of one ScoreStream being scored at once; the client's window beyond this waits
/// in HTTP/2 flow control.
const STREAM_WINDOW: usize = 64;
/// HTTP/2 flow-control windows: what a peer may send before the server has taken it in.
const CONNECTION_WINDOW_BYTES: u32 = 1 << 20;
const STREAM_WINDOW_BYTES: u32 = 1 << 20;

/// Human names for `Info`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

pub fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "f32".into(),
        Kind::BFloat16 => "bf16".into(),
        Kind::Half => "f16".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

struct Inner {
    batcher: Batcher,
    limits: Limits,
    info: InfoResponse,
    metrics: Arc<Metrics>,
    rejections: LogLimiter,
}

impl Inner {
    async fn score(&self, req: ScoreRequest) -> Result<ScoreResponse> {
        let (request_id, top_k) = (req.request_id, req.top_k);
        let valid = validate(req, &self.limits, &self.info.tokenizer_sha256)?;
        let (format, packing) = (valid.format, valid.packing);
        let scores = self.batcher.score(valid.seqs).await?;
        let vocab = self.limits.vocab_size;
        let sequences = scores
            .iter()
            .zip(valid.ids)
            .map(|(s, id)| encode(id, s, format, packing, vocab))
            .collect::<Result<_>>()?;
        Ok(ScoreResponse {
            request_id,
            top_k,
            value_format: format as i32,
            sequences,
            packing: packing.map_or(0, |p| p.code() as i32),
            vocab_size: if packing.is_some() { vocab as u32 } else { 0 },
        })
    }

    /// Scores `req` and records its latency and outcome. A failed unary call is counted
    /// in `errors_total` by the policy layer (from its trailers-only answer), so only
    /// stream messages (`count_error`) are counted here.
    async fn score_recorded(&self, req: ScoreRequest, count_error: bool) -> Result<ScoreResponse> {
        let _in_flight = InFlight::new(&self.metrics);
        let started = Instant::now();
        let result = self.score(req).await;
        self.metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.requests.inc();
        if let Err(e) = &result
            && count_error
        {
            self.count_error(e.code());
        }
        result
    }

    fn count_error(&self, code: tonic::Code) {
        let code = format!("{code:?}");
        self.metrics
            .errors
            .with_label_values(&[code.as_str()])
            .inc();
    }
}

fn encode(
    id: String,
    s: &SeqScores,
    format: edkd_proto::teacher::v1::ValueFormat,
    packing: Option<edkd_data::packing::Packing>,
    vocab: usize,
) -> Result<ScoredSequence> {
    if let Some(packing) = packing {
        let t = edkd_data::packing::TargetsRef {
            k: s.k,
            topk_ids: &s.topk_ids,
            topk_logprobs: &s.topk_logprobs,
            tail_logmass: &s.tail_logmass,
            gold_logprob: &s.gold_logprob,
        };
        return wire::encode_packed(id, &t, packing, vocab);
    }
    Ok(ScoredSequence {
        id,
        num_positions: s.tail_logmass.len() as u32,
        topk_ids: wire::encode_ids(&s.topk_ids),
        topk_logprobs: wire::encode_logprobs(&s.topk_logprobs, format),
        tail_logmass: wire::encode_tail(&s.tail_logmass, format),
        gold_logprob: wire::encode_logprobs(&s.gold_logprob, format),
        packed: Default::default(),
    })
}

/// Counts a request in `requests_in_flight` until it is answered or dropped (cancelled).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// The `edkd.teacher.v1.Teacher` service.
#[derive(Clone)]
pub struct TeacherService {
    inner: Arc<Inner>,
}

/// Aborts the scoring task when a stream goes away, so its queue slot is freed.
struct AbortOnDrop(JoinHandle<Result<ScoreResponse>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ScoreResponse, Status>> + Send>>;

#[tonic::async_trait]
impl teacher_server::Teacher for TeacherService {
    #[tracing::instrument(skip_all)]
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(self.inner.info.clone()))
    }

    #[tracing::instrument(skip_all, fields(request_id = request.get_ref().request_id, sequences = request.get_ref().sequences.len()))]
    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        let result = self.inner.score_recorded(request.into_inner(), false).await;
        result.map(Response::new).map_err(Status::from)
    }

    type ScoreStreamStream = ResponseStream;

    #[tracing::instrument(skip_all)]
    async fn score_stream(
        &self,
        request: Request<Streaming<ScoreRequest>>,
    ) -> Result<Response<Self::ScoreStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (pending_tx, mut pending_rx) = mpsc::channel::<AbortOnDrop>(STREAM_WINDOW);
        let (out_tx, out_rx) = mpsc::channel(STREAM_WINDOW);
        let inner = self.inner.clone();
        // Reader: submits every request at once (so they batch), in arrival order. A message
        // that cannot be received (over the size limit, no budget left) ends the stream with
        // its status after the answers before it.
        tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
                let failed = message.is_err();
                let task = match message {
                    Ok(req) => {
                        let inner = inner.clone();
                        tokio::spawn(async move { inner.score_recorded(req, true).await })
                    }
                    Err(status) => {
                        inner.count_error(status.code());
                        if let Some(suppressed) = inner.rejections.allow() {
                            tracing::warn!(code = ?status.code(), message = status.message(), suppressed, "ScoreStream message rejected");
                        }
                        tokio::spawn(async move { Err(Error::from(status)) })
                    }
                };
                if pending_tx.send(AbortOnDrop(task)).await.is_err() || failed {
                    break;
                }
            }
        });
        // Writer: answers in order; the first error ends the stream. A client that goes
        // away drops every pending request (freeing their queue places) at once.
        tokio::spawn(async move {
            while let Some(mut pending) = pending_rx.recv().await {
                let joined = tokio::select! {
                    joined = &mut pending.0 => joined,
                    () = out_tx.closed() => break,
                };
                let result = match joined {
                    Ok(r) => r,
                    Err(e) => Err(Error::Model(format!("scoring task failed: {e}"))),
                };
                let failed = result.is_err();
                if out_tx.send(result.map_err(Status::from)).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// Checks `authorization: Bearer <token>` on every RPC when a token is configured.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<Arc<[u8]>>,
}

impl BearerAuth {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {t}").into_bytes().into()),
        }
    }
}

/// Compares in time independent of where the first difference is.
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        match request.metadata().get("authorization") {
            Some(v) if same_bytes(v.as_bytes(), expected) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            )),
        }
    }
}

/// A started server.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub info: InfoResponse,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Stops accepting, finishes in-flight requests, then returns.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join().await
    }

    /// Runs until `signal` resolves (e.g. SIGTERM), then shuts down gracefully.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<()> {
        tokio::select! {
            () = signal => {}
            joined = &mut self.task => {
                return joined.map_err(|e| Error::Config(format!("server task: {e}")))?;
            }
        }
        self.shutdown().await
    }

    async fn join(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::Config(format!("server task: {e}")))?
    }
}

/// Binds, starts the batcher and the gRPC (and metrics) servers, and returns once listening.
/// `teacher`: a [`edkd_models::Teacher`] or any [`ServedTeacher`] (a vision-language one
/// takes images).
pub async fn start(
    teacher: impl Into<ServedTeacher>,
    config: ServerConfig,
) -> Result<RunningServer> {
    let teacher: ServedTeacher = teacher.into();
    let model_cfg = &teacher.lm().config;
    let vocab_size = model_cfg.vocab_size as usize;
    let image_spec = teacher.image_spec();
    let limits = Limits {
        vocab_size,
        max_positions: model_cfg.max_positions as usize,
        max_top_k: config.max_top_k.min(vocab_size),
        max_request_tokens: config.max_request_tokens,
        max_sequences: config.max_sequences,
        max_response_bytes: config.max_response_bytes,
        images: image_spec.map(|spec| ImageLimits {
            spec,
            max_image_bytes: config.max_image_bytes,
            max_images_per_sequence: MAX_IMAGES_PER_SEQUENCE,
        }),
    };
    config.check()?;
    if limits.max_top_k == 0 {
        return Err(Error::Config("max_top_k must be >= 1".into()));
    }
    if let Some(tls) = &config.tls {
        crate::tls::check_identity(&tls.cert, &tls.key, "TLS certificate", "TLS key")?;
    }
    let model_id = config.model_id.clone().unwrap_or_else(|| {
        teacher
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let info = InfoResponse {
        model_id,
        architecture: model_cfg.family.architecture().to_owned(),
        vocab_size: vocab_size as u32,
        tokenizer_sha256: teacher
            .tokenizer()
            .map(|t| t.sha256().to_owned())
            .unwrap_or_default(),
        max_positions: limits.max_positions as u32,
        dtype: kind_name(teacher.lm().kind()),
        device: device_name(teacher.lm().device()),
        limits: Some(edkd_proto::teacher::v1::Limits {
            max_top_k: limits.max_top_k as u32,
            max_request_tokens: limits.max_request_tokens as u32,
            max_sequences: limits.max_sequences as u32,
            max_positions: limits.max_positions as u32,
            queue_capacity: config.queue_capacity as u32,
            max_request_bytes: config.max_request_bytes as u64,
            max_response_bytes: config.max_response_bytes as u64,
            max_image_bytes: limits.images.map_or(0, |l| l.max_image_bytes as u64),
            max_images_per_sequence: limits
                .images
                .map_or(0, |l| l.max_images_per_sequence as u32),
        }),
        packings: crate::wire::wire_packings()
            .map(|p| p.code() as i32)
            .collect(),
        accepts_images: image_spec.is_some(),
        image_token_id: image_spec.map_or(0, |s| s.image_token_id),
        tokens_per_image: image_spec.map_or(0, |s| s.tokens_per_image as u32),
    };

    let metrics = Arc::new(Metrics::new()?);
    let (batcher, _worker) = Batcher::start(
        Scorer::new(teacher),
        BatcherConfig {
            queue_capacity: config.queue_capacity,
            batch_tokens: config.max_request_tokens,
            max_wait: config.max_wait,
            threads: config.threads,
        },
        metrics.clone(),
    )?;
    let service = TeacherService {
        inner: Arc::new(Inner {
            batcher,
            limits,
            info: info.clone(),
            metrics: metrics.clone(),
            rejections: LogLimiter::default(),
        }),
    };

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(Error::io(format!("binding {}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("reading the bound address"))?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let (metrics_stop_tx, metrics_stop_rx) = oneshot::channel::<()>();
    let mut metrics_addr = None;
    if let Some(listen) = config.metrics_listen {
        if !listen.ip().is_loopback() {
            tracing::warn!(
                %listen,
                token = config.auth_token.is_some(),
                "metrics endpoint beyond loopback (plain HTTP): it shows who uses the teacher and how much"
            );
        }
        let ml = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(Error::io(format!("binding metrics {listen}")))?;
        metrics_addr = ml.local_addr().ok();
        let m = metrics.clone();
        let token = config.auth_token.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = metrics_stop_rx.await;
            };
            if let Err(e) = crate::metrics::serve(ml, m, token, stop).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TeacherServer<TeacherService>>().await;
    // v1 for current clients, v1alpha for stock Python reflection clients and older grpcurl.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(edkd_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let teacher_service = TeacherServer::new(service)
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(config.max_response_bytes);

    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_streams_per_connection)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout));
    if let Some(tls) = &config.tls {
        let tls_config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.cert, &tls.key))
            .timeout(config.handshake_timeout);
        builder = builder.tls_config(tls_config)?;
    }
    let router = builder
        .layer(PolicyLayer::new(
            config.max_inflight_request_bytes,
            metrics.clone(),
        ))
        .layer(InterceptorLayer::new(BearerAuth::new(
            config.auth_token.as_deref(),
        )))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(teacher_service);
    let incoming = crate::conn::guard(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        ConnLimits {
            max_connections: config.max_connections,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
        },
        metrics.clone(),
    );
    let task = tokio::spawn(async move {
        let signal = async move {
            let _ = shutdown_rx.await;
            tracing::info!("shutting down: finishing in-flight requests");
            health
                .set_not_serving::<TeacherServer<TeacherService>>()
                .await;
        };
        let served = router.serve_with_incoming_shutdown(incoming, signal).await;
        let _ = metrics_stop_tx.send(());
        served.map_err(Error::from)
    });
    tracing::info!(%addr, tls = config.tls.is_some(), auth = config.auth_token.is_some(), "teacher service listening");
    Ok(RunningServer {
        addr,
        metrics_addr,
        metrics,
        info,
        shutdown: Some(shutdown_tx),
        task,
    })
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
