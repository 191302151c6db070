//! Client library: unary calls with a per-call deadline and retries with backoff on
//! UNAVAILABLE (and RESOURCE_EXHAUSTED, a full server queue), and a pipelined stream that
//! keeps N requests in flight.

use std::sync::Arc;
use std::time::Duration;

use edkd_proto::teacher::v1::teacher_client::TeacherClient;
use edkd_proto::teacher::v1::{InfoRequest, InfoResponse, ScoreRequest, ScoreResponse};
use futures_util::{Stream, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::InterceptedService;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use crate::error::{Error, Result};

/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How to reach a teacher server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`, or a full `http://` / `https://` URI.
    pub addr: String,
    /// PEM of the CA that signed the server's certificate; enables TLS.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Name to check the server certificate against (default: the address's host).
    pub tls_domain: Option<String>,
    /// Sent as `authorization: Bearer <token>` on every call.
    pub auth_token: Option<String>,
    /// Deadline of each unary call (each attempt).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts after UNAVAILABLE or RESOURCE_EXHAUSTED.
    pub retries: u32,
    /// First pause between attempts; doubles up to 5 s.
    pub backoff: Duration,
    /// Largest response message accepted.
    pub max_message_bytes: usize,
}

impl ClientConfig {
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            tls_ca_pem: None,
            tls_domain: None,
            auth_token: None,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            retries: 5,
            backoff: Duration::from_millis(50),
            max_message_bytes: 256 << 20,
        }
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct AddAuth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for AddAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Rpc = TeacherClient<InterceptedService<Channel, AddAuth>>;

/// A cheap-to-clone handle; clones share one HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    rpc: Rpc,
    config: Arc<ClientConfig>,
}

fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

impl Client {
    /// Prepares a connection; it is made on the first call (so a server that is still
    /// starting is retried like any other UNAVAILABLE).
    pub fn connect(config: ClientConfig) -> Result<Self> {
        let tls = config.tls_ca_pem.is_some();
        let uri = if config.addr.contains("://") {
            config.addr.clone()
        } else {
            format!("{}://{}", if tls { "https" } else { "http" }, config.addr)
        };
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| Error::Config(format!("bad teacher address `{uri}`: {e}")))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true);
        if let Some(ca) = &config.tls_ca_pem {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let Some(domain) = &config.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        let token = match &config.auth_token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Error::Config("auth token is not valid ASCII metadata".into()))?,
            ),
            None => None,
        };
        let channel = endpoint.connect_lazy();
        let rpc = TeacherClient::with_interceptor(channel, AddAuth(token))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        Ok(Self {
            rpc,
            config: Arc::new(config),
        })
    }

    /// Runs `call` with the per-call deadline, retrying retryable codes with backoff.
    async fn with_retries<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(Rpc, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let timeout = self.config.timeout;
        let mut backoff = self.config.backoff;
        let mut attempt = 0;
        loop {
            let result = match tokio::time::timeout(timeout, call(self.rpc.clone(), timeout)).await
            {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {timeout:?}"
                ))),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(status) if retryable(status.code()) && attempt < self.config.retries => {
                    attempt += 1;
                    tracing::debug!(code = ?status.code(), attempt, "retrying teacher call");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    pub async fn info(&self) -> Result<InfoResponse> {
        self.with_retries(|mut rpc, timeout| async move {
            let mut req = Request::new(InfoRequest {});
            req.set_timeout(timeout);
            rpc.info(req).await.map(|r| r.into_inner())
        })
        .await
    }

    /// Scores one request (retried on UNAVAILABLE / RESOURCE_EXHAUSTED).
    pub async fn score(&self, request: ScoreRequest) -> Result<ScoreResponse> {
        let response = self
            .with_retries(|mut rpc, timeout| {
                let request = request.clone();
                async move {
                    let mut req = Request::new(request);
                    req.set_timeout(timeout);
                    rpc.score(req).await.map(|r| r.into_inner())
                }
            })
            .await?;
        check_response(&request, &response)?;
        Ok(response)
    }

    /// Opens a ScoreStream that sends `requests` keeping at most `in_flight` unanswered.
    /// Answers arrive in request order. No retries: a failed stream is reported once.
    pub async fn score_stream<S>(&self, requests: S, in_flight: usize) -> Result<Pipeline>
    where
        S: Stream<Item = ScoreRequest> + Send + 'static,
    {
        let permits = Arc::new(Semaphore::new(in_flight.max(1)));
        let (tx, rx) = mpsc::channel(in_flight.max(1));
        let sender_permits = permits.clone();
        tokio::spawn(async move {
            let mut requests = std::pin::pin!(requests);
            while let Some(r) = requests.next().await {
                let Ok(permit) = sender_permits.acquire().await else {
                    break;
                };
                permit.forget();
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        let mut rpc = self.rpc.clone();
        let inbound = rpc
            .score_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Pipeline { inbound, permits })
    }

    /// Scores every request over one stream with `in_flight` outstanding; answers in order.
    pub async fn score_all(
        &self,
        requests: Vec<ScoreRequest>,
        in_flight: usize,
    ) -> Result<Vec<ScoreResponse>> {
        let expected: Vec<ScoreRequest> = requests.clone();
        let mut pipeline = self
            .score_stream(tokio_stream::iter(requests), in_flight)
            .await?;
        let mut out = Vec::with_capacity(expected.len());
        for request in &expected {
            let response = pipeline
                .next()
                .await
                .ok_or_else(|| Error::Wire("stream ended before every answer".into()))??;
            check_response(request, &response)?;
            out.push(response);
        }
        Ok(out)
    }
}

/// Answers of a [`Client::score_stream`].
pub struct Pipeline {
    inbound: Streaming<ScoreResponse>,
    permits: Arc<Semaphore>,
}

impl Pipeline {
    /// The next answer; `None` once the server has answered everything sent.
    pub async fn next(&mut self) -> Option<Result<ScoreResponse>> {
        match self.inbound.message().await {
            Ok(Some(r)) => {
                self.permits.add_permits(1);
                Some(Ok(r))
            }
            Ok(None) => None,
            Err(status) => Some(Err(status.into())),
        }
    }
}

/// Stops sending when the answers are no longer wanted: the sender's pending permit wait
/// fails, it drops its end and the request stream closes (else a server would wait for it
/// forever, e.g. in graceful shutdown).
impl Drop for Pipeline {
    fn drop(&mut self) {
        self.permits.close();
    }
}

/// A response must answer its request: same id, one scored sequence per sequence.
fn check_response(request: &ScoreRequest, response: &ScoreResponse) -> Result<()> {
    if response.request_id != request.request_id {
        return Err(Error::Wire(format!(
            "answer to request {} arrived for request {}",
            response.request_id, request.request_id
        )));
    }
    if response.sequences.len() != request.sequences.len() {
        return Err(Error::Wire(format!(
            "{} sequences answered for {} sent",
            response.sequences.len(),
            request.sequences.len()
        )));
    }
    for (s, r) in request.sequences.iter().zip(&response.sequences) {
        if s.id != r.id || r.num_positions as usize != s.target_ids.len() {
            return Err(Error::Wire(format!(
                "sequence `{}` ({} targets) answered as `{}` ({} positions)",
                s.id,
                s.target_ids.len(),
                r.id,
                r.num_positions
            )));
        }
    }
    Ok(())
}
