//! The server's outermost layer, around every RPC (auth included):
//!
//! - **In-flight request bytes.** Request bodies draw their bytes from one server-wide
//!   budget while a gRPC message is being received; a message that would exceed it ends
//!   with RESOURCE_EXHAUSTED before it is buffered. (Without it, one unauthenticated
//!   connection with 60 streams of 15 MiB messages, each under the 16 MiB limit, held
//!   about 900 MB.) A message's bytes return to the budget once it is complete, when the
//!   service decodes it.
//! - **Connection activity**, for the idle timeout of [`crate::conn`].
//! - **Rejections are counted and logged.** Calls refused before a handler runs (bad or
//!   missing token, a message over the size limit, an exhausted budget) and unary calls that
//!   failed get their code counted in `errors_total` and a rate-limited warning with the
//!   method and the peer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Semaphore;
use tonic::codegen::{Service, http};
use tonic::{Code, Status};
use tower_layer::Layer;

use crate::conn::{ActiveRequest, ConnInfo, LogLimiter};
use crate::metrics::Metrics;

/// gRPC message prefix: compressed flag (1 byte) and big-endian length (4 bytes).
const GRPC_PREFIX: usize = 5;

/// See the module docs.
#[derive(Clone)]
pub struct PolicyLayer {
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    metrics: Arc<Metrics>,
    log: Arc<LogLimiter>,
}

impl PolicyLayer {
    /// A layer whose request bodies share `budget_bytes` of in-flight bytes.
    pub fn new(budget_bytes: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(budget_bytes.min(Semaphore::MAX_PERMITS))),
            budget_bytes,
            metrics,
            log: Arc::new(LogLimiter::default()),
        }
    }
}

impl<S> Layer<S> for PolicyLayer {
    type Service = Policy<S>;

    fn layer(&self, inner: S) -> Policy<S> {
        Policy {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PolicyLayer`].
#[derive(Clone)]
pub struct Policy<S> {
    inner: S,
    layer: PolicyLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<tonic::body::Body>> for Policy<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let active = conn.as_ref().map(|c| c.activity.begin());
        let peer = conn.and_then(|c| c.remote);
        let method = request.uri().path().to_owned();
        let layer = self.layer.clone();
        let request = request.map(|body| {
            tonic::body::Body::new(Budgeted {
                inner: body,
                budget: layer.budget.clone(),
                budget_bytes: layer.budget_bytes,
                held: 0,
                message: MessageCursor::default(),
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // A status in the headers is a trailers-only answer: the call failed before or
            // in its handler (a stream's status comes in its trailers and is counted there).
            if let Some(code) = header_status(&response) {
                let label = format!("{code:?}");
                layer.metrics.errors.with_label_values(&[&label]).inc();
                if matches!(
                    code,
                    Code::Unauthenticated | Code::OutOfRange | Code::ResourceExhausted
                ) && let Some(suppressed) = layer.log.allow()
                {
                    let message = response
                        .headers()
                        .get("grpc-message")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    tracing::warn!(%method, ?peer, code = %label, %message, suppressed, "rpc rejected");
                }
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(Tracked {
                    inner: Box::pin(body),
                    active,
                })
            }))
        })
    }
}

fn header_status<B>(response: &http::Response<B>) -> Option<Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?;
    let code = Code::from_i32(value.parse().ok()?);
    (code != Code::Ok).then_some(code)
}

/// Where a request body is in its gRPC framing.
#[derive(Debug, Default)]
struct MessageCursor {
    prefix: [u8; GRPC_PREFIX],
    prefix_len: usize,
    /// Bytes of the current message body still to come (once its prefix is complete).
    body_left: usize,
    /// Bytes of the current message received so far, prefix included.
    received: usize,
}

impl MessageCursor {
    /// Consumes `data`; returns the bytes of the messages it completed (prefixes included).
    fn advance(&mut self, mut data: &[u8]) -> usize {
        let mut completed = 0;
        loop {
            if self.prefix_len < GRPC_PREFIX {
                if data.is_empty() {
                    break;
                }
                let n = (GRPC_PREFIX - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
                self.prefix_len += n;
                self.received += n;
                data = &data[n..];
                if self.prefix_len < GRPC_PREFIX {
                    break;
                }
                let [_, a, b, c, d] = self.prefix;
                self.body_left = u32::from_be_bytes([a, b, c, d]) as usize;
            }
            let n = self.body_left.min(data.len());
            self.body_left -= n;
            self.received += n;
            data = &data[n..];
            if self.body_left > 0 {
                break;
            }
            completed += std::mem::take(&mut self.received);
            self.prefix_len = 0;
        }
        completed
    }
}

/// A request body whose buffered bytes are drawn from the server's budget.
struct Budgeted {
    inner: tonic::body::Body,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    /// Permits taken and not yet returned.
    held: usize,
    message: MessageCursor,
}

impl Budgeted {
    fn release(&mut self, n: usize) {
        let n = n.min(self.held);
        self.held -= n;
        self.budget.add_permits(n);
    }
}

impl Drop for Budgeted {
    fn drop(&mut self) {
        self.release(self.held);
    }
}

impl Body for Budgeted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len();
            let budget = self.budget.clone();
            match u32::try_from(n)
                .ok()
                .and_then(|n| budget.try_acquire_many(n).ok())
            {
                Some(permit) => {
                    permit.forget();
                    self.held += n;
                }
                None => {
                    return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                        "the server's {} bytes for requests being received are in use; \
                         retry later",
                        self.budget_bytes
                    )))));
                }
            }
            let completed = self.message.advance(data);
            self.release(completed);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
struct Tracked<B> {
    inner: Pin<Box<B>>,
    active: Option<ActiveRequest>,
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.active = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
