//! The buyer server's side of the financial transactions service: a SOAP 1.1 client that
//! implements marketcore's [`PaymentService`].
//!
//! One pooled keep-alive HTTP/1.1 connection set to the service; each payment is one POST with
//! `SOAPAction: "ProcessPayment"`, bounded by a timeout. A Fault, a non-XML answer or a wrong
//! operation is a [`PaymentError::Protocol`]; a connection failure or timeout is
//! [`PaymentError::Unavailable`]. Either way the purchase is undone by the Market.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use marketcore::payment::{PaymentError, PaymentOutcome, PaymentRequest, PaymentService};
use replication::remote::{CallTimer, CallTimes};

use super::soap::{self, ProcessPayment};

const RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// A SOAP client of the payment service.
pub struct SoapPaymentClient {
    uri: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    calls: CallTimer,
}

impl SoapPaymentClient {
    /// A client of the service whose SOAP endpoint is `url` (e.g. `http://127.0.0.1:7200/soap`).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, PaymentError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| PaymentError::Protocol(format!("bad payment service URL {url}: {e}")))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            uri,
            client,
            timeout,
            calls: CallTimer::default(),
        })
    }

    /// How long the payments asked so far took, as the frontend waited for them.
    pub fn times(&self) -> CallTimes {
        self.calls.times()
    }

    async fn call(&self, envelope: String) -> Result<(u16, Bytes), PaymentError> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("text/xml; charset=utf-8"),
            )
            .header("SOAPAction", HeaderValue::from_static("\"ProcessPayment\""))
            .body(Full::new(Bytes::from(envelope)))
            .map_err(|e| PaymentError::Protocol(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| PaymentError::Unavailable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| PaymentError::Unavailable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

#[async_trait]
impl PaymentService for SoapPaymentClient {
    async fn process(&self, request: PaymentRequest) -> Result<PaymentOutcome, PaymentError> {
        let envelope = soap::render_request(&ProcessPayment {
            name: request.name,
            card_number: request.card_number,
            expiry: request.expiry,
            security_code: request.security_code,
            amount_cents: request.amount_cents,
        });
        let answer = self
            .calls
            .time(tokio::time::timeout(self.timeout, self.call(envelope)))
            .await;
        let (status, body) = answer.map_err(|_| {
            PaymentError::Unavailable(format!("no answer within {:?}", self.timeout))
        })??;
        let text = std::str::from_utf8(&body)
            .map_err(|_| PaymentError::Protocol("answer is not UTF-8".into()))?;
        match soap::parse_response(text) {
            Ok(r) => Ok(PaymentOutcome {
                approved: r.approved,
                transaction_id: r.transaction_id,
            }),
            Err(e) => Err(PaymentError::Protocol(format!("HTTP {status}: {e}"))),
        }
    }
}
