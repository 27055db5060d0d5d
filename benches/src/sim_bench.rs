//! What the two simulated-network log benchmarks (`raft_bench`, `abcast_bench`) share: latency
//! percentiles, their report rows, and running a benchmark on its own runtime in a scratch
//! directory, and the closed-loop throughput run. The benches crate and the replication crate's
//! smoke tests (which include the benchmarks by `#[path]`) each include it once.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replication::conformance::{TestCommand, TestMachine};
use replication::{ReplicatedLog, RequestId};

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (all zero when there are none).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            u64::try_from(samples[i].as_micros()).unwrap_or(u64::MAX)
        };
        Self {
            p50_us: at(0.50),
            p99_us: at(0.99),
        }
    }

    /// One report line: `name`, then p50 and p99.
    pub fn row(self, f: &mut std::fmt::Formatter<'_>, name: &str) -> std::fmt::Result {
        writeln!(
            f,
            "{name:<28} p50 {:>7} us   p99 {:>7} us",
            self.p50_us, self.p99_us
        )
    }
}

/// Runs `bench` on a fresh two-worker runtime with a scratch directory
/// `<data_dir>/<prefix>-<pid>-<nanos>`, removed afterwards whatever the outcome.
pub fn run_in_scratch<T, F, Fut>(data_dir: &Path, prefix: &str, bench: F) -> Result<T, String>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let base = data_dir.join(format!("{prefix}-{}-{nanos}", std::process::id()));
    let result = runtime.block_on(bench(base.clone()));
    let _ = std::fs::remove_dir_all(&base);
    result
}

/// `clients` closed-loop proposers, client `c` on `logs[c % logs.len()]`, each proposing
/// `ops_per_client` increments back to back: proposals per second and their latencies.
pub async fn throughput<L>(
    logs: &[Arc<L>],
    clients: usize,
    ops_per_client: usize,
) -> Result<(f64, Percentiles), String>
where
    L: ReplicatedLog<TestMachine> + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let log = Arc::clone(&logs[c % logs.len()]);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(ops_per_client);
            for k in 0..ops_per_client {
                let t = Instant::now();
                let id = RequestId {
                    client: 1000 + c as u64,
                    seq: k as u64 + 1,
                };
                log.propose(id, TestCommand::Incr)
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
    Ok((all.len() as f64 / elapsed.max(1e-9), Percentiles::of(all)))
}
