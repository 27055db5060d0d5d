//! The full runtime (`AbcastLog`, raft-engine in tempdirs) over `transport::sim`'s tokio
//! adapter with hostile links (loss, duplication, reordering delays), in real time: client
//! histories stay linearizable (stateright) and every member applies the same history.

mod counter_history;

use std::sync::Arc;
use std::time::Duration;

use counter_history::counter;
use replication::abcast::{AbcastConfig, AbcastLog};
use replication::conformance::TestMachine;
use replication::ReadConsistency;
use stateright::semantics::ConsistencyTester;
use transport::sim::{LinkConfig, SimHub};
use transport::Network;

const MEMBERS: u64 = 5;

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
    let tester = counter_history::run_clients(logs.clone(), 6, 20, seed, 700).await;
    assert!(
        tester.is_consistent(),
        "seed {seed}: not linearizable: {tester:?}"
    );
    // Every member converges on the same state.
    let reference = counter(logs[0].as_ref(), ReadConsistency::Linearizable).await;
    for (i, log) in logs.iter().enumerate() {
        let mut v = 0;
        for _ in 0..500 {
            v = counter(log.as_ref(), ReadConsistency::Stale).await;
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
