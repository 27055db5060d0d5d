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
//!
//! # Replicating a state machine of your own
//!
//! Implement [`StateMachine`] (deterministic: no clock, randomness or local configuration
//! in `apply`), then hand it to any log; every log is driven through [`ReplicatedLog`]. A
//! counter on the single-node log:
//!
//! ```
//! use replication::{
//!     ReadConsistency, ReplicatedLog, RequestId, SingleNodeLog, SnapshotError, StateMachine,
//! };
//!
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     type Command = u64; // add this much
//!     type Output = u64; // the total after it
//!     type Query = (); // read the total
//!     type Answer = u64;
//!     fn apply(&mut self, add: u64) -> u64 {
//!         self.0 += add;
//!         self.0
//!     }
//!     fn query(&self, _: &()) -> u64 {
//!         self.0
//!     }
//!     fn snapshot(&self) -> Vec<u8> {
//!         self.0.to_le_bytes().to_vec()
//!     }
//!     fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
//!         let bytes: [u8; 8] = bytes.try_into().map_err(|_| SnapshotError("8 bytes".into()))?;
//!         self.0 = u64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let log = SingleNodeLog::in_memory(Counter::default());
//! let id = RequestId { client: 7, seq: 1 };
//! assert_eq!(log.propose(id, 5).await.unwrap(), 5);
//! // A retry with the same request id takes effect once and gets the first outcome.
//! assert_eq!(log.propose(id, 5).await.unwrap(), 5);
//! assert_eq!(log.read((), ReadConsistency::Linearizable).await.unwrap(), 5);
//! # });
//! ```
//!
//! The same state machine runs replicated on five members with [`abcast::AbcastLog::open`]
//! or [`raft::RaftLog::start`], each member with its own network ([`transport`]'s
//! `QuicNetwork`) and data directory: `examples/replicated_kv.rs` is a whole program (five
//! members over QUIC on loopback, one stopped, nothing lost), run with
//! `cargo run --release -p replication --example replicated_kv -- abcast` (or `raft`).

pub mod abcast;
pub mod byte_strings;
pub mod conformance;
pub mod dedup;
pub mod log;
pub mod raft;
pub mod remote;
pub mod single;
pub mod state_machine;
pub mod stopped;
pub mod storage;

pub use log::{Envelope, LogError, LogStatus, ReadConsistency, ReplicatedLog, RequestId, Role};
pub use single::SingleNodeLog;
pub use state_machine::{Payload, SnapshotError, StateMachine};
pub use stopped::Stopped;
