//! Transport: how replicas and frontends talk.
//!
//! * [`network`]: the [`Network`] trait every protocol is written against.
//! * [`quic`]: QUIC with mutual TLS (quinn, rustls, rcgen) for production.
//! * [`sim`]: a deterministic, seeded simulated network for tests.
//! * [`certs`]: the cluster CA and per-node certificates.
//! * [`loopback`]: a whole group's certificates, sockets and configurations on 127.0.0.1
//!   (tests, benchmarks, examples).
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//! use transport::{certs, Bytes, Incoming, Network, PeerInfo, QuicConfig, QuicNetwork};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Once, for the whole cluster (what `market certs` does):
//! let dir = std::path::Path::new("certs");
//! certs::generate_cluster(dir, &["customer-db-0", "customer-db-1", "seller-0"])?;
//!
//! // On each node: the same peer table everywhere, its own identity.
//! let mut peers = BTreeMap::new();
//! peers.insert(0, PeerInfo::server("customer-db-0", "127.0.0.1:7000".parse()?));
//! peers.insert(1, PeerInfo::server("customer-db-1", "127.0.0.1:7001".parse()?));
//! peers.insert(100, PeerInfo::client_only("seller-0")); // a frontend: dials, never dialled
//! let identity = certs::load_identity(dir, "customer-db-0")?;
//! let net = QuicNetwork::bind(QuicConfig::new(0, identity, "127.0.0.1:7000".parse()?, peers))?;
//!
//! net.send(1, Bytes::from_static(b"one-way"))?;
//! let answer = net.call(1, Bytes::from_static(b"request"), Duration::from_secs(1)).await?;
//! while let Some(incoming) = net.recv().await {
//!     match incoming {
//!         Incoming::Message { from, payload } => { /* ... */ }
//!         Incoming::Request { from, payload, responder } => responder.respond(payload),
//!     }
//! }
//! # let _ = answer;
//! # Ok(())
//! # }
//! ```

pub mod certs;
pub mod liveness;
pub mod loopback;
pub mod network;
pub mod quic;
pub mod sim;

/// The payload type of every [`Network`] operation (re-exported so users need not depend on
/// `bytes` themselves).
pub use bytes::Bytes;
pub use network::{decode, encode, Incoming, Network, NodeId, Responder, TransportError};
pub use quic::{PeerInfo, QuicConfig, QuicError, QuicNetwork};
