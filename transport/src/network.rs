//! The `Network` abstraction: the seam between protocols and the wire.
//!
//! Replication protocols and database clients are written against [`Network`] only. Two
//! implementations exist: QUIC with mutual TLS for production ([`crate::quic`]) and a
//! deterministic simulated network for tests ([`crate::sim`]).
//!
//! A network carries opaque byte payloads between numbered nodes in three shapes:
//!
//! * **one-way messages** ([`Network::send`]): fire-and-forget, may be lost, duplicated or
//!   reordered (protocols must tolerate that); small ones may travel as QUIC datagrams;
//! * **RPC** ([`Network::call`]): a request and exactly one response, or an error, within a
//!   deadline;
//! * **incoming traffic** ([`Network::recv`]): one stream of [`Incoming`] events, messages and
//!   requests alike; a request carries a [`Responder`] that sends its answer back.
//!
//! Typed helpers ([`encode`], [`decode`]) frame values with postcard.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;

/// A node's numeric identity within one cluster (replica id, or a frontend's id).
pub type NodeId = u64;

/// Errors a network operation can report.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The destination is not a known peer.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The peer could not be reached (refused, reset, closed, or not yet connected).
    #[error("peer {0} unreachable: {1}")]
    Unreachable(NodeId, String),
    /// No response arrived before the deadline.
    #[error("deadline of {0:?} exceeded")]
    Timeout(Duration),
    /// A frame was larger than the configured maximum; it was refused, never allocated.
    #[error("frame of {size_bytes} bytes exceeds the maximum of {size_bytes_max}")]
    FrameTooLarge {
        /// Size of the refused frame.
        size_bytes: usize,
        /// Configured maximum.
        size_bytes_max: usize,
    },
    /// The local send queue towards that peer is full (backpressure).
    #[error("send queue to peer {0} is full")]
    QueueFull(NodeId),
    /// The remote side dropped the request without answering.
    #[error("request dropped by peer {0}")]
    Dropped(NodeId),
    /// The local network has been shut down.
    #[error("network shut down")]
    Shutdown,
    /// A payload could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
}

/// Answers one incoming RPC request. Dropping it without responding makes the caller see
/// [`TransportError::Dropped`].
#[derive(Debug)]
pub struct Responder {
    tx: oneshot::Sender<Bytes>,
}

impl Responder {
    /// Makes a responder and the receiver its answer arrives on (for implementations).
    pub fn new() -> (Self, oneshot::Receiver<Bytes>) {
        let (tx, rx) = oneshot::channel();
        (Self { tx }, rx)
    }

    /// Sends the response. Errors are ignored: a caller that gave up no longer cares.
    pub fn respond(self, response: Bytes) {
        let _ = self.tx.send(response);
    }
}

/// One event delivered to a node.
#[derive(Debug)]
pub enum Incoming {
    /// A one-way message.
    Message {
        /// Sender.
        from: NodeId,
        /// Payload.
        payload: Bytes,
    },
    /// An RPC request; answer through `responder`.
    Request {
        /// Caller.
        from: NodeId,
        /// Payload.
        payload: Bytes,
        /// Where the single response goes.
        responder: Responder,
    },
}

/// A node's attachment to the cluster network.
#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// This node's id.
    fn local_id(&self) -> NodeId;

    /// Queues a one-way message to `to`. Never blocks: a full queue is
    /// [`TransportError::QueueFull`], and delivery is best-effort.
    fn send(&self, to: NodeId, payload: Bytes) -> Result<(), TransportError>;

    /// Sends a request to `to` and waits for its response, at most `deadline`.
    async fn call(
        &self,
        to: NodeId,
        request: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, TransportError>;

    /// Waits for the next incoming message or request; `None` once the network is shut down.
    async fn recv(&self) -> Option<Incoming>;

    /// Reports of peers whose process was seen to die (each report once per death), for
    /// protocols that can act sooner than their timeouts. `None` (the default) when this
    /// network has no such detector; see [`crate::liveness`] for the QUIC network's.
    fn subscribe_peer_down(&self) -> Option<tokio::sync::broadcast::Receiver<NodeId>> {
        None
    }
}

/// Encodes a value with postcard.
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, TransportError> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|e| TransportError::Codec(e.to_string()))
}

/// Decodes a postcard value; malformed input is an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TransportError> {
    postcard::from_bytes(bytes).map_err(|e| TransportError::Codec(e.to_string()))
}
