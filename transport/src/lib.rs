//! Transport: how replicas and frontends talk.
//!
//! * [`network`]: the [`Network`] trait every protocol is written against.
//! * `quic`: QUIC with mutual TLS (quinn, rustls, rcgen) for production.
//! * `sim`: a deterministic, seeded simulated network for tests.
//! * `certs`: the cluster CA and per-node certificates.

pub mod network;

pub use network::{decode, encode, Incoming, Network, NodeId, Responder, TransportError};
