//! What the two simulated-network log benchmarks (`raft_bench`, `abcast_bench`) share: latency
//! percentiles, their report rows, and running a benchmark on its own runtime in a scratch
//! directory. Each includes this file with `#[path]` (as the replication crate's smoke tests
//! include those benchmarks), so it uses nothing but std and tokio.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
