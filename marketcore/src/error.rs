//! The one error type of the domain, [`MarketError`], and its mapping onto API.md's table of
//! status codes and `code` strings.
//!
//! Every variant is one row of that table, so an HTTP server turns any error into a response
//! with [`MarketError::http_status`] and [`MarketError::problem`] and nothing else. The type is
//! serializable because state machines return domain errors through the replicated log (the
//! output of a command is `Result<_, MarketError>`).
//!
//! Errors of the replicated log ([`LogError`]) all become [`MarketError::Unavailable`]: the
//! request may be retried; with an `Idempotency-Key`, retrying is safe.

use replication::LogError;
use serde::{Deserialize, Serialize};

use crate::api::Problem;

/// A domain error; one variant per `code` of API.md.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MarketError {
    /// 400 `invalid_argument`: malformed input or a failed validation rule.
    #[error("invalid `{field}`: {detail}")]
    InvalidArgument {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// 401 `unauthenticated`: bad credentials, or a missing, unknown, expired or wrong-role token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// 402 `payment_declined`: the financial transactions service said no.
    #[error("the payment was declined")]
    PaymentDeclined,
    /// 403 `forbidden`: a seller acting on another seller's item.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 404 `not_found`: unknown item, seller or route.
    #[error("not found: {0}")]
    NotFound(String),
    /// 405 `method_not_allowed`: a known route with the wrong method (HTTP layer only).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409 `username_taken`.
    #[error("username `{0}` is taken")]
    UsernameTaken(String),
    /// 409 `insufficient_quantity`: not enough units of `item`.
    #[error("insufficient quantity of item {item}")]
    InsufficientQuantity {
        /// The item id, `"<category>-<serial>"`.
        item: String,
    },
    /// 409 `cart_empty`: a purchase of an empty cart.
    #[error("the cart is empty")]
    CartEmpty,
    /// 409 `not_purchased`: feedback on an item the buyer never bought.
    #[error("item {item} was never purchased by this buyer")]
    NotPurchased {
        /// The item id.
        item: String,
    },
    /// 409 `feedback_exists`: a second feedback on the same item.
    #[error("feedback on item {item} was already given")]
    FeedbackExists {
        /// The item id.
        item: String,
    },
    /// 413 `payload_too_large`: a body over 64 KiB (HTTP layer only).
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// 503 `unavailable`: no quorum in time, or a dependency failed; nothing was half-applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl MarketError {
    /// Shorthand for [`MarketError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// API.md's `code` string.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::PaymentDeclined => "payment_declined",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UsernameTaken(_) => "username_taken",
            Self::InsufficientQuantity { .. } => "insufficient_quantity",
            Self::CartEmpty => "cart_empty",
            Self::NotPurchased { .. } => "not_purchased",
            Self::FeedbackExists { .. } => "feedback_exists",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// API.md's HTTP status.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidArgument { .. } => 400,
            Self::Unauthenticated(_) => 401,
            Self::PaymentDeclined => 402,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::MethodNotAllowed => 405,
            Self::UsernameTaken(_)
            | Self::InsufficientQuantity { .. }
            | Self::CartEmpty
            | Self::NotPurchased { .. }
            | Self::FeedbackExists { .. } => 409,
            Self::PayloadTooLarge => 413,
            Self::Unavailable(_) => 503,
        }
    }

    /// The RFC 9457 problem document for this error.
    pub fn problem(&self) -> Problem {
        let status = self.http_status();
        Problem {
            type_: "about:blank".into(),
            title: reason_phrase(status).into(),
            status,
            code: self.code().into(),
            detail: self.to_string(),
        }
    }
}

/// The standard reason phrase of the statuses API.md uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl From<LogError> for MarketError {
    fn from(e: LogError) -> Self {
        MarketError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_follow_the_table() {
        let cases = [
            (
                MarketError::invalid("name", "empty"),
                400,
                "invalid_argument",
            ),
            (
                MarketError::Unauthenticated("x".into()),
                401,
                "unauthenticated",
            ),
            (MarketError::PaymentDeclined, 402, "payment_declined"),
            (MarketError::Forbidden("x".into()), 403, "forbidden"),
            (MarketError::NotFound("x".into()), 404, "not_found"),
            (MarketError::MethodNotAllowed, 405, "method_not_allowed"),
            (
                MarketError::UsernameTaken("x".into()),
                409,
                "username_taken",
            ),
            (
                MarketError::InsufficientQuantity { item: "1-1".into() },
                409,
                "insufficient_quantity",
            ),
            (MarketError::CartEmpty, 409, "cart_empty"),
            (
                MarketError::NotPurchased { item: "1-1".into() },
                409,
                "not_purchased",
            ),
            (
                MarketError::FeedbackExists { item: "1-1".into() },
                409,
                "feedback_exists",
            ),
            (MarketError::PayloadTooLarge, 413, "payload_too_large"),
            (MarketError::Unavailable("x".into()), 503, "unavailable"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.http_status(), status, "{e:?}");
            assert_eq!(e.code(), code);
            let p = e.problem();
            assert_eq!(p.status, status);
            assert_eq!(p.code, code);
            assert_eq!(p.type_, "about:blank");
            assert_ne!(p.title, "Error");
        }
        let p = MarketError::InsufficientQuantity {
            item: "3-17".into(),
        }
        .problem();
        assert!(p.detail.contains("3-17"));
        let p = MarketError::invalid("price_cents", "too big").problem();
        assert!(p.detail.contains("price_cents"));
        assert_eq!(
            MarketError::from(LogError::Unavailable("x".into())).code(),
            "unavailable"
        );
    }
}
