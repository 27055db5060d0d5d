//! Raft log micro-benchmark: a cluster of `RaftLog`s in one process over the simulated
//! network (`transport::sim`, fixed per-link delay), each with a real raft-engine (fsync) in
//! a temporary directory. Measures proposal latency through the leader and through a
//! follower (forwarded), throughput with many concurrent proposers (batching, group commit,
//! pipelining), and linearizable read latency (ReadIndex) on the leader and on a follower.
//!
//! Wire it into the bench binary with `mod raft_bench;` and call [`run`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use replication::conformance::{TestCommand, TestMachine, TestQuery};
use replication::raft::{RaftConfig, RaftLog};
use replication::{ReadConsistency, ReplicatedLog, RequestId, Role};
use transport::sim::{LinkConfig, SimHub};
use transport::Network;

pub use crate::sim_bench::Percentiles;
use crate::sim_bench::{run_in_scratch, throughput};

/// What to measure.
#[derive(Debug, Clone)]
pub struct RaftBenchOpts {
    /// Replicas in the cluster.
    pub replicas: usize,
    /// Sequential proposals (and reads) per latency measurement.
    pub latency_ops: usize,
    /// Concurrent proposers in the throughput run.
    pub clients: usize,
    /// Proposals per proposer in the throughput run.
    pub ops_per_client: usize,
    /// One-way delay of every simulated link, microseconds.
    pub link_delay_us: u64,
    /// Where the replicas' directories go (a fresh subdirectory, removed afterwards).
    pub data_dir: PathBuf,
}

impl Default for RaftBenchOpts {
    fn default() -> Self {
        Self {
            replicas: 5,
            latency_ops: 500,
            clients: 64,
            ops_per_client: 200,
            link_delay_us: 0,
            data_dir: std::env::temp_dir(),
        }
    }
}

/// The results.
#[derive(Debug, Clone, Default)]
pub struct RaftBenchReport {
    /// Sequential proposals submitted on the leader.
    pub propose_leader: Percentiles,
    /// Sequential proposals submitted on a follower (forwarded to the leader).
    pub propose_follower: Percentiles,
    /// Sequential linearizable reads on the leader.
    pub read_leader: Percentiles,
    /// Sequential linearizable reads on a follower.
    pub read_follower: Percentiles,
    /// Committed proposals per second with `clients` concurrent proposers.
    pub throughput_ops_per_s: f64,
    /// Latency of the proposals of the throughput run.
    pub throughput_latency: Percentiles,
}

impl std::fmt::Display for RaftBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.propose_leader.row(f, "propose via leader")?;
        self.propose_follower.row(f, "propose via follower")?;
        self.read_leader.row(f, "linearizable read, leader")?;
        self.read_follower.row(f, "linearizable read, follower")?;
        self.throughput_latency.row(f, "propose under load")?;
        writeln!(
            f,
            "throughput                   {:.0} proposals/s",
            self.throughput_ops_per_s
        )
    }
}

/// Runs the benchmark on its own tokio runtime and returns the figures.
pub fn run(opts: RaftBenchOpts) -> Result<RaftBenchReport, String> {
    let data_dir = opts.data_dir.clone();
    run_in_scratch(&data_dir, "raft-bench", |base| async move {
        bench(opts, &base).await
    })
}

async fn bench(opts: RaftBenchOpts, base: &std::path::Path) -> Result<RaftBenchReport, String> {
    let n = opts.replicas.max(1);
    let hub = SimHub::start(1, LinkConfig::fixed(opts.link_delay_us)).ok_or("no runtime")?;
    let mut logs = Vec::new();
    for i in 0..n as u64 {
        let net: Arc<dyn Network> = Arc::new(hub.node(i).ok_or("node attached twice")?);
        let config = RaftConfig::new(i, (0..n as u64).collect(), base.join(i.to_string()));
        logs.push(RaftLog::start(config, net, TestMachine::default()).map_err(|e| e.to_string())?);
    }
    let mut leader = None;
    for _ in 0..500 {
        leader = logs.iter().position(|l| l.status().role == Role::Leader);
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader = leader.ok_or("no leader elected")?;
    let follower = (leader + 1) % n;
    let mut seq = 0u64;
    let mut report = RaftBenchReport::default();

    for (who, slot) in [(leader, 0), (follower, 1)] {
        let mut samples = Vec::with_capacity(opts.latency_ops);
        for _ in 0..opts.latency_ops {
            seq += 1;
            let t = Instant::now();
            logs[who]
                .propose(RequestId { client: 1, seq }, TestCommand::Incr)
                .await
                .map_err(|e| e.to_string())?;
            samples.push(t.elapsed());
        }
        let p = Percentiles::of(samples);
        if slot == 0 {
            report.propose_leader = p;
        } else {
            report.propose_follower = p;
        }
    }
    for (who, slot) in [(leader, 0), (follower, 1)] {
        let mut samples = Vec::with_capacity(opts.latency_ops);
        for _ in 0..opts.latency_ops {
            let t = Instant::now();
            logs[who]
                .read(TestQuery::Counter, ReadConsistency::Linearizable)
                .await
                .map_err(|e| e.to_string())?;
            samples.push(t.elapsed());
        }
        let p = Percentiles::of(samples);
        if slot == 0 {
            report.read_leader = p;
        } else {
            report.read_follower = p;
        }
    }

    (report.throughput_ops_per_s, report.throughput_latency) =
        throughput(&logs, opts.clients, opts.ops_per_client).await?;
    for log in &logs {
        log.shutdown();
    }
    Ok(report)
}
