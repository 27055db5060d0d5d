//! Wire messages and durable records of the atomic broadcast.
//!
//! Every [`Message`] starts with a [`Header`] that carries the epoch and the sender's progress
//! metadata; the [`Body`] carries data (Requests and Sequences, originals and retransmissions
//! alike), a retransmit request, a read probe or its reply, a restarted owner's reclaim or its
//! reply, a starting member's history query or its reply, a reformation's messages, the news
//! that asked-for history was collected, or nothing (a progress heartbeat).
//! Messages are encoded with postcard ([`Message::encode`], [`Message::decode`]); decoding
//! malformed bytes is an error, never a panic.

use serde::{Deserialize, Serialize};

use super::epoch::{chain_invalid, Chain, EpochState};

/// A member's id: `0..n`.
pub type MemberId = u64;

/// Identifies one Request message: `<sender id, local seq>`. Local sequence numbers start at 0
/// and increase by one per Request a member issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestKey {
    /// The member that issued the Request.
    pub sender: MemberId,
    /// Its local sequence number at that member.
    pub seq: u64,
}

/// A Request: a batch of opaque client payloads issued by one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMsg {
    /// `<sender, local seq>`.
    pub key: RequestKey,
    /// Member-local proposal number of the first payload; payload `i` is proposal `base + i`.
    /// Lets the issuing member match deliveries to its waiting proposers.
    pub base: u64,
    /// The client payloads, delivered in this order.
    #[serde(with = "crate::byte_strings")]
    pub payloads: Vec<Vec<u8>>,
    /// `Some(from)` marks the first Request of a restarted member (it carries no payloads):
    /// its sender recovered its Requests `..from` from disk, while `from..seq` may have been
    /// sent by the crashed incarnation before they reached its disk, and nobody may hold them.
    /// Once every Request below `from` has a global number, this one may get the next even if
    /// some of `from..seq` have none: those never will (see [`Core`](super::Core)).
    pub restart: Option<u64>,
}

/// A Sequence: global sequence number `number` is assigned to the listed Requests, in order
/// (one number for a batch of Requests). An empty list is a pass: the owner of `number` had
/// nothing to sequence. Sent by member `number mod n` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceMsg {
    /// The global sequence number.
    pub number: u64,
    /// The Requests it orders, in delivery order (per-sender FIFO holds within and across).
    pub assigned: Vec<RequestKey>,
    /// Issued by a restarted owner for the number its crashed incarnation may have sent before
    /// writing it, after every peer answered a [`Body::Reclaim`] that it held no Sequence
    /// there. A peer that answered so refuses a Sequence with this number that is not marked.
    pub reissued: bool,
}

/// Progress metadata piggybacked on every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Header {
    /// The view number. Fixed for now (no view change yet); messages from another epoch are
    /// dropped.
    pub epoch: u64,
    /// The sending member.
    pub from: MemberId,
    /// The sender has Sequences `0..stable` and every Request they name **on disk**.
    pub stable: u64,
    /// The sender has delivered `0..delivered` and has them on disk (`min(delivered, stable)`);
    /// what every member reports delivered is garbage.
    pub delivered: u64,
    /// The sender knows that Sequences `0..known` exist (it has seen them or heard of them).
    pub known: u64,
    /// The sender has issued (and sent) its own Requests with local seq `0..issued`.
    pub issued: u64,
}

/// What a message carries after its header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Requests and Sequences: originals, or answers to a retransmit request.
    Data {
        /// Requests.
        requests: Vec<RequestMsg>,
        /// Sequences.
        sequences: Vec<SequenceMsg>,
    },
    /// Negative acknowledgement: please send these again.
    Retransmit {
        /// Missing Sequence numbers.
        sequences: Vec<u64>,
        /// Missing Requests.
        requests: Vec<RequestKey>,
    },
    /// Nothing but the header (heartbeat, or news that `stable` advanced).
    Progress,
    /// A restarted member asks whether the receiver holds Sequence `number` (the one its
    /// crashed incarnation may have sent before writing it).
    Reclaim {
        /// The Sequence number (owned by the asking member).
        number: u64,
        /// The asking incarnation's nonce, echoed in the answer: an answer made for an
        /// earlier incarnation (which may have reissued the number since) does not count.
        nonce: u32,
    },
    /// Answer to [`Body::Reclaim`]: the Sequence if held. `None` also promises that the
    /// receiver will refuse that number unless it comes [`SequenceMsg::reissued`].
    ReclaimReply {
        /// The Sequence number asked about.
        number: u64,
        /// The nonce of the [`Body::Reclaim`] answered.
        nonce: u32,
        /// The Sequence, if the answering member holds it.
        sequence: Option<SequenceMsg>,
    },
    /// A read barrier asks for the receiver's progress; the answer is the reply's header
    /// (`stable`), taken after the probe arrived.
    ReadProbe {
        /// Probe id, local to the asking member.
        probe: u64,
    },
    /// Answer to [`Body::ReadProbe`].
    ReadProbeReply {
        /// The probe answered.
        probe: u64,
    },
    /// A starting member (fresh or restarted) asks what the receiver knows of its history
    /// (an earlier incarnation's Requests and Sequences), to learn whether its disk lacks
    /// some of it.
    HistoryQuery,
    /// Answer to [`Body::HistoryQuery`]: what the answering member knows of the asker's
    /// history. All `None` and `issued == 0`: nothing.
    HistoryReply {
        /// The asker's `issued`, as its headers last told the answerer.
        issued: u64,
        /// The largest local seq of the asker's Requests the answerer holds or knows were
        /// sequenced.
        request_max: Option<u64>,
        /// The largest Sequence number owned by the asker that the answerer holds, or knows
        /// exists (below its `contiguous`).
        sequence_max: Option<u64>,
    },
    /// A coordinator asks for a promise of `epoch` (a reformation, see
    /// [`epoch`](super::epoch)). The answer carries the Sequences (and their Requests) the
    /// answerer holds from `from` on, as far as a message holds, so that the coordinator can
    /// fetch the history it lacks by asking again.
    Reform {
        /// The epoch to promise.
        epoch: u64,
        /// First Sequence number the coordinator lacks.
        from: u64,
    },
    /// A promise of `epoch`: the answerer's chain and `stable` (in the epoch it is in), and
    /// the history asked for.
    ReformReply {
        /// The epoch promised.
        epoch: u64,
        /// The chain of the epoch the answerer is in.
        chain: Chain,
        /// The answerer's `stable` in that epoch.
        stable: u64,
        /// Sequences from the asked number on (consecutive, as many as fit).
        sequences: Vec<SequenceMsg>,
        /// The Requests they name that the answerer holds.
        requests: Vec<RequestMsg>,
    },
    /// A chain ending in a newer epoch than the receiver's: the coordinator's announcement of
    /// a new epoch, or the answer to a message of an older one.
    NewEpoch {
        /// The chain.
        chain: Chain,
        /// From the coordinator: the new epoch's history from the lowest `stable` among the
        /// promises up to its base, with the Requests it names (so that every member that
        /// installs the epoch has it on disk, not only the coordinator). Empty in an answer to
        /// an older epoch's message.
        sequences: Vec<SequenceMsg>,
        /// The Requests those Sequences name.
        requests: Vec<RequestMsg>,
    },
    /// An excluded member that caught up asks to be readmitted (a reformation without it).
    Rejoin,
    /// Answer to a [`Body::Retransmit`] that asked for history the answerer has collected:
    /// every member of the epoch delivered it, and the asker, which lags behind it, must
    /// be rebuilt from a peer's snapshot and journal instead (see
    /// [`CoreConfig::retain_for_excluded`](super::CoreConfig::retain_for_excluded)).
    Collected {
        /// The answerer holds no Sequence below this number.
        below: u64,
    },
}

/// One wire message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Epoch and progress metadata.
    pub header: Header,
    /// The content.
    pub body: Body,
}

impl Message {
    /// Encodes with postcard.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// Decodes with postcard; malformed input is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// What a member writes to its durable log: every Request and Sequence it receives or issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A Request.
    Request(RequestMsg),
    /// A Sequence.
    Sequence(SequenceMsg),
    /// A promise or a new epoch (see [`epoch`](super::epoch)): Sequences held at or above
    /// `cut` before this record were dropped (a replay drops them too), and `state` is the
    /// member's epoch state from here on.
    Epoch {
        /// Sequences from this number on that precede the record are void
        /// ([`NUMBER_MAX`]: none).
        cut: u64,
        /// The promised epoch and the chain.
        state: EpochState,
    },
}

/// Numbers (sequence numbers, local seqs) at or above this are refused in records read back
/// from disk: no group lives to issue them, and arithmetic on them could overflow.
pub const NUMBER_MAX: u64 = u64::MAX / 4;

impl Record {
    /// Why this record cannot have been written by a member of a group of `members`: a
    /// sender outside `0..members`, or a number beyond [`NUMBER_MAX`]. A journal read back
    /// from disk is checked with it before recovery trusts it (it decoded, but a damaged or
    /// foreign disk can still hold such records).
    pub fn invalid(&self, members: u64) -> Option<String> {
        let key_invalid = |k: &RequestKey| {
            if k.sender >= members {
                Some(format!("names member {} of a group of {members}", k.sender))
            } else if k.seq >= NUMBER_MAX {
                Some(format!("names local seq {} of member {}", k.seq, k.sender))
            } else {
                None
            }
        };
        match self {
            Record::Request(r) => key_invalid(&r.key).or_else(|| {
                (r.base >= NUMBER_MAX || r.restart.is_some_and(|f| f > r.key.seq))
                    .then(|| format!("request {:?} has an impossible base or restart", r.key))
            }),
            Record::Sequence(s) if s.number >= NUMBER_MAX => {
                Some(format!("sequence number {} is out of range", s.number))
            }
            Record::Sequence(s) => s.assigned.iter().find_map(key_invalid),
            Record::Epoch { cut, state } => {
                if *cut > NUMBER_MAX || state.promised >= NUMBER_MAX {
                    Some(format!(
                        "epoch record cut {cut} promised {}",
                        state.promised
                    ))
                } else {
                    chain_invalid(&state.chain, members, 0)
                }
            }
        }
    }
}
