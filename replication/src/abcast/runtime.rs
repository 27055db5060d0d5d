//! [`AbcastLog`]: the atomic broadcast [`ReplicatedLog`] over a [`Network`] and raft-engine.
//!
//! One task, on the runtime that [`AbcastLog::open`] is called in (the one serving the
//! member's network, so a message or a command costs no thread hop), owns the [`Core`] and the
//! engine. Each turn of its loop waits for one event (a command from the handle, a message, a
//! tick), takes every other event already waiting (up to a bound), then drains the core's
//! actions: the records of the whole turn are written with **one** synced raft-engine write
//! (group commit), then messages go out, deliveries are applied through [`Deduped`] and the
//! waiting proposers and readers are answered. When messages went out before the synced
//! write, the write runs on a blocking thread while the loop awaits it; otherwise it (and a
//! snapshot) blocks the runtime (through `block_in_place` on a multi-thread runtime).
//! It used to be a thread of its own: every message then crossed two threads, and on a
//! 2-core machine the wake-ups cost more than the protocol.
//!
//! **An idle member sleeps.** The core's timers run every [`AbcastConfig::tick_ms`] while it
//! has timed work; once it is [`Core::quiet`] (nothing missing, pending, unspread or being
//! read) the loop sleeps until its next heartbeat instead, and an event that wakes it first
//! ticks the core, so its clock is current for what the event starts. An idle five-member
//! group then wakes for heartbeats and their acknowledgements only: on the reference
//! cluster, about 260 wake-ups a second per member instead of 420, and the idle cluster's
//! CPU fell from 0.40 to 0.31 of a core.
//!
//! Storage layout: raft-engine group [`JOURNAL_GROUP`] holds every [`Record`] (postcard in the
//! entry's `data`) in arrival order; the entry index is a local counter. Every
//! [`AbcastConfig::snapshot_every`] delivered payloads (or more, as the state grows: see
//! [`AbcastConfig::snapshot_bytes_per_payload`]) the applied state (duplicate table
//! included) is written under [`SNAPSHOT_KEY`] in [`SNAPSHOT_GROUP`] with its
//! [`SnapshotBase`]; the journal's front is then compacted up to the first record that is still
//! needed, i.e. not both below the snapshot and delivered by every member (a lagging member
//! may still ask for it). Recovery restores the snapshot, reads the rest of the journal and
//! hands both to [`Core::recover_from`]; delivery resumes after the snapshot.
//!
//! **Snapshots do not stop the ring.** The state is serialized and written on a blocking
//! thread (under the state's read lock) while the loop goes on taking its turns, persisting
//! and acknowledging; only applying waits: deliveries and read barriers that complete
//! meanwhile are held, in order, and released once the snapshot is written. So a snapshot
//! delays this member's own clients, never the group. (It used to be taken on the loop, and
//! since every member reaches the same payload count at the same moment, all five paused
//! together and every call in the cluster stopped for the slowest one: 0.1-0.15 s at
//! 100 + 100 clients.) Members also start their count at different offsets
//! (`id * snapshot_every / members`), so their snapshots, and the moments each member's
//! clients wait, are spread out.
//!
//! **A member whose disk was lost (emptied, or an older copy) is rebuilt**, and so is one
//! whose peers collected what it missed while it was excluded ([`Core::behind`])
//! ([`Core::rebuild_plan`]): once every peer
//! has answered its history query (a member behind: at once), the loop fetches a donor's image off the loop (the only
//! request between members: `ImageRequest`, answered with 1 MiB chunks of one encoded
//! `Image`, the donor's journal and then its stored snapshot, built once per fetch and
//! dropped after the last chunk), the most advanced peer first. The image is checked (every
//! record and the snapshot's base, as at open; its donor must be in the member's epoch or a
//! later one), written with the plan's lease and [`FLOOR_KEY`] in one synced write after
//! what the member's own journal holds and a cut at 0 (the copy's history replaces the
//! member's Sequences: one a later epoch voided must not come back), and the
//! member starts again from its store as after a restart (its state machine from empty:
//! whatever it delivered from the old disk is replayed from the copy); proposals taken before are
//! answered "unavailable" (their callers retry). A donor that fails is skipped; when all do,
//! the fetch is tried again a second later.
//!
//! Errors: a storage failure stops the member (proposers see [`LogError::Storage`], later
//! calls [`LogError::Shutdown`]); malformed messages are counted and dropped; an undecodable
//! delivered payload is skipped identically on every member (the bytes are the same
//! everywhere) and logged.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use raft_engine::{Engine, LogBatch};
use tokio::sync::{mpsc, oneshot};
use transport::{Incoming, Network};

use super::core::{
    Action, Core, CoreConfig, CoreStats, Delivery, PersistAck, RebuildPlan, SnapshotBase,
};
use super::epoch::EpochState;
use super::message::{Message, Record, RequestKey, NUMBER_MAX};
use crate::dedup::{Applied, Deduped};
use crate::log::{
    Envelope, LogError, LogStatus, ReadConsistency, ReplicatedLog, RequestId, Role,
    DEFAULT_PROPOSE_TIMEOUT,
};
use crate::state_machine::StateMachine;
use crate::stopped::{Running, Stopped};
use crate::storage::{self, blocking, isolated, off_loop};

/// The raft-engine group holding the journal of Requests and Sequences.
pub const JOURNAL_GROUP: u64 = 1;
/// The raft-engine group holding the state snapshot.
pub const SNAPSHOT_GROUP: u64 = 2;
/// Key of the state snapshot: postcard `(SnapshotBase, Vec<u8>)` (the bytes written as one byte
/// string, which postcard encodes exactly as a sequence of `u8`).
pub const SNAPSHOT_KEY: &[u8] = b"snapshot";
/// Key of the member's seq lease ([`PersistAck::lease`], a postcard `u64`) in
/// [`SNAPSHOT_GROUP`]: written in the same synced write as the records whenever it grows.
pub const LEASE_KEY: &[u8] = b"lease";
/// Key of the member's sequence floor ([`RebuildPlan::sequence_floor`], a postcard `u64`) in
/// [`SNAPSHOT_GROUP`]: written when a member whose disk was lost is rebuilt.
pub const FLOOR_KEY: &[u8] = b"sequence_floor";
/// Key of the member's epoch state ([`EpochState`], postcard) in [`SNAPSHOT_GROUP`]: written
/// in the same synced write as every [`Record::Epoch`] (journal compaction may drop the
/// record; the key keeps what it said).
pub const EPOCH_KEY: &[u8] = b"epoch";
/// Bytes of a rebuild image per answer (well below the transport's frame limit).
const IMAGE_CHUNK_BYTES: usize = 1 << 20;
/// How long one chunk of a rebuild image may take to arrive.
const IMAGE_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Ticks between two attempts to fetch a rebuild image when every donor failed.
const REBUILD_RETRY_TICKS: u64 = 200;
/// Ticks between journal compaction attempts (besides one after every snapshot).
const COMPACT_EVERY_TICKS: u64 = 200;
/// Events taken per loop turn before the actions are drained (bounds a turn's batch).
const EVENTS_PER_TURN_MAX: usize = 1024;

/// Configuration of one member's runtime.
#[derive(Debug, Clone)]
pub struct AbcastConfig {
    /// The protocol core's configuration (id, group size, epoch, limits, timers).
    pub core: CoreConfig,
    /// How often the core's timers run while it has timed work (a quiet core sleeps until
    /// its next heartbeat).
    pub tick_ms: u64,
    /// How long `propose` waits for its delivery before [`LogError::Unavailable`].
    pub propose_timeout: Duration,
    /// How long a linearizable read waits for its barrier before [`LogError::Unavailable`].
    pub read_timeout: Duration,
    /// Commands (proposals, reads) queued to the driver before callers wait.
    pub queue_max: usize,
    /// Delivered payloads between state snapshots (then the journal is compacted); 0 never.
    pub snapshot_every: u64,
    /// Besides `snapshot_every`, at least (bytes of the last snapshot / this) payloads pass
    /// between two snapshots, so the time spent snapshotting stays a bounded share as the
    /// state grows (0: only `snapshot_every`). Default 250: a 15 MB customer state (about
    /// 20 s into a 100 + 100 run) waits for 60,000 payloads, where it used to pause every
    /// 10,000 for 0.3 s (serializing 15 MB on five members at once, then writing it). Every
    /// member snapshots at the same point anyway (same state, same size); while one does,
    /// the ring waits for its turns, so they all pause together. The price: a longer
    /// journal to replay after a restart (60,000 payloads: a second or two).
    pub snapshot_bytes_per_payload: u64,
}

impl AbcastConfig {
    /// Defaults for member `id` of a group of `members`.
    pub fn new(id: u64, members: u64) -> Self {
        Self {
            core: CoreConfig {
                reform_after_ms: 300,
                ..CoreConfig::new(id, members)
            },
            tick_ms: 5,
            propose_timeout: DEFAULT_PROPOSE_TIMEOUT,
            read_timeout: DEFAULT_PROPOSE_TIMEOUT,
            queue_max: 65_536,
            snapshot_every: 10_000,
            snapshot_bytes_per_payload: 250,
        }
    }
}

/// Progress and counters of one member ([`AbcastLog::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AbcastStats {
    /// Sequences `0..delivered` delivered (applied).
    pub delivered: u64,
    /// Sequences `0..deliverable` on a majority's disk and held here.
    pub deliverable: u64,
    /// Sequences `0..sequenced` held here.
    pub sequenced: u64,
    /// Sequences `0..stable` on this member's disk.
    pub stable: u64,
    /// Sequences `0..known` known to exist.
    pub known: u64,
    /// `known - delivered`: how far behind this member is.
    pub lag: u64,
    /// Restarted and still catching up, or being rebuilt after losing its disk.
    pub recovering: bool,
    /// It lacks history its peers hold: its disk was emptied or is an older copy
    /// ([`Core::disk_lost`]), or its peers collected what it missed while it was excluded
    /// ([`Core::behind`]). It is being rebuilt from a peer's snapshot and journal.
    pub rebuilding: bool,
    /// Rebuilds from a peer's image completed since this member opened.
    pub rebuilds: u64,
    /// Synced journal writes.
    pub fsyncs: u64,
    /// Records written to the journal.
    pub records_persisted: u64,
    /// Messages the network refused to queue.
    pub send_failures: u64,
    /// State snapshots written.
    pub snapshots: u64,
    /// Journal entries not yet compacted.
    pub journal_len: u64,
    /// Sequences held in memory (not yet collected: see
    /// [`CoreConfig::retain_for_excluded`](super::CoreConfig::retain_for_excluded)).
    pub held_sequences: u64,
    /// Requests held in memory.
    pub held_requests: u64,
    /// About the encoded size of the Requests held in memory (see
    /// [`CoreConfig::retain_for_excluded_bytes`](super::CoreConfig::retain_for_excluded_bytes)).
    pub held_request_bytes: u64,
    /// Delivery resumed at this sequence number when the member opened (its snapshot).
    pub resumed_at: u64,
    /// The epoch this member is in (0 until a reformation: see
    /// [`epoch`](super::epoch)).
    pub epoch: u64,
    /// Members its epoch excludes (their turns are passes), as a bit mask: bit `i` for
    /// member `i`.
    pub excluded: u64,
    /// This member is excluded from its epoch (it was down; it asks to be readmitted once it
    /// has caught up).
    pub excluded_self: bool,
    /// The core's counters (retransmits, passes, duplicates...).
    pub core: CoreStats,
}

type ProposeReply<S> = oneshot::Sender<Result<<S as StateMachine>::Output, LogError>>;

enum Command<S: StateMachine> {
    Propose {
        id: RequestId,
        payload: Vec<u8>,
        reply: ProposeReply<S>,
    },
    Read {
        reply: oneshot::Sender<()>,
    },
}

struct Shared<S: StateMachine> {
    state: RwLock<Deduped<S>>,
    stats: Mutex<AbcastStats>,
}

/// The driver of a running member; `None` once it stopped (dropping it releases the engine).
type DriverCell<S> = Arc<Mutex<Option<Driver<S>>>>;

/// One member of an atomic broadcast group, as a [`ReplicatedLog`]. Cheap to share behind an
/// `Arc`; dropping it stops the member (its driver finishes its turn and releases the
/// engine, so the directory can be reopened at once).
pub struct AbcastLog<S: StateMachine> {
    cfg: AbcastConfig,
    shared: Arc<Shared<S>>,
    commands: Option<mpsc::Sender<Command<S>>>,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    driver: DriverCell<S>,
    task: Option<tokio::task::JoinHandle<()>>,
    stopped: Stopped,
}

impl<S: StateMachine> Drop for AbcastLog<S> {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(tx) = self
            .shutdown
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        // Waits for a turn in progress (on another worker), then releases the engine, after a
        // write running on a blocking thread (one fsync) has let go of it.
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(driver) = driver {
            storage::wait_for_writes(&driver.engine);
        }
    }
}

impl<S: StateMachine> AbcastLog<S> {
    /// Opens (or creates) the member's journal in `dir`, recovers from it, and starts the
    /// member on `network`. `initial` is the empty state machine that delivery starts from
    /// (a restarted member replays its whole log into it).
    pub fn open(
        cfg: AbcastConfig,
        dir: &Path,
        network: Arc<dyn Network>,
        initial: S,
    ) -> Result<Self, LogError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| LogError::Rejected("AbcastLog::open needs a tokio runtime".into()))?;
        let engine = storage::open_engine(dir)?;
        let mut state = Deduped::new(initial);
        let initial = state.snapshot();
        let Loaded {
            base,
            records,
            journal,
            journal_next,
            lease,
            floor,
            epoch,
        } = load(&engine, cfg.core.members, &mut state)?;
        let core = Core::recover_from(cfg.core.clone(), base.clone(), lease, records)
            .with_sequence_floor(floor)
            .with_epoch_state(epoch)
            .with_incarnation_nonce(rand::random());
        let stats = AbcastStats {
            resumed_at: base.as_ref().map_or(0, |b| b.delivered),
            ..AbcastStats::default()
        };
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            stats: Mutex::new(stats),
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(cfg.queue_max.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        let tick = Duration::from_millis(cfg.tick_ms.max(1));
        let driver = Driver {
            cfg: cfg.clone(),
            core,
            initial,
            engine: Arc::new(engine),
            journal_next,
            journal,
            lease,
            resumed_at: base.as_ref().map_or(0, |b| b.delivered),
            snapshot: base,
            // Spread the members' snapshots over the interval (see the module doc).
            since_snapshot: cfg
                .snapshot_every
                .saturating_mul(cfg.core.id)
                .checked_div(cfg.core.members)
                .unwrap_or(0),
            snapshot_len: 0,
            snapshotting: None,
            held: Vec::new(),
            ticks: 0,
            last_tick_ms: 0,
            snapshots: 0,
            rebuilds: 0,
            network: Arc::clone(&network),
            shared: Arc::clone(&shared),
            proposers: HashMap::new(),
            readers: HashMap::new(),
            next_read: 0,
            fsyncs: 0,
            records_persisted: 0,
            send_failures: 0,
            start: Instant::now(),
            rebuild: None,
            served: None,
        };
        let driver: DriverCell<S> = Arc::new(Mutex::new(Some(driver)));
        let (running, stopped) = crate::stopped::signal();
        let task = runtime.spawn(drive(
            Arc::clone(&driver),
            cmd_rx,
            stop_rx,
            network,
            tick,
            running,
        ));
        Ok(Self {
            cfg,
            shared,
            commands: Some(cmd_tx),
            shutdown: Mutex::new(Some(stop_tx)),
            driver,
            task: Some(task),
            stopped,
        })
    }

    /// A signal whose [`Stopped::wait`] resolves once the member's loop has ended for good:
    /// after [`AbcastLog::shutdown`], a storage error or a panic in it. A process serving this
    /// member should exit then.
    pub fn stopped(&self) -> Stopped {
        self.stopped.clone()
    }

    /// Stops the member without waiting (dropping the last handle also stops it, and waits
    /// for the driver to release the engine). Later calls fail with
    /// [`LogError::Shutdown`].
    pub fn shutdown(&self) {
        let tx = self
            .shutdown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }

    /// Progress and counters.
    pub fn stats(&self) -> AbcastStats {
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the current applied state (for tests and embedding).
    pub fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        let guard = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        f(guard.inner())
    }

    async fn command(&self, cmd: Command<S>) -> Result<(), LogError> {
        let tx = self.commands.as_ref().ok_or(LogError::Shutdown)?;
        tx.send(cmd).await.map_err(|_| LogError::Shutdown)
    }
}

/// Polls a future once without waiting (a zero-length `tokio::time::timeout` would wait for
/// the timer wheel's next millisecond). `recv` futures are cancel-safe, so dropping a pending
/// one loses nothing.
fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

fn applied_to_result<O>(a: Applied<O>) -> Result<O, LogError> {
    match a {
        Applied::Output(o) => Ok(o),
        Applied::Expired => Err(LogError::Rejected(
            "duplicate request too old to answer".into(),
        )),
    }
}

#[async_trait]
impl<S: StateMachine> ReplicatedLog<S> for AbcastLog<S> {
    async fn propose(&self, id: RequestId, command: S::Command) -> Result<S::Output, LogError> {
        let payload = postcard::to_stdvec(&Envelope { id, command })
            .map_err(|e| LogError::Rejected(e.to_string()))?;
        if payload.len() > self.cfg.core.request_bytes_max {
            return Err(LogError::Rejected(format!(
                "command of {} bytes exceeds {}",
                payload.len(),
                self.cfg.core.request_bytes_max
            )));
        }
        let (reply, rx) = oneshot::channel();
        let wait = async {
            self.command(Command::Propose { id, payload, reply })
                .await?;
            rx.await.map_err(|_| LogError::Shutdown)?
        };
        match tokio::time::timeout(self.cfg.propose_timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(LogError::Unavailable(
                "not delivered in time (is a member down?)".into(),
            )),
        }
    }

    async fn read(
        &self,
        query: S::Query,
        consistency: ReadConsistency,
    ) -> Result<S::Answer, LogError> {
        if consistency != ReadConsistency::Stale {
            let (reply, rx) = oneshot::channel();
            let wait = async {
                self.command(Command::Read { reply }).await?;
                rx.await.map_err(|_| LogError::Shutdown)
            };
            match tokio::time::timeout(self.cfg.read_timeout, wait).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(LogError::Unavailable(
                        "read barrier not reached in time".into(),
                    ))
                }
            }
        }
        let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        Ok(state.query(&query))
    }

    /// No leader: every member sequences its turns.
    fn leader_hint(&self) -> Option<u64> {
        None
    }

    fn status(&self) -> LogStatus {
        let s = self.stats();
        LogStatus {
            node_id: self.cfg.core.id,
            role: if s.recovering {
                Role::Recovering
            } else {
                Role::Member
            },
            term: s.epoch,
            leader: None,
            commit_index: s.deliverable,
            applied_index: s.delivered,
            counters: vec![
                ("delivered".into(), s.delivered),
                ("sequenced".into(), s.sequenced),
                ("stable".into(), s.stable),
                ("known".into(), s.known),
                ("lag".into(), s.lag),
                ("fsyncs".into(), s.fsyncs),
                ("snapshots".into(), s.snapshots),
                ("journal_len".into(), s.journal_len),
                ("held_sequences".into(), s.held_sequences),
                ("held_requests".into(), s.held_requests),
                ("held_request_bytes".into(), s.held_request_bytes),
                ("requests_issued".into(), s.core.requests_issued),
                ("sequences_issued".into(), s.core.sequences_issued),
                ("passes".into(), s.core.passes),
                ("retransmits_requested".into(), s.core.retransmits_requested),
                ("retransmits_served".into(), s.core.retransmits_served),
                ("duplicates".into(), s.core.duplicates),
                ("requests_voided".into(), s.core.requests_voided),
                ("anomalies".into(), s.core.anomalies),
                ("rebuilding".into(), u64::from(s.rebuilding)),
                ("rebuilds".into(), s.rebuilds),
                ("epoch".into(), s.epoch),
                ("epochs_installed".into(), s.core.epochs_installed),
                ("excluded".into(), s.excluded),
                ("excluded_self".into(), u64::from(s.excluded_self)),
            ],
        }
    }
}

/// What a member's store holds, read back for [`Core::recover_from`].
struct Loaded {
    base: Option<SnapshotBase>,
    records: Vec<Record>,
    journal: VecDeque<(u64, Desc)>,
    journal_next: u64,
    lease: u64,
    floor: u64,
    epoch: EpochState,
}

/// The epoch state the last [`Record::Epoch`] among `records` carries.
fn last_epoch_state<'a>(
    records: impl DoubleEndedIterator<Item = &'a Record>,
) -> Option<&'a EpochState> {
    records.rev().find_map(|r| match r {
        Record::Epoch { state, .. } => Some(state),
        _ => None,
    })
}

/// Reads a member's store: restores its snapshot (if any) into `state`, and reads its
/// journal, lease and sequence floor. Anything damaged is a storage error naming it.
fn load<S: StateMachine>(
    engine: &Engine,
    members: u64,
    state: &mut Deduped<S>,
) -> Result<Loaded, LogError> {
    let mut base = None;
    if let Some(raw) = engine.get(SNAPSHOT_GROUP, SNAPSHOT_KEY) {
        let (b, bytes) = decode_snapshot(&raw, members)?;
        state
            .restore(&bytes)
            .map_err(|e| LogError::Storage(e.to_string()))?;
        base = Some(b);
    }
    let mut records = Vec::new();
    let mut journal = VecDeque::new();
    let mut journal_next = 1;
    if let (Some(first), Some(last)) = (
        engine.first_index(JOURNAL_GROUP),
        engine.last_index(JOURNAL_GROUP),
    ) {
        for e in storage::read_entries(engine, JOURNAL_GROUP, first, last + 1)? {
            let record = decode_record(&e.data, members)
                .map_err(|why| LogError::Storage(format!("journal entry {}: {why}", e.index)))?;
            journal.push_back((e.index, Desc::of(&record)));
            records.push(record);
        }
        journal_next = last + 1;
    }
    let number = |key: &[u8], what: &str| match engine.get(SNAPSHOT_GROUP, key) {
        Some(raw) => match postcard::from_bytes::<u64>(&raw) {
            Ok(v) if v < NUMBER_MAX => Ok(v),
            Ok(v) => Err(LogError::Storage(format!("{what} {v} out of range"))),
            Err(e) => Err(LogError::Storage(format!("{what}: {e}"))),
        },
        None => Ok(0),
    };
    let epoch = match engine.get(SNAPSHOT_GROUP, EPOCH_KEY) {
        Some(raw) => postcard::from_bytes::<EpochState>(&raw)
            .map_err(|e| LogError::Storage(format!("epoch state: {e}")))?,
        None => EpochState::default(),
    };
    if let Some(why) = crate::abcast::epoch::chain_invalid(&epoch.chain, members, 0) {
        return Err(LogError::Storage(format!("epoch state: {why}")));
    }
    Ok(Loaded {
        base,
        records,
        journal,
        journal_next,
        lease: number(LEASE_KEY, "lease")?,
        floor: number(FLOOR_KEY, "sequence floor")?,
        epoch,
    })
}

/// Decodes a stored snapshot ([`SNAPSHOT_KEY`]) and checks that its base fits a group of
/// `members`.
fn decode_snapshot(
    raw: &[u8],
    members: u64,
) -> Result<(SnapshotBase, serde_bytes::ByteBuf), LogError> {
    let (b, bytes): (SnapshotBase, serde_bytes::ByteBuf) =
        postcard::from_bytes(raw).map_err(|e| LogError::Storage(format!("snapshot: {e}")))?;
    if b.prefixes.len() as u64 != members
        || b.delivered >= NUMBER_MAX
        || b.prefixes.iter().any(|p| *p >= NUMBER_MAX)
    {
        return Err(LogError::Storage(format!(
            "snapshot: its base (delivered {}, {} senders) does not fit a group of {}",
            b.delivered,
            b.prefixes.len(),
            members
        )));
    }
    Ok((b, bytes))
}

/// Decodes a journal record and checks that a member of a group of `members` could have
/// written it.
fn decode_record(data: &[u8], members: u64) -> Result<Record, String> {
    let record: Record = postcard::from_bytes(data).map_err(|e| e.to_string())?;
    match record.invalid(members) {
        Some(why) => Err(why),
        None => Ok(record),
    }
}

/// A donor's store, as a member whose disk was lost copies it: the stored snapshot and the
/// journal records, both as stored (postcard), read in that order the other way round
/// (journal first) so that the journal reaches back to the snapshot's base.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Image {
    #[serde(with = "serde_bytes")]
    snapshot: Vec<u8>,
    #[serde(with = "crate::byte_strings")]
    records: Vec<Vec<u8>>,
}

/// A request for part of a donor's [`Image`] (an RPC between members).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ImageRequest {
    /// Chooses the image: a new id makes the donor build a fresh one.
    id: u64,
    /// Byte offset into the encoded image.
    offset: u64,
}

/// The answer to an [`ImageRequest`]: the encoded image's length and the bytes from the
/// offset on (at most [`IMAGE_CHUNK_BYTES`]).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ImageChunk {
    total: u64,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

/// Fetches a whole image from the first donor that serves one.
async fn fetch_image(
    network: Arc<dyn Network>,
    donors: Vec<u64>,
    id: u64,
) -> Result<Vec<u8>, String> {
    let mut last = "no donor".to_string();
    for donor in donors {
        match fetch_image_from(&network, donor, id).await {
            Ok(image) => return Ok(image),
            Err(e) => {
                tracing::warn!(donor, error = %e, "rebuild image not fetched");
                last = format!("donor {donor}: {e}");
            }
        }
    }
    Err(last)
}

async fn fetch_image_from(
    network: &Arc<dyn Network>,
    donor: u64,
    id: u64,
) -> Result<Vec<u8>, String> {
    let mut image = Vec::new();
    // Bounded: a 16 GiB image at most.
    for _ in 0..16_384 {
        let request = postcard::to_stdvec(&ImageRequest {
            id,
            offset: image.len() as u64,
        })
        .map_err(|e| e.to_string())?;
        let answer = network
            .call(donor, Bytes::from(request), IMAGE_CHUNK_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let chunk: Result<ImageChunk, String> =
            postcard::from_bytes(&answer).map_err(|e| e.to_string())?;
        let chunk = chunk?;
        if chunk.bytes.is_empty() && (image.len() as u64) < chunk.total {
            return Err("empty chunk".into());
        }
        image.extend_from_slice(&chunk.bytes);
        if image.len() as u64 >= chunk.total {
            return if image.len() as u64 == chunk.total {
                Ok(image)
            } else {
                Err("image longer than announced".into())
            };
        }
    }
    Err("image too large".into())
}

/// Why an image was not installed.
#[derive(Debug, thiserror::Error)]
enum InstallError {
    /// The image is damaged: nothing was written; another attempt follows.
    #[error("image: {0}")]
    Image(String),
    /// Writing or reading the store failed: the member stops.
    #[error("storage: {0}")]
    Storage(LogError),
}

/// A member whose disk was lost, being rebuilt from a donor's image.
struct Rebuild {
    plan: RebuildPlan,
    fetch: Option<tokio::task::JoinHandle<Result<Vec<u8>, String>>>,
    /// The tick of the last failed attempt.
    failed_at: Option<u64>,
}

/// Adds `value` (postcard) under `key` of [`SNAPSHOT_GROUP`] to `batch`.
fn put_value<T: serde::Serialize>(
    batch: &mut LogBatch,
    key: &[u8],
    value: &T,
) -> Result<(), LogError> {
    let bytes = postcard::to_stdvec(value).map_err(|e| LogError::Storage(e.to_string()))?;
    batch
        .put(SNAPSHOT_GROUP, key.to_vec(), bytes)
        .map_err(storage::storage_err)
}

/// What a journal entry holds, for compaction.
#[derive(Debug, Clone, Copy)]
enum Desc {
    Sequence(u64),
    Request(RequestKey),
    /// A [`Record::Epoch`]: the key [`EPOCH_KEY`] holds its state, and the Sequences it cut
    /// precede it, so it goes whenever the records before it go.
    Epoch,
}

impl Desc {
    fn of(r: &Record) -> Self {
        match r {
            Record::Sequence(s) => Desc::Sequence(s.number),
            Record::Request(r) => Desc::Request(r.key),
            Record::Epoch { .. } => Desc::Epoch,
        }
    }
}

struct Driver<S: StateMachine> {
    cfg: AbcastConfig,
    core: Core,
    /// The empty state machine, as a snapshot: a rebuild starts from it (what was delivered
    /// from the old disk is replayed from the copied one).
    initial: Vec<u8>,
    engine: Arc<Engine>,
    journal_next: u64,
    /// The seq lease on disk.
    lease: u64,
    /// What each journal entry still held holds, oldest first (for compaction).
    journal: VecDeque<(u64, Desc)>,
    snapshot: Option<SnapshotBase>,
    since_snapshot: u64,
    /// Bytes of the last state snapshot taken by this process (0: none yet).
    snapshot_len: u64,
    /// The base of the snapshot being serialized and written off the loop: applying waits.
    /// It becomes `snapshot` (and the journal may be compacted behind it) once written.
    snapshotting: Option<SnapshotBase>,
    /// What waits for the snapshot in flight, in order.
    held: Vec<Held>,
    ticks: u64,
    /// When (ms since `start`) the core was last ticked.
    last_tick_ms: u64,
    snapshots: u64,
    /// Rebuilds from a peer's image completed.
    rebuilds: u64,
    resumed_at: u64,
    network: Arc<dyn Network>,
    shared: Arc<Shared<S>>,
    /// Waiting proposers by member-local proposal number, with their request id.
    proposers: HashMap<u64, (RequestId, ProposeReply<S>)>,
    readers: HashMap<u64, oneshot::Sender<()>>,
    next_read: u64,
    fsyncs: u64,
    records_persisted: u64,
    send_failures: u64,
    start: Instant,
    /// This member's disk was lost and it is being rebuilt from a donor.
    rebuild: Option<Rebuild>,
    /// The image this member last built for a peer being rebuilt: (id, encoded image, when
    /// built). Dropped after its last chunk, or a minute after it was built.
    served: Option<(u64, Vec<u8>, Instant)>,
}

enum Event<S: StateMachine> {
    Command(Command<S>),
    Net(Incoming),
    Tick,
    /// The network saw this peer's process die (its liveness connection closed).
    PeerDown(u64),
    /// The snapshot in flight is written (its length) or failed.
    SnapshotWritten(Result<u64, LogError>),
    Stop,
}

/// Work that touches the state and waits while a snapshot is being taken.
enum Held {
    Deliveries(Vec<Delivery>),
    Read(u64),
}

/// The task serializing and writing a snapshot: the snapshot's length.
type SnapshotTask = tokio::task::JoinHandle<Result<u64, LogError>>;

/// The member's loop: waits for an event, then lets the driver take a turn; stops on
/// shutdown, when the handle is gone, or on a storage error.
async fn drive<S: StateMachine>(
    cell: DriverCell<S>,
    mut commands: mpsc::Receiver<Command<S>>,
    mut stop: oneshot::Receiver<()>,
    network: Arc<dyn Network>,
    tick: Duration,
    running: Running,
) {
    // Dropped however this ends (return, panic, abort): tells `AbcastLog::stopped`.
    let _running = running;
    // The next tick: every `tick` while the core has timed work, at its next heartbeat
    // while it is quiet (an idle member wakes for heartbeats only).
    let mut next_tick = tokio::time::Instant::now() + tick;
    let ticker = tokio::time::sleep_until(next_tick);
    tokio::pin!(ticker);
    let mut ticked = false;
    let mut snapshot: Option<SnapshotTask> = None;
    // Peers seen to die: the group reforms without them at once if the ring needs them,
    // instead of after `reform_after_ms` (see `epoch`).
    let mut deaths = network.subscribe_peer_down();
    loop {
        let (accept, quiet_until) = match cell.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(driver) => (driver.core.can_accept(), driver.quiet_until()),
            None => return,
        };
        let now = tokio::time::Instant::now();
        let due = match quiet_until {
            Some(at) => tokio::time::Instant::from_std(at).max(now + tick),
            None => now + tick,
        };
        // After a tick, the next one; after anything else, sooner if the quiet ended.
        if ticked || due < next_tick {
            next_tick = due;
            ticker.as_mut().reset(next_tick);
        }
        let event = tokio::select! {
            biased;
            _ = &mut stop => Event::Stop,
            () = &mut ticker => Event::Tick,
            written = async { snapshot.as_mut().expect("guarded by is_some").await },
                if snapshot.is_some() =>
            {
                Event::SnapshotWritten(
                    written
                        .map_err(|e| LogError::Storage(format!("abcast snapshot task: {e}")))
                        .and_then(|r| r),
                )
            }
            cmd = commands.recv(), if accept => match cmd {
                Some(c) => Event::Command(c),
                None => Event::Stop,
            },
            inc = network.recv() => match inc {
                Some(i) => Event::Net(i),
                None => Event::Stop,
            },
            death = async { deaths.as_mut().expect("guarded by is_some").recv().await },
                if deaths.is_some() =>
            {
                match death {
                    Ok(peer) => Event::PeerDown(peer),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Event::Tick,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        deaths = None;
                        Event::Tick
                    }
                }
            }
        };
        if matches!(event, Event::SnapshotWritten(_)) {
            snapshot = None;
        }
        ticked = matches!(event, Event::Tick);
        let go_on = {
            let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
            let Some(driver) = guard.as_mut() else {
                return;
            };
            driver.turn(event, &mut commands, &network)
        };
        if !go_on || !action_rounds(&cell, &mut snapshot).await {
            // Dropping the driver releases the engine; waiting proposers see `Shutdown`.
            cell.lock().unwrap_or_else(|p| p.into_inner()).take();
            return;
        }
    }
}

/// Drains the core's actions (bounded: each drain after the first only reacts to a persist
/// acknowledgement), then starts a snapshot if one is due and none is in flight (into
/// `snapshot`) and publishes the stats. When a drain has sends
/// before its persist, the write runs on a blocking thread while the loop awaits it:
/// `Network::send` only queues, and the runtime transmits while the loop is not running, so
/// with the fsync on the loop the member's early Requests and Sequence would leave after it
/// instead of overlapping it, and nothing else would be served meanwhile. `false` when the
/// member must stop.
async fn action_rounds<S: StateMachine>(
    cell: &DriverCell<S>,
    snapshot: &mut Option<SnapshotTask>,
) -> bool {
    for _ in 0..8 {
        let step = {
            let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
            let Some(driver) = guard.as_mut() else {
                return false;
            };
            match driver.actions_begin() {
                Ok(step) => step,
                Err(e) => {
                    driver.fail(e);
                    return false;
                }
            }
        };
        match step {
            ActionStep::Idle => break,
            ActionStep::Handled => {}
            ActionStep::Persist(pending) => {
                let (records, ack, rest) = *pending;
                let prepared = {
                    let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(driver) = guard.as_mut() else {
                        return false;
                    };
                    match driver.persist_prepare(&records, ack) {
                        Ok(batch) => batch.map(|b| (b, Arc::clone(&driver.engine))),
                        Err(e) => {
                            driver.fail(e);
                            return false;
                        }
                    }
                };
                // The fsync runs off the loop: meanwhile the runtime sends what was just
                // queued and serves everything else (the core waits: its inputs queue).
                let written = match prepared {
                    None => Ok(false),
                    Some((mut batch, engine)) => {
                        off_loop("abcast write task", move || {
                            engine
                                .write(&mut batch, true)
                                .map(|_| true)
                                .map_err(storage::storage_err)
                        })
                        .await
                    }
                };
                let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
                let Some(driver) = guard.as_mut() else {
                    return false;
                };
                let done = written.and_then(|wrote| {
                    if wrote {
                        driver.persist_done(records.len(), ack);
                    }
                    driver.actions_persisted(ack, rest)
                });
                if let Err(e) = done {
                    driver.fail(e);
                    return false;
                }
            }
        }
    }
    let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
    let Some(driver) = guard.as_mut() else {
        return false;
    };
    if snapshot.is_none() {
        *snapshot = driver.maybe_snapshot();
    }
    driver.publish();
    true
}

/// What [`Driver::actions_begin`] did.
enum ActionStep {
    /// The core had nothing to do.
    Idle,
    /// One drain, performed completely.
    Handled,
    /// One drain whose actions before its persist are performed (sends queued); the
    /// persist and what follows it wait for [`Driver::actions_finish`].
    Persist(Box<(Vec<Record>, PersistAck, Vec<Action>)>),
}

impl<S: StateMachine> Driver<S> {
    /// One turn: `event`, whatever else is already waiting (one fsync covers it all), the
    /// core's actions. `false` when the member must stop.
    fn turn(
        &mut self,
        event: Event<S>,
        commands: &mut mpsc::Receiver<Command<S>>,
        network: &Arc<dyn Network>,
    ) -> bool {
        if !self.handle(event) {
            return false;
        }
        for _ in 0..EVENTS_PER_TURN_MAX {
            if self.core.can_accept() {
                if let Ok(c) = commands.try_recv() {
                    self.handle(Event::Command(c));
                    continue;
                }
            }
            match poll_once(network.recv()) {
                Some(Some(i)) => {
                    self.handle(Event::Net(i));
                }
                _ => break,
            }
        }
        if self.core.disk_lost() || self.core.behind() {
            if let Err(e) = self.rebuild_step() {
                self.fail(e);
                return false;
            }
        }
        true
    }

    /// Moves the rebuild of a member whose disk was lost along: once the core has a plan,
    /// fetches a donor's image (off the loop); once it arrived, installs it. Retries later
    /// when no donor served one. `Err` on a storage error.
    fn rebuild_step(&mut self) -> Result<(), LogError> {
        if self.rebuild.is_none() {
            let Some(plan) = self.core.rebuild_plan() else {
                return Ok(());
            };
            tracing::warn!(
                member = self.cfg.core.id,
                lease = plan.lease,
                sequence_floor = plan.sequence_floor,
                donors = ?plan.donors,
                behind = self.core.behind(),
                "this member lacks history its peers hold (its disk was emptied or is an older \
                 copy, or its peers collected what it missed while excluded): rebuilding from \
                 a peer's snapshot and journal"
            );
            self.rebuild = Some(Rebuild {
                plan,
                fetch: None,
                failed_at: None,
            });
        }
        let ticks = self.ticks;
        let Some(r) = self.rebuild.as_mut() else {
            return Ok(());
        };
        let Some(fetch) = r.fetch.as_mut() else {
            if r.failed_at
                .is_none_or(|t| ticks.saturating_sub(t) >= REBUILD_RETRY_TICKS)
            {
                let id = rand::random();
                let network = Arc::clone(&self.network);
                r.fetch = Some(tokio::spawn(fetch_image(
                    network,
                    r.plan.donors.clone(),
                    id,
                )));
            }
            return Ok(());
        };
        if !fetch.is_finished() || self.snapshotting.is_some() {
            return Ok(());
        }
        let fetched = match poll_once(fetch) {
            Some(Ok(fetched)) => fetched,
            Some(Err(e)) => Err(format!("fetch task: {e}")),
            None => return Ok(()),
        };
        r.fetch = None;
        let failed = match fetched {
            Ok(image) => match self.install_image(&image) {
                Ok(()) => return Ok(()),
                Err(InstallError::Storage(e)) => return Err(e),
                Err(e @ InstallError::Image(_)) => e.to_string(),
            },
            Err(e) => e,
        };
        tracing::warn!(member = self.cfg.core.id, error = %failed, "rebuild failed; retrying");
        if let Some(r) = self.rebuild.as_mut() {
            r.failed_at = Some(ticks);
        }
        Ok(())
    }

    /// Writes a donor's image into this member's store (its snapshot, its journal records
    /// after this member's own, the plan's lease and sequence floor: one synced write), then
    /// starts the member again from the store, like a restart. A damaged image is refused
    /// before anything is written.
    fn install_image(&mut self, image: &[u8]) -> Result<(), InstallError> {
        let members = self.cfg.core.members;
        let Some(plan) = self.rebuild.as_ref().map(|r| r.plan.clone()) else {
            return Ok(());
        };
        let image: Image =
            postcard::from_bytes(image).map_err(|e| InstallError::Image(e.to_string()))?;
        if !image.snapshot.is_empty() {
            decode_snapshot(&image.snapshot, members)
                .map_err(|e| InstallError::Image(e.to_string()))?;
        }
        let mut decoded = Vec::with_capacity(image.records.len());
        for (k, data) in image.records.iter().enumerate() {
            decoded.push(
                decode_record(data, members)
                    .map_err(|why| InstallError::Image(format!("record {k}: {why}")))?,
            );
        }
        // The image's history replaces the Sequences this member's journal holds (an own
        // Sequence a reformation voided must not come back when its record of the cut was
        // compacted away at the donor): a cut at 0 precedes the copy. The donor must be in
        // this member's epoch or a later one (its history may hold what a later cut voids),
        // and what this member promised stays promised.
        let own = self.core.epoch_state();
        let first = self.cfg.core.epoch;
        let state = match last_epoch_state(decoded.iter()) {
            Some(donor) => own.adopt(donor, first).map_err(|(theirs, ours)| {
                InstallError::Image(format!(
                    "the donor is in epoch {theirs}, this member in {ours}"
                ))
            })?,
            None => own,
        };
        let cut = Record::Epoch {
            cut: 0,
            state: state.clone(),
        };
        let cut = postcard::to_stdvec(&cut).map_err(|e| InstallError::Image(e.to_string()))?;
        let entries: Vec<_> = std::iter::once(cut)
            .chain(image.records)
            .enumerate()
            .map(|(k, data)| {
                storage::entry(self.journal_next + k as u64, self.cfg.core.epoch, data)
            })
            .collect();
        let mut batch = LogBatch::with_capacity(entries.len());
        if !entries.is_empty() {
            batch
                .add_entries::<storage::EntryExt>(JOURNAL_GROUP, &entries)
                .map_err(|e| InstallError::Storage(storage::storage_err(e)))?;
        }
        if !image.snapshot.is_empty() {
            batch
                .put(SNAPSHOT_GROUP, SNAPSHOT_KEY.to_vec(), image.snapshot)
                .map_err(|e| InstallError::Storage(storage::storage_err(e)))?;
        }
        put_value(&mut batch, LEASE_KEY, &plan.lease.max(self.lease))
            .map_err(InstallError::Storage)?;
        put_value(&mut batch, FLOOR_KEY, &plan.sequence_floor).map_err(InstallError::Storage)?;
        put_value(&mut batch, EPOCH_KEY, &state).map_err(InstallError::Storage)?;
        let engine = &self.engine;
        blocking(|| engine.write(&mut batch, true))
            .map_err(|e| InstallError::Storage(storage::storage_err(e)))?;
        let loaded = {
            let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            // Whatever the member delivered before it knew its disk was lost is replayed from
            // the copied store (from its snapshot, or from the start): start from nothing.
            state
                .restore(&self.initial)
                .map_err(|e| InstallError::Storage(LogError::Storage(e.to_string())))?;
            load(&self.engine, members, &mut state).map_err(InstallError::Storage)?
        };
        let core = Core::recover_from(
            self.cfg.core.clone(),
            loaded.base.clone(),
            loaded.lease,
            loaded.records,
        )
        .with_sequence_floor(loaded.floor)
        .with_epoch_state(loaded.epoch)
        .with_incarnation_nonce(rand::random());
        tracing::warn!(
            member = self.cfg.core.id,
            resumes_at = loaded.base.as_ref().map_or(0, |b| b.delivered),
            "rebuilt from a peer's image; catching up"
        );
        self.core = core;
        self.journal = loaded.journal;
        self.journal_next = loaded.journal_next;
        self.lease = loaded.lease;
        self.resumed_at = loaded.base.as_ref().map_or(0, |b| b.delivered);
        self.snapshot = loaded.base;
        self.held.clear();
        self.rebuild = None;
        self.rebuilds += 1;
        // Proposals taken before the rebuild were never issued: their callers retry.
        for (_, (_, reply)) in self.proposers.drain() {
            let _ = reply.send(Err(LogError::Unavailable(
                "the member was rebuilt; retry".into(),
            )));
        }
        self.readers.clear();
        Ok(())
    }

    /// A peer being rebuilt asks for part of this member's image: built afresh (journal,
    /// then snapshot) when the request names a new image, then served from the copy.
    fn serve_image(&mut self, payload: &[u8]) -> Result<ImageChunk, String> {
        let request: ImageRequest = postcard::from_bytes(payload).map_err(|e| e.to_string())?;
        if self.core.disk_lost() || self.core.behind() {
            return Err("this member is being rebuilt itself".into());
        }
        if self
            .served
            .as_ref()
            .is_none_or(|(id, _, _)| *id != request.id)
        {
            if request.offset != 0 {
                return Err("unknown image; start again".into());
            }
            let mut records = Vec::new();
            if let (Some(first), Some(last)) = (
                self.engine.first_index(JOURNAL_GROUP),
                self.engine.last_index(JOURNAL_GROUP),
            ) {
                let engine = &self.engine;
                let entries =
                    blocking(|| storage::read_entries(engine, JOURNAL_GROUP, first, last + 1))
                        .map_err(|e| e.to_string())?;
                records = entries.into_iter().map(|e| e.data.to_vec()).collect();
            }
            // The donor's epoch (its journal may have been compacted past its last record).
            let epoch = Record::Epoch {
                cut: NUMBER_MAX,
                state: self.core.epoch_state(),
            };
            records.push(postcard::to_stdvec(&epoch).map_err(|e| e.to_string())?);
            let snapshot = self
                .engine
                .get(SNAPSHOT_GROUP, SNAPSHOT_KEY)
                .unwrap_or_default();
            let image =
                postcard::to_stdvec(&Image { snapshot, records }).map_err(|e| e.to_string())?;
            tracing::info!(
                member = self.cfg.core.id,
                bytes = image.len(),
                "serving a rebuild image"
            );
            self.served = Some((request.id, image, Instant::now()));
        }
        let image = self
            .served
            .as_ref()
            .map(|(_, i, _)| i.as_slice())
            .unwrap_or_default();
        let from = (request.offset as usize).min(image.len());
        let to = (from + IMAGE_CHUNK_BYTES).min(image.len());
        let chunk = ImageChunk {
            total: image.len() as u64,
            bytes: image[from..to].to_vec(),
        };
        if to == image.len() {
            // The last chunk: the copy is not kept (a lost answer means a fresh fetch).
            self.served = None;
        }
        Ok(chunk)
    }

    /// Stops on a storage error: waiting proposers learn it.
    fn fail(&mut self, e: LogError) {
        tracing::error!(error = %e, id = self.cfg.core.id, "abcast member stops");
        for (_, (_, reply)) in self.proposers.drain() {
            let _ = reply.send(Err(e.clone()));
        }
    }

    /// While the core is quiet, when its next heartbeat is due; `None` while it has timed
    /// work (retransmits, passes, probes, progress to spread...): then it ticks every
    /// [`AbcastConfig::tick_ms`].
    fn quiet_until(&self) -> Option<Instant> {
        self.core
            .quiet()
            .then(|| self.start + Duration::from_millis(self.core.heartbeat_due_ms()))
    }

    /// Returns `false` to stop.
    fn handle(&mut self, event: Event<S>) -> bool {
        if !matches!(event, Event::Tick | Event::Stop)
            && self.start.elapsed().as_millis() as u64
                >= self.last_tick_ms + self.cfg.tick_ms.max(1)
        {
            // Woken from a quiet sleep: the core's clock catches up first, as a tick would
            // have done, so what this event starts is timed from now.
            self.handle(Event::Tick);
        }
        match event {
            Event::Stop => return false,
            Event::PeerDown(peer) => {
                tracing::info!(
                    member = self.cfg.core.id,
                    peer,
                    "atomic broadcast: peer down"
                );
                self.core.suspect(peer);
            }
            Event::Tick => {
                let now_ms = self.start.elapsed().as_millis() as u64;
                self.last_tick_ms = now_ms;
                self.core.tick(now_ms);
                self.ticks += 1;
                if self.ticks % COMPACT_EVERY_TICKS == 0 {
                    self.compact(false);
                    // Callers that gave up (timeout) no longer wait.
                    self.proposers.retain(|_, (_, tx)| !tx.is_closed());
                    // An image whose fetch was abandoned.
                    if self
                        .served
                        .as_ref()
                        .is_some_and(|(_, _, at)| at.elapsed() > Duration::from_secs(60))
                    {
                        self.served = None;
                    }
                    self.readers.retain(|_, tx| !tx.is_closed());
                }
            }
            Event::Command(Command::Propose { id, payload, reply }) => {
                match self.core.propose(payload) {
                    Ok(proposal) => {
                        self.proposers.insert(proposal, (id, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(LogError::Rejected(e.to_string())));
                    }
                }
            }
            Event::Command(Command::Read { reply }) => {
                let token = self.next_read;
                self.next_read += 1;
                self.readers.insert(token, reply);
                self.core.read_barrier(token);
            }
            Event::Net(Incoming::Message { from, payload }) => match Message::decode(&payload) {
                Ok(message) => self.core.handle_message(from, message),
                Err(e) => tracing::debug!(from, error = %e, "undecodable abcast message"),
            },
            Event::SnapshotWritten(written) => match written {
                Ok(len) => self.snapshot_written(len),
                Err(e) => {
                    self.fail(e);
                    return false;
                }
            },
            Event::Net(Incoming::Request {
                from,
                payload,
                responder,
            }) => {
                // The only request between members: a peer being rebuilt fetches an image.
                let answer = if from < self.cfg.core.members && from != self.cfg.core.id {
                    self.serve_image(&payload)
                } else {
                    Err(format!("{from} is not a peer"))
                };
                if let Err(e) = &answer {
                    tracing::warn!(from, error = %e, "rebuild image request refused");
                }
                match postcard::to_stdvec(&answer) {
                    Ok(bytes) => responder.respond(Bytes::from(bytes)),
                    Err(e) => tracing::error!(error = %e, "cannot encode an image chunk"),
                }
            }
        }
        true
    }

    /// One drain of the core: what comes before its persist (own Requests under the lease,
    /// at most one own Sequence) is performed at once; the persist and what follows it (sent
    /// stamped with its progress) are done here too unless sends went out first, in which
    /// case they are handed back for [`Driver::actions_finish`].
    fn actions_begin(&mut self) -> Result<ActionStep, LogError> {
        let mut actions = self.core.drain();
        if actions.is_empty() {
            return Ok(ActionStep::Idle);
        }
        let Some(at) = actions
            .iter()
            .position(|a| matches!(a, Action::Persist { .. }))
        else {
            self.perform(actions)?;
            return Ok(ActionStep::Handled);
        };
        let mut rest = actions.split_off(at);
        let sent = actions
            .iter()
            .any(|a| matches!(a, Action::Send { .. } | Action::Broadcast(_)));
        self.perform(actions)?;
        let Action::Persist { records, ack } = rest.remove(0) else {
            unreachable!("split at a persist");
        };
        let writes = !records.is_empty() || ack.lease > self.lease;
        if sent && writes {
            return Ok(ActionStep::Persist(Box::new((records, ack, rest))));
        }
        self.actions_finish((records, ack, rest))?;
        Ok(ActionStep::Handled)
    }

    /// Writes a drain's records (one fsync), then performs what waited for them.
    fn actions_finish(
        &mut self,
        (records, ack, rest): (Vec<Record>, PersistAck, Vec<Action>),
    ) -> Result<(), LogError> {
        self.persist(&records, ack)?;
        self.actions_persisted(ack, rest)
    }

    /// Performs what waited for a drain's persist, stamped with its progress.
    fn actions_persisted(
        &mut self,
        ack: PersistAck,
        mut rest: Vec<Action>,
    ) -> Result<(), LogError> {
        self.core.persisted_then(ack, &mut rest);
        self.perform(rest)
    }

    /// Performs actions in order (a persist among them is acknowledged without re-stamping).
    fn perform(&mut self, actions: Vec<Action>) -> Result<(), LogError> {
        let mut deliveries = Vec::new();
        for action in actions {
            match action {
                Action::Persist { records, ack } => {
                    self.persist(&records, ack)?;
                    self.core.persisted(ack);
                }
                Action::Send { to, message } => {
                    if let Ok(bytes) = message.encode() {
                        self.send(to, Bytes::from(bytes));
                    }
                }
                Action::Broadcast(message) => {
                    if let Ok(bytes) = message.encode() {
                        let bytes = Bytes::from(bytes);
                        for to in 0..self.cfg.core.members {
                            if to != self.cfg.core.id {
                                self.send(to, bytes.clone());
                            }
                        }
                    }
                }
                Action::Deliver(d) => deliveries.push(d),
                Action::ReadReady { token } => {
                    // Deliveries drained before this barrier are applied first.
                    self.apply(std::mem::take(&mut deliveries));
                    self.settle(Held::Read(token));
                }
            }
        }
        self.apply(deliveries);
        Ok(())
    }

    /// Every `snapshot_every` applied payloads (more as the state grows): starts writing the
    /// state with its base on a blocking thread, and holds what would change the state until
    /// it is written ([`Driver::snapshot_written`]). Called with every drained delivery
    /// applied and nothing held, so the state is exactly "Sequences `0..delivered`".
    fn maybe_snapshot(&mut self) -> Option<SnapshotTask> {
        let by_size = self
            .snapshot_len
            .checked_div(self.cfg.snapshot_bytes_per_payload)
            .unwrap_or(0);
        if self.cfg.snapshot_every == 0
            || self.snapshotting.is_some()
            || self.since_snapshot < self.cfg.snapshot_every.max(by_size)
        {
            return None;
        }
        debug_assert!(self.held.is_empty(), "nothing is held between snapshots");
        self.since_snapshot = 0;
        let base = self.core.snapshot_base();
        self.snapshotting = Some(base.clone());
        let shared = Arc::clone(&self.shared);
        let engine = Arc::clone(&self.engine);
        let id = self.cfg.core.id;
        Some(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let bytes = shared
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .snapshot();
            let serialized = started.elapsed();
            let mut batch = LogBatch::default();
            put_value(
                &mut batch,
                SNAPSHOT_KEY,
                &(&base, serde_bytes::Bytes::new(&bytes)),
            )?;
            engine
                .write(&mut batch, true)
                .map_err(storage::storage_err)?;
            tracing::debug!(
                member = id,
                delivered = base.delivered,
                bytes = bytes.len(),
                serialize_ms = serialized.as_secs_f64() * 1e3,
                total_ms = started.elapsed().as_secs_f64() * 1e3,
                "abcast snapshot written"
            );
            Ok(bytes.len() as u64)
        }))
    }

    /// The snapshot in flight is durable: compacts the journal behind it and releases what
    /// waited, in order.
    fn snapshot_written(&mut self, len: u64) {
        self.snapshot = self.snapshotting.take();
        self.snapshot_len = len;
        self.fsyncs += 1;
        self.snapshots += 1;
        self.compact(true);
        for held in std::mem::take(&mut self.held) {
            self.settle(held);
        }
    }

    /// Applies deliveries or answers a read now, or holds it while a snapshot is taken.
    fn settle(&mut self, work: Held) {
        if self.snapshotting.is_some() {
            self.held.push(work);
            return;
        }
        match work {
            Held::Deliveries(deliveries) => self.apply_now(deliveries),
            Held::Read(token) => {
                if let Some(reply) = self.readers.remove(&token) {
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Drops the journal's front while it holds only records below the snapshot that every
    /// member has delivered.
    fn compact(&mut self, purge: bool) {
        let Some(snap) = &self.snapshot else {
            return;
        };
        let g = self.core.collected().min(snap.delivered);
        let prefixes: Vec<u64> = self
            .core
            .collected_prefixes()
            .iter()
            .zip(&snap.prefixes)
            .map(|(a, b)| (*a).min(*b))
            .collect();
        let mut popped = false;
        while let Some((_, d)) = self.journal.front() {
            let garbage = match d {
                Desc::Sequence(k) => *k < g,
                Desc::Request(key) => prefixes
                    .get(key.sender as usize)
                    .is_some_and(|p| key.seq < *p),
                Desc::Epoch => true,
            };
            if !garbage {
                break;
            }
            self.journal.pop_front();
            popped = true;
        }
        if popped {
            let to = self
                .journal
                .front()
                .map(|(i, _)| *i)
                .unwrap_or(self.journal_next);
            self.engine.compact_to(JOURNAL_GROUP, to);
        }
        if purge {
            let engine = &self.engine;
            let _ = blocking(|| isolated(|| engine.purge_expired_files()));
        }
    }

    fn send(&mut self, to: u64, bytes: Bytes) {
        if self.network.send(to, bytes).is_err() {
            self.send_failures += 1;
        }
    }

    /// Writes the records and, when it grew, the seq lease in one synced write.
    fn persist(&mut self, records: &[Record], ack: PersistAck) -> Result<(), LogError> {
        if let Some(mut batch) = self.persist_prepare(records, ack)? {
            let engine = &self.engine;
            blocking(|| engine.write(&mut batch, true)).map_err(storage::storage_err)?;
            self.persist_done(records.len(), ack);
        }
        Ok(())
    }

    /// The journal batch for `records` and, when it grew, the lease (`None`: nothing to
    /// write). The journal's bookkeeping counts the records as written from here on; the
    /// caller writes the batch synced, then calls [`Driver::persist_done`] (or stops).
    fn persist_prepare(
        &mut self,
        records: &[Record],
        ack: PersistAck,
    ) -> Result<Option<LogBatch>, LogError> {
        let lease = (ack.lease > self.lease).then_some(ack.lease);
        if records.is_empty() && lease.is_none() {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(records.len());
        for r in records {
            let data = postcard::to_stdvec(r).map_err(|e| LogError::Storage(e.to_string()))?;
            self.journal.push_back((self.journal_next, Desc::of(r)));
            entries.push(storage::entry(self.journal_next, self.cfg.core.epoch, data));
            self.journal_next += 1;
        }
        let mut batch = LogBatch::with_capacity(entries.len());
        if !entries.is_empty() {
            batch
                .add_entries::<storage::EntryExt>(JOURNAL_GROUP, &entries)
                .map_err(storage::storage_err)?;
        }
        if let Some(lease) = lease {
            put_value(&mut batch, LEASE_KEY, &lease)?;
        }
        if let Some(state) = last_epoch_state(records.iter()) {
            put_value(&mut batch, EPOCH_KEY, state)?;
        }
        Ok(Some(batch))
    }

    /// Books a synced write of `records` records and the lease in `ack`.
    fn persist_done(&mut self, records: usize, ack: PersistAck) {
        self.fsyncs += 1;
        self.lease = self.lease.max(ack.lease);
        self.records_persisted += records as u64;
    }

    fn apply(&mut self, deliveries: Vec<Delivery>) {
        if !deliveries.is_empty() {
            self.settle(Held::Deliveries(deliveries));
        }
    }

    fn apply_now(&mut self, deliveries: Vec<Delivery>) {
        let me = self.cfg.core.id;
        let mut answers = Vec::new();
        {
            let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
            self.since_snapshot += deliveries.len() as u64;
            for d in deliveries {
                let (request, outcome) = match postcard::from_bytes::<Envelope<S::Command>>(
                    &d.payload,
                ) {
                    Ok(env) => (Some(env.id), applied_to_result(state.apply(env))),
                    Err(e) => {
                        tracing::error!(number = d.number, error = %e, "undecodable command skipped");
                        (
                            None,
                            Err(LogError::Rejected(format!("undecodable command: {e}"))),
                        )
                    }
                };
                // The proposer is matched by this member's proposal number, checked against
                // the request id it proposed.
                if d.key.sender == me {
                    if let Some((id, reply)) = self.proposers.remove(&d.proposal) {
                        if request.is_none_or(|r| r == id) {
                            answers.push((reply, outcome));
                        } else {
                            tracing::error!(
                                proposal = d.proposal,
                                "delivery does not match its proposer"
                            );
                            answers.push((
                                reply,
                                Err(LogError::Unavailable("proposal identity mismatch".into())),
                            ));
                        }
                    }
                }
            }
        }
        for (reply, outcome) in answers {
            let _ = reply.send(outcome);
        }
    }

    fn publish(&mut self) {
        let c = &self.core;
        let (held_sequences, held_requests) = c.held();
        let s = AbcastStats {
            delivered: c.delivered(),
            deliverable: c.deliverable(),
            sequenced: c.sequenced(),
            stable: c.stable(),
            known: c.known(),
            lag: c.known().saturating_sub(c.delivered()),
            recovering: c.recovering() || c.disk_lost() || c.behind(),
            rebuilding: c.disk_lost() || c.behind(),
            fsyncs: self.fsyncs,
            records_persisted: self.records_persisted,
            send_failures: self.send_failures,
            snapshots: self.snapshots,
            rebuilds: self.rebuilds,
            journal_len: self.journal.len() as u64,
            held_sequences: held_sequences as u64,
            held_requests: held_requests as u64,
            held_request_bytes: c.held_bytes() as u64,
            resumed_at: self.resumed_at,
            epoch: c.epoch(),
            excluded: c
                .excluded()
                .iter()
                .filter(|m| **m < 64)
                .fold(0, |mask, m| mask | 1 << m),
            excluded_self: c.excluded().contains(&self.cfg.core.id),
            core: c.stats(),
        };
        *self.shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}
