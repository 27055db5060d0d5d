//! A Raft replica's snapshot does not stop its Ready loop: the state is serialized on a
//! blocking thread while the loop goes on replicating and committing; only its own applying
//! waits, and the held entries are applied in order once the snapshot is stored.
//!
//! The leader's state machine blocks in `snapshot` until the test opens its gate. While it
//! is blocked the leader must keep its followers fed (they apply every write proposed
//! meanwhile, and nobody has to elect a new leader); with the snapshot taken on the loop,
//! the leader went silent and its writes waited for an election. Once the gate opens, the
//! leader answers every held write and holds the same history.

use std::sync::Arc;
use std::time::Duration;

use replication::conformance::{stale_history, GatedMachine as Gated, SnapshotGate, TestCommand};
use replication::raft::{RaftConfig, RaftLog};
use replication::{ReplicatedLog, RequestId, Role};
use transport::sim::{LinkConfig, SimHub};
use transport::Network;

const N: u64 = 3;
const SNAPSHOT_EVERY: u64 = 32;
const POLL: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_taking_a_snapshot_keeps_replicating() {
    let hub = SimHub::start(11, LinkConfig::default()).expect("hub");
    let dirs: Vec<_> = (0..N)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let gates: Vec<Arc<SnapshotGate>> = (0..N).map(|_| SnapshotGate::new(true)).collect();
    let logs: Vec<Arc<RaftLog<Gated>>> = (0..N)
        .map(|i| {
            let mut c = RaftConfig::new(i, (0..N).collect(), dirs[i as usize].path());
            c.tick_interval = Duration::from_millis(10);
            c.election_tick = 10;
            c.heartbeat_tick = 2;
            c.snapshot_every = SNAPSHOT_EVERY;
            c.propose_timeout = Duration::from_secs(5);
            let net: Arc<dyn Network> = Arc::new(hub.node(i).expect("node"));
            let machine = Gated::new(Some(Arc::clone(&gates[i as usize])));
            RaftLog::start(c, net, machine).expect("start")
        })
        .collect();
    let mut leader = None;
    for _ in 0..500 {
        leader = logs.iter().position(|l| l.status().role == Role::Leader);
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let leader = leader.expect("no leader elected");
    let term = logs[leader].status().term;
    let gate = Arc::clone(&gates[leader]);
    gate.close();

    // Writes through the leader until it starts its snapshot.
    let propose = |seq: u64| {
        let log = Arc::clone(&logs[leader]);
        async move {
            log.propose(RequestId { client: 1, seq }, TestCommand::Append(seq))
                .await
        }
    };
    // (The write in flight when the snapshot starts may be the first one held.)
    let mut seq = 0;
    let mut held = Vec::new();
    while held.is_empty() && seq < 4 * SNAPSHOT_EVERY {
        seq += 1;
        let mut write = tokio::spawn(propose(seq));
        // The write's answer, unless the leader's snapshot reached the gate first (or
        // neither happened within the bound).
        let answered = tokio::time::timeout(Duration::from_millis(500), async {
            tokio::select! {
                biased;
                out = &mut write => Some(out),
                () = gate.wait_entered() => None,
            }
        })
        .await
        .ok()
        .flatten();
        match answered {
            Some(out) => {
                let out = out.expect("proposer");
                assert!(out.is_ok(), "write {seq}: {out:?}");
                if gate.entered() {
                    break;
                }
            }
            None => held.push(write),
        }
    }
    assert!(gate.entered(), "the leader never snapshotted");
    // What the leader applied before its snapshot started: every answered write, and maybe
    // the one in flight (applied and answered, but its proposer not yet run when the gate
    // was seen entered).
    let before = stale_history(logs[leader].as_ref()).await.len() as u64;
    let answered = seq - held.len() as u64;
    assert!(
        (answered..=seq).contains(&before),
        "the leader applied {before} writes, {answered} answered of {seq}"
    );

    // Its snapshot is blocked: writes proposed now are replicated and committed, and the
    // followers apply them, while the leader holds them.
    for _ in 0..20 {
        seq += 1;
        held.push(tokio::spawn(propose(seq)));
    }
    let expected: Vec<u64> = (1..=seq).collect();
    let mut follower_history = Vec::new();
    for (i, log) in logs.iter().enumerate().filter(|(i, _)| *i != leader) {
        let mut h = Vec::new();
        for _ in 0..500 {
            h = stale_history(log.as_ref()).await;
            if h.len() >= expected.len() {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        // The held writes were proposed concurrently: any order, each once.
        let mut sorted = h.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted, expected,
            "follower {i} while the leader's snapshot is blocked: {h:?}"
        );
        if follower_history.is_empty() {
            follower_history = h;
        }
    }
    assert_eq!(
        stale_history(logs[leader].as_ref()).await.len() as u64,
        before,
        "the leader applies nothing while its snapshot is being taken"
    );
    let status = logs[leader].status();
    assert_eq!(
        (status.role, status.term),
        (Role::Leader, term),
        "the leader kept its followers and its term"
    );

    gate.open();
    for (k, h) in held.into_iter().enumerate() {
        let out = h.await.expect("proposer");
        assert!(
            out.is_ok(),
            "held write {}: {out:?}",
            answered + 1 + k as u64
        );
    }
    assert_eq!(
        stale_history(logs[leader].as_ref()).await,
        follower_history,
        "the leader applied what it held, in the log's order"
    );
    assert!(logs[leader].stats().snapshots_taken >= 1);
    for log in &logs {
        log.shutdown();
    }
}
