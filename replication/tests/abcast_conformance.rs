//! The replicated-log conformance suite on a five-member in-process atomic broadcast group
//! with real raft-engine storage in tempdirs (the durability check restarts every member from
//! disk), and client histories through the stateright linearizability tester.

mod abcast_support;
mod counter_history;

use std::sync::Arc;

use abcast_support::Hub;
use async_trait::async_trait;
use replication::abcast::{AbcastConfig, AbcastLog};
use replication::conformance::{Harness, TestAnswer, TestCommand, TestMachine, TestQuery};
use replication::{ReadConsistency, ReplicatedLog, RequestId, Role};
use stateright::semantics::ConsistencyTester;

const MEMBERS: u64 = 5;

fn config(id: u64) -> AbcastConfig {
    let mut cfg = AbcastConfig::new(id, MEMBERS);
    cfg.tick_ms = 2;
    cfg.core.heartbeat_ms = 20;
    cfg.core.retransmit_after_ms = 20;
    // Small, so the durability check also restarts from snapshots and compacted journals.
    cfg.snapshot_every = 16;
    cfg
}

struct Group {
    dirs: Vec<tempfile::TempDir>,
    hub: Arc<Hub>,
    logs: Vec<Arc<AbcastLog<TestMachine>>>,
}

impl Group {
    fn start() -> Self {
        let hub = Hub::new();
        let dirs: Vec<_> = (0..MEMBERS)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let logs = (0..MEMBERS)
            .map(|i| {
                Arc::new(
                    AbcastLog::open(
                        config(i),
                        dirs[i as usize].path(),
                        hub.attach(i),
                        TestMachine::default(),
                    )
                    .expect("open"),
                )
            })
            .collect();
        Self { dirs, hub, logs }
    }
}

#[async_trait]
impl Harness for Group {
    type Log = AbcastLog<TestMachine>;
    fn replicas(&self) -> usize {
        MEMBERS as usize
    }
    fn log(&self, i: usize) -> Arc<Self::Log> {
        Arc::clone(&self.logs[i])
    }
    async fn restart_all(&mut self) -> bool {
        let old = std::mem::take(&mut self.logs);
        for log in old {
            assert_eq!(Arc::strong_count(&log), 1, "a handle is still alive");
            drop(log); // joins the driver thread, releasing the engine
        }
        for i in 0..MEMBERS {
            self.hub.detach(i);
        }
        for i in 0..MEMBERS {
            let log = AbcastLog::open(
                config(i),
                self.dirs[i as usize].path(),
                self.hub.attach(i),
                TestMachine::default(),
            )
            .expect("reopen");
            self.logs.push(Arc::new(log));
        }
        true
    }
}

async fn make() -> Group {
    Group::start()
}

mod abcast_group {
    use super::*;
    replication::conformance_suite!(make);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_histories_are_linearizable() {
    let group = Group::start();
    let logs: Vec<_> = (0..MEMBERS as usize).map(|i| group.log(i)).collect();
    let tester = counter_history::run_clients(logs, 5, 16, 0, 500).await;
    assert!(
        tester.is_consistent(),
        "history is not linearizable: {:?}",
        tester
    );
    // Status reports sensible progress.
    let s = group.log(0).status();
    assert_eq!(s.role, Role::Member);
    assert!(s.commit_index >= s.applied_index && s.applied_index > 0);
    let stats = group.log(0).stats();
    assert!(stats.fsyncs > 0 && stats.delivered > 0);
    eprintln!("member 0 after the linearizability run: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_are_local_and_barriers_see_writes() {
    let group = Group::start();
    let log = group.log(3);
    let len = log
        .propose(RequestId { client: 1, seq: 1 }, TestCommand::Append(7))
        .await
        .expect("propose");
    assert_eq!(len, 1);
    match log
        .read(TestQuery::History, ReadConsistency::Stale)
        .await
        .expect("read")
    {
        TestAnswer::History(h) => assert_eq!(h, vec![7]),
        other => panic!("wrong answer {other:?}"),
    }
    // A read barrier through a member that has not seen the write yet still sees it.
    for i in 0..MEMBERS as usize {
        let h = group
            .log(i)
            .read(TestQuery::History, ReadConsistency::Linearizable)
            .await
            .expect("read");
        assert_eq!(h, TestAnswer::History(vec![7]), "member {i}");
    }
    // An explicit shutdown stops the member: later calls say so.
    log.shutdown();
    let mut stopped = false;
    for _ in 0..200 {
        let r = log
            .propose(RequestId { client: 1, seq: 2 }, TestCommand::Append(8))
            .await;
        if r == Err(replication::LogError::Shutdown) {
            stopped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(stopped, "shutdown did not stop the member");
}

/// A member's `stopped` signal stays unresolved while its loop runs and resolves once it has
/// ended (here by `shutdown`; a storage error or a panic end it the same way, see
/// `replication::stopped`), so a process serving the member can exit with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_says_when_its_loop_has_stopped() {
    let group = Group::start();
    let log = group.log(1);
    let stopped = log.stopped();
    log.propose(RequestId { client: 1, seq: 1 }, TestCommand::Append(7))
        .await
        .expect("propose");
    assert!(!stopped.has_stopped(), "running");
    log.shutdown();
    tokio::time::timeout(std::time::Duration::from_secs(5), stopped.wait())
        .await
        .expect("stopped after shutdown");
    assert!(stopped.has_stopped());
}
