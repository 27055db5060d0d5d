//! RPC micro-benchmark: QUIC RPC (`transport::quic`) against a plain TCP ping-pong floor,
//! between two processes on loopback.
//!
//! [`run`] generates a throw-away cluster CA, re-executes the current binary with the hidden
//! argument [`SERVER_ROLE_ARG`] (the binary's `main` must call [`maybe_server_role`] first
//! thing), and measures against that child, for each runtime choice:
//!
//! * TCP, 1 in flight: length-prefixed ping-pong over one `TCP_NODELAY` connection (the floor);
//! * QUIC RPC, 1 in flight: [`Network::call`] over the one reused connection;
//! * TCP and QUIC RPC with `inflight` requests outstanding (pipelined on the one TCP
//!   connection; `inflight` concurrent callers sharing the one QUIC connection).
//!
//! The child echoes every request. Both processes use the same runtime kind per row
//! (current-thread, or multi-thread with 2 workers).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport::{Bytes, Incoming, Network, PeerInfo, QuicConfig, QuicNetwork};

/// Hidden first argument that makes the binary act as the benchmark's server process.
pub const SERVER_ROLE_ARG: &str = "__rpc-bench-server";

const SERVER_ID: u64 = 0;
const CLIENT_ID: u64 = 1;
const SERVER_NAME: &str = "bench-server-0";
const CLIENT_NAME: &str = "bench-client-0";
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Which tokio runtime both processes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// `new_current_thread`: everything on one thread.
    CurrentThread,
    /// `new_multi_thread` with 2 worker threads.
    MultiThread,
}

impl RuntimeKind {
    fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::CurrentThread => "current-thread",
            RuntimeKind::MultiThread => "multi-thread",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "current-thread" | "ct" => Ok(RuntimeKind::CurrentThread),
            "multi-thread" | "mt" => Ok(RuntimeKind::MultiThread),
            other => Err(format!(
                "unknown runtime {other:?} (current-thread | multi-thread)"
            )),
        }
    }

    fn build(self) -> Result<tokio::runtime::Runtime, String> {
        let rt = match self {
            RuntimeKind::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            RuntimeKind::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
        };
        rt.map_err(|e| format!("runtime: {e}"))
    }
}

/// Options of the RPC benchmark.
#[derive(Debug, Clone)]
pub struct RpcBenchOpts {
    /// Round trips measured for each 1-in-flight latency row (after `warmup`).
    pub requests: usize,
    /// Requests in each throughput row.
    pub throughput_requests: usize,
    /// Requests outstanding in the throughput rows.
    pub inflight: usize,
    /// Request (and response) payload size.
    pub payload_bytes: usize,
    /// Unmeasured round trips before each row.
    pub warmup: usize,
    /// Runtime choices to measure, one child process each.
    pub runtimes: Vec<RuntimeKind>,
}

impl Default for RpcBenchOpts {
    fn default() -> Self {
        Self {
            requests: 20_000,
            throughput_requests: 200_000,
            inflight: 64,
            payload_bytes: 64,
            warmup: 2_000,
            runtimes: vec![RuntimeKind::CurrentThread, RuntimeKind::MultiThread],
        }
    }
}

/// One measured row.
#[derive(Debug, Clone)]
struct Row {
    runtime: RuntimeKind,
    transport: &'static str,
    inflight: usize,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    mean_us: f64,
    ops_per_sec: f64,
}

/// Runs the benchmark and prints a table. Errors are descriptive strings.
pub fn run(opts: RpcBenchOpts) -> Result<(), String> {
    if opts.requests == 0 || opts.inflight == 0 || opts.throughput_requests == 0 {
        return Err("requests, throughput_requests and inflight must be positive".into());
    }
    let dir = std::env::temp_dir().join(format!("rpc-bench-{}", std::process::id()));
    transport::certs::generate_cluster(&dir, &[SERVER_NAME, CLIENT_NAME])
        .map_err(|e| e.to_string())?;
    let result = run_all(&opts, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    print_table(&opts, &rows);
    Ok(())
}

fn run_all(opts: &RpcBenchOpts, dir: &Path) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for &kind in &opts.runtimes {
        let mut child = ChildServer::spawn(dir, kind)?;
        let (quic_addr, tcp_addr) = (child.quic_addr, child.tcp_addr);
        let rt = kind.build()?;
        let r = rt.block_on(measure(opts, kind, dir, quic_addr, tcp_addr));
        drop(rt);
        child.stop();
        rows.extend(r?);
    }
    Ok(rows)
}

async fn measure(
    opts: &RpcBenchOpts,
    kind: RuntimeKind,
    dir: &Path,
    quic_addr: SocketAddr,
    tcp_addr: SocketAddr,
) -> Result<Vec<Row>, String> {
    let payload = vec![0x5au8; opts.payload_bytes];
    let mut rows = Vec::new();

    // TCP floor.
    let mut tcp = tokio::net::TcpStream::connect(tcp_addr)
        .await
        .map_err(|e| format!("tcp connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    for _ in 0..opts.warmup {
        tcp_round_trip(&mut tcp, &payload).await?;
    }
    let mut lat = Vec::with_capacity(opts.requests);
    let start = Instant::now();
    for _ in 0..opts.requests {
        let t = Instant::now();
        tcp_round_trip(&mut tcp, &payload).await?;
        lat.push(t.elapsed());
    }
    rows.push(row(
        kind,
        "tcp",
        1,
        &mut lat,
        opts.requests,
        start.elapsed(),
    ));
    let (lat, elapsed) =
        tcp_pipelined(tcp, &payload, opts.inflight, opts.throughput_requests).await?;
    let mut lat = lat;
    rows.push(row(
        kind,
        "tcp",
        opts.inflight,
        &mut lat,
        opts.throughput_requests,
        elapsed,
    ));

    // QUIC RPC.
    let identity = transport::certs::load_identity(dir, CLIENT_NAME).map_err(|e| e.to_string())?;
    let mut peers = BTreeMap::new();
    peers.insert(SERVER_ID, PeerInfo::server(SERVER_NAME, quic_addr));
    peers.insert(CLIENT_ID, PeerInfo::client_only(CLIENT_NAME));
    let cfg = QuicConfig::new(
        CLIENT_ID,
        identity,
        "127.0.0.1:0".parse().map_err(|_| "addr")?,
        peers,
    );
    let net = Arc::new(QuicNetwork::bind(cfg).map_err(|e| e.to_string())?);
    let body = Bytes::from(payload);
    for _ in 0..opts.warmup {
        net.call(SERVER_ID, body.clone(), CALL_DEADLINE)
            .await
            .map_err(|e| format!("warmup call: {e}"))?;
    }
    let mut lat = Vec::with_capacity(opts.requests);
    let start = Instant::now();
    for _ in 0..opts.requests {
        let t = Instant::now();
        net.call(SERVER_ID, body.clone(), CALL_DEADLINE)
            .await
            .map_err(|e| format!("call: {e}"))?;
        lat.push(t.elapsed());
    }
    rows.push(row(
        kind,
        "quic-rpc",
        1,
        &mut lat,
        opts.requests,
        start.elapsed(),
    ));

    let per_task = opts.throughput_requests.div_ceil(opts.inflight);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(opts.inflight);
    for _ in 0..opts.inflight {
        let (net, body) = (net.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                net.call(SERVER_ID, body.clone(), CALL_DEADLINE)
                    .await
                    .map_err(|e| format!("call: {e}"))?;
                lat.push(t.elapsed());
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut lat = Vec::with_capacity(per_task * opts.inflight);
    for t in tasks {
        lat.extend(t.await.map_err(|e| format!("task: {e}"))??);
    }
    let elapsed = start.elapsed();
    let n = lat.len();
    rows.push(row(kind, "quic-rpc", opts.inflight, &mut lat, n, elapsed));
    net.shutdown();
    Ok(rows)
}

async fn tcp_round_trip(tcp: &mut tokio::net::TcpStream, payload: &[u8]) -> Result<(), String> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    tcp.write_all(&frame)
        .await
        .map_err(|e| format!("tcp write: {e}"))?;
    let mut header = [0u8; 4];
    tcp.read_exact(&mut header)
        .await
        .map_err(|e| format!("tcp read: {e}"))?;
    let len = u32::from_be_bytes(header) as usize;
    if len != payload.len() {
        return Err(format!("tcp: bad echo length {len}"));
    }
    let mut buf = vec![0u8; len];
    tcp.read_exact(&mut buf)
        .await
        .map_err(|e| format!("tcp read: {e}"))?;
    Ok(())
}

/// `total` requests with `inflight` outstanding on one TCP connection.
async fn tcp_pipelined(
    tcp: tokio::net::TcpStream,
    payload: &[u8],
    inflight: usize,
    total: usize,
) -> Result<(Vec<Duration>, Duration), String> {
    let (mut rd, mut wr) = tcp.into_split();
    let sem = Arc::new(tokio::sync::Semaphore::new(inflight));
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let start = Instant::now();
    let writer = {
        let sem = sem.clone();
        tokio::spawn(async move {
            for _ in 0..total {
                let permit = sem.acquire().await.map_err(|e| e.to_string())?;
                permit.forget();
                let _ = sent_tx.send(Instant::now());
                wr.write_all(&frame)
                    .await
                    .map_err(|e| format!("tcp write: {e}"))?;
            }
            Ok::<_, String>(wr)
        })
    };
    let mut lat = Vec::with_capacity(total);
    let mut rd_buf = tokio::io::BufReader::new(&mut rd);
    let mut buf = vec![0u8; payload.len()];
    for _ in 0..total {
        let mut header = [0u8; 4];
        rd_buf
            .read_exact(&mut header)
            .await
            .map_err(|e| format!("tcp read: {e}"))?;
        rd_buf
            .read_exact(&mut buf)
            .await
            .map_err(|e| format!("tcp read: {e}"))?;
        let sent = sent_rx.recv().await.ok_or("writer ended early")?;
        lat.push(sent.elapsed());
        sem.add_permits(1);
    }
    let elapsed = start.elapsed();
    writer.await.map_err(|e| format!("writer: {e}"))??;
    Ok((lat, elapsed))
}

fn row(
    runtime: RuntimeKind,
    transport: &'static str,
    inflight: usize,
    lat: &mut [Duration],
    n: usize,
    elapsed: Duration,
) -> Row {
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i.min(lat.len() - 1)].as_secs_f64() * 1e6
    };
    Row {
        runtime,
        transport,
        inflight,
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        mean_us: if lat.is_empty() {
            0.0
        } else {
            lat.iter().map(|d| d.as_secs_f64()).sum::<f64>() * 1e6 / lat.len() as f64
        },
        ops_per_sec: n as f64 / elapsed.as_secs_f64().max(1e-9),
    }
}

fn print_table(opts: &RpcBenchOpts, rows: &[Row]) {
    println!(
        "RPC benchmark: two processes on loopback, {} B payload, {} round trips per latency row, {} per throughput row",
        opts.payload_bytes, opts.requests, opts.throughput_requests
    );
    println!(
        "{:<15} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "runtime", "transport", "in-flight", "p50 us", "p90 us", "p99 us", "mean us", "ops/s"
    );
    for r in rows {
        println!(
            "{:<15} {:<9} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>11.0}",
            r.runtime.as_str(),
            r.transport,
            r.inflight,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.mean_us,
            r.ops_per_sec
        );
    }
    for kind in &opts.runtimes {
        let find = |t: &str, n: usize| {
            rows.iter()
                .find(|r| r.runtime == *kind && r.transport == t && r.inflight == n)
        };
        if let (Some(tcp), Some(quic)) = (find("tcp", 1), find("quic-rpc", 1)) {
            println!(
                "{}: quic-rpc p50 / tcp p50 = {:.2}x (target <= 1.5x)",
                kind.as_str(),
                quic.p50_us / tcp.p50_us.max(1e-9)
            );
        }
        if let Some(q) = find("quic-rpc", opts.inflight) {
            println!(
                "{}: quic-rpc with {} in flight: {:.0} RPC/s (target >= 50000)",
                kind.as_str(),
                opts.inflight,
                q.ops_per_sec
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server role

struct ChildServer {
    child: Child,
    quic_addr: SocketAddr,
    tcp_addr: SocketAddr,
}

impl ChildServer {
    fn spawn(dir: &Path, kind: RuntimeKind) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .arg(SERVER_ROLE_ARG)
            .arg(dir)
            .arg(kind.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn server process: {e}"))?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("read child: {e}"))?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        let parsed = match parts.as_slice() {
            ["READY", q, t] => q
                .parse::<SocketAddr>()
                .ok()
                .zip(t.parse::<SocketAddr>().ok()),
            _ => None,
        };
        match parsed {
            Some((quic_addr, tcp_addr)) => Ok(Self {
                child,
                quic_addr,
                tcp_addr,
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("server process did not start: {line:?}"))
            }
        }
    }

    fn stop(&mut self) {
        // Closing its stdin tells the child to exit; kill it if it does not.
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// If this process was started as the benchmark's server (first argument
/// [`SERVER_ROLE_ARG`]), runs the server until its stdin closes and returns `Some(result)`;
/// otherwise returns `None` at once. Call it first thing in `main`.
pub fn maybe_server_role() -> Option<Result<(), String>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(SERVER_ROLE_ARG) {
        return None;
    }
    Some(server_main(&args[2..]))
}

fn server_main(args: &[String]) -> Result<(), String> {
    let [dir, kind] = args else {
        return Err(format!("usage: {SERVER_ROLE_ARG} <cert-dir> <runtime>"));
    };
    let dir = PathBuf::from(dir);
    let kind = RuntimeKind::parse(kind)?;
    // Exit when the parent closes our stdin (or dies).
    std::thread::spawn(|| {
        let mut sink = String::new();
        while let Ok(n) = std::io::stdin().read_line(&mut sink) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
    let rt = kind.build()?;
    rt.block_on(async move {
        let identity =
            transport::certs::load_identity(&dir, SERVER_NAME).map_err(|e| e.to_string())?;
        let mut peers = BTreeMap::new();
        peers.insert(CLIENT_ID, PeerInfo::client_only(CLIENT_NAME));
        let cfg = QuicConfig::new(
            SERVER_ID,
            identity,
            "127.0.0.1:0".parse().map_err(|_| "addr")?,
            peers,
        );
        let net = QuicNetwork::bind(cfg).map_err(|e| e.to_string())?;
        let quic_addr = net.local_addr().map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let tcp_addr = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(tcp_echo(sock));
            }
        });
        println!("READY {quic_addr} {tcp_addr}");
        while let Some(inc) = net.recv().await {
            if let Incoming::Request {
                payload, responder, ..
            } = inc
            {
                responder.respond(payload);
            }
        }
        Ok::<(), String>(())
    })
}

/// Echoes length-prefixed frames, flushing only when no more input is buffered (so pipelined
/// requests are answered in batches, as a good TCP server would).
async fn tcp_echo(sock: tokio::net::TcpStream) {
    let _ = sock.set_nodelay(true);
    let (rd, wr) = sock.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    let mut wr = tokio::io::BufWriter::new(wr);
    let mut buf = Vec::new();
    loop {
        let mut header = [0u8; 4];
        if rd.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > 1 << 20 {
            return;
        }
        buf.resize(len, 0);
        if rd.read_exact(&mut buf).await.is_err() {
            return;
        }
        if wr.write_all(&header).await.is_err() || wr.write_all(&buf).await.is_err() {
            return;
        }
        if rd.buffer().is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
}
