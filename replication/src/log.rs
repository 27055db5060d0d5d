//! The `ReplicatedLog` contract that marketcore is written against.
//!
//! A replicated log accepts commands from any replica, orders them, makes them durable on a
//! majority and applies them to a [`StateMachine`] on every replica. Every implementation
//! (single-node, atomic broadcast, Raft, and the remote client a frontend uses) promises:
//!
//! 1. **Total order, agreement, integrity, validity**: every replica applies the same commands
//!    in the same order, each at most once, and only commands that were proposed.
//! 2. **Durability**: [`ReplicatedLog::propose`] returns only after a majority has the command on
//!    stable storage (fsync'd). Losing any minority, or every node at once followed by a
//!    restart, loses no acknowledged command.
//! 3. **Linearizable reads** by default ([`ReadConsistency::Linearizable`]); cheaper modes are
//!    opt-in and named.
//! 4. **Exactly-once effects**: a command carries a [`RequestId`]; proposing the same id again
//!    returns the first outcome without applying again (see [`crate::dedup`]).
//! 5. **Determinism**: apply sees only the command; see [`crate::state_machine`].

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::state_machine::StateMachine;

/// Identifies one logical request for exactly-once execution: the proposing client (a frontend
/// process, chosen at random at its start) and that client's sequence number. A retry of the
/// same request reuses the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// The proposing client.
    pub client: u64,
    /// Monotonically increasing per client.
    pub seq: u64,
}

/// What is stored in the log: a command and the request it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<C> {
    /// The request this command belongs to.
    pub id: RequestId,
    /// The command itself.
    pub command: C,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// Reflects every command acknowledged before the read started (Raft ReadIndex; the
    /// atomic broadcast read barrier).
    #[default]
    Linearizable,
    /// Raft leader lease read: linearizable while clocks drift less than the lease margin.
    /// Implementations without leases treat it as `Linearizable`.
    Lease,
    /// Whatever this replica has applied; may be behind. Used only where staleness is harmless.
    Stale,
}

/// Errors of a replicated log.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogError {
    /// No quorum could be reached in time. The command may or may not have been applied;
    /// retrying with the same [`RequestId`] is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The log is shutting down.
    #[error("the replicated log is shut down")]
    Shutdown,
    /// The command or query was refused before being replicated (too large, undecodable).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Local storage failed; the node stops rather than diverge.
    #[error("storage: {0}")]
    Storage(String),
}

/// The role a replica plays right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The only node of a single-node log.
    Single,
    /// Raft leader.
    Leader,
    /// Raft follower.
    Follower,
    /// Raft candidate (or pre-candidate).
    Candidate,
    /// An atomic broadcast member.
    Member,
    /// Catching up after a restart.
    Recovering,
    /// A remote client of the log (a frontend).
    Client,
}

/// A snapshot of a replica's progress, for `market status` and /metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStatus {
    /// This replica's id.
    pub node_id: u64,
    /// Its role.
    pub role: Role,
    /// Raft term, or atomic broadcast epoch.
    pub term: u64,
    /// The leader this replica knows of (Raft), if any.
    pub leader: Option<u64>,
    /// Highest log index (Raft) or sequence number (atomic broadcast) known committed/deliverable.
    pub commit_index: u64,
    /// Highest index applied to the state machine.
    pub applied_index: u64,
    /// Implementation-specific counters for monitoring, e.g. `("retransmits_requested", 3)`
    /// or `("snapshots_taken", 2)`; rendered as metrics by the frontends.
    #[serde(default)]
    pub counters: Vec<(String, u64)>,
}

/// A replicated log driving a state machine `S`.
#[async_trait]
pub trait ReplicatedLog<S: StateMachine>: Send + Sync + 'static {
    /// Proposes a command; returns its output once it is committed (durable on a majority) and
    /// applied on this replica. A duplicate `id` returns the first outcome.
    async fn propose(&self, id: RequestId, command: S::Command) -> Result<S::Output, LogError>;

    /// Answers a query with the requested consistency.
    async fn read(
        &self,
        query: S::Query,
        consistency: ReadConsistency,
    ) -> Result<S::Answer, LogError>;

    /// This replica's progress.
    fn status(&self) -> LogStatus;

    /// The leader this replica knows, as [`LogStatus::leader`] gives it, without building
    /// the rest of the status: remote clients get it with every answer. Logs whose status
    /// is costly to build override it.
    fn leader_hint(&self) -> Option<u64> {
        self.status().leader
    }
}

/// Default time a proposal may wait for a quorum before [`LogError::Unavailable`].
pub const DEFAULT_PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
