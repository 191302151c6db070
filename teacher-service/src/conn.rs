//! Connection limits of the gRPC server, below HTTP/2: at most `max_connections` open at
//! once, a deadline for a client's first bytes, and an idle timeout.
//!
//! - A connection must deliver its first [`HANDSHAKE_BYTES`] (the HTTP/2 client preface is
//!   24 bytes; a TLS ClientHello is longer) within `handshake_timeout`, so silent sockets and
//!   slow-loris clients are closed instead of held forever (and no longer stall a graceful
//!   shutdown, which waits for every connection).
//! - A connection with no request in flight for `idle_timeout` is closed. HTTP/2 keepalive
//!   pings (configured on the server) close connections whose peer stopped answering.
//! - Connections beyond `max_connections` are closed as soon as they are accepted.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::StreamExt;
use tonic::transport::server::{Connected, TcpIncoming};

use crate::metrics::Metrics;

/// Bytes a client must send within the handshake timeout before it counts as connected.
pub const HANDSHAKE_BYTES: usize = 24;

/// Connection-level limits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What a connection's requests tell its socket: how many are in flight, and since when
/// none has been.
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    /// Milliseconds after `epoch` when the last request ended (or the connection started).
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.idle_since_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(self.clone())
    }
}

/// A request in flight on its connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection info every request carries in its extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub activity: Arc<Activity>,
}

/// A TCP connection under [`ConnLimits`].
pub struct GuardedIo {
    inner: TcpStream,
    info: ConnInfo,
    deadline: Pin<Box<Sleep>>,
    handshake_left: usize,
    idle_timeout: Duration,
    _slot: OwnedSemaphorePermit,
}

impl GuardedIo {
    /// Whether the connection has run out of time (registers the timer with `cx` if not).
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.handshake_left > 0 {
                return true;
            }
            let activity = &self.info.activity;
            let next = if activity.active.load(Ordering::Relaxed) > 0 {
                Instant::now() + self.idle_timeout
            } else {
                let next = activity.idle_since() + self.idle_timeout;
                if next <= Instant::now() {
                    return true;
                }
                next
            };
            self.deadline.as_mut().reset(next);
        }
    }
}

impl Connected for GuardedIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if self.handshake_left > 0 && n > 0 {
                    self.handshake_left = self.handshake_left.saturating_sub(n);
                    if self.handshake_left == 0 {
                        self.info.activity.touch();
                        let next = Instant::now() + self.idle_timeout;
                        self.deadline.as_mut().reset(next);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.timed_out(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                if self.handshake_left > 0 {
                    "no handshake within the handshake timeout"
                } else {
                    "idle timeout: no request in flight"
                },
            ))),
            other => other,
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepted connections under `limits`; those over `max_connections` are closed at once
/// (and counted in `connections_refused_total`).
pub fn guard(
    incoming: TcpIncoming,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<GuardedIo>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(LogLimiter::default());
    incoming.filter_map(move |accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => return Some(Err(e)),
        };
        let remote = stream.peer_addr().ok();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            if let Some(suppressed) = refusals.allow() {
                tracing::warn!(
                    peer = ?remote,
                    limit = limits.max_connections,
                    suppressed,
                    "connection refused: the server holds its maximum of open connections"
                );
            }
            return None;
        };
        let info = ConnInfo {
            remote,
            activity: Arc::new(Activity::new()),
        };
        Some(Ok(GuardedIo {
            inner: stream,
            info,
            deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            handshake_left: HANDSHAKE_BYTES,
            idle_timeout: limits.idle_timeout,
            _slot: slot,
        }))
    })
}

/// Lets at most one log line a second through; the others are counted and reported with it.
#[derive(Debug, Default)]
pub struct LogLimiter {
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogLimiter {
    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}
