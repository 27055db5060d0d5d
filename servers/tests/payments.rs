//! The SOAP payment service over real HTTP on loopback: well-formed requests, faults for
//! garbage, the WSDL, and the approval rate with a seed.

use std::sync::Arc;
use std::time::Duration;

use marketcore::payment::{PaymentError, PaymentRequest, PaymentService};
use servers::http::{self, Limits};
use servers::payments::client::SoapPaymentClient;
use servers::payments::{PaymentsConfig, PaymentsService};
use tokio::sync::oneshot;

async fn start(config: PaymentsConfig) -> (String, oneshot::Sender<()>) {
    let (listener, addr) = http::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let service = Arc::new(PaymentsService::new(config));
    tokio::spawn(http::serve(listener, service, Limits::default(), async {
        let _ = stopped.await;
    }));
    (format!("http://{addr}"), stop)
}

fn request(amount_cents: u64) -> PaymentRequest {
    PaymentRequest {
        name: "Ada".into(),
        card_number: "4111111111111111".into(),
        expiry: "12/30".into(),
        security_code: "123".into(),
        amount_cents,
    }
}

async fn post(base: &str, action: Option<&str>, body: &str) -> (u16, String) {
    // A raw HTTP/1.1 request, so the test controls every header and byte.
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let action_header = action
        .map(|a| format!("SOAPAction: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /soap HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml\r\n{action_header}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out)
}

#[tokio::test]
async fn answers_a_well_formed_request() {
    let (base, _stop) = start(PaymentsConfig {
        approve_rate: 1.0,
        seed: Some(1),
        ..Default::default()
    })
    .await;
    let client =
        SoapPaymentClient::new(&format!("{base}/soap"), Duration::from_secs(5)).expect("client");
    let outcome = client.process(request(2500)).await.expect("process");
    assert!(outcome.approved);
    assert!(outcome.transaction_id.starts_with("tx-"));
}

#[tokio::test]
async fn garbage_gets_a_fault_and_the_service_stays_up() {
    let (base, _stop) = start(PaymentsConfig {
        approve_rate: 1.0,
        seed: Some(1),
        ..Default::default()
    })
    .await;
    for body in [
        "garbage",
        "<a>",
        "<?xml version='1.0'?><!DOCTYPE a [<!ENTITY x 'y'>]><a>&x;</a>",
        "",
    ] {
        let (status, text) = post(&base, Some("\"ProcessPayment\""), body).await;
        assert_eq!(status, 500, "{body:?}");
        assert!(
            text.contains("<soap:Fault>") && text.contains("soap:Client"),
            "{text}"
        );
    }
    let (status, text) = post(&base, None, "<x/>").await;
    assert_eq!(status, 500);
    assert!(text.contains("SOAPAction"));
    let huge = "x".repeat(100_000);
    let (status, _) = post(&base, Some("ProcessPayment"), &huge).await;
    assert_eq!(status, 500);
    // Still serving.
    let client =
        SoapPaymentClient::new(&format!("{base}/soap"), Duration::from_secs(5)).expect("client");
    assert!(client.process(request(1)).await.expect("process").approved);
}

#[tokio::test]
async fn serves_the_wsdl() {
    let (base, _stop) = start(PaymentsConfig::default()).await;
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(
            format!("GET /soap?wsdl HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 200"));
    assert!(
        out.contains("<definitions")
            && out.contains("ProcessPayment")
            && out.contains("urn:market:payments")
    );
}

#[tokio::test]
async fn approves_about_ninety_percent_repeatably_with_a_seed() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (base, _stop) = start(PaymentsConfig {
            approve_rate: 0.9,
            seed: Some(42),
            ..Default::default()
        })
        .await;
        let client = SoapPaymentClient::new(&format!("{base}/soap"), Duration::from_secs(5))
            .expect("client");
        let mut decisions = Vec::new();
        for i in 0..1000u64 {
            decisions.push(
                client
                    .process(request(i + 1))
                    .await
                    .expect("process")
                    .approved,
            );
        }
        runs.push(decisions);
    }
    assert_eq!(runs[0], runs[1], "the same seed gives the same decisions");
    let approved = runs[0].iter().filter(|a| **a).count();
    assert!(
        (850..=950).contains(&approved),
        "approved {approved} of 1000"
    );
    let (base, _stop) = start(PaymentsConfig {
        approve_rate: 0.9,
        seed: Some(43),
        ..Default::default()
    })
    .await;
    let client =
        SoapPaymentClient::new(&format!("{base}/soap"), Duration::from_secs(5)).expect("client");
    let mut other = Vec::new();
    for i in 0..1000u64 {
        other.push(
            client
                .process(request(i + 1))
                .await
                .expect("process")
                .approved,
        );
    }
    assert_ne!(other, runs[0], "another seed gives another sequence");
}

#[tokio::test]
async fn an_unreachable_service_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = SoapPaymentClient::new(&format!("http://{addr}/soap"), Duration::from_secs(2))
        .expect("client");
    assert!(matches!(
        client.process(request(1)).await,
        Err(PaymentError::Unavailable(_))
    ));
}
