//! Replicated-log benchmark over real QUIC: five replicas of the Raft log and of the atomic
//! broadcast log on loopback, mutual TLS (certificates from `transport::certs` in a temporary
//! directory), raft-engine with fsync in temporary directories on the same disk, the
//! conformance suite's `TestMachine` (`Append` commands).
//!
//! For each log it measures, over a fixed duration per cell (after a short warm-up):
//!
//! * write latency p50/p99 and throughput with 1, 16 and 128 concurrent proposers (Raft:
//!   through the leader, and one proposer through a follower too; atomic broadcast: proposers
//!   spread round-robin over the members);
//! * linearizable read latency p50/p99 with one reader (Raft: ReadIndex on the leader and on a
//!   follower; atomic broadcast: the read barrier on one member).
//!
//! ```sh
//! cargo run --release -p benches -- logbench [raft|abcast|both] [--quick] \
//!     [--runtime ct|local|mt|all] [--secs S] [--snapshot-every N]
//! cargo run --release -p benches -- logbench sim [--quick]   # raft_bench + abcast_bench
//! ```
//!
//! Defaults: both logs, `ct`, 3 s cells after 0.3 s of warm-up (`--quick`: 0.5 s after
//! 0.1 s), the logs' default configurations. `--snapshot-every N` overrides both logs'
//! `snapshot_every` (a diagnostic: `TestMachine`'s history only grows, so every snapshot is
//! larger than the last and is taken on the log's driver thread). `sim` runs the in-process
//! benches over the simulated network (`raft_bench`, `abcast_bench`) instead.
//!
//! A proposer (reader) is a task that proposes (reads) in a loop, one operation at a time.
//! Latency samples are the operations that started after the warm-up and finished before the
//! end of the cell; throughput counts the operations that finished inside the measured window.
//!
//! # Runtime arrangements
//!
//! Wake-ups across threads dominate small messages on a 2-core machine, so where the tasks run
//! matters; [`Arrangement`] selects it:
//!
//! * `ct` (default): every replica is one OS thread running a current-thread tokio runtime that
//!   owns its `QuicNetwork` (bound inside it) and the log's network tasks; the load generator
//!   runs on its own current-thread runtime on the main thread. (Each log also has its own
//!   driver thread: the Raft Ready loop, the atomic broadcast core.)
//! * `local`: like `ct`, but each proposer task runs on the runtime of the replica it talks to
//!   (as an RPC server inside a database node would).
//! * `mt`: one tokio multi-thread runtime (2 workers) for every replica's network and the load
//!   generator.

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use replication::abcast::{AbcastConfig, AbcastLog};
use replication::conformance::{TestCommand, TestMachine, TestQuery};
use replication::raft::{RaftConfig, RaftLog};
use replication::{ReadConsistency, ReplicatedLog, RequestId, Role};
use transport::{Network, QuicConfig, QuicNetwork};

/// Which replicated log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// `replication::raft::RaftLog`.
    Raft,
    /// `replication::abcast::AbcastLog`.
    Abcast,
}

impl LogKind {
    fn name(self) -> &'static str {
        match self {
            LogKind::Raft => "Raft",
            LogKind::Abcast => "atomic broadcast",
        }
    }
}

/// Where the replicas' networks and the load generator run. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrangement {
    /// One current-thread runtime per replica; the load on another current-thread runtime.
    PerReplica,
    /// As `PerReplica`, each proposer on the runtime of the replica it proposes to.
    Colocated,
    /// One multi-thread runtime (2 workers) for everything.
    Shared,
}

impl Arrangement {
    /// Parses `ct`, `local` or `mt`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ct" => Some(Self::PerReplica),
            "local" => Some(Self::Colocated),
            "mt" => Some(Self::Shared),
            _ => None,
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::PerReplica => "ct",
            Self::Colocated => "local",
            Self::Shared => "mt",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::PerReplica => {
                "ct: one current-thread runtime per replica, load on its own current-thread runtime"
            }
            Self::Colocated => {
                "local: one current-thread runtime per replica, each proposer on its replica's runtime"
            }
            Self::Shared => "mt: one multi-thread runtime (2 workers) for replicas and load",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LogbenchOpts {
    /// The logs to measure, in order.
    pub logs: Vec<LogKind>,
    /// Runtime arrangements to measure (each log in each).
    pub arrangements: Vec<Arrangement>,
    /// Replicas per log.
    pub replicas: usize,
    /// Measured duration of one cell.
    pub cell: Duration,
    /// Warm-up before the measured window of each cell.
    pub warmup: Duration,
    /// Overrides both logs' `snapshot_every` (applied entries between state snapshots);
    /// `None` keeps their defaults (10,000).
    pub snapshot_every: Option<u64>,
}

impl Default for LogbenchOpts {
    fn default() -> Self {
        Self {
            logs: vec![LogKind::Raft, LogKind::Abcast],
            arrangements: vec![Arrangement::PerReplica],
            replicas: 5,
            cell: Duration::from_secs(3),
            warmup: Duration::from_millis(300),
            snapshot_every: None,
        }
    }
}

impl LogbenchOpts {
    /// The `--quick` settings: 0.5 s cells.
    pub fn quick(mut self) -> Self {
        self.cell = Duration::from_millis(500);
        self.warmup = Duration::from_millis(100);
        self
    }
}

/// Operation of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Read,
}

/// Whom the workers of a cell talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The Raft leader.
    Leader,
    /// A Raft follower.
    Follower,
    /// Atomic broadcast: worker `w` uses member `w mod n`.
    Spread,
    /// Atomic broadcast: one member.
    Member,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Leader => "leader",
            Via::Follower => "follower",
            Via::Spread => "all members",
            Via::Member => "member 1",
        }
    }
}

/// One measured cell.
#[derive(Debug, Clone)]
pub struct CellResult {
    op: Op,
    workers: usize,
    via: Via,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
    /// Operations completed per second in the measured window.
    pub ops_per_s: f64,
    /// Failed operations in the measured window.
    pub errors: u64,
    /// Mean synced writes per member per completed operation (atomic broadcast only).
    fsyncs_per_op: Option<f64>,
}

impl CellResult {
    fn workload(&self) -> String {
        match self.op {
            Op::Write => format!("write x{}", self.workers),
            Op::Read => format!("linearizable read x{}", self.workers),
        }
    }
}

/// Results of one log in one arrangement.
#[derive(Debug, Clone)]
pub struct LogReport {
    /// Which log.
    pub kind: LogKind,
    /// Which arrangement.
    pub arrangement: Arrangement,
    /// The cells, in the order run.
    pub cells: Vec<CellResult>,
    /// Notes (leader, counters).
    pub notes: Vec<String>,
}

fn percentile_us(sorted: &[Duration], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    u64::try_from(sorted[i].as_micros()).unwrap_or(u64::MAX)
}

// -------------------------------------------------------------------------------------------
// Cluster

/// A replica's log handle.
#[derive(Clone)]
enum Handle {
    Raft(Arc<RaftLog<TestMachine>>),
    Abcast(Arc<AbcastLog<TestMachine>>),
}

impl Handle {
    fn log(&self) -> Arc<dyn ReplicatedLog<TestMachine>> {
        match self {
            Handle::Raft(l) => l.clone(),
            Handle::Abcast(l) => l.clone(),
        }
    }

    fn role(&self) -> Role {
        match self {
            Handle::Raft(l) => l.status().role,
            Handle::Abcast(l) => l.status().role,
        }
    }

    fn fsyncs(&self) -> Option<u64> {
        match self {
            Handle::Raft(_) => None,
            Handle::Abcast(l) => Some(l.stats().fsyncs),
        }
    }

    fn shutdown(&self) {
        match self {
            Handle::Raft(l) => l.shutdown(),
            Handle::Abcast(l) => l.shutdown(),
        }
    }
}

struct Replica {
    handle: Handle,
    /// The runtime hosting the replica's network.
    rt: tokio::runtime::Handle,
}

/// Five (n) replicas of one log over QUIC on loopback.
struct Cluster {
    replicas: Vec<Replica>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    /// `Shared` arrangement: the runtime and the networks to shut down.
    shared: Option<(tokio::runtime::Runtime, Vec<Arc<QuicNetwork>>)>,
    _dir: tempfile::TempDir,
}

fn node_name(kind: LogKind, id: u64) -> String {
    match kind {
        LogKind::Raft => format!("raft-{id}"),
        LogKind::Abcast => format!("abcast-{id}"),
    }
}

/// Binds the network and starts the log; must run inside the replica's runtime.
fn start_replica(
    kind: LogKind,
    config: QuicConfig,
    socket: UdpSocket,
    n: u64,
    data_dir: &Path,
    snapshot_every: Option<u64>,
) -> Result<(Handle, Arc<QuicNetwork>), String> {
    let id = config.local_id;
    let net = Arc::new(QuicNetwork::bind_socket(config, socket).map_err(|e| e.to_string())?);
    let dyn_net: Arc<dyn Network> = net.clone();
    let handle = match kind {
        LogKind::Raft => {
            let mut cfg = RaftConfig::new(id, (0..n).collect(), data_dir);
            if let Some(every) = snapshot_every {
                cfg.snapshot_every = every;
            }
            Handle::Raft(
                RaftLog::start(cfg, dyn_net, TestMachine::default()).map_err(|e| e.to_string())?,
            )
        }
        LogKind::Abcast => {
            let mut cfg = AbcastConfig::new(id, n);
            if let Some(every) = snapshot_every {
                cfg.snapshot_every = every;
            }
            let log = AbcastLog::open(cfg, data_dir, dyn_net, TestMachine::default())
                .map_err(|e| e.to_string())?;
            Handle::Abcast(Arc::new(log))
        }
    };
    Ok((handle, net))
}

impl Cluster {
    fn start(
        kind: LogKind,
        n: usize,
        arrangement: Arrangement,
        snapshot_every: Option<u64>,
    ) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("logbench-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = (0..n as u64).map(|i| node_name(kind, i)).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let nodes = transport::loopback::group(&dir.path().join("certs"), &name_refs)
            .map_err(|e| e.to_string())?;
        let (configs, sockets): (Vec<QuicConfig>, Vec<UdpSocket>) = nodes.into_iter().unzip();
        let mut cluster = Cluster {
            replicas: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            shared: None,
            _dir: dir,
        };
        let data = |i: usize| cluster._dir.path().join(format!("data-{i}"));
        let data_dirs: Vec<_> = (0..n).map(data).collect();
        match arrangement {
            Arrangement::Shared => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut nets = Vec::new();
                for ((config, socket), dir) in configs.into_iter().zip(sockets).zip(&data_dirs) {
                    let _guard = rt.enter();
                    let (handle, net) =
                        start_replica(kind, config, socket, n as u64, dir, snapshot_every)?;
                    cluster.replicas.push(Replica {
                        handle,
                        rt: rt.handle().clone(),
                    });
                    nets.push(net);
                }
                cluster.shared = Some((rt, nets));
            }
            Arrangement::PerReplica | Arrangement::Colocated => {
                for ((config, socket), dir) in configs.into_iter().zip(sockets).zip(data_dirs) {
                    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                    let id = config.local_id;
                    let thread = std::thread::Builder::new()
                        .name(format!("replica-{id}"))
                        .spawn(move || {
                            let start = move || {
                                start_replica(kind, config, socket, n as u64, &dir, snapshot_every)
                            };
                            replica_thread(start, ready_tx, stop_rx)
                        })
                        .map_err(|e| e.to_string())?;
                    cluster.threads.push(thread);
                    cluster.stops.push(stop_tx);
                    let (handle, rt) = ready_rx
                        .recv()
                        .map_err(|_| format!("replica {id} thread died"))??;
                    cluster.replicas.push(Replica { handle, rt });
                }
            }
        }
        Ok(cluster)
    }

    /// Stops every replica and waits for their threads.
    fn stop(mut self) {
        for r in &self.replicas {
            r.handle.shutdown();
        }
        self.replicas.clear();
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some((rt, nets)) = self.shared.take() {
            for net in &nets {
                net.shutdown();
            }
            drop(nets);
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

type Ready = Result<(Handle, tokio::runtime::Handle), String>;

/// One replica: a current-thread runtime hosting its network until told to stop.
fn replica_thread(
    start: impl FnOnce() -> Result<(Handle, Arc<QuicNetwork>), String>,
    ready: std::sync::mpsc::Sender<Ready>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let started = {
        let _guard = rt.enter();
        start()
    };
    let (handle, net) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok((handle.clone(), rt.handle().clone())));
    rt.block_on(async {
        let _ = stop.await;
    });
    handle.shutdown();
    drop(handle);
    net.shutdown();
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(1), net.wait_idle()).await;
    });
}

// -------------------------------------------------------------------------------------------
// Load

static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);

struct WorkerOut {
    samples: Vec<Duration>,
    completed_in_window: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(
    log: Arc<dyn ReplicatedLog<TestMachine>>,
    op: Op,
    measure_from: Instant,
    end: Instant,
) -> WorkerOut {
    let client = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
    let mut out = WorkerOut {
        samples: Vec::new(),
        completed_in_window: 0,
        errors: 0,
        first_error: None,
    };
    let mut seq = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        seq += 1;
        let result = match op {
            Op::Write => log
                .propose(RequestId { client, seq }, TestCommand::Append(seq))
                .await
                .map(drop),
            Op::Read => log
                .read(TestQuery::Counter, ReadConsistency::Linearizable)
                .await
                .map(drop),
        };
        let t1 = Instant::now();
        let in_window = t1 >= measure_from && t1 <= end;
        match result {
            Ok(()) => {
                if in_window {
                    out.completed_in_window += 1;
                }
                if t0 >= measure_from && t1 <= end {
                    out.samples.push(t1 - t0);
                }
            }
            Err(e) => {
                if in_window {
                    out.errors += 1;
                }
                if out.first_error.is_none() {
                    out.first_error = Some(e.to_string());
                }
            }
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn run_cell(
    cluster: &Cluster,
    arrangement: Arrangement,
    op: Op,
    workers: usize,
    via: Via,
    targets: &[usize],
    opts: &LogbenchOpts,
) -> Result<CellResult, String> {
    let fsyncs_before: Option<u64> = cluster.replicas.iter().map(|r| r.handle.fsyncs()).sum();
    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.cell;
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let target = targets[w % targets.len()];
        let replica = &cluster.replicas[target];
        let fut = worker(replica.handle.log(), op, measure_from, end);
        let task = match arrangement {
            Arrangement::Colocated => replica.rt.spawn(fut),
            Arrangement::PerReplica | Arrangement::Shared => tokio::spawn(fut),
        };
        tasks.push(task);
    }
    let mut samples = Vec::new();
    let mut completed = 0u64;
    let mut errors = 0u64;
    let mut first_error = None;
    for t in tasks {
        let out = t.await.map_err(|e| e.to_string())?;
        samples.extend(out.samples);
        completed += out.completed_in_window;
        errors += out.errors;
        if first_error.is_none() {
            first_error = out.first_error;
        }
    }
    if let Some(e) = first_error {
        eprintln!("  note: first error in cell {op:?} x{workers} via {via:?}: {e}");
    }
    let fsyncs_after: Option<u64> = cluster.replicas.iter().map(|r| r.handle.fsyncs()).sum();
    samples.sort_unstable();
    let secs = opts.cell.as_secs_f64();
    let fsyncs_per_op = match (fsyncs_before, fsyncs_after, op) {
        (Some(b), Some(a), Op::Write) if completed > 0 => Some(
            (a - b) as f64
                / cluster.replicas.len() as f64
                / completed as f64
                // Fsyncs are counted over the whole cell (warm-up and tail included).
                * (secs / (start.elapsed().as_secs_f64()).max(secs)),
        ),
        _ => None,
    };
    Ok(CellResult {
        op,
        workers,
        via,
        p50_us: percentile_us(&samples, 0.50),
        p99_us: percentile_us(&samples, 0.99),
        ops_per_s: completed as f64 / secs,
        errors,
        fsyncs_per_op,
    })
}

async fn wait_for_leader(cluster: &Cluster) -> Result<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(i) = cluster
            .replicas
            .iter()
            .position(|r| r.handle.role() == Role::Leader)
        {
            return Ok(i);
        }
        if Instant::now() > deadline {
            return Err("no Raft leader within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Proposes until every replica answers once (leader elected, ring running, connections up).
async fn warm_up(cluster: &Cluster) -> Result<(), String> {
    let client = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
    let mut seq = 0;
    for r in &cluster.replicas {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            seq += 1;
            match r
                .handle
                .log()
                .propose(RequestId { client, seq }, TestCommand::Append(0))
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(format!("warm-up: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        r.handle
            .log()
            .read(TestQuery::Counter, ReadConsistency::Linearizable)
            .await
            .map_err(|e| format!("warm-up read: {e}"))?;
    }
    Ok(())
}

async fn bench_log(
    cluster: &Cluster,
    kind: LogKind,
    arrangement: Arrangement,
    opts: &LogbenchOpts,
) -> Result<LogReport, String> {
    let n = cluster.replicas.len();
    let mut notes = Vec::new();
    let mut cells = Vec::new();
    match kind {
        LogKind::Raft => {
            let leader = wait_for_leader(cluster).await?;
            warm_up(cluster).await?;
            let leader = match wait_for_leader(cluster).await? {
                l if l == leader => l,
                l => {
                    notes.push(format!("leadership moved from {leader} to {l} at start"));
                    l
                }
            };
            let follower = (leader + 1) % n;
            notes.push(format!(
                "leader: replica {leader}; follower used: {follower}"
            ));
            let plan = [
                (Op::Write, 1, Via::Leader),
                (Op::Write, 1, Via::Follower),
                (Op::Write, 16, Via::Leader),
                (Op::Write, 128, Via::Leader),
                (Op::Read, 1, Via::Leader),
                (Op::Read, 1, Via::Follower),
            ];
            for (op, workers, via) in plan {
                let target = if via == Via::Leader { leader } else { follower };
                let cell =
                    run_cell(cluster, arrangement, op, workers, via, &[target], opts).await?;
                cells.push(cell);
            }
            if cluster.replicas[leader].handle.role() != Role::Leader {
                notes.push("WARNING: the leader changed during the run".into());
            }
            if let Handle::Raft(l) = &cluster.replicas[follower].handle {
                notes.push(format!(
                    "follower forwarded {} proposals; leader snapshots taken {}",
                    l.stats().forwarded,
                    match &cluster.replicas[leader].handle {
                        Handle::Raft(l) => l.stats().snapshots_taken,
                        Handle::Abcast(_) => 0,
                    }
                ));
            }
        }
        LogKind::Abcast => {
            warm_up(cluster).await?;
            let all: Vec<usize> = (0..n).collect();
            let plan = [
                (Op::Write, 1, Via::Member),
                (Op::Write, 16, Via::Spread),
                (Op::Write, 16, Via::Member),
                (Op::Write, 128, Via::Spread),
                (Op::Write, 128, Via::Member),
                (Op::Read, 1, Via::Member),
            ];
            for (op, workers, via) in plan {
                let targets: &[usize] = if via == Via::Member { &[1 % n] } else { &all };
                let cell = run_cell(cluster, arrangement, op, workers, via, targets, opts).await?;
                cells.push(cell);
            }
            if let Handle::Abcast(l) = &cluster.replicas[1 % n].handle {
                let s = l.stats();
                notes.push(format!(
                    "member 1: delivered {}, fsyncs {}, records persisted {}, retransmits asked {}, snapshots {}",
                    s.delivered, s.fsyncs, s.records_persisted, s.core.retransmits_requested, s.snapshots
                ));
            }
        }
    }
    Ok(LogReport {
        kind,
        arrangement,
        cells,
        notes,
    })
}

/// Runs one log in one arrangement: starts a fresh cluster, measures, stops it.
fn run_one(
    kind: LogKind,
    arrangement: Arrangement,
    opts: &LogbenchOpts,
) -> Result<LogReport, String> {
    let cluster = Cluster::start(kind, opts.replicas.max(1), arrangement, opts.snapshot_every)?;
    let result = match &cluster.shared {
        Some((rt, _)) => rt.block_on(bench_log(&cluster, kind, arrangement, opts)),
        None => {
            let load = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            load.block_on(bench_log(&cluster, kind, arrangement, opts))
        }
    };
    cluster.stop();
    result
}

// -------------------------------------------------------------------------------------------
// Output

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn rate(r: f64) -> String {
    let r = r.round() as u64;
    let s = r.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_report(r: &LogReport, replicas: usize) {
    println!(
        "\n### {} — {replicas} replicas, QUIC on loopback, fsync on ({})\n",
        r.kind.name(),
        r.arrangement.describe()
    );
    let abcast = r.kind == LogKind::Abcast;
    if abcast {
        println!("| workload | via | p50 ms | p99 ms | ops/s | errors | fsyncs/member/write |");
        println!("|---|---|---:|---:|---:|---:|---:|");
    } else {
        println!("| workload | via | p50 ms | p99 ms | ops/s | errors |");
        println!("|---|---|---:|---:|---:|---:|");
    }
    for c in &r.cells {
        let base = format!(
            "| {} | {} | {} | {} | {} | {} |",
            c.workload(),
            c.via.label(),
            ms(c.p50_us),
            ms(c.p99_us),
            rate(c.ops_per_s),
            c.errors
        );
        if abcast {
            let f = c.fsyncs_per_op.map_or("—".into(), |f| format!("{f:.3}"));
            println!("{base} {f} |");
        } else {
            println!("{base}");
        }
    }
    for note in &r.notes {
        println!("\n{note}");
    }
}

fn print_side_by_side(raft: &LogReport, abcast: &LogReport) {
    println!(
        "\n### Side by side ({}; Raft via the leader unless noted, atomic broadcast via members)\n",
        raft.arrangement.short()
    );
    println!("| workload | Raft p50 ms | Raft p99 ms | Raft ops/s | abcast p50 ms | abcast p99 ms | abcast ops/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let dash = "—".to_string();
    for rc in &raft.cells {
        let label = if rc.via == Via::Follower {
            format!("{} (Raft via follower)", rc.workload())
        } else {
            rc.workload()
        };
        let other = abcast
            .cells
            .iter()
            .find(|a| a.op == rc.op && a.workers == rc.workers && rc.via == Via::Leader);
        let (ap50, ap99, aops) = match other {
            Some(a) => (ms(a.p50_us), ms(a.p99_us), rate(a.ops_per_s)),
            None => (dash.clone(), dash.clone(), dash.clone()),
        };
        println!(
            "| {label} | {} | {} | {} | {ap50} | {ap99} | {aops} |",
            ms(rc.p50_us),
            ms(rc.p99_us),
            rate(rc.ops_per_s)
        );
    }
}

fn print_arrangements(reports: &[LogReport]) {
    println!("\n### Runtime arrangements compared\n");
    println!("| log | arrangement | write x1 p50 ms | write x16 ops/s | write x128 ops/s | read x1 p50 ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in reports {
        let first = |op: Op, w: usize| {
            r.cells
                .iter()
                .find(|c| c.op == op && c.workers == w && c.via != Via::Follower)
        };
        let p50 = |c: Option<&CellResult>| c.map_or("—".into(), |c| ms(c.p50_us));
        let ops = |c: Option<&CellResult>| c.map_or("—".into(), |c| rate(c.ops_per_s));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.kind.name(),
            r.arrangement.short(),
            p50(first(Op::Write, 1)),
            ops(first(Op::Write, 16)),
            ops(first(Op::Write, 128)),
            p50(first(Op::Read, 1)),
        );
    }
}

/// Runs every log in every arrangement and prints the tables.
pub fn run(opts: &LogbenchOpts) -> Result<Vec<LogReport>, String> {
    println!(
        "logbench: {} replicas per log, {:.1} s per cell after {:.1} s warm-up, TestMachine Append",
        opts.replicas,
        opts.cell.as_secs_f64(),
        opts.warmup.as_secs_f64()
    );
    if let Some(every) = opts.snapshot_every {
        println!("snapshot_every overridden: {every} applied entries between state snapshots");
    }
    let mut reports = Vec::new();
    for &arrangement in &opts.arrangements {
        for &kind in &opts.logs {
            eprintln!("running {} ({})", kind.name(), arrangement.short());
            let report = run_one(kind, arrangement, opts)?;
            print_report(&report, opts.replicas);
            reports.push(report);
        }
        let raft = reports
            .iter()
            .find(|r| r.kind == LogKind::Raft && r.arrangement == arrangement);
        let abcast = reports
            .iter()
            .find(|r| r.kind == LogKind::Abcast && r.arrangement == arrangement);
        if let (Some(raft), Some(abcast)) = (raft, abcast) {
            print_side_by_side(raft, abcast);
        }
    }
    if opts.arrangements.len() > 1 {
        print_arrangements(&reports);
    }
    Ok(reports)
}

/// `logbench sim`: the in-process benches over the simulated network (`raft_bench`,
/// `abcast_bench`), default workloads.
pub fn run_sim(quick: bool) -> Result<(), String> {
    let mut raft_opts = crate::raft_bench::RaftBenchOpts::default();
    let mut abcast_opts = crate::abcast_bench::AbcastBenchOpts::default();
    if quick {
        raft_opts.latency_ops = 100;
        raft_opts.ops_per_client = 40;
        abcast_opts.latency_ops = 100;
        abcast_opts.ops_per_client = 40;
    }
    println!(
        "\nRaft over the simulated network ({} replicas, link delay {} us, {} proposers x {}):",
        raft_opts.replicas, raft_opts.link_delay_us, raft_opts.clients, raft_opts.ops_per_client
    );
    print!("{}", crate::raft_bench::run(raft_opts)?);
    println!(
        "\nAtomic broadcast over the simulated network ({} members, link delay {} us, {} proposers x {}):",
        abcast_opts.members,
        abcast_opts.link_delay_us,
        abcast_opts.clients,
        abcast_opts.ops_per_client
    );
    print!("{}", crate::abcast_bench::run(abcast_opts)?);
    Ok(())
}
