//! The replicated-log conformance suite on a five-member in-process atomic broadcast group
//! with real raft-engine storage in tempdirs (the durability check restarts every member from
//! disk), and client histories through the stateright linearizability tester.

mod abcast_support;

use std::sync::{Arc, Mutex};

use abcast_support::Hub;
use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use replication::abcast::{AbcastConfig, AbcastLog};
use replication::conformance::{Harness, TestAnswer, TestCommand, TestMachine, TestQuery};
use replication::{ReadConsistency, ReplicatedLog, RequestId, Role};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

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

#[derive(Clone, Debug, Default)]
struct CounterSpec(u64);

#[derive(Clone, Debug)]
enum CounterOp {
    Incr,
    Read,
}

impl SequentialSpec for CounterSpec {
    type Op = CounterOp;
    type Ret = u64;
    fn invoke(&mut self, op: &CounterOp) -> u64 {
        match op {
            CounterOp::Incr => {
                self.0 += 1;
                self.0
            }
            CounterOp::Read => self.0,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_histories_are_linearizable() {
    let group = Group::start();
    let tester: Arc<Mutex<LinearizabilityTester<u64, CounterSpec>>> = Arc::new(Mutex::new(
        LinearizabilityTester::new(CounterSpec::default()),
    ));
    let mut tasks = Vec::new();
    for client in 0..5u64 {
        let logs: Vec<_> = (0..MEMBERS as usize).map(|i| group.log(i)).collect();
        let tester = Arc::clone(&tester);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(client);
            for op in 0..16u64 {
                let log = &logs[rng.gen_range(0..logs.len())];
                if rng.gen_bool(0.5) {
                    tester
                        .lock()
                        .expect("lock")
                        .on_invoke(client, CounterOp::Incr)
                        .expect("invoke");
                    let v = log
                        .propose(
                            RequestId {
                                client: 500 + client,
                                seq: op + 1,
                            },
                            TestCommand::Incr,
                        )
                        .await
                        .expect("propose");
                    tester
                        .lock()
                        .expect("lock")
                        .on_return(client, v)
                        .expect("return");
                } else {
                    tester
                        .lock()
                        .expect("lock")
                        .on_invoke(client, CounterOp::Read)
                        .expect("invoke");
                    let v = match log
                        .read(TestQuery::Counter, ReadConsistency::Linearizable)
                        .await
                        .expect("read")
                    {
                        TestAnswer::Counter(c) => c,
                        other => panic!("wrong answer {other:?}"),
                    };
                    tester
                        .lock()
                        .expect("lock")
                        .on_return(client, v)
                        .expect("return");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let tester = tester.lock().expect("lock");
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
