//! Atomic broadcast log micro-benchmark: a group of `AbcastLog`s in one process over the
//! simulated network (`transport::sim`, fixed per-link delay), each with a real raft-engine
//! journal (fsync) in a temporary directory. Measures proposal latency through one member,
//! throughput with many concurrent proposers spread over every member (batching, group
//! commit, pipelined sequence numbers), and linearizable read latency (read barrier).
//!
//! Wire it into the bench binary with `mod abcast_bench;` and call [`run`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use replication::abcast::{AbcastConfig, AbcastLog};
use replication::conformance::{TestCommand, TestMachine, TestQuery};
use replication::{ReadConsistency, ReplicatedLog, RequestId};
use transport::sim::{LinkConfig, SimHub};
use transport::Network;

pub use crate::sim_bench::Percentiles;
use crate::sim_bench::{run_in_scratch, throughput};

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
        self.propose.row(f, "abcast propose")?;
        self.read.row(f, "abcast linearizable read")?;
        self.throughput_latency
            .row(f, "abcast propose under load")?;
        writeln!(
            f,
            "abcast throughput            {:.0} proposals/s ({} fsyncs per member, {} retransmits)",
            self.throughput_ops_per_s, self.fsyncs_per_member, self.retransmits
        )
    }
}

/// Runs the benchmark on its own tokio runtime and returns the figures.
pub fn run(opts: AbcastBenchOpts) -> Result<AbcastBenchReport, String> {
    let data_dir = opts.data_dir.clone();
    run_in_scratch(&data_dir, "abcast-bench", |base| async move {
        bench(opts, &base).await
    })
}

async fn bench(opts: AbcastBenchOpts, base: &std::path::Path) -> Result<AbcastBenchReport, String> {
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
    report.propose = Percentiles::of(samples);

    let mut samples = Vec::with_capacity(opts.latency_ops);
    for _ in 0..opts.latency_ops {
        let t = Instant::now();
        logs[1 % n]
            .read(TestQuery::Counter, ReadConsistency::Linearizable)
            .await
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
    }
    report.read = Percentiles::of(samples);

    (report.throughput_ops_per_s, report.throughput_latency) =
        throughput(&logs, opts.clients, opts.ops_per_client).await?;
    let stats: Vec<_> = logs.iter().map(|l| l.stats()).collect();
    report.fsyncs_per_member = stats.iter().map(|s| s.fsyncs).sum::<u64>() / n as u64;
    report.retransmits = stats.iter().map(|s| s.core.retransmits_requested).sum();
    drop(logs);
    drop(hub);
    Ok(report)
}
