//! The conformance suite on the single-node log, memory-only and durable.

use std::sync::Arc;

use async_trait::async_trait;
use replication::conformance::{Harness, TestMachine};
use replication::SingleNodeLog;

struct Durable {
    dir: tempfile::TempDir,
    log: Arc<SingleNodeLog<TestMachine>>,
}

#[async_trait]
impl Harness for Durable {
    type Log = SingleNodeLog<TestMachine>;
    fn replicas(&self) -> usize {
        1
    }
    fn log(&self, _i: usize) -> Arc<Self::Log> {
        Arc::clone(&self.log)
    }
    async fn restart_all(&mut self) -> bool {
        // Dropping the last handle joins the writer thread, which releases the engine.
        let placeholder = Arc::new(SingleNodeLog::in_memory(TestMachine::default()));
        let old = std::mem::replace(&mut self.log, placeholder);
        assert_eq!(
            Arc::strong_count(&old),
            1,
            "a handle to the old log is still alive"
        );
        drop(old);
        self.log = Arc::new(
            SingleNodeLog::open_with(self.dir.path(), TestMachine::default(), 16).expect("reopen"),
        );
        true
    }
}

async fn durable() -> Durable {
    let dir = tempfile::tempdir().expect("tempdir");
    // A small snapshot interval so the durability check also exercises snapshot + compaction.
    let log =
        Arc::new(SingleNodeLog::open_with(dir.path(), TestMachine::default(), 16).expect("open"));
    Durable { dir, log }
}

mod durable_log {
    use super::*;
    replication::conformance_suite!(durable);
}

struct Memory(Arc<SingleNodeLog<TestMachine>>);

#[async_trait]
impl Harness for Memory {
    type Log = SingleNodeLog<TestMachine>;
    fn replicas(&self) -> usize {
        1
    }
    fn log(&self, _i: usize) -> Arc<Self::Log> {
        Arc::clone(&self.0)
    }
    async fn restart_all(&mut self) -> bool {
        false
    }
}

async fn memory() -> Memory {
    Memory(Arc::new(SingleNodeLog::in_memory(TestMachine::default())))
}

mod memory_log {
    use super::*;
    replication::conformance_suite!(memory);
}
