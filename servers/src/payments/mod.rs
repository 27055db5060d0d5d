//! The financial transactions service: a SOAP 1.1 endpoint that approves a configurable share
//! of payments (90% by default), repeatably when seeded.
//!
//! `POST /soap` with `SOAPAction: "ProcessPayment"` takes a [`soap::ProcessPayment`] envelope
//! and answers `ProcessPaymentResponse{Approved, TransactionId}`; `GET /soap?wsdl` returns the
//! WSDL. Malformed envelopes, a wrong SOAPAction, an oversized body or an unknown path get a
//! SOAP Fault (HTTP 500 for faults, as SOAP 1.1 over HTTP specifies; 404/405 for routing).
//! Every decision is drawn from one ChaCha stream, so `--seed` makes the sequence of
//! approvals repeatable.

pub mod client;
pub mod soap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::http::{self, Body, Handler};
use soap::{ProcessPaymentResponse, SoapError};

const SOAP_BODY_BYTES_MAX: usize = 16 * 1024;

/// Configuration of the payment service.
#[derive(Debug, Clone)]
pub struct PaymentsConfig {
    /// Probability of approving a payment, 0.0 to 1.0.
    pub approve_rate: f64,
    /// Seed for a repeatable sequence of decisions; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// The endpoint URL advertised in the WSDL.
    pub public_url: String,
    /// Delay before answering each payment (failure tests use it to catch a purchase
    /// mid-way); zero in production.
    pub delay: std::time::Duration,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            approve_rate: 0.9,
            seed: None,
            public_url: "http://127.0.0.1/soap".into(),
            delay: std::time::Duration::ZERO,
        }
    }
}

/// The SOAP payment service.
pub struct PaymentsService {
    config: PaymentsConfig,
    rng: Mutex<ChaCha8Rng>,
    next_tx: AtomicU64,
    approved: AtomicU64,
    declined: AtomicU64,
    faults: AtomicU64,
}

impl PaymentsService {
    /// Builds the service; `approve_rate` is clamped into `[0, 1]`.
    pub fn new(mut config: PaymentsConfig) -> Self {
        config.approve_rate = if config.approve_rate.is_nan() {
            0.0
        } else {
            config.approve_rate.clamp(0.0, 1.0)
        };
        let rng = match config.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_entropy(),
        };
        Self {
            config,
            rng: Mutex::new(rng),
            next_tx: AtomicU64::new(1),
            approved: AtomicU64::new(0),
            declined: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        }
    }

    /// Decides one payment.
    pub fn decide(&self, _req: &soap::ProcessPayment) -> ProcessPaymentResponse {
        let approved = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.gen_bool(self.config.approve_rate)
        };
        if approved {
            self.approved.fetch_add(1, Ordering::Relaxed);
        } else {
            self.declined.fetch_add(1, Ordering::Relaxed);
        }
        let n = self.next_tx.fetch_add(1, Ordering::Relaxed);
        ProcessPaymentResponse {
            approved,
            transaction_id: format!("tx-{n}"),
        }
    }

    fn fault(&self, err: &SoapError) -> Response<Body> {
        self.faults.fetch_add(1, Ordering::Relaxed);
        http::with_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/xml; charset=utf-8",
            soap::render_fault(err),
        )
    }

    fn metrics(&self) -> String {
        format!(
            "# TYPE payments_total counter\npayments_total{{outcome=\"approved\"}} {}\npayments_total{{outcome=\"declined\"}} {}\npayments_total{{outcome=\"fault\"}} {}\n",
            self.approved.load(Ordering::Relaxed),
            self.declined.load(Ordering::Relaxed),
            self.faults.load(Ordering::Relaxed)
        )
    }
}

fn soap_action_ok(value: Option<&HeaderValue>) -> bool {
    match value.and_then(|v| v.to_str().ok()) {
        Some(v) => v.trim().trim_matches('"') == soap::PROCESS_PAYMENT_ACTION,
        None => false,
    }
}

#[async_trait]
impl Handler for PaymentsService {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let wants_wsdl = req
            .uri()
            .query()
            .is_some_and(|q| q.eq_ignore_ascii_case("wsdl"));
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/soap") if wants_wsdl => http::with_body(
                StatusCode::OK,
                "text/xml; charset=utf-8",
                soap::wsdl(&self.config.public_url),
            ),
            (Method::GET, "/healthz") => http::text(StatusCode::OK, "ok\n"),
            (Method::GET, "/metrics") => {
                http::with_body(StatusCode::OK, "text/plain; version=0.0.4", self.metrics())
            }
            (Method::POST, "/soap") => {
                if !soap_action_ok(req.headers().get("soapaction")) {
                    return self.fault(&SoapError::UnknownOperation(
                        "missing or unknown SOAPAction".into(),
                    ));
                }
                let body = match http::read_body(req.into_body(), SOAP_BODY_BYTES_MAX).await {
                    Ok(b) => b,
                    Err(e) => return self.fault(&SoapError::Xml(e.to_string())),
                };
                let text = match std::str::from_utf8(&body) {
                    Ok(t) => t,
                    Err(_) => return self.fault(&SoapError::Xml("body is not UTF-8".into())),
                };
                match soap::parse_request(text) {
                    Ok(payment) => {
                        if !self.config.delay.is_zero() {
                            tokio::time::sleep(self.config.delay).await;
                        }
                        let resp = self.decide(&payment);
                        http::with_body(
                            StatusCode::OK,
                            "text/xml; charset=utf-8",
                            soap::render_response(&resp),
                        )
                    }
                    Err(e) => self.fault(&e),
                }
            }
            (_, "/soap") => http::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            _ => http::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
