//! The financial transactions service, as the [`Market`](crate::market::Market) sees it.
//!
//! [`PaymentService`] is the seam: the servers implement it with a SOAP client of the
//! payment service (API.md); tests and embedded use take one of the implementations here.

use std::sync::Mutex;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the payment service is asked.
#[derive(Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    /// Card holder name.
    pub name: String,
    /// Card number (digits).
    pub card_number: String,
    /// `"MM/YY"`.
    pub expiry: String,
    /// CVV.
    pub security_code: String,
    /// Amount to charge, in cents.
    pub amount_cents: u64,
}

impl std::fmt::Debug for PaymentRequest {
    /// Never prints the card number or the security code.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentRequest")
            .field("name", &self.name)
            .field("expiry", &self.expiry)
            .field("amount_cents", &self.amount_cents)
            .finish_non_exhaustive()
    }
}

/// The service's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentOutcome {
    /// True when the payment was approved.
    pub approved: bool,
    /// The service's transaction id (also for declines).
    pub transaction_id: String,
}

/// The service could not be asked or did not answer sensibly; the purchase is undone and
/// reported as `unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The service could not be reached in time.
    #[error("payment service unavailable: {0}")]
    Unavailable(String),
    /// The service answered with something that is not a valid answer (e.g. a SOAP Fault).
    #[error("payment service protocol error: {0}")]
    Protocol(String),
}

/// A financial transactions service.
#[async_trait]
pub trait PaymentService: Send + Sync + 'static {
    /// Asks for `request.amount_cents` to be charged to the card.
    async fn process(&self, request: PaymentRequest) -> Result<PaymentOutcome, PaymentError>;
}

/// Approves every payment.
#[derive(Debug, Default)]
pub struct AlwaysApprove {
    counter: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl PaymentService for AlwaysApprove {
    async fn process(&self, _request: PaymentRequest) -> Result<PaymentOutcome, PaymentError> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(PaymentOutcome {
            approved: true,
            transaction_id: format!("approve-{}", n + 1),
        })
    }
}

/// Declines every payment.
#[derive(Debug, Default)]
pub struct AlwaysDecline;

#[async_trait]
impl PaymentService for AlwaysDecline {
    async fn process(&self, _request: PaymentRequest) -> Result<PaymentOutcome, PaymentError> {
        Ok(PaymentOutcome {
            approved: false,
            transaction_id: "declined".into(),
        })
    }
}

/// Fails every payment with [`PaymentError::Unavailable`] (tests of the failure path).
#[derive(Debug, Default)]
pub struct AlwaysFail;

#[async_trait]
impl PaymentService for AlwaysFail {
    async fn process(&self, _request: PaymentRequest) -> Result<PaymentOutcome, PaymentError> {
        Err(PaymentError::Unavailable("always fails".into()))
    }
}

/// Approves with a given probability, from a seeded random sequence (repeatable).
#[derive(Debug)]
pub struct SeededApproveRate {
    approve_rate: f64,
    rng: Mutex<StdRng>,
    counter: std::sync::atomic::AtomicU64,
}

impl SeededApproveRate {
    /// Approves with probability `approve_rate` (clamped to 0..=1), seeded with `seed`.
    pub fn new(approve_rate: f64, seed: u64) -> Self {
        Self {
            approve_rate: approve_rate.clamp(0.0, 1.0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl PaymentService for SeededApproveRate {
    async fn process(&self, _request: PaymentRequest) -> Result<PaymentOutcome, PaymentError> {
        let approved = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.gen_bool(self.approve_rate)
        };
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(PaymentOutcome {
            approved,
            transaction_id: format!("seeded-{}", n + 1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> PaymentRequest {
        PaymentRequest {
            name: "A".into(),
            card_number: "4111111111111111".into(),
            expiry: "12/30".into(),
            security_code: "123".into(),
            amount_cents: 5,
        }
    }

    #[tokio::test]
    async fn implementations() {
        assert!(
            AlwaysApprove::default()
                .process(req())
                .await
                .unwrap()
                .approved
        );
        assert!(!AlwaysDecline.process(req()).await.unwrap().approved);
        assert!(AlwaysFail.process(req()).await.is_err());
        let run = |seed| async move {
            let s = SeededApproveRate::new(0.9, seed);
            let mut v = Vec::new();
            for _ in 0..200 {
                v.push(s.process(req()).await.unwrap().approved);
            }
            v
        };
        let a = run(7).await;
        assert_eq!(a, run(7).await);
        let approved = a.iter().filter(|x| **x).count();
        assert!((150..=200).contains(&approved), "{approved}");
        assert!(!format!("{:?}", req()).contains("4111"));
    }
}
