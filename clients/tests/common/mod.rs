//! A tiny fake HTTP server for the client tests: records every request and answers with a
//! test-chosen handler.

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub key: Option<String>,
    pub auth: Option<String>,
    pub body: String,
}

/// What the fake server answers.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
    pub retry_after: Option<&'static str>,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Reply {
            status,
            body: body.to_owned(),
            delay: Duration::ZERO,
            retry_after: None,
        }
    }

    pub fn problem(status: u16, code: &str, detail: &str) -> Self {
        Self::json(
            status,
            &format!(
                r#"{{"type":"about:blank","title":"x","status":{status},"code":"{code}","detail":"{detail}"}}"#
            ),
        )
    }
}

pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A running fake server.
pub struct Fake {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Starts a fake server on 127.0.0.1:0.
pub async fn spawn(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Fake {
    let handler: Handler = Arc::new(handler);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    let seen = seen.clone();
                    async move {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .map(|v| v.to_str().unwrap().to_owned())
                        };
                        let mut s = Seen {
                            method: req.method().to_string(),
                            path: req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            key: header("idempotency-key"),
                            auth: header("authorization"),
                            body: String::new(),
                        };
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        s.body = String::from_utf8_lossy(&body).into_owned();
                        seen.lock().unwrap().push(s.clone());
                        let reply = handler(&s);
                        if !reply.delay.is_zero() {
                            tokio::time::sleep(reply.delay).await;
                        }
                        let ctype = if reply.status >= 400 {
                            "application/problem+json"
                        } else {
                            "application/json"
                        };
                        let mut resp = Response::builder()
                            .status(reply.status)
                            .header("content-type", ctype);
                        if let Some(ra) = reply.retry_after {
                            resp = resp.header("retry-after", ra);
                        }
                        Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(reply.body))).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Fake { url, seen }
}

/// A URL on which nothing listens (a port bound, then released).
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// A server that accepts connections and closes them without answering; returns its URL and
/// the number of connections it accepted.
pub async fn spawn_hangup() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            *c.lock().unwrap() += 1;
            // Read a little so the request is on the wire, then hang up.
            let mut buf = [0u8; 64];
            let _ = stream.readable().await;
            let _ = stream.try_read(&mut buf);
            drop(stream);
        }
    });
    (url, count)
}

pub const ITEM: &str = r#"{"id":"3-17","name":"lamp","category":3,"keywords":["desk"],"condition":"used","price_cents":1250,"quantity":4,"seller_id":7,"feedback":{"up":0,"down":0}}"#;
