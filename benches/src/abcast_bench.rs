//! Atomic broadcast log micro-benchmark: a group of `AbcastLog`s in one process over the
//! simulated network (`transport::sim`, fixed per-link delay), each with a real raft-engine
//! journal (fsync) in a temporary directory. Measures proposal latency through one member,
//! throughput with many concurrent proposers spread over every member (batching, group
//! commit, pipelined sequence numbers), and linearizable read latency (read barrier).
//!
//! Wire it into the bench binary with `mod abcast_bench;` and call [`run`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use replication::abcast::{AbcastConfig, AbcastLog};
use replication::conformance::{TestCommand, TestMachine, TestQuery};
use replication::{ReadConsistency, ReplicatedLog, RequestId};
use transport::sim::{LinkConfig, SimHub};
use transport::Network;

/// What to measure.
#[derive(Debug, Clone)]
pub struct AbcastBenchOpts {
    /// Members of the group.
    pub members: usize,
    /// Sequential proposals (and reads) per latency measurement.
    pub latency_ops: usize,
    /// Concurrent proposers in the throughput run (spread over the members).
    pub clients: usize,
    /// Proposals per proposer in the throughput run.
    pub ops_per_client: usize,
    /// One-way delay of every simulated link, microseconds.
    pub link_delay_us: u64,
    /// Where the members' directories go (a fresh subdirectory, removed afterwards).
    pub data_dir: PathBuf,
}

impl Default for AbcastBenchOpts {
    fn default() -> Self {
        Self {
            members: 5,
            latency_ops: 500,
            clients: 64,
            ops_per_client: 200,
            link_delay_us: 50,
            data_dir: std::env::temp_dir(),
        }
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
}

/// The results.
#[derive(Debug, Clone, Default)]
pub struct AbcastBenchReport {
    /// Sequential proposals through one member.
    pub propose: Percentiles,
    /// Sequential linearizable reads through one member.
    pub read: Percentiles,
    /// Delivered proposals per second with `clients` concurrent proposers.
    pub throughput_ops_per_s: f64,
    /// Latency of the proposals of the throughput run.
    pub throughput_latency: Percentiles,
    /// Synced journal writes per member during the whole run (mean).
    pub fsyncs_per_member: u64,
    /// Retransmissions asked for, all members.
    pub retransmits: u64,
}

impl std::fmt::Display for AbcastBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, p: Percentiles| {
            writeln!(
                f,
                "{name:<28} p50 {:>7} us   p99 {:>7} us",
                p.p50_us, p.p99_us
            )
        };
        row(f, "abcast propose", self.propose)?;
        row(f, "abcast linearizable read", self.read)?;
        row(f, "abcast propose under load", self.throughput_latency)?;
        writeln!(
            f,
            "abcast throughput            {:.0} proposals/s ({} fsyncs per member, {} retransmits)",
            self.throughput_ops_per_s, self.fsyncs_per_member, self.retransmits
        )
    }
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        u64::try_from(samples[i].as_micros()).unwrap_or(u64::MAX)
    };
    Percentiles {
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

/// Runs the benchmark on its own tokio runtime and returns the figures.
pub fn run(opts: AbcastBenchOpts) -> Result<AbcastBenchReport, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let base = opts
        .data_dir
        .join(format!("abcast-bench-{}-{nanos}", std::process::id()));
    let result = runtime.block_on(bench(&opts, &base));
    let _ = std::fs::remove_dir_all(&base);
    result
}

async fn bench(
    opts: &AbcastBenchOpts,
    base: &std::path::Path,
) -> Result<AbcastBenchReport, String> {
    let n = opts.members.max(1);
    let hub = SimHub::start(1, LinkConfig::fixed(opts.link_delay_us)).ok_or("no runtime")?;
    let mut logs = Vec::new();
    for i in 0..n as u64 {
        let net: Arc<dyn Network> = Arc::new(hub.node(i).ok_or("node attached twice")?);
        let log = AbcastLog::open(
            AbcastConfig::new(i, n as u64),
            &base.join(i.to_string()),
            net,
            TestMachine::default(),
        )
        .map_err(|e| e.to_string())?;
        logs.push(Arc::new(log));
    }
    let mut report = AbcastBenchReport::default();
    let mut samples = Vec::with_capacity(opts.latency_ops);
    for seq in 1..=opts.latency_ops as u64 {
        let t = Instant::now();
        logs[0]
            .propose(RequestId { client: 1, seq }, TestCommand::Incr)
            .await
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
    }
    report.propose = percentiles(samples);

    let mut samples = Vec::with_capacity(opts.latency_ops);
    for _ in 0..opts.latency_ops {
        let t = Instant::now();
        logs[1 % n]
            .read(TestQuery::Counter, ReadConsistency::Linearizable)
            .await
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
    }
    report.read = percentiles(samples);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.clients {
        let log = Arc::clone(&logs[c % n]);
        let ops = opts.ops_per_client;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(ops);
            for k in 0..ops {
                let t = Instant::now();
                log.propose(
                    RequestId {
                        client: 1000 + c as u64,
                        seq: k as u64 + 1,
                    },
                    TestCommand::Incr,
                )
                .await
                .map_err(|e| e.to_string())?;
                samples.push(t.elapsed());
            }
            Ok::<_, String>(samples)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    report.throughput_ops_per_s = all.len() as f64 / elapsed.max(1e-9);
    report.throughput_latency = percentiles(all);
    let stats: Vec<_> = logs.iter().map(|l| l.stats()).collect();
    report.fsyncs_per_member = stats.iter().map(|s| s.fsyncs).sum::<u64>() / n as u64;
    report.retransmits = stats.iter().map(|s| s.core.retransmits_requested).sum();
    drop(logs);
    drop(hub);
    Ok(report)
}
