//! The Ready loop: one task per node, on the runtime that serves the node's network, owns the
//! `RawNode` and its storage.
//!
//! It runs on the network's runtime rather than on a thread of its own because wake-ups are
//! what a small message costs most on a small machine: with a separate thread every peer
//! message and every read crossed two threads (network task -> loop -> network task), and
//! profiles of idle followers answering heartbeats showed most of their CPU in context
//! switches. A Ready whose messages went out before its write (a leader's appends) has its
//! fsync run on a blocking thread while the loop awaits it, so the runtime keeps sending and
//! serving; a follower's write (after which it answers) and a snapshot block the runtime
//! (`block_in_place` on a multi-thread runtime hands its other tasks to another worker).
//!
//! Each turn of the loop:
//!
//! 1. waits for input (a peer's messages, a local proposal, a read, a leadership transfer)
//!    at most until the next tick, then drains everything else queued (up to `INPUT_BATCH_MAX`):
//!    every proposal of the turn goes into the same Ready (batching), and every linearizable
//!    read of the turn shares one ReadIndex request (held back while no leader is known or
//!    the leader has not committed an entry of its term, when raft-rs would drop it);
//! 2. ticks raft-rs when the tick interval has passed;
//! 3. handles the Ready: the leader's messages are sent at once (before its own fsync: the
//!    Raft thesis §10.2.1, which is also what pipelining rests on); the snapshot, entries and
//!    hard state are written as one raft-engine batch with one fsync (group commit); then the
//!    messages that had to wait for persistence (votes, append responses) are sent; committed
//!    entries are applied through [`Deduped`] and their proposers answered; read states are
//!    resolved once the applied index reaches them;
//! 4. every `snapshot_every` applied entries the state machine is snapshotted into the engine
//!    and the log compacted.
//!
//! **A snapshot does not stop the node.** The state is serialized on a blocking thread (under
//! the state's read lock) while the loop goes on appending, acknowledging, voting and
//! committing; only applying waits: entries committed meanwhile are held and applied, in
//! order, once the serialized state is stored. So a follower's snapshot delays nobody (a
//! majority without it commits), and a leader's delays its clients by the serialization
//! only. (Taken on the loop, it stopped all five replicas at the same applied index at
//! once: 0.05-0.15 s in which no product call completed at 100 + 100 clients.) The first
//! snapshot of replica `id` comes `(id mod n) / n` of an interval early, so the replicas'
//! snapshots are spread out.
//!
//! A proposal is remembered by the log index and term raft-rs gave it. When an entry is
//! applied at that index, the proposer gets the output if the term matches, and "retry"
//! otherwise (another leader's entry replaced it); retrying is safe because every command
//! carries a request id.
//!
//! A storage error stops the node (it answers `LogError::Storage` and exits the loop) rather
//! than let it diverge.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};
use ::raft::{ProgressState, RawNode, ReadState, SnapshotStatus, StateRole};
use protobuf::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use transport::Network;

use super::message::{StateAnswer, Wire, RAFT_BATCH_BYTES_MAX, RAFT_BATCH_MAX};
use super::storage::{EngineStorage, PendingWrite};
use super::{to_node, to_raft, RaftConfig, Shared};
use crate::dedup::Applied;
use crate::log::{Envelope, LogError, LogStatus, Role};
use crate::state_machine::StateMachine;
use crate::storage::{blocking, off_loop};

/// Ticks after which a follower asks its leader again for a read index it got no answer to.
const READ_INDEX_RESEND_TICKS: u64 = 3;

/// Inputs processed per loop turn, at most.
const INPUT_BATCH_MAX: usize = 8192;

/// What a local proposal came to.
#[derive(Debug)]
pub(crate) enum ProposeOutcome<O> {
    /// Committed and applied here (a duplicate answered from the table included).
    Applied(Applied<O>),
    /// This node is not the leader; the leader it knows of (transport id).
    NotLeader(Option<u64>),
    /// Dropped or replaced; may be retried with the same request id.
    Retry(String),
    /// Failed for good.
    Failed(LogError),
}

pub(crate) type ProposeReply<O> = oneshot::Sender<ProposeOutcome<O>>;
/// `Ok(())` once the read may be served locally, `Err(retry reason)` otherwise.
pub(crate) type ReadReply = oneshot::Sender<Result<(), String>>;

/// An input to the Ready loop.
pub(crate) enum Input<S: StateMachine> {
    /// Messages from a peer, already parsed and checked.
    Raft(Vec<Message>),
    /// A proposal (a postcard `Envelope`), local or forwarded by a follower.
    Propose {
        data: Vec<u8>,
        reply: ProposeReply<S::Output>,
    },
    /// A linearizable read wants a read index.
    Read { reply: ReadReply },
    /// Transfer leadership to this raft id.
    Transfer(u64),
    /// The network saw this peer's process die (transport id).
    PeerDown(u64),
    /// A peer (transport id) whose log ends at `last_index`, in `term`, asks for this node's
    /// state ([`Wire::StateQuery`]).
    StateQuery {
        from: u64,
        last_index: u64,
        term: u64,
    },
    /// A peer's (transport id) answer to this node's [`Input::StateQuery`].
    StateAnswer { from: u64, answer: StateAnswer },
    /// Stop the loop.
    Shutdown,
}

pub(crate) struct Driver<S: StateMachine> {
    pub(crate) node: RawNode<EngineStorage>,
    pub(crate) shared: Arc<Shared<S>>,
    pub(crate) network: Arc<dyn Network>,
    pub(crate) config: RaftConfig,
    pub(crate) applied: u64,
    pub(crate) next_read_ctx: u64,
    pub(crate) pending_proposals: BTreeMap<u64, (u64, ProposeReply<S::Output>)>,
    pub(crate) pending_reads: HashMap<u64, (u64, Vec<ReadReply>)>,
    pub(crate) waiting_reads: Vec<(u64, Vec<ReadReply>)>,
    pub(crate) deferred_reads: Vec<ReadReply>,
    pub(crate) deferred_since: u64,
    pub(crate) ticks: u64,
    /// The tick count at which each peer (raft id) was last heard from.
    pub(crate) heard: HashMap<u64, u64>,
    /// The ReadIndex context issued in this turn, while no tick has run in it: its heartbeats
    /// go to a majority and one spare only (see [`Driver::narrow_read_heartbeats`]).
    pub(crate) read_ctx: Option<Vec<u8>>,
    /// A campaign planned because this follower's leader died ([`Driver::leader_died`]):
    /// the tick of its next try and the last tick it tries at.
    pub(crate) campaign_at: Option<(u64, u64)>,
    /// The leader reported dead (raft id), its term, and the last tick of the filter: its
    /// messages of that term or older are dropped until a later term has a leader, or for
    /// two election timeouts at most (should the report have been wrong, the follower then
    /// hears its leader again).
    pub(crate) departed: Option<(u64, u64, u64)>,
    /// The applied index of the snapshot being serialized off the loop, if one is.
    pub(crate) snapshotting: Option<u64>,
    /// Committed entries waiting for the snapshot in flight, in order.
    pub(crate) held: Vec<Entry>,
    /// Appends held back for the followers a commit does not need (see [`Driver::send`]).
    pub(crate) deferred: Deferred,
    /// While leading: the term, and per follower (raft id) the highest index it had
    /// acknowledged in that term before a state query showed it lost it (its progress was
    /// reset then). Later answers to that follower report it still, so a check whose first
    /// answer was lost still learns it (the follower compares it with the log end it
    /// started from, so a later, sound start is not accused).
    pub(crate) lost_acks: Option<(u64, BTreeMap<u64, u64>)>,
    /// This node may not vote or campaign yet: it has just started and checks its store
    /// against what its peers saw of it, or its store started empty or older than that.
    pub(crate) rejoin: Option<Rejoin>,
}

/// Ticks between two rounds of state queries to the peers that have not answered.
const STATE_QUERY_EVERY_TICKS: u64 = 5;

/// Election timeouts a start check waits for the answer of a leader that other peers name
/// (see [`Rejoin::leader_unheard`]).
const CHECK_LEADER_WAIT_TIMEOUTS: u64 = 5;

/// The way back to voting of a node that has just started: a short check of its store
/// against what its peers saw of it ("Started from an older copy" in the [module
/// docs](super)) and, for a store that started empty or turned out older than that, the
/// catch-up before it votes again ("Started with an empty disk"). Until it ends the node
/// drops vote, pre-vote and timeout-now requests and never campaigns.
#[derive(Debug, Default)]
pub(crate) struct Rejoin {
    /// Only checking: the store carries no mark. The check ends once every peer answered,
    /// or after one election timeout once a majority less one peer answered (and the leader
    /// they name, if any, or [`CHECK_LEADER_WAIT_TIMEOUTS`] passed), or becomes a catch-up
    /// if an answer shows that the store is older than what this node had done.
    checking: bool,
    /// The peers' answers, by transport id.
    answers: BTreeMap<u64, StateAnswer>,
    /// While checking: the first answer that proved the store older, with its sender.
    older: Option<(u64, StateAnswer)>,
    /// Where the log ended when the first queries went out (before any input): what the
    /// disk held.
    started_at_index: Option<u64>,
    /// The tick of the last round of queries.
    asked_at: Option<u64>,
    /// Once enough peers answered and one of them had a history: the largest term they
    /// reported. Every term in which an earlier incarnation of this node could have voted is
    /// at most this.
    floor: Option<u64>,
    /// Caught up; waiting for the vote that marks the current term as taken to be on disk
    /// (term, vote).
    finishing: Option<(u64, u64)>,
}

impl Rejoin {
    /// The check every node with a store that carries no mark makes at its start.
    pub(crate) fn check() -> Self {
        Self {
            checking: true,
            ..Self::default()
        }
    }

    /// Records a peer's answer. While checking, an answer proves the store older than what
    /// this node had done if the peer received from it a message of a term above the one it
    /// was in when it asked (it sends a message of a term only once the term is on its
    /// disk; nothing this incarnation sent before asking goes beyond it), or if the peer
    /// leads and holds its acknowledgement of an entry beyond where its log ended when it
    /// asked (it acknowledges only what is on its disk; a leader never truncates what a
    /// follower acknowledged to it). Both compare with what the query carried, not with
    /// the node's state when the answer is read: by then a peer's message may have moved
    /// it to a later term, or the leader's probing filled its log. The first queries go out before the
    /// node handles any input, so what they compare with is its disk; a later query (to a
    /// peer that did not answer) compares with a log that may have grown since, which can
    /// only hide an older store, never accuse a sound one, unless the peer read an
    /// acknowledgement this node sent after the query before the query itself.
    fn record(&mut self, from: u64, answer: StateAnswer) {
        self.answers.insert(from, answer);
        // A lost acknowledgement the leader kept: an earlier query (maybe this node's first,
        // whose answer went astray) showed the log ending below it. Compared with the disk's
        // log end, not with later queries' (the leader's probing fills the log meanwhile).
        let lost = self
            .started_at_index
            .is_some_and(|start| answer.lost > start);
        let older = answer.seen_term > answer.asked_term
            || answer.matched > answer.asked_last_index
            || lost;
        if self.checking && older && self.older.is_none() {
            self.older = Some((from, answer));
        }
    }

    /// Whether a peer named a leader (other than this node) that has not answered yet: only
    /// a leader holds what the asker acknowledged (`matched`), the evidence of a copy taken
    /// in the current term, and its answer can be late (its connection to the node's dead
    /// process was still open, say).
    fn leader_unheard(&self, me: u64) -> bool {
        self.answers
            .values()
            .filter_map(|a| a.leader)
            .any(|l| l != me && !self.answers.contains_key(&l))
    }

    /// The peers (transport ids) to ask now: those that have not answered, once every
    /// [`STATE_QUERY_EVERY_TICKS`].
    fn due(&mut self, peers: &[u64], ticks: u64) -> Vec<u64> {
        if self
            .asked_at
            .is_some_and(|t| ticks.saturating_sub(t) < STATE_QUERY_EVERY_TICKS)
        {
            return Vec::new();
        }
        self.asked_at = Some(ticks);
        peers
            .iter()
            .copied()
            .filter(|p| !self.answers.contains_key(p))
            .collect()
    }
}

/// Appends a leader holds back for the followers a commit does not need ("Quorum-first
/// appends" in the module docs).
#[derive(Default)]
pub(crate) struct Deferred {
    /// Encoded messages per follower (raft id), in the order raft-rs produced them.
    by_peer: BTreeMap<u64, Vec<Vec<u8>>>,
    /// When the oldest of them was held back.
    since: Option<Instant>,
}

/// One destination's share of a Ready's messages, encoded.
#[derive(Default)]
struct PeerBatch {
    messages: Vec<Vec<u8>>,
    has_snapshot: bool,
    /// Holds appends and nothing else.
    appends_only: bool,
}

/// The task serializing the state for a snapshot: the bytes and how long it took.
type SnapshotTask = tokio::task::JoinHandle<(Vec<u8>, Duration)>;

/// Ticks within which a peer counts as recently heard (two heartbeat intervals at the
/// default configuration).
const HEARD_RECENTLY_TICKS: u64 = 6;

/// Follow-ups that must wait until the Ready is advanced.
#[derive(Default)]
struct AfterReady {
    unreachable: Vec<u64>,
    snapshots: Vec<(u64, SnapshotStatus)>,
}

/// The driver of a running node; `None` once it stopped (on shutdown, the handle takes it out
/// and drops it, which closes the engine).
pub(crate) type DriverCell<S> = Arc<Mutex<Option<Driver<S>>>>;

/// The Ready loop task: runs until shutdown, a storage error, or every input sender is gone.
pub(crate) async fn drive<S: StateMachine>(
    cell: DriverCell<S>,
    mut rx: mpsc::UnboundedReceiver<Input<S>>,
    tick: Duration,
    running: crate::stopped::Running,
) {
    // Dropped however this ends (return, panic, abort): tells `RaftLog::stopped`.
    let _running = running;
    // A starting node asks its peers about itself before it handles any input, so that its
    // queries carry where its log ended on disk: what it acknowledged beyond that, it
    // acknowledged in an earlier incarnation (see `Rejoin::record`).
    let started = match cell.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        Some(driver) => driver.rejoin_step(),
        None => return,
    };
    if let Err(e) = started {
        if let Some(driver) = cell.lock().unwrap_or_else(|p| p.into_inner()).take() {
            driver.finish(Err(e));
        }
        return;
    }
    let mut next_tick = Instant::now() + tick;
    let sleep = tokio::time::sleep_until(next_tick);
    tokio::pin!(sleep);
    let mut snapshot: Option<SnapshotTask> = None;
    loop {
        let (first, serialized) = tokio::select! {
            biased;
            input = rx.recv() => match input {
                Some(input) => (Some(input), None),
                None => (Some(Input::Shutdown), None),
            },
            done = async { snapshot.as_mut().expect("guarded by is_some").await },
                if snapshot.is_some() => (None, Some(done)),
            _ = &mut sleep => (None, None),
        };
        if serialized.is_some() {
            snapshot = None;
        }
        let mut stop = {
            let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
            let Some(driver) = guard.as_mut() else {
                return;
            };
            match serialized.map(|done| driver.snapshot_serialized(done)) {
                Some(Err(e)) => Some(Err(e)),
                _ => driver.turn(first, &mut rx, tick, &mut next_tick),
            }
        };
        if stop.is_none() {
            stop = ready_rounds(&cell, &mut snapshot).await;
        }
        if let Some(result) = stop {
            if let Some(driver) = cell.lock().unwrap_or_else(|p| p.into_inner()).take() {
                driver.finish(result);
            }
            return;
        }
        // Held appends leave once their hold is over, whether or not anything else happens.
        let deferred_due = match cell.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(driver) => driver.flush_deferred(Instant::now()),
            None => return,
        };
        let wake = deferred_due.map_or(next_tick, |due| due.min(next_tick));
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
    }
}

/// Handles the Readies of a turn (a Ready may make another one ready at once: bounded
/// rounds). When a Ready has messages to send *and* something to fsync, the write runs on a
/// blocking thread while the loop awaits it: `Network::send` only queues, and the runtime
/// transmits while the loop is not running, so with the fsync on the loop a leader's appends
/// would leave after its own fsync instead of overlapping it (the Raft thesis §10.2.1), and
/// nothing else would be served meanwhile. Then starts a snapshot if one is due and none is
/// in flight (into `snapshot`). `Some(result)` when the loop must stop.
async fn ready_rounds<S: StateMachine>(
    cell: &DriverCell<S>,
    snapshot: &mut Option<SnapshotTask>,
) -> Option<Result<(), LogError>> {
    for _ in 0..4 {
        let step = {
            let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
            let driver = guard.as_mut()?;
            driver.ready_begin()
        };
        match step {
            Err(e) => return Some(Err(e)),
            Ok(ReadyStep::Idle) => break,
            Ok(ReadyStep::Handled) => {}
            Ok(ReadyStep::Persist(pending)) => {
                let (mut rd, after) = *pending;
                let prepared = {
                    let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
                    guard.as_mut()?.ready_prepare(&mut rd)
                };
                let (snapshot, write) = match prepared {
                    Ok(p) => p,
                    Err(e) => return Some(Err(e)),
                };
                if let Some(mut write) = write {
                    // The fsync runs off the loop: meanwhile the runtime sends the messages
                    // just queued and serves everything else (nothing touches the RawNode:
                    // its inputs wait in the channel).
                    if let Err(e) = off_loop("raft write task", move || write.run()).await {
                        return Some(Err(e));
                    }
                }
                let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = guard.as_mut()?.ready_persisted(rd, after, snapshot) {
                    return Some(Err(e));
                }
            }
        }
    }
    let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
    let driver = guard.as_mut()?;
    if snapshot.is_none() {
        *snapshot = driver.maybe_snapshot();
    }
    driver.publish_status();
    None
}

/// What [`Driver::ready_begin`] did.
enum ReadyStep {
    /// No Ready.
    Idle,
    /// A Ready, handled completely.
    Handled,
    /// A Ready whose messages are sent (queued) and whose persistence and the rest wait for
    /// [`Driver::ready_finish`].
    Persist(Box<(::raft::Ready, AfterReady)>),
}

impl<S: StateMachine> Driver<S> {
    /// One turn: `first` (if the wait ended on an input), whatever else is queued, the tick if
    /// due. The Readies follow ([`ready_rounds`]). `Some(result)` when the loop must stop.
    fn turn(
        &mut self,
        first: Option<Input<S>>,
        rx: &mut mpsc::UnboundedReceiver<Input<S>>,
        tick: Duration,
        next_tick: &mut Instant,
    ) -> Option<Result<(), LogError>> {
        let mut reads = Vec::new();
        self.read_ctx = None;
        let mut stop = match first {
            Some(input) => self.handle(input, &mut reads),
            None => false,
        };
        for _ in 0..INPUT_BATCH_MAX {
            if stop {
                break;
            }
            match rx.try_recv() {
                Ok(input) => stop |= self.handle(input, &mut reads),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => stop = true,
            }
        }
        if stop {
            return Some(Ok(()));
        }
        self.issue_reads(reads);
        let now = Instant::now();
        if now >= *next_tick {
            // A node that may not vote must not campaign either: its election timer stands.
            if self.rejoin.is_none() {
                self.node.tick();
            }
            self.ticks += 1;
            *next_tick += tick;
            if *next_tick < now {
                *next_tick = now + tick;
            }
            self.on_tick();
            self.campaign_if_due();
            if let Err(e) = self.rejoin_step() {
                return Some(Err(e));
            }
            if let Err(e) = self.node.mut_store().write_seen() {
                return Some(Err(e));
            }
            // A tick may have produced regular heartbeats: those go to every peer.
            self.read_ctx = None;
        }
        None
    }

    /// Ends the node: waiting proposers learn why, handles see it stopped. Dropping `self`
    /// closes the engine.
    pub(crate) fn finish(mut self, result: Result<(), LogError>) {
        let err = match result {
            Ok(()) => {
                // Seen terms that grew since the last tick go with an orderly stop.
                if let Err(e) = self.node.mut_store().write_seen() {
                    tracing::warn!(node = self.config.id, error = %e, "seen terms not written");
                }
                LogError::Shutdown
            }
            Err(e) => {
                tracing::error!(node = self.config.id, error = %e, "raft node stops on a storage error");
                e
            }
        };
        for (_, (_, reply)) in std::mem::take(&mut self.pending_proposals) {
            let _ = reply.send(ProposeOutcome::Failed(err.clone()));
        }
        self.shared.stopped.store(true, Ordering::SeqCst);
    }

    /// Handles one input; true to stop.
    fn handle(&mut self, input: Input<S>, reads: &mut Vec<ReadReply>) -> bool {
        match input {
            Input::Raft(msgs) => {
                for m in msgs {
                    if !matches!(
                        m.get_msg_type(),
                        MessageType::MsgRequestPreVote | MessageType::MsgRequestPreVoteResponse
                    ) {
                        self.node.mut_store().note_seen(m.from, m.term);
                    }
                    // What a dead leader sent before it died may still be queued: it must not
                    // make this follower believe in that leader again.
                    if self
                        .departed
                        .is_some_and(|(id, term, _)| m.from == id && m.term <= term)
                    {
                        continue;
                    }
                    self.heard.insert(m.from, self.ticks);
                    if !self.rejoin_admits(&m) {
                        continue;
                    }
                    let mut m = m;
                    let log = &self.node.raft.raft_log;
                    if m.get_msg_type() == MessageType::MsgHeartbeat && m.commit > log.last_index()
                    {
                        // A heartbeat commits up to what the leader believes this node has
                        // matched; raft-rs stops the process if that is beyond the log, which
                        // happens only if this node lost entries it acknowledged (an emptied
                        // disk). Commit only what an append brings, with its log check.
                        m.commit = log.committed;
                    }
                    if let Err(e) = self.node.step(m) {
                        tracing::debug!(node = self.config.id, error = %e, "raft message ignored");
                    }
                }
            }
            Input::Propose { data, reply } => self.propose(data, reply),
            Input::Read { reply } => reads.push(reply),
            Input::Transfer(to) => self.node.transfer_leader(to),
            Input::PeerDown(peer) => self.leader_died(peer),
            Input::StateQuery {
                from,
                last_index,
                term,
            } => {
                let answer = self.state_answer(from, last_index, term);
                self.send_wire(from, &Wire::StateAnswer(answer));
            }
            Input::StateAnswer { from, answer } => {
                if let Some(r) = self.rejoin.as_mut() {
                    r.record(from, answer);
                }
            }
            Input::Shutdown => return true,
        }
        false
    }

    /// This node's answer to a peer (transport id) that asks for its state, its log ending
    /// at `last_index`. A leader that believed the peer held more (the peer lost entries it
    /// had acknowledged: an emptied store, an older copy) stops believing it: it probes the
    /// peer afresh from where its log ends, and no longer counts it towards committing
    /// entries it does not hold.
    fn state_answer(&mut self, from: u64, last_index: u64, term: u64) -> StateAnswer {
        let asker = to_raft(from);
        let seen_term = self.node.store().seen().get(&asker).copied().unwrap_or(0);
        let raft = &mut self.node.raft;
        let mut answer = StateAnswer {
            term: raft.term,
            last_index: raft.raft_log.last_index(),
            seen_term,
            matched: 0,
            asked_last_index: last_index,
            asked_term: term,
            leader: (raft.leader_id != ::raft::INVALID_ID).then(|| raft.leader_id - 1),
            lost: 0,
        };
        if raft.state == StateRole::Leader {
            let term_now = raft.term;
            if self.lost_acks.as_ref().is_none_or(|(t, _)| *t != term_now) {
                self.lost_acks = Some((term_now, BTreeMap::new()));
            }
            let lost = self.lost_acks.as_mut().map(|(_, l)| l);
            if let Some(pr) = raft.mut_prs().get_mut(asker) {
                answer.matched = pr.matched;
                if let Some(l) = lost {
                    // Kept for the term: a later query's log end may have grown past it
                    // (this leader's probing), which says nothing about the store the
                    // asker started from; the asker compares it with that store's end.
                    let lost_now = if pr.matched > last_index {
                        pr.matched
                    } else {
                        0
                    };
                    let kept = l.get(&asker).copied().unwrap_or(0).max(lost_now);
                    if kept > 0 {
                        l.insert(asker, kept);
                    }
                    answer.lost = kept;
                }
                if pr.matched > last_index {
                    tracing::warn!(
                        node = self.config.id,
                        peer = from,
                        matched = pr.matched,
                        last_index,
                        "a follower lost entries it had acknowledged: probing it afresh"
                    );
                    pr.matched = 0;
                    pr.become_probe();
                    pr.next_idx = last_index + 1;
                }
            }
        }
        answer
    }

    /// Starts one ReadIndex request for every read of this turn (and those deferred), or
    /// defers them while raft-rs would drop the request: no known leader, or a leader that
    /// has not committed an entry in its term yet.
    fn issue_reads(&mut self, reads: Vec<ReadReply>) {
        if !reads.is_empty() && self.deferred_reads.is_empty() {
            self.deferred_since = self.ticks;
        }
        self.deferred_reads.extend(reads);
        if self.deferred_reads.is_empty() {
            return;
        }
        let raft = &self.node.raft;
        let ready = match raft.state {
            StateRole::Leader => raft.commit_to_current_term(),
            _ => raft.leader_id != 0,
        };
        if !ready {
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx = self.next_read_ctx.wrapping_add(1);
        self.node.read_index(ctx.to_be_bytes().to_vec());
        self.read_ctx = Some(ctx.to_be_bytes().to_vec());
        let batch = std::mem::take(&mut self.deferred_reads);
        self.pending_reads.insert(ctx, (self.ticks, batch));
    }

    /// A peer's process died. If it was this follower's leader, the follower forgets it (so
    /// it grants (pre-)votes at once instead of honouring the dead leader's lease, and its
    /// unanswered read index requests are issued again to the next leader), and plans
    /// a campaign: on the next tick for the surviving follower with the lowest id, two ticks
    /// later for each next one, so that normally a single candidate runs and no vote splits
    /// (one that is behind is refused by the up-to-date ones, and the next tries). The
    /// election timeout stays the fallback. Every follower hears of the death at about the
    /// same moment, through its own sentinel.
    fn leader_died(&mut self, peer: u64) {
        let raft = &mut self.node.raft;
        let dead = super::to_raft(peer);
        if raft.state != StateRole::Follower || raft.leader_id != dead || dead == raft.id {
            return;
        }
        raft.leader_id = ::raft::INVALID_ID;
        let until = self.ticks + 2 * self.config.election_tick as u64;
        self.departed = Some((dead, raft.term, until));
        // Read index requests sent to the dead leader will never be answered: issue them
        // again once a leader is known, instead of letting them expire.
        if !self.pending_reads.is_empty() {
            self.deferred_since = self.ticks;
            for (_, (_, replies)) in self.pending_reads.drain() {
                self.deferred_reads.extend(replies);
            }
        }
        let me = self.config.id;
        let rank = self
            .config
            .peers
            .iter()
            .filter(|&&p| p != peer && p < me)
            .count() as u64;
        self.campaign_at = Some((self.ticks + 1 + 2 * rank, until));
        tracing::info!(
            node = me,
            leader = peer,
            rank,
            "leader process gone; campaigning early"
        );
    }

    /// Runs the campaign planned by [`Driver::leader_died`] when due, and again every round
    /// of the survivors' turns while no leader is known (a pre-vote that reached a peer
    /// before the news of the death did is ignored by it), for two election timeouts at most;
    /// stops once a leader is known or this node stands in a real election.
    fn campaign_if_due(&mut self) {
        let raft = &self.node.raft;
        if self.departed.is_some_and(|(_, term, until)| {
            (raft.term > term && raft.leader_id != ::raft::INVALID_ID) || self.ticks > until
        }) {
            self.departed = None;
        }
        let Some((at, until)) = self.campaign_at else {
            return;
        };
        if self.rejoin.is_some()
            || raft.leader_id != ::raft::INVALID_ID
            || matches!(raft.state, StateRole::Leader | StateRole::Candidate)
            || self.ticks > until
        {
            self.campaign_at = None;
            return;
        }
        if self.ticks < at {
            return;
        }
        let survivors = self.config.peers.len().saturating_sub(1).max(1) as u64;
        self.campaign_at = Some((self.ticks + 2 * survivors, until));
        tracing::info!(node = self.config.id, "early campaign");
        if let Err(e) = self.node.campaign() {
            tracing::debug!(node = self.config.id, error = %e, "early campaign refused");
        }
    }

    /// Whether a node that may not vote yet steps `m`: requests that would make it vote
    /// or campaign are dropped.
    fn rejoin_admits(&self, m: &Message) -> bool {
        self.rejoin.is_none()
            || !matches!(
                m.get_msg_type(),
                MessageType::MsgRequestVote
                    | MessageType::MsgRequestPreVote
                    | MessageType::MsgTimeoutNow
            )
    }

    /// Moves a node that may not vote yet along, once per tick: asks the peers that have
    /// not answered for their state. While only checking its store (no mark on disk), ends
    /// the check once every peer answered, or after one election timeout once a majority
    /// less one peer answered (enough to make a quorum with this node), unless an answer
    /// shows the store is older than what this node had done: then it marks the store and
    /// rejoins as an emptied one does. Rejoining, decides once enough peers have answered
    /// whether the cluster is new (nobody has a history: vote at once) or is being rejoined
    /// (follow a leader of a term at least every term reported, and catch up to its first
    /// committed entry of its term); then marks the leader's term as voted in, and once
    /// that is on disk lets the node vote. `Err` on a storage error.
    fn rejoin_step(&mut self) -> Result<(), LogError> {
        if self.rejoin.is_none() {
            return Ok(());
        }
        let me = self.config.id;
        let ticks = self.ticks;
        let peers: Vec<u64> = self
            .config
            .peers
            .iter()
            .copied()
            .filter(|&p| p != me)
            .collect();
        let query = Wire::StateQuery {
            last_index: self.node.raft.raft_log.last_index(),
            term: self.node.raft.term,
        };
        let Some(r) = self.rejoin.as_mut() else {
            return Ok(());
        };
        if r.started_at_index.is_none() {
            r.started_at_index = Some(self.node.raft.raft_log.last_index());
        }
        if peers.is_empty() {
            // A cluster of one: nobody else could have a history.
            self.node.mut_store().end_rejoin()?;
            self.rejoin = None;
            return Ok(());
        }
        if r.checking {
            if let Some((peer, a)) = r.older {
                tracing::warn!(
                    node = me,
                    peer,
                    seen_term = a.seen_term,
                    matched = a.matched,
                    asked_last_index = a.asked_last_index,
                    "store older than what a peer saw of this node (restored from an older \
                     copy, or it lost writes): catching up before voting"
                );
                r.checking = false;
                self.node.mut_store().begin_rejoin()?;
                self.shared
                    .stats
                    .older_stores
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            let timeout = self.config.election_tick as u64;
            // A vote of this node counts only in a quorum, which holds it and a majority
            // less one of its peers; those peers are up and answer. So waiting for that
            // many answers costs no election, and a node started before its peers (hosts
            // coming up one by one) is checked by the first of them to come up too.
            let n = peers.len() + 1;
            let quorum_peers = (n / 2 + 1) - 1;
            // The node's ticks count from its start.
            // A named leader that has not answered is waited for a while longer.
            let leader_waited =
                !r.leader_unheard(me) || ticks >= CHECK_LEADER_WAIT_TIMEOUTS * timeout;
            if r.answers.len() >= peers.len()
                || (ticks >= timeout && r.answers.len() >= quorum_peers && leader_waited)
            {
                tracing::debug!(
                    node = me,
                    answers = ?r.answers,
                    started_at_index = ?r.started_at_index,
                    ticks,
                    "store checked against the peers' accounts: votes"
                );
                self.rejoin = None;
                return Ok(());
            }
            for p in r.due(&peers, ticks) {
                self.send_wire(p, &query);
            }
            return Ok(());
        }
        if let Some((term, vote)) = r.finishing {
            if self.node.store().durable_vote() == (term, vote) || self.node.raft.term > term {
                self.node.mut_store().end_rejoin()?;
                self.rejoin = None;
                tracing::info!(node = me, term, "store caught up: votes again");
            }
            return Ok(());
        }
        let Some(floor) = r.floor else {
            // Enough answers that every quorum of an earlier election includes one of them.
            let n = peers.len() + 1;
            let needed = n - (n / 2 + 1) + 1;
            if r.answers.len() >= needed {
                let raft = &self.node.raft;
                let mine_empty = raft.term == 0 && raft.raft_log.last_index() == 0;
                // A peer may have seen this node in a term it did not enter itself (a vote
                // request it ignored while it had a leader).
                let floor = (r.answers.values())
                    .map(|a| a.term.max(a.seen_term))
                    .max()
                    .unwrap_or(0);
                let history = r.answers.values().any(|a| a.term > 0 || a.last_index > 0);
                if mine_empty && !history {
                    self.node.mut_store().end_rejoin()?;
                    self.rejoin = None;
                    tracing::debug!(node = me, "store started empty in a new cluster");
                    return Ok(());
                }
                r.floor = Some(floor);
                tracing::warn!(
                    node = me,
                    floor,
                    "store empty or older than the cluster's history: catching up before voting"
                );
                return Ok(());
            }
            for p in r.due(&peers, ticks) {
                self.send_wire(p, &query);
            }
            return Ok(());
        };
        // Caught up once an entry of the current leader's term is committed here: the
        // leader's log holds every entry committed before (leader completeness; they were
        // committed in terms up to `floor`), and this log now holds that prefix.
        let raft = &mut self.node.raft;
        let committed = raft.raft_log.committed;
        if raft.state == StateRole::Follower
            && raft.term >= floor
            && raft.leader_id != ::raft::INVALID_ID
            && raft.raft_log.term(committed).is_ok_and(|t| t == raft.term)
        {
            // The current term has a leader: this node votes for nobody else in it, which
            // an earlier incarnation may have done (every later term is safe: above `floor`).
            if raft.vote == ::raft::INVALID_ID {
                raft.vote = raft.leader_id;
            }
            r.finishing = Some((raft.term, raft.vote));
        }
        Ok(())
    }

    /// Sends one [`Wire`] value to a peer (transport id), best effort.
    fn send_wire(&self, to: u64, wire: &Wire) {
        match transport::encode(wire) {
            Ok(payload) => {
                if let Err(e) = self.network.send(to, payload) {
                    tracing::debug!(to, error = %e, "send failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a message"),
        }
    }

    fn leader_hint(&self) -> Option<u64> {
        match self.node.raft.leader_id {
            0 => None,
            id => Some(to_node(id)),
        }
    }

    fn propose(&mut self, data: Vec<u8>, reply: ProposeReply<S::Output>) {
        if self.node.raft.state != StateRole::Leader {
            let _ = reply.send(ProposeOutcome::NotLeader(self.leader_hint()));
            return;
        }
        match self.node.propose(Vec::new(), data) {
            Ok(()) => {
                let index = self.node.raft.raft_log.last_index();
                let term = self.node.raft.term;
                if let Some((_, old)) = self.pending_proposals.insert(index, (term, reply)) {
                    let _ = old.send(ProposeOutcome::Retry("log index reused".into()));
                }
            }
            Err(e) => {
                let _ = reply.send(ProposeOutcome::Retry(e.to_string()));
            }
        }
    }

    fn on_tick(&mut self) {
        // Read requests lost on the way (no leader, a leader without a commit in its term,
        // a dropped message) are answered "retry" after two election timeouts.
        let expiry = 2 * self.config.election_tick as u64;
        let ticks = self.ticks;
        if !self.deferred_reads.is_empty() && ticks.saturating_sub(self.deferred_since) >= expiry {
            for r in self.deferred_reads.drain(..) {
                let _ = r.send(Err("no leader to serve a read index".into()));
            }
        }
        // A follower's read index request may have reached a leader that had not committed
        // an entry of its term yet (just elected), and raft-rs drops it without an answer:
        // ask again after a few ticks rather than wait for the expiry.
        if self.node.raft.state == StateRole::Follower && self.node.raft.leader_id != 0 {
            let stale: Vec<u64> = self
                .pending_reads
                .iter()
                .filter(|(_, (issued, _))| ticks.saturating_sub(*issued) >= READ_INDEX_RESEND_TICKS)
                .map(|(ctx, _)| *ctx)
                .collect();
            for ctx in stale {
                if let Some((issued, replies)) = self.pending_reads.remove(&ctx) {
                    if self.deferred_reads.is_empty() {
                        self.deferred_since = issued;
                    }
                    self.deferred_reads.extend(replies);
                }
            }
        }
        self.pending_reads.retain(|_, (issued, replies)| {
            if ticks.saturating_sub(*issued) < expiry {
                return true;
            }
            for r in replies.drain(..) {
                let _ = r.send(Err("read index request expired".into()));
            }
            false
        });
        // Forget proposers and readers that have given up.
        if ticks % 64 == 0 {
            self.pending_proposals.retain(|_, (_, r)| !r.is_closed());
            self.waiting_reads.retain_mut(|(_, rs)| {
                rs.retain(|r| !r.is_closed());
                !rs.is_empty()
            });
        }
    }

    /// Takes the next Ready, if any, and sends its messages (a leader's appends go out
    /// before its own fsync). Finishes it at once when it has nothing to persist or sent
    /// nothing; otherwise hands it back so the loop can let the messages leave first.
    fn ready_begin(&mut self) -> Result<ReadyStep, LogError> {
        if !self.node.has_ready() {
            return Ok(ReadyStep::Idle);
        }
        let mut after = AfterReady::default();
        let mut rd = self.node.ready();
        let sent = !rd.messages().is_empty();
        if sent {
            self.send(rd.take_messages(), &mut after);
        }
        let persists = !rd.snapshot().is_empty() || !rd.entries().is_empty() || rd.hs().is_some();
        if sent && persists {
            return Ok(ReadyStep::Persist(Box::new((rd, after))));
        }
        self.ready_finish((rd, after))?;
        Ok(ReadyStep::Handled)
    }

    /// Persists a Ready (one fsync), then sends what had to wait for it, applies, answers and
    /// advances.
    fn ready_finish(
        &mut self,
        (mut rd, after): (::raft::Ready, AfterReady),
    ) -> Result<(), LogError> {
        let (snapshot, write) = self.ready_prepare(&mut rd)?;
        if let Some(mut write) = write {
            blocking(|| write.run())?;
        }
        self.ready_persisted(rd, after, snapshot)
    }

    /// Updates the store for a Ready's snapshot, entries and hard state and returns the write
    /// that makes them durable (run it before [`Driver::ready_persisted`]).
    fn ready_prepare(
        &mut self,
        rd: &mut ::raft::Ready,
    ) -> Result<(Option<Snapshot>, Option<PendingWrite>), LogError> {
        let snapshot: Option<Snapshot> = if rd.snapshot().is_empty() {
            None
        } else {
            Some(rd.snapshot().clone())
        };
        let entries = rd.take_entries();
        let must_sync = rd.must_sync();
        let write =
            self.node
                .mut_store()
                .prepare(snapshot.as_ref(), &entries, rd.hs(), must_sync)?;
        Ok((snapshot, write))
    }

    /// The rest of a Ready once its write is durable: installs its snapshot, sends what waited
    /// for the write, applies, answers and advances.
    fn ready_persisted(
        &mut self,
        mut rd: ::raft::Ready,
        mut after: AfterReady,
        snapshot: Option<Snapshot>,
    ) -> Result<(), LogError> {
        if let Some(snap) = &snapshot {
            self.install_snapshot(snap)?;
        }
        if !rd.persisted_messages().is_empty() {
            self.send(rd.take_persisted_messages(), &mut after);
        }
        self.on_read_states(rd.take_read_states());
        self.apply(rd.take_committed_entries())?;
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit);
        }
        self.send(light.take_messages(), &mut after);
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        self.resolve_reads();
        for id in after.unreachable {
            self.node.report_unreachable(id);
        }
        for (id, status) in after.snapshots {
            self.node.report_snapshot(id, status);
        }
        Ok(())
    }

    /// Sends a ReadIndex round's heartbeats to a majority and one spare only.
    ///
    /// raft-rs confirms a read index with a heartbeat to every follower, but the leader needs
    /// acknowledgements from a majority (itself included), and each extra follower costs a
    /// message each way and a wake-up (about 70 us of CPU per follower on the reference
    /// machine). So the heartbeats carrying this turn's read context go to the followers
    /// heard from most recently, one more than a majority needs (with exactly a majority the
    /// read waits for the slower of two busy followers, which cost 12% of the 100+100
    /// scenario's throughput), provided that many were heard within
    /// [`HEARD_RECENTLY_TICKS`]; otherwise to everyone. While appends go quorum-first
    /// ([`Driver::append_quorum`]), the followers whose appends are held back come first
    /// (highest ids first): they are idle between their batches, where the ones that get
    /// every append at once are often in the middle of an fsync on their loop (1 + 1
    /// scenario, 7 interleaved pairs: reads 2-5% faster, +4% calls/s). Safety is unchanged: the read
    /// completes only on a majority's acknowledgement. If a chosen follower has just died,
    /// the next regular heartbeat (which carries the last pending read context to every
    /// follower) completes the read, at most one heartbeat interval later.
    fn narrow_read_heartbeats(&self, msgs: &mut Vec<Message>) {
        let Some(ctx) = &self.read_ctx else {
            return;
        };
        let is_read_beat =
            |m: &Message| m.get_msg_type() == MessageType::MsgHeartbeat && m.context == *ctx;
        if !msgs.iter().any(is_read_beat) {
            return;
        }
        // A majority, less the leader itself, plus one spare.
        let needed = (self.config.peers.len() / 2 + 1).min(self.config.peers.len() - 1);
        let mut recent = self.recently_heard();
        if recent.len() < needed {
            return;
        }
        if self.append_quorum().is_some() {
            // Every follower is in `recent`; the held-back ones have the highest ids.
            recent.sort_unstable_by(|a, b| b.cmp(a));
        }
        let chosen = &recent[..needed];
        msgs.retain(|m| !is_read_beat(m) || chosen.contains(&m.to));
    }

    /// The peers (raft ids, not this node) heard within [`HEARD_RECENTLY_TICKS`], most
    /// recently heard first; ties broken by id so the order is deterministic.
    fn recently_heard(&self) -> Vec<u64> {
        let me = self.node.raft.id;
        let mut recent: Vec<(u64, u64)> = self
            .heard
            .iter()
            .filter(|(id, at)| {
                **id != me && self.ticks.saturating_sub(**at) <= HEARD_RECENTLY_TICKS
            })
            .map(|(id, at)| (*at, *id))
            .collect();
        recent.sort_unstable_by(|a, b| b.cmp(a));
        recent.into_iter().map(|(_, id)| id).collect()
    }

    /// The followers (raft ids) a leader sends its appends to at once: as many as a commit
    /// needs (half of the followers), those with the lowest ids, provided every follower was
    /// heard recently and is replicating. `None` (everyone at once) when deferring is off, this
    /// node does not lead, or some follower has gone quiet or is being probed.
    fn append_quorum(&self) -> Option<Vec<u64>> {
        if self.config.defer_appends.is_zero() || self.node.raft.state != StateRole::Leader {
            return None;
        }
        let followers = self.config.peers.len().saturating_sub(1);
        let needed = self.config.peers.len() / 2;
        if needed == 0 || needed >= followers {
            return None;
        }
        // Every follower heard lately and taking appends in the pipelined state: not one that
        // is probing (a new leader's followers until they first answer, one that was reported
        // unreachable) or being sent a snapshot.
        let me = self.node.raft.id;
        let replicating = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, p)| **id != me && p.state == ProgressState::Replicate)
            .count();
        if self.recently_heard().len() < followers || replicating < followers {
            return None;
        }
        // The lowest ids: on a leader's death the survivors campaign in id order
        // (`leader_died`), so the first candidate is one that got every append at once and
        // wins; a lagging one would be refused by the others' pre-votes and cost a round.
        let mut ids: Vec<u64> = (self.node.raft.prs().iter())
            .map(|(id, _)| *id)
            .filter(|id| *id != me)
            .collect();
        ids.sort_unstable();
        ids.truncate(needed);
        Some(ids)
    }

    /// Sends the held appends once the oldest has waited [`RaftConfig::defer_appends`];
    /// returns when that will be if they are still held.
    pub(crate) fn flush_deferred(&mut self, now: Instant) -> Option<Instant> {
        let due = self.deferred.since? + self.config.defer_appends;
        if now < due {
            return Some(due);
        }
        self.deferred.since = None;
        let mut after = AfterReady::default();
        for (to, messages) in std::mem::take(&mut self.deferred.by_peer) {
            self.transmit(to, messages, false, &mut after);
        }
        for id in after.unreachable {
            self.node.report_unreachable(id);
        }
        None
    }

    /// Sends messages, one network payload per destination; a leader's appends to the
    /// followers a commit does not need are held back ([`Driver::append_quorum`],
    /// [`Driver::flush_deferred`]), and whatever is held for a destination goes first.
    fn send(&mut self, mut msgs: Vec<Message>, after: &mut AfterReady) {
        self.narrow_read_heartbeats(&mut msgs);
        if msgs.is_empty() {
            return;
        }
        let mut by_peer: BTreeMap<u64, PeerBatch> = BTreeMap::new();
        for m in msgs {
            let to = m.to;
            let kind = m.get_msg_type();
            match m.write_to_bytes() {
                Ok(bytes) => {
                    let slot = by_peer.entry(to).or_insert_with(|| PeerBatch {
                        appends_only: true,
                        ..PeerBatch::default()
                    });
                    slot.messages.push(bytes);
                    slot.has_snapshot |= kind == MessageType::MsgSnapshot;
                    slot.appends_only &= kind == MessageType::MsgAppend;
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a raft message"),
            }
        }
        let quorum = self.append_quorum();
        for (to, batch) in by_peer {
            if batch.appends_only && quorum.as_ref().is_some_and(|q| !q.contains(&to)) {
                self.deferred
                    .by_peer
                    .entry(to)
                    .or_default()
                    .extend(batch.messages);
                self.deferred.since.get_or_insert_with(Instant::now);
                self.shared
                    .stats
                    .appends_deferred
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut messages = self.deferred.by_peer.remove(&to).unwrap_or_default();
            messages.extend(batch.messages);
            self.transmit(to, messages, batch.has_snapshot, after);
        }
        if self.deferred.by_peer.is_empty() {
            self.deferred.since = None;
        }
    }

    /// Sends one destination's encoded messages, in payloads of bounded size.
    fn transmit(
        &mut self,
        to: u64,
        batch: Vec<Vec<u8>>,
        has_snapshot: bool,
        after: &mut AfterReady,
    ) {
        let mut ok = true;
        for chunk in split_batch(batch) {
            let payload = match transport::encode(&Wire::Raft(chunk)) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a raft batch");
                    ok = false;
                    continue;
                }
            };
            if let Err(e) = self.network.send(to_node(to), payload) {
                tracing::debug!(to = to_node(to), error = %e, "raft send failed");
                ok = false;
            }
        }
        if !ok {
            after.unreachable.push(to);
        }
        if has_snapshot {
            self.shared
                .stats
                .snapshots_sent
                .fetch_add(1, Ordering::Relaxed);
            let status = if ok {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            after.snapshots.push((to, status));
        }
    }

    /// Replaces the state with a leader's snapshot. (With a snapshot of our own being
    /// serialized, taking the state's write lock waits for it: rare, a lagging follower.)
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), LogError> {
        let index = snap.get_metadata().index;
        self.held.retain(|e| e.index > index);
        {
            let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            state
                .restore(&snap.data)
                .map_err(|e| LogError::Storage(format!("snapshot at {index}: {e}")))?;
        }
        self.applied = index;
        self.shared
            .stats
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        // Proposals at or below the snapshot were decided elsewhere; their proposers retry.
        let rest = self.pending_proposals.split_off(&(index + 1));
        for (_, (_, reply)) in std::mem::replace(&mut self.pending_proposals, rest) {
            let _ = reply.send(ProposeOutcome::Retry("replaced by a snapshot".into()));
        }
        tracing::info!(node = self.config.id, index, "installed a snapshot");
        Ok(())
    }

    /// Applies committed entries, or holds them while a snapshot is being serialized.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), LogError> {
        if self.snapshotting.is_some() {
            self.held.extend(entries);
            return Ok(());
        }
        self.apply_now(entries)
    }

    fn apply_now(&mut self, entries: Vec<Entry>) -> Result<(), LogError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::new();
        {
            let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                if e.index <= self.applied {
                    continue;
                }
                self.applied = e.index;
                let outcome = match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => None,
                    EntryType::EntryNormal => {
                        match postcard::from_bytes::<Envelope<S::Command>>(&e.data) {
                            Ok(env) => Some(ProposeOutcome::Applied(state.apply(env))),
                            Err(err) => {
                                // Every replica skips it the same way: deterministic.
                                tracing::error!(index = e.index, error = %err, "undecodable entry skipped");
                                Some(ProposeOutcome::Failed(LogError::Rejected(format!(
                                    "undecodable command: {err}"
                                ))))
                            }
                        }
                    }
                    _ => {
                        tracing::warn!(
                            index = e.index,
                            "configuration change entries are not supported; skipped"
                        );
                        None
                    }
                };
                // Everything proposed below this index was either applied or replaced.
                while let Some(entry) = self.pending_proposals.first_entry() {
                    if *entry.key() >= e.index {
                        break;
                    }
                    let (_, (_, reply)) = entry.remove_entry();
                    replies.push((reply, ProposeOutcome::Retry("entry replaced".into())));
                }
                if let Some((term, reply)) = self.pending_proposals.remove(&e.index) {
                    let out = match outcome {
                        Some(o) if term == e.term => o,
                        _ => ProposeOutcome::Retry("entry replaced by another leader".into()),
                    };
                    replies.push((reply, out));
                }
            }
        }
        // Publish before answering: once a proposal returns, status() reflects it.
        self.publish_status();
        for (reply, out) in replies {
            let _ = reply.send(out);
        }
        Ok(())
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Ok(raw) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            if let Some((_, replies)) = self.pending_reads.remove(&u64::from_be_bytes(raw)) {
                self.waiting_reads.push((rs.index, replies));
            }
        }
    }

    fn resolve_reads(&mut self) {
        let applied = self.applied;
        self.waiting_reads.retain_mut(|(index, replies)| {
            if *index > applied {
                return true;
            }
            for r in replies.drain(..) {
                let _ = r.send(Ok(()));
            }
            false
        });
    }

    /// Every `snapshot_every` applied entries: starts serializing the state on a blocking
    /// thread; entries committed meanwhile are held ([`Driver::snapshot_serialized`]).
    fn maybe_snapshot(&mut self) -> Option<SnapshotTask> {
        if self.snapshotting.is_some() {
            return None;
        }
        let every = self.config.snapshot_every;
        let last_snapshot = self.node.store().latest_snapshot().get_metadata().index;
        // Replicas that never took one start at different points of the interval.
        let early = if last_snapshot == 0 {
            let n = self.config.peers.len().max(1) as u64;
            every.saturating_mul(self.config.id % n) / n
        } else {
            0
        };
        if self.applied.saturating_add(early) < last_snapshot.saturating_add(every) {
            return None;
        }
        self.snapshotting = Some(self.applied);
        let shared = Arc::clone(&self.shared);
        Some(tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let bytes = shared
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .snapshot();
            (bytes, started.elapsed())
        }))
    }

    /// The state serialized at `snapshotting` is stored (unless a leader's snapshot beyond it
    /// was installed meanwhile) and the log compacted; then the held entries are applied.
    fn snapshot_serialized(
        &mut self,
        done: Result<(Vec<u8>, Duration), tokio::task::JoinError>,
    ) -> Result<(), LogError> {
        let Some(applied) = self.snapshotting.take() else {
            return Ok(());
        };
        let (data, serialized) =
            done.map_err(|e| LogError::Storage(format!("raft snapshot task: {e}")))?;
        let last_snapshot = self.node.store().latest_snapshot().get_metadata().index;
        if applied > last_snapshot {
            let started = std::time::Instant::now();
            let bytes = data.len();
            let margin = self.config.compact_margin;
            let store = self.node.mut_store();
            blocking(|| store.snapshot_and_compact(applied, data, margin))?;
            self.shared
                .stats
                .snapshots_taken
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                node = self.config.id,
                applied,
                bytes,
                serialize_ms = serialized.as_secs_f64() * 1e3,
                write_ms = started.elapsed().as_secs_f64() * 1e3,
                "snapshot taken, log compacted"
            );
        }
        let held = std::mem::take(&mut self.held);
        self.apply_now(held)?;
        self.resolve_reads();
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.node.raft;
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Follower if self.rejoin.as_ref().is_some_and(|r| !r.checking) => {
                Role::Recovering
            }
            StateRole::Follower => Role::Follower,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
        };
        let current = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        if role == Role::Leader && (current.role != Role::Leader || current.term != raft.term) {
            tracing::info!(node = self.config.id, term = raft.term, "leads");
        }
        drop(current);
        let status = LogStatus {
            node_id: self.config.id,
            role,
            term: raft.term,
            leader: self.leader_hint(),
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            counters: Vec::new(),
        };
        *self.shared.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
        self.shared
            .stats
            .first_index
            .store(self.node.store().truncated_index() + 1, Ordering::Relaxed);
    }
}

/// Splits encoded messages into network payloads of at most `RAFT_BATCH_MAX` messages and
/// about `RAFT_BATCH_BYTES_MAX` bytes (a larger single message, a big snapshot, goes alone).
fn split_batch(batch: Vec<Vec<u8>>) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0usize;
    for m in batch {
        if !current.is_empty()
            && (current.len() >= RAFT_BATCH_MAX || bytes + m.len() > RAFT_BATCH_BYTES_MAX)
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += m.len();
        current.push(m);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_in_count_and_bytes() {
        let big = vec![0u8; RAFT_BATCH_BYTES_MAX];
        let split = split_batch(vec![vec![1], big.clone(), vec![2], vec![3]]);
        assert_eq!(
            split.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 1, 2]
        );
        let many = split_batch(vec![vec![0u8]; RAFT_BATCH_MAX + 1]);
        assert_eq!(
            many.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![RAFT_BATCH_MAX, 1]
        );
        assert!(split_batch(Vec::new()).is_empty());
    }

    /// A check waits for the leader other peers name (not for itself named as one).
    #[test]
    fn a_check_knows_which_named_leader_has_not_answered() {
        let answer = |leader| StateAnswer {
            leader,
            ..StateAnswer::default()
        };
        let mut r = Rejoin::check();
        assert!(!r.leader_unheard(0));
        r.record(1, answer(Some(3)));
        assert!(r.leader_unheard(0));
        r.record(2, answer(Some(0)));
        r.record(3, answer(Some(3)));
        assert!(!r.leader_unheard(0));
        r.record(4, answer(None));
        assert!(!r.leader_unheard(0));
    }

    /// What proves a store older than what its node had done, and what does not.
    #[test]
    fn a_store_is_older_only_when_a_peer_saw_more_of_it() {
        // Answers to a query sent in term 5 with the log ending at 100.
        let answer = |seen_term, matched| StateAnswer {
            term: 9,
            last_index: 500,
            seen_term,
            matched,
            asked_last_index: 100,
            asked_term: 5,
            leader: None,
            lost: 0,
        };
        let mut r = Rejoin::check();
        // Peers in later terms, with longer logs, that saw no more of it than it held.
        r.record(1, answer(5, 0));
        r.record(2, answer(0, 100));
        assert_eq!(r.older, None);
        // A message of term 6 from it: term 6 was on its disk before it was sent.
        r.record(3, answer(6, 0));
        assert_eq!(r.older, Some((3, answer(6, 0))));
        // A leader holding its acknowledgement of entry 101 when its log ended at 100.
        let mut r = Rejoin::check();
        r.record(4, answer(0, 101));
        assert_eq!(r.older, Some((4, answer(0, 101))));
        // A leader that kept an acknowledgement the node lost (an earlier query showed it):
        // compared with the log end at the start, not with the later query's.
        let mut r = Rejoin::check();
        r.started_at_index = Some(100);
        let kept = |lost| StateAnswer {
            lost,
            asked_last_index: 300,
            ..answer(0, 0)
        };
        r.record(4, kept(100));
        assert_eq!(r.older, None);
        r.record(4, kept(101));
        assert_eq!(r.older, Some((4, kept(101))));
        // Only a check looks for it: a rejoining node knows already.
        let mut r = Rejoin::default();
        r.record(4, answer(0, 101));
        assert_eq!(r.older, None);
        assert_eq!(r.answers.len(), 1);
    }

    /// A node asks the peers that have not answered, once every few ticks.
    #[test]
    fn queries_go_to_the_silent_peers_every_few_ticks() {
        let mut r = Rejoin::check();
        assert_eq!(r.due(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert!(r.due(&[1, 2, 3], STATE_QUERY_EVERY_TICKS - 1).is_empty());
        r.answers.insert(2, StateAnswer::default());
        assert_eq!(r.due(&[1, 2, 3], STATE_QUERY_EVERY_TICKS), vec![1, 3]);
    }
}
