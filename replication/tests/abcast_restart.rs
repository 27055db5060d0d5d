//! A member of a five-member in-process group (real raft-engine storage) is killed mid-load:
//! the others exclude it after `reform_after_ms` (a new epoch in which its turns are passes)
//! and go on without it; it restarts from its disk, learns the new epoch, catches up from
//! its peers (by retransmission, or, when they collected what it missed, from a peer's
//! image) and is readmitted. Clients retry with the same request id, so no acknowledged
//! command is lost or doubled.

mod abcast_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abcast_support::Hub;
use replication::abcast::{AbcastConfig, AbcastLog};
use replication::conformance::{TestAnswer, TestCommand, TestMachine, TestQuery};
use replication::{LogError, ReadConsistency, ReplicatedLog, RequestId, Role};

const MEMBERS: u64 = 5;
const VICTIM: usize = 2;

fn config(id: u64) -> AbcastConfig {
    config_retaining(id, AbcastConfig::new(id, MEMBERS).core.retain_for_excluded)
}

fn config_retaining(id: u64, retain_for_excluded: u64) -> AbcastConfig {
    let mut cfg = AbcastConfig::new(id, MEMBERS);
    cfg.core.retain_for_excluded = retain_for_excluded;
    cfg.tick_ms = 2;
    cfg.core.heartbeat_ms = 20;
    cfg.core.retransmit_after_ms = 20;
    cfg.snapshot_every = 64;
    cfg.propose_timeout = Duration::from_millis(500);
    cfg.read_timeout = Duration::from_millis(500);
    cfg
}

type Slot = Arc<Mutex<Option<Arc<AbcastLog<TestMachine>>>>>;

fn open(hub: &Arc<Hub>, dir: &std::path::Path, i: u64, retain: u64) -> Arc<AbcastLog<TestMachine>> {
    Arc::new(
        AbcastLog::open(
            config_retaining(i, retain),
            dir,
            hub.attach(i),
            TestMachine::default(),
        )
        .expect("open"),
    )
}

fn current(slots: &[Slot], i: usize) -> Option<Arc<AbcastLog<TestMachine>>> {
    slots[i].lock().expect("slot").clone()
}

async fn history(log: &AbcastLog<TestMachine>, c: ReadConsistency) -> Result<Vec<u64>, LogError> {
    match log.read(TestQuery::History, c).await? {
        TestAnswer::History(h) => Ok(h),
        other => panic!("wrong answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_is_excluded_the_group_goes_on_and_it_is_readmitted() {
    let restarted = kill_exclude_restart(config(0).core.retain_for_excluded).await;
    assert_eq!(
        restarted.rebuilds, 0,
        "the peers kept what the member missed: it catches up by retransmission"
    );
}

/// Its peers keep only 16 numbers for an excluded member: while it is down they collect
/// (and compact their journals) past it, and back, it is rebuilt from a peer's image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_longer_than_its_peers_keep_history_is_rebuilt_from_an_image() {
    let restarted = kill_exclude_restart(16).await;
    assert!(
        restarted.rebuilds >= 1,
        "the member caught up although its peers collected what it missed: {restarted:?}"
    );
}

/// Kills member `VICTIM` under load, restarts it once the others went on without it, and
/// checks that nothing acknowledged is lost or doubled and that it is readmitted. Returns
/// the restarted member's final stats.
async fn kill_exclude_restart(retain: u64) -> replication::abcast::AbcastStats {
    let hub = Hub::new();
    let dirs: Vec<_> = (0..MEMBERS)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let slots: Vec<Slot> = (0..MEMBERS)
        .map(|i| {
            Arc::new(Mutex::new(Some(open(
                &hub,
                dirs[i as usize].path(),
                i,
                retain,
            ))))
        })
        .collect();
    let slots = Arc::new(slots);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));

    // Four clients, each appending its own values through rotating members, retrying the
    // same request id until it is acknowledged (bounded attempts).
    let mut clients = Vec::new();
    for client in 0..4u64 {
        let slots = Arc::clone(&slots);
        let stop = Arc::clone(&stop);
        let acked = Arc::clone(&acked);
        clients.push(tokio::spawn(async move {
            let mut seq = 0u64;
            let mut target = client as usize;
            while !stop.load(Ordering::Relaxed) && seq < 400 {
                seq += 1;
                let value = client * 100_000 + seq;
                let mut done = false;
                for _attempt in 0..200 {
                    target = (target + 1) % MEMBERS as usize;
                    let Some(log) = current(&slots, target) else {
                        continue;
                    };
                    let r = log
                        .propose(
                            RequestId {
                                client: 900 + client,
                                seq,
                            },
                            TestCommand::Append(value),
                        )
                        .await;
                    if r.is_ok() {
                        done = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                assert!(done, "client {client}: request {seq} never acknowledged");
                acked.lock().expect("acked").insert(value);
            }
        }));
    }

    let wait_acked = |at_least: usize| {
        let acked = Arc::clone(&acked);
        async move {
            for _ in 0..1000 {
                if acked.lock().expect("acked").len() >= at_least {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("load did not reach {at_least} acknowledged writes");
        }
    };

    wait_acked(100).await;
    // kill -9: the member disappears from the network and its process state is gone.
    let victim = slots[VICTIM].lock().expect("slot").take().expect("victim");
    hub.detach(VICTIM as u64);
    drop(victim);
    let at_kill = acked.lock().expect("acked").len();
    // The ring stalls at the victim's turn until the others exclude it; then it goes on.
    wait_acked(at_kill + 100).await;
    let during = acked.lock().expect("acked").len();
    for i in (0..MEMBERS as usize).filter(|i| *i != VICTIM) {
        let s = current(&slots, i).expect("member").stats();
        assert!(
            s.epoch > 0 && s.excluded == 1 << VICTIM,
            "member {i} went on without excluding the victim: {s:?}"
        );
    }
    eprintln!("acknowledged at kill: {at_kill}, without the victim: {during}");

    let restarted = open(&hub, dirs[VICTIM].path(), VICTIM as u64, retain);
    *slots[VICTIM].lock().expect("slot") = Some(Arc::clone(&restarted));
    wait_acked(during + 100).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }

    let acked: BTreeSet<u64> = acked.lock().expect("acked").clone();
    // Every member converges on the same history, holding every acknowledged value once.
    let reference = history(
        &current(&slots, 0).expect("member 0"),
        ReadConsistency::Linearizable,
    )
    .await
    .expect("read");
    for i in 0..MEMBERS as usize {
        let log = current(&slots, i).expect("member");
        let mut h = Vec::new();
        for _ in 0..500 {
            h = history(&log, ReadConsistency::Stale).await.expect("read");
            if h.len() >= reference.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(h, reference, "member {i} diverges");
    }
    let unique: BTreeSet<u64> = reference.iter().copied().collect();
    assert_eq!(unique.len(), reference.len(), "a value was applied twice");
    assert!(acked.is_subset(&unique), "an acknowledged value is missing");
    assert!(
        unique.iter().all(|v| v / 100_000 < 4 && v % 100_000 > 0),
        "a value that was never proposed was applied"
    );
    let mut role = Role::Recovering;
    for _ in 0..500 {
        role = restarted.status().role;
        if role == Role::Member {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        role,
        Role::Member,
        "the restarted member never left recovery"
    );
    // The restarted member asks back in and is readmitted: nobody is excluded any more.
    let mut excluded = u64::MAX;
    for _ in 0..500 {
        excluded = (0..MEMBERS as usize)
            .map(|i| current(&slots, i).expect("member").stats().excluded)
            .sum();
        if excluded == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(excluded, 0, "the restarted member was not readmitted");
    let stats = restarted.stats();
    eprintln!("restarted member: {stats:?}");
    // Snapshots were taken and the journal compacted behind them.
    for i in 0..MEMBERS as usize {
        let s = current(&slots, i).expect("member").stats();
        assert!(s.snapshots > 0, "member {i} never snapshotted: {s:?}");
        assert!(
            s.journal_len < s.records_persisted,
            "member {i} never compacted its journal: {s:?}"
        );
    }
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_and_compacted_journal() {
    let hub = Hub::new();
    let dirs: Vec<_> = (0..MEMBERS)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let cfg = |i: u64| {
        let mut c = config(i);
        c.snapshot_every = 8;
        c.propose_timeout = Duration::from_secs(5);
        c
    };
    let open_all = |hub: &Arc<Hub>| -> Vec<Arc<AbcastLog<TestMachine>>> {
        (0..MEMBERS)
            .map(|i| {
                Arc::new(
                    AbcastLog::open(
                        cfg(i),
                        dirs[i as usize].path(),
                        hub.attach(i),
                        TestMachine::default(),
                    )
                    .expect("open"),
                )
            })
            .collect()
    };
    let logs = open_all(&hub);
    for k in 0..60u64 {
        logs[(k % MEMBERS) as usize]
            .propose(
                RequestId {
                    client: 5,
                    seq: k + 1,
                },
                TestCommand::Append(k),
            )
            .await
            .expect("propose");
    }
    // Every member snapshots and, once everyone reported delivery, compacts.
    let mut compacted = false;
    for _ in 0..500 {
        compacted = logs.iter().all(|l| {
            let s = l.stats();
            s.snapshots > 0 && s.journal_len < s.records_persisted / 2
        });
        if compacted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(compacted, "journals were not compacted");
    let before = history(&logs[0], ReadConsistency::Linearizable)
        .await
        .expect("read");
    drop(logs);
    for i in 0..MEMBERS {
        hub.detach(i);
    }
    let logs = open_all(&hub);
    for (i, log) in logs.iter().enumerate() {
        assert!(
            log.stats().resumed_at > 0,
            "member {i} did not start from its snapshot"
        );
    }
    for (i, log) in logs.iter().enumerate() {
        let h = history(log, ReadConsistency::Linearizable)
            .await
            .expect("read");
        assert_eq!(h, before, "member {i} lost or changed history");
    }
    // Exactly-once survives in the snapshot's duplicate table.
    let again = logs[2]
        .propose(RequestId { client: 5, seq: 1 }, TestCommand::Append(0))
        .await
        .expect("retry");
    assert_eq!(
        again, 1,
        "a retry after restart must return the first outcome"
    );
    let next = logs[3]
        .propose(RequestId { client: 5, seq: 61 }, TestCommand::Append(60))
        .await
        .expect("propose");
    assert_eq!(next, 61);
}
