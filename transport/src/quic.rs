//! QUIC transport with mutual TLS: the production [`Network`].
//!
//! # Connections
//!
//! Every node owns one quinn [`Endpoint`] bound to [`QuicConfig::bind_addr`], acting as both
//! server (if peers can reach it) and client. A node keeps at most one *outgoing* connection
//! per peer and reuses it for every call and message to that peer; the peer answers requests
//! on that same connection. Two servers that talk both ways therefore hold two connections, one
//! per direction; a frontend (client-only node, `addr: None` in the peer table) only ever dials.
//!
//! # Identity (mutual TLS)
//!
//! The cluster CA ([`crate::certs`]) signs one certificate per node name. Both sides present
//! their certificate:
//!
//! * the **client** verifies the server's certificate against the CA, with server name = the
//!   name the peer table has for the node it dials (rustls' WebPKI verifier);
//! * the **server** verifies the client's certificate against the CA
//!   (`WebPkiClientVerifier`: a certificate from another CA fails the handshake), then reads
//!   the client's *hello* — the first 12 bytes of the client's first unidirectional stream:
//!   the magic `MKT1` and the client's claimed [`NodeId`] (u64, big-endian) — and checks that
//!   the claimed id is in its peer table and that the client's certificate is valid for the
//!   name the table has for that id. Otherwise it closes the connection with application
//!   code [`CLOSE_IDENTITY_REJECTED`] and the client sees [`TransportError::Unreachable`].
//!   No request or message is served before the hello has been checked. The hello costs no
//!   round trip: it travels in the same flight as the first request.
//!
//! The peer table ([`QuicConfig::peers`]) therefore lists every identity allowed to connect,
//! with `addr: Some(..)` for nodes that listen and `None` for client-only nodes.
//!
//! # Framing
//!
//! Every payload travels as one frame: a 4-byte big-endian length followed by that many bytes.
//! A receiver reads the length first and refuses a frame longer than
//! [`QuicConfig::frame_size_bytes_max`] *before allocating* (it stops/resets the stream with
//! code [`STREAM_FRAME_TOO_LARGE`]); the connection and the server stay up. Below the limit,
//! memory grows with the bytes that actually arrive (bounded by QUIC flow control), and a
//! payload that arrives in one chunk is handed over without a copy (so it may share its
//! allocation with the rest of its UDP datagram until dropped).
//!
//! * **RPC**: one bidirectional stream per request. The client writes one frame and finishes
//!   its side; the server writes one response frame and finishes, or resets the stream with
//!   [`STREAM_DROPPED`] if the application dropped the [`Responder`]. The caller awaits on its
//!   own task (no task hop on the calling side); on the serving side one small task per request
//!   carries the request to [`Network::recv`] and the answer back.
//! * **One-way messages**: a long-lived unidirectional stream per connection (the stream that
//!   starts with the hello), fed by a per-peer writer task from a bounded queue
//!   ([`QuicConfig::send_queue_len_max`]; full = [`TransportError::QueueFull`]). The writer
//!   batches everything queued into one write. Messages are best-effort: those queued while a
//!   peer is unreachable are dropped. If the stream breaks, the writer opens a new one.
//!   Stream messages arrive in order; with [`QuicConfig::datagram_size_bytes_max`] > 0, small
//!   messages go as QUIC datagrams instead (no framing: one datagram, one message), which
//!   avoids head-of-line blocking behind a lost packet but may lose or reorder them.
//!
//! A node may `send` to and `call` itself: the message or request goes straight into its own
//! incoming queue, with no connection involved.
//!
//! # Reconnects and backoff
//!
//! A connection that closes (peer restart, idle timeout, reset) is forgotten and the next use
//! dials again. A failed dial (bounded by [`QuicConfig::connect_timeout`]) starts an
//! exponential backoff, from [`QuicConfig::backoff_min`] doubling up to
//! [`QuicConfig::backoff_max`]; while it runs, calls and sends to that peer fail at once with
//! [`TransportError::Unreachable`] instead of waiting for their deadline. A successful dial
//! resets the backoff, and so does an authenticated connection *from* that peer (its process
//! is evidently up and listening again). A call whose deadline is shorter than the dial
//! abandons the dial and returns [`TransportError::Timeout`] without starting a backoff.
//!
//! Each endpoint's stateless-reset key is derived from the node's private key, so a node
//! restarted on the same address answers packets of its previous incarnation's connections
//! with a *stateless reset* the peer recognises: the peer's calls on the dead connection fail
//! promptly with `Unreachable` and the next call reconnects, instead of waiting for the idle
//! timeout. (QUIC on quinn cannot observe ICMP "port unreachable"; a dial to a port nobody
//! listens on fails after `connect_timeout`, then backoff applies.)
//!
//! A *killed* peer process is noticed sooner still, by a liveness sentinel
//! ([`crate::liveness`], [`QuicConfig::liveness`]): a TCP connection to the peer's QUIC port
//! number, opened with the first use of the peer, that its kernel closes when the process
//! dies. The network then closes its connection to that peer (calls waiting on it fail with
//! `Unreachable` at once), backs off dialling it for `backoff_min`, and reports the death to
//! [`Network::subscribe_peer_down`] subscribers.
//!
//! # Runtime
//!
//! [`QuicNetwork::bind`] must run inside a tokio runtime; the endpoint driver and the small
//! tasks of this module are spawned on that runtime. A current-thread runtime is clearly
//! fastest for small RPCs on a 2-core machine (measured with `benches/src/rpc.rs`, two
//! processes on loopback: p50 about 23 µs and 200,000-300,000 RPC/s with 64 in flight,
//! against p50 65-140 µs and 40,000-70,000 RPC/s on the multi-thread runtime).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::{broadcast, mpsc, watch};

use crate::certs::NodeIdentity;
use crate::liveness;
use crate::network::{Incoming, Network, NodeId, Responder, TransportError};

/// ALPN protocol id of this transport.
pub const ALPN: &[u8] = b"market/1";
/// Magic at the start of the client hello.
pub const HELLO_MAGIC: &[u8; 4] = b"MKT1";
/// Connection close code: the client's identity (claimed id vs certificate) was refused.
pub const CLOSE_IDENTITY_REJECTED: u32 = 0x10;
/// Connection close code: the client sent no valid hello.
pub const CLOSE_BAD_HELLO: u32 = 0x11;
/// Connection close code: the node is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 0x0;
/// Connection close code: our liveness sentinel saw the peer process die.
pub const CLOSE_PEER_GONE: u32 = 0x12;
/// Stream reset/stop code: a frame exceeded the receiver's maximum.
pub const STREAM_FRAME_TOO_LARGE: u32 = 0x20;
/// Stream reset code: the application dropped the request without answering.
pub const STREAM_DROPPED: u32 = 0x21;

const HELLO_LEN: usize = 12;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_BATCH_MAX: usize = 256;

/// Where a peer listens, and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node name (its certificate's DNS SAN), e.g. `customer-db-0`.
    pub name: String,
    /// Where it accepts connections; `None` for a client-only node (a frontend).
    pub addr: Option<SocketAddr>,
}

impl PeerInfo {
    /// A peer that listens on `addr`.
    pub fn server(name: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            name: name.into(),
            addr: Some(addr),
        }
    }

    /// A client-only peer: it may connect to us, we never dial it.
    pub fn client_only(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            addr: None,
        }
    }
}

/// Configuration of a [`QuicNetwork`]. Build with [`QuicConfig::new`] and adjust the public
/// fields; the defaults are listed on each field.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// This node's id. Its name is `identity.name`.
    pub local_id: NodeId,
    /// CA certificate, own certificate and key (see [`crate::certs::load_identity`]).
    pub identity: NodeIdentity,
    /// UDP address to bind; port 0 picks an ephemeral port (read it back with
    /// [`QuicNetwork::local_addr`]).
    pub bind_addr: SocketAddr,
    /// Every identity allowed to connect and every node we may dial. Names must be unique.
    /// An entry for `local_id` itself is allowed and ignored.
    pub peers: BTreeMap<NodeId, PeerInfo>,
    /// Largest frame accepted or sent, in bytes (default 16 MiB).
    pub frame_size_bytes_max: usize,
    /// One-way messages queued per peer before `send` returns `QueueFull` (default 4096).
    pub send_queue_len_max: usize,
    /// Incoming events buffered before readers are back-pressured (default 4096).
    pub incoming_queue_len_max: usize,
    /// Upper bound of one dial attempt (default 1 s; also bounded by the call's deadline).
    pub connect_timeout: Duration,
    /// First backoff after a failed dial (default 20 ms).
    pub backoff_min: Duration,
    /// Largest backoff (default 2 s).
    pub backoff_max: Duration,
    /// A connection with no traffic for this long is dead (default 10 s).
    pub idle_timeout: Duration,
    /// Keep-alive interval of established connections (default 2 s).
    pub keep_alive_interval: Duration,
    /// The round-trip time a new connection assumes until it has measured one (default 10
    /// ms). QUIC's own default, 333 ms, is for an unknown Internet path, and it sets when a
    /// lost handshake packet is sent again: about 1 s later. A dial that starts while a peer
    /// restarts (its port closed for a few milliseconds) loses its first packet, so with 333
    /// ms every message to a restarted replica waited about a second; the customer
    /// database's ring waits at that member's turns meanwhile (1+1 scenario 5: the longest
    /// call 1.0-1.1 s in 8 of 10 runs). Cluster links are loopback or LAN; on a slower path
    /// a too-small guess only costs a few early retransmissions until the first measurement.
    pub initial_rtt: Duration,
    /// Concurrent requests a peer may have in flight on one connection (default 1024).
    pub concurrent_requests_max: u32,
    /// One-way messages up to this size travel as QUIC datagrams (unordered, unreliable, no
    /// head-of-line blocking) when the path allows; larger ones use the message stream.
    /// 0 (the default) sends everything on the stream.
    pub datagram_size_bytes_max: usize,
    /// Ack-eliciting packets the peer may receive before it must acknowledge (the QUIC ACK
    /// frequency extension; both ends here are quinn). Default 10; 0 or 1 keeps QUIC's usual
    /// every-second-packet rule. Loopback, 100+100 scenario: about 6% more calls per second
    /// than 1, and no slower at one call at a time.
    pub ack_eliciting_threshold: u32,
    /// Liveness sentinels ([`crate::liveness`], default on): a node listed with an address
    /// in its own peer table also listens for TCP on its QUIC port, and a sentinel TCP
    /// connection watches every peer this node talks to, so the death of a peer process is
    /// known within a millisecond instead of after `idle_timeout`.
    pub liveness: bool,
}

impl QuicConfig {
    /// A configuration with the defaults listed on each field.
    pub fn new(
        local_id: NodeId,
        identity: NodeIdentity,
        bind_addr: SocketAddr,
        peers: BTreeMap<NodeId, PeerInfo>,
    ) -> Self {
        Self {
            local_id,
            identity,
            bind_addr,
            peers,
            frame_size_bytes_max: 16 * 1024 * 1024,
            send_queue_len_max: 4096,
            incoming_queue_len_max: 4096,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(2),
            initial_rtt: Duration::from_millis(10),
            concurrent_requests_max: 1024,
            datagram_size_bytes_max: 0,
            ack_eliciting_threshold: 10,
            liveness: true,
        }
    }
}

/// Errors from setting up a [`QuicNetwork`].
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// TLS setup failed (bad certificate or key).
    #[error("tls: {0}")]
    Tls(String),
    /// Binding the socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// `bind` was called outside a tokio runtime.
    #[error("QuicNetwork::bind must be called inside a tokio runtime")]
    NoRuntime,
}

/// A node's QUIC attachment to the cluster. See the [module docs](self).
///
/// Dropping it (or calling [`QuicNetwork::shutdown`]) closes the endpoint and every
/// connection.
pub struct QuicNetwork {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicNetwork")
            .field("local_id", &self.inner.local_id)
            .field("local_addr", &self.inner.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

struct Limits {
    frame_size_bytes_max: usize,
    send_queue_len_max: usize,
    datagram_size_bytes_max: usize,
    connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

struct Inner {
    local_id: NodeId,
    limits: Limits,
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    peers: BTreeMap<NodeId, PeerInfo>,
    links: Mutex<HashMap<NodeId, LinkEntry>>,
    incoming_tx: mpsc::Sender<Incoming>,
    incoming_rx: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    shutdown_tx: watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
    liveness: bool,
    peer_down_tx: broadcast::Sender<NodeId>,
}

/// A peer's link and the sending end of its message queue.
type LinkEntry = (Arc<Link>, mpsc::Sender<Bytes>);

/// Outgoing state towards one peer.
struct Link {
    peer: NodeId,
    name: String,
    addr: Option<SocketAddr>,
    state: Mutex<LinkState>,
    connect_lock: tokio::sync::Mutex<()>,
    /// A liveness sentinel is open to the peer ([`crate::liveness`]).
    watched: Arc<AtomicBool>,
}

#[derive(Default)]
struct LinkState {
    conn: Option<Connection>,
    /// The message stream opened with the hello, for the writer task to take.
    hello_stream: Option<(usize, SendStream)>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these short critical sections cannot leave them inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn varint(code: u32) -> VarInt {
    VarInt::from_u32(code)
}

impl QuicNetwork {
    /// Binds the endpoint and starts accepting connections. Must be called inside a tokio
    /// runtime, on which all of this network's tasks will run.
    pub fn bind(config: QuicConfig) -> Result<Self, QuicError> {
        let socket = std::net::UdpSocket::bind(config.bind_addr)?;
        Self::bind_socket(config, socket)
    }

    /// Like [`QuicNetwork::bind`], on an already bound UDP socket (`config.bind_addr` is
    /// ignored). Lets a caller learn every node's port before building the peer tables.
    pub fn bind_socket(config: QuicConfig, socket: std::net::UdpSocket) -> Result<Self, QuicError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| QuicError::NoRuntime)?;
        let mut names = std::collections::HashSet::new();
        for (id, p) in &config.peers {
            crate::certs::validate_name(&p.name).map_err(|e| QuicError::Config(e.to_string()))?;
            if !names.insert(p.name.as_str()) {
                return Err(QuicError::Config(format!(
                    "peer name {:?} used twice (id {id})",
                    p.name
                )));
            }
        }
        if config.frame_size_bytes_max == 0 || config.frame_size_bytes_max > u32::MAX as usize {
            return Err(QuicError::Config(
                "frame_size_bytes_max must be in 1..=u32::MAX".into(),
            ));
        }
        if config.send_queue_len_max == 0 || config.incoming_queue_len_max == 0 {
            return Err(QuicError::Config("queue lengths must be positive".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let id = &config.identity;
        // Catch a misconfiguration here rather than as refused connections later.
        if let Some(me) = config.peers.get(&config.local_id) {
            if me.name != id.name {
                return Err(QuicError::Config(format!(
                    "peer table names node {} {:?} but the identity is {:?}",
                    config.local_id, me.name, id.name
                )));
            }
        }
        let own = rustls::server::ParsedCertificate::try_from(&id.cert)
            .map_err(|e| QuicError::Tls(format!("own certificate: {e}")))?;
        let own_name = ServerName::try_from(id.name.as_str())
            .map_err(|e| QuicError::Config(format!("own name: {e}")))?;
        rustls::client::verify_server_name(&own, &own_name).map_err(|_| {
            QuicError::Config(format!("own certificate is not valid for {:?}", id.name))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(id.ca_cert.clone())
            .map_err(|e| QuicError::Tls(format!("CA certificate: {e}")))?;
        let roots = Arc::new(roots);

        let mut transport = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
            .map_err(|e| QuicError::Config(format!("idle_timeout: {e}")))?;
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(config.keep_alive_interval))
            .initial_rtt(config.initial_rtt)
            .max_concurrent_bidi_streams(varint(config.concurrent_requests_max))
            .max_concurrent_uni_streams(varint(64))
            // Always accept datagrams (a peer may enable them); bounded buffer, oldest dropped.
            .datagram_receive_buffer_size(Some(4 * 1024 * 1024));
        if config.ack_eliciting_threshold > 1 {
            // The ACK frequency extension: ask the peer to acknowledge every N-th packet (or
            // after its max_ack_delay) instead of every second one. Under load most ACKs ride
            // on replies anyway; the rest were datagrams of their own, each a system call on
            // both sides.
            let mut frequency = quinn::AckFrequencyConfig::default();
            frequency.ack_eliciting_threshold(varint(config.ack_eliciting_threshold));
            transport.ack_frequency_config(Some(frequency));
        }
        let transport = Arc::new(transport);

        // Client side: verify the server against the CA; present our certificate.
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| QuicError::Tls(e.to_string()))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
            .map_err(|e| QuicError::Tls(format!("own certificate/key: {e}")))?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        let client_crypto =
            QuicClientConfig::try_from(client_tls).map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport.clone());

        // Server side: require a client certificate signed by the CA.
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| QuicError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
            .map_err(|e| QuicError::Tls(format!("own certificate/key: {e}")))?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        server_tls.max_early_data_size = 0;
        let server_crypto =
            QuicServerConfig::try_from(server_tls).map_err(|e| QuicError::Tls(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport);

        let reset_key = ResetKey::derive(id.key.secret_der());
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        // Random CIDs that any incarnation accepts as "possibly mine", so a restarted node
        // answers its predecessor's connections with a stateless reset (quinn's default
        // generator keys CIDs with a per-process secret and silently drops the others).
        endpoint_config.cid_generator(|| Box::new(RandomCids));
        let endpoint = {
            let _guard = runtime.enter();
            Endpoint::new(
                endpoint_config,
                Some(server_config),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?
        };

        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_queue_len_max);
        let (shutdown_tx, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            local_id: config.local_id,
            limits: Limits {
                frame_size_bytes_max: config.frame_size_bytes_max,
                send_queue_len_max: config.send_queue_len_max,
                datagram_size_bytes_max: config.datagram_size_bytes_max,
                connect_timeout: config.connect_timeout,
                backoff_min: config.backoff_min,
                backoff_max: config.backoff_max,
            },
            endpoint,
            client_config,
            peers: config.peers,
            links: Mutex::new(HashMap::new()),
            incoming_tx,
            incoming_rx: tokio::sync::Mutex::new(incoming_rx),
            shutdown_tx,
            runtime,
            liveness: config.liveness,
            peer_down_tx: broadcast::channel(64).0,
        });
        inner.runtime.spawn(accept_loop(inner.clone()));
        let listed = inner.peers.get(&inner.local_id).and_then(|p| p.addr);
        if let (true, Some(_), Ok(addr)) = (config.liveness, listed, inner.endpoint.local_addr()) {
            if let Some(listener) = {
                let _guard = inner.runtime.enter();
                liveness::bind(addr)
            } {
                inner.runtime.spawn(liveness::serve(
                    listener,
                    inner.local_id,
                    inner.shutdown_tx.subscribe(),
                ));
            }
        }
        Ok(Self { inner })
    }

    /// The address the endpoint is bound to (with the real port if 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(|e| TransportError::Unreachable(self.inner.local_id, e.to_string()))
    }

    /// The peer table entry for `id`.
    pub fn peer(&self, id: NodeId) -> Option<&PeerInfo> {
        self.inner.peers.get(&id)
    }

    /// Whether a liveness sentinel currently watches `id` ([`crate::liveness`]): its death
    /// will be noticed at once. Sentinels start with the first call or message to a peer.
    pub fn watches(&self, id: NodeId) -> bool {
        lock(&self.inner.links)
            .get(&id)
            .is_some_and(|(link, _)| link.watched.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Closes every connection and the endpoint; `recv` returns `None` afterwards and
    /// `send`/`call` fail with [`TransportError::Shutdown`]. Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Waits until the endpoint has finished closing its connections (after `shutdown`), so
    /// its UDP port can be bound again.
    pub async fn wait_idle(&self) {
        self.inner.endpoint.wait_idle().await;
    }
}

impl QuicNetwork {
    /// A call to ourselves: straight into our own incoming queue, no network involved.
    async fn call_self(&self, request: Bytes, deadline: Duration) -> Result<Bytes, TransportError> {
        let me = self.inner.local_id;
        if self.inner.is_shut_down() {
            return Err(TransportError::Shutdown);
        }
        let (responder, answer) = Responder::new();
        let incoming = Incoming::Request {
            from: me,
            payload: request,
            responder,
        };
        let exchange = async {
            self.inner
                .incoming_tx
                .send(incoming)
                .await
                .map_err(|_| TransportError::Shutdown)?;
            answer.await.map_err(|_| TransportError::Dropped(me))
        };
        match tokio::time::timeout(deadline, exchange).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(deadline)),
        }
    }
}

impl Drop for QuicNetwork {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

impl Inner {
    fn is_shut_down(&self) -> bool {
        *self.shutdown_tx.borrow()
    }

    fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
        self.endpoint.close(varint(CLOSE_SHUTDOWN), b"shutdown");
        // Dropping the senders ends the writer tasks.
        let links = std::mem::take(&mut *lock(&self.links));
        for (link, _) in links.values() {
            let mut st = lock(&link.state);
            st.conn = None;
            st.hello_stream = None;
        }
        drop(links);
    }

    /// The link towards `to`, created (with its writer task) on first use.
    fn link(
        self: &Arc<Self>,
        to: NodeId,
    ) -> Result<(Arc<Link>, mpsc::Sender<Bytes>), TransportError> {
        if self.is_shut_down() {
            return Err(TransportError::Shutdown);
        }
        let mut links = lock(&self.links);
        if let Some((link, tx)) = links.get(&to) {
            return Ok((link.clone(), tx.clone()));
        }
        let info = self.peers.get(&to).ok_or(TransportError::UnknownPeer(to))?;
        if to == self.local_id {
            return Err(TransportError::UnknownPeer(to));
        }
        let link = Arc::new(Link {
            peer: to,
            name: info.name.clone(),
            addr: info.addr,
            state: Mutex::new(LinkState::default()),
            connect_lock: tokio::sync::Mutex::new(()),
            watched: Arc::new(AtomicBool::new(false)),
        });
        let (tx, rx) = mpsc::channel(self.limits.send_queue_len_max);
        self.runtime
            .spawn(writer_task(Arc::downgrade(self), link.clone(), rx));
        if let (true, Some(addr)) = (self.liveness, info.addr) {
            let weak = Arc::downgrade(self);
            self.runtime.spawn(liveness::watch(
                to,
                addr,
                self.limits.connect_timeout,
                self.shutdown_tx.subscribe(),
                link.watched.clone(),
                move |peer| {
                    if let Some(inner) = weak.upgrade() {
                        inner.peer_gone(peer);
                    }
                },
            ));
        }
        links.insert(to, (link.clone(), tx.clone()));
        Ok((link, tx))
    }

    /// A sentinel saw `peer`'s process die: drop the connection to it (calls waiting on it
    /// fail now instead of at the idle timeout), back off dialling it briefly, and tell the
    /// subscribers.
    fn peer_gone(&self, peer: NodeId) {
        let link = lock(&self.links).get(&peer).map(|(l, _)| l.clone());
        if let Some(link) = link {
            let mut st = lock(&link.state);
            if let Some(conn) = st.conn.take() {
                conn.close(varint(CLOSE_PEER_GONE), b"peer process gone");
            }
            st.hello_stream = None;
            st.retry_at = Some(Instant::now() + self.limits.backoff_min);
            st.last_error = "peer process gone (liveness connection closed)".into();
        }
        let _ = self.peer_down_tx.send(peer);
    }

    /// `peer` opened an authenticated connection to us, so its process is up and listening
    /// now: whatever backoff its earlier death or failed dials started is over, and the next
    /// call or message to it dials at once. Without this, a peer restarted within the
    /// backoff that followed its death had every answer and message to it dropped until the
    /// backoff ran out (a restarting product-db replica lost its whole first round of start
    /// check answers this way).
    fn heard_from(&self, peer: NodeId) {
        let link = lock(&self.links).get(&peer).map(|(l, _)| l.clone());
        if let Some(link) = link {
            let mut st = lock(&link.state);
            if st.retry_at.take().is_some() {
                st.failures = 0;
                tracing::debug!(peer, "peer connected to us: backoff cleared");
            }
        }
    }

    /// The live connection to `link`'s peer, dialling if there is none (at most one dial at a
    /// time per peer; fails fast while backing off). A caller with a shorter deadline cancels
    /// this future, which abandons the dial without counting it as a failure.
    async fn connection(&self, link: &Link) -> Result<Connection, TransportError> {
        if let Some(c) = self.cached_connection(link)? {
            return Ok(c);
        }
        let _dialing = link.connect_lock.lock().await;
        if let Some(c) = self.cached_connection(link)? {
            return Ok(c);
        }
        if self.is_shut_down() {
            return Err(TransportError::Shutdown);
        }
        let Some(addr) = link.addr else {
            return Err(TransportError::Unreachable(
                link.peer,
                "client-only peer (no address)".into(),
            ));
        };
        let budget = self.limits.connect_timeout;
        let result = match tokio::time::timeout(budget, self.dial(link, addr)).await {
            Ok(r) => r,
            Err(_) => Err(format!("connect timed out after {budget:?}")),
        };
        let mut st = lock(&link.state);
        match result {
            Ok((conn, hello)) => {
                st.failures = 0;
                st.retry_at = None;
                st.hello_stream = Some((conn.stable_id(), hello));
                st.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let exp = st.failures.saturating_sub(1).min(16);
                let backoff = self
                    .limits
                    .backoff_min
                    .saturating_mul(1u32 << exp)
                    .min(self.limits.backoff_max);
                st.retry_at = Some(Instant::now() + backoff);
                st.last_error = e.clone();
                tracing::debug!(peer = link.peer, error = %e, ?backoff, "dial failed");
                Err(TransportError::Unreachable(link.peer, e))
            }
        }
    }

    fn cached_connection(&self, link: &Link) -> Result<Option<Connection>, TransportError> {
        let mut st = lock(&link.state);
        if let Some(c) = &st.conn {
            if c.close_reason().is_none() {
                return Ok(Some(c.clone()));
            }
            st.conn = None;
            st.hello_stream = None;
        }
        if let Some(t) = st.retry_at {
            if Instant::now() < t {
                return Err(TransportError::Unreachable(
                    link.peer,
                    format!("backing off after: {}", st.last_error),
                ));
            }
        }
        Ok(None)
    }

    async fn dial(
        &self,
        link: &Link,
        addr: SocketAddr,
    ) -> Result<(Connection, SendStream), String> {
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, &link.name)
            .map_err(|e| format!("connect: {e}"))?;
        let conn = connecting.await.map_err(|e| format!("handshake: {e}"))?;
        // The hello opens the first unidirectional stream, which then carries messages.
        let mut hello = conn
            .open_uni()
            .await
            .map_err(|e| format!("open hello stream: {e}"))?;
        let mut buf = [0u8; HELLO_LEN];
        buf[..4].copy_from_slice(HELLO_MAGIC);
        buf[4..].copy_from_slice(&self.local_id.to_be_bytes());
        hello
            .write_all(&buf)
            .await
            .map_err(|e| format!("hello: {e}"))?;
        Ok((conn, hello))
    }

    async fn call(&self, to: NodeId, link: &Link, request: Bytes) -> Result<Bytes, TransportError> {
        let max = self.limits.frame_size_bytes_max;
        let conn = self.connection(link).await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| TransportError::Unreachable(to, e.to_string()))?;
        write_frame(&mut send, request.clone())
            .await
            .map_err(|e| write_error(to, e, request.len()))?;
        let _ = send.finish();
        match read_frame(&mut recv, max).await {
            Ok(Some(resp)) => Ok(resp),
            Ok(None) => Err(TransportError::Codec(
                "peer finished the stream without a response".into(),
            )),
            Err(FrameError::TooLarge(size)) => {
                let _ = recv.stop(varint(STREAM_FRAME_TOO_LARGE));
                Err(TransportError::FrameTooLarge {
                    size_bytes: size,
                    size_bytes_max: max,
                })
            }
            Err(FrameError::Truncated) => {
                Err(TransportError::Codec("truncated response frame".into()))
            }
            Err(FrameError::Read(quinn::ReadError::Reset(code)))
                if code == varint(STREAM_DROPPED) =>
            {
                Err(TransportError::Dropped(to))
            }
            Err(FrameError::Read(quinn::ReadError::Reset(code)))
                if code == varint(STREAM_FRAME_TOO_LARGE) =>
            {
                // The peer's limit is smaller than ours; it is not known here.
                Err(TransportError::FrameTooLarge {
                    size_bytes: request.len(),
                    size_bytes_max: 0,
                })
            }
            Err(FrameError::Read(e)) => Err(TransportError::Unreachable(to, e.to_string())),
        }
    }
}

fn write_error(to: NodeId, e: quinn::WriteError, len: usize) -> TransportError {
    match e {
        quinn::WriteError::Stopped(code) if code == varint(STREAM_FRAME_TOO_LARGE) => {
            TransportError::FrameTooLarge {
                size_bytes: len,
                size_bytes_max: 0,
            }
        }
        other => TransportError::Unreachable(to, other.to_string()),
    }
}

#[async_trait]
impl Network for QuicNetwork {
    fn local_id(&self) -> NodeId {
        self.inner.local_id
    }

    fn send(&self, to: NodeId, payload: Bytes) -> Result<(), TransportError> {
        let max = self.inner.limits.frame_size_bytes_max;
        if payload.len() > max {
            return Err(TransportError::FrameTooLarge {
                size_bytes: payload.len(),
                size_bytes_max: max,
            });
        }
        if to == self.inner.local_id {
            if self.inner.is_shut_down() {
                return Err(TransportError::Shutdown);
            }
            let from = to;
            return self
                .inner
                .incoming_tx
                .try_send(Incoming::Message { from, payload })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => TransportError::QueueFull(to),
                    mpsc::error::TrySendError::Closed(_) => TransportError::Shutdown,
                });
        }
        let (link, tx) = self.inner.link(to)?;
        if link.addr.is_none() {
            return Err(TransportError::Unreachable(
                to,
                "client-only peer (no address)".into(),
            ));
        }
        tx.try_send(payload).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TransportError::QueueFull(to),
            mpsc::error::TrySendError::Closed(_) => TransportError::Shutdown,
        })
    }

    async fn call(
        &self,
        to: NodeId,
        request: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, TransportError> {
        let max = self.inner.limits.frame_size_bytes_max;
        if request.len() > max {
            return Err(TransportError::FrameTooLarge {
                size_bytes: request.len(),
                size_bytes_max: max,
            });
        }
        if to == self.inner.local_id {
            return self.call_self(request, deadline).await;
        }
        let (link, _) = self.inner.link(to)?;
        match tokio::time::timeout(deadline, self.inner.call(to, &link, request)).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(deadline)),
        }
    }

    fn subscribe_peer_down(&self) -> Option<broadcast::Receiver<NodeId>> {
        Some(self.inner.peer_down_tx.subscribe())
    }

    async fn recv(&self) -> Option<Incoming> {
        let mut shutdown = self.inner.shutdown_tx.subscribe();
        if *shutdown.borrow_and_update() {
            return None;
        }
        let mut rx = self.inner.incoming_rx.lock().await;
        tokio::select! {
            biased;
            m = rx.recv() => m,
            _ = shutdown.changed() => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

#[derive(Debug)]
enum FrameError {
    TooLarge(usize),
    Truncated,
    Read(quinn::ReadError),
}

/// Reads one length-prefixed frame; `Ok(None)` at a clean end of stream between frames.
async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Option<Bytes>, FrameError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Ok(Some(Bytes::new()));
    }
    // Memory grows with the bytes that actually arrive (bounded by QUIC flow control), not with
    // what the header announces; a payload that arrives in one chunk is not copied at all.
    let mut buf: Option<bytes::BytesMut> = None;
    loop {
        let have = buf.as_ref().map_or(0, |b| b.len());
        let chunk = match recv.read_chunk(len - have, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Read(e)),
        };
        match buf.as_mut() {
            None if chunk.len() == len => return Ok(Some(chunk)),
            None => {
                let mut b = bytes::BytesMut::with_capacity(len.min(chunk.len().max(64 * 1024)));
                b.extend_from_slice(&chunk);
                buf = Some(b);
            }
            Some(b) => {
                b.extend_from_slice(&chunk);
                if b.len() == len {
                    return Ok(buf.map(|b| b.freeze()));
                }
            }
        }
    }
}

fn frame_header(len: usize) -> Bytes {
    // Callers check `len <= frame_size_bytes_max <= u32::MAX`.
    Bytes::copy_from_slice(&(len as u32).to_be_bytes())
}

async fn write_frame(send: &mut SendStream, payload: Bytes) -> Result<(), quinn::WriteError> {
    if payload.len() <= 512 {
        let mut buf = Vec::with_capacity(4 + payload.len());
        buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        buf.extend_from_slice(&payload);
        send.write_all(&buf).await
    } else {
        let mut chunks = [frame_header(payload.len()), payload];
        send.write_all_chunks(&mut chunks).await
    }
}

// ---------------------------------------------------------------------------------------------
// Tasks

/// Feeds one peer's message stream from its bounded queue, batching what is queued.
async fn writer_task(inner: Weak<Inner>, link: Arc<Link>, mut rx: mpsc::Receiver<Bytes>) {
    let mut stream: Option<(usize, SendStream)> = None;
    let mut batch: Vec<Bytes> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < WRITE_BATCH_MAX {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let Some(net) = inner.upgrade() else { return };
        let conn = match net.connection(&link).await {
            Ok(c) => c,
            Err(e) => {
                tracing::trace!(peer = link.peer, error = %e, dropped = batch.len(), "messages dropped");
                continue;
            }
        };
        let datagram_max = net.limits.datagram_size_bytes_max;
        drop(net);
        if datagram_max > 0 {
            let limit = conn.max_datagram_size().unwrap_or(0).min(datagram_max);
            batch.retain(|m| {
                if m.len() > limit {
                    return true;
                }
                // On any datagram error the message falls back to the stream.
                conn.send_datagram(m.clone()).is_err()
            });
            if batch.is_empty() {
                continue;
            }
        }
        let id = conn.stable_id();
        if stream.as_ref().is_none_or(|(sid, _)| *sid != id) {
            let taken = {
                let mut st = lock(&link.state);
                match st.hello_stream.take() {
                    Some((sid, s)) if sid == id => Some(s),
                    _ => None,
                }
            };
            stream = match taken {
                Some(s) => Some((id, s)),
                None => match conn.open_uni().await {
                    Ok(s) => Some((id, s)),
                    Err(_) => None,
                },
            };
        }
        let Some((_, s)) = stream.as_mut() else {
            continue;
        };
        let mut chunks: Vec<Bytes> = Vec::with_capacity(batch.len() * 2);
        for m in batch.drain(..) {
            chunks.push(frame_header(m.len()));
            chunks.push(m);
        }
        if let Err(e) = s.write_all_chunks(&mut chunks).await {
            tracing::trace!(peer = link.peer, error = %e, "message stream broken");
            stream = None;
        }
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        if inner.is_shut_down() {
            incoming.refuse();
            continue;
        }
        inner
            .runtime
            .spawn(serve_connection(inner.clone(), incoming));
    }
}

/// Checks the client's hello against its certificate; returns the authenticated peer id.
async fn authenticate(
    inner: &Inner,
    conn: &Connection,
) -> Result<(NodeId, RecvStream), (u32, String)> {
    let mut uni = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_uni()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err((CLOSE_BAD_HELLO, format!("no hello stream: {e}"))),
        Err(_) => return Err((CLOSE_BAD_HELLO, "hello timed out".into())),
    };
    let mut buf = [0u8; HELLO_LEN];
    match tokio::time::timeout(HELLO_TIMEOUT, uni.read_exact(&mut buf)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err((CLOSE_BAD_HELLO, format!("bad hello: {e}"))),
        Err(_) => return Err((CLOSE_BAD_HELLO, "hello timed out".into())),
    }
    if &buf[..4] != HELLO_MAGIC {
        return Err((CLOSE_BAD_HELLO, "bad hello magic".into()));
    }
    let mut id_bytes = [0u8; 8];
    id_bytes.copy_from_slice(&buf[4..]);
    let claimed = NodeId::from_be_bytes(id_bytes);
    let Some(info) = inner.peers.get(&claimed) else {
        return Err((
            CLOSE_IDENTITY_REJECTED,
            format!("unknown node id {claimed}"),
        ));
    };
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or((CLOSE_IDENTITY_REJECTED, "no client certificate".to_string()))?;
    let leaf = certs.first().ok_or((
        CLOSE_IDENTITY_REJECTED,
        "empty certificate chain".to_string(),
    ))?;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf)
        .map_err(|e| (CLOSE_IDENTITY_REJECTED, format!("certificate: {e}")))?;
    let name = ServerName::try_from(info.name.as_str())
        .map_err(|e| (CLOSE_IDENTITY_REJECTED, format!("peer name: {e}")))?;
    rustls::client::verify_server_name(&parsed, &name).map_err(|_| {
        (
            CLOSE_IDENTITY_REJECTED,
            format!(
                "certificate is not valid for {:?} (node {claimed})",
                info.name
            ),
        )
    })?;
    Ok((claimed, uni))
}

async fn serve_connection(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "incoming handshake failed");
            return;
        }
    };
    let (from, hello_stream) = match authenticate(&inner, &conn).await {
        Ok(x) => x,
        Err((code, reason)) => {
            tracing::warn!(remote = %conn.remote_address(), %reason, "connection refused");
            conn.close(varint(code), reason.as_bytes());
            return;
        }
    };
    inner.heard_from(from);
    inner
        .runtime
        .spawn(read_messages(inner.clone(), from, hello_stream));
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    inner.runtime.spawn(serve_request(inner.clone(), from, send, recv));
                }
                Err(_) => return,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    inner.runtime.spawn(read_messages(inner.clone(), from, recv));
                }
                Err(_) => return,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(payload) => {
                    if payload.len() <= inner.limits.frame_size_bytes_max
                        && inner.incoming_tx.send(Incoming::Message { from, payload }).await.is_err()
                    {
                        return;
                    }
                }
                Err(_) => return,
            },
        }
    }
}

async fn read_messages(inner: Arc<Inner>, from: NodeId, mut recv: RecvStream) {
    loop {
        match read_frame(&mut recv, inner.limits.frame_size_bytes_max).await {
            Ok(Some(payload)) => {
                if inner
                    .incoming_tx
                    .send(Incoming::Message { from, payload })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => return,
            Err(FrameError::TooLarge(size)) => {
                tracing::warn!(peer = from, size, "oversized message frame refused");
                let _ = recv.stop(varint(STREAM_FRAME_TOO_LARGE));
                return;
            }
            Err(_) => return,
        }
    }
}

async fn serve_request(
    inner: Arc<Inner>,
    from: NodeId,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let max = inner.limits.frame_size_bytes_max;
    let payload = match read_frame(&mut recv, max).await {
        Ok(Some(p)) => p,
        Ok(None) | Err(FrameError::Truncated) | Err(FrameError::Read(_)) => {
            let _ = send.reset(varint(STREAM_DROPPED));
            return;
        }
        Err(FrameError::TooLarge(size)) => {
            tracing::warn!(peer = from, size, "oversized request frame refused");
            let _ = recv.stop(varint(STREAM_FRAME_TOO_LARGE));
            let _ = send.reset(varint(STREAM_FRAME_TOO_LARGE));
            return;
        }
    };
    let (responder, answer) = Responder::new();
    if inner
        .incoming_tx
        .send(Incoming::Request {
            from,
            payload,
            responder,
        })
        .await
        .is_err()
    {
        let _ = send.reset(varint(STREAM_DROPPED));
        return;
    }
    drop(inner);
    match answer.await {
        Ok(resp) if resp.len() <= max => {
            if write_frame(&mut send, resp).await.is_ok() {
                let _ = send.finish();
            }
        }
        Ok(resp) => {
            tracing::warn!(
                peer = from,
                size = resp.len(),
                "response larger than the frame maximum dropped"
            );
            let _ = send.reset(varint(STREAM_FRAME_TOO_LARGE));
        }
        Err(_) => {
            let _ = send.reset(varint(STREAM_DROPPED));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stateless reset key and connection ids

/// 8-byte random connection ids.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; 8]>())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// HMAC-SHA256 keyed from the node's private key, so that a restarted node can reset the
/// connections of its previous incarnation (QUIC stateless reset).
struct ResetKey {
    hash: &'static dyn rustls::crypto::hash::Hash,
    ipad: [u8; 64],
    opad: [u8; 64],
}

impl ResetKey {
    fn derive(secret: &[u8]) -> Self {
        let hash = sha256();
        let mut ctx = hash.start();
        ctx.update(b"market quic stateless reset key v1");
        ctx.update(secret);
        let key = ctx.finish();
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, b) in key.as_ref().iter().enumerate().take(64) {
            ipad[i] ^= b;
            opad[i] ^= b;
        }
        Self { hash, ipad, opad }
    }

    fn mac(&self, data: &[u8]) -> rustls::crypto::hash::Output {
        let mut inner = self.hash.start();
        inner.update(&self.ipad);
        inner.update(data);
        let inner = inner.finish();
        let mut outer = self.hash.start();
        outer.update(&self.opad);
        outer.update(inner.as_ref());
        outer.finish()
    }
}

fn sha256() -> &'static dyn rustls::crypto::hash::Hash {
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => suite.common.hash_provider,
        #[allow(unreachable_patterns)]
        _ => unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
    }
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = self.mac(data);
        let n = signature_out.len().min(mac.as_ref().len());
        signature_out[..n].copy_from_slice(&mac.as_ref()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let mac = self.mac(data);
        let mac = mac.as_ref();
        if signature.len() != mac.len() {
            return Err(quinn::crypto::CryptoError);
        }
        let diff = mac
            .iter()
            .zip(signature)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}
