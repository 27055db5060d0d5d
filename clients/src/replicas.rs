//! The transport under every client: a keep-alive connection pool to a list of server
//! replicas, with failover and idempotent retries.
//!
//! # Failover
//!
//! A call goes first to the *preferred* replica, the last one that gave an answer (initially
//! a random one, or [`ClientConfig::initial_replica`]). If the attempt fails without an answer (connection refused, reset or closed
//! before a response, the per-attempt timeout) or the replica answers 502, 503 or 504, the
//! same request goes to the next replica in the list, and so on around the list. When every
//! replica has failed once, that was one *round*; the client sleeps a short backoff (at least
//! the `Retry-After` of a 503, capped by [`ClientConfig::backoff_max`]) and starts another
//! round, up to [`ClientConfig::rounds_max`] rounds, after which the call fails with
//! [`ClientError::Unavailable`]. The whole call, backoffs included, is bounded by
//! [`ClientConfig::call_deadline`] ([`ClientError::Timeout`]). Any other answer (a success or a
//! problem such as 409) ends the call and makes its replica the preferred one.
//!
//! # Why retrying is safe
//!
//! Every request whose method is not `GET` or `HEAD` carries an `Idempotency-Key` header: 24
//! random letters and digits drawn once per call and sent unchanged on every retry of that
//! call, on whichever replica. A server that already executed the request answers the retry
//! with the original status and body (API.md), so a retry after a crash mid-request never
//! executes twice. `GET`s have no effects and are retried freely.
//!
//! # Cost per call
//!
//! Connections are pooled and kept alive (TCP_NODELAY set); base URLs are parsed once, and
//! `http://IP:port` URLs never touch DNS. Per call, the work is: the path string, one
//! serialized JSON body, 24 random bytes for the key, and the response body.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::Rng;
use tokio::time::Instant;

use crate::api::Problem;
use crate::ClientError;

/// The `Idempotency-Key` request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Length of the generated idempotency keys.
pub const IDEMPOTENCY_KEY_LEN: usize = 24;

/// Tunables of a [`Replicas`] pool. `Default` suits a loopback cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait for one attempt on one replica (connect, send, full response), default 3 s.
    /// Past it the attempt counts as failed and the next replica is tried.
    pub attempt_timeout: Duration,
    /// Longest time for a whole call, every attempt and backoff included, default 15 s.
    pub call_deadline: Duration,
    /// Rounds over the whole replica list before giving up, default 3 (at least 1).
    pub rounds_max: u32,
    /// Sleep after the first failed round, default 20 ms; doubles after each further round.
    pub backoff_initial: Duration,
    /// Longest sleep between rounds, default 1 s (also caps a server's `Retry-After`).
    pub backoff_max: Duration,
    /// An idle pooled connection is closed after this long, default 60 s.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per replica, default 64.
    pub pool_idle_per_replica_max: usize,
    /// Largest response body accepted, default 32 MiB.
    pub response_bytes_max: usize,
    /// The replica tried first until one answers (index into the URL list, modulo its
    /// length); default `None`: a random one, so many clients spread over the replicas.
    pub initial_replica: Option<usize>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(3),
            call_deadline: Duration::from_secs(15),
            rounds_max: 3,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(60),
            pool_idle_per_replica_max: 64,
            response_bytes_max: 32 << 20,
            initial_replica: None,
        }
    }
}

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status, always 2xx.
    pub status: StatusCode,
    /// The body (empty for 204).
    pub body: Bytes,
}

/// A pooled HTTP/1.1 client for a list of equivalent server replicas, with failover (see the
/// [module docs](self)). Cheap to clone: clones share the pool and the preferred replica, so
/// many [`SellerClient`](crate::SellerClient)s and [`BuyerClient`](crate::BuyerClient)s can
/// share one pool ([`SellerClient::from_replicas`](crate::SellerClient::from_replicas)).
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<HttpConnector, Full<Bytes>>,
    authorities: Vec<Authority>,
    urls: Vec<String>,
    preferred: AtomicUsize,
    config: ClientConfig,
}

impl fmt::Debug for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicas")
            .field("urls", &self.inner.urls)
            .field("preferred", &self.preferred())
            .finish_non_exhaustive()
    }
}

/// Parses a base URL `http://host:port` (a trailing `/` is allowed; no other path, no query).
pub fn parse_base_url(url: &str) -> Result<Authority, ClientError> {
    let bad = |reason| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https is not supported; use http://")),
        _ => return Err(bad("expected http://host:port")),
    }
    if uri.path() != "/" && !uri.path().is_empty() || uri.query().is_some() {
        return Err(bad("a base URL has no path or query"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
    if authority.as_str().contains('@') {
        return Err(bad("credentials in URLs are not supported"));
    }
    Ok(authority)
}

impl Replicas {
    /// A pool for the replicas at `urls` (`http://IP:port`), with [`ClientConfig::default`].
    /// Needs a Tokio runtime when calls are made, not when built.
    pub fn new<I, S>(urls: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_config(urls, ClientConfig::default())
    }

    /// A pool for the replicas at `urls` with the given tunables.
    pub fn with_config<I, S>(urls: I, config: ClientConfig) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut authorities = Vec::new();
        let mut list = Vec::new();
        for url in urls {
            let url = url.as_ref();
            authorities.push(parse_base_url(url)?);
            list.push(url.trim().trim_end_matches('/').to_owned());
        }
        if authorities.is_empty() {
            return Err(ClientError::InvalidUrl {
                url: String::new(),
                reason: "no server URL given",
            });
        }
        let initial = match config.initial_replica {
            Some(i) => i % authorities.len(),
            None => rand::thread_rng().gen_range(0..authorities.len()),
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.attempt_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_idle_per_replica_max)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                authorities,
                urls: list,
                preferred: AtomicUsize::new(initial),
                config,
            }),
        })
    }

    /// The base URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.inner.urls
    }

    /// Index (into [`Replicas::urls`]) of the replica the next call tries first.
    pub fn preferred(&self) -> usize {
        self.inner.preferred.load(Ordering::Relaxed)
    }

    /// The tunables.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Sends one request with failover. `path_and_query` starts with `/` and is already
    /// percent-encoded; `body` is JSON; `token` is the value of the `Authorization` header.
    /// Requests other than `GET`/`HEAD` get a fresh idempotency key (use
    /// [`Replicas::call_with_key`] to choose it). A 2xx answer is `Ok`; a problem document is
    /// [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
        token: Option<&HeaderValue>,
    ) -> Result<Answer, ClientError> {
        let key = (method != Method::GET && method != Method::HEAD).then(new_idempotency_key);
        self.call_with_key(method, path_and_query, body, token, key.as_ref())
            .await
    }

    /// Like [`Replicas::call`], with the caller's idempotency key (or none).
    pub async fn call_with_key(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
        token: Option<&HeaderValue>,
        idempotency_key: Option<&HeaderValue>,
    ) -> Result<Answer, ClientError> {
        let inner = &*self.inner;
        let cfg = &inner.config;
        let pq = PathAndQuery::try_from(path_and_query)
            .map_err(|_| ClientError::InvalidArgument(format!("bad path {path_and_query:?}")))?;
        let deadline = Instant::now() + cfg.call_deadline;
        let n = inner.authorities.len();
        let mut attempts = 0u32;
        let mut last = String::new();
        let mut backoff = cfg.backoff_initial;
        let mut retry_after: Option<Duration> = None;
        for round in 0..cfg.rounds_max.max(1) {
            if round > 0 {
                let sleep = round_backoff(backoff, retry_after, cfg.backoff_max);
                let remaining = deadline.saturating_duration_since(Instant::now());
                if sleep >= remaining {
                    return Err(ClientError::Timeout(cfg.call_deadline));
                }
                tokio::time::sleep(sleep).await;
                backoff = (backoff * 2).min(cfg.backoff_max);
                retry_after = None;
            }
            for idx in rotation(self.preferred(), n) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(ClientError::Timeout(cfg.call_deadline));
                }
                attempts += 1;
                let attempt = self.attempt(
                    idx,
                    &method,
                    pq.clone(),
                    body.clone(),
                    token,
                    idempotency_key,
                );
                let url = &inner.urls[idx];
                match tokio::time::timeout(cfg.attempt_timeout.min(remaining), attempt).await {
                    Err(_) => {
                        last = format!("{url}: no answer in time");
                    }
                    Ok(Err(e)) => {
                        last = format!("{url}: {}", error_chain(&*e));
                    }
                    Ok(Ok((status, ra, bytes))) => {
                        if fails_over(status) {
                            last = match serde_json::from_slice::<Problem>(&bytes) {
                                Ok(p) => format!("{url}: HTTP {status}: {}: {}", p.code, p.detail),
                                Err(_) => format!("{url}: HTTP {status}"),
                            };
                            retry_after = retry_after.max(ra);
                            continue;
                        }
                        inner.preferred.store(idx, Ordering::Relaxed);
                        return into_result(status, bytes);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Timeout(cfg.call_deadline));
        }
        Err(ClientError::Unavailable { attempts, last })
    }

    /// One attempt on replica `idx`: the status, the `Retry-After` delay and the body, or why
    /// no answer came.
    async fn attempt(
        &self,
        idx: usize,
        method: &Method,
        pq: PathAndQuery,
        body: Option<Bytes>,
        token: Option<&HeaderValue>,
        idempotency_key: Option<&HeaderValue>,
    ) -> Result<(StatusCode, Option<Duration>, Bytes), Box<dyn std::error::Error + Send + Sync>>
    {
        let inner = &*self.inner;
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(inner.authorities[idx].clone())
            .path_and_query(pq)
            .build()?;
        let mut req = hyper::Request::builder().method(method.clone()).uri(uri);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(token) = token {
            req = req.header(AUTHORIZATION, token.clone());
        }
        if let Some(key) = idempotency_key {
            req = req.header(IDEMPOTENCY_KEY, key.clone());
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = inner.client.request(req).await?;
        let status = resp.status();
        let retry_after = resp.headers().get(RETRY_AFTER).and_then(parse_retry_after);
        let body = Limited::new(resp.into_body(), inner.config.response_bytes_max)
            .collect()
            .await?
            .to_bytes();
        Ok((status, retry_after, body))
    }
}

/// Checks readiness of one replica: `GET {base_url}/healthz`. `Ok(true)` for 200, `Ok(false)`
/// for any other answer (503: the replica cannot reach its databases), an error when nothing
/// answered within `timeout`. Builds a throw-away connection; meant for polling at startup.
pub async fn healthz(base_url: &str, timeout: Duration) -> Result<bool, ClientError> {
    let config = ClientConfig {
        initial_replica: Some(0),
        attempt_timeout: timeout,
        call_deadline: timeout,
        rounds_max: 1,
        pool_idle_per_replica_max: 0,
        ..ClientConfig::default()
    };
    let replicas = Replicas::with_config([base_url], config)?;
    let inner = &*replicas.inner;
    let attempt = replicas.attempt(
        0,
        &Method::GET,
        PathAndQuery::from_static("/healthz"),
        None,
        None,
        None,
    );
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(ClientError::Timeout(timeout)),
        Ok(Err(e)) => Err(ClientError::Unavailable {
            attempts: 1,
            last: format!("{}: {}", inner.urls[0], error_chain(&*e)),
        }),
        Ok(Ok((status, _, _))) => Ok(status == StatusCode::OK),
    }
}

/// A fresh random idempotency key: [`IDEMPOTENCY_KEY_LEN`] ASCII letters and digits.
pub fn new_idempotency_key() -> HeaderValue {
    let mut rng = rand::thread_rng();
    let mut key = [0u8; IDEMPOTENCY_KEY_LEN];
    for b in &mut key {
        *b = rng.sample(rand::distributions::Alphanumeric);
    }
    // Letters and digits are always a valid header value.
    HeaderValue::from_bytes(&key).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Replica indices in the order one round tries them: `start`, `start + 1`, ... modulo `n`,
/// each once.
pub(crate) fn rotation(start: usize, n: usize) -> impl Iterator<Item = usize> {
    let start = if n == 0 { 0 } else { start % n };
    (0..n).map(move |i| (start + i) % n)
}

/// Whether an answer with this status sends the request to the next replica: 503 (the
/// replica has no quorum, or is shutting down), and 502 and 504 (a proxy in front of it could
/// not reach it). Every other status is the answer.
pub(crate) fn fails_over(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The sleep between two rounds: the current backoff, or the server's `Retry-After` if longer,
/// never more than `max`.
pub(crate) fn round_backoff(
    backoff: Duration,
    retry_after: Option<Duration>,
    max: Duration,
) -> Duration {
    backoff.max(retry_after.unwrap_or_default()).min(max)
}

/// `Retry-After` in delay-seconds form (the HTTP-date form is ignored).
pub(crate) fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let secs: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// An error and its sources, `outer: inner: innermost` (hyper's own messages are terse).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Turns a final answer into the call's result.
fn into_result(status: StatusCode, body: Bytes) -> Result<Answer, ClientError> {
    if status.is_success() {
        return Ok(Answer { status, body });
    }
    match serde_json::from_slice::<Problem>(&body) {
        Ok(problem) => Err(ClientError::Api(problem)),
        Err(_) => {
            let end = body.len().min(512);
            Err(ClientError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body[..end]).into_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_starts_at_the_preferred_replica_and_visits_each_once() {
        assert_eq!(rotation(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotation(2, 4).collect::<Vec<_>>(), [2, 3, 0, 1]);
        assert_eq!(rotation(7, 3).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotation(0, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(rotation(5, 0).count(), 0);
    }

    #[test]
    fn only_gateway_and_unavailable_statuses_fail_over() {
        for s in [502, 503, 504] {
            assert!(fails_over(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 201, 204, 400, 401, 402, 403, 404, 409, 413, 500] {
            assert!(!fails_over(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn backoff_honours_retry_after_within_the_cap() {
        let ms = Duration::from_millis;
        assert_eq!(round_backoff(ms(20), None, ms(1000)), ms(20));
        assert_eq!(round_backoff(ms(20), Some(ms(500)), ms(1000)), ms(500));
        assert_eq!(round_backoff(ms(20), Some(ms(9000)), ms(1000)), ms(1000));
        assert_eq!(round_backoff(ms(4000), None, ms(1000)), ms(1000));
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static(" 2")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_and_distinct() {
        let a = new_idempotency_key();
        let b = new_idempotency_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), IDEMPOTENCY_KEY_LEN);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn base_urls_are_validated() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:7000").unwrap().as_str(),
            "127.0.0.1:7000"
        );
        assert!(parse_base_url("http://127.0.0.1:7000/").is_ok());
        assert!(parse_base_url("http://[::1]:7000").is_ok());
        for bad in [
            "",
            "127.0.0.1:7000",
            "https://127.0.0.1:7000",
            "http://127.0.0.1:7000/v1",
            "http://127.0.0.1:7000?x=1",
            "http://u:p@127.0.0.1:7000",
            "ftp://x",
        ] {
            assert!(
                matches!(parse_base_url(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad}"
            );
        }
        assert!(Replicas::new(Vec::<String>::new()).is_err());
    }

    #[test]
    fn the_first_replica_is_random_unless_chosen() {
        let urls = [
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ];
        let firsts: std::collections::HashSet<usize> = (0..64)
            .map(|_| Replicas::new(urls).unwrap().preferred())
            .collect();
        assert!(firsts.len() > 1 && firsts.iter().all(|&i| i < 3));
        let config = ClientConfig {
            initial_replica: Some(4),
            ..ClientConfig::default()
        };
        assert_eq!(Replicas::with_config(urls, config).unwrap().preferred(), 1);
    }

    #[test]
    fn answers_become_results() {
        let ok = into_result(StatusCode::CREATED, Bytes::from_static(b"{}")).unwrap();
        assert_eq!(ok.status, 201);
        let problem = br#"{"type":"about:blank","title":"Conflict","status":409,
            "code":"insufficient_quantity","detail":"3-17"}"#;
        let err = into_result(StatusCode::CONFLICT, Bytes::from_static(problem)).unwrap_err();
        assert_eq!(err.code(), "insufficient_quantity");
        assert_eq!(err.status(), Some(409));
        assert_eq!(err.detail(), "3-17");
        let err = into_result(
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(b"oops"),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Status { status: 500, ref body } if body == "oops"));
    }
}
