//! QUIC transport over real sockets on 127.0.0.1: delivery, RPC, reconnects, and refusal of
//! hostile peers (the server must stay up and serve a good peer afterwards, every time).

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use transport::certs::{generate_ca, ClusterCa, NodeIdentity};
use transport::{Incoming, Network, NodeId, PeerInfo, QuicConfig, QuicNetwork, TransportError};

const LONG: Duration = Duration::from_secs(20);

/// A UDP socket on a port whose TCP twin is free too: a node's liveness listener binds the
/// TCP port of its QUIC address, and an ephemeral port of another test's TCP connection may
/// hold that number (the listener is then missing and a probe is refused).
fn reserve() -> UdpSocket {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        if std::net::TcpListener::bind(addr(&udp)).is_ok() {
            return udp;
        }
    }
    panic!("no port free for both UDP and TCP in 100 tries");
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().expect("local addr")
}

fn config(id: NodeId, identity: NodeIdentity, peers: &BTreeMap<NodeId, PeerInfo>) -> QuicConfig {
    let mut cfg = QuicConfig::new(
        id,
        identity,
        "127.0.0.1:0".parse().expect("addr"),
        peers.clone(),
    );
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.backoff_min = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(200);
    cfg
}

/// Serves node `net`: answers every request with `echo:` + payload (or drops requests that
/// start with `drop`), and forwards one-way messages to the returned channel.
fn serve(net: std::sync::Arc<QuicNetwork>) -> mpsc::UnboundedReceiver<(NodeId, Bytes)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(inc) = net.recv().await {
            match inc {
                Incoming::Message { from, payload } => {
                    let _ = tx.send((from, payload));
                }
                Incoming::Request {
                    from,
                    payload,
                    responder,
                } => {
                    if payload.starts_with(b"drop") {
                        drop(responder);
                        continue;
                    }
                    let mut out = format!("echo{from}:").into_bytes();
                    out.extend_from_slice(&payload);
                    responder.respond(Bytes::from(out));
                }
            }
        }
    });
    rx
}

struct Pair {
    ca: ClusterCa,
    peers: BTreeMap<NodeId, PeerInfo>,
    server_addr: SocketAddr,
    server: std::sync::Arc<QuicNetwork>,
    client: std::sync::Arc<QuicNetwork>,
    server_msgs: mpsc::UnboundedReceiver<(NodeId, Bytes)>,
}

const SERVER: NodeId = 2;
const CLIENT: NodeId = 1;

/// Server `customer-db-1` (id 2) and client `customer-db-0` (id 1), both listening;
/// `frontend-0` (id 9) is a client-only identity and `seller-1` (id 7) another server name.
fn pair_with(adjust: impl FnOnce(&mut QuicConfig, &mut QuicConfig)) -> Pair {
    let ca = generate_ca().expect("ca");
    let (s_sock, c_sock) = (reserve(), reserve());
    let server_addr = addr(&s_sock);
    let mut peers = BTreeMap::new();
    peers.insert(CLIENT, PeerInfo::server("customer-db-0", addr(&c_sock)));
    peers.insert(SERVER, PeerInfo::server("customer-db-1", server_addr));
    peers.insert(
        7,
        PeerInfo::server("seller-1", "127.0.0.1:9".parse().expect("addr")),
    );
    peers.insert(9, PeerInfo::client_only("frontend-0"));
    let mut scfg = config(SERVER, ca.identity("customer-db-1").expect("id"), &peers);
    let mut ccfg = config(CLIENT, ca.identity("customer-db-0").expect("id"), &peers);
    adjust(&mut scfg, &mut ccfg);
    let server = std::sync::Arc::new(QuicNetwork::bind_socket(scfg, s_sock).expect("server"));
    let server_msgs = serve(server.clone());
    let client = std::sync::Arc::new(QuicNetwork::bind_socket(ccfg, c_sock).expect("client"));
    Pair {
        ca,
        peers,
        server_addr,
        server,
        client,
        server_msgs,
    }
}

fn pair() -> Pair {
    pair_with(|_, _| {})
}

async fn echo_ok(net: &QuicNetwork, to: NodeId, body: &str) {
    let resp = net
        .call(to, Bytes::from(body.to_string()), LONG)
        .await
        .expect("call");
    assert_eq!(resp, Bytes::from(format!("echo{}:{body}", net.local_id())));
}

/// A client with an arbitrary identity and claimed id, dialling the pair's server.
fn stranger(p: &Pair, id: NodeId, identity: NodeIdentity) -> QuicNetwork {
    let mut peers = BTreeMap::new();
    peers.insert(SERVER, PeerInfo::server("customer-db-1", p.server_addr));
    QuicNetwork::bind(config(id, identity, &peers)).expect("stranger")
}

#[tokio::test]
async fn rpc_and_messages_are_delivered() {
    let mut p = pair();
    echo_ok(&p.client, SERVER, "hello").await;
    // Many concurrent calls over the one connection.
    let client = std::sync::Arc::new(p.client);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            echo_ok(&c, SERVER, &format!("req-{i}")).await
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    // Messages on the long-lived stream arrive in order, attributed to the sender.
    for i in 0..200u32 {
        client
            .send(SERVER, Bytes::from(i.to_be_bytes().to_vec()))
            .expect("send");
    }
    for i in 0..200u32 {
        let (from, payload) = tokio::time::timeout(LONG, p.server_msgs.recv())
            .await
            .expect("timely")
            .expect("msg");
        assert_eq!(from, CLIENT);
        assert_eq!(payload, Bytes::from(i.to_be_bytes().to_vec()));
    }
    // Empty payloads are fine too.
    let resp = client
        .call(SERVER, Bytes::new(), LONG)
        .await
        .expect("empty call");
    assert_eq!(resp, Bytes::from(format!("echo{CLIENT}:")));
}

#[tokio::test]
async fn typed_errors_for_unknown_dropped_and_client_only_peers() {
    let p = pair();
    assert_eq!(
        p.client.call(42, Bytes::new(), LONG).await,
        Err(TransportError::UnknownPeer(42))
    );
    assert_eq!(
        p.client.send(42, Bytes::new()),
        Err(TransportError::UnknownPeer(42))
    );
    assert_eq!(
        p.client
            .call(SERVER, Bytes::from_static(b"drop me"), LONG)
            .await,
        Err(TransportError::Dropped(SERVER))
    );
    assert!(matches!(
        p.client.send(9, Bytes::new()),
        Err(TransportError::Unreachable(9, _))
    ));
    assert!(matches!(
        p.client.call(9, Bytes::new(), LONG).await,
        Err(TransportError::Unreachable(9, _))
    ));
    echo_ok(&p.client, SERVER, "still fine").await;
}

#[tokio::test]
async fn client_only_frontend_is_served() {
    let p = pair();
    let frontend = stranger(&p, 9, p.ca.identity("frontend-0").expect("id"));
    echo_ok(&frontend, SERVER, "from the frontend").await;
}

#[tokio::test]
async fn down_peer_fails_fast_then_reconnects_after_restart() {
    let p = pair();
    echo_ok(&p.client, SERVER, "before").await;
    let Pair {
        server,
        server_addr,
        ca,
        peers,
        client,
        ..
    } = p;
    server.shutdown();
    server.wait_idle().await;
    drop(server);

    // The server is gone: calls fail with Unreachable well before their (long) deadline.
    for _ in 0..3 {
        match client.call(SERVER, Bytes::from_static(b"x"), LONG).await {
            Err(TransportError::Unreachable(SERVER, _)) => {}
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }

    let _server = restart_server(server_addr, &ca, &peers).await;

    let mut ok = false;
    for _ in 0..100 {
        match client
            .call(SERVER, Bytes::from_static(b"after"), Duration::from_secs(2))
            .await
        {
            Ok(r) => {
                assert_eq!(r, Bytes::from(format!("echo{CLIENT}:after")));
                ok = true;
                break;
            }
            Err(TransportError::Unreachable(..)) | Err(TransportError::Timeout(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(ok, "the client reconnected to the restarted server");
}

/// Waits (up to 2 s) until `net` keeps a liveness sentinel open to `peer`.
async fn wait_until_watched(net: &QuicNetwork, peer: NodeId) {
    for _ in 0..200 {
        if net.watches(peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no liveness sentinel to {peer} after 2 s");
}

/// Restarts the pair's server on its old port (the old sockets may take a moment to be
/// released) and serves it.
async fn restart_server(
    server_addr: SocketAddr,
    ca: &ClusterCa,
    peers: &BTreeMap<NodeId, PeerInfo>,
) -> std::sync::Arc<QuicNetwork> {
    for _ in 0..100 {
        if let Ok(sock) = UdpSocket::bind(server_addr) {
            let server = std::sync::Arc::new(
                QuicNetwork::bind_socket(
                    config(SERVER, ca.identity("customer-db-1").expect("id"), peers),
                    sock,
                )
                .expect("restart"),
            );
            let _ = serve(server.clone());
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not rebind the server port");
}

#[tokio::test]
async fn a_restarted_peer_that_connects_to_us_ends_our_backoff_at_once() {
    // A backoff far longer than the test, so only the fix can end it in time.
    let Pair {
        server,
        server_addr,
        ca,
        peers,
        client,
        ..
    } = pair_with(|_, client| client.backoff_min = Duration::from_secs(30));
    let _ = serve(client.clone());
    let mut down = client.subscribe_peer_down().expect("deaths are reported");
    echo_ok(&client, SERVER, "before").await;
    wait_until_watched(&client, SERVER).await;

    server.shutdown();
    server.wait_idle().await;
    drop(server);
    let reported = tokio::time::timeout(LONG, down.recv()).await;
    assert!(
        matches!(reported, Ok(Ok(SERVER))),
        "the death is reported: {reported:?}"
    );
    // The death started the backoff: calls fail at once.
    match client.call(SERVER, Bytes::from_static(b"x"), LONG).await {
        Err(TransportError::Unreachable(SERVER, why)) => {
            assert!(why.contains("backing off"), "{why}")
        }
        other => panic!("expected Unreachable while backing off, got {other:?}"),
    }

    let server = restart_server(server_addr, &ca, &peers).await;
    // The new incarnation speaks first (a restarted replica asking its peers).
    echo_ok(&server, CLIENT, "hello again").await;
    // The client answers it at once, well inside its 30 s backoff.
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(SERVER, Bytes::from_static(b"after"), LONG),
    )
    .await
    .expect("no wait for the backoff");
    assert_eq!(
        answer.expect("the call after the peer connected"),
        Bytes::from(format!("echo{CLIENT}:after"))
    );
}

/// A UDP forwarder standing between a client and a server, so a test can make the server
/// vanish without a trace (no close frame reaches the client, as after kill -9) and move it.
struct Proxy {
    addr: SocketAddr,
    upstream: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn proxy(upstream: SocketAddr) -> Proxy {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let front = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("front"),
    );
    let back = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("back"),
    );
    let addr = front.local_addr().expect("addr");
    let upstream = Arc::new(Mutex::new(upstream));
    let blackhole = Arc::new(AtomicBool::new(false));
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    {
        let (front, back, upstream, blackhole, client) = (
            front.clone(),
            back.clone(),
            upstream.clone(),
            blackhole.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().expect("lock") = Some(from);
                let to = *upstream.lock().expect("lock");
                if !blackhole.load(Ordering::SeqCst) {
                    let _ = back.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    {
        let blackhole = blackhole.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                let to = *client.lock().expect("lock");
                if let (Some(to), false) = (to, blackhole.load(Ordering::SeqCst)) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        });
    }
    Proxy {
        addr,
        upstream,
        blackhole,
    }
}

#[tokio::test]
async fn crashed_and_restarted_peer_is_detected_by_stateless_reset() {
    use std::sync::atomic::Ordering;
    let ca = generate_ca().expect("ca");
    let server_sock = reserve();
    let px = proxy(addr(&server_sock)).await;
    let mut peers = BTreeMap::new();
    peers.insert(CLIENT, PeerInfo::client_only("customer-db-0"));
    peers.insert(SERVER, PeerInfo::server("customer-db-1", px.addr));
    let server_id = ca.identity("customer-db-1").expect("id");
    let server = std::sync::Arc::new(
        QuicNetwork::bind_socket(config(SERVER, server_id.clone(), &peers), server_sock)
            .expect("server"),
    );
    let _m = serve(server.clone());
    let mut ccfg = config(CLIENT, ca.identity("customer-db-0").expect("id"), &peers);
    // Without stateless resets the client would only notice after this long.
    ccfg.idle_timeout = Duration::from_secs(120);
    ccfg.keep_alive_interval = Duration::from_secs(60);
    let client = QuicNetwork::bind(ccfg).expect("client");
    echo_ok(&client, SERVER, "before").await;

    // "kill -9": nothing the dying server sends reaches the client.
    px.blackhole.store(true, Ordering::SeqCst);
    server.shutdown();
    server.wait_idle().await;
    drop(server);
    // The same node (same key) comes back, elsewhere behind the proxy.
    let sock = reserve();
    *px.upstream.lock().expect("lock") = addr(&sock);
    let server = std::sync::Arc::new(
        QuicNetwork::bind_socket(config(SERVER, server_id, &peers), sock).expect("restart"),
    );
    let _m2 = serve(server.clone());
    px.blackhole.store(false, Ordering::SeqCst);

    // The first call rides the dead connection: the new incarnation answers with a stateless
    // reset, so it fails with Unreachable (or already succeeds), never waits out the deadline.
    match client
        .call(
            SERVER,
            Bytes::from_static(b"after"),
            Duration::from_secs(15),
        )
        .await
    {
        Ok(_) | Err(TransportError::Unreachable(SERVER, _)) => {}
        other => panic!("expected a prompt reset, got {other:?}"),
    }
    let mut ok = false;
    for _ in 0..100 {
        if client
            .call(SERVER, Bytes::from_static(b"after"), Duration::from_secs(2))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "reconnected to the restarted server");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let p = pair();
    let other_ca = generate_ca().expect("other ca");
    let forged = other_ca.issue("customer-db-0").expect("forged");
    // Trusts the real CA (so it would accept the server) but presents a foreign certificate.
    let identity =
        NodeIdentity::from_pem("customer-db-0", &p.ca.cert_pem, &forged).expect("identity");
    let attacker = stranger(&p, CLIENT, identity);
    match attacker
        .call(SERVER, Bytes::from_static(b"let me in"), LONG)
        .await
    {
        Err(TransportError::Unreachable(SERVER, _)) => {}
        other => panic!("expected refusal, got {other:?}"),
    }
    echo_ok(&p.client, SERVER, "good peer after foreign CA").await;
}

#[tokio::test]
async fn peer_claiming_another_nodes_name_is_refused() {
    let mut p = pair();
    // A valid certificate for seller-1 (id 7), claiming to be customer-db-0 (id 1).
    let impostor = stranger(&p, CLIENT, p.ca.identity("seller-1").expect("id"));
    match impostor
        .call(SERVER, Bytes::from_static(b"i am customer-db-0"), LONG)
        .await
    {
        Err(TransportError::Unreachable(SERVER, _)) => {}
        other => panic!("expected refusal, got {other:?}"),
    }
    let _ = impostor.send(SERVER, Bytes::from_static(b"sneaky"));
    // A valid certificate for a name the server does not know at all.
    let unknown = stranger(&p, 55, p.ca.identity("buyer-5").expect("id"));
    match unknown.call(SERVER, Bytes::from_static(b"hi"), LONG).await {
        Err(TransportError::Unreachable(SERVER, _)) => {}
        other => panic!("expected refusal, got {other:?}"),
    }
    // The server is fine, and never delivered the impostor's message.
    echo_ok(&p.client, SERVER, "good peer after impostors").await;
    p.client
        .send(SERVER, Bytes::from_static(b"genuine"))
        .expect("send");
    let (from, payload) = tokio::time::timeout(LONG, p.server_msgs.recv())
        .await
        .expect("timely")
        .expect("msg");
    assert_eq!((from, payload), (CLIENT, Bytes::from_static(b"genuine")));
}

#[tokio::test]
async fn plaintext_garbage_is_ignored() {
    let p = pair();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..300usize {
        let len = [1, 7, 64, 1200, 1500][i % 5];
        let mut buf = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(x as u8);
        }
        if i % 3 == 0 {
            buf[0] = 0xC0; // looks like a QUIC long header
        }
        let _ = sock.send_to(&buf, p.server_addr).await;
    }
    let _ = sock.send_to(b"GET / HTTP/1.1\r\n\r\n", p.server_addr).await;
    echo_ok(&p.client, SERVER, "good peer after garbage").await;
}

#[tokio::test]
async fn oversized_frames_are_refused() {
    let mut p = pair_with(|server, _| server.frame_size_bytes_max = 1024);
    // Over our own limit: refused locally, nothing sent.
    let mut small = config(9, p.ca.identity("frontend-0").expect("id"), &p.peers);
    small.frame_size_bytes_max = 16;
    let tiny = QuicNetwork::bind(small).expect("tiny");
    assert_eq!(
        tiny.call(SERVER, Bytes::from(vec![0u8; 17]), LONG).await,
        Err(TransportError::FrameTooLarge {
            size_bytes: 17,
            size_bytes_max: 16
        })
    );
    assert!(matches!(
        tiny.send(SERVER, Bytes::from(vec![0u8; 17])),
        Err(TransportError::FrameTooLarge { .. })
    ));

    // Over the server's limit: the server refuses it before allocating.
    match p
        .client
        .call(SERVER, Bytes::from(vec![7u8; 4096]), LONG)
        .await
    {
        Err(TransportError::FrameTooLarge {
            size_bytes: 4096, ..
        }) => {}
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    echo_ok(&p.client, SERVER, "good call after oversized").await;

    // An oversized one-way message kills only its stream; later messages get through again.
    p.client
        .send(SERVER, Bytes::from(vec![1u8; 4096]))
        .expect("queued");
    let mut delivered = false;
    for i in 0..100u32 {
        p.client
            .send(SERVER, Bytes::from(format!("small-{i}")))
            .expect("send");
        if let Ok(Some((_, payload))) =
            tokio::time::timeout(Duration::from_millis(100), p.server_msgs.recv()).await
        {
            assert!(
                payload.len() < 1024,
                "the oversized message was never delivered"
            );
            delivered = true;
            break;
        }
    }
    assert!(delivered);
    let resp = p
        .client
        .call(SERVER, Bytes::from_static(b"ok"), LONG)
        .await
        .expect("call");
    assert_eq!(resp, Bytes::from(format!("echo{CLIENT}:ok")));
    let _ = &p.server;
}

#[tokio::test]
async fn send_queue_applies_backpressure() {
    let p = pair();
    let mut cfg = config(9, p.ca.identity("frontend-0").expect("id"), &p.peers);
    cfg.send_queue_len_max = 4;
    let net = QuicNetwork::bind(cfg).expect("net");
    // Nothing runs between these sends on this current-thread runtime, so the writer task
    // cannot drain the queue: the fifth is refused.
    let results: Vec<_> = (0..5)
        .map(|_| net.send(SERVER, Bytes::from_static(b"m")))
        .collect();
    assert!(results[..4].iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(results[4], Err(TransportError::QueueFull(SERVER)));
}

#[tokio::test]
async fn shutdown_is_clean() {
    let p = pair();
    echo_ok(&p.client, SERVER, "x").await;
    p.client.shutdown();
    assert_eq!(
        p.client.call(SERVER, Bytes::new(), LONG).await,
        Err(TransportError::Shutdown)
    );
    assert_eq!(
        p.client.send(SERVER, Bytes::new()),
        Err(TransportError::Shutdown)
    );
    assert!(p.client.recv().await.is_none());
}

#[tokio::test]
async fn identities_load_from_a_cert_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    transport::certs::generate_cluster(dir.path(), &["product-db-0", "buyer-0"]).expect("gen");
    let a = transport::certs::load_identity(dir.path(), "product-db-0").expect("a");
    let b = transport::certs::load_identity(dir.path(), "buyer-0").expect("b");
    let sa = reserve();
    let mut peers = BTreeMap::new();
    peers.insert(0, PeerInfo::server("product-db-0", addr(&sa)));
    peers.insert(100, PeerInfo::client_only("buyer-0"));
    let server =
        std::sync::Arc::new(QuicNetwork::bind_socket(config(0, a, &peers), sa).expect("server"));
    let _m = serve(server.clone());
    let client = QuicNetwork::bind(config(100, b, &peers)).expect("client");
    echo_ok(&client, 0, "from disk").await;
}

#[tokio::test]
async fn two_servers_talk_both_ways() {
    let mut p = pair();
    // The server dials the client (its own outgoing connection) for its messages and calls.
    p.server
        .send(CLIENT, Bytes::from_static(b"from the server"))
        .expect("send");
    match tokio::time::timeout(LONG, p.client.recv())
        .await
        .expect("timely")
    {
        Some(Incoming::Message { from, payload }) => {
            assert_eq!(
                (from, payload),
                (SERVER, Bytes::from_static(b"from the server"))
            );
        }
        other => panic!("expected a message, got {other:?}"),
    }
    let server = p.server.clone();
    let call =
        tokio::spawn(async move { server.call(CLIENT, Bytes::from_static(b"q"), LONG).await });
    match tokio::time::timeout(LONG, p.client.recv())
        .await
        .expect("timely")
    {
        Some(Incoming::Request {
            from,
            payload,
            responder,
        }) => {
            assert_eq!((from, payload), (SERVER, Bytes::from_static(b"q")));
            responder.respond(Bytes::from_static(b"a"));
        }
        other => panic!("expected a request, got {other:?}"),
    }
    assert_eq!(call.await.expect("task"), Ok(Bytes::from_static(b"a")));
    p.client
        .send(SERVER, Bytes::from_static(b"and back"))
        .expect("send");
    let got = tokio::time::timeout(LONG, p.server_msgs.recv())
        .await
        .expect("timely");
    assert_eq!(got, Some((CLIENT, Bytes::from_static(b"and back"))));
}

#[tokio::test]
async fn messages_to_a_peer_that_comes_up_later_flow_once_it_is_up() {
    let ca = generate_ca().expect("ca");
    let (a_sock, b_sock) = (reserve(), reserve());
    let b_addr = addr(&b_sock);
    drop(b_sock); // b is down for now
    let mut peers = BTreeMap::new();
    peers.insert(1, PeerInfo::server("product-db-0", addr(&a_sock)));
    peers.insert(2, PeerInfo::server("product-db-1", b_addr));
    let a = QuicNetwork::bind_socket(
        config(1, ca.identity("product-db-0").expect("id"), &peers),
        a_sock,
    )
    .expect("a");
    // Best effort while b is down: queued and dropped, never an error or a hang.
    a.send(2, Bytes::from_static(b"lost")).expect("queued");
    let b = std::sync::Arc::new(
        QuicNetwork::bind_socket(
            config(2, ca.identity("product-db-1").expect("id"), &peers),
            UdpSocket::bind(b_addr).expect("rebind b"),
        )
        .expect("b"),
    );
    let mut b_msgs = serve(b.clone());
    let mut got = None;
    for i in 0..100u32 {
        match a.send(2, Bytes::from(format!("m{i}"))) {
            Ok(()) | Err(TransportError::Unreachable(..)) => {}
            Err(e) => panic!("{e:?}"),
        }
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), b_msgs.recv()).await {
            got = Some(m);
            break;
        }
    }
    let (from, payload) = got.expect("a message got through once b was up");
    assert_eq!(from, 1);
    assert!(payload.starts_with(b"m") || payload.as_ref() == b"lost");
}

#[tokio::test]
async fn small_messages_can_travel_as_datagrams() {
    let mut p = pair();
    let mut cfg = config(9, p.ca.identity("frontend-0").expect("id"), &p.peers);
    cfg.datagram_size_bytes_max = 512;
    // A client-only node cannot receive messages, but it can send them.
    let net = QuicNetwork::bind(cfg).expect("net");
    echo_ok(&net, SERVER, "connect first").await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..50u32 {
        net.send(SERVER, Bytes::from(format!("d{i}")))
            .expect("send");
    }
    net.send(SERVER, Bytes::from(vec![b'L'; 2000]))
        .expect("large one on the stream");
    let mut large = false;
    while seen.len() < 50 || !large {
        match tokio::time::timeout(Duration::from_secs(2), p.server_msgs.recv()).await {
            Ok(Some((9, m))) if m.len() == 2000 => large = true,
            Ok(Some((9, m))) => {
                seen.insert(m);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break, // loopback rarely drops datagrams; tolerate it
        }
    }
    assert!(large, "the large message went by stream");
    assert!(!seen.is_empty(), "datagrams arrived");
}

#[tokio::test]
async fn misconfigured_identity_is_rejected_at_bind() {
    let ca = generate_ca().expect("ca");
    let mut peers = BTreeMap::new();
    peers.insert(
        1,
        PeerInfo::server("seller-0", "127.0.0.1:1".parse().expect("addr")),
    );
    // The table says node 1 is seller-0, the identity says seller-1.
    let r = QuicNetwork::bind(config(1, ca.identity("seller-1").expect("id"), &peers));
    assert!(matches!(r, Err(transport::QuicError::Config(_))), "{r:?}");
    // The certificate is for seller-1 but the identity claims to be seller-0.
    let seller1 = ca.issue("seller-1").expect("cert");
    let lying = NodeIdentity::from_pem("seller-0", &ca.cert_pem, &seller1).expect("identity");
    let r = QuicNetwork::bind(config(1, lying, &peers));
    assert!(matches!(r, Err(transport::QuicError::Config(_))), "{r:?}");
    // Duplicate names in the table.
    peers.insert(2, PeerInfo::client_only("seller-0"));
    let r = QuicNetwork::bind(config(1, ca.identity("seller-0").expect("id"), &peers));
    assert!(matches!(r, Err(transport::QuicError::Config(_))), "{r:?}");
}

/// A hand-made quinn client with a valid identity, to speak the wire protocol badly.
async fn raw_connection(p: &Pair, name: &str) -> (quinn::Endpoint, quinn::Connection) {
    let id = p.ca.identity(name).expect("id");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.ca_cert.clone()).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
        .expect("client auth");
    tls.alpn_protocols = vec![transport::quic::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let conn = endpoint
        .connect_with(
            quinn::ClientConfig::new(std::sync::Arc::new(crypto)),
            p.server_addr,
            "customer-db-1",
        )
        .expect("connect")
        .await
        .expect("handshake");
    (endpoint, conn)
}

fn hello(id: NodeId) -> Vec<u8> {
    let mut h = transport::quic::HELLO_MAGIC.to_vec();
    h.extend_from_slice(&id.to_be_bytes());
    h
}

#[tokio::test]
async fn bad_hellos_and_hostile_frames_are_refused() {
    let p = pair();
    let code = |c: u32| quinn::VarInt::from_u32(c);

    // Garbage instead of a hello: the connection is closed with CLOSE_BAD_HELLO.
    let (_e1, conn) = raw_connection(&p, "customer-db-0").await;
    let mut uni = conn.open_uni().await.expect("uni");
    uni.write_all(b"GARBAGE-GARBAGE").await.expect("write");
    match tokio::time::timeout(LONG, conn.closed())
        .await
        .expect("closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, code(transport::quic::CLOSE_BAD_HELLO))
        }
        other => panic!("{other:?}"),
    }

    // A hello naming another node than the certificate: CLOSE_IDENTITY_REJECTED.
    let (_e2, conn) = raw_connection(&p, "customer-db-0").await;
    let mut uni = conn.open_uni().await.expect("uni");
    uni.write_all(&hello(7)).await.expect("write");
    match tokio::time::timeout(LONG, conn.closed())
        .await
        .expect("closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, code(transport::quic::CLOSE_IDENTITY_REJECTED))
        }
        other => panic!("{other:?}"),
    }

    // A proper hello, then a request frame announcing 4 GiB: the stream is refused (by its
    // length, nothing allocated), the connection survives and serves a proper request.
    let (_e3, conn) = raw_connection(&p, "customer-db-0").await;
    let mut uni = conn.open_uni().await.expect("uni");
    uni.write_all(&hello(CLIENT)).await.expect("write");
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    send.write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write");
    send.write_all(b"not really 4 GiB").await.expect("write");
    let mut buf = [0u8; 4];
    match recv.read_exact(&mut buf).await {
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(c))) => {
            assert_eq!(c, code(transport::quic::STREAM_FRAME_TOO_LARGE))
        }
        other => panic!("{other:?}"),
    }
    // A truncated request (stream finished mid-frame) is answered with STREAM_DROPPED.
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    send.write_all(&100u32.to_be_bytes()).await.expect("write");
    send.write_all(b"short").await.expect("write");
    send.finish().expect("finish");
    match recv.read_exact(&mut buf).await {
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(c))) => {
            assert_eq!(c, code(transport::quic::STREAM_DROPPED))
        }
        other => panic!("{other:?}"),
    }
    let (mut send, mut recv) = conn.open_bi().await.expect("bi");
    send.write_all(&2u32.to_be_bytes()).await.expect("write");
    send.write_all(b"hi").await.expect("write");
    send.finish().expect("finish");
    let resp = recv.read_to_end(1024).await.expect("response");
    let expected = format!("echo{CLIENT}:hi");
    assert_eq!(&resp[4..], expected.as_bytes());
    assert_eq!(
        u32::from_be_bytes([resp[0], resp[1], resp[2], resp[3]]) as usize,
        expected.len()
    );

    // And the regular client is still served.
    echo_ok(&p.client, SERVER, "after hostile frames").await;
}

#[tokio::test]
async fn a_node_can_message_and_call_itself() {
    let p = pair();
    p.client
        .send(CLIENT, Bytes::from_static(b"note to self"))
        .expect("send");
    match tokio::time::timeout(LONG, p.client.recv())
        .await
        .expect("timely")
    {
        Some(Incoming::Message { from, payload }) => {
            assert_eq!(
                (from, payload),
                (CLIENT, Bytes::from_static(b"note to self"))
            )
        }
        other => panic!("{other:?}"),
    }
    let client = std::sync::Arc::new(p.client);
    let c = client.clone();
    let call = tokio::spawn(async move { c.call(CLIENT, Bytes::from_static(b"q"), LONG).await });
    match tokio::time::timeout(LONG, client.recv())
        .await
        .expect("timely")
    {
        Some(Incoming::Request {
            from, responder, ..
        }) => {
            assert_eq!(from, CLIENT);
            responder.respond(Bytes::from_static(b"a"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(call.await.expect("task"), Ok(Bytes::from_static(b"a")));
}

#[tokio::test]
async fn large_payloads_arrive_intact() {
    let mut p = pair();
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let resp = p
        .client
        .call(SERVER, Bytes::from(big.clone()), LONG)
        .await
        .expect("call");
    let prefix = format!("echo{CLIENT}:");
    assert_eq!(resp.len(), prefix.len() + big.len());
    assert_eq!(&resp[prefix.len()..], &big[..]);
    p.client
        .send(SERVER, Bytes::from(big.clone()))
        .expect("send");
    p.client
        .send(SERVER, Bytes::from_static(b"after"))
        .expect("send");
    let (_, m) = tokio::time::timeout(LONG, p.server_msgs.recv())
        .await
        .expect("timely")
        .expect("msg");
    assert_eq!(m, Bytes::from(big));
    let (_, m) = tokio::time::timeout(LONG, p.server_msgs.recv())
        .await
        .expect("timely")
        .expect("msg");
    assert_eq!(m, Bytes::from_static(b"after"));
}

/// Kills a server "process" (its runtime stops mid-request: no QUIC close goes out, its UDP
/// socket stays silent, its TCP sockets close as the kernel would close them) while a client
/// waits on a call to it. Returns what the call returned and whether the client reported the
/// server down.
async fn kill_during_call(
    liveness: bool,
    deadline: Duration,
) -> (Result<Bytes, TransportError>, bool) {
    let ca = generate_ca().expect("ca");
    let (s_sock, c_sock) = (reserve(), reserve());
    let mut peers = BTreeMap::new();
    peers.insert(CLIENT, PeerInfo::server("customer-db-0", addr(&c_sock)));
    peers.insert(SERVER, PeerInfo::server("customer-db-1", addr(&s_sock)));
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let scfg = config(SERVER, ca.identity("customer-db-1").expect("id"), &peers);
    server_rt.spawn(async move {
        let server = QuicNetwork::bind_socket(scfg, s_sock).expect("server");
        let mut held = Vec::new();
        while let Some(inc) = server.recv().await {
            if let Incoming::Request {
                payload, responder, ..
            } = inc
            {
                if payload.as_ref() == b"ping" {
                    responder.respond(payload);
                } else {
                    held.push(responder);
                    let _ = got_tx.send(());
                }
            }
        }
        std::mem::forget(server);
    });
    let mut ccfg = config(CLIENT, ca.identity("customer-db-0").expect("id"), &peers);
    ccfg.liveness = liveness;
    ccfg.idle_timeout = Duration::from_secs(60);
    ccfg.keep_alive_interval = Duration::from_secs(30);
    let client = std::sync::Arc::new(QuicNetwork::bind_socket(ccfg, c_sock).expect("client"));
    let mut down = client
        .subscribe_peer_down()
        .expect("the QUIC network reports deaths");
    client
        .call(SERVER, Bytes::from_static(b"ping"), LONG)
        .await
        .expect("ping");
    if liveness {
        wait_until_watched(&client, SERVER).await;
    }
    assert_eq!(client.watches(SERVER), liveness);
    let server_addr = peers[&SERVER].addr.expect("server address");
    assert_eq!(
        transport::liveness::probe(server_addr, SERVER, Duration::from_secs(2)).await,
        transport::liveness::Probe::Alive
    );
    let caller = client.clone();
    let call = tokio::spawn(async move {
        caller
            .call(SERVER, Bytes::from_static(b"hold"), deadline)
            .await
    });
    tokio::time::timeout(LONG, got_rx.recv())
        .await
        .expect("the server got the call");
    server_rt.shutdown_background();
    let result = call.await.expect("call task");
    // The runtime drops its tasks (the listener among them) on its own threads.
    let mut refused = false;
    for _ in 0..100 {
        let p = transport::liveness::probe(server_addr, SERVER, Duration::from_secs(2)).await;
        if p == transport::liveness::Probe::Refused {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a probe of the dead server is refused");
    let reported = matches!(
        tokio::time::timeout(Duration::from_millis(500), down.recv()).await,
        Ok(Ok(SERVER))
    );
    (result, reported)
}

#[tokio::test]
async fn a_dead_peer_process_fails_waiting_calls_at_once() {
    // With the sentinel: the call fails as soon as the process is gone, well inside its
    // 20 s deadline (a timeout would be an error of another kind), and the death is reported.
    let (result, reported) = kill_during_call(true, LONG).await;
    assert!(
        matches!(result, Err(TransportError::Unreachable(SERVER, _))),
        "expected Unreachable, got {result:?}"
    );
    assert!(reported, "the death was reported to subscribers");
    // Without it the silent peer is only given up at the deadline (the idle timeout is 60 s).
    let (result, reported) = kill_during_call(false, Duration::from_millis(1500)).await;
    assert!(
        matches!(result, Err(TransportError::Timeout(_))),
        "expected Timeout, got {result:?}"
    );
    assert!(!reported);
}
