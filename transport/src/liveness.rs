//! Liveness sentinels: learning within a millisecond that a peer's *process* died.
//!
//! QUIC runs over UDP, and quinn cannot observe ICMP "port unreachable": when a peer process
//! is killed, its connections only die when the idle timeout expires, so whoever was waiting
//! on it (a frontend's call to the Raft leader, a follower expecting heartbeats) waits that
//! long. A TCP connection has no such blind spot: when a process dies, its kernel closes its
//! sockets and the other end reads end-of-file at once.
//!
//! So a node that listens for QUIC on `ip:port` also listens for TCP on the same `ip:port`
//! (UDP and TCP port numbers are separate spaces), and every node keeps one *sentinel*
//! connection open to each peer it may dial:
//!
//! 1. the sentinel connects, and the listener answers with a 12-byte hello: the magic
//!    [`MAGIC`] and its node id (u64, big-endian); a hello naming another node (a port reused
//!    by something else) is not trusted;
//! 2. after a valid hello the sentinel just waits; nobody sends anything more;
//! 3. when the connection ends (end-of-file, reset) the peer process is gone: the network
//!    closes its QUIC connection to that peer, so calls waiting on it fail at once with
//!    [`TransportError::Unreachable`](crate::TransportError::Unreachable), and tells its
//!    subscribers ([`Network::subscribe_peer_down`](crate::Network::subscribe_peer_down));
//! 4. the sentinel then reconnects with backoff, to watch the next incarnation.
//!
//! Only the loss of a connection whose hello was valid counts: a refused connection proves
//! nothing (the peer may run without a listener), so a node that cannot bind its TCP port
//! merely forgoes fast detection, and its peers fall back to QUIC's idle timeout.
//!
//! What it does not cover: a whole *host* that dies or is cut off sends no FIN; its peers
//! learn of it through the QUIC idle timeout and the protocols' own timeouts, as before.
//! A spurious report (the TCP path broke while the process lives) only costs a redial.
//!
//! Cost: one idle TCP connection per (node, peer it dials) pair, no traffic after the hello;
//! the listener holds at most [`ACCEPTED_MAX`] sentinels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::network::NodeId;

/// First bytes of a listener's hello.
pub const MAGIC: &[u8; 4] = b"MKTL";
/// Sentinels a listener holds at once; more are closed after their hello.
pub const ACCEPTED_MAX: usize = 1024;
const HELLO_LEN: usize = 12;
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry delay of a sentinel after a lost or refused connection (doubles up to the max).
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);

fn hello(id: NodeId) -> [u8; HELLO_LEN] {
    let mut buf = [0u8; HELLO_LEN];
    buf[..4].copy_from_slice(MAGIC);
    buf[4..].copy_from_slice(&id.to_be_bytes());
    buf
}

/// Binds the TCP listener next to a QUIC endpoint bound to `addr`. `None` (with a warning)
/// if the port is taken: the node then runs without fast failure detection.
pub(crate) fn bind(addr: SocketAddr) -> Option<TcpListener> {
    let listener = std::net::TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    });
    match listener {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "no liveness listener: peers detect this node's death only by timeout");
            None
        }
    }
}

/// Serves sentinels until shutdown: each gets the hello, then is held open (and drained)
/// until its peer closes it or this node stops.
pub(crate) async fn serve(
    listener: TcpListener,
    local_id: NodeId,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(ACCEPTED_MAX));
    loop {
        let mut stop = shutdown.clone();
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((mut stream, _)) = accepted else {
            // Out of descriptors or similar: do not spin.
            tokio::time::sleep(RETRY_MIN).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            if stream.write_all(&hello(local_id)).await.is_err() {
                return;
            }
            let mut sink = [0u8; 64];
            tokio::select! {
                _ = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} } => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

/// Watches `peer` at `addr` until shutdown, calling `gone(peer)` each time a sentinel whose
/// hello named `peer` loses its connection; `watching` is true while such a sentinel is open.
pub(crate) async fn watch(
    peer: NodeId,
    addr: SocketAddr,
    connect_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    watching: Arc<AtomicBool>,
    gone: impl Fn(NodeId),
) {
    let mut retry = RETRY_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let verified = tokio::select! {
            v = sentinel(peer, addr, connect_timeout) => v,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match verified {
            Some(mut stream) => {
                retry = RETRY_MIN;
                watching.store(true, Ordering::SeqCst);
                let mut sink = [0u8; 64];
                tokio::select! {
                    _ = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} } => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                watching.store(false, Ordering::SeqCst);
                tracing::info!(peer, "peer process gone (liveness connection closed)");
                gone(peer);
            }
            None => retry = (retry * 2).min(RETRY_MAX),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// A connection to `addr` whose hello names `peer`, if one can be made now.
async fn sentinel(peer: NodeId, addr: SocketAddr, connect_timeout: Duration) -> Option<TcpStream> {
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut got = [0u8; HELLO_LEN];
    tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut got))
        .await
        .ok()?
        .ok()?;
    (got == hello(peer)).then_some(stream)
}

/// What a one-off look at a node's liveness listener found ([`probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The listener answered with the expected node's hello: the process runs.
    Alive,
    /// The connection was refused: nothing listens there, so (if the node normally runs a
    /// listener) its process is not running.
    Refused,
    /// No answer in time, or an unexpected one: nothing can be concluded.
    Unknown,
}

/// Connects once to the liveness listener of node `peer` at `addr` (its QUIC address): a
/// status tool learns in a round trip that a node is down, where a QUIC dial would wait for
/// its timeout.
pub async fn probe(addr: SocketAddr, peer: NodeId, timeout: Duration) -> Probe {
    let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::Refused,
        _ => return Probe::Unknown,
    };
    let mut got = [0u8; HELLO_LEN];
    match tokio::time::timeout(timeout, stream.read_exact(&mut got)).await {
        Ok(Ok(_)) if got == hello(peer) => Probe::Alive,
        _ => Probe::Unknown,
    }
}
