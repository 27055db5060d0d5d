//! The Raft log: tikv/raft-rs (`RawNode`) driven by a Ready loop, raft-engine as its durable
//! log, over any [`transport::Network`].
//!
//! # Shape
//!
//! ```text
//!  propose/read (any task)        network recv task               Ready loop (one task)
//!  ───────────────────────        ─────────────────               ───────────────────────
//!  RaftLog::propose ──Input──────────────────────────────────────▶ RawNode::propose
//!     │ NotLeader(l)                                               (batched per Ready)
//!     └─ call(l, ForwardPropose) ─▶ leader's recv task ──Input──▶ leader's Ready loop
//!  RaftLog::read ──Input::Read──────────────────────────────────▶ RawNode::read_index
//!  peers ── Wire::Raft ───────────▶ parse, check ──Input::Raft──▶ RawNode::step
//! ```
//!
//! * **Ready loop** (module `node`): one task per node, on the runtime that serves the node's
//!   network (so a peer message or a read costs no thread hop), owns the `RawNode` and its
//!   `EngineStorage` (module `storage`: `::raft::Storage` over raft-engine, with the recent
//!   entries in memory); it ticks, steps, proposes, persists each Ready with one fsync (a
//!   leader's on a blocking thread, after its appends have left), sends, applies committed
//!   entries through [`Deduped`] and answers proposers and readers.
//! * **Proposals** from any replica: the local Ready loop takes them if this node leads;
//!   otherwise the handle forwards the proposal to the leader by RPC
//!   (`Wire::ForwardPropose`, module `message`) and the leader answers with the output. On any doubt
//!   (no leader yet, leadership changed, entry replaced, timeout of one attempt) the proposal is
//!   retried with the same [`RequestId`] until `propose_timeout`: duplicates are answered from
//!   the duplicate table, never applied twice.
//! * **Reads**: [`ReadConsistency::Linearizable`] uses ReadIndex (raft-rs `ReadOnlyOption::Safe`:
//!   the leader confirms its leadership with a heartbeat round, sent to the recently heard
//!   followers a majority needs and one spare rather than to all of them, those whose appends
//!   are held back first), and the read is served locally
//!   once this replica has applied up to the read index; a follower's request travels to the
//!   leader inside raft-rs messages. All reads arriving in one loop turn share one ReadIndex.
//!   [`ReadConsistency::Lease`] is treated as `Linearizable` unless [`RaftConfig::lease_reads`]
//!   is set, which switches the node's ReadIndex to raft-rs `LeaseBased` (no heartbeat round;
//!   correct while clock drift stays below the election timeout; check-quorum is on).
//!   [`ReadConsistency::Stale`] reads this replica's applied state.
//! * **Snapshots**: every [`RaftConfig::snapshot_every`] applied entries the deduplicated state
//!   machine is snapshotted into raft-engine and the log compacted, keeping
//!   [`RaftConfig::compact_margin`] entries; a follower that needs compacted entries receives
//!   the snapshot (`MsgSnapshot`) and installs it. The state is serialized on a blocking
//!   thread while the Ready loop goes on (only applying waits), and the replicas' snapshots
//!   are spread over the interval: see `node.rs`.
//! * **Restart**: hard state, conf state, entries and the latest snapshot come back from
//!   raft-engine; the state machine is restored from the snapshot and the committed entries
//!   after it are applied again.
//! * Pre-vote and check-quorum are on. Membership is static (the `peers` list).
//!
//! # Quorum-first appends
//!
//! A commit needs the leader and half of its followers on disk (two of four in a group of
//! five), but raft-rs sends every append to every follower at once, and on a small machine
//! the four followers then compete for the cores the commit is waiting on. So a leader sends
//! an append at once only to the followers a commit needs, those with the lowest ids, and
//! holds the others' for up to [`RaftConfig::defer_appends`] (2 ms), then sends each of them
//! everything held in one batch: they catch up a little later, with fewer wake-ups. Only
//! appends wait; any other message to such a follower (a heartbeat, a snapshot, a vote
//! reply) takes its held appends along first, so every follower still receives its messages
//! in order. While some follower has not been heard within a few heartbeats (dead,
//! partitioned, restarting) or is not replicating (a new leader's followers until each has
//! answered, one reported unreachable, one being sent a snapshot), every append goes to
//! everyone at once. The lowest ids because a leader's death makes the survivors campaign in
//! id order (see "Failover"): the first candidate then has every entry and wins at once,
//! where a follower a couple of milliseconds behind would be refused by the others'
//! pre-votes and cost the failover a round. Safety does not depend on any of it (Raft
//! tolerates any delay); if a follower that gets appends at once dies, a commit waits at most
//! the hold for the others, until the dead one no longer counts as recently heard.
//!
//! # Failover
//!
//! A follower normally notices a dead leader when its election timeout runs out
//! ([`RaftConfig::election_tick`] ticks, randomized up to twice that: 200-400 ms by default),
//! and with check-quorum it refuses to vote for anyone before then. When the network reports
//! the leader's *process* dead ([`Network::subscribe_peer_down`]; the QUIC network learns it
//! within a millisecond from its liveness sentinels, `transport::liveness`), each follower
//! instead forgets the leader at once (so it grants votes), and the surviving followers
//! campaign in id order, one tick apart plus one: the lowest id on the next tick, the next
//! one two ticks later if no leader appeared, and so on in rounds, for two election timeouts
//! at most (pre-vote keeps a candidate that is behind from disturbing anyone; the
//! up-to-date followers refuse it and the next one runs). Read index requests a follower had
//! sent to the dead leader are sent again to the next one, and a follower whose request got
//! no answer within three ticks asks again (raft-rs drops a read index request that reaches
//! a leader before it has committed an entry of its term), and a follower drops what the
//! dead leader sent before dying (a heartbeat still queued when the report arrives would
//! otherwise make it believe in that leader again and ignore every vote request until its
//! own timeout). Measured on the reference cluster: a new leader 5-10 ms after the kill; the
//! longest client call around the kill 26-49 ms at 1+1 clients over 10 runs, 48-90 ms at
//! 10+10, about 0.2 s at 100+100 where calls take 0.1 s anyway (300-720 ms before). A whole host that dies sends no report;
//! the timeout still applies. [`RaftConfig::fast_failover`] turns this off; it is off with
//! lease reads, whose safety rests on nobody voting within the timeout.
//!
//! # Started with an empty disk
//!
//! Raft assumes a node's disk keeps what it wrote: its vote and the entries it acknowledged.
//! A node started again under its id with an emptied data directory (a replaced disk or
//! host) has neither, and voting at once would break both promises: it could vote twice in
//! one term (two leaders), and with two replicas that missed recent writes it could elect one
//! of them (committed entries it had acknowledged overwritten). So a store that starts empty
//! carries a mark on disk (`raft_rejoin`, written with its first configuration) and its node
//! neither votes nor campaigns while the mark is there: it drops vote, pre-vote and
//! timeout-now requests and does not tick its election timer (it reports
//! [`Role::Recovering`]). It first asks its peers for their term and last log index
//! (`Wire::StateQuery`), until enough have answered that every quorum of an earlier election
//! includes one of them (three of four peers in a group of five: `n - majority + 1`):
//!
//! * nobody has a history (term 0, no entries, and neither has this node): a **new
//!   cluster**. The mark goes and the node votes at once. Every node of a new cluster takes
//!   this path at its first start, which costs its first election one round of queries.
//! * otherwise the node is **rejoining**. `floor` is the largest term reported (a peer's
//!   own, or one it saw the node in): any term an
//!   earlier incarnation of the node voted in is at most `floor` (that vote's candidate, or
//!   another member of its quorum, is among those who answered). The node follows a leader
//!   of a term at least `floor`, which holds every entry committed before the disk was lost
//!   (leader completeness), and catches up until an entry of that leader's term is
//!   committed in its own log (from the log, or a snapshot): everything before it, every
//!   entry committed before the disk was lost included, is then in its log. Then it records a vote for the leader in
//!   the current term (so it votes for nobody else in a term an earlier incarnation may have
//!   voted in; every later term is above `floor`), and once that is on disk the mark is
//!   deleted and the node votes again.
//!
//! A restart in the middle keeps the mark, and begins again with the queries. What it does
//! not cover: a node emptied and restarted *while* an election it had voted in is still
//! running (the answers can then predate that election's votes), which a real disk
//! replacement is far too slow for. Tested in `tests/raft_faults.rs`
//! (`an_emptied_replica_votes_only_after_it_caught_up`: without the mark, two stale replicas
//! and the emptied one elect a leader that lacks the committed writes).
//!
//! # Started from an older copy
//!
//! A store restored from an older copy (a backup, a VM snapshot) or one that silently lost
//! writes is not empty, and breaks the same two promises. Nothing on the disk tells, but the
//! peers may: so a node whose store carries no mark checks it at *every* start, asking every
//! peer the same question (`Wire::StateQuery`), whose answer also says what the peer saw of
//! the asker: the highest term of a message it received from it (pre-votes left out: a
//! node sends a message of a term only once the term is on its disk) and, from a leader,
//! the highest index it acknowledged (acknowledged only once on its disk). The queries
//! carry the asker's term and log end, and the first ones go out before the node handles
//! any input, so they carry what its disk holds. A term seen above the one the query
//! carried, or an acknowledgement beyond the log end it carried, proves the store older
//! than what the node had done: the node writes the mark and rejoins as above. (Compared
//! with the query, not with the node when the answer is read: by then a peer's message may
//! have moved it to a later term, or the leader's probing filled its log.) Nothing the node
//! sent before asking exceeds what the query carried, so a sound store trips the check
//! only if a peer reads one of its later messages before its query (the two travel apart);
//! it then merely catches up before it votes. The check holds the node's vote until every
//! peer has answered, or, after one election timeout, until a majority less one of them
//! has: a vote counts only in a quorum, which holds the node and that many peers, all up,
//! so the wait costs no election (peers that are down are not waited for), and a node
//! started before its peers is checked by the first ones to come up. Answers name the
//! leader their sender follows, and while that leader has not answered the check goes on
//! asking for up to five election timeouts: only the leader holds what the node
//! acknowledged, and its answer can be the one that is late (in a real cluster its
//! connection to the node's dead process may still be open). A normal restart costs a tick
//! or two before the node may vote. A leader that believed the asker held more than its
//! log end (raft-rs never lowers a follower's `matched`) starts probing it from there, and
//! no longer counts it towards entries it lost; it keeps, for its term, what the follower
//! had acknowledged, and reports it to the follower's later queries too (`lost`), which
//! the follower compares with the log end it started from: a check whose first round of
//! answers was lost (peers answer within the dial backoff that follows a peer's death)
//! still learns it, although its later queries carry a log the leader has filled since.
//! Counted by `older_stores`.
//!
//! The terms seen are kept on each peer's disk (`raft_seen`, written on a tick after they
//! grew and at an orderly stop, without fsync), so they outlive the peers' restarts; what a
//! leader saw acknowledged is only in its memory. So it is a check, not a proof. Caught: a
//! copy that lacks a term the node had sent messages in (any election it took part in since
//! the copy was taken), as long as one peer that received them answers the check, even
//! after every process restarted; and a copy taken in the current term and restored while
//! the leader that replicated to it is up (the usual case: a replica restored from last
//! night's backup while the cluster runs), also when it starts long before its peers (the
//! check waits for a majority less one of them). Not caught: a copy that holds the node's
//! last term, restored after that term's leader stopped leading; and a copy whose evidence
//! is held only by peers that answer after the check ended (it ended with answers from a
//! majority less one that saw nothing newer): answers after the check are not acted on,
//! since by then its later queries would carry terms it entered in this incarnation, and a
//! peer cannot tell which incarnation a message came from (tagging messages with an
//! incarnation would close it). Tested in `tests/raft_faults.rs`
//! (`an_older_copy_of_a_replica_votes_only_after_it_caught_up`,
//! `an_older_copy_is_caught_after_every_replica_restarted`,
//! `an_older_copy_started_before_its_peers_is_caught`,
//! `the_start_check_waits_for_the_leader_the_peers_name`).
//!
//! # Ids
//!
//! Configuration, [`LogStatus`] and the network use transport [`NodeId`]s (any `u64` but
//! `u64::MAX`, 0-based ids are fine). raft-rs needs non-zero ids, so internally
//! `raft id = NodeId + 1`; nothing outside this module sees raft ids.
//!
//! # Limits
//!
//! Proposals larger than [`RaftConfig::proposal_size_max`] are rejected; at most
//! [`RaftConfig::pending_max`] proposals and reads may wait on one node at a time (more is
//! [`LogError::Unavailable`]); a Raft message batch holds at most 4096 messages and about
//! 4 MiB (a single larger message, a big snapshot, travels alone), and raft-rs
//! limits appends to [`RaftConfig::max_size_per_msg`] bytes and
//! [`RaftConfig::max_inflight_msgs`] in flight per follower (pipelining).
//!
//! # Known limits
//!
//! * Membership is static: no configuration changes (a replaced machine keeps its id and
//!   catches up from the leader's log or a snapshot, voting only once it has: see "Started
//!   with an empty disk").
//! * A snapshot travels as one message: it must fit the transport's frame limit (QUIC: 16 MiB
//!   by default).
//! * Peer messages are checked for addressing (sender and receiver are peers, the claimed
//!   sender is the transport sender) and dropped if they do not parse; a well-formed but
//!   malicious message from an authenticated peer can still trip an assertion inside raft-rs.

mod logging;
mod message;
mod node;
mod storage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ::raft::eraftpb::{Message as RaftMessage, MessageType};
use ::raft::{Config as RawConfig, RawNode, ReadOnlyOption};
use async_trait::async_trait;
use protobuf::Message as _;
use tokio::sync::oneshot;
use transport::{Incoming, Network, NodeId};

use crate::dedup::{Applied, Deduped};
use crate::log::{
    Envelope, LogError, LogStatus, ReadConsistency, ReplicatedLog, RequestId, Role,
    DEFAULT_PROPOSE_TIMEOUT,
};
use crate::state_machine::StateMachine;
use message::{ForwardReply, Wire};
use node::{Driver, Input, ProposeOutcome};

/// Default tick: 10 ms.
pub const TICK_INTERVAL_DEFAULT: Duration = Duration::from_millis(10);
/// Default election timeout in ticks (randomized by raft-rs in `[election, 2 * election)`).
pub const ELECTION_TICK_DEFAULT: usize = 20;
/// Default heartbeat interval in ticks.
pub const HEARTBEAT_TICK_DEFAULT: usize = 3;
/// Default number of applied entries between snapshots.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 10_000;
/// Default number of entries kept behind a snapshot when compacting.
pub const COMPACT_MARGIN_DEFAULT: u64 = 1_000;
/// Default longest hold of an append to a follower a commit does not need: 2 ms.
pub const DEFER_APPENDS_DEFAULT: Duration = Duration::from_millis(2);

/// Configuration of one Raft replica.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This replica's transport id (raft id = `id + 1`).
    pub id: NodeId,
    /// Every voter's transport id, this replica's included. Must be the same on every replica.
    pub peers: Vec<NodeId>,
    /// Directory of this replica's raft-engine.
    pub data_dir: PathBuf,
    /// Wall-clock length of one Raft tick.
    pub tick_interval: Duration,
    /// Election timeout in ticks.
    pub election_tick: usize,
    /// Heartbeat interval in ticks (less than `election_tick`).
    pub heartbeat_tick: usize,
    /// Applied entries between two snapshots of the state machine (then the log is compacted).
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for followers a little behind.
    pub compact_margin: u64,
    /// How long `propose`, `read` and `transfer_leader` may try before `Unavailable`.
    pub propose_timeout: Duration,
    /// Serve linearizable and lease reads by raft-rs `LeaseBased` ReadIndex (no heartbeat
    /// round; relies on bounded clock drift). Off by default.
    pub lease_reads: bool,
    /// raft-rs: appends in flight per follower (pipelining depth).
    pub max_inflight_msgs: usize,
    /// raft-rs: maximum bytes of entries in one append message.
    pub max_size_per_msg: u64,
    /// Largest encoded proposal accepted, in bytes.
    pub proposal_size_max: usize,
    /// Proposals and reads that may wait on this node at once.
    pub pending_max: usize,
    /// Campaign as soon as the network reports the leader's process dead
    /// ([`Network::subscribe_peer_down`]) instead of
    /// waiting out the election timeout (see the module docs, "Failover"). Default on; it is
    /// off whatever this says when `lease_reads` is on, whose safety rests on the timeout.
    pub fast_failover: bool,
    /// Quorum-first appends (see the module docs): a leader sends its appends at once to the
    /// followers a commit needs and holds those to the others for up to this long, to send
    /// them together. Zero sends every append at once.
    pub defer_appends: Duration,
}

impl RaftConfig {
    /// A configuration with the defaults for everything but identity and storage.
    pub fn new(id: NodeId, peers: Vec<NodeId>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            peers,
            data_dir: data_dir.into(),
            tick_interval: TICK_INTERVAL_DEFAULT,
            election_tick: ELECTION_TICK_DEFAULT,
            heartbeat_tick: HEARTBEAT_TICK_DEFAULT,
            snapshot_every: SNAPSHOT_EVERY_DEFAULT,
            compact_margin: COMPACT_MARGIN_DEFAULT,
            propose_timeout: DEFAULT_PROPOSE_TIMEOUT,
            lease_reads: false,
            max_inflight_msgs: 256,
            max_size_per_msg: 1 << 20,
            proposal_size_max: 1 << 20,
            pending_max: 65_536,
            fast_failover: true,
            defer_appends: DEFER_APPENDS_DEFAULT,
        }
    }

    fn validate(&self) -> Result<(), LogError> {
        let bad = |m: &str| Err(LogError::Rejected(format!("raft config: {m}")));
        if self.id == u64::MAX || self.peers.contains(&u64::MAX) {
            return bad("node id u64::MAX is reserved");
        }
        if !self.peers.contains(&self.id) {
            return bad("peers must include this node's id");
        }
        let mut sorted = self.peers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.peers.len() {
            return bad("duplicate peer id");
        }
        if self.heartbeat_tick == 0 || self.election_tick <= self.heartbeat_tick {
            return bad("need 0 < heartbeat_tick < election_tick");
        }
        if self.tick_interval.is_zero() || self.snapshot_every == 0 {
            return bad("tick_interval and snapshot_every must be positive");
        }
        Ok(())
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
struct Stats {
    snapshots_taken: AtomicU64,
    snapshots_installed: AtomicU64,
    snapshots_sent: AtomicU64,
    forwarded: AtomicU64,
    first_index: AtomicU64,
    appends_deferred: AtomicU64,
    older_stores: AtomicU64,
}

/// A copy of a node's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStats {
    /// Snapshots this node took (and compacted its log after).
    pub snapshots_taken: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
    /// Snapshots sent to followers.
    pub snapshots_sent: u64,
    /// Proposals this node forwarded to a leader.
    pub forwarded: u64,
    /// First index still in the log (everything below is compacted).
    pub first_index: u64,
    /// Append batches this node, as leader, held back for a follower a commit did not need.
    pub appends_deferred: u64,
    /// 1 if this node's store turned out, at its start, older than what its peers had seen
    /// of it (restored from an older copy, or it lost writes), so that it catches up before
    /// it votes ("Started from an older copy" in the module docs); 0 otherwise.
    pub older_stores: u64,
}

/// State shared by the handle, the Ready loop and the receive task.
pub(crate) struct Shared<S: StateMachine> {
    state: RwLock<Deduped<S>>,
    status: Mutex<LogStatus>,
    stats: Stats,
    stopped: AtomicBool,
}

/// Everything the handle and the receive task need (not the task handles).
struct Inner<S: StateMachine> {
    config: RaftConfig,
    shared: Arc<Shared<S>>,
    input: tokio::sync::mpsc::UnboundedSender<Input<S>>,
    network: Arc<dyn Network>,
    pending: AtomicUsize,
}

/// A replica of a Raft-replicated log driving `S`. See the module docs.
pub struct RaftLog<S: StateMachine> {
    inner: Arc<Inner<S>>,
    driver: node::DriverCell<S>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stopped: crate::Stopped,
}

pub(crate) fn to_node(raft_id: u64) -> NodeId {
    raft_id - 1
}

fn to_raft(node: NodeId) -> u64 {
    node + 1
}

fn applied_to_result<O>(a: Applied<O>) -> Result<O, LogError> {
    match a {
        Applied::Output(o) => Ok(o),
        Applied::Expired => Err(LogError::Rejected(
            "duplicate request too old to answer".into(),
        )),
    }
}

/// Decrements the pending counter when dropped.
struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: StateMachine> RaftLog<S> {
    /// Opens (or creates) the replica's storage in `config.data_dir`, recovers its state
    /// (`initial_state` is the empty state machine recovery starts from), starts the Ready
    /// loop task and the network receive task, and returns the handle. Must be called
    /// inside a tokio runtime. Every replica of the cluster is started the same way; a
    /// leader is elected within a few election timeouts.
    pub fn start(
        config: RaftConfig,
        network: Arc<dyn Network>,
        initial_state: S,
    ) -> Result<Arc<Self>, LogError> {
        config.validate()?;
        if network.local_id() != config.id {
            return Err(LogError::Rejected(format!(
                "network id {} differs from config id {}",
                network.local_id(),
                config.id
            )));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| LogError::Rejected("RaftLog::start needs a tokio runtime".into()))?;
        let voters: Vec<u64> = config.peers.iter().map(|p| to_raft(*p)).collect();
        let store = storage::EngineStorage::open(&config.data_dir, &voters)?;
        let mut state = Deduped::new(initial_state);
        let snap = store.latest_snapshot();
        let applied = if snap.get_metadata().index > 0 {
            state
                .restore(&snap.data)
                .map_err(|e| LogError::Storage(format!("restore snapshot: {e}")))?;
            snap.get_metadata().index
        } else {
            0
        };
        debug_assert!(store.applied_on_disk() >= applied);
        let raw_config = RawConfig {
            id: to_raft(config.id),
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            applied,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            // Followers learn a new commit index from the next append or heartbeat instead of
            // an empty append to each at every commit: 4 messages and 4 wake-ups fewer per
            // write. Clients read and write at the leader; a follower's ReadIndex round still
            // sends it a heartbeat with the commit index.
            skip_bcast_commit: true,
            read_only_option: if config.lease_reads {
                ReadOnlyOption::LeaseBased
            } else {
                ReadOnlyOption::Safe
            },
            ..RawConfig::default()
        };
        raw_config
            .validate()
            .map_err(|e| LogError::Rejected(format!("raft config: {e}")))?;
        let rejoin = store.rejoining();
        let logger = logging::logger(config.id);
        let node = RawNode::new(&raw_config, store, &logger)
            .map_err(|e| LogError::Storage(format!("raft node: {e}")))?;
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            status: Mutex::new(LogStatus {
                node_id: config.id,
                // Until the loop publishes: a store with the mark is recovering from the start.
                role: if rejoin {
                    Role::Recovering
                } else {
                    Role::Follower
                },
                term: node.raft.term,
                leader: None,
                commit_index: node.raft.raft_log.committed,
                applied_index: applied,
                counters: Vec::new(),
            }),
            stats: Stats::default(),
            stopped: AtomicBool::new(false),
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let tick = config.tick_interval;
        let driver: node::DriverCell<S> = Arc::new(Mutex::new(Some(Driver {
            node,
            shared: Arc::clone(&shared),
            network: Arc::clone(&network),
            config: config.clone(),
            applied,
            next_read_ctx: rand::random(),
            pending_proposals: Default::default(),
            pending_reads: Default::default(),
            waiting_reads: Vec::new(),
            deferred_reads: Vec::new(),
            deferred_since: 0,
            ticks: 0,
            heard: HashMap::new(),
            read_ctx: None,
            campaign_at: None,
            departed: None,
            snapshotting: None,
            held: Vec::new(),
            lost_acks: None,
            deferred: Default::default(),
            rejoin: Some(if rejoin {
                node::Rejoin::default()
            } else {
                node::Rejoin::check()
            }),
        })));
        let (running, stopped) = crate::stopped::signal();
        let ready_loop = runtime.spawn(node::drive(Arc::clone(&driver), rx, tick, running));
        let inner = Arc::new(Inner {
            config,
            shared,
            input: tx,
            network,
            pending: AtomicUsize::new(0),
        });
        let receiver = runtime.spawn(receive_loop(Arc::clone(&inner)));
        let mut tasks = vec![ready_loop, receiver];
        if inner.config.fast_failover && !inner.config.lease_reads {
            if let Some(deaths) = inner.network.subscribe_peer_down() {
                tasks.push(runtime.spawn(report_deaths(Arc::clone(&inner), deaths)));
            }
        }
        Ok(Arc::new(Self {
            inner,
            driver,
            tasks: Mutex::new(tasks),
            stopped,
        }))
    }

    /// A signal whose [`Stopped::wait`](crate::Stopped::wait) resolves once the replica's
    /// Ready loop has ended for good: after [`RaftLog::shutdown`], a storage error or a panic
    /// in it. A process serving this replica should exit then.
    pub fn stopped(&self) -> crate::Stopped {
        self.stopped.clone()
    }

    /// This replica's transport id.
    pub fn id(&self) -> NodeId {
        self.inner.config.id
    }

    /// This node's counters.
    pub fn stats(&self) -> RaftStats {
        let s = &self.inner.shared.stats;
        RaftStats {
            snapshots_taken: s.snapshots_taken.load(Ordering::Relaxed),
            snapshots_installed: s.snapshots_installed.load(Ordering::Relaxed),
            snapshots_sent: s.snapshots_sent.load(Ordering::Relaxed),
            forwarded: s.forwarded.load(Ordering::Relaxed),
            first_index: s.first_index.load(Ordering::Relaxed),
            appends_deferred: s.appends_deferred.load(Ordering::Relaxed),
            older_stores: s.older_stores.load(Ordering::Relaxed),
        }
    }

    /// Runs `f` on this replica's applied state (no consistency promise: like a stale read).
    pub fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        let guard = self
            .inner
            .shared
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner());
        f(guard.inner())
    }

    /// Asks the cluster to make `to` the leader (raft-rs leadership transfer: the leader
    /// brings `to` up to date, then tells it to campaign at once). Callable on any replica
    /// (a follower passes the request to the leader). Returns once this replica sees `to`
    /// as the leader, or [`LogError::Unavailable`] after `propose_timeout`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), LogError> {
        if !self.inner.config.peers.contains(&to) {
            return Err(LogError::Rejected(format!("{to} is not a peer")));
        }
        let deadline = Instant::now() + self.inner.config.propose_timeout;
        let resend_every = self.inner.config.tick_interval * self.inner.config.election_tick as u32;
        let poll = self.inner.config.tick_interval;
        loop {
            self.inner.submit(Input::Transfer(to_raft(to)))?;
            let resend_at = Instant::now() + resend_every;
            while Instant::now() < resend_at {
                let status = self.status();
                if status.leader == Some(to) && (to != self.id() || status.role == Role::Leader) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(LogError::Unavailable(format!(
                        "leadership did not move to {to} in time"
                    )));
                }
                tokio::time::sleep(poll).await;
            }
        }
    }

    /// Stops the replica: the Ready loop finishes its turn and stops (every durable write it
    /// acknowledged is already fsync'd), the receive task ends, the engine is closed so the
    /// directory can be reopened. Waiting proposers get [`LogError::Shutdown`]. Idempotent.
    /// Blocks for at most one loop turn.
    pub fn shutdown(&self) {
        let _ = self.inner.submit(Input::Shutdown);
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(driver) = driver {
            // A write running on a blocking thread holds the engine: let it finish (one
            // fsync) so that the engine closes here.
            crate::storage::wait_for_writes(driver.node.store().engine());
            driver.finish(Ok(()));
        }
    }
}

impl<S: StateMachine> Drop for RaftLog<S> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl<S: StateMachine> Inner<S> {
    fn submit(&self, input: Input<S>) -> Result<(), LogError> {
        if self.shared.stopped.load(Ordering::SeqCst) {
            return Err(LogError::Shutdown);
        }
        self.input.send(input).map_err(|_| LogError::Shutdown)
    }

    fn admit(&self) -> Result<PendingGuard<'_>, LogError> {
        let n = self.pending.fetch_add(1, Ordering::Relaxed);
        let guard = PendingGuard(&self.pending);
        if n >= self.config.pending_max {
            return Err(LogError::Unavailable(format!(
                "more than {} requests waiting on this node",
                self.config.pending_max
            )));
        }
        Ok(guard)
    }

    /// One attempt through the local Ready loop, waiting at most `wait`.
    async fn propose_local(&self, data: Vec<u8>, wait: Duration) -> ProposeOutcome<S::Output> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.submit(Input::Propose { data, reply }) {
            return ProposeOutcome::Failed(e);
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => ProposeOutcome::Failed(LogError::Shutdown),
            Err(_) => ProposeOutcome::Retry("no commit in time".into()),
        }
    }

    /// One attempt through the leader `to`.
    async fn forward(&self, to: NodeId, data: &[u8], wait: Duration) -> ProposeOutcome<S::Output> {
        self.shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let request = match transport::encode(&Wire::ForwardPropose(data.to_vec())) {
            Ok(r) => r,
            Err(e) => return ProposeOutcome::Failed(LogError::Rejected(e.to_string())),
        };
        let response = match self.network.call(to, request, wait).await {
            Ok(r) => r,
            Err(e) => return ProposeOutcome::Retry(format!("forward to {to}: {e}")),
        };
        match transport::decode::<ForwardReply>(&response) {
            Ok(ForwardReply::Applied(bytes)) => match postcard::from_bytes(&bytes) {
                Ok(applied) => ProposeOutcome::Applied(applied),
                Err(e) => ProposeOutcome::Retry(format!("undecodable output from {to}: {e}")),
            },
            Ok(ForwardReply::NotLeader(hint)) => ProposeOutcome::NotLeader(hint),
            Ok(ForwardReply::Retry(why)) => ProposeOutcome::Retry(why),
            Ok(ForwardReply::Failed(e)) => ProposeOutcome::Failed(e),
            Err(e) => ProposeOutcome::Retry(format!("undecodable reply from {to}: {e}")),
        }
    }

    async fn propose(&self, id: RequestId, command: S::Command) -> Result<S::Output, LogError> {
        let data = postcard::to_stdvec(&Envelope { id, command })
            .map_err(|e| LogError::Rejected(format!("encode command: {e}")))?;
        if data.len() > self.config.proposal_size_max {
            return Err(LogError::Rejected(format!(
                "command of {} bytes exceeds {}",
                data.len(),
                self.config.proposal_size_max
            )));
        }
        let _guard = self.admit()?;
        let deadline = Instant::now() + self.config.propose_timeout;
        // One attempt waits at most this long before trying again (the leader may be gone).
        let attempt_max = self.config.tick_interval * (4 * self.config.election_tick as u32);
        let backoff = self.config.tick_interval * 2;
        let mut last_error = String::from("no leader");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(LogError::Unavailable(format!(
                    "not committed within {:?}: {last_error}",
                    self.config.propose_timeout
                )));
            }
            let wait = (deadline - now).min(attempt_max);
            let outcome = match self.propose_local(data.clone(), wait).await {
                ProposeOutcome::NotLeader(Some(leader)) if leader != self.config.id => {
                    self.forward(leader, &data, wait).await
                }
                other => other,
            };
            match outcome {
                ProposeOutcome::Applied(a) => return applied_to_result(a),
                ProposeOutcome::Failed(e) => return Err(e),
                ProposeOutcome::NotLeader(hint) => {
                    last_error = format!("not leader (leader hint {hint:?})");
                }
                ProposeOutcome::Retry(why) => last_error = why,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(left)).await;
        }
    }

    async fn read_barrier(&self) -> Result<(), LogError> {
        let _guard = self.admit()?;
        let deadline = Instant::now() + self.config.propose_timeout;
        let backoff = self.config.tick_interval * 2;
        let mut last_error = String::from("no leader");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(LogError::Unavailable(format!(
                    "no read index within {:?}: {last_error}",
                    self.config.propose_timeout
                )));
            }
            let (reply, rx) = oneshot::channel();
            self.submit(Input::Read { reply })?;
            match tokio::time::timeout(deadline - now, rx).await {
                Ok(Ok(Ok(()))) => return Ok(()),
                Ok(Ok(Err(why))) => last_error = why,
                Ok(Err(_)) => return Err(LogError::Shutdown),
                Err(_) => last_error = "read index not reached in time".into(),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(left)).await;
        }
    }

    /// Serves a forwarded proposal: this node must be the leader; it never forwards again.
    async fn serve_forward(&self, data: Vec<u8>) -> ForwardReply {
        if let Err(e) = postcard::from_bytes::<Envelope<S::Command>>(&data) {
            return ForwardReply::Failed(LogError::Rejected(format!("undecodable command: {e}")));
        }
        if data.len() > self.config.proposal_size_max {
            return ForwardReply::Failed(LogError::Rejected("command too large".into()));
        }
        let _guard = match self.admit() {
            Ok(g) => g,
            Err(e) => return ForwardReply::Retry(e.to_string()),
        };
        match self.propose_local(data, self.config.propose_timeout).await {
            ProposeOutcome::Applied(a) => match postcard::to_stdvec(&a) {
                Ok(bytes) => ForwardReply::Applied(bytes),
                Err(e) => ForwardReply::Failed(LogError::Rejected(format!("encode output: {e}"))),
            },
            ProposeOutcome::NotLeader(hint) => ForwardReply::NotLeader(hint),
            ProposeOutcome::Retry(why) => ForwardReply::Retry(why),
            ProposeOutcome::Failed(LogError::Shutdown) => {
                ForwardReply::Retry("shutting down".into())
            }
            ProposeOutcome::Failed(e) => ForwardReply::Failed(e),
        }
    }

    /// Whether `m`, received from transport node `from`, claims a sender it may claim: the
    /// transport sender itself, except for a leadership transfer request that a follower
    /// passes on for the transferee (raft-rs keeps the transferee in `from`).
    /// Whether `from` is another node of this cluster.
    fn is_peer(&self, from: NodeId) -> bool {
        from != self.config.id && self.config.peers.contains(&from)
    }

    fn claims_valid_sender(&self, from: NodeId, m: &RaftMessage) -> bool {
        let peer = |raft_id: u64| raft_id != 0 && self.config.peers.contains(&to_node(raft_id));
        self.config.peers.contains(&from)
            && (m.from == to_raft(from)
                || (m.get_msg_type() == MessageType::MsgTransferLeader && peer(m.from)))
    }

    /// Parses and checks a batch of raft messages from `from`; bad ones are logged and dropped.
    fn parse_raft(&self, from: NodeId, batch: Vec<Vec<u8>>) -> Vec<RaftMessage> {
        let me = to_raft(self.config.id);
        let mut out = Vec::with_capacity(batch.len());
        for bytes in batch {
            match RaftMessage::parse_from_bytes(&bytes) {
                Ok(m) if m.to == me && self.claims_valid_sender(from, &m) => out.push(m),
                Ok(m) => tracing::warn!(
                    from,
                    msg_from = m.from,
                    msg_to = m.to,
                    "raft message with wrong addresses dropped"
                ),
                Err(e) => tracing::warn!(from, error = %e, "malformed raft message dropped"),
            }
        }
        out
    }
}

/// Hands the network's reports of dead peers to the Ready loop until either side stops.
async fn report_deaths<S: StateMachine>(
    inner: Arc<Inner<S>>,
    mut deaths: tokio::sync::broadcast::Receiver<NodeId>,
) {
    loop {
        match deaths.recv().await {
            Ok(peer) => {
                if inner.submit(Input::PeerDown(peer)).is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Reads the network until it closes: raft messages go to the Ready loop, forwarded
/// proposals are served concurrently.
async fn receive_loop<S: StateMachine>(inner: Arc<Inner<S>>) {
    while let Some(incoming) = inner.network.recv().await {
        match incoming {
            Incoming::Message { from, payload } => match transport::decode::<Wire>(&payload) {
                Ok(Wire::Raft(batch)) => {
                    let msgs = inner.parse_raft(from, batch);
                    if !msgs.is_empty() && inner.submit(Input::Raft(msgs)).is_err() {
                        return;
                    }
                }
                Ok(Wire::ForwardPropose(_)) => {
                    tracing::warn!(from, "forwarded proposal sent as a one-way message dropped")
                }
                Ok(Wire::StateQuery { last_index, term }) if inner.is_peer(from) => {
                    let query = Input::StateQuery {
                        from,
                        last_index,
                        term,
                    };
                    if inner.submit(query).is_err() {
                        return;
                    }
                }
                Ok(Wire::StateAnswer(answer)) if inner.is_peer(from) => {
                    if inner.submit(Input::StateAnswer { from, answer }).is_err() {
                        return;
                    }
                }
                Ok(Wire::StateQuery { .. } | Wire::StateAnswer(_)) => {
                    tracing::warn!(
                        from,
                        "state query or answer from outside the cluster dropped"
                    )
                }
                Err(e) => tracing::warn!(from, error = %e, "malformed message dropped"),
            },
            Incoming::Request {
                from,
                payload,
                responder,
            } => match transport::decode::<Wire>(&payload) {
                Ok(Wire::ForwardPropose(data)) => {
                    let inner = Arc::clone(&inner);
                    tokio::spawn(async move {
                        let reply = inner.serve_forward(data).await;
                        match transport::encode(&reply) {
                            Ok(bytes) => responder.respond(bytes),
                            Err(e) => tracing::error!(error = %e, "cannot encode a forward reply"),
                        }
                    });
                }
                Ok(Wire::StateQuery { .. } | Wire::StateAnswer(_)) => {
                    tracing::warn!(from, "state query or answer sent as a request dropped");
                    drop(responder);
                }
                Ok(Wire::Raft(batch)) => {
                    // Accept raft traffic on either channel; the caller needs no answer.
                    let msgs = inner.parse_raft(from, batch);
                    drop(responder);
                    if !msgs.is_empty() && inner.submit(Input::Raft(msgs)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(from, error = %e, "malformed request dropped");
                    drop(responder);
                }
            },
        }
    }
}

#[async_trait]
impl<S: StateMachine> ReplicatedLog<S> for RaftLog<S> {
    async fn propose(&self, id: RequestId, command: S::Command) -> Result<S::Output, LogError> {
        self.inner.propose(id, command).await
    }

    async fn read(
        &self,
        query: S::Query,
        consistency: ReadConsistency,
    ) -> Result<S::Answer, LogError> {
        match consistency {
            ReadConsistency::Stale => {}
            ReadConsistency::Linearizable | ReadConsistency::Lease => {
                self.inner.read_barrier().await?;
            }
        }
        let state = self
            .inner
            .shared
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner());
        Ok(state.query(&query))
    }

    fn status(&self) -> LogStatus {
        let mut status = self
            .inner
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let s = self.stats();
        status.counters = vec![
            ("snapshots_taken".into(), s.snapshots_taken),
            ("snapshots_installed".into(), s.snapshots_installed),
            ("snapshots_sent".into(), s.snapshots_sent),
            ("forwarded".into(), s.forwarded),
            ("first_index".into(), s.first_index),
            ("appends_deferred".into(), s.appends_deferred),
            ("older_stores".into(), s.older_stores),
        ];
        status
    }

    fn leader_hint(&self) -> Option<u64> {
        self.inner
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leader
    }
}
