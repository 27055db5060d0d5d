//! Test support for the Raft tests: a cluster of [`RaftLog`]s over the transport's simulated
//! network (`transport::sim::SimHub`), each with its own raft-engine in a temp directory.
//!
//! Crashing a node shuts its log down (every acknowledged write is already fsync'd; nothing
//! more is written) and crashes it in the simulated network, which drops its traffic in
//! flight; restarting reopens the same directory on the same network attachment.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use replication::conformance::{Harness, TestMachine};
use replication::raft::{RaftConfig, RaftLog};
use replication::{ReplicatedLog, Role};
use transport::sim::{LinkConfig, SimHub, SimNetwork};
use transport::Network;

/// The log type under test.
pub type Log = RaftLog<TestMachine>;

/// Poll interval of the bounded waits.
pub const POLL: Duration = Duration::from_millis(20);

/// A cluster of Raft replicas in one process.
pub struct Cluster {
    // Fields drop in order: the logs (joining their threads) before the directories.
    logs: Mutex<Vec<Option<Arc<Log>>>>,
    pub hub: SimHub,
    pub n: usize,
    nets: Vec<Arc<SimNetwork>>,
    dirs: Vec<tempfile::TempDir>,
    tweak: fn(&mut RaftConfig),
}

/// Test timing: 10 ms ticks, elections after 100-200 ms, heartbeats every 20 ms.
pub fn test_config(id: u64, n: usize, dir: &std::path::Path) -> RaftConfig {
    let mut c = RaftConfig::new(id, (0..n as u64).collect(), dir);
    c.tick_interval = Duration::from_millis(10);
    c.election_tick = 10;
    c.heartbeat_tick = 2;
    c
}

impl Cluster {
    /// Starts `n` replicas (ids `0..n`) over a simulated network with `link` on every link.
    pub async fn start(n: usize, seed: u64, link: LinkConfig, tweak: fn(&mut RaftConfig)) -> Self {
        let hub = SimHub::start(seed, link).expect("inside a tokio runtime");
        let mut nets = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n as u64 {
            nets.push(Arc::new(hub.node(i).expect("fresh node id")));
            dirs.push(tempfile::tempdir().expect("tempdir"));
        }
        let cluster = Self {
            hub,
            n,
            nets,
            dirs,
            logs: Mutex::new(vec![None; n]),
            tweak,
        };
        for i in 0..n {
            cluster.restart(i);
        }
        cluster
    }

    /// The configuration replica `i` runs with.
    pub fn config(&self, i: usize) -> RaftConfig {
        let mut c = test_config(i as u64, self.n, self.dirs[i].path());
        (self.tweak)(&mut c);
        c
    }

    /// Replica `i`, if it is up.
    pub fn try_log(&self, i: usize) -> Option<Arc<Log>> {
        self.logs.lock().unwrap()[i].clone()
    }

    /// Replica `i` (panics if it is down).
    pub fn node(&self, i: usize) -> Arc<Log> {
        self.try_log(i)
            .unwrap_or_else(|| panic!("replica {i} is down"))
    }

    /// Whether replica `i` is up.
    pub fn is_up(&self, i: usize) -> bool {
        self.try_log(i).is_some()
    }

    /// Kills replica `i` (no-op if down).
    pub fn crash(&self, i: usize) {
        let log = self.logs.lock().unwrap()[i].take();
        if let Some(log) = log {
            log.shutdown();
        }
        self.hub.crash(i as u64);
    }

    /// Starts replica `i` from its directory (no-op if up).
    pub fn restart(&self, i: usize) {
        if self.is_up(i) {
            return;
        }
        self.hub.restart(i as u64);
        let net: Arc<dyn Network> = self.nets[i].clone();
        let log = RaftLog::start(self.config(i), net, TestMachine::default()).expect("start");
        self.logs.lock().unwrap()[i] = Some(log);
    }

    /// Kills replica `i` (if up) and empties its data directory: its next start is a
    /// replacement host's, under the same id.
    pub fn wipe(&self, i: usize) {
        self.crash(i);
        let dir = self.dirs[i].path();
        std::fs::remove_dir_all(dir).expect("remove the data directory");
        std::fs::create_dir(dir).expect("recreate the data directory");
    }

    /// Kills replica `i` (if up) and returns a copy of its data directory (a backup).
    pub fn backup(&self, i: usize) -> tempfile::TempDir {
        self.crash(i);
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(self.dirs[i].path(), copy.path());
        copy
    }

    /// Kills replica `i` (if up) and puts a copy of `backup` in place of its data directory:
    /// its next start is from an older copy of its disk.
    pub fn restore(&self, i: usize, backup: &std::path::Path) {
        self.wipe(i);
        copy_dir(backup, self.dirs[i].path());
    }

    /// Kills every replica, then starts them all again from disk.
    pub fn restart_all_now(&self) {
        for i in 0..self.n {
            self.crash(i);
        }
        for i in 0..self.n {
            self.restart(i);
        }
    }

    /// The live replica that leads in the highest term, if any.
    pub fn leader(&self) -> Option<(usize, u64)> {
        (0..self.n)
            .filter_map(|i| self.try_log(i).map(|l| (i, l.status())))
            .filter(|(_, s)| s.role == Role::Leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(i, s)| (i, s.term))
    }

    /// Waits (at most `polls` polls) for a leader among the live replicas.
    pub async fn wait_leader(&self, polls: usize) -> Option<(usize, u64)> {
        for _ in 0..polls {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            tokio::time::sleep(POLL).await;
        }
        None
    }
}

/// Copies the files of directory `from` into `to`, subdirectories included.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read the data directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            std::fs::create_dir_all(&target).expect("create a directory");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Polls `condition` every [`POLL`], at most `polls` times; whether it came true.
pub async fn eventually(polls: usize, mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..polls {
        if condition() {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

/// Replica `i`'s applied history (stale read).
pub async fn stale_history(log: &Log) -> Vec<u64> {
    replication::conformance::stale_history(log).await
}

/// Waits (bounded) until every live replica has applied the same history of at least
/// `len_min` values; returns it, or panics with what each replica has.
pub async fn converge(c: &Cluster, len_min: usize, polls: usize) -> Vec<u64> {
    let mut last = Vec::new();
    for _ in 0..polls {
        last.clear();
        for i in 0..c.n {
            if let Some(log) = c.try_log(i) {
                last.push(stale_history(&log).await);
            }
        }
        if last[0].len() >= len_min && last.iter().all(|h| h == &last[0]) {
            return last.swap_remove(0);
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "replicas did not converge: lengths {:?}",
        last.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[async_trait]
impl Harness for Cluster {
    type Log = Log;
    fn replicas(&self) -> usize {
        self.n
    }
    fn log(&self, i: usize) -> Arc<Log> {
        self.node(i)
    }
    async fn restart_all(&mut self) -> bool {
        self.restart_all_now();
        true
    }
}

/// Proposes through replica `via` (or the next live one), retrying the same request id up to
/// `attempts` times on `Unavailable`/`Shutdown` (safe: duplicates apply once). Keeps tests
/// that only need a write to get through from failing on a slow, loaded machine.
pub async fn propose_retrying(
    c: &Cluster,
    via: usize,
    id: replication::RequestId,
    command: replication::conformance::TestCommand,
    attempts: usize,
) -> Result<u64, replication::LogError> {
    let mut last = replication::LogError::Unavailable("no attempt".into());
    for attempt in 0..attempts {
        let Some(log) = (0..c.n)
            .map(|k| (via + attempt + k) % c.n)
            .find_map(|i| c.try_log(i))
        else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        match log.propose(id, command.clone()).await {
            Ok(out) => return Ok(out),
            Err(e @ replication::LogError::Unavailable(_))
            | Err(e @ replication::LogError::Shutdown) => {
                last = e;
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
}
