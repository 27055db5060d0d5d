//! The deterministic state machine that a replicated log drives.
//!
//! Every replica starts from the same initial state and applies the same commands in the same
//! order, so every replica reaches the same state. That only holds if [`StateMachine::apply`]
//! is a pure function of the state and the command: it never reads a clock, a random source or
//! local configuration. Times, ids, salts and tokens are chosen by the proposer and travel
//! inside the command.

use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// Bounds every payload type of a state machine must satisfy: it crosses the wire and the disk.
pub trait Payload: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static> Payload for T {}

/// A snapshot could not be restored (corrupt or from an incompatible version).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("snapshot cannot be restored: {0}")]
pub struct SnapshotError(pub String);

/// A deterministic state machine: commands change it, queries read it.
pub trait StateMachine: Send + Sync + 'static {
    /// A state-changing command, proposed through the log.
    type Command: Payload;
    /// What applying a command returns to its proposer (domain errors included).
    type Output: Payload;
    /// A read-only question.
    type Query: Payload;
    /// The answer to a query.
    type Answer: Payload;

    /// Applies one committed command. Must be deterministic (see the module docs).
    fn apply(&mut self, command: Self::Command) -> Self::Output;

    /// Answers a query from the current state.
    fn query(&self, query: &Self::Query) -> Self::Answer;

    /// Serializes the whole state. Two replicas with equal states give equal bytes.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with a snapshot made by [`StateMachine::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;
}
