//! Replication: the contract between the marketplace domain and the machinery that replicates
//! it, and the implementations of that contract.
//!
//! * [`state_machine`]: the deterministic [`StateMachine`] a log drives.
//! * [`log`]: the [`ReplicatedLog`] trait and its five promises.
//! * [`dedup`]: exactly-once effects for retried requests.
//! * [`single`]: a single-node log (embedded use, tests, `market up --single`).
//! * [`storage`]: raft-engine, the durable store under every log.
//! * [`raft`]: the Raft log (raft-rs over raft-engine).
//! * [`abcast`]: the rotating-sequencer atomic broadcast log.
//! * [`remote`]: the RPC client and server that let frontends use a log in other processes.
//! * [`conformance`]: the suite every implementation passes.

pub mod abcast;
pub mod byte_strings;
pub mod conformance;
pub mod dedup;
pub mod log;
pub mod raft;
pub mod remote;
pub mod single;
pub mod state_machine;
pub mod storage;

pub use log::{Envelope, LogError, LogStatus, ReadConsistency, ReplicatedLog, RequestId, Role};
pub use single::SingleNodeLog;
pub use state_machine::{Payload, SnapshotError, StateMachine};
