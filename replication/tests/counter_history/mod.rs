//! Client histories over replicated logs of the conformance [`TestMachine`], checked by
//! stateright's linearizability tester: each client picks a replica at random for every
//! operation and either increments the counter or reads it (linearizable read).

use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use replication::conformance::{TestAnswer, TestCommand, TestMachine, TestQuery};
use replication::{ReadConsistency, ReplicatedLog, RequestId};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// The counter as a sequential specification.
#[derive(Clone, Debug, Default)]
pub struct CounterSpec(u64);

/// Its operations.
#[derive(Clone, Debug)]
pub enum CounterOp {
    /// Add one; returns the new value.
    Incr,
    /// Returns the value.
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

/// The counter read from `log` with consistency `c`.
pub async fn counter<L: ReplicatedLog<TestMachine> + ?Sized>(log: &L, c: ReadConsistency) -> u64 {
    match log.read(TestQuery::Counter, c).await.expect("read") {
        TestAnswer::Counter(v) => v,
        other => panic!("wrong answer {other:?}"),
    }
}

/// Runs `clients` concurrent clients of `ops` operations each over `logs` (client `c` draws
/// its choices from seed `seed + c` and proposes as request-id client `client_base + c`) and
/// returns the tester holding the whole history.
pub async fn run_clients<L: ReplicatedLog<TestMachine> + ?Sized + 'static>(
    logs: Vec<Arc<L>>,
    clients: u64,
    ops: u64,
    seed: u64,
    client_base: u64,
) -> LinearizabilityTester<u64, CounterSpec> {
    let tester = Arc::new(Mutex::new(LinearizabilityTester::new(
        CounterSpec::default(),
    )));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let logs = logs.clone();
        let tester = Arc::clone(&tester);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + client);
            for op in 0..ops {
                let log = &logs[rng.gen_range(0..logs.len())];
                let incr = rng.gen_bool(0.5);
                let kind = if incr {
                    CounterOp::Incr
                } else {
                    CounterOp::Read
                };
                tester
                    .lock()
                    .expect("lock")
                    .on_invoke(client, kind)
                    .expect("invoke");
                let v = if incr {
                    let id = RequestId {
                        client: client_base + client,
                        seq: op + 1,
                    };
                    log.propose(id, TestCommand::Incr).await.expect("propose")
                } else {
                    counter(log.as_ref(), ReadConsistency::Linearizable).await
                };
                tester
                    .lock()
                    .expect("lock")
                    .on_return(client, v)
                    .expect("return");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    Arc::try_unwrap(tester)
        .map_err(|_| "clients still hold the tester")
        .expect("tester")
        .into_inner()
        .expect("lock")
}
