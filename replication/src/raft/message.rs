//! What Raft nodes send each other over the [`transport::Network`].
//!
//! Every payload is one postcard-encoded [`Wire`] value:
//!
//! * one-way [`Wire::Raft`]: a batch of raft-rs messages (`eraftpb::Message`, each
//!   protobuf-encoded) for one destination, produced by one Ready. Loss, duplication and
//!   reordering are Raft's business: it tolerates them.
//! * RPC [`Wire::ForwardPropose`]: a follower hands a client's proposal (a postcard
//!   `Envelope<Command>`) to the node it believes is the leader. The answer is a
//!   [`ForwardReply`]. The receiver never forwards again (no loops); if it is not the leader it
//!   says so and the caller retries with the same request id (safe: duplicates are
//!   answered from the duplicate table).
//!
//! * one-way [`Wire::StateQuery`] and [`Wire::StateAnswer`]: a node that starts asks its
//!   peers for their term and last log index and for what they saw of it: with an empty
//!   store, to tell a new cluster from one it is rejoining; with a store, to learn whether
//!   the store is older than what it had already done (see "Started with an empty disk" and
//!   "Started from an older copy" in the [module docs](super)). Every node answers, whatever
//!   its own state.
//!
//! Reads need no message of their own: raft-rs carries a follower's ReadIndex request to the
//! leader (`MsgReadIndex` / `MsgReadIndexResp`) inside [`Wire::Raft`].
//!
//! Anything that does not decode is logged and dropped.

use serde::{Deserialize, Serialize};

use crate::log::LogError;

/// Largest number of raft messages in one [`Wire::Raft`] batch.
pub(crate) const RAFT_BATCH_MAX: usize = 4096;
/// A [`Wire::Raft`] batch stops growing at about this many bytes (the QUIC transport's
/// default frame limit is 16 MiB; one larger message, a big snapshot, travels alone).
pub(crate) const RAFT_BATCH_BYTES_MAX: usize = 4 << 20;

/// One network payload between Raft nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Wire {
    /// raft-rs messages, each `protobuf::Message::write_to_bytes` of an `eraftpb::Message`.
    Raft(#[serde(with = "crate::byte_strings")] Vec<Vec<u8>>),
    /// A proposal forwarded to the leader: a postcard `Envelope<S::Command>`.
    ForwardPropose(#[serde(with = "serde_bytes")] Vec<u8>),
    /// "What term are you in, where does your log end, and what have you seen of me?"
    /// (answered with [`Wire::StateAnswer`]).
    StateQuery {
        /// The index of the last entry in the asker's log: a leader that believes the asker
        /// holds more stops believing it.
        last_index: u64,
        /// The asker's current term.
        term: u64,
    },
    /// The answer to [`Wire::StateQuery`].
    StateAnswer(StateAnswer),
}

/// What a node answers a peer that asks for its state ([`Wire::StateQuery`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateAnswer {
    /// The answering node's current term.
    pub(crate) term: u64,
    /// The index of the last entry in the answering node's log (compacted entries included).
    pub(crate) last_index: u64,
    /// The highest term of a message the answering node ever received from the asker (kept
    /// on its disk), pre-votes left out (a node sends a message of a term only once that
    /// term is on its disk; a pre-vote names a term it has not entered). 0 if none.
    pub(crate) seen_term: u64,
    /// If the answering node leads: the highest log index the asker acknowledged to it (the
    /// asker had it on disk then). 0 otherwise.
    pub(crate) matched: u64,
    /// The `last_index` of the query this answers (where the asker's log ended when it
    /// asked): the asker compares `matched` with it, since the leader may bring its log
    /// further before the answer is read.
    pub(crate) asked_last_index: u64,
    /// The `term` of the query this answers (the asker's term when it asked): the asker
    /// compares `seen_term` with it, since it may enter a later term (a peer's message)
    /// before the answer is read.
    pub(crate) asked_term: u64,
    /// The leader the answering node knows (a transport id), if any: the asker's check
    /// waits a while for that one's answer, the only one that holds `matched`.
    pub(crate) leader: Option<u64>,
    /// If the answering node leads: the highest index the asker had acknowledged to it in
    /// its term before a query of the asker (this one or an earlier one) showed its log
    /// ending below that (the leader reset its progress then). 0 if none. The asker compares
    /// it with its log end at its start, so a check whose first answer was lost still
    /// learns it, and a later sound start (its log end past it) is not accused.
    pub(crate) lost: u64,
}

/// The answer to [`Wire::ForwardPropose`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    /// Committed and applied: a postcard `dedup::Applied<S::Output>`.
    Applied(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The receiver is not the leader; its guess (a transport node id), if any.
    NotLeader(Option<u64>),
    /// The proposal may not have been committed (timeout, dropped); retry.
    Retry(String),
    /// Refused or failed for good.
    Failed(LogError),
}
