//! The conformance suite every [`ReplicatedLog`] implementation runs.
//!
//! It is generic over a [`Harness`] that builds a cluster of replicas of [`TestMachine`] and,
//! where the implementation is durable, restarts them all from disk. Each check asserts one of
//! the contract's promises; [`conformance_suite!`](crate::conformance_suite) turns them into
//! `#[tokio::test]` functions:
//!
//! ```text
//! async fn make() -> MyHarness { /* start 5 replicas */ }
//! replication::conformance_suite!(make);
//! ```

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::log::{ReadConsistency, ReplicatedLog, RequestId};
use crate::state_machine::{SnapshotError, StateMachine};

/// Commands of the test state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestCommand {
    /// Appends a value to the history; returns the history's new length.
    Append(u64),
    /// Increments a counter; returns its new value (not idempotent: shows double application).
    Incr,
}

/// Queries of the test state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestQuery {
    /// The whole history of appended values, in apply order.
    History,
    /// The counter.
    Counter,
}

/// Answers of the test state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestAnswer {
    /// The history.
    History(Vec<u64>),
    /// The counter.
    Counter(u64),
}

/// A tiny deterministic state machine: an append-only history and a counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestMachine {
    history: Vec<u64>,
    counter: u64,
}

impl StateMachine for TestMachine {
    type Command = TestCommand;
    type Output = u64;
    type Query = TestQuery;
    type Answer = TestAnswer;

    fn apply(&mut self, command: TestCommand) -> u64 {
        match command {
            TestCommand::Append(v) => {
                self.history.push(v);
                self.history.len() as u64
            }
            TestCommand::Incr => {
                self.counter += 1;
                self.counter
            }
        }
    }

    fn query(&self, query: &TestQuery) -> TestAnswer {
        match query {
            TestQuery::History => TestAnswer::History(self.history.clone()),
            TestQuery::Counter => TestAnswer::Counter(self.counter),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        *self = postcard::from_bytes(snapshot).map_err(|e| SnapshotError(e.to_string()))?;
        Ok(())
    }
}

/// One replica's applied history, read locally with no barrier ([`ReadConsistency::Stale`]),
/// from any log of a state machine that answers [`TestQuery`] (the [`TestMachine`] or a
/// wrapper of it). Panics on an error or another answer: for tests.
pub async fn stale_history<S, L>(log: &L) -> Vec<u64>
where
    S: StateMachine<Query = TestQuery, Answer = TestAnswer>,
    L: ReplicatedLog<S> + ?Sized,
{
    match log.read(TestQuery::History, ReadConsistency::Stale).await {
        Ok(TestAnswer::History(h)) => h,
        other => panic!("stale history read: {other:?}"),
    }
}

/// Where a [`GatedMachine`]'s `snapshot` waits while the gate is closed: tests of what a log
/// does while one replica is taking a snapshot.
#[derive(Debug)]
pub struct SnapshotGate {
    open: Mutex<bool>,
    opened: Condvar,
    entered: AtomicBool,
    /// Wakes [`SnapshotGate::wait_entered`] when a snapshot reaches the closed gate.
    reached: tokio::sync::Notify,
}

impl SnapshotGate {
    /// A gate, open or closed.
    pub fn new(open: bool) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(open),
            opened: Condvar::new(),
            entered: AtomicBool::new(false),
            reached: tokio::sync::Notify::new(),
        })
    }

    /// Snapshots started from now on wait.
    pub fn close(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = false;
    }

    /// Lets every waiting and later snapshot through.
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.opened.notify_all();
    }

    /// Whether a snapshot has reached the gate while it was closed.
    pub fn entered(&self) -> bool {
        self.entered.load(Ordering::SeqCst)
    }

    /// Returns once a snapshot has reached the gate while it was closed (at once if one has).
    pub async fn wait_entered(&self) {
        loop {
            let reached = self.reached.notified();
            tokio::pin!(reached);
            // Registered before the check, so a snapshot arriving in between still wakes us.
            reached.as_mut().enable();
            if self.entered() {
                return;
            }
            reached.await;
        }
    }

    /// Waits (10 s at most) while the gate is closed.
    fn pass(&self) {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if *open {
            return;
        }
        self.entered.store(true, Ordering::SeqCst);
        self.reached.notify_waiters();
        let _ = self
            .opened
            .wait_timeout_while(open, Duration::from_secs(10), |open| !*open);
    }
}

/// [`TestMachine`] whose `snapshot` waits (10 s at most) while its gate, if any, is closed.
#[derive(Debug, Default)]
pub struct GatedMachine {
    inner: TestMachine,
    gate: Option<Arc<SnapshotGate>>,
}

impl GatedMachine {
    /// An empty machine behind `gate`.
    pub fn new(gate: Option<Arc<SnapshotGate>>) -> Self {
        Self {
            inner: TestMachine::default(),
            gate,
        }
    }
}

impl StateMachine for GatedMachine {
    type Command = TestCommand;
    type Output = u64;
    type Query = TestQuery;
    type Answer = TestAnswer;

    fn apply(&mut self, command: TestCommand) -> u64 {
        self.inner.apply(command)
    }

    fn query(&self, query: &TestQuery) -> TestAnswer {
        self.inner.query(query)
    }

    fn snapshot(&self) -> Vec<u8> {
        if let Some(gate) = &self.gate {
            gate.pass();
        }
        self.inner.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.inner.restore(snapshot)
    }
}

/// Builds and controls a cluster under test.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The log type of one replica.
    type Log: ReplicatedLog<TestMachine>;
    /// Number of replicas.
    fn replicas(&self) -> usize;
    /// The handle to propose and read through replica `i`.
    fn log(&self, i: usize) -> Arc<Self::Log>;
    /// Stops every replica and starts it again from its durable storage. Returns `false` for
    /// memory-only implementations (the durability check is then skipped and says so).
    async fn restart_all(&mut self) -> bool;
}

const WAIT_STEPS: usize = 400;
const WAIT_STEP: Duration = Duration::from_millis(25);

fn rid(client: u64, seq: u64) -> RequestId {
    RequestId { client, seq }
}

async fn history<L: ReplicatedLog<TestMachine>>(log: &L, consistency: ReadConsistency) -> Vec<u64> {
    match log.read(TestQuery::History, consistency).await {
        Ok(TestAnswer::History(h)) => h,
        Ok(other) => panic!("wrong answer {other:?}"),
        Err(e) => panic!("read failed: {e}"),
    }
}

async fn counter<L: ReplicatedLog<TestMachine>>(log: &L) -> u64 {
    match log
        .read(TestQuery::Counter, ReadConsistency::Linearizable)
        .await
    {
        Ok(TestAnswer::Counter(c)) => c,
        Ok(other) => panic!("wrong answer {other:?}"),
        Err(e) => panic!("read failed: {e}"),
    }
}

/// Waits (bounded) until every replica has applied `len` history entries; returns them.
async fn converged<H: Harness>(h: &H, len: usize) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for i in 0..h.replicas() {
        let log = h.log(i);
        let mut last = Vec::new();
        for _ in 0..WAIT_STEPS {
            last = history(&*log, ReadConsistency::Stale).await;
            if last.len() >= len {
                break;
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
        assert_eq!(
            last.len(),
            len,
            "replica {i} did not apply all {len} commands in time"
        );
        out.push(last);
    }
    out
}

/// Total order, agreement, integrity and validity: many concurrent proposals through every
/// replica end in identical histories holding each proposed value exactly once.
pub async fn order_and_agreement<H: Harness>(h: H) {
    let n = h.replicas();
    let per_replica = 40u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        for k in 0..per_replica {
            let log = h.log(i);
            let value = (i as u64) * 1000 + k;
            tasks.push(tokio::spawn(async move {
                log.propose(rid(100 + i as u64, k + 1), TestCommand::Append(value))
                    .await
            }));
        }
    }
    for t in tasks {
        t.await.expect("task").expect("propose");
    }
    let total = n * per_replica as usize;
    let histories = converged(&h, total).await;
    for (i, hist) in histories.iter().enumerate() {
        assert_eq!(hist, &histories[0], "replica {i} applied a different order");
    }
    let unique: BTreeSet<u64> = histories[0].iter().copied().collect();
    assert_eq!(unique.len(), total, "a value was applied twice");
    let proposed: BTreeSet<u64> = (0..n as u64)
        .flat_map(|i| (0..per_replica).map(move |k| i * 1000 + k))
        .collect();
    assert_eq!(
        unique, proposed,
        "a value that was never proposed was applied"
    );
}

/// Exactly-once: the same request id proposed again, through the same or another replica,
/// sequentially or concurrently, returns the first outcome and applies once.
pub async fn exactly_once<H: Harness>(h: H) {
    let n = h.replicas();
    let first = h
        .log(0)
        .propose(rid(7, 1), TestCommand::Incr)
        .await
        .expect("propose");
    for i in 0..n {
        let again = h
            .log(i)
            .propose(rid(7, 1), TestCommand::Incr)
            .await
            .expect("retry");
        assert_eq!(
            again, first,
            "retry through replica {i} gave another outcome"
        );
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        for _ in 0..3 {
            let log = h.log(i);
            tasks.push(tokio::spawn(async move {
                log.propose(rid(7, 2), TestCommand::Incr).await
            }));
        }
    }
    let mut outcomes = BTreeSet::new();
    for t in tasks {
        outcomes.insert(t.await.expect("task").expect("propose"));
    }
    assert_eq!(
        outcomes.len(),
        1,
        "concurrent duplicates gave different outcomes: {outcomes:?}"
    );
    for i in 0..n {
        assert_eq!(
            counter(&*h.log(i)).await,
            2,
            "replica {i}: a duplicate was applied twice"
        );
    }
}

/// Linearizable reads: once a proposal returns, a linearizable read through any replica
/// sees it.
pub async fn linearizable_reads<H: Harness>(h: H) {
    let n = h.replicas();
    for round in 0..10u64 {
        let writer = (round as usize) % n;
        let len = h
            .log(writer)
            .propose(rid(9, round + 1), TestCommand::Append(round))
            .await
            .expect("propose");
        for i in 0..n {
            let hist = history(&*h.log(i), ReadConsistency::Linearizable).await;
            assert!(
                hist.len() as u64 >= len,
                "replica {i} read a stale history after an acknowledged write"
            );
            assert!(
                hist.contains(&round),
                "replica {i} misses acknowledged value {round}"
            );
        }
    }
}

/// Durability: after acknowledged writes, every replica restarts from disk and every
/// acknowledged write is there, in the same order, and nothing else.
pub async fn durability<H: Harness>(mut h: H) {
    let n = h.replicas();
    let mut acked = Vec::new();
    for k in 0..50u64 {
        let log = h.log(k as usize % n);
        log.propose(rid(11, k + 1), TestCommand::Append(5000 + k))
            .await
            .expect("propose");
        acked.push(5000 + k);
    }
    let before = converged(&h, acked.len()).await;
    if !h.restart_all().await {
        eprintln!("durability: memory-only implementation, restart not supported");
        return;
    }
    let after = converged(&h, acked.len()).await;
    assert_eq!(after, before, "restart changed the applied history");
    assert_eq!(
        after[0], acked,
        "acknowledged writes missing or extra after restart"
    );
    // The duplicate table survives too: a retry after restart is not applied again.
    let retried = h
        .log(0)
        .propose(rid(11, 1), TestCommand::Append(5000))
        .await
        .expect("retry");
    assert_eq!(
        retried, 1,
        "retry after restart must return the first outcome"
    );
    let hist = history(&*h.log(0), ReadConsistency::Linearizable).await;
    assert_eq!(
        hist.len(),
        acked.len(),
        "a retry after restart was applied again"
    );
}

/// Generates one `#[tokio::test]` per conformance check, each on a fresh harness from
/// the async function `$make`.
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_order_and_agreement() {
            $crate::conformance::order_and_agreement($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_exactly_once() {
            $crate::conformance::exactly_once($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_linearizable_reads() {
            $crate::conformance::linearizable_reads($make().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_durability() {
            $crate::conformance::durability($make().await).await;
        }
    };
}
