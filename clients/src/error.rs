//! The one error type of the client library, [`ClientError`].
//!
//! Strategy: an answer the server chose to give (a problem document) is
//! [`ClientError::Api`] and is never retried, except `503 unavailable`, which makes the client
//! try the next replica. Everything that means "no replica gave an answer" ends as
//! [`ClientError::Unavailable`] (every attempt failed) or [`ClientError::Timeout`] (the call's
//! overall deadline passed). The rest are local mistakes (bad URL, not logged in) or a response
//! that does not fit the API ([`ClientError::Decode`], [`ClientError::Status`]).

use std::time::Duration;

use crate::api::Problem;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an RFC 9457 problem document (any status other than a 503 that
    /// was retried away). `status`, `code` and `detail` are in the problem.
    #[error("{} {}: {}", .0.status, .0.code, .0.detail)]
    Api(Problem),
    /// The server answered with an error status whose body is not a problem document.
    #[error("unexpected HTTP status {status}: {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The body, lossily decoded as UTF-8 and truncated to 512 bytes.
        body: String,
    },
    /// Every attempt on every replica failed (connection refused or reset, per-attempt timeout,
    /// or 502/503/504), for as many rounds as configured.
    #[error("no replica answered ({attempts} attempts); last error: {last}")]
    Unavailable {
        /// Attempts made, over all replicas and rounds.
        attempts: u32,
        /// The last failure, for humans.
        last: String,
    },
    /// The call's overall deadline passed before any replica gave a usable answer.
    #[error("no answer within the call deadline of {} ms", .0.as_millis())]
    Timeout(Duration),
    /// A success response whose body is not the JSON the API promises.
    #[error("cannot decode the response body: {0}")]
    Decode(#[from] serde_json::Error),
    /// A server base URL that is not `http://IP:port` (or `http://host:port`).
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The call needs a session and the client holds no token: log in first.
    #[error("not logged in")]
    NotLoggedIn,
    /// An argument the client cannot even put into a request (e.g. a token with control
    /// characters).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The problem document, for [`ClientError::Api`].
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Api(p) => Some(p),
            _ => None,
        }
    }

    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api(p) => Some(p.status),
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for a 401 answer and for [`ClientError::NotLoggedIn`]: the caller must log in.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Self::NotLoggedIn) || self.status() == Some(401)
    }

    /// A stable machine-readable code: the problem's `code` for [`ClientError::Api`], else one
    /// of `unexpected_status`, `unavailable`, `timeout`, `decode_error`, `invalid_url`,
    /// `unauthenticated` (not logged in) and `invalid_argument`.
    pub fn code(&self) -> &str {
        match self {
            Self::Api(p) => &p.code,
            Self::Status { .. } => "unexpected_status",
            Self::Unavailable { .. } => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Decode(_) => "decode_error",
            Self::InvalidUrl { .. } => "invalid_url",
            Self::NotLoggedIn => "unauthenticated",
            Self::InvalidArgument(_) => "invalid_argument",
        }
    }

    /// A human-readable detail: the problem's `detail` for [`ClientError::Api`], else the
    /// error's message.
    pub fn detail(&self) -> String {
        match self {
            Self::Api(p) => p.detail.clone(),
            other => other.to_string(),
        }
    }
}
