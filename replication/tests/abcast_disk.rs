//! Hostile input on disk: a member's snapshot, journal entries and seq lease are damaged (bytes
//! that do not decode, and records that decode but cannot have been written by a member of
//! this group). Opening the member must fail with a storage error naming what is wrong,
//! never panic, and leave the store as it was: once the good value is put back, the member
//! opens and the group holds every acknowledged write, once. A member whose data directory
//! was emptied is rebuilt from a peer's snapshot and journal and serves again.

mod abcast_support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use abcast_support::Hub;
use replication::abcast::runtime::{
    FLOOR_KEY, JOURNAL_GROUP, LEASE_KEY, SNAPSHOT_GROUP, SNAPSHOT_KEY,
};
use replication::abcast::{AbcastConfig, AbcastLog, Record, RequestKey, SequenceMsg, SnapshotBase};
use replication::conformance::{TestAnswer, TestCommand, TestMachine, TestQuery};
use replication::storage::{append, entry, open_engine, read_entries};
use replication::{LogError, ReadConsistency, ReplicatedLog, RequestId};

const MEMBERS: u64 = 3;
const WRITES: u64 = 30;

fn config(id: u64) -> AbcastConfig {
    let mut cfg = AbcastConfig::new(id, MEMBERS);
    cfg.tick_ms = 2;
    cfg.core.heartbeat_ms = 20;
    cfg.core.retransmit_after_ms = 20;
    cfg.snapshot_every = 8;
    cfg.propose_timeout = Duration::from_secs(5);
    cfg.read_timeout = Duration::from_secs(5);
    cfg
}

fn open(hub: &Arc<Hub>, dir: &Path, i: u64) -> Result<AbcastLog<TestMachine>, LogError> {
    AbcastLog::open(config(i), dir, hub.attach(i), TestMachine::default())
}

async fn history(log: &AbcastLog<TestMachine>) -> Vec<u64> {
    match log
        .read(TestQuery::History, ReadConsistency::Linearizable)
        .await
    {
        Ok(TestAnswer::History(h)) => h,
        other => panic!("history read failed: {other:?}"),
    }
}

/// Where a damage is written: a key of the snapshot group, or a journal entry's index.
enum Spot {
    Key(&'static [u8]),
    Journal(u64),
}

fn read_spot(dir: &Path, spot: &Spot) -> Vec<u8> {
    let engine = open_engine(dir).expect("engine");
    match spot {
        Spot::Key(key) => engine.get(SNAPSHOT_GROUP, key).expect("key written"),
        Spot::Journal(i) => {
            let e = read_entries(&engine, JOURNAL_GROUP, *i, i + 1).expect("read");
            e[0].data.to_vec()
        }
    }
}

fn write_spot(dir: &Path, spot: &Spot, bytes: &[u8]) {
    let engine = open_engine(dir).expect("engine");
    match spot {
        Spot::Key(key) => {
            let mut batch = raft_engine::LogBatch::default();
            batch
                .put(SNAPSHOT_GROUP, key.to_vec(), bytes.to_vec())
                .expect("put");
            engine.write(&mut batch, true).expect("write");
        }
        // Rewriting the last entry replaces it (and nothing else).
        Spot::Journal(i) => append(
            &engine,
            JOURNAL_GROUP,
            &[entry(*i, 0, bytes.to_vec())],
            true,
        )
        .expect("append"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_damaged_storage_is_refused_and_its_store_left_as_it_was() {
    let hub = Hub::new();
    let dirs: Vec<_> = (0..MEMBERS)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let logs: Vec<_> = (0..MEMBERS)
        .map(|i| open(&hub, dirs[i as usize].path(), i).expect("open"))
        .collect();
    for k in 0..WRITES {
        logs[(k % MEMBERS) as usize]
            .propose(
                RequestId {
                    client: 7,
                    seq: k + 1,
                },
                TestCommand::Append(k),
            )
            .await
            .expect("propose");
    }
    // Member 0 has a snapshot and journal entries after it.
    let mut ready = false;
    for _ in 0..500 {
        let s = logs[0].stats();
        ready = s.snapshots > 0 && s.journal_len > 0;
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        ready,
        "member 0 has no snapshot and journal: {:?}",
        logs[0].stats()
    );
    let before = history(&logs[0]).await;
    assert_eq!(before, (0..WRITES).collect::<Vec<_>>());
    drop(logs);
    for i in 0..MEMBERS {
        hub.detach(i);
    }

    let dir = dirs[0].path();
    let last = open_engine(dir)
        .expect("engine")
        .last_index(JOURNAL_GROUP)
        .expect("journal entries");
    let snapshot = read_spot(dir, &Spot::Key(SNAPSHOT_KEY));
    let (base, state): (SnapshotBase, serde_bytes::ByteBuf) =
        postcard::from_bytes(&snapshot).expect("snapshot decodes");
    let foreign_base = SnapshotBase {
        prefixes: vec![0; 7],
        ..base.clone()
    };
    let foreign_sequence = Record::Sequence(SequenceMsg {
        number: base.delivered + 1,
        assigned: vec![RequestKey { sender: 9, seq: 0 }],
        reissued: false,
    });
    let huge_sequence = Record::Sequence(SequenceMsg {
        number: u64::MAX,
        assigned: vec![],
        reissued: false,
    });
    let cases: Vec<(Spot, Vec<u8>, &str)> = vec![
        (Spot::Key(SNAPSHOT_KEY), vec![0xff; 9], "snapshot"),
        (
            Spot::Key(SNAPSHOT_KEY),
            snapshot[..snapshot.len() / 2].to_vec(),
            "snapshot",
        ),
        (
            Spot::Key(SNAPSHOT_KEY),
            postcard::to_stdvec(&(foreign_base, state.clone())).expect("encode"),
            "does not fit a group of 3",
        ),
        (
            Spot::Key(SNAPSHOT_KEY),
            postcard::to_stdvec(&(base.clone(), serde_bytes::ByteBuf::from(vec![1, 2, 3])))
                .expect("encode"),
            "",
        ),
        (Spot::Key(LEASE_KEY), vec![0xff; 11], "lease"),
        (
            Spot::Key(LEASE_KEY),
            postcard::to_stdvec(&u64::MAX).expect("encode"),
            "lease",
        ),
        (Spot::Journal(last), vec![0xff; 5], "journal entry"),
        (
            Spot::Journal(last),
            postcard::to_stdvec(&foreign_sequence).expect("encode"),
            "names member 9 of a group of 3",
        ),
        (
            Spot::Journal(last),
            postcard::to_stdvec(&huge_sequence).expect("encode"),
            "out of range",
        ),
    ];
    for (spot, bad, says) in &cases {
        let good = read_spot(dir, spot);
        write_spot(dir, spot, bad);
        match open(&hub, dir, 0) {
            Err(LogError::Storage(why)) => assert!(why.contains(says), "{says:?} not in {why:?}"),
            Err(other) => panic!("wrong error for {says:?}: {other}"),
            Ok(_) => panic!("member 0 opened with damage {says:?}"),
        }
        hub.detach(0);
        // The refused open changed nothing: the damage is still there, as written.
        assert_eq!(&read_spot(dir, spot), bad, "the open rewrote {says:?}");
        write_spot(dir, spot, &good);
    }

    // Repaired, the group opens and holds every write once.
    let logs: Vec<_> = (0..MEMBERS)
        .map(|i| open(&hub, dirs[i as usize].path(), i).expect("reopen"))
        .collect();
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(history(log).await, before, "member {i} after the repair");
    }
    let again = logs[1]
        .propose(RequestId { client: 7, seq: 1 }, TestCommand::Append(0))
        .await
        .expect("retry");
    assert_eq!(again, 1, "a retry must return the first outcome");

    // Member 2's data directory emptied (a lost disk), and the member started again under
    // its id: it must not act as new (it would reuse Request ids and Sequence numbers its
    // peers hold). It learns so from its peers, copies a peer's snapshot and journal, starts
    // again from them above every id and number its peers know of, catches up, and serves.
    let mut logs = logs;
    drop(logs.remove(2));
    hub.detach(2);
    // Meanwhile, an image request that does not decode (from member 2's address) and one
    // from outside the group are answered with an error; member 0 goes on serving.
    for from in [2, 9] {
        let answer = hub
            .attach(from)
            .call(0, vec![0xff; 7].into(), Duration::from_secs(5))
            .await
            .expect("an answer");
        hub.detach(from);
        let decoded: Result<(u64, serde_bytes::ByteBuf), String> =
            postcard::from_bytes(&answer).expect("an image answer");
        assert!(
            decoded.is_err(),
            "garbage from {from} was served: {decoded:?}"
        );
    }
    let emptied = tempfile::tempdir().expect("tempdir");
    let rebuilt = open(&hub, emptied.path(), 2).expect("an empty directory opens");
    let id = RequestId { client: 8, seq: 1 };
    let mut written = None;
    for _ in 0..20 {
        match rebuilt.propose(id, TestCommand::Append(99)).await {
            Ok(out) => {
                written = Some(out);
                break;
            }
            Err(LogError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("the member with an emptied disk failed: {e}"),
        }
    }
    let written = written.expect("the rebuilt member never took a write");
    assert_eq!(
        written,
        before.len() as u64 + 1,
        "the write landed after the history"
    );
    let mut expected = before.clone();
    expected.push(99);
    assert_eq!(
        history(&rebuilt).await,
        expected,
        "the rebuilt member's history"
    );
    logs.insert(2, rebuilt);
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(
            history(log).await,
            expected,
            "member {i} after member 2 was rebuilt"
        );
    }
    // The rebuild is on disk: a restart is an ordinary one, from the copied history.
    drop(logs.remove(2));
    hub.detach(2);
    let floor = open_engine(emptied.path())
        .expect("engine")
        .get(SNAPSHOT_GROUP, FLOOR_KEY)
        .expect("a rebuilt member stores its sequence floor");
    assert!(postcard::from_bytes::<u64>(&floor).expect("a number") > 0);
    let reopened = open(&hub, emptied.path(), 2).expect("the rebuilt member reopens");
    assert_eq!(history(&reopened).await, expected, "after a restart");
    let again = reopened
        .propose(RequestId { client: 8, seq: 2 }, TestCommand::Append(100))
        .await
        .expect("a write after the restart");
    assert_eq!(again, expected.len() as u64 + 1);
}

/// Copies the files of a (closed) member's data directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

/// Appends `value` as client 9's request `seq`.
async fn write_value(log: &AbcastLog<TestMachine>, seq: u64, value: u64) -> Result<u64, LogError> {
    log.propose(RequestId { client: 9, seq }, TestCommand::Append(value))
        .await
}

/// A member restarted from an older copy of its own data directory (a backup, a VM
/// snapshot): its disk holds a journal and a lease, but the incarnation after the copy used
/// Request ids above that lease and took turns the copy does not hold. It must not reuse them:
/// its history query finds them, it is rebuilt from a peer like an emptied member, and
/// then it serves, with every member holding the same history, each write once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_from_an_older_copy_of_its_disk_is_rebuilt() {
    // A short lease (8 Request ids per step), so that the later incarnation outruns it.
    let config = |id: u64| {
        let mut cfg = config(id);
        cfg.core.request_window = 16;
        cfg.core.requests_in_flight_max = 4;
        cfg.snapshot_every = 1_000;
        cfg
    };
    let open = |hub: &Arc<Hub>, dir: &Path, i: u64| {
        AbcastLog::open(config(i), dir, hub.attach(i), TestMachine::default())
    };
    let hub = Hub::new();
    let dirs: Vec<_> = (0..MEMBERS)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut logs: Vec<_> = (0..MEMBERS)
        .map(|i| open(&hub, dirs[i as usize].path(), i).expect("open"))
        .collect();
    let mut expected = Vec::new();
    for k in 0..6 {
        write_value(&logs[(k % MEMBERS) as usize], k + 1, k)
            .await
            .expect("propose");
        expected.push(k);
    }
    let dir = dirs[2].path();
    drop(logs.remove(2));
    hub.detach(2);
    let old = tempfile::tempdir().expect("tempdir");
    copy_dir(dir, old.path());
    logs.insert(2, open(&hub, dir, 2).expect("reopen"));
    for k in 6..50 {
        write_value(&logs[2], k + 1, k)
            .await
            .expect("propose at member 2");
        expected.push(k);
    }
    drop(logs.remove(2));
    hub.detach(2);
    std::fs::remove_dir_all(dir).expect("remove");
    copy_dir(old.path(), dir);

    let restored = open(&hub, dir, 2).expect("the older copy opens");
    let mut written = None;
    for _ in 0..20 {
        match write_value(&restored, 100, 99).await {
            Ok(out) => {
                written = Some(out);
                break;
            }
            Err(LogError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("the member restarted from an older disk failed: {e}"),
        }
    }
    let written = written.expect("the restored member never took a write");
    assert_eq!(written, 51, "the write landed after the history");
    expected.push(99);
    logs.insert(2, restored);
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(history(log).await, expected, "member {i}");
    }
    drop(logs.remove(2));
    hub.detach(2);
    let floor = open_engine(dir)
        .expect("engine")
        .get(SNAPSHOT_GROUP, FLOOR_KEY)
        .expect("a rebuilt member stores its sequence floor");
    assert!(postcard::from_bytes::<u64>(&floor).expect("a number") > 0);
}
