//! The seller and buyer HTTP servers: thin, stateless wrappers over [`Market`].
//!
//! A request goes through the same few steps on either server:
//!
//! 1. **Route** ([`crate::router`]): unknown path → 404 `not_found`; known path, wrong method →
//!    405 `method_not_allowed` with `Allow`.
//! 2. **Read the body** within 64 KiB (413 `payload_too_large`) and decode it strictly: invalid
//!    JSON, a wrong type, a missing or an unknown field → 400 `invalid_argument` naming it.
//! 3. **Idempotency** (mutating routes with an `Idempotency-Key`): the key must be 1 to 64
//!    visible ASCII characters (else 400). The call's effect steps are proposed with request
//!    ids derived from (scope, key) ([`marketcore::with_idempotency_key`]), so a retry on any
//!    replica — after a lost response, while the first attempt is still running, or after it
//!    died mid-way — takes effect once and gets the same outcome from the logs' duplicate
//!    tables (a purchase's reservation steps instead from its reservation id, derived from
//!    the key, so that a retry sees the reservation as it is now). Every answer except 5xx
//!    is also remembered in the customer database for 10 minutes (written off the response
//!    path, many per write: [`remember`]) and replayed as it was, covering retries that come
//!    after the duplicate tables have forgotten the request. The scope is the bearer
//!    token's digest for authenticated routes (a user's retries reuse their session) and the
//!    username's digest for account creation and login. On a route that needs a session,
//!    the session check and the lookup of the remembered response are one linearizable read
//!    ([`Market::authenticate_for_retry`]); a remembered response wins over an ended session,
//!    so a retry after logout still gets its first answer. A refused token (401) is not
//!    remembered. The cart writes (`add_to_cart`, `remove_cart`, `save_cart`, `clear_cart`)
//!    and `provide_feedback` check the session inside their customer-database write
//!    instead, and `make_purchase` in the read of the cart; that write or read also looks up
//!    the remembered response ([`marketcore::with_remembered_lookup`]), so these routes make
//!    no round trip before the Market call. Routes without a session look up with a stale
//!    read.
//! 4. **Call the Market** and render its result: JSON on success, an RFC 9457 problem document
//!    on error ([`problem`]), with `Retry-After` on 503.
//!
//! Both servers also answer `GET /healthz` (200 when both databases answer a read, else 503),
//! `GET /metrics` (Prometheus) and `GET /openapi.json`.

pub mod buyer;
pub mod remember;
pub mod seller;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use marketcore::ids::{Role, UserId};
use marketcore::{Auth, Market, MarketError};
use replication::ReadConsistency;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::{self, Body, BodyError, Handler, Limits};
use crate::metrics::Metrics;
use crate::router::{self, Matched, Route};
use remember::{Remember, RememberConfig};

/// Longest accepted `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 64;

/// The outcome of one API call before rendering: a status and a JSON body, or an error.
pub type Outcome = Result<(StatusCode, Option<Bytes>), MarketError>;

/// Renders a [`MarketError`] as an RFC 9457 problem response.
pub fn problem(err: &MarketError) -> Response<Body> {
    let status =
        StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let p = err.problem();
    let body = serde_json::to_vec(&p).unwrap_or_default();
    let mut resp = http::with_body(status, "application/problem+json", body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn render(outcome: &Outcome) -> Response<Body> {
    match outcome {
        Ok((status, Some(body))) => http::with_body(*status, "application/json", body.clone()),
        Ok((status, None)) => http::empty(*status),
        Err(e) => problem(e),
    }
}

/// Serializes a success body.
pub fn ok_json<T: Serialize>(status: StatusCode, value: &T) -> Outcome {
    serde_json::to_vec(value)
        .map(|b| (status, Some(Bytes::from(b))))
        .map_err(|e| MarketError::Unavailable(format!("response encoding failed: {e}")))
}

/// Decodes a strict JSON body; every failure is 400 naming what is wrong.
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, MarketError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde names unknown, missing and mistyped fields in its message.
        let field = msg
            .split('`')
            .nth(1)
            .filter(|f| f.len() <= 64)
            .unwrap_or("body")
            .to_string();
        MarketError::InvalidArgument { field, detail: msg }
    })
}

/// The bearer token of a request, or `unauthenticated`.
pub fn bearer(req: &Request<Incoming>) -> Result<String, MarketError> {
    let value = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| MarketError::Unauthenticated("missing Authorization header".into()))?;
    let value = value
        .to_str()
        .map_err(|_| MarketError::Unauthenticated("malformed Authorization header".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            MarketError::Unauthenticated("expected `Authorization: Bearer <token>`".into())
        })?
        .trim();
    if token.is_empty() {
        return Err(MarketError::Unauthenticated("empty bearer token".into()));
    }
    Ok(token.to_string())
}

/// The validated `Idempotency-Key`, if any.
pub fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, MarketError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > IDEMPOTENCY_KEY_CHARS_MAX
        || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(MarketError::invalid(
            "Idempotency-Key",
            "must be 1 to 64 visible ASCII characters",
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// A 64-bit FNV-1a digest, used to scope remembered responses by token without storing the
/// token itself.
pub fn digest(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A parsed request as the route handlers see it.
pub struct Call {
    /// The route's name.
    pub route: &'static str,
    /// Captured path segments.
    pub params: Vec<String>,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// The bearer token, if the request had a well-formed one.
    pub token: Result<String, MarketError>,
    /// The validated Idempotency-Key.
    pub key: Option<String>,
    /// The body (empty for GET/DELETE).
    pub body: Bytes,
    /// The token's user, when the server already checked the session (idempotent requests
    /// check it in the same read as the remembered-response lookup).
    pub user: Option<UserId>,
}

impl Call {
    /// The bearer token or `unauthenticated`.
    pub fn token(&self) -> Result<&str, MarketError> {
        self.token.as_deref().map_err(Clone::clone)
    }

    /// Who is calling: the user the server already verified, else the bearer token (checked
    /// by the Market), else `unauthenticated`.
    pub fn auth(&self) -> Result<Auth<'_>, MarketError> {
        match self.user {
            Some(user) => Ok(Auth::Verified(user)),
            None => self.token().map(Auth::Token),
        }
    }

    /// An optional integer query parameter.
    pub fn query_int(&self, name: &str) -> Result<Option<i64>, MarketError> {
        match self.query.iter().rev().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => v
                .parse()
                .map(Some)
                .map_err(|_| MarketError::invalid(name, format!("{v:?} is not an integer"))),
        }
    }
}

/// What a server role supplies: its routes, how to scope anonymous idempotent routes, and the
/// dispatch to the Market.
#[async_trait]
pub trait Api: Send + Sync + 'static {
    /// Name for metrics and logs (`"seller"`, `"buyer"`).
    const NAME: &'static str;
    /// Whose tokens this server accepts.
    const ROLE: Role;
    /// Whether the route needs a logged-in user (a live session of [`Api::ROLE`]).
    fn needs_session(route: &str) -> bool;
    /// Whether the route's Market call checks the session itself, in a read or a write it
    /// makes anyway (so the server need not).
    fn checks_session_itself(_route: &str) -> bool {
        false
    }
    /// The route table.
    fn routes() -> Vec<Route>;
    /// Executes one call.
    async fn dispatch(market: &Market, call: &Call) -> Outcome;
}

/// Extra Prometheus text appended to `/metrics` (the distributed frontends add every database
/// replica's status there).
pub type ExtraMetrics = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> + Send + Sync,
>;

/// An HTTP server for API `A` over a Market.
pub struct ApiServer<A: Api> {
    market: Arc<Market>,
    routes: Vec<Route>,
    metrics: Metrics,
    extra_metrics: Option<ExtraMetrics>,
    limits: Limits,
    openapi: Bytes,
    remember: Remember,
    _api: std::marker::PhantomData<fn() -> A>,
}

impl<A: Api> ApiServer<A> {
    /// A server over `market` with `limits`.
    pub fn new(market: Arc<Market>, limits: Limits) -> Self {
        let routes = A::routes();
        let names: Vec<&'static str> = routes.iter().map(|r| r.name).collect();
        let openapi =
            Bytes::from(serde_json::to_vec(&crate::openapi::document()).unwrap_or_default());
        Self {
            remember: Remember::new(Arc::clone(&market), RememberConfig::default()),
            market,
            metrics: Metrics::new(A::NAME, &names),
            extra_metrics: None,
            routes,
            limits,
            openapi,
            _api: std::marker::PhantomData,
        }
    }

    /// Appends `extra` to every `/metrics` answer.
    pub fn with_extra_metrics(mut self, extra: ExtraMetrics) -> Self {
        self.extra_metrics = Some(extra);
        self
    }

    /// The Market behind this server.
    pub fn market(&self) -> &Arc<Market> {
        &self.market
    }

    async fn healthz(&self) -> Response<Body> {
        match self.market.health().await {
            Ok(()) => http::text(StatusCode::OK, "ok\n"),
            Err(e) => {
                tracing::warn!(error = %e, "health check failed");
                http::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "a database is unreachable\n",
                )
            }
        }
    }

    async fn api_call(
        &self,
        req: Request<Incoming>,
        name: &'static str,
        params: Vec<String>,
    ) -> Response<Body> {
        let mutating = req.method() != Method::GET && req.method() != Method::HEAD;
        let query = match router::query_pairs(req.uri().query()) {
            Ok(q) => q,
            Err(field) => {
                return problem(&MarketError::invalid(field, "malformed percent-encoding"))
            }
        };
        let token = bearer(&req);
        let key = match idempotency_key(&req) {
            Ok(k) if mutating => k,
            Ok(_) => None,
            Err(e) => return problem(&e),
        };
        let body = if mutating {
            match http::read_body(req.into_body(), self.limits.body_bytes_max).await {
                Ok(b) => b,
                Err(BodyError::TooLarge(_)) => return problem(&MarketError::PayloadTooLarge),
                Err(BodyError::Io(e)) => return problem(&MarketError::invalid("body", e)),
            }
        } else {
            Bytes::new()
        };
        let call = Call {
            route: name,
            params,
            query,
            token,
            key,
            body,
            user: None,
        };
        let Some(key) = call.key.clone() else {
            return render(&A::dispatch(&self.market, &call).await);
        };
        let scope = match &call.token {
            Ok(t) => format!("t:{:016x}:{name}", digest(&[t.as_bytes()])),
            // Account creation and login: scoped by the username, never by anything derived
            // from the password.
            Err(_) => {
                let username = serde_json::from_slice::<serde_json::Value>(&call.body)
                    .ok()
                    .and_then(|v| {
                        v.get("username")
                            .and_then(|u| u.as_str())
                            .map(str::to_string)
                    })
                    .unwrap_or_default();
                format!("a:{:016x}:{name}", digest(&[username.as_bytes()]))
            }
        };
        // A route that needs a session checks it in the same linearizable read that looks up
        // the remembered response: one round trip for both. Routes without a session look up
        // with a stale (local, no quorum round) read; that is enough: on a miss the call runs
        // with request ids derived from the key, so a retry of a request whose answer is not
        // yet visible here still takes effect once and gets the same outputs.
        let mut call = call;
        if A::checks_session_itself(name) && call.token.is_ok() {
            // The Market looks the remembered response up in the session check it makes
            // anyway (the cart or feedback write, the purchase's cart read): no round trip
            // of our own first.
            let (outcome, remembered) = marketcore::with_remembered_lookup(
                &scope,
                &key,
                marketcore::with_idempotency_key(&scope, &key, A::dispatch(&self.market, &call)),
            )
            .await;
            if let Some(stored) = remembered {
                return replay(stored.status, stored.body);
            }
            return self.answer_and_remember(outcome, scope, key);
        }
        let looked_up = match &call.token {
            Ok(token) if A::needs_session(name) => self
                .market
                .authenticate_for_retry(token, A::ROLE, &scope, &key)
                .await
                .map(|(stored, user)| (stored, Some(user))),
            _ => self
                .market
                .idempotency_lookup_with(&scope, &key, ReadConsistency::Stale)
                .await
                .map(|stored| (stored, None)),
        };
        match looked_up {
            Ok((Some(stored), _)) => return replay(stored.status, stored.body),
            Ok((None, Some(Ok(user)))) => call.user = Some(user),
            // A refused token is answered as the Market would, and not remembered: the same
            // token can never become valid.
            Ok((None, Some(Err(e)))) => return problem(&e),
            Ok((None, None)) => {}
            Err(e) => return problem(&e),
        }
        let outcome =
            marketcore::with_idempotency_key(&scope, &key, A::dispatch(&self.market, &call)).await;
        self.answer_and_remember(outcome, scope, key)
    }

    /// Renders the outcome of a keyed call and queues it to be remembered (unless 5xx).
    fn answer_and_remember(&self, outcome: Outcome, scope: String, key: String) -> Response<Body> {
        let (status, body) = match &outcome {
            Ok((s, b)) => (
                s.as_u16(),
                b.clone().map(|b| b.to_vec()).unwrap_or_default(),
            ),
            Err(e) => (
                e.http_status(),
                serde_json::to_vec(&e.problem()).unwrap_or_default(),
            ),
        };
        if status < 500 {
            // Remember the answer for retries that come after the logs' duplicate tables have
            // forgotten the request (10 minutes). Off the response path and batched: until it
            // lands, the keyed request ids give a retry the same outcome.
            self.remember.push(scope, key, status, body);
        }
        render(&outcome)
    }
}

/// Rebuilds a remembered response.
fn replay(status: u16, body: Vec<u8>) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if status == StatusCode::NO_CONTENT || body.is_empty() {
        return http::empty(status);
    }
    let ct = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    http::with_body(status, ct, body)
}

#[async_trait]
impl<A: Api> Handler for ApiServer<A> {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let (name, resp) = match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => ("healthz", self.healthz().await),
            (&Method::GET, "/metrics") => ("metrics", {
                let mut text = self.metrics.render();
                text.push_str(&format!(
                    "# HELP remembered_responses_dropped_total Idempotent responses not remembered because the queue was full.\n\
                     # TYPE remembered_responses_dropped_total counter\n\
                     remembered_responses_dropped_total{{server=\"{}\"}} {}\n",
                    A::NAME,
                    self.remember.dropped()
                ));
                let deferred = self.market.deferred();
                text.push_str(&format!(
                    "# HELP purchase_confirmations_running Purchase confirmations sent after the purchase was answered, not yet done.\n\
                     # TYPE purchase_confirmations_running gauge\n\
                     purchase_confirmations_running{{server=\"{name}\"}} {}\n\
                     # HELP purchase_confirmations_failed_total Purchase confirmations that failed after the purchase was answered (the purchase sweeper sends them).\n\
                     # TYPE purchase_confirmations_failed_total counter\n\
                     purchase_confirmations_failed_total{{server=\"{name}\"}} {}\n",
                    deferred.running,
                    deferred.failed,
                    name = A::NAME,
                ));
                if let Some(extra) = &self.extra_metrics {
                    text.push_str(&extra().await);
                }
                http::with_body(StatusCode::OK, "text/plain; version=0.0.4", text)
            }),
            (&Method::GET, "/openapi.json") => (
                "openapi",
                http::with_body(StatusCode::OK, "application/json", self.openapi.clone()),
            ),
            _ => match router::route(&self.routes, req.method(), &path) {
                Matched::Found { name, params } => {
                    let params = params
                        .into_iter()
                        .map(|p| router::percent_decode(p).unwrap_or_else(|| p.to_string()))
                        .collect();
                    (name, self.api_call(req, name, params).await)
                }
                Matched::MethodNotAllowed { allow } => {
                    let mut resp = problem(&MarketError::MethodNotAllowed);
                    let allow = allow
                        .iter()
                        .map(Method::as_str)
                        .collect::<Vec<_>>()
                        .join(", ");
                    if let Ok(v) = HeaderValue::from_str(&allow) {
                        resp.headers_mut().insert(ALLOW, v);
                    }
                    ("other", resp)
                }
                Matched::NotFound => (
                    "other",
                    problem(&MarketError::NotFound(format!("route {path}"))),
                ),
            },
        };
        let status = resp.status().as_u16();
        let elapsed = started.elapsed();
        self.metrics.record(name, status, elapsed);
        tracing::debug!(
            server = A::NAME,
            route = name,
            status,
            elapsed_us = elapsed.as_micros() as u64,
            "request"
        );
        resp
    }

    fn timeout_response(&self) -> Response<Body> {
        problem(&MarketError::Unavailable("the request timed out".into()))
    }
}
