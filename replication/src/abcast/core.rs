//! The sans-IO protocol core: a pure state machine, no clock, no sockets, no disk.
//!
//! Inputs: [`Core::handle_message`], [`Core::tick`], [`Core::propose`],
//! [`Core::read_barrier`] and [`Core::persisted`]. Outputs: [`Core::drain`] returns the
//! [`Action`]s to perform, in this contract:
//!
//! 1. Perform the actions that come before the [`Action::Persist`] (if the list holds one):
//!    broadcasts of this member's own Requests whose seqs are under its stored seq lease, and
//!    of at most one own Sequence, which may reach peers before their own persist.
//! 2. Write the persist's records (and its lease, [`PersistAck::lease`], when it grew) durably
//!    in one synced write (group commit), then call [`Core::persisted_then`] with its
//!    [`PersistAck`] and the rest of the list (or [`Core::persisted`], which sends the news
//!    later), before the next [`Core::drain`].
//! 3. Only then perform the other actions, in order: sends, broadcasts, deliveries, read
//!    completions. (Nothing is delivered or reported stable before it is on disk. A restarted
//!    member never reuses a Request seq, because it starts at the stored lease, and never
//!    issues a different Sequence for a number it sent, because it reclaims that number from
//!    every peer first; see the [module docs](super).)
//! 4. Call [`Core::drain`] again until it returns nothing (a persist acknowledgement may make
//!    more progress possible: a progress broadcast, deliveries).
//!
//! See the [module docs](super) for the protocol itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::epoch::{chain_invalid, cut_point, epoch_of, Chain, Cut, EpochState};
use super::message::{
    Body, Header, MemberId, Message, Record, RequestKey, RequestMsg, SequenceMsg, NUMBER_MAX,
};

/// Limits and timers of one member. Every member of a group must use the same `members` and
/// `epoch`; the rest may differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// This member's id, `0..members`.
    pub id: MemberId,
    /// Group size `n`.
    pub members: u64,
    /// The group's first epoch (later ones come from reformations, see
    /// [`epoch`](super::epoch)).
    pub epoch: u64,
    /// Client payloads per Request (batching).
    pub request_payloads_max: usize,
    /// Bytes of payload per Request (a single larger payload is refused by `propose`).
    pub request_bytes_max: usize,
    /// Own Requests issued but not yet sequenced (pipelining bound, then backpressure).
    pub requests_in_flight_max: u64,
    /// Requests of one sender accepted beyond its sequenced prefix (receive buffer bound).
    /// Half of it is the seq lease step (see [`PersistAck::lease`]).
    pub request_window: u64,
    /// Requests assigned by one Sequence.
    pub sequence_requests_max: usize,
    /// Sequence numbers assigned beyond what this member has delivered (pipelining bound);
    /// Sequences up to twice this far ahead are buffered, later ones dropped (and re-asked).
    pub sequence_window: u64,
    /// Payloads waiting to be issued before `propose` says busy (backpressure).
    pub outbox_max: usize,
    /// Grace before a gap is asked for, and interval between retransmit requests.
    pub retransmit_after_ms: u64,
    /// A member that sent nothing for this long broadcasts its progress.
    pub heartbeat_ms: u64,
    /// When `stable` advances, the proposers of the newly stable Requests are told at once
    /// (they are the ones waiting to deliver); everyone else learns it from this member's next
    /// broadcast, or from a Progress broadcast once the news is this old. Default 20: nobody
    /// else waits for it (a read barrier takes `stable` from its probe answers), and at 2 ms
    /// a lightly loaded group sent a Progress broadcast from every member after nearly every
    /// write (1+1 scenario: a quarter of the customer database's datagrams).
    pub progress_spread_ms: u64,
    /// An owner with nothing to sequence passes at once after progress; a further pass waits
    /// this long (no busy spin around an idle ring).
    pub pass_retry_ms: u64,
    /// Items per retransmit request and per answer.
    pub retransmit_items_max: usize,
    /// Open read probes kept (the oldest is dropped beyond; its readers time out).
    pub probes_max: usize,
    /// Peers a read probe asks beyond the majority's worth: the barrier then waits for the
    /// fastest answers rather than for every peer asked (one spare: reads 0.07-0.09 ms
    /// instead of 0.10 in the log benchmark).
    pub read_probe_spare: usize,
    /// Approximate bytes per Data message: more Requests are split over several messages
    /// (keep it below the transport's frame limit; a single Request may reach
    /// `request_bytes_max` plus overhead).
    pub message_bytes_max: usize,
    /// A member suspects the owner of the turn the ring has waited at for this long while
    /// something is pending, and the group reforms without it (see [`epoch`](super::epoch)).
    /// 0: never by time (only [`Core::suspect`]).
    pub reform_after_ms: u64,
    /// How many Sequence numbers members keep for an excluded member beyond what the members
    /// of the epoch have all delivered. Garbage collection waits for an excluded member
    /// that lags by less (it catches up by retransmission when it is back); one that lags by
    /// more is collected past and, back, is rebuilt from a peer's snapshot and journal
    /// ([`Core::behind`]). Bounds the memory and journal a member that is down for good
    /// costs its peers.
    pub retain_for_excluded: u64,
    /// The same bound in bytes: once the Requests a member holds (delivered or not, about
    /// their encoded size) exceed this, it keeps nothing more for excluded members, however
    /// few numbers they lag by. Numbers alone would hold however much the Sequences name:
    /// with large payloads, gigabytes.
    pub retain_for_excluded_bytes: usize,
}

impl CoreConfig {
    /// Defaults for member `id` of a group of `members`.
    pub fn new(id: MemberId, members: u64) -> Self {
        Self {
            id,
            members,
            epoch: 0,
            request_payloads_max: 1024,
            request_bytes_max: 1 << 20,
            requests_in_flight_max: 64,
            request_window: 1024,
            sequence_requests_max: 1024,
            sequence_window: 256,
            outbox_max: 65_536,
            retransmit_after_ms: 20,
            heartbeat_ms: 50,
            progress_spread_ms: 20,
            pass_retry_ms: 10,
            retransmit_items_max: 64,
            probes_max: 1024,
            read_probe_spare: 1,
            message_bytes_max: 4 << 20,
            reform_after_ms: 0,
            retain_for_excluded: 4_096,
            retain_for_excluded_bytes: 64 << 20,
        }
    }

    fn majority(&self) -> usize {
        (self.members as usize) / 2 + 1
    }
}

/// Token returned with a [`Action::Persist`]; hand it back to [`Core::persisted`] once the
/// records are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistAck {
    /// Sequences `0..stable` and their Requests are durable once this batch is.
    pub stable: u64,
    /// This member's seq lease: the runtime stores it durably in the same write (when it grew)
    /// and hands the largest stored value to [`Core::recover_from`] after a restart. The member
    /// sends its own Requests with seqs below the stored lease before they are on its disk.
    pub lease: u64,
    /// The epoch this member promised when the persist was handed out (its
    /// [`Record::Epoch`] is in this or an earlier persist): answers to the coordinator wait
    /// for it to be durable.
    pub promised: u64,
    /// Cuts of the history before the persist was handed out: a persist from before a cut
    /// counted Sequences the cut dropped in its `stable`, so that part of it is ignored.
    pub generation: u64,
}

impl PersistAck {
    /// One acknowledgement for this persist and a `later` one written with it (a runtime
    /// that merges queued writes).
    pub fn merge(self, later: PersistAck) -> PersistAck {
        PersistAck {
            stable: if later.generation > self.generation {
                later.stable
            } else {
                self.stable.max(later.stable)
            },
            lease: self.lease.max(later.lease),
            promised: self.promised.max(later.promised),
            generation: self.generation.max(later.generation),
        }
    }
}

/// Approximate encoded size of a Request.
fn approx_size(r: &RequestMsg) -> usize {
    32 + r.payloads.iter().map(|p| p.len() + 4).sum::<usize>()
}

/// Splits Requests into groups of at most about `bytes_max` (each group holds at least one).
fn split_by_size(requests: Vec<RequestMsg>, bytes_max: usize) -> Vec<Vec<RequestMsg>> {
    let mut out = vec![Vec::new()];
    let mut bytes = 0;
    for r in requests {
        let size = approx_size(&r);
        if bytes + size > bytes_max && out.last().is_some_and(|g| !g.is_empty()) {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(g) = out.last_mut() {
            g.push(r);
        }
    }
    out
}

/// Where a state snapshot stands in the broadcast: what [`Core::recover_from`] needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotBase {
    /// Sequences `0..delivered` are reflected in the snapshot.
    pub delivered: u64,
    /// Per sender: its Requests `0..prefix` are reflected in the snapshot.
    pub prefixes: Vec<u64>,
    /// This member's next proposal number.
    pub next_proposal: u64,
}

/// How to rebuild a member whose disk was lost: see [`Core::rebuild_plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildPlan {
    /// The seq lease to store: above every Request id an earlier incarnation can have used.
    pub lease: u64,
    /// Own Sequence numbers below this were issued by an earlier incarnation (store it and
    /// hand it to [`Core::with_sequence_floor`] on every start).
    pub sequence_floor: u64,
    /// Peers to copy the snapshot and journal from, the most advanced first.
    pub donors: Vec<MemberId>,
}

/// One delivered client payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The global sequence number that ordered it.
    pub number: u64,
    /// The Request that carried it.
    pub key: RequestKey,
    /// Member-local proposal number at the issuing member (`key.sender`).
    pub proposal: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What the runtime must do; see the [module docs](self) for the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these records durably (one synced write), then call [`Core::persisted`].
    Persist {
        /// Requests and Sequences received or issued since the last persist.
        records: Vec<Record>,
        /// Hand back once durable.
        ack: PersistAck,
    },
    /// Send one message to one member.
    Send {
        /// Destination.
        to: MemberId,
        /// The message.
        message: Message,
    },
    /// Send one message to every other member.
    Broadcast(Message),
    /// Apply a payload (in the order given).
    Deliver(Delivery),
    /// The read barrier with this token is satisfied: read locally now.
    ReadReady {
        /// The token given to [`Core::read_barrier`].
        token: u64,
    },
}

/// `propose` refused a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// The outbox is full: wait for progress (backpressure).
    #[error("busy: too many proposals waiting")]
    Busy,
    /// Larger than `request_bytes_max`.
    #[error("payload too large")]
    TooLarge,
}

/// Counters of one member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Requests this member issued.
    pub requests_issued: u64,
    /// Sequences this member issued (passes included).
    pub sequences_issued: u64,
    /// Empty Sequences (passed turns).
    pub passes: u64,
    /// Items this member asked to be retransmitted.
    pub retransmits_requested: u64,
    /// Items this member retransmitted for others.
    pub retransmits_served: u64,
    /// Duplicate Requests or Sequences ignored.
    pub duplicates: u64,
    /// Messages dropped: other epoch, bad sender, outside a window, malformed.
    pub dropped: u64,
    /// Protocol invariant violations seen (should stay 0).
    pub anomalies: u64,
    /// Seqs skipped by restart Requests: Requests of crashed incarnations that never got a
    /// global number (see [`RequestMsg::restart`]).
    pub requests_voided: u64,
    /// Epochs installed (reformations this member went through).
    pub epochs_installed: u64,
}

#[derive(Debug, Default)]
struct SenderState {
    /// Requests held (not yet garbage).
    received: BTreeMap<u64, RequestMsg>,
    /// Local seqs `0..sequenced` have a global number (per-sender FIFO makes it a prefix).
    sequenced: u64,
    /// Local seqs `0..delivered` delivered here.
    delivered: u64,
    /// Local seqs below are garbage (delivered everywhere) and dropped.
    gc: u64,
    /// The sender says it issued `0..issued` (metadata).
    issued: u64,
    /// Held Requests not written yet: a Request is written with the first persist that
    /// claims a Sequence naming it (see `Core::drain`).
    unwritten: BTreeSet<u64>,
    /// About the encoded size of the Requests in `received`.
    bytes: usize,
}

impl SenderState {
    /// Holds a Request (replacing one under the same seq, if any).
    fn hold(&mut self, r: RequestMsg) {
        self.bytes += approx_size(&r);
        if let Some(old) = self.received.insert(r.key.seq, r) {
            self.bytes -= approx_size(&old);
        }
    }

    /// Drops the held Requests below `seq`.
    fn drop_below(&mut self, seq: u64) {
        while let Some(entry) = self.received.first_entry() {
            if *entry.key() >= seq {
                break;
            }
            self.bytes -= approx_size(&entry.remove());
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Peer {
    stable: u64,
    delivered: u64,
    known: u64,
    /// When this member last heard from the peer.
    heard_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Missing {
    first_seen_ms: u64,
    last_nack_ms: Option<u64>,
    attempts: u64,
}

/// A restarted member's question to every peer about the one Sequence its crashed
/// incarnation may have sent before writing it.
#[derive(Debug)]
struct Reclaim {
    number: u64,
    answered: BTreeSet<MemberId>,
    last_ask_ms: Option<u64>,
}

/// A coordinator's reformation in progress (see [`epoch`](super::epoch)).
#[derive(Debug)]
struct Reformation {
    /// The epoch it started.
    epoch: u64,
    /// Members to exclude (suspected) and to readmit, applied to the chosen lineage's set.
    exclude: BTreeSet<MemberId>,
    readmit: BTreeSet<MemberId>,
    /// The members the new epoch excludes (known once decided).
    excluded: Vec<MemberId>,
    /// Promises: each member's chain and `stable`.
    replies: BTreeMap<MemberId, (Chain, u64)>,
    /// Once a majority promised: the chosen lineage, the new epoch's base, and the lowest
    /// `stable` among the promises of that lineage (the history from there to the base goes
    /// with the announcement of the new epoch).
    decided: Option<(Chain, u64, u64)>,
    /// When the coordinator last asked.
    asked_ms: Option<u64>,
    /// When it started (a reformation that gets no majority is given up).
    started_ms: u64,
}

#[derive(Debug)]
struct Probe {
    tokens: Vec<u64>,
    replies: BTreeMap<MemberId, u64>,
    sent_ms: u64,
    target: Option<u64>,
}

/// The atomic broadcast protocol state of one member.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    now_ms: u64,
    senders: Vec<SenderState>,
    /// Sequences held (not yet garbage), by number.
    sequences: BTreeMap<u64, SequenceMsg>,
    /// Sequences `0..contiguous` are held (or garbage).
    contiguous: u64,
    /// Sequences `0..complete` and every Request they name are held.
    complete: u64,
    /// Sequences `0..delivered` delivered.
    delivered: u64,
    /// Sequences below are garbage.
    gc: u64,
    /// Sequences `0..stable` and their Requests are on this member's disk.
    stable: u64,
    /// Mark of the last persist handed out.
    persist_mark: u64,
    /// Sequences `0..known` exist.
    known: u64,
    peers: Vec<Peer>,
    next_local_seq: u64,
    next_proposal: u64,
    outbox: VecDeque<Vec<u8>>,
    progress_since_pass: bool,
    last_pass_ms: Option<u64>,
    out_requests: Vec<RequestMsg>,
    out_sequences: Vec<SequenceMsg>,
    to_persist: Vec<Record>,
    actions: Vec<Action>,
    progress_due: bool,
    last_broadcast_ms: u64,
    /// Own Requests may use seqs below this once the persist carrying it is durable.
    lease_issued: u64,
    /// The lease on disk: own Requests below it are sent before their own persist.
    lease_durable: u64,
    /// The lease last handed to a persist.
    lease_handed: u64,
    /// The number of the own Sequence issued last, and of the one issued before it. An own
    /// Sequence may go out before its persist only if the one before it is on disk
    /// (`stable` is past it): then at most one own Sequence is ever out but unwritten, the
    /// one number a restart reclaims, even when drains run while earlier persists are still
    /// being written.
    own_last: Option<u64>,
    own_prev: Option<u64>,
    /// Restarted: the own Sequence number being reclaimed from every peer.
    reclaim: Option<Reclaim>,
    /// Restarted in an epoch that excludes someone: the number it would reclaim cannot be
    /// asked of every member (an excluded one may be alive and hold it), so it sequences
    /// nothing until an epoch newer than this one is installed (whose cut settles that
    /// number for everyone); it asks the coordinator for one.
    awaiting_epoch: Option<u64>,
    /// The floor of the number to reclaim (the snapshot's base), for a recomputation.
    reclaim_floor: u64,
    /// A member asked for a new epoch (see `awaiting_epoch`): start one even if the
    /// excluded set stays as it is.
    force_reform: bool,
    /// Every peer said it holds no Sequence at this own number: issue it, marked reissued,
    /// even while recovering.
    reissue: Option<u64>,
    /// Numbers this member promised a restarted owner to refuse unless reissued.
    refused: BTreeSet<u64>,
    /// Since when `stable` is ahead of what this member last broadcast.
    unspread_since_ms: Option<u64>,
    /// Peers to tell at once that `stable` advanced: proposers of newly stable Requests.
    news_for: BTreeSet<MemberId>,
    missing_sequences: BTreeMap<u64, Missing>,
    missing_requests: BTreeMap<RequestKey, Missing>,
    pending_reads: Vec<u64>,
    probes: BTreeMap<u64, Probe>,
    /// The next read probe's id: the incarnation's nonce in the high 32 bits, a count in
    /// the low ones.
    next_probe: u64,
    /// This incarnation's nonce ([`Core::with_incarnation_nonce`]).
    nonce: u32,
    recovering: bool,
    /// Started with nothing on disk (a new member, or one whose data directory was emptied).
    fresh: bool,
    /// A restarted member's check of those answers: own Requests at or above this seq (its
    /// stored lease) were never sent by an incarnation that wrote this disk. `None`: no
    /// lease on disk (nothing to compare with).
    lease_bound: Option<u64>,
    /// A restarted member's check: the largest own Sequence number an incarnation that wrote
    /// this disk can have issued (the number it reclaims).
    own_bound: u64,
    /// A restarted member's restart Request (`Some(first seq it did not recover)`), issued
    /// once the history check has passed: before, the disk may be an older copy whose lease
    /// an earlier incarnation already used.
    restart_from: Option<u64>,
    /// The peers' answers to the history query ([`Body::HistoryReply`]: `issued`,
    /// `request_max`, `sequence_max`). At every start, fresh or restarted, a member issues
    /// nothing until every peer answered (any of them may hold an earlier incarnation's
    /// Requests or Sequences); see [`Core::disk_lost`].
    history: BTreeMap<MemberId, (u64, Option<u64>, Option<u64>)>,
    /// When the history query last went out.
    history_asked_ms: Option<u64>,
    /// Every member of the epoch answered the history query (and the disk was not found
    /// lost): the check is over.
    history_done: bool,
    /// The member learned that an earlier incarnation of it sent Requests or issued
    /// Sequences that its disk lacks (emptied, or an older copy). It acts no more; once
    /// every peer answered its history query it can be rebuilt ([`Core::rebuild_plan`]).
    disk_lost: bool,
    /// Own Sequence numbers below this were issued by an earlier incarnation whose disk was
    /// lost: they are taken from peers, never issued afresh (see [`Core::with_sequence_floor`]).
    sequence_floor: u64,
    /// A peer answered a retransmit request with [`Body::Collected`]: history this member
    /// still needs is gone from the members of the epoch (it lagged by more than
    /// [`CoreConfig::retain_for_excluded`] while excluded). It acts no more and is rebuilt
    /// from an image ([`Core::rebuild_plan`]).
    behind: bool,
    catch_up_target: Option<u64>,
    heard: BTreeSet<MemberId>,
    /// Recovered from a snapshot at `(delivered, per-sender prefixes)`: Requests below the
    /// prefixes whose Sequences were compacted away are trimmed once `gc` passes the base.
    base_prefixes: Option<(u64, Vec<u64>)>,
    stats: CoreStats,
    /// The highest epoch promised (see [`epoch`](super::epoch)); above the chain's epoch
    /// while a reformation is under way: the member then sends nothing of its epoch.
    promised: u64,
    /// The promise on disk: promises are answered only then.
    promised_durable: u64,
    /// This member's `stable` when it promised: while the promise is pending, its own later
    /// progress (persists still landing) does not count towards its deliveries, since its
    /// answer may not include it.
    promise_stable: u64,
    /// The reformations this member's history went through.
    chain: Chain,
    /// Cuts of the history so far (see [`PersistAck::generation`]).
    generation: u64,
    /// The generation of the last durable persist: an own Sequence goes out before its
    /// persist only once the epoch it belongs to is on disk (so a restart that does not know
    /// the epoch never has to reclaim a number of it).
    generation_durable: u64,
    /// Members suspected down: the ring waited at their turn (forgotten once it moves), or
    /// the runtime saw them die ([`Core::suspect`]: kept until an epoch is installed; a
    /// message of theirs still in flight proves nothing).
    suspected: BTreeSet<MemberId>,
    down: BTreeSet<MemberId>,
    /// Excluded members that asked to be readmitted.
    readmit: BTreeSet<MemberId>,
    /// The ring's position and since when it has not moved.
    stall: (u64, u64),
    /// This member's reformation, as coordinator.
    reform: Option<Reformation>,
    /// Promises to answer once durable: (coordinator, epoch, first number it lacks).
    promise_replies: Vec<(MemberId, u64, u64)>,
    /// When this member last sent each peer its chain (answer to an older epoch's message).
    hinted_ms: Vec<Option<u64>>,
    /// When this member last promised, installed, asked to rejoin or announced its promise.
    epoch_event_ms: u64,
    /// When it last asked to be readmitted, or said it waits for a new epoch.
    epoch_ask_ms: Option<u64>,
}

impl Core {
    /// A fresh member with an empty log.
    pub fn new(cfg: CoreConfig) -> Self {
        assert!(cfg.members >= 1, "a group has at least one member");
        assert!(cfg.id < cfg.members, "member id out of range");
        let n = cfg.members as usize;
        let mut core = Self {
            now_ms: 0,
            senders: (0..n).map(|_| SenderState::default()).collect(),
            sequences: BTreeMap::new(),
            contiguous: 0,
            complete: 0,
            delivered: 0,
            gc: 0,
            stable: 0,
            persist_mark: 0,
            known: 0,
            peers: vec![Peer::default(); n],
            next_local_seq: 0,
            next_proposal: 0,
            outbox: VecDeque::new(),
            progress_since_pass: true,
            last_pass_ms: None,
            out_requests: Vec::new(),
            out_sequences: Vec::new(),
            to_persist: Vec::new(),
            actions: Vec::new(),
            progress_due: false,
            last_broadcast_ms: 0,
            unspread_since_ms: None,
            lease_issued: 0,
            lease_durable: 0,
            lease_handed: 0,
            own_last: None,
            own_prev: None,
            reclaim: None,
            awaiting_epoch: None,
            reclaim_floor: 0,
            force_reform: false,
            reissue: None,
            refused: BTreeSet::new(),
            news_for: BTreeSet::new(),
            missing_sequences: BTreeMap::new(),
            missing_requests: BTreeMap::new(),
            pending_reads: Vec::new(),
            probes: BTreeMap::new(),
            next_probe: 0,
            nonce: 0,
            recovering: false,
            fresh: true,
            lease_bound: None,
            own_bound: 0,
            restart_from: None,
            history: BTreeMap::new(),
            history_asked_ms: None,
            history_done: false,
            disk_lost: false,
            behind: false,
            sequence_floor: 0,
            catch_up_target: None,
            heard: BTreeSet::new(),
            base_prefixes: None,
            stats: CoreStats::default(),
            promised: cfg.epoch,
            promised_durable: cfg.epoch,
            promise_stable: 0,
            chain: Vec::new(),
            generation: 0,
            generation_durable: 0,
            suspected: BTreeSet::new(),
            down: BTreeSet::new(),
            readmit: BTreeSet::new(),
            stall: (0, 0),
            reform: None,
            promise_replies: Vec::new(),
            hinted_ms: vec![None; n],
            epoch_event_ms: 0,
            epoch_ask_ms: None,
            cfg,
        };
        // The first write carries a lease: nothing of this member goes out before something
        // of it is on disk, so a restart is always told from a first start (see `drain`).
        core.lease_issued = core.lease_step();
        core
    }

    /// A member restarted from the records it had persisted and the largest seq lease it had
    /// stored ([`PersistAck::lease`]). Everything recovered is stable (it came from disk). The
    /// member is [`Core::recovering`] until it has heard from a majority and delivered
    /// everything they knew of; until then it does not sequence.
    ///
    /// If the lease is beyond its recovered Requests, the crashed incarnation may have sent
    /// Requests that never reached its disk: the member issues a restart Request at the lease
    /// ([`RequestMsg::restart`]), never reusing a seq it may have sent, and its proposal
    /// numbers skip every number those Requests could have carried.
    pub fn recover(cfg: CoreConfig, lease: u64, records: impl IntoIterator<Item = Record>) -> Self {
        Self::recover_from(cfg, None, lease, records)
    }

    /// Like [`Core::recover`], from a state snapshot taken when Sequences `0..base.delivered`
    /// had been delivered: delivery resumes at `base.delivered`. Records below the base may be
    /// present (the journal is compacted lazily); they are kept only to answer retransmit
    /// requests of lagging members, and collected like any other garbage.
    pub fn recover_from(
        cfg: CoreConfig,
        base: Option<SnapshotBase>,
        lease: u64,
        records: impl IntoIterator<Item = Record>,
    ) -> Self {
        let mut core = Self::new(cfg);
        let mut any = lease > 0;
        if let Some(b) = &base {
            if b.prefixes.len() == core.senders.len()
                && b.delivered < NUMBER_MAX
                && b.prefixes.iter().all(|p| *p < NUMBER_MAX)
            {
                any = true;
                core.contiguous = b.delivered;
                core.complete = b.delivered;
                core.delivered = b.delivered;
                core.known = b.delivered;
                for (st, p) in core.senders.iter_mut().zip(&b.prefixes) {
                    st.sequenced = *p;
                    st.delivered = *p;
                }
                let own = b.prefixes[core.cfg.id as usize];
                core.next_local_seq = own;
                core.next_proposal = b.next_proposal;
                core.base_prefixes = Some((b.delivered, b.prefixes.clone()));
            } else {
                core.stats.anomalies += 1;
            }
        }
        for record in records {
            any = true;
            if record.invalid(core.cfg.members).is_some() {
                // The runtime refuses such a journal; a direct caller's is skipped, not trusted.
                core.stats.anomalies += 1;
                continue;
            }
            match record {
                Record::Request(r) => {
                    let s = r.key.sender;
                    if s == core.cfg.id {
                        core.next_local_seq = core.next_local_seq.max(r.key.seq + 1);
                        core.next_proposal =
                            core.next_proposal.max(r.base + r.payloads.len() as u64);
                    }
                    core.senders[s as usize].hold(r);
                }
                Record::Sequence(s) => {
                    core.known = core.known.max(s.number + 1);
                    core.sequences.insert(s.number, s);
                }
                Record::Epoch { cut, state } => {
                    // A reformation dropped what this member held from `cut` on.
                    core.sequences.retain(|k, _| *k < cut);
                    core.known = core
                        .known
                        .min(cut)
                        .max(state.chain.last().map_or(0, |c| c.base));
                    core.promised = core.promised.max(state.promised);
                    core.chain = state.chain;
                }
            }
        }
        core.promised_durable = core.promised;
        core.gc = core
            .sequences
            .keys()
            .next()
            .copied()
            .unwrap_or(core.delivered)
            .min(core.delivered);
        core.advance();
        core.stable = core.complete;
        core.persist_mark = core.complete;
        core.recovering = any && core.cfg.members > 1;
        core.fresh = !any;
        if any {
            core.lease_issued = lease;
            core.lease_durable = lease;
            core.lease_handed = lease;
        }
        if core.recovering {
            core.lease_bound = (lease > 0).then(|| lease.max(core.next_local_seq));
            core.start_reclaim(base.as_ref().map_or(0, |b| b.delivered));
        }
        if lease > core.next_local_seq {
            let recovered = core.next_local_seq;
            let unknown = lease - recovered;
            core.next_proposal = core.next_proposal.saturating_add(
                unknown.saturating_mul(core.cfg.request_payloads_max.max(1) as u64),
            );
            core.next_local_seq = lease;
            // Issued once every peer has answered the history query (`flush_outbox`).
            core.restart_from = Some(recovered);
        }
        if any && lease == 0 {
            // Recovered records but no lease (written by an older build, or by a member that
            // never proposed): the next write carries one, so early sends resume after it.
            core.lease_issued = core.next_local_seq + core.lease_step();
        }
        core
    }

    /// Own Sequences are written in order and at most one goes out unwritten, so the only
    /// number a crashed incarnation may have sent without writing is its first own number
    /// above everything it wrote (and above `floor`): a restarted member asks every peer
    /// about it before it sequences ([`Body::Reclaim`]). None if this member has no turns
    /// (excluded from its epoch).
    fn start_reclaim(&mut self, floor: u64) {
        let id = self.cfg.id;
        let above = self
            .sequences
            .keys()
            .rev()
            .find(|k| self.owner(**k) == Some(id))
            .map_or(0, |h| h + 1)
            .max(floor);
        let n = self.cfg.members;
        // Whatever the epoch: no incarnation that wrote this disk issued an own number beyond
        // this one (the history check, `history_gap`).
        self.own_bound = self.own_bound.max(above + (id + n - above % n) % n);
        self.reclaim_floor = floor;
        self.reclaim = self.own_turn_from(above).map(|number| {
            self.own_bound = self.own_bound.max(number);
            Reclaim {
                number,
                answered: BTreeSet::new(),
                last_ask_ms: None,
            }
        });
        self.awaiting_epoch = None;
        if self.reclaim.is_some() && !self.excluded().is_empty() {
            self.reclaim = None;
            self.awaiting_epoch = Some(self.epoch());
        }
    }

    /// This member's first turn at or above `at` in its epoch (never below the epoch's base:
    /// that history is agreed, and fetched rather than issued). None if it has no turns.
    fn own_turn_from(&self, at: u64) -> Option<u64> {
        let n = self.cfg.members;
        let at = at.max(self.base());
        let first = at + (self.cfg.id + n - at % n) % n;
        (self.owner(first) == Some(self.cfg.id)).then_some(first)
    }

    /// One line on this member's epochs and reformations (chain, promise, suspects,
    /// reformation under way, pending reclaim), for logs and test failure messages.
    pub fn describe_epoch(&self) -> String {
        format!(
            "chain={:?} promised={} durable={} history={:?} disk_lost={} behind={} suspected={:?} \
             down={:?} readmit={:?} reform={:?} reclaim={:?} awaiting={:?}",
            self.chain,
            self.promised,
            self.promised_durable,
            self.history.keys().collect::<Vec<_>>(),
            self.disk_lost,
            self.behind,
            self.suspected,
            self.down,
            self.readmit,
            self.reform.as_ref().map(|r| (r.epoch, r.decided.clone())),
            self.reclaim.as_ref().map(|r| r.number),
            self.awaiting_epoch,
        )
    }

    /// The highest epoch this member promised (above [`Core::epoch`] while a reformation it
    /// answered is under way).
    pub fn promised(&self) -> u64 {
        self.promised
    }

    /// The epoch this member is in.
    pub fn epoch(&self) -> u64 {
        epoch_of(&self.chain, self.cfg.epoch)
    }

    /// What this member stores about epochs (the runtime keeps it beside the lease and hands
    /// it back to [`Core::with_epoch_state`] after a restart).
    pub fn epoch_state(&self) -> EpochState {
        EpochState {
            promised: self.promised,
            chain: self.chain.clone(),
        }
    }

    /// Sets this incarnation's nonce. A peer's answer to a question of an earlier
    /// incarnation of this member can arrive after a restart, or after a rebuild that
    /// replaced the core in the same process over the same connections. Read probe ids are
    /// `nonce << 32` plus a count: an answer to an earlier probe with the same id would
    /// report a peer's progress from before the new read was issued, and the read could miss
    /// a write acknowledged in between (found by the simulator). A reclaim's answers echo
    /// it: an earlier answer "not held" may predate the earlier incarnation's reissue of
    /// that very number. The runtime gives every core a random nonce; the simulator a
    /// per-incarnation one.
    pub fn with_incarnation_nonce(mut self, nonce: u32) -> Self {
        self.nonce = nonce;
        self.next_probe = u64::from(nonce) << 32;
        self
    }

    /// Restores the epoch state stored beside the journal (journal compaction may have
    /// dropped the [`Record::Epoch`] that carried it; the cuts it made are in the past of
    /// whatever the journal still holds). A state older than the journal's is ignored.
    pub fn with_epoch_state(mut self, state: EpochState) -> Self {
        if chain_invalid(&state.chain, self.cfg.members, self.cfg.epoch).is_some() {
            self.stats.anomalies += 1;
            return self;
        }
        self.promised = self.promised.max(state.promised);
        self.promised_durable = self.promised;
        if epoch_of(&state.chain, self.cfg.epoch) > self.epoch() {
            let base = state.chain.last().map_or(0, |c| c.base);
            self.chain = state.chain;
            self.known = self.known.max(base);
            if self.reclaim.is_some() || self.awaiting_epoch.is_some() {
                let floor = self.reclaim.as_ref().map_or(0, |r| r.number);
                self.start_reclaim(floor.max(self.reclaim_floor));
            }
            self.advance();
        }
        self
    }

    /// The base of this member's epoch: Sequences below it are agreed history.
    fn base(&self) -> u64 {
        self.chain.last().map_or(0, |c| c.base)
    }

    /// Members excluded from this member's epoch: their turns are passes nobody sends
    /// (see [`epoch`](super::epoch)).
    pub fn excluded(&self) -> &[MemberId] {
        self.chain.last().map_or(&[], |c| c.excluded.as_slice())
    }

    /// The member that issues Sequence `k` (`k mod n`), or None if its turn is a pass
    /// nobody sends (it was excluded from the epoch that covers `k`).
    fn owner(&self, k: u64) -> Option<MemberId> {
        let o = k % self.cfg.members;
        match self.chain.iter().rev().find(|c| c.base <= k) {
            Some(c) if c.excluded.contains(&o) => None,
            _ => Some(o),
        }
    }

    /// The other members of this member's epoch (not excluded).
    fn view_peers(&self) -> Vec<MemberId> {
        let ex = self.excluded();
        (0..self.cfg.members)
            .filter(|p| *p != self.cfg.id && !ex.contains(p))
            .collect()
    }

    /// The largest Sequence number below `upper` whose turn is `member`'s.
    fn last_turn_below(&self, member: MemberId, upper: u64) -> Option<u64> {
        let n = self.cfg.members;
        let mut upper = upper;
        for (i, c) in self.chain.iter().enumerate().rev() {
            if upper <= c.base {
                continue;
            }
            let top = upper - 1;
            if top >= member && !c.excluded.contains(&member) {
                let k = top - (top + n - member) % n;
                if k >= c.base && k >= member {
                    return Some(k);
                }
            }
            upper = c.base;
            if i == 0 && upper == 0 {
                return None;
            }
        }
        let top = upper.checked_sub(1)?;
        (top >= member).then(|| top - (top - member) % n)
    }

    /// Seqs granted per lease extension (half the receive window, so a restart Request at the
    /// lease stays within its receivers' window).
    fn lease_step(&self) -> u64 {
        (self.cfg.request_window / 2).max(1)
    }

    /// Issues the next own Request: into the outgoing Requests and the held set (it is
    /// written with the first persist that claims a Sequence naming it). Extends the seq lease
    /// when it runs low.
    fn issue_request(&mut self, payloads: Vec<Vec<u8>>, restart: Option<u64>) {
        let step = self.lease_step();
        if self.next_local_seq + step / 2 >= self.lease_issued {
            self.lease_issued = self.next_local_seq + step;
        }
        let base = self.next_proposal - self.outbox.len() as u64 - payloads.len() as u64;
        let req = RequestMsg {
            key: RequestKey {
                sender: self.cfg.id,
                seq: self.next_local_seq,
            },
            base,
            payloads,
            restart,
        };
        self.next_local_seq += 1;
        self.stats.requests_issued += 1;
        self.out_requests.push(req.clone());
        let st = &mut self.senders[self.cfg.id as usize];
        st.unwritten.insert(req.key.seq);
        st.hold(req);
    }

    /// What a state snapshot taken now must record to resume delivery after it.
    pub fn snapshot_base(&self) -> SnapshotBase {
        SnapshotBase {
            delivered: self.delivered,
            prefixes: self.senders.iter().map(|s| s.delivered).collect(),
            next_proposal: self.next_proposal,
        }
    }

    /// Sequences below this are garbage: every member delivered them (and has them on disk).
    pub fn collected(&self) -> u64 {
        self.gc
    }

    /// Per sender: its Requests with a lower local seq are garbage.
    pub fn collected_prefixes(&self) -> Vec<u64> {
        self.senders.iter().map(|s| s.gc).collect()
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Sequences `0..delivered()` have been delivered.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Sequences `0..sequenced()` are held here (the ring has assigned them).
    pub fn sequenced(&self) -> u64 {
        self.contiguous
    }

    /// Sequences `0..stable()` and their Requests are on this member's disk.
    pub fn stable(&self) -> u64 {
        self.stable
    }

    /// Sequences `0..known()` are known to exist.
    pub fn known(&self) -> u64 {
        self.known
    }

    /// Sequences `0..deliverable()` are on a majority's disk (as far as this member knows)
    /// and held here: the delivery rule's bound.
    pub fn deliverable(&self) -> u64 {
        self.majority_stable().min(self.complete)
    }

    /// Restarted and still catching up.
    pub fn recovering(&self) -> bool {
        self.recovering
    }

    /// Counters.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Payloads waiting to be issued in a Request.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Whether `propose` would accept a payload now.
    pub fn can_accept(&self) -> bool {
        self.outbox.len() < self.cfg.outbox_max
    }

    /// Queues a client payload for broadcast; returns its member-local proposal number (the
    /// [`Delivery::proposal`] it will be delivered with, under `key.sender == id`).
    pub fn propose(&mut self, payload: Vec<u8>) -> Result<u64, ProposeError> {
        if payload.len() > self.cfg.request_bytes_max {
            return Err(ProposeError::TooLarge);
        }
        if !self.can_accept() {
            return Err(ProposeError::Busy);
        }
        let proposal = self.next_proposal;
        self.next_proposal += 1;
        self.outbox.push_back(payload);
        Ok(proposal)
    }

    /// Starts a read barrier; [`Action::ReadReady`] with `token` follows once this member has
    /// delivered every Sequence that a majority knew of after this call.
    pub fn read_barrier(&mut self, token: u64) {
        self.pending_reads.push(token);
    }

    /// Whether this member learned that its disk lacks history an earlier incarnation of it
    /// made: started with nothing on disk while its peers hold its Requests or Sequences
    /// (the data directory was emptied or replaced), or restarted from a disk on which its
    /// peers hold an own Request at or above the stored lease, or an own Sequence beyond the
    /// last one written (the disk is an older copy: restored from a backup or a VM snapshot,
    /// or a storage layer lost acknowledged writes). Such a member neither proposes nor
    /// sequences (it would reuse ids and numbers its peers hold) until it is rebuilt
    /// ([`Core::rebuild_plan`]).
    pub fn disk_lost(&self) -> bool {
        self.disk_lost
    }

    /// Whether this member needs history that every member of its epoch has collected: it
    /// was excluded and lagged by more than [`CoreConfig::retain_for_excluded`] numbers (a
    /// peer answered its retransmit request with [`Body::Collected`]). Like a member whose
    /// disk was lost, it acts no more until it is rebuilt from a peer's snapshot and
    /// journal ([`Core::rebuild_plan`]); then it catches up and is readmitted as usual.
    pub fn behind(&self) -> bool {
        self.behind
    }

    /// Once a member whose disk was lost ([`Core::disk_lost`]) has every peer's answer to
    /// its history query: how to rebuild it. The runtime copies a donor's snapshot and
    /// journal (any member's: they hold the same history), stores [`RebuildPlan::lease`] as
    /// the seq lease and [`RebuildPlan::sequence_floor`] beside it, and starts the member
    /// again from that disk ([`Core::recover_from`], then [`Core::with_sequence_floor`]). It
    /// then recovers like any restarted member: restart Request at the lease, reclaim of
    /// its first own Sequence number that nobody knows of, catch-up by retransmission.
    ///
    /// A member [`Core::behind`] its peers' garbage collection is rebuilt the same way; its
    /// own disk is intact, so its plan keeps its lease and its own Sequences as the floor.
    pub fn rebuild_plan(&self) -> Option<RebuildPlan> {
        if self.behind && !self.disk_lost {
            let own = self
                .sequences
                .keys()
                .rev()
                .find(|k| self.owner(**k) == Some(self.cfg.id))
                .map_or(0, |k| k + 1);
            let mut donors = self.view_peers();
            donors.sort_by_key(|&p| std::cmp::Reverse(self.peers[p as usize].delivered));
            return Some(RebuildPlan {
                lease: self
                    .lease_durable
                    .max(self.lease_issued)
                    .max(self.next_local_seq),
                sequence_floor: self.sequence_floor.max(own),
                donors,
            });
        }
        if !self.disk_lost || self.history_open() {
            return None;
        }
        let seen = self
            .history
            .values()
            .map(|&(issued, request_max, _)| issued.max(request_max.map_or(0, |q| q + 1)))
            .max()
            .unwrap_or(0);
        // An earlier incarnation's Requests nobody saw: at most its in-flight bound beyond
        // its sequenced prefix, which at most one Sequence nobody holds can have moved.
        let lease = seen
            .max(self.next_local_seq)
            .saturating_add(self.cfg.request_window)
            .saturating_add(2 * self.cfg.requests_in_flight_max);
        let sequence_floor = self
            .history
            .values()
            .filter_map(|&(_, _, s)| s.map(|k| k + 1))
            .max()
            .unwrap_or(0);
        let mut donors: Vec<MemberId> = self.history.keys().copied().collect();
        donors.sort_by_key(|&p| std::cmp::Reverse(self.peers[p as usize].stable));
        Some(RebuildPlan {
            lease,
            sequence_floor,
            donors,
        })
    }

    /// Marks own Sequence numbers below `floor` as issued by an earlier incarnation whose
    /// disk was lost ([`RebuildPlan::sequence_floor`]): this member never issues them afresh
    /// but waits for a peer's copy (retransmission), and the number it reclaims from every
    /// peer before sequencing is its first own number at or above `floor` (the one the
    /// earlier incarnation may have sent to nobody who kept it).
    pub fn with_sequence_floor(mut self, floor: u64) -> Self {
        self.sequence_floor = floor;
        let first = self.own_turn_from(floor);
        if let (Some(r), Some(first)) = (self.reclaim.as_mut(), first) {
            r.number = r.number.max(first);
            self.own_bound = self.own_bound.max(r.number);
        }
        self
    }

    /// Whether this member may not issue Requests or Sequences: its disk was found lost, it
    /// is behind its peers' garbage collection, it is excluded or promised a new epoch, or
    /// not every peer has answered its history query yet. (Waiting for every peer costs
    /// nothing: the ring needs every member anyway, and a restarted member's reclaim waits
    /// for every peer too.)
    fn held_back(&self) -> bool {
        self.disk_lost
            || self.behind
            || self.history_open()
            || self.excluded().contains(&self.cfg.id)
            || self.promised > self.epoch()
    }

    /// Some member of this member's epoch has not answered its history query yet (once
    /// every one did, the check is over for this incarnation: a member readmitted later
    /// would see this member's new Requests).
    fn history_open(&self) -> bool {
        !self.history_done
            && self
                .view_peers()
                .iter()
                .any(|p| !self.history.contains_key(p))
    }

    /// Marks the history check over once every member of the epoch answered.
    fn close_history(&mut self) {
        if !self.history_done && !self.disk_lost && !self.history_open() {
            self.history_done = true;
        }
    }

    /// What a peer's answer to the history query says is missing from this member's disk,
    /// if anything. A fresh member: any history at all. A restarted one: an own Request at
    /// or above its stored lease, or an own Sequence beyond the one it reclaims; neither can
    /// have been issued by an incarnation that wrote this disk (Requests go out only under a
    /// durable lease; own Sequences are written in order with at most one unwritten), so the
    /// disk is an older copy of itself (restored from a backup or a VM snapshot, or a
    /// storage layer that lost acknowledged writes).
    fn history_gap(
        &self,
        issued: u64,
        request_max: Option<u64>,
        sequence_max: Option<u64>,
    ) -> Option<&'static str> {
        if self.fresh {
            (issued > 0 || request_max.is_some() || sequence_max.is_some())
                .then_some("a peer holds Requests or Sequences of an earlier incarnation")
        } else if request_max
            .zip(self.lease_bound)
            .is_some_and(|(q, lease)| q >= lease)
        {
            Some("a peer holds an own Request at or above the lease on disk")
        } else if sequence_max.is_some_and(|k| k > self.own_bound) {
            Some("a peer knows an own Sequence beyond the last one on disk")
        } else {
            None
        }
    }

    /// A member that has not heard every peer's answer asks those that have not answered
    /// about its history.
    fn ask_history(&mut self) {
        if !self.history_open() {
            return;
        }
        let (now, every) = (self.now_ms, self.cfg.retransmit_after_ms);
        if self
            .history_asked_ms
            .is_some_and(|t| now.saturating_sub(t) < every)
        {
            return;
        }
        self.history_asked_ms = Some(now);
        let ask: Vec<MemberId> = self
            .view_peers()
            .into_iter()
            .filter(|p| !self.history.contains_key(p))
            .collect();
        for to in ask {
            let message = self.message(Body::HistoryQuery);
            self.actions.push(Action::Send { to, message });
        }
    }

    /// What this member knows of `from`'s history.
    fn answer_history(&mut self, from: MemberId) {
        let st = &self.senders[from as usize];
        let request_max = [
            st.received.keys().next_back().copied(),
            st.sequenced.checked_sub(1),
            st.gc.checked_sub(1),
        ]
        .into_iter()
        .flatten()
        .max();
        // Every number below `contiguous` exists (held, or garbage everyone delivered).
        let below = self.last_turn_below(from, self.contiguous);
        let held = self
            .sequences
            .keys()
            .rev()
            .find(|k| self.owner(**k) == Some(from))
            .copied();
        let message = self.message(Body::HistoryReply {
            issued: st.issued,
            request_max,
            sequence_max: below.max(held),
        });
        self.actions.push(Action::Send { to: from, message });
    }

    /// Whether no timer but the heartbeat has anything to do: nothing missing, pending,
    /// unspread or waiting to be read, no own proposal in flight, not recovering. A runtime
    /// may then sleep until [`Core::heartbeat_due_ms`] instead of ticking (every message or
    /// proposal that arrives can end the quiet, so check again after each). An idle group
    /// then wakes for its heartbeats only.
    pub fn quiet(&self) -> bool {
        self.known <= self.contiguous
            && self.complete == self.contiguous
            && self.delivered == self.contiguous
            && self.missing_sequences.is_empty()
            && self.missing_requests.is_empty()
            && self.outbox.is_empty()
            && self.pending_reads.is_empty()
            && self.probes.is_empty()
            && self.reclaim.is_none()
            && self.reissue.is_none()
            && !self.held_back()
            && !self.recovering
            && !self.progress_due
            && self.unspread_since_ms.is_none()
            && self.news_for.is_empty()
            && self.to_persist.is_empty()
            && !self.pending_known()
            && self.reform.is_none()
            && self.promised == self.epoch()
            && self.promise_replies.is_empty()
            && self.suspected.is_empty()
            && self.owner_in_view(self.cfg.id)
    }

    /// When (on the clock [`Core::tick`] is given) the next heartbeat is due.
    pub fn heartbeat_due_ms(&self) -> u64 {
        self.last_broadcast_ms.saturating_add(self.cfg.heartbeat_ms)
    }

    /// Advances the clock and runs the timers: retransmit requests, heartbeats, probe
    /// retries, garbage collection, deferred turn passes.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.now_ms.saturating_sub(self.last_broadcast_ms) >= self.cfg.heartbeat_ms
            || self
                .unspread_since_ms
                .is_some_and(|t| self.now_ms.saturating_sub(t) >= self.cfg.progress_spread_ms)
        {
            self.progress_due = true;
        }
        self.scan_missing();
        self.ask_history();
        self.ask_reclaim();
        self.retry_probes();
        self.collect_garbage();
        self.epoch_timers();
        self.reform_step();
        self.try_sequence();
    }

    /// The records of an [`Action::Persist`] are durable.
    pub fn persisted(&mut self, ack: PersistAck) {
        self.lease_durable = self.lease_durable.max(ack.lease);
        self.promised_durable = self.promised_durable.max(ack.promised);
        self.generation_durable = self.generation_durable.max(ack.generation);
        if ack.generation != self.generation || ack.stable <= self.stable {
            // A persist from before a cut counted Sequences the cut dropped.
            return;
        }
        let id = self.cfg.id;
        for seq in self
            .sequences
            .range(self.stable..ack.stable)
            .map(|(_, s)| s)
        {
            self.news_for
                .extend(seq.assigned.iter().map(|k| k.sender).filter(|&s| s != id));
        }
        self.stable = ack.stable;
        self.known = self.known.max(self.stable);
        self.unspread_since_ms.get_or_insert(self.now_ms);
    }

    /// [`Core::persisted`], given the actions that came after the persist in the same drain
    /// and are not performed yet: their messages are re-stamped with the progress now on
    /// disk, so the news travels with them at once, and when one of them goes to every
    /// member no separate progress message is needed.
    pub fn persisted_then(&mut self, ack: PersistAck, rest: &mut [Action]) {
        self.persisted(ack);
        let header = self.header();
        let mut broadcast = false;
        // Messages of an epoch this member left, or sent while it promises a new one, keep
        // the header they were made with (news of this epoch's progress must not reach them).
        let current = |m: &Message| header.epoch == m.header.epoch && !is_blank(&m.header);
        if self.promised > self.epoch() {
            return;
        }
        for action in rest {
            match action {
                Action::Send { to, message } if current(message) => {
                    message.header = header;
                    self.news_for.remove(to);
                }
                Action::Broadcast(message) if current(message) => {
                    message.header = header;
                    broadcast = true;
                }
                _ => {}
            }
        }
        if broadcast {
            self.broadcasted();
        }
    }

    /// A broadcast carrying the current header goes out: every peer hears the progress.
    fn broadcasted(&mut self) {
        self.progress_due = false;
        self.last_broadcast_ms = self.now_ms;
        self.unspread_since_ms = None;
        self.news_for.clear();
    }

    /// Handles one message from member `from`.
    pub fn handle_message(&mut self, from: MemberId, message: Message) {
        let h = message.header;
        if h.from != from || from >= self.cfg.members || from == self.cfg.id {
            self.stats.dropped += 1;
            return;
        }
        if h.epoch < self.epoch() {
            self.hint(from);
        }
        // Reformation messages carry their own epochs, and their headers report nothing.
        let body = match message.body {
            Body::Reform { epoch, from: lo } => return self.promise(from, epoch, lo),
            Body::ReformReply {
                epoch,
                chain,
                stable,
                sequences,
                requests,
            } => return self.promised_by(from, epoch, chain, stable, sequences, requests),
            Body::NewEpoch {
                chain,
                sequences,
                requests,
            } => return self.new_epoch(chain, sequences, requests),
            body => body,
        };
        if h.epoch != self.epoch() {
            self.stats.dropped += 1;
            return;
        }
        self.observe_header(&h);
        match body {
            Body::Data {
                requests,
                sequences,
            } => {
                for r in requests {
                    self.receive_request(r);
                }
                for s in sequences {
                    self.receive_sequence(s);
                }
                self.advance();
            }
            Body::Retransmit {
                sequences,
                requests,
            } => self.answer_retransmit(from, &sequences, &requests),
            Body::Progress => {}
            Body::Reclaim { number, nonce } => self.answer_reclaim(from, number, nonce),
            Body::ReclaimReply {
                number,
                nonce,
                sequence,
            } => {
                if nonce == self.nonce {
                    self.reclaim_answered(from, number, sequence);
                    self.advance();
                } else {
                    // Made for an earlier incarnation: that one may have reissued the number
                    // (and this peer received it) since.
                    self.stats.dropped += 1;
                }
            }
            Body::ReadProbe { probe } => {
                let message = self.message(Body::ReadProbeReply { probe });
                self.actions.push(Action::Send { to: from, message });
            }
            Body::ReadProbeReply { probe } => {
                if let Some(p) = self.probes.get_mut(&probe) {
                    p.replies.entry(from).or_insert(h.stable);
                }
            }
            Body::HistoryQuery => self.answer_history(from),
            Body::HistoryReply {
                issued,
                request_max,
                sequence_max,
            } => {
                // Only answers that predate this member's first act count: it acts once
                // every peer answered, and later answers see its own new Requests.
                if (self.disk_lost || self.history_open()) && !self.history.contains_key(&from) {
                    if let Some(why) = self.history_gap(issued, request_max, sequence_max) {
                        self.lose_disk(why);
                    }
                    self.history
                        .insert(from, (issued, request_max, sequence_max));
                }
            }
            Body::Collected { below } => {
                if below > self.delivered && !self.behind {
                    tracing::warn!(
                        id = self.cfg.id,
                        delivered = self.delivered,
                        below,
                        from,
                        "the members of the epoch collected history this member lacks: \
                         it is rebuilt from a peer's image"
                    );
                    self.behind = true;
                }
            }
            Body::Rejoin => {
                if self.excluded().contains(&from) && self.peers[from as usize].delivered < self.gc
                {
                    // It could not catch up from here: it asks again once it is rebuilt.
                    self.stats.dropped += 1;
                } else if self.excluded().contains(&from) {
                    self.readmit.insert(from);
                    self.suspected.remove(&from);
                } else {
                    // A restarted member that cannot reclaim its number (`awaiting_epoch`).
                    self.force_reform = true;
                }
            }
            Body::Reform { .. } | Body::ReformReply { .. } | Body::NewEpoch { .. } => {}
        }
    }

    /// Tells `from`, which sent a message of an older epoch, the chain of this one (at most
    /// once per retransmit interval).
    fn hint(&mut self, from: MemberId) {
        if self.generation_durable != self.generation {
            // The epoch is not on this member's disk yet: its own announcement, which carries
            // the history below the base, goes out first (after the write).
            return;
        }
        let now = self.now_ms;
        let every = self.cfg.retransmit_after_ms;
        let last = &mut self.hinted_ms[from as usize];
        if last.is_some_and(|t| now.saturating_sub(t) < every) {
            return;
        }
        *last = Some(now);
        let message = self.blank_message(Body::NewEpoch {
            chain: self.chain.clone(),
            sequences: Vec::new(),
            requests: Vec::new(),
        });
        self.actions.push(Action::Send { to: from, message });
    }

    /// A message whose header reports no progress (reformation messages, and what a member
    /// that promised a new epoch sends: it must not report in its old one any more).
    fn blank_message(&self, body: Body) -> Message {
        Message {
            header: Header {
                epoch: self.epoch(),
                from: self.cfg.id,
                ..Header::default()
            },
            body,
        }
    }

    /// Suspects `member` of being down (the runtime's liveness connection to it closed):
    /// if the ring waits for it, the group reforms without it (see [`epoch`](super::epoch)).
    pub fn suspect(&mut self, member: MemberId) {
        if member != self.cfg.id && member < self.cfg.members && self.owner_in_view(member) {
            self.down.insert(member);
        }
    }

    /// A coordinator asks for a promise of `epoch`: write it, then answer (once durable,
    /// see [`Core::answer_promises`]).
    fn promise(&mut self, from: MemberId, epoch: u64, lo: u64) {
        let n = self.cfg.members;
        if epoch % n != from
            || epoch <= self.epoch()
            || epoch < self.promised
            || epoch >= NUMBER_MAX
            || lo >= NUMBER_MAX
        {
            self.stats.dropped += 1;
            return;
        }
        if epoch > self.promised {
            self.promise_epoch(epoch);
        }
        self.promise_replies.retain(|(to, _, _)| *to != from);
        self.promise_replies.push((from, epoch, lo));
    }

    /// Promises `epoch` (writes it): from now on nothing of the current epoch is sent.
    fn promise_epoch(&mut self, epoch: u64) {
        if self.promised == self.epoch() {
            self.promise_stable = self.stable;
        }
        self.promised = epoch;
        self.epoch_event_ms = self.now_ms;
        self.to_persist.push(Record::Epoch {
            cut: NUMBER_MAX,
            state: self.epoch_state(),
        });
        if self.reform.as_ref().is_some_and(|r| r.epoch < epoch) {
            self.reform = None;
        }
    }

    /// Answers the promises that are on disk: this member's chain, its `stable`, and the
    /// history the coordinator lacks, as much as one message holds.
    fn answer_promises(&mut self) {
        if self.promise_replies.is_empty() || self.promised_durable < self.promised {
            return;
        }
        for (to, epoch, lo) in std::mem::take(&mut self.promise_replies) {
            if epoch != self.promised {
                continue;
            }
            let (sequences, requests) = self.history_between(lo, self.complete);
            let message = self.blank_message(Body::ReformReply {
                epoch,
                chain: self.chain.clone(),
                stable: self.stable,
                sequences,
                requests,
            });
            self.actions.push(Action::Send { to, message });
        }
    }

    /// A member promised this coordinator's epoch.
    fn promised_by(
        &mut self,
        from: MemberId,
        epoch: u64,
        chain: Chain,
        stable: u64,
        sequences: Vec<SequenceMsg>,
        requests: Vec<RequestMsg>,
    ) {
        let Some(r) = self.reform.as_mut() else {
            return;
        };
        if r.epoch != epoch
            || stable >= NUMBER_MAX
            || chain_invalid(&chain, self.cfg.members, self.cfg.epoch).is_some()
        {
            self.stats.dropped += 1;
            return;
        }
        r.replies
            .entry(from)
            .or_insert_with(|| (chain.clone(), stable));
        if let Some((chosen, g, _)) = &r.decided {
            // History of the chosen lineage that the coordinator lacks below the new base.
            if *chosen == chain && self.chain == chain {
                let g = *g;
                for req in requests {
                    self.receive_request(req);
                }
                for s in sequences.into_iter().filter(|s| s.number < g) {
                    self.receive_sequence(s);
                }
                self.advance();
            }
        }
        self.reform_step();
    }

    /// A chain ending in an epoch newer than this member's (and not older than one it
    /// promised): install it, with the history that came with it.
    fn new_epoch(&mut self, chain: Chain, sequences: Vec<SequenceMsg>, requests: Vec<RequestMsg>) {
        if chain_invalid(&chain, self.cfg.members, self.cfg.epoch).is_some() {
            self.stats.dropped += 1;
            return;
        }
        let e = epoch_of(&chain, self.cfg.epoch);
        if e > self.epoch() && e >= self.promised {
            self.install(chain.clone(), NUMBER_MAX);
        }
        if self.chain != chain || sequences.is_empty() {
            return;
        }
        // (Also when the epoch came first in an answer without its history.)
        let base = self.base();
        for r in requests {
            self.receive_request(r);
        }
        for s in sequences.into_iter().filter(|s| s.number < base) {
            self.receive_sequence(s);
        }
        self.advance();
    }

    /// The coordinator's next step: count its own promise once durable, decide once a
    /// majority promised, fetch what it lacks of the chosen history, then install the new
    /// epoch and announce it.
    fn reform_step(&mut self) {
        if self.reform.is_none() {
            return;
        }
        let (id, majority, first) = (self.cfg.id, self.cfg.majority(), self.cfg.epoch);
        let (chain, stable, durable) = (self.chain.clone(), self.stable, self.promised_durable);
        let Some(r) = self.reform.as_mut() else {
            return;
        };
        if durable >= r.epoch {
            r.replies.entry(id).or_insert((chain, stable));
        }
        if r.decided.is_none() && r.replies.len() >= majority {
            let top = r
                .replies
                .values()
                .map(|(c, _)| epoch_of(c, first))
                .max()
                .unwrap_or(first);
            let lineage: Vec<&(Chain, u64)> = r
                .replies
                .values()
                .filter(|(c, _)| epoch_of(c, first) == top)
                .collect();
            let chosen = lineage
                .iter()
                .max_by_key(|(_, s)| *s)
                .map(|(c, _)| c.clone())
                .unwrap_or_default();
            let g = lineage
                .iter()
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0)
                .max(chosen.last().map_or(0, |c| c.base));
            let low = lineage.iter().map(|(_, s)| *s).min().unwrap_or(0).min(g);
            // The excluded set follows the chosen lineage's (this member's view of it may be
            // stale): its members, plus the suspects, minus those readmitted and the
            // coordinator, as many as leave a majority.
            let mut excluded: BTreeSet<MemberId> = chosen
                .last()
                .map_or(BTreeSet::new(), |c| c.excluded.iter().copied().collect());
            excluded.retain(|m| !r.readmit.contains(m) && *m != id);
            let room = (self.cfg.members as usize).saturating_sub(majority);
            for m in &r.exclude {
                if excluded.len() < room && *m != id {
                    excluded.insert(*m);
                }
            }
            r.excluded = excluded.into_iter().collect();
            r.decided = Some((chosen.clone(), g, low));
            if epoch_of(&chosen, first) > self.epoch() {
                // Adopt the chosen lineage (nothing is sent in it: this member promised).
                self.follow_chain(chosen);
            }
        }
        let now = self.now_ms;
        let every = self.cfg.retransmit_after_ms;
        let complete = self.complete;
        let Some(r) = self.reform.as_mut() else {
            return;
        };
        let ask_due = r.asked_ms.is_none_or(|t| now.saturating_sub(t) >= every);
        let (epoch, excluded) = (r.epoch, r.excluded.clone());
        match r.decided.clone() {
            None if ask_due => {
                r.asked_ms = Some(now);
                let ask: Vec<MemberId> = (0..self.cfg.members)
                    .filter(|p| *p != id && !r.replies.contains_key(p))
                    .collect();
                for to in ask {
                    self.send_reform(to, epoch, complete);
                }
            }
            None => {}
            Some((mut chain, g, low)) if complete >= g => {
                chain.push(Cut {
                    epoch,
                    base: g,
                    excluded,
                });
                self.install(chain, low);
            }
            Some((chosen, g, _)) if ask_due => {
                r.asked_ms = Some(now);
                let ask: Vec<MemberId> = r
                    .replies
                    .iter()
                    .filter(|(p, (c, s))| **p != id && *c == chosen && *s > complete.min(g))
                    .map(|(p, _)| *p)
                    .collect();
                for to in ask {
                    self.send_reform(to, epoch, complete);
                }
            }
            Some(_) => {}
        }
    }

    fn send_reform(&mut self, to: MemberId, epoch: u64, from: u64) {
        let message = self.blank_message(Body::Reform { epoch, from });
        self.actions.push(Action::Send { to, message });
    }

    /// Goes on in the epoch `chain` ends in (see [`epoch`](super::epoch)), and tells the
    /// others, with its history from `low` to the base (a coordinator; others pass
    /// [`NUMBER_MAX`]: nothing).
    fn install(&mut self, chain: Chain, low: u64) {
        let e = epoch_of(&chain, self.cfg.epoch);
        self.promised = self.promised.max(e);
        if self.reform.as_ref().is_some_and(|r| r.epoch <= e) {
            self.reform = None;
        }
        self.follow_chain(chain);
        self.stats.epochs_installed += 1;
        self.known = self.known.max(self.base());
        let ex: Vec<MemberId> = self.excluded().to_vec();
        self.suspected.clear();
        self.down.clear();
        self.readmit.retain(|m| ex.contains(m));
        self.stall = (self.contiguous, self.now_ms);
        self.epoch_event_ms = self.now_ms;
        self.epoch_ask_ms = None;
        self.promise_replies.clear();
        tracing::info!(
            id = self.cfg.id,
            epoch = e,
            base = self.base(),
            excluded = ?ex,
            "atomic broadcast: new epoch installed"
        );
        let (sequences, requests) = self.history_between(low, self.base());
        let message = self.blank_message(Body::NewEpoch {
            chain: self.chain.clone(),
            sequences,
            requests,
        });
        self.actions.push(Action::Broadcast(message));
    }

    /// The Sequences held from `from` up to `to` (as many as one message holds) and the
    /// Requests they name that this member holds.
    fn history_between(&self, from: u64, to: u64) -> (Vec<SequenceMsg>, Vec<RequestMsg>) {
        let limit = self.cfg.retransmit_items_max.max(1);
        let mut sequences = Vec::new();
        let mut requests = Vec::new();
        let mut bytes = 0;
        let from = from.max(self.gc).min(to);
        for (_, seq) in self.sequences.range(from..to) {
            if sequences.len() >= limit || bytes >= self.cfg.message_bytes_max / 2 {
                break;
            }
            for key in &seq.assigned {
                if let Some(r) = self.senders[key.sender as usize].received.get(&key.seq) {
                    bytes += approx_size(r);
                    requests.push(r.clone());
                }
            }
            sequences.push(seq.clone());
        }
        (sequences, requests)
    }

    /// Follows `chain`: drops what this member holds from where its lineage and the chain's
    /// part, and writes the cut and the new state.
    fn follow_chain(&mut self, chain: Chain) {
        let cut = cut_point(&self.chain, &chain);
        self.chain = chain;
        self.drop_from(cut);
        self.to_persist.push(Record::Epoch {
            cut,
            state: self.epoch_state(),
        });
        // The excluded members' turns right at the cut are passes already.
        self.advance();
    }

    /// Drops every Sequence held from `cut` on (another lineage's), with what was derived
    /// from them; progress reports of the old epoch no longer count.
    fn drop_from(&mut self, cut: u64) {
        let cut = if cut < self.delivered {
            // Everything delivered anywhere lies below every cut (see `epoch`).
            self.stats.anomalies += 1;
            tracing::error!(
                cut,
                delivered = self.delivered,
                "reformation cuts delivered history"
            );
            self.delivered
        } else {
            cut
        };
        self.generation += 1;
        let _ = self.sequences.split_off(&cut);
        self.to_persist
            .retain(|r| !matches!(r, Record::Sequence(s) if s.number >= cut));
        self.out_sequences.retain(|s| s.number < cut);
        self.contiguous = self.contiguous.min(cut);
        self.complete = self.complete.min(cut);
        self.stable = self.stable.min(cut);
        self.persist_mark = self.persist_mark.min(cut);
        self.known = self.known.min(cut).max(self.contiguous);
        self.missing_sequences.clear();
        self.own_last = self.own_last.filter(|k| *k < cut);
        self.own_prev = self.own_prev.filter(|k| *k < cut);
        self.reclaim = None;
        self.reissue = None;
        self.refused.clear();
        // Per-sender sequenced prefixes, again from what is delivered and the Sequences kept.
        for st in &mut self.senders {
            st.sequenced = st.delivered.max(st.gc);
        }
        for (_, seq) in self.sequences.range(self.delivered..self.contiguous) {
            for key in &seq.assigned {
                let st = &mut self.senders[key.sender as usize];
                st.sequenced = st.sequenced.max(key.seq + 1);
            }
        }
        for p in &mut self.peers {
            p.stable = 0;
            p.known = 0;
        }
        for p in self.probes.values_mut() {
            p.replies.clear();
            p.replies.insert(self.cfg.id, self.stable);
            p.target = None;
            p.sent_ms = 0;
        }
        if self.recovering {
            self.heard.clear();
            self.catch_up_target = None;
        }
    }

    /// Timers of reformations: suspicion of the owner of a turn the ring waits at (or of
    /// the coordinator of an epoch promised long ago), a coordinator's start, an excluded
    /// member's request to be readmitted, and a promising member's word that it waits.
    fn epoch_timers(&mut self) {
        let (n, id, now) = (self.cfg.members, self.cfg.id, self.now_ms);
        let after = self.cfg.reform_after_ms;
        if n < 3 {
            return;
        }
        let ask_every = 2 * self.cfg.retransmit_after_ms.max(1);
        let ask_due = self
            .epoch_ask_ms
            .is_none_or(|t| now.saturating_sub(t) >= ask_every);
        if self.promised > self.epoch() {
            if ask_due {
                // Members of a newer epoch answer with its chain.
                self.epoch_ask_ms = Some(now);
                let message = self.blank_message(Body::Progress);
                self.actions.push(Action::Broadcast(message));
            }
            if after > 0 && now.saturating_sub(self.epoch_event_ms) >= after {
                let coordinator = self.promised % n;
                if coordinator != id {
                    self.suspected.insert(coordinator);
                }
                self.epoch_event_ms = now;
            }
        } else if after > 0 {
            if self.stall.0 != self.contiguous {
                // The ring moved: whoever it waited for was not down after all.
                self.stall = (self.contiguous, now);
                self.suspected.clear();
            }
            let waiting =
                self.known > self.contiguous || self.pending_known() || !self.outbox.is_empty();
            if !waiting || self.contiguous < self.base() {
                self.stall.1 = now;
            } else if now.saturating_sub(self.stall.1) >= after {
                if let Some(d) = self.owner(self.contiguous).filter(|d| *d != id) {
                    let again = !self.suspected.insert(d);
                    // Suspected before, and no reformation came since: the member that should
                    // coordinate one is down too.
                    if let Some(c) = self.coordinator_among(&self.suspected).filter(|c| {
                        again
                            && self.reform.is_none()
                            && *c != id
                            && now.saturating_sub(self.epoch_event_ms) >= after
                    }) {
                        self.suspected.insert(c);
                    }
                }
                self.stall.1 = now;
            }
        }
        let awaiting = self.awaiting_epoch.is_some_and(|e| self.epoch() <= e);
        let coordinator = self.coordinator_among(&BTreeSet::new());
        if awaiting && coordinator == Some(id) {
            self.force_reform = true;
        }
        // An excluded member asks back in once it has caught up; a restarted one that awaits
        // a new epoch asks at once (the ring may wait at its turn meanwhile).
        let rejoin = self.excluded().contains(&id)
            && !self.recovering
            && self.known <= self.delivered.saturating_add(2 * self.cfg.sequence_window);
        if (rejoin || awaiting)
            && self.promised == self.epoch()
            && !self.disk_lost
            && !self.history_open()
            && ask_due
        {
            if let Some(to) = coordinator {
                self.epoch_ask_ms = Some(now);
                let message = self.message(Body::Rejoin);
                self.actions.push(Action::Send { to, message });
            }
        }
        self.maybe_reform();
    }

    /// Starts a reformation if the excluded set should change (a member suspected, or an
    /// excluded one asking back) and this member is the coordinator: the lowest member
    /// neither excluded nor suspected.
    fn maybe_reform(&mut self) {
        let (n, id, now) = (self.cfg.members, self.cfg.id, self.now_ms);
        if let Some(r) = &self.reform {
            let patience = 8 * self
                .cfg
                .retransmit_after_ms
                .max(self.cfg.reform_after_ms / 2);
            if now.saturating_sub(r.started_ms) < patience.max(1) {
                return;
            }
            // No majority, or the history it chose could not be fetched: try again higher.
            self.reform = None;
        }
        let suspects: BTreeSet<MemberId> = self.suspected.union(&self.down).copied().collect();
        let mut excluded: BTreeSet<MemberId> = self.excluded().iter().copied().collect();
        excluded.extend(suspects.iter().copied());
        for m in &self.readmit {
            excluded.remove(m);
        }
        let same: BTreeSet<MemberId> = self.excluded().iter().copied().collect();
        // A promised epoch that never came: its coordinator is suspected, or it is this
        // member and it lost the reformation in a restart.
        let stuck = self.promised > self.epoch()
            && (suspects.contains(&(self.promised % n)) || self.promised % n == id);
        if excluded == same && !stuck && !self.force_reform {
            return;
        }
        // The coordinator: the lowest member of the current view that nobody here suspects
        // (a member being readmitted does not coordinate its own readmission).
        let coordinator = self.coordinator_among(&suspects);
        // (More to exclude than leaves a majority: the decision keeps what fits.)
        if coordinator != Some(id)
            || self.disk_lost
            || now.saturating_sub(self.epoch_event_ms) < 2 * self.cfg.retransmit_after_ms
        {
            return;
        }
        let above = self.promised.max(self.epoch()) + 1;
        let epoch = above + (id + n - above % n) % n;
        if epoch >= NUMBER_MAX {
            return;
        }
        self.promise_epoch(epoch);
        self.force_reform = false;
        self.reform = Some(Reformation {
            epoch,
            exclude: suspects,
            readmit: self.readmit.clone(),
            excluded: Vec::new(),
            replies: BTreeMap::new(),
            decided: None,
            asked_ms: None,
            started_ms: now,
        });
        tracing::info!(id, epoch, "atomic broadcast: reformation started");
    }

    /// Everything to do now; see the [module docs](self) for the order.
    pub fn drain(&mut self) -> Vec<Action> {
        self.close_history();
        self.answer_promises();
        self.reform_step();
        self.flush_outbox();
        self.try_sequence();
        self.try_deliver();
        if self.promised == self.epoch() {
            self.start_probes();
        }
        self.check_probes();
        let mut out = Vec::with_capacity(self.actions.len() + 3);
        // Own Requests under the stored lease go out before their persist: their seqs can
        // never be reused (a restart starts at the lease), so only their peers' copies count.
        let early = self
            .out_requests
            .iter()
            .take_while(|r| r.key.sender == self.cfg.id && r.key.seq < self.lease_durable)
            .count();
        // One own Sequence may also go before its persist when no other is unwritten (a
        // restart then reclaims that one number from every peer, see `recover_from`) and the
        // own Requests it names are under the lease. It carries every Request it names that
        // this member holds, so whoever gets it gets them too: if this member and their
        // origins crash before writing them, the Sequence never names a Request nobody holds.
        let id = self.cfg.id;
        let lease = self.lease_durable;
        let early_sequence = self.lease_durable > 0
            && self.generation_durable == self.generation
            && self.own_prev.is_none_or(|p| p < self.stable)
            && self.out_sequences.len() == 1
            && self.out_sequences[0]
                .assigned
                .iter()
                .all(|k| k.sender != id || k.seq < lease);
        if (early > 0 || early_sequence) && self.cfg.members > 1 {
            let mut requests: Vec<RequestMsg> = self.out_requests.drain(..early).collect();
            let mut sequences = Vec::new();
            if early_sequence {
                sequences = std::mem::take(&mut self.out_sequences);
                let sent: BTreeSet<RequestKey> = requests.iter().map(|r| r.key).collect();
                for key in sequences.iter().flat_map(|s| &s.assigned) {
                    if !sent.contains(key) {
                        if let Some(r) = self.senders[key.sender as usize].received.get(&key.seq) {
                            requests.push(r.clone());
                        }
                    }
                }
            }
            for requests in split_by_size(requests, self.cfg.message_bytes_max) {
                let body = Body::Data {
                    requests,
                    sequences: std::mem::take(&mut sequences),
                };
                out.push(Action::Broadcast(self.message(body)));
            }
        }
        self.write_named_requests();
        if !self.to_persist.is_empty()
            || self.complete > self.persist_mark
            || self.lease_issued > self.lease_handed
        {
            self.persist_mark = self.complete;
            self.lease_handed = self.lease_issued;
            out.push(Action::Persist {
                records: std::mem::take(&mut self.to_persist),
                ack: PersistAck {
                    stable: self.complete,
                    lease: self.lease_issued,
                    promised: self.promised,
                    generation: self.generation,
                },
            });
        }
        if !self.out_requests.is_empty() || !self.out_sequences.is_empty() {
            // The Sequences ride in the first message (`split_by_size` yields at least one).
            let mut sequences = std::mem::take(&mut self.out_sequences);
            for requests in split_by_size(
                std::mem::take(&mut self.out_requests),
                self.cfg.message_bytes_max,
            ) {
                let body = Body::Data {
                    requests,
                    sequences: std::mem::take(&mut sequences),
                };
                out.push(Action::Broadcast(self.message(body)));
            }
        } else if self.progress_due && self.cfg.members > 1 {
            out.push(Action::Broadcast(self.message(Body::Progress)));
        } else {
            for to in std::mem::take(&mut self.news_for) {
                out.push(Action::Send {
                    to,
                    message: self.message(Body::Progress),
                });
            }
        }
        if out.iter().any(|a| matches!(a, Action::Broadcast(_))) {
            self.broadcasted();
        }
        out.append(&mut self.actions);
        if self.promised > self.epoch() {
            // Promised a new epoch: nothing that reports progress in this one goes out.
            out.retain(|a| match a {
                Action::Send { message, .. } | Action::Broadcast(message) => {
                    is_blank(&message.header)
                }
                _ => true,
            });
        }
        out
    }

    /// Adds to the next persist the unwritten Requests named by the Sequences it will claim
    /// (`persist_mark..complete`). Requests wait in memory until then: one that is never
    /// sequenced needs no disk (its sender's restart may void it), and a member writes each
    /// Request together with the Sequence that names it instead of in a write of its own.
    fn write_named_requests(&mut self) {
        for (_, seq) in self.sequences.range(self.persist_mark..self.complete) {
            for key in &seq.assigned {
                let st = &mut self.senders[key.sender as usize];
                if st.unwritten.remove(&key.seq) {
                    if let Some(r) = st.received.get(&key.seq) {
                        self.to_persist.push(Record::Request(r.clone()));
                    }
                }
            }
        }
    }

    fn header(&self) -> Header {
        Header {
            epoch: self.epoch(),
            from: self.cfg.id,
            stable: self.stable,
            delivered: self.delivered.min(self.stable),
            known: self.known,
            issued: self.next_local_seq,
        }
    }

    fn message(&self, body: Body) -> Message {
        Message {
            header: self.header(),
            body,
        }
    }

    fn observe_header(&mut self, h: &Header) {
        let p = &mut self.peers[h.from as usize];
        p.heard_ms = Some(self.now_ms);
        p.stable = p.stable.max(h.stable);
        p.delivered = p.delivered.max(h.delivered);
        p.known = p.known.max(h.known);
        self.known = self.known.max(h.known);
        let s = &mut self.senders[h.from as usize];
        s.issued = s.issued.max(h.issued);
        // Sequence `id` is this member's first turn: only it issues it. A fresh member that
        // has not hears that it exists: its data directory lost an earlier incarnation's
        // history (a restart of a member that wrote anything is never fresh: the first write
        // carries the lease, and nothing goes out before it).
        if self.fresh
            && self.stats.sequences_issued == 0
            && self.last_turn_below(self.cfg.id, h.known).is_some()
        {
            self.lose_disk("the group knows its first Sequence");
        }
        if self.recovering && self.catch_up_target.is_none() {
            self.heard.insert(h.from);
            if self.heard.len() + 1 >= self.cfg.majority() {
                self.catch_up_target = Some(self.known);
            }
        }
    }

    /// The member learned that its disk lacks history an earlier incarnation had.
    fn lose_disk(&mut self, why: &str) {
        if !self.disk_lost {
            tracing::error!(
                id = self.cfg.id,
                fresh = self.fresh,
                why,
                "member's disk lacks history its peers hold (emptied, or an older copy)"
            );
        }
        self.disk_lost = true;
    }

    fn receive_request(&mut self, r: RequestMsg) {
        let s = r.key.sender;
        if s >= self.cfg.members || r.payloads.len() > self.cfg.request_payloads_max.max(1) {
            self.stats.dropped += 1;
            return;
        }
        let st = &mut self.senders[s as usize];
        if r.key.seq < st.gc || st.received.contains_key(&r.key.seq) {
            self.stats.duplicates += 1;
            return;
        }
        if r.key.seq >= st.sequenced + self.cfg.request_window && r.restart.is_none() {
            self.stats.dropped += 1;
            return;
        }
        self.missing_requests.remove(&r.key);
        st.unwritten.insert(r.key.seq);
        st.hold(r);
    }

    fn receive_sequence(&mut self, s: SequenceMsg) {
        let k = s.number;
        if k < self.contiguous || self.sequences.contains_key(&k) {
            self.stats.duplicates += 1;
            return;
        }
        if self.owner(k).is_none() {
            // An excluded member's turn: every member of the epoch makes the pass itself.
            if !s.assigned.is_empty() {
                self.stats.dropped += 1;
            }
            return;
        }
        if k >= self.sequence_limit()
            || s.assigned.len() > self.cfg.sequence_requests_max.max(1)
            || s.assigned.iter().any(|key| key.sender >= self.cfg.members)
        {
            self.stats.dropped += 1;
            return;
        }
        if !s.reissued && self.refused.contains(&k) {
            self.stats.dropped += 1;
            return;
        }
        self.refused.remove(&k);
        let mut s = s;
        if self.reclaim.as_ref().is_some_and(|r| r.number == k) {
            // Our crashed incarnation's Sequence survived at a peer: adopt it, and send it
            // again marked reissued, so peers that promised to refuse it take it.
            self.reclaim = None;
            s.reissued = true;
            self.out_sequences.push(s.clone());
            self.own_prev = self.own_last.replace(k);
        }
        self.known = self.known.max(k + 1);
        self.missing_sequences.remove(&k);
        self.to_persist.push(Record::Sequence(s.clone()));
        self.sequences.insert(k, s);
    }

    /// Sequences at or above this are not taken (and not asked for): twice the sequence
    /// window beyond what is delivered, or, for a coordinator fetching the history of a new
    /// epoch, its base.
    fn sequence_limit(&self) -> u64 {
        let window = self.delivered + 2 * self.cfg.sequence_window;
        match self.reform.as_ref().and_then(|r| r.decided.as_ref()) {
            Some((_, g, _)) => window.max(*g),
            None => window,
        }
    }

    /// Asks every peer that has not answered yet about the reclaimed number.
    fn ask_reclaim(&mut self) {
        let now = self.now_ms;
        let every = self.cfg.retransmit_after_ms;
        let peers = self.view_peers();
        let Some(r) = self.reclaim.as_mut() else {
            return;
        };
        if r.last_ask_ms.is_some_and(|t| now.saturating_sub(t) < every) {
            return;
        }
        r.last_ask_ms = Some(now);
        let number = r.number;
        let ask: Vec<MemberId> = peers
            .into_iter()
            .filter(|p| !r.answered.contains(p))
            .collect();
        for to in ask {
            let message = self.message(Body::Reclaim {
                number,
                nonce: self.nonce,
            });
            self.actions.push(Action::Send { to, message });
        }
    }

    /// A restarted owner asks about its Sequence `number`: hand it over, or promise to refuse
    /// any copy of it that is not reissued.
    fn answer_reclaim(&mut self, from: MemberId, number: u64, nonce: u32) {
        if self.owner(number) != Some(from) || number < self.gc.max(self.base()) {
            self.stats.dropped += 1;
            return;
        }
        let sequence = self.sequences.get(&number).cloned();
        if sequence.is_none() {
            self.refused.insert(number);
        }
        let message = self.message(Body::ReclaimReply {
            number,
            nonce,
            sequence,
        });
        self.actions.push(Action::Send { to: from, message });
    }

    fn reclaim_answered(&mut self, from: MemberId, number: u64, sequence: Option<SequenceMsg>) {
        if self.reclaim.as_ref().is_none_or(|r| r.number != number) {
            return;
        }
        match sequence {
            Some(s) if s.number == number => self.receive_sequence(s),
            Some(_) => self.stats.dropped += 1,
            None => {
                let peers = self.view_peers();
                if let Some(r) = self.reclaim.as_mut() {
                    r.answered.insert(from);
                    if peers.iter().all(|p| r.answered.contains(p)) {
                        self.reclaim = None;
                        if !self.sequences.contains_key(&number) {
                            self.reissue = Some(number);
                        }
                    }
                }
            }
        }
    }

    /// Folds newly contiguous Sequences into the per-sender sequenced prefixes and advances
    /// `complete`.
    fn advance(&mut self) {
        loop {
            let k = self.contiguous;
            if self.owner(k).is_none() && !self.sequences.contains_key(&k) {
                // An excluded member's turn: a pass nobody sends.
                let pass = SequenceMsg {
                    number: k,
                    assigned: Vec::new(),
                    reissued: false,
                };
                self.sequences.insert(k, pass);
                self.known = self.known.max(k + 1);
            }
            let Some(seq) = self.sequences.get(&k) else {
                break;
            };
            for key in &seq.assigned {
                let st = &mut self.senders[key.sender as usize];
                if key.seq >= st.sequenced {
                    // Past a gap only for a restart Request (see `try_sequence`).
                    self.stats.requests_voided += key.seq - st.sequenced;
                    st.sequenced = key.seq + 1;
                } else {
                    self.stats.anomalies += 1;
                    tracing::error!(number = seq.number, ?key, "sequence breaks per-sender FIFO");
                }
            }
            if !seq.assigned.is_empty() {
                self.progress_since_pass = true;
            }
            self.contiguous += 1;
        }
        while self.complete < self.contiguous {
            let Some(seq) = self.sequences.get(&self.complete) else {
                break;
            };
            let all = seq.assigned.iter().all(|key| {
                let st = &self.senders[key.sender as usize];
                key.seq < st.gc || st.received.contains_key(&key.seq)
            });
            if !all {
                break;
            }
            self.complete += 1;
        }
    }

    fn flush_outbox(&mut self) {
        let id = self.cfg.id;
        if !self.held_back() {
            if let Some(from) = self.restart_from.take() {
                self.issue_request(Vec::new(), Some(from));
            }
        }
        while !self.held_back()
            && !self.outbox.is_empty()
            && self.next_local_seq - self.senders[id as usize].sequenced
                < self.cfg.requests_in_flight_max.max(1)
        {
            let mut payloads = Vec::new();
            let mut bytes = 0usize;
            while let Some(p) = self.outbox.front() {
                if payloads.len() >= self.cfg.request_payloads_max.max(1)
                    || (!payloads.is_empty() && bytes + p.len() > self.cfg.request_bytes_max)
                {
                    break;
                }
                bytes += p.len();
                if let Some(p) = self.outbox.pop_front() {
                    payloads.push(p);
                }
            }
            self.issue_request(payloads, None);
        }
    }

    /// Who coordinates a reformation as this member sees it: the lowest member of its epoch
    /// (not excluded) outside `suspects`.
    fn coordinator_among(&self, suspects: &BTreeSet<MemberId>) -> Option<MemberId> {
        (0..self.cfg.members).find(|m| self.owner_in_view(*m) && !suspects.contains(m))
    }

    /// Whether `member` takes part in this member's epoch (is not excluded).
    fn owner_in_view(&self, member: MemberId) -> bool {
        !self.excluded().contains(&member)
    }

    /// Whether some Request is known to be waiting for a global number. (An excluded
    /// member's announced Requests do not count: it may be gone, and it issues nothing new
    /// until readmitted; those it sent are sequenced if somebody holds them.)
    fn pending_known(&self) -> bool {
        self.senders.iter().enumerate().any(|(s, st)| {
            let issued = if s as u64 == self.cfg.id {
                self.next_local_seq
            } else if !self.owner_in_view(s as u64) {
                st.sequenced
            } else {
                st.issued
            };
            issued > st.sequenced || st.received.range(st.sequenced..).next().is_some()
        })
    }

    fn try_sequence(&mut self) {
        let n = self.cfg.members;
        loop {
            let k = self.contiguous;
            let reissue = self.reissue == Some(k);
            if self.owner(k) != Some(self.cfg.id)
                || k < self.base()
                || self.awaiting_epoch.is_some_and(|e| self.epoch() <= e)
                || self.held_back()
                || (self.recovering && !reissue)
                || (k < self.sequence_floor && !reissue)
                || self.reclaim.is_some()
                || self.complete < self.contiguous
                || k >= self.delivered + self.cfg.sequence_window
            {
                return;
            }
            let mut assigned = Vec::new();
            let start = (k / n) % n;
            for i in 0..n {
                let s = (start + i) % n;
                let st = &self.senders[s as usize];
                let max = self.cfg.sequence_requests_max.max(1);
                let mut q = st.sequenced;
                while assigned.len() < max {
                    if st.received.contains_key(&q) {
                        assigned.push(RequestKey { sender: s, seq: q });
                        q += 1;
                        continue;
                    }
                    // A restart Request voids the gap below it down to what its sender
                    // recovered (FIFO holds: seqs only grow).
                    match st.received.range(q..).find(|(_, r)| r.restart.is_some()) {
                        Some((&r, req)) if req.restart.is_some_and(|from| from <= q) => {
                            assigned.push(RequestKey { sender: s, seq: r });
                            q = r + 1;
                        }
                        _ => break,
                    }
                }
            }
            if assigned.is_empty() {
                let retry_due = self
                    .last_pass_ms
                    .is_none_or(|t| self.now_ms.saturating_sub(t) >= self.cfg.pass_retry_ms);
                if !self.pending_known() || !(self.progress_since_pass || retry_due) {
                    return;
                }
                self.last_pass_ms = Some(self.now_ms);
                self.progress_since_pass = false;
                self.stats.passes += 1;
            }
            if reissue {
                self.reissue = None;
            }
            let seq = SequenceMsg {
                number: k,
                assigned,
                reissued: reissue,
            };
            self.stats.sequences_issued += 1;
            self.own_prev = self.own_last.replace(k);
            // `known` (advertised in headers) covers an own Sequence only once it is on disk
            // (see `persisted`): a header sent before the persist must not announce it.
            self.to_persist.push(Record::Sequence(seq.clone()));
            self.out_sequences.push(seq.clone());
            self.sequences.insert(k, seq);
            self.advance();
        }
    }

    fn majority_stable(&self) -> u64 {
        let mut v: Vec<u64> = self
            .peers
            .iter()
            .enumerate()
            .map(|(j, p)| {
                if j as u64 != self.cfg.id {
                    p.stable
                } else if self.promised > self.epoch() {
                    self.stable.min(self.promise_stable)
                } else {
                    self.stable
                }
            })
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v[self.cfg.majority() - 1]
    }

    fn try_deliver(&mut self) {
        let bound = self.deliverable();
        while self.delivered < bound {
            let Some(seq) = self.sequences.get(&self.delivered) else {
                self.stats.anomalies += 1;
                return;
            };
            for key in &seq.assigned {
                let st = &mut self.senders[key.sender as usize];
                let restart = st
                    .received
                    .get(&key.seq)
                    .is_some_and(|r| r.restart.is_some());
                if key.seq < st.delivered || (key.seq > st.delivered && !restart) {
                    // Never happens with a correct sequencer; skipping keeps every member
                    // identical (they all see the same Sequence) and integrity intact.
                    self.stats.anomalies += 1;
                    continue;
                }
                st.delivered = key.seq + 1;
                let Some(req) = st.received.get(&key.seq) else {
                    self.stats.anomalies += 1;
                    continue;
                };
                for (i, p) in req.payloads.iter().enumerate() {
                    self.actions.push(Action::Deliver(Delivery {
                        number: seq.number,
                        key: *key,
                        proposal: req.base + i as u64,
                        payload: p.clone(),
                    }));
                }
            }
            self.delivered += 1;
        }
        if let Some(target) = self.catch_up_target {
            if self.recovering && self.delivered >= target {
                self.recovering = false;
                self.catch_up_target = None;
                self.heard.clear();
            }
        }
    }

    fn nack_due(&self, m: &Missing) -> bool {
        self.now_ms.saturating_sub(m.first_seen_ms) >= self.cfg.retransmit_after_ms
            && m.last_nack_ms
                .is_none_or(|t| self.now_ms.saturating_sub(t) >= self.cfg.retransmit_after_ms)
    }

    /// Whom to ask: first the original sender, then the others in turn.
    fn nack_target(&self, origin: MemberId, attempts: u64) -> MemberId {
        let n = self.cfg.members;
        let mut t = (origin + attempts) % n;
        if t == self.cfg.id {
            t = (t + 1) % n;
        }
        t
    }

    fn scan_missing(&mut self) {
        let n = self.cfg.members;
        if n == 1 {
            return;
        }
        let limit = self.cfg.retransmit_items_max.max(1);
        let now = self.now_ms;
        let mut asks: BTreeMap<MemberId, (Vec<u64>, Vec<RequestKey>)> = BTreeMap::new();
        // Missing Sequences: gaps below what is known to exist.
        let hi = self.known.min(self.sequence_limit());
        let (base, coordinator) = (self.base(), self.epoch() % n);
        let mut live = BTreeSet::new();
        for k in self.contiguous..hi {
            if live.len() >= limit {
                break;
            }
            if self.sequences.contains_key(&k) || self.owner(k).is_none() {
                // (An excluded member's turn is a pass this member makes itself.)
                continue;
            }
            live.insert(k);
            let m = *self.missing_sequences.entry(k).or_insert(Missing {
                first_seen_ms: now,
                last_nack_ms: None,
                attempts: 0,
            });
            if self.nack_due(&m) {
                // The agreed history below the epoch's base is on its coordinator's disk.
                let origin = if k < base { coordinator } else { k % n };
                let to = self.nack_target(origin, m.attempts);
                asks.entry(to).or_default().0.push(k);
                if let Some(m) = self.missing_sequences.get_mut(&k) {
                    m.last_nack_ms = Some(now);
                    m.attempts += 1;
                }
            }
        }
        self.missing_sequences.retain(|k, _| live.contains(k));
        // Missing Requests: named by a held Sequence (asked first: delivery waits for them),
        // or announced by their sender.
        let mut wanted = BTreeSet::new();
        let mut order = Vec::new();
        'named: for seq in self.sequences.range(self.complete..).map(|(_, s)| s) {
            for key in &seq.assigned {
                if wanted.len() >= limit {
                    break 'named;
                }
                let st = &self.senders[key.sender as usize];
                if key.seq >= st.gc && !st.received.contains_key(&key.seq) && wanted.insert(*key) {
                    order.push(*key);
                }
            }
        }
        for (s, st) in self.senders.iter().enumerate() {
            if s as u64 == self.cfg.id {
                continue;
            }
            // Between what a restarted sender recovered and its restart Request, Requests may
            // not exist: only a Sequence naming one makes it wanted.
            let void = st
                .received
                .range(st.sequenced..)
                .rev()
                .find_map(|(&q, r)| r.restart.map(|from| from..q));
            let issued = if self.owner_in_view(s as u64) {
                st.issued
            } else {
                st.sequenced
            };
            let hi = issued.min(st.sequenced + self.cfg.request_window);
            for q in st.sequenced.max(st.gc)..hi {
                if wanted.len() >= 2 * limit {
                    break;
                }
                if void.as_ref().is_some_and(|v| v.contains(&q)) {
                    continue;
                }
                let key = RequestKey {
                    sender: s as u64,
                    seq: q,
                };
                if !st.received.contains_key(&q) && wanted.insert(key) {
                    order.push(key);
                }
            }
        }
        for key in &order {
            let m = *self.missing_requests.entry(*key).or_insert(Missing {
                first_seen_ms: now,
                last_nack_ms: None,
                attempts: 0,
            });
            if self.nack_due(&m) {
                let to = self.nack_target(key.sender, m.attempts);
                let ask = &mut asks.entry(to).or_default().1;
                if ask.len() >= limit {
                    // Answers carry at most `limit` items: ask in a later round.
                    continue;
                }
                ask.push(*key);
                if let Some(m) = self.missing_requests.get_mut(key) {
                    m.last_nack_ms = Some(now);
                    m.attempts += 1;
                }
            }
        }
        self.missing_requests.retain(|k, _| wanted.contains(k));
        for (to, (sequences, requests)) in asks {
            self.stats.retransmits_requested += (sequences.len() + requests.len()) as u64;
            let message = self.message(Body::Retransmit {
                sequences,
                requests,
            });
            self.actions.push(Action::Send { to, message });
        }
    }

    fn answer_retransmit(&mut self, from: MemberId, sequences: &[u64], requests: &[RequestKey]) {
        let limit = self.cfg.retransmit_items_max.max(1);
        // Asked for what every member of the epoch delivered and this one collected: the
        // asker lags behind the collection (it was excluded), and nobody can send it.
        let collected = sequences.iter().any(|&k| k < self.gc)
            || requests.iter().any(|k| {
                self.senders
                    .get(k.sender as usize)
                    .is_some_and(|st| k.seq < st.gc)
            });
        if collected && self.peers[from as usize].delivered < self.gc {
            let message = self.message(Body::Collected { below: self.gc });
            self.actions.push(Action::Send { to: from, message });
            return;
        }
        let seqs: Vec<SequenceMsg> = sequences
            .iter()
            .take(limit)
            .filter(|k| self.owner(**k).is_some())
            .filter_map(|k| self.sequences.get(k).cloned())
            .collect();
        let mut reqs: Vec<RequestMsg> = Vec::new();
        let mut bytes = 0;
        for key in requests.iter().take(limit) {
            if key.sender >= self.cfg.members || bytes >= self.cfg.message_bytes_max {
                continue;
            }
            if let Some(r) = self.senders[key.sender as usize].received.get(&key.seq) {
                bytes += approx_size(r);
                reqs.push(r.clone());
            }
        }
        if seqs.is_empty() && reqs.is_empty() {
            return;
        }
        self.stats.retransmits_served += (seqs.len() + reqs.len()) as u64;
        let message = self.message(Body::Data {
            requests: reqs,
            sequences: seqs,
        });
        self.actions.push(Action::Send { to: from, message });
    }

    fn start_probes(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        let probe = self.next_probe;
        self.next_probe = self.next_probe.wrapping_add(1);
        let mut replies = BTreeMap::new();
        replies.insert(self.cfg.id, self.stable);
        self.probes.insert(
            probe,
            Probe {
                tokens: std::mem::take(&mut self.pending_reads),
                replies,
                sent_ms: self.now_ms,
                target: None,
            },
        );
        while self.probes.len() > self.cfg.probes_max.max(1) {
            self.probes.pop_first();
        }
        if self.cfg.members > 1 {
            // A majority's worth of peers heard from lately (and the spares), in turn;
            // everyone if too few.
            // (Unanswered probes go to every peer after `retransmit_after_ms`.)
            let n = self.cfg.members;
            let want = (self.cfg.majority() - 1 + self.cfg.read_probe_spare).min(n as usize - 1);
            let recent = 2 * self.cfg.heartbeat_ms;
            let now = self.now_ms;
            let to: Vec<MemberId> = (0..n)
                .map(|i| (probe + i) % n)
                .filter(|&j| {
                    j != self.cfg.id
                        && self.peers[j as usize]
                            .heard_ms
                            .is_some_and(|t| now.saturating_sub(t) <= recent)
                })
                .take(want)
                .collect();
            if to.len() < want {
                let message = self.message(Body::ReadProbe { probe });
                self.actions.push(Action::Broadcast(message));
            } else {
                for to in to {
                    let message = self.message(Body::ReadProbe { probe });
                    self.actions.push(Action::Send { to, message });
                }
            }
        }
    }

    fn retry_probes(&mut self) {
        let now = self.now_ms;
        let mut sends = Vec::new();
        for (id, p) in &mut self.probes {
            if p.target.is_none() && now.saturating_sub(p.sent_ms) >= self.cfg.retransmit_after_ms {
                p.sent_ms = now;
                for j in 0..self.cfg.members {
                    if !p.replies.contains_key(&j) {
                        sends.push((j, *id));
                    }
                }
            }
        }
        for (to, probe) in sends {
            let message = self.message(Body::ReadProbe { probe });
            self.actions.push(Action::Send { to, message });
        }
    }

    fn check_probes(&mut self) {
        let majority = self.cfg.majority();
        let mut done = Vec::new();
        for (id, p) in &mut self.probes {
            if p.target.is_none() && p.replies.len() >= majority {
                p.target = p.replies.values().copied().max();
            }
            if p.target.is_some_and(|t| self.delivered >= t) {
                done.push(*id);
            }
        }
        for id in done {
            if let Some(p) = self.probes.remove(&id) {
                for token in p.tokens {
                    self.actions.push(Action::ReadReady { token });
                }
            }
        }
    }

    /// Drops what every member of the epoch has delivered (and has on disk), and what every
    /// excluded member has too, unless one lags by more than
    /// [`CoreConfig::retain_for_excluded`] numbers, or the Requests held exceed
    /// [`CoreConfig::retain_for_excluded_bytes`]: that one will be rebuilt from an image.
    fn collect_garbage(&mut self) {
        while self.refused.first().is_some_and(|&k| k < self.gc) {
            self.refused.pop_first();
        }
        let g = self.collectable();
        while self.gc < g {
            if let Some(seq) = self.sequences.remove(&self.gc) {
                for key in seq.assigned {
                    let st = &mut self.senders[key.sender as usize];
                    st.gc = st.gc.max(key.seq + 1);
                    // Below a restart Request also the voided Requests go.
                    st.drop_below(st.gc);
                    while st.unwritten.first().is_some_and(|&q| q < st.gc) {
                        st.unwritten.pop_first();
                    }
                }
            }
            self.gc += 1;
        }
        if let Some((base, prefixes)) = &self.base_prefixes {
            if self.gc >= *base {
                for (st, p) in self.senders.iter_mut().zip(prefixes) {
                    st.gc = st.gc.max(*p);
                    st.drop_below(st.gc);
                }
                self.base_prefixes = None;
            }
        }
    }

    /// The number below which everything may be collected (see `collect_garbage`). An
    /// excluded member already collected past (it will be rebuilt from an image anyway) is
    /// kept nothing for.
    fn collectable(&self) -> u64 {
        let excluded = self.excluded();
        let mut view = self.delivered.min(self.stable);
        let mut others = u64::MAX;
        for (j, p) in self.peers.iter().enumerate() {
            let j = j as u64;
            if j == self.cfg.id {
                continue;
            }
            if excluded.contains(&j) {
                if p.delivered >= self.gc {
                    others = others.min(p.delivered);
                }
            } else {
                view = view.min(p.delivered);
            }
        }
        let kept = if self.held_bytes() > self.cfg.retain_for_excluded_bytes {
            view
        } else {
            view.saturating_sub(self.cfg.retain_for_excluded)
        };
        view.min(others.max(kept))
    }

    /// About the encoded size of the Requests held in memory (delivered or not).
    pub fn held_bytes(&self) -> usize {
        self.senders.iter().map(|s| s.bytes).sum()
    }

    /// Number of Sequences and Requests held in memory (garbage not collected yet).
    pub fn held(&self) -> (usize, usize) {
        (
            self.sequences.len(),
            self.senders.iter().map(|s| s.received.len()).sum(),
        )
    }
}

/// A header that reports no progress (see `Core::blank_message`).
fn is_blank(h: &Header) -> bool {
    h.stable == 0 && h.delivered == 0 && h.known == 0 && h.issued == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(seq: u64, sizes: &[usize]) -> RequestMsg {
        RequestMsg {
            key: RequestKey { sender: 0, seq },
            base: 0,
            payloads: sizes.iter().map(|n| vec![0; *n]).collect(),
            restart: None,
        }
    }

    /// A sender's byte count follows what it holds: held, replaced, dropped.
    #[test]
    fn held_bytes_follow_the_requests_held() {
        let mut st = SenderState::default();
        let sum = |st: &SenderState| st.received.values().map(approx_size).sum::<usize>();
        st.hold(request(0, &[10, 20]));
        st.hold(request(1, &[100]));
        st.hold(request(2, &[]));
        assert_eq!(st.bytes, sum(&st));
        st.hold(request(1, &[5]));
        assert_eq!(st.bytes, sum(&st));
        st.drop_below(2);
        assert_eq!(st.received.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(st.bytes, sum(&st));
        st.drop_below(10);
        assert_eq!(st.bytes, 0);
    }
}
