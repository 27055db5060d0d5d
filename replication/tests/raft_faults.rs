//! Five-node Raft clusters over the simulated network under message loss, duplication,
//! reordering, partitions and crashes.
//!
//! * `linearizable_under_faults`: clients append and read through random replicas while a
//!   nemesis partitions, heals, crashes and restarts nodes; the history goes through
//!   stateright's `LinearizabilityTester`, and total order / integrity / validity are checked
//!   on every replica's final state (one crash per run may empty the node's data directory:
//!   it must catch up before it votes). Seeds: `RAFT_SEEDS=<n>` runs seeds `0..n` (default 3),
//!   `SIM_SEED=<s>` replays one; a failing seed is printed.
//! * a minority side of a partition never commits;
//! * after the leader crashes, a new leader is elected within a bounded number of election
//!   timeouts;
//! * a lagging follower catches up by snapshot once the log is compacted;
//! * every node killed (with proposals in flight) and restarted: every acknowledged write is
//!   there, once, and nothing that was not proposed;
//! * proposals retried with the same request id across leader crashes are applied once;
//! * leadership transfer; malformed peer input is dropped without harm;
//! * a replica whose data directory is emptied votes only once it has caught up (with it
//!   voting at once, it and two stale replicas elect a leader without the committed writes);
//!   so does one started from an older copy of its directory, when the leader that saw its
//!   later acknowledgements is up as it starts, or when the copy predates a term it took
//!   part in (even after every replica restarted: the peers keep the terms they saw).
//!
//! Every loop is bounded in count; nothing asserts on timing beyond generous poll bounds.

mod raft_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_support::{converge, eventually, propose_retrying, Cluster, POLL};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replication::conformance::{TestAnswer, TestCommand, TestQuery};
use replication::{LogError, ReadConsistency, ReplicatedLog, RequestId};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use transport::sim::{seeds_from_env, LinkConfig, SeedGuard};
use transport::Network;

/// The sequential specification: an append-only list; appends return the new length, reads
/// the whole list.
#[derive(Debug, Clone, Default)]
struct ListSpec(Vec<u64>);

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Append(u64),
    Read,
}

#[derive(Debug, Clone, PartialEq)]
enum Ret {
    Len(u64),
    List(Vec<u64>),
}

impl SequentialSpec for ListSpec {
    type Op = Op;
    type Ret = Ret;
    fn invoke(&mut self, op: &Op) -> Ret {
        match op {
            Op::Append(v) => {
                self.0.push(*v);
                Ret::Len(self.0.len() as u64)
            }
            Op::Read => Ret::List(self.0.clone()),
        }
    }
}

type Tester = LinearizabilityTester<(u64, u64), ListSpec>;
type Thread = (u64, u64);

/// Client events in real-time order (the lock orders them), fed to the tester at the end.
#[derive(Default)]
struct Recorder {
    events: Vec<Event>,
}

enum Event {
    Invoke(Thread, Op),
    Return(Thread, Ret),
    /// The operation invoked at event `.0` failed: it may or may not have taken effect.
    Failed(usize, Thread, Op),
}

impl Recorder {
    /// Builds the tester from the events and the final applied history. A failed read has no
    /// effect and is left out. A failed append took effect exactly when its (unique) value is
    /// in the final history: if it is not, it is left out; if it is at position `p`, it
    /// returns `Len(p + 1)` at the end of the history (a widened, hence sound, interval).
    /// This keeps no operation in flight, so the tester's search stays small.
    fn tester(&self, final_history: &[u64]) -> Tester {
        let position = |v: u64| final_history.iter().position(|x| *x == v);
        let mut skip = BTreeSet::new();
        let mut late = Vec::new();
        for e in &self.events {
            if let Event::Failed(invoked_at, thread, op) = e {
                match op {
                    Op::Append(v) => match position(*v) {
                        Some(p) => late.push((*thread, Ret::Len(p as u64 + 1))),
                        None => {
                            skip.insert(*invoked_at);
                        }
                    },
                    Op::Read => {
                        skip.insert(*invoked_at);
                    }
                }
            }
        }
        let mut t = Tester::new(ListSpec::default());
        for (at, e) in self.events.iter().enumerate() {
            match e {
                Event::Invoke(thread, op) if !skip.contains(&at) => {
                    t.on_invoke(*thread, op.clone()).expect("valid history");
                }
                Event::Return(thread, ret) => {
                    t.on_return(*thread, ret.clone()).expect("valid history");
                }
                _ => {}
            }
        }
        for (thread, ret) in late {
            t.on_return(thread, ret).expect("valid history");
        }
        t
    }
}

fn seeds() -> Vec<u64> {
    seeds_from_env("RAFT_SEEDS", 3)
}

/// Links for `seed`: 1-10% loss, 3% duplication, 0-2 ms delay (reordering).
fn faulty(seed: u64) -> LinkConfig {
    LinkConfig::faulty(0.01 + 0.03 * (seed % 4) as f64, 0.03, 2_000)
}

/// The tester and the specification are wired right: a read that misses an acknowledged
/// append is rejected, the same read concurrent with the append is accepted.
#[test]
fn tester_rejects_a_stale_read() {
    let mut t = Tester::new(ListSpec::default());
    t.on_invoke((1, 0), Op::Append(7)).unwrap();
    t.on_return((1, 0), Ret::Len(1)).unwrap();
    t.on_invoke((2, 0), Op::Read).unwrap();
    t.on_return((2, 0), Ret::List(vec![])).unwrap();
    assert!(!t.is_consistent());
    let mut t = Tester::new(ListSpec::default());
    t.on_invoke((1, 0), Op::Append(7)).unwrap();
    t.on_invoke((2, 0), Op::Read).unwrap();
    t.on_return((2, 0), Ret::List(vec![])).unwrap();
    t.on_return((1, 0), Ret::Len(1)).unwrap();
    assert!(t.is_consistent());
}

/// Failed operations: an append that took effect may take it late, but not un-happen.
#[test]
fn recorder_handles_failed_operations() {
    let history = |events: Vec<Event>, fin: &[u64]| Recorder { events }.tester(fin).is_consistent();
    use Event::*;
    // A failed append whose value is applied: reads may miss it first, then see it.
    let ok = vec![
        Invoke((1, 0), Op::Append(7)),
        Failed(0, (1, 0), Op::Append(7)),
        Invoke((2, 0), Op::Read),
        Return((2, 0), Ret::List(vec![])),
        Invoke((2, 0), Op::Read),
        Return((2, 0), Ret::List(vec![7])),
    ];
    assert!(history(ok, &[7]));
    // ...but once seen it cannot disappear.
    let bad = vec![
        Invoke((1, 0), Op::Append(7)),
        Failed(0, (1, 0), Op::Append(7)),
        Invoke((2, 0), Op::Read),
        Return((2, 0), Ret::List(vec![7])),
        Invoke((2, 0), Op::Read),
        Return((2, 0), Ret::List(vec![])),
    ];
    assert!(!history(bad, &[7]));
    // A failed append that never took effect is left out; a read that saw it is a violation.
    let phantom = vec![
        Invoke((1, 0), Op::Append(7)),
        Failed(0, (1, 0), Op::Append(7)),
        Invoke((2, 0), Op::Read),
        Return((2, 0), Ret::List(vec![7])),
    ];
    assert!(!history(phantom, &[]));
}

/// One client: appends unique values and reads through random live replicas until `stop`.
/// An operation that fails is indeterminate (see [`Recorder::tester`]); the client goes on
/// under a new thread id.
async fn client(
    c: Arc<Cluster>,
    recorder: Arc<Mutex<Recorder>>,
    acked: Arc<Mutex<Vec<u64>>>,
    id: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (id << 32));
    let mut generation = 0u64;
    let mut done = 0usize;
    for k in 0..400u64 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let i = rng.gen_range(0..c.n);
        let Some(log) = c.try_log(i) else {
            tokio::time::sleep(POLL).await;
            continue;
        };
        let thread = (id, generation);
        let append = rng.gen_bool(0.6);
        let value = id * 1_000_000 + k;
        let op = if append { Op::Append(value) } else { Op::Read };
        let invoked_at = {
            let mut r = recorder.lock().unwrap();
            r.events.push(Event::Invoke(thread, op.clone()));
            r.events.len() - 1
        };
        let ret = if append {
            log.propose(
                RequestId {
                    client: id,
                    seq: k + 1,
                },
                TestCommand::Append(value),
            )
            .await
            .map(Ret::Len)
        } else {
            match log
                .read(TestQuery::History, ReadConsistency::Linearizable)
                .await
            {
                Ok(TestAnswer::History(h)) => Ok(Ret::List(h)),
                Ok(other) => panic!("wrong answer {other:?}"),
                Err(e) => Err(e),
            }
        };
        match ret {
            Ok(r) => {
                recorder
                    .lock()
                    .unwrap()
                    .events
                    .push(Event::Return(thread, r));
                if append {
                    acked.lock().unwrap().push(value);
                }
                done += 1;
            }
            Err(LogError::Unavailable(_)) | Err(LogError::Shutdown) => {
                recorder
                    .lock()
                    .unwrap()
                    .events
                    .push(Event::Failed(invoked_at, thread, op));
                generation += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    done
}

async fn nemesis(c: Arc<Cluster>, seed: u64, steps: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9));
    // One crash per run may also empty the node's data directory (a lost disk): every
    // committed entry is then still on two disks, and the node must catch up before voting.
    let mut wiped = false;
    for _ in 0..steps {
        let nodes: Vec<u64> = (0..c.n as u64).collect();
        match rng.gen_range(0..4) {
            0 => {
                // Partition a random minority (1 or 2 nodes) from the rest.
                let k = rng.gen_range(1..=2);
                let mut shuffled = nodes.clone();
                for j in (1..shuffled.len()).rev() {
                    shuffled.swap(j, rng.gen_range(0..=j));
                }
                let (a, b) = shuffled.split_at(k);
                c.hub.partition(a, b);
            }
            1 => c.hub.heal(),
            2 => {
                // Crash one node (at most two down at a time), or restart one.
                let down: Vec<usize> = (0..c.n).filter(|i| !c.is_up(*i)).collect();
                if down.len() < 2 {
                    let victim = rng.gen_range(0..c.n);
                    if !wiped && c.is_up(victim) && rng.gen_bool(0.5) {
                        wiped = true;
                        eprintln!("seed {seed}: node {victim} loses its disk");
                        c.wipe(victim);
                    } else {
                        c.crash(victim);
                    }
                } else {
                    c.restart(down[0]);
                }
            }
            _ => {
                let down: Vec<usize> = (0..c.n).filter(|i| !c.is_up(*i)).collect();
                if let Some(i) = down.first() {
                    c.restart(*i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
    }
    c.hub.heal();
    for i in 0..c.n {
        c.restart(i);
    }
}

/// Integrity and durability of a converged history: no value applied twice, and every value
/// whose write was acknowledged is there.
fn assert_once_and_none_lost(seed: u64, history: &[u64], acked: &[u64]) {
    let unique: BTreeSet<u64> = history.iter().copied().collect();
    assert_eq!(
        unique.len(),
        history.len(),
        "seed {seed}: a value was applied twice"
    );
    for v in acked {
        assert!(
            unique.contains(v),
            "seed {seed}: acknowledged value {v} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_under_faults() {
    for seed in seeds() {
        let guard = SeedGuard::new(seed);
        let started = Instant::now();
        let c = Arc::new(
            Cluster::start(5, seed, faulty(seed), |cfg| {
                cfg.propose_timeout = Duration::from_secs(2);
                cfg.snapshot_every = 50;
                cfg.compact_margin = 10;
            })
            .await,
        );
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for id in 1..=4u64 {
            clients.push(tokio::spawn(client(
                c.clone(),
                recorder.clone(),
                acked.clone(),
                id,
                seed,
                stop.clone(),
            )));
        }
        nemesis(c.clone(), seed, 10).await;
        // Let the healed cluster serve for a moment, then stop the clients.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
        let mut done = 0;
        for t in clients {
            done += t.await.expect("client task");
        }
        // A final write through every replica proves liveness after healing.
        for i in 0..c.n {
            let id = RequestId {
                client: 99,
                seq: i as u64 + 1,
            };
            propose_retrying(&c, i, id, TestCommand::Append(99_000 + i as u64), 5)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: final write through {i}: {e}"));
        }
        let acked: Vec<u64> = acked.lock().unwrap().clone();
        let history = converge(&c, acked.len() + c.n, 500).await;
        assert_once_and_none_lost(seed, &history, &acked);
        for v in &history {
            let (client, k) = (v / 1_000_000, v % 1_000_000);
            assert!(
                (1..=4).contains(&client) && k < 400 || (99_000..99_000 + c.n as u64).contains(v),
                "seed {seed}: value {v} was never proposed"
            );
        }
        let t = recorder.lock().unwrap().tester(&history);
        assert!(
            t.serialized_history().is_some(),
            "seed {seed}: history is not linearizable"
        );
        drop(t);
        eprintln!(
            "seed {seed}: {done} operations ok, {} acked appends, {} applied, {:?}",
            acked.len(),
            history.len(),
            started.elapsed()
        );
        drop(guard);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_partition_never_commits() {
    let c = Cluster::start(5, 11, LinkConfig::default(), |cfg| {
        cfg.propose_timeout = Duration::from_millis(800);
    })
    .await;
    let (leader, _) = c.wait_leader(500).await.expect("a leader");
    for k in 0..5u64 {
        c.node(leader)
            .propose(
                RequestId {
                    client: 1,
                    seq: k + 1,
                },
                TestCommand::Append(k),
            )
            .await
            .expect("write before partition");
    }
    // The old leader and one follower on the minority side.
    let other = (leader + 1) % c.n;
    let minority = [leader, other];
    let majority: Vec<usize> = (0..c.n).filter(|i| !minority.contains(i)).collect();
    let ids = |s: &[usize]| s.iter().map(|i| *i as u64).collect::<Vec<_>>();
    c.hub.partition(&ids(&minority), &ids(&majority));
    let commit_at_partition = minority
        .iter()
        .map(|i| c.node(*i).status().commit_index)
        .max()
        .unwrap_or(0);
    // Proposals on the minority side fail; on the majority side they succeed.
    let mut minority_values = Vec::new();
    for (k, i) in minority.iter().enumerate() {
        let v = 500 + k as u64;
        minority_values.push(v);
        let r = c
            .node(*i)
            .propose(
                RequestId {
                    client: 2,
                    seq: k as u64 + 1,
                },
                TestCommand::Append(v),
            )
            .await;
        assert!(
            matches!(r, Err(LogError::Unavailable(_))),
            "minority committed: {r:?}"
        );
    }
    for k in 0..5u64 {
        let id = RequestId {
            client: 3,
            seq: k + 1,
        };
        // Retried (same id) while the majority side elects its leader.
        let mut committed = false;
        for attempt in 0..10 {
            let via = majority[(k as usize + attempt) % majority.len()];
            if c.node(via)
                .propose(id, TestCommand::Append(100 + k))
                .await
                .is_ok()
            {
                committed = true;
                break;
            }
        }
        assert!(committed, "the majority side did not commit");
    }
    for i in minority {
        let s = c.node(i).status();
        assert!(
            s.commit_index <= commit_at_partition,
            "minority node {i} advanced its commit index to {} (was {commit_at_partition})",
            s.commit_index
        );
        assert_ne!(
            s.role,
            replication::Role::Leader,
            "minority node {i} still leads"
        );
    }
    c.hub.heal();
    let history = converge(&c, 10, 500).await;
    for v in minority_values {
        assert!(
            !history.contains(&v),
            "a minority-side proposal {v} was committed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_after_leader_crash() {
    let c = Cluster::start(5, 21, LinkConfig::default(), |_| {}).await;
    let cfg = c.config(0);
    // Ten maximal election timeouts (raft-rs randomizes in [election, 2 * election) ticks).
    let bound = cfg.tick_interval * (10 * 2 * cfg.election_tick as u32);
    let polls = (bound.as_millis() / POLL.as_millis()) as usize;
    for round in 0..3 {
        let (old, term) = c.wait_leader(polls).await.expect("a leader");
        c.crash(old);
        let started = Instant::now();
        let mut elected = None;
        for _ in 0..polls {
            if let Some((l, t)) = c.leader() {
                if t > term {
                    elected = Some((l, t));
                    break;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        let (new, new_term) = elected
            .unwrap_or_else(|| panic!("round {round}: no new leader within 10 election timeouts"));
        eprintln!(
            "round {round}: leader {old} (term {term}) crashed; {new} leads term {new_term} after {:?}",
            started.elapsed()
        );
        let id = RequestId {
            client: 5,
            seq: round + 1,
        };
        propose_retrying(&c, new, id, TestCommand::Incr, 5)
            .await
            .expect("write after election");
        c.restart(old);
    }
}

/// Crashes the leader of a cluster whose election timeout is 1.5-3 s and returns how many
/// polls it took for a new leader to appear (`None` if none within `polls`).
async fn polls_to_new_leader(fast_failover: bool, seed: u64, polls: usize) -> Option<usize> {
    let tweak: fn(&mut replication::raft::RaftConfig) = if fast_failover {
        |cfg| cfg.election_tick = 150
    } else {
        |cfg| {
            cfg.election_tick = 150;
            cfg.fast_failover = false;
        }
    };
    let c = Cluster::start(5, seed, LinkConfig::default(), tweak).await;
    // The first election waits out a timeout: 1.5-3 s.
    let (old, term) = c.wait_leader(600).await.expect("a first leader");
    // Every follower must know who leads (the report concerns its leader).
    let mut known = false;
    for _ in 0..200 {
        known = (0..c.n).all(|i| {
            c.try_log(i)
                .is_some_and(|l| l.status().leader == Some(old as u64))
        });
        if known {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(known, "every replica learns the first leader");
    c.crash(old);
    for n in 0..polls {
        if c.leader().is_some_and(|(_, t)| t > term) {
            return Some(n);
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_leader_death_elects_a_successor_without_waiting_for_the_timeout() {
    // The simulated network reports the crash, as the QUIC network's liveness sentinels do.
    // Half the shortest election timeout: only the report can elect a leader this soon.
    let polls = (Duration::from_millis(750).as_millis() / POLL.as_millis()) as usize;
    let fast = polls_to_new_leader(true, 41, polls).await;
    eprintln!("fast failover: new leader after {fast:?} polls of {POLL:?}");
    assert!(
        fast.is_some(),
        "no new leader within 750 ms of the leader's reported death"
    );
    let slow = polls_to_new_leader(false, 41, polls).await;
    assert_eq!(
        slow, None,
        "without fast failover the timeout (1.5 s or more) must run out first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_death_report_does_not_cut_a_follower_off() {
    let c = Cluster::start(5, 43, LinkConfig::default(), |_| {}).await;
    let cfg = c.config(0);
    let bound = cfg.tick_interval * (10 * 2 * cfg.election_tick as u32);
    let polls = (bound.as_millis() / POLL.as_millis()) as usize;
    let (leader, _) = c.wait_leader(polls).await.expect("a leader");
    // The leader lives, but one follower is told it died: it stops listening to it and
    // campaigns, and the others, still hearing the leader, ignore it. It must come back.
    let follower = (leader + 1) % c.n;
    c.hub.report_down_to(follower as u64, leader as u64);
    for seq in 1..=3u64 {
        let id = RequestId { client: 7, seq };
        propose_retrying(&c, leader, id, TestCommand::Append(seq), 5)
            .await
            .unwrap_or_else(|e| panic!("write {seq} after a false report: {e}"));
    }
    // Every replica, the misinformed follower included, ends with the same history.
    converge(&c, 3, polls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_by_snapshot() {
    let c = Cluster::start(5, 31, LinkConfig::default(), |cfg| {
        cfg.snapshot_every = 20;
        cfg.compact_margin = 5;
    })
    .await;
    let (leader, _) = c.wait_leader(500).await.expect("a leader");
    let lagging = (leader + 1) % c.n;
    for k in 0..5u64 {
        c.node(leader)
            .propose(
                RequestId {
                    client: 1,
                    seq: k + 1,
                },
                TestCommand::Append(k),
            )
            .await
            .expect("write");
    }
    converge(&c, 5, 500).await;
    c.crash(lagging);
    for k in 5..120u64 {
        let via = if (k as usize) % c.n == lagging {
            leader
        } else {
            k as usize % c.n
        };
        c.node(via)
            .propose(
                RequestId {
                    client: 1,
                    seq: k + 1,
                },
                TestCommand::Append(k),
            )
            .await
            .expect("write while a follower is down");
    }
    let (leader, _) = c.wait_leader(500).await.expect("a leader");
    let stats = c.node(leader).stats();
    assert!(
        stats.snapshots_taken >= 1,
        "leader took no snapshot: {stats:?}"
    );
    assert!(
        stats.first_index > 6,
        "leader did not compact its log: {stats:?}"
    );
    c.restart(lagging);
    let history = converge(&c, 120, 500).await;
    assert_eq!(history, (0..120).collect::<Vec<_>>());
    let stats = c.node(lagging).stats();
    assert!(
        stats.snapshots_installed >= 1,
        "follower caught up without a snapshot: {stats:?}"
    );
    // And it restarts from the installed snapshot.
    c.crash(lagging);
    c.restart(lagging);
    let history = converge(&c, 120, 500).await;
    assert_eq!(history.len(), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_with_writes_in_flight() {
    for seed in seeds() {
        let _guard = SeedGuard::new(seed);
        let c = Arc::new(
            Cluster::start(5, 100 + seed, faulty(seed), |cfg| {
                cfg.propose_timeout = Duration::from_secs(2);
                cfg.snapshot_every = 30;
                cfg.compact_margin = 5;
            })
            .await,
        );
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..5u64 {
            let (c, acked) = (c.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                for k in 0..40u64 {
                    let Some(log) = c.try_log(((w + k) % 5) as usize) else {
                        break;
                    };
                    let v = w * 1000 + k;
                    match log
                        .propose(
                            RequestId {
                                client: w + 1,
                                seq: k + 1,
                            },
                            TestCommand::Append(v),
                        )
                        .await
                    {
                        Ok(_) => acked.lock().unwrap().push(v),
                        Err(_) => break,
                    }
                }
            }));
        }
        // Kill everything while writes are in flight.
        tokio::time::sleep(Duration::from_millis(300 + 50 * seed)).await;
        for i in 0..c.n {
            c.crash(i);
        }
        for t in tasks {
            t.await.expect("writer");
        }
        let acked: Vec<u64> = acked.lock().unwrap().clone();
        for i in 0..c.n {
            c.restart(i);
        }
        // A fresh write commits everything before it in the new term.
        let id = RequestId { client: 77, seq: 1 };
        propose_retrying(&c, 0, id, TestCommand::Append(77_777), 5)
            .await
            .expect("write after restart");
        let history = converge(&c, acked.len() + 1, 500).await;
        assert_once_and_none_lost(seed, &history, &acked);
        for v in &history {
            assert!(
                *v == 77_777 || (v / 1000 < 5 && v % 1000 < 40),
                "seed {seed}: {v} never proposed"
            );
        }
        eprintln!(
            "seed {seed}: {} acknowledged before the kill, {} applied after restart",
            acked.len(),
            history.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfer() {
    let c = Cluster::start(5, 41, LinkConfig::default(), |_| {}).await;
    let (leader, _) = c.wait_leader(500).await.expect("a leader");
    for step in 1..=2u64 {
        let (current, _) = c.wait_leader(500).await.expect("a leader");
        let target = (current + step as usize) % c.n;
        // Ask through a follower the first time, through the leader the second.
        let via = if step == 1 {
            (target + 1) % c.n
        } else {
            current
        };
        c.node(via)
            .transfer_leader(target as u64)
            .await
            .expect("transfer");
        let mut led = false;
        for _ in 0..500 {
            if c.leader().map(|(l, _)| l) == Some(target) {
                led = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        assert!(led, "leadership did not move to {target}");
        c.node(leader)
            .propose(
                RequestId {
                    client: 8,
                    seq: step,
                },
                TestCommand::Incr,
            )
            .await
            .expect("write after transfer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peer_input_is_dropped() {
    let c = Cluster::start(3, 51, LinkConfig::default(), |_| {}).await;
    let (leader, _) = c.wait_leader(500).await.expect("a leader");
    // An intruder attached to the network (not a peer) and a peer impersonator both send junk.
    let intruder = c.hub.node(9).expect("attach");
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 64],
        // Wire::Raft([[1, 2, 3]]): a batch holding bytes that are not a protobuf message.
        vec![0, 1, 3, 1, 2, 3],
        // Wire::Raft([[]]): an empty (default) protobuf message, addressed to raft id 0.
        vec![0, 1, 0],
        // Wire::ForwardPropose as a one-way message.
        vec![1, 2, 0, 0],
    ];
    for j in &junk {
        for i in 0..c.n as u64 {
            intruder.send(i, Bytes::from(j.clone())).expect("send");
        }
    }
    // A forwarded proposal whose command does not decode gets a clear refusal.
    let reply = intruder
        .call(
            leader as u64,
            Bytes::from(vec![1, 3, 0xff, 0xff, 0xff]),
            Duration::from_secs(2),
        )
        .await
        .expect("an answer");
    assert!(!reply.is_empty());
    // Junk requests are dropped.
    let r = intruder
        .call(
            leader as u64,
            Bytes::from(vec![7, 7, 7]),
            Duration::from_secs(2),
        )
        .await;
    assert!(r.is_err(), "junk request answered: {r:?}");
    // The cluster is unharmed.
    for i in 0..c.n {
        c.node(i)
            .propose(
                RequestId {
                    client: 4,
                    seq: i as u64 + 1,
                },
                TestCommand::Append(i as u64),
            )
            .await
            .expect("write after junk");
    }
    converge(&c, c.n, 500).await;
}

/// Exactly-once across failover: writers retry every failed proposal with the same request id
/// through another replica while leaders crash and restart; every value ends up applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_across_leader_crashes_apply_once() {
    for seed in seeds() {
        let _guard = SeedGuard::new(seed);
        let c = Arc::new(
            Cluster::start(5, 200 + seed, faulty(seed), |cfg| {
                cfg.propose_timeout = Duration::from_millis(1500);
            })
            .await,
        );
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let c = c.clone();
            writers.push(tokio::spawn(async move {
                for k in 0..25u64 {
                    let id = RequestId {
                        client: 300 + w,
                        seq: k + 1,
                    };
                    let v = w * 1000 + k;
                    let mut first = None;
                    for attempt in 0..40usize {
                        let Some(log) = c.try_log((w as usize + k as usize + attempt) % c.n) else {
                            continue;
                        };
                        match log.propose(id, TestCommand::Append(v)).await {
                            Ok(len) => {
                                first = Some(len);
                                break;
                            }
                            Err(LogError::Unavailable(_)) | Err(LogError::Shutdown) => {
                                tokio::time::sleep(POLL).await;
                            }
                            Err(e) => panic!("seed {seed}: unexpected {e}"),
                        }
                    }
                    assert!(first.is_some(), "seed {seed}: value {v} never committed");
                }
            }));
        }
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some((l, _)) = c.leader() {
                c.crash(l);
                tokio::time::sleep(Duration::from_millis(300)).await;
                c.restart(l);
            }
        }
        for w in writers {
            w.await.expect("writer");
        }
        let history = converge(&c, 100, 500).await;
        let unique: BTreeSet<u64> = history.iter().copied().collect();
        assert_eq!(
            history.len(),
            100,
            "seed {seed}: {} entries applied",
            history.len()
        );
        assert_eq!(
            unique.len(),
            100,
            "seed {seed}: a retried value was applied twice"
        );
    }
}

/// Five replicas whose proposals may take 3 s, once they have a leader: the cluster, the
/// leader and the followers.
async fn five_with_leader(seed: u64) -> (Cluster, usize, Vec<usize>) {
    let c = Cluster::start(5, seed, LinkConfig::default(), |cfg| {
        cfg.propose_timeout = Duration::from_secs(3);
    })
    .await;
    let (leader, _) = c.wait_leader(500).await.expect("a leader");
    let followers = (0..c.n).filter(|i| *i != leader).collect();
    (c, leader, followers)
}

/// Appends `value` through replica `via` as request `(client, value)`; it must succeed (a
/// majority is alive).
async fn append(c: &Cluster, via: usize, client: u64, value: u64) {
    c.node(via)
        .propose(RequestId { client, seq: value }, TestCommand::Append(value))
        .await
        .expect("a write with a majority alive");
}

/// A ReadIndex round asks only some of the followers (those heard from most recently).
/// When a follower it asked has just died, the next regular heartbeat (which goes to every
/// follower with the last pending read context) must complete the read: reads at the leader
/// keep succeeding, and keep seeing every acknowledged write, while two of the four followers
/// are killed one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_the_death_of_the_followers_they_asked() {
    let (c, leader, followers) = five_with_leader(21).await;
    let mut written = 0u64;
    // Highest ids first: while appends go quorum-first, reads ask those followers first.
    for victim in [None, Some(followers[3]), Some(followers[2])] {
        if let Some(v) = victim {
            c.crash(v);
        }
        for _ in 0..25 {
            written += 1;
            append(&c, leader, 7, written).await;
            let answer = c
                .node(leader)
                .read(TestQuery::History, ReadConsistency::Linearizable)
                .await
                .expect("a read with a majority alive");
            let TestAnswer::History(history) = answer else {
                panic!("unexpected answer {answer:?}");
            };
            assert_eq!(history.last(), Some(&written), "a read missed a write");
        }
    }
}

/// Quorum-first appends: a leader sends its appends at once only to the followers a commit
/// needs and holds the others' back for a moment. The held appends must still arrive (every
/// replica ends with the whole history), the leader must really have held some back (else
/// this proves nothing), and with the two followers that get appends at once killed (the two
/// with the lowest ids) writes must go on with the two whose appends were held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_held_back_from_followers_still_arrive() {
    let (c, leader, followers) = five_with_leader(23).await;
    let mut written = 0u64;
    for victims in [vec![], vec![followers[0], followers[1]]] {
        for v in victims {
            c.crash(v);
        }
        for _ in 0..40 {
            written += 1;
            append(&c, leader, 9, written).await;
        }
        let history = converge(&c, written as usize, 500).await;
        assert_eq!(history, (1..=written).collect::<Vec<_>>());
        if written == 40 {
            assert!(
                c.node(leader).stats().appends_deferred > 0,
                "with every follower up, the leader never held an append back"
            );
        }
    }
}

/// `defer_appends = 0` sends every append to every follower at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_to_everyone_at_once_when_deferring_is_off() {
    let c = Cluster::start(5, 24, LinkConfig::default(), |cfg| {
        cfg.defer_appends = Duration::ZERO;
    })
    .await;
    let (leader, _) = c.wait_leader(500).await.expect("a leader");
    for value in 1..=20u64 {
        append(&c, leader, 9, value).await;
    }
    converge(&c, 20, 500).await;
    assert_eq!(c.node(leader).stats().appends_deferred, 0);
}

/// A replica whose data directory is emptied (a replaced disk or host) and started again
/// under its old id must not vote before it has caught up: it may have acknowledged entries
/// that only a majority including it held, and with it voting, two stale replicas and it
/// would elect a leader without them (the committed writes would be overwritten). Here
/// entries are committed by three replicas while the two others are down; two of the three
/// die and the third loses its disk. The third and the two stale ones must elect nobody;
/// once a replica holding the writes is back, it leads, the emptied one catches up, votes
/// again (a later election needs it), and every write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_replica_votes_only_after_it_caught_up() {
    let (c, leader, followers) = five_with_leader(31).await;
    let (stale, holders) = (&followers[..2], [leader, followers[2], followers[3]]);
    for &s in stale {
        c.crash(s);
    }
    for v in 1..=20u64 {
        append(&c, leader, 8, v).await;
    }
    let emptied = holders[2];
    c.crash(holders[0]);
    c.crash(holders[1]);
    c.wipe(emptied);
    for &s in stale {
        c.restart(s);
    }
    c.restart(emptied);
    votes_only_after_it_caught_up(&c, emptied, holders[0], "emptied").await;
}

/// The second half of the emptied-replica test above and the older-copy one below: replica
/// `rejoining`, which does not vote yet, and the two stale replicas (the only ones up) must
/// elect nobody for five maximal election timeouts, and `rejoining` restarted must still not
/// vote; once `holder` (which has the 20 writes) is back, `rejoining` must catch up, every
/// write must be there, and it must vote again (with `holder` down once more, the stale
/// replicas elect nobody without it) so that a 21st write goes through.
async fn votes_only_after_it_caught_up(c: &Cluster, rejoining: usize, holder: usize, what: &str) {
    // Five maximal election timeouts (raft-rs randomizes in [election, 2 * election) ticks).
    let cfg = c.config(0);
    let window = cfg.tick_interval * (5 * 2 * cfg.election_tick as u32);
    let polls = (window.as_millis() / POLL.as_millis()) as usize;
    for _ in 0..polls {
        assert_eq!(
            c.leader(),
            None,
            "two stale replicas and the {what} one elected a leader"
        );
        tokio::time::sleep(POLL).await;
    }
    let role = |c: &Cluster| c.node(rejoining).status().role;
    assert_eq!(role(c), replication::Role::Recovering);
    // Restarted, it keeps the mark: still not voting.
    c.crash(rejoining);
    c.restart(rejoining);
    assert_eq!(role(c), replication::Role::Recovering);
    c.restart(holder);
    let caught_up = eventually(500, || role(c) == replication::Role::Follower).await;
    assert!(caught_up, "the {what} replica never caught up");
    let history = converge(c, 20, 500).await;
    assert_eq!(
        history[..20],
        (1..=20).collect::<Vec<u64>>()[..],
        "a write was lost"
    );
    c.crash(holder);
    let (now, _) = c
        .wait_leader(500)
        .await
        .unwrap_or_else(|| panic!("no leader with the {what} replica voting"));
    propose_retrying(
        c,
        now,
        RequestId { client: 8, seq: 21 },
        TestCommand::Append(21),
        10,
    )
    .await
    .unwrap_or_else(|e| panic!("no write after the {what} replica rejoined: {e}"));
    let history = converge(c, 21, 500).await;
    assert_eq!(history, (1..=21).collect::<Vec<u64>>());
}

/// A replica started from an older copy of its data directory (a backup) while the leader
/// that replicated to it is up learns from that leader that it had acknowledged entries its
/// copy lacks, and then behaves as an emptied one: it votes only once it has caught up.
/// Same shape as the emptied case: entries committed by three replicas while the two others
/// are down, one of the three restored from a copy taken before them, then the two others of
/// the three die: the restored one and the two stale ones must elect nobody. A replica that
/// does not check its store against its peers fails at the first assertion (it never
/// reports `Recovering`), and would elect a leader without the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_of_a_replica_votes_only_after_it_caught_up() {
    let (c, leader, followers) = five_with_leader(33).await;
    let (stale, holders) = (&followers[..2], [leader, followers[2], followers[3]]);
    let restored = holders[2];
    append(&c, leader, 8, 1).await;
    let backup = c.backup(restored);
    c.restart(restored);
    for &s in stale {
        c.crash(s);
    }
    for v in 2..=20u64 {
        append(&c, leader, 8, v).await;
    }
    c.restore(restored, backup.path());
    c.restart(restored);
    let detected = eventually(200, || {
        c.node(restored).status().role == replication::Role::Recovering
    })
    .await;
    assert!(
        detected,
        "the restored replica never noticed its copy was older"
    );
    assert_eq!(c.node(restored).stats().older_stores, 1);
    c.crash(holders[0]);
    c.crash(holders[1]);
    for &s in stale {
        c.restart(s);
    }
    votes_only_after_it_caught_up(&c, restored, holders[0], "restored").await;
}

/// Only the leader can tell a copy taken in the current term (it holds what the replica
/// acknowledged). When its answer is late (here its messages to the restored replica are
/// dropped for 300 ms, three election timeouts; in a real cluster its connection to the
/// dead process may still be open), the check does not end on the followers' answers,
/// which name that leader: it asks again until the leader answers. Ending after one
/// election timeout on the followers' answers, it would miss the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_check_waits_for_the_leader_the_peers_name() {
    let (c, leader, followers) = five_with_leader(38).await;
    let restored = followers[0];
    append(&c, leader, 8, 1).await;
    let backup = c.backup(restored);
    c.restart(restored);
    for v in 2..=20u64 {
        append(&c, leader, 8, v).await;
    }
    converge(&c, 20, 500).await;
    c.hub.block(leader as u64, restored as u64);
    c.restore(restored, backup.path());
    c.restart(restored);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.node(restored).stats().older_stores,
        0,
        "only the leader could tell"
    );
    c.hub.unblock(leader as u64, restored as u64);
    let detected = eventually(200, || c.node(restored).stats().older_stores == 1).await;
    assert!(
        detected,
        "the restored replica stopped checking before the leader answered"
    );
    let history = converge(&c, 20, 500).await;
    assert_eq!(history, (1..=20).collect::<Vec<u64>>());
}

/// Remote clients learn the leader from every answer (`leader_hint`, read without building
/// the status): every replica names the one it follows, as its status does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_hints_at_the_leader_its_status_names() {
    let (c, leader, _) = five_with_leader(37).await;
    let leader = Some(leader as u64);
    let named = eventually(200, || {
        (0..c.n).all(|i| {
            let node = c.node(i);
            node.leader_hint() == leader && node.status().leader == leader
        })
    })
    .await;
    assert!(
        named,
        "a replica hints at another leader than its status names"
    );
}

/// The terms a replica saw from each peer are kept on its disk, so a copy older than a term
/// the restored replica took part in is caught even when every process restarted (no
/// leader remembers anything of it then): the copy is taken, the replica takes part in a
/// later term (its leader is killed and another elected, then more writes), every replica
/// stops, the copy is put back, and all start again. With the terms kept only in memory,
/// nobody would remember and the copy would vote at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_is_caught_after_every_replica_restarted() {
    older_copy_after_a_whole_cluster_restart(35, false).await;
}

/// As above, but the restored replica starts alone and its peers only several election
/// timeouts later, as when hosts come up one by one: its check waits for enough peers to
/// answer (it cannot take part in an election before that anyway), so the first of them to
/// come up tells it. With a check that ended after one election timeout whatever the
/// answers, the copy would vote at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_started_before_its_peers_is_caught() {
    older_copy_after_a_whole_cluster_restart(36, true).await;
}

/// The body of the two tests above: `restored_first` starts the restored replica 400 ms
/// (four election timeouts) before the others.
async fn older_copy_after_a_whole_cluster_restart(seed: u64, restored_first: bool) {
    let (c, leader, followers) = five_with_leader(seed).await;
    let restored = followers[0];
    append(&c, leader, 8, 1).await;
    let backup = c.backup(restored);
    c.restart(restored);
    c.crash(leader);
    let (next, _) = c
        .wait_leader(500)
        .await
        .expect("a leader after the first one died");
    c.restart(leader);
    for v in 2..=10u64 {
        propose_retrying(
            &c,
            next,
            RequestId { client: 8, seq: v },
            TestCommand::Append(v),
            10,
        )
        .await
        .expect("a write in the later term");
    }
    converge(&c, 10, 500).await;
    // An orderly stop writes the seen terms that grew since the last tick.
    for i in 0..c.n {
        c.crash(i);
    }
    c.restore(restored, backup.path());
    if restored_first {
        c.restart(restored);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            c.node(restored).stats().older_stores,
            0,
            "nobody could tell yet"
        );
    }
    for i in (0..c.n).filter(|i| *i != restored) {
        c.restart(i);
    }
    c.restart(restored);
    let detected = eventually(200, || c.node(restored).stats().older_stores == 1).await;
    assert!(
        detected,
        "the restored replica did not notice its copy predates a term it took part in"
    );
    let caught_up = eventually(500, || {
        c.node(restored).status().role == replication::Role::Follower
    })
    .await;
    assert!(caught_up, "the restored replica never caught up");
    let history = converge(&c, 10, 500).await;
    assert_eq!(history, (1..=10).collect::<Vec<u64>>());
}
