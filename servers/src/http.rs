//! HTTP plumbing shared by the seller, buyer and payment servers: the accept loop with
//! connection, header and time limits and graceful shutdown; bounded body reading; JSON and
//! problem responses.
//!
//! Every server is a [`Handler`]: a function from a request to a response. The accept loop
//! ([`serve`]) owns everything about connections: at most `connections_max` at once (further
//! connections wait in the kernel backlog), a header read timeout, a per-request timeout that
//! answers 503, and on shutdown it stops accepting and lets in-flight requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The response body type of every server.
pub type Body = Full<Bytes>;

/// Limits of one HTTP server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body (API.md: 64 KiB).
    pub body_bytes_max: usize,
    /// Concurrent connections served.
    pub connections_max: usize,
    /// Largest number of request headers.
    pub headers_max: usize,
    /// Time allowed to read a request's headers.
    pub header_read_timeout: Duration,
    /// Time allowed for one request, end to end; past it the answer is 503.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes_max: 64 * 1024,
            connections_max: 4096,
            headers_max: 64,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// A server: turns one request into one response. Must not panic.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`.
    async fn handle(&self, req: Request<Incoming>) -> Response<Body>;

    /// The response sent when a request exceeds its time limit.
    fn timeout_response(&self) -> Response<Body> {
        let mut resp = text(StatusCode::SERVICE_UNAVAILABLE, "request timed out\n");
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains in-flight
/// connections (at most `drain_timeout`).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let limits2 = limits.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let handler = Arc::clone(&handler);
            let timeout = limits2.request_timeout;
            async move {
                let resp = match tokio::time::timeout(timeout, handler.handle(req)).await {
                    Ok(r) => r,
                    Err(_) => handler.timeout_response(),
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.headers_max)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("connections still open after 10 s; closing"),
    }
    Ok(())
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than the limit.
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    /// The connection failed while reading.
    #[error("reading the request body failed: {0}")]
    Io(String),
}

/// Reads a whole request body, refusing (without buffering) anything over `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(BodyError::TooLarge(limit))
        }
        Err(e) => Err(BodyError::Io(e.to_string())),
    }
}

/// A response with a body and a content type.
pub fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_body(status, "text/plain; charset=utf-8", body)
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_body(status, "application/json", bytes),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "response encoding failed\n",
        ),
    }
}

/// An empty response (204 and the like).
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// Binds a TCP listener, reporting the address actually bound (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Completes on SIGINT or SIGTERM.
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
        _ = ctrl_c => {}
        _ = term => {}
    }
}
