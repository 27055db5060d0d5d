//! A member's snapshot does not stop the group: it is serialized and written off the member's
//! loop, which keeps taking its turns; only the member's own applying waits, and what waited
//! is applied in order once the snapshot is written.
//!
//! Member 0's state machine blocks in `snapshot` until the test opens a gate. While it is
//! blocked, writes through the other members must still complete (with the snapshot taken on
//! the loop, member 0 stopped taking its turns and the ring stalled), and a read through
//! member 0 must see every one of them once the gate opens.

mod abcast_support;

use std::sync::Arc;
use std::time::Duration;

use abcast_support::Hub;
use replication::abcast::{AbcastConfig, AbcastLog};
use replication::conformance::{
    GatedMachine as Gated, SnapshotGate, TestAnswer, TestCommand, TestQuery,
};
use replication::{ReadConsistency, ReplicatedLog, RequestId};

const MEMBERS: u64 = 5;
const SNAPSHOT_EVERY: u64 = 16;

fn config(id: u64) -> AbcastConfig {
    let mut cfg = AbcastConfig::new(id, MEMBERS);
    cfg.tick_ms = 2;
    cfg.core.heartbeat_ms = 20;
    cfg.core.retransmit_after_ms = 20;
    cfg.snapshot_every = SNAPSHOT_EVERY;
    cfg.propose_timeout = Duration::from_secs(2);
    cfg.read_timeout = Duration::from_secs(5);
    cfg
}

async fn append(log: &AbcastLog<Gated>, client: u64, seq: u64) {
    let out = log
        .propose(RequestId { client, seq }, TestCommand::Append(seq))
        .await;
    assert!(out.is_ok(), "write {seq} through a member: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_progress_holds_only_its_own_members_applying() {
    let hub = Hub::new();
    let dirs: Vec<_> = (0..MEMBERS)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let gate = SnapshotGate::new(false);
    let members: Vec<Arc<AbcastLog<Gated>>> = (0..MEMBERS)
        .map(|i| {
            let machine = Gated::new((i == 0).then(|| Arc::clone(&gate)));
            Arc::new(
                AbcastLog::open(config(i), dirs[i as usize].path(), hub.attach(i), machine)
                    .expect("open"),
            )
        })
        .collect();

    // Enough writes for member 0 (whose count starts at 0) to start its snapshot.
    let mut seq = 0;
    while !gate.entered() && seq < 10 * SNAPSHOT_EVERY {
        seq += 1;
        append(&members[1], 1, seq).await;
    }
    assert!(gate.entered(), "member 0 never started a snapshot");

    // Its snapshot is blocked: writes through every other member go on.
    let before = seq;
    for _ in 0..40 {
        seq += 1;
        let through = 1 + (seq % (MEMBERS - 1)) as usize;
        append(&members[through], 1, seq).await;
    }
    // A read through member 0 waits for the snapshot, then sees every write.
    let reader = {
        let log = Arc::clone(&members[0]);
        tokio::spawn(async move {
            log.read(TestQuery::History, ReadConsistency::Linearizable)
                .await
        })
    };
    assert_eq!(
        members[0].stats().snapshots,
        0,
        "the snapshot is not written yet"
    );
    gate.open();
    let history = match reader.await.expect("reader") {
        Ok(TestAnswer::History(h)) => h,
        other => panic!("read through member 0: {other:?}"),
    };
    assert_eq!(
        history,
        (1..=seq).collect::<Vec<_>>(),
        "member 0 applies what waited, in order ({before} before the snapshot)"
    );
    // (The stats are published at the end of the member's turn.)
    let mut written = 0;
    for _ in 0..500 {
        written = members[0].stats().snapshots;
        if written >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(written >= 1, "member 0's snapshot was never written");

    // The snapshot on disk restores: member 0 reopened from it holds the same history.
    let restarted_from = members[0].stats().resumed_at;
    assert_eq!(restarted_from, 0, "member 0 started empty");
    drop(members);
    hub.detach(0);
    let reopened = AbcastLog::open(config(0), dirs[0].path(), hub.attach(0), Gated::new(None))
        .expect("reopen");
    assert!(
        reopened.stats().resumed_at >= SNAPSHOT_EVERY,
        "member 0 resumed from its snapshot: {:?}",
        reopened.stats()
    );
    match reopened
        .read(TestQuery::History, ReadConsistency::Stale)
        .await
    {
        Ok(TestAnswer::History(h)) => assert!(
            h.len() as u64 >= SNAPSHOT_EVERY
                && h[..] == (1..=h.len() as u64).collect::<Vec<_>>()[..],
            "restored history {h:?}"
        ),
        other => panic!("read after reopening: {other:?}"),
    }
}
