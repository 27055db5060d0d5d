//! The full runtime (`AbcastLog`, raft-engine in tempdirs) over `transport::sim`'s tokio
//! adapter with hostile links (loss, duplication, reordering delays), in real time: client
//! histories stay linearizable (stateright) and every member applies the same history.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use replication::abcast::{AbcastConfig, AbcastLog};
use replication::conformance::{TestAnswer, TestCommand, TestMachine, TestQuery};
use replication::{ReadConsistency, ReplicatedLog, RequestId};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use transport::sim::{LinkConfig, SimHub};
use transport::Network;

const MEMBERS: u64 = 5;

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

async fn counter(log: &AbcastLog<TestMachine>, c: ReadConsistency) -> u64 {
    match log.read(TestQuery::Counter, c).await.expect("read") {
        TestAnswer::Counter(v) => v,
        other => panic!("wrong answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_links_keep_histories_linearizable() {
    let seed = 42;
    let hub = SimHub::start(seed, LinkConfig::faulty(0.05, 0.05, 3_000)).expect("hub");
    let dirs: Vec<_> = (0..MEMBERS)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let logs: Vec<Arc<AbcastLog<TestMachine>>> = (0..MEMBERS)
        .map(|i| {
            let mut cfg = AbcastConfig::new(i, MEMBERS);
            cfg.tick_ms = 2;
            cfg.core.retransmit_after_ms = 10;
            cfg.core.heartbeat_ms = 20;
            cfg.snapshot_every = 32;
            let net: Arc<dyn Network> = Arc::new(hub.node(i).expect("node"));
            Arc::new(
                AbcastLog::open(cfg, dirs[i as usize].path(), net, TestMachine::default())
                    .expect("open"),
            )
        })
        .collect();
    let tester: Arc<Mutex<LinearizabilityTester<u64, CounterSpec>>> = Arc::new(Mutex::new(
        LinearizabilityTester::new(CounterSpec::default()),
    ));
    let mut tasks = Vec::new();
    for client in 0..6u64 {
        let logs = logs.clone();
        let tester = Arc::clone(&tester);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + client);
            for op in 0..20u64 {
                let log = &logs[rng.gen_range(0..logs.len())];
                if rng.gen_bool(0.5) {
                    tester
                        .lock()
                        .expect("lock")
                        .on_invoke(client, CounterOp::Incr)
                        .expect("invoke");
                    let id = RequestId {
                        client: 700 + client,
                        seq: op + 1,
                    };
                    let v = log.propose(id, TestCommand::Incr).await.expect("propose");
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
                    let v = counter(log, ReadConsistency::Linearizable).await;
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
        t.await.expect("client");
    }
    {
        let tester = tester.lock().expect("lock");
        assert!(
            tester.is_consistent(),
            "seed {seed}: not linearizable: {tester:?}"
        );
    }
    // Every member converges on the same state.
    let reference = counter(&logs[0], ReadConsistency::Linearizable).await;
    for (i, log) in logs.iter().enumerate() {
        let mut v = 0;
        for _ in 0..500 {
            v = counter(log, ReadConsistency::Stale).await;
            if v >= reference {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(v, reference, "seed {seed}: member {i} diverges");
    }
    let retransmits: u64 = logs
        .iter()
        .map(|l| l.stats().core.retransmits_requested)
        .sum();
    eprintln!(
        "lossy run: counter {reference}, retransmits asked {retransmits}, member 0 {:?}",
        logs[0].stats()
    );
    drop(logs);
    drop(hub);
}
