//! [`::raft::Storage`] over raft-engine, the way TiKV pairs them.
//!
//! One raft-engine instance per node (its own directory), one Raft group (`GROUP`) in it.
//! Beside the entries, a few small keys live in the engine:
//!
//! | key | value | written when |
//! |---|---|---|
//! | `raft_hard_state` | `HardState` (protobuf) | every Ready that changes it (same batch as the entries) |
//! | `raft_conf_state` | `ConfState` (protobuf) | first start, snapshot install |
//! | `raft_snapshot` | `Snapshot` (protobuf; data = the deduplicated state machine) | every `snapshot_every` applied entries, snapshot install |
//! | `raft_truncated` | `(index, term)` (postcard) of the last compacted entry | log compaction, snapshot install |
//! | `raft_applied` | `u64` (postcard): the applied index recoverable from disk | with every snapshot |
//! | `raft_rejoin` | one byte: this store started empty and may not vote yet (see "Started with an empty disk" in the [module docs](super)) | first start; deleted once the node may vote |
//! | `raft_seen` | map raft id -> term (postcard): the highest term of a message received from each peer, pre-votes left out (see "Started from an older copy") | on a tick after it grew, without fsync |
//!
//! The state machine lives in memory, so the applied index that survives a restart is the
//! snapshot's index; the committed entries after it are applied again on restart
//! (deterministically, duplicate table included).
//!
//! Every write of a Ready (snapshot, entries, hard state) is one raft-engine batch, fsync'd
//! when raft-rs says so (`Ready::must_sync`): group commit. Compaction writes the snapshot, the
//! truncated state and the engine's `Compact` command in one fsync'd batch, so the log never
//! loses entries that no snapshot covers.
//!
//! The terms of all live entries are cached in memory (`terms`, 8 bytes per entry, bounded by
//! compaction): raft-rs asks for terms far more often than for entries. The most recently
//! written entries are kept in memory too (`recent`, at most [`RECENT_ENTRIES_MAX`] entries
//! and [`RECENT_BYTES_MAX`] bytes): raft-rs reads every committed entry back to apply it and
//! every entry it sends a follower that is not far behind, and those reads never touch the
//! engine. Older entries come from raft-engine on a thread of their own
//! ([`crate::storage::isolated`]).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use ::raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use ::raft::{Error as RaftError, GetEntriesContext, RaftState, Storage, StorageError};
use raft_engine::{Command as EngineCommand, Engine, LogBatch};

use crate::log::LogError;
use crate::storage::{isolated, open_engine, read_entries, storage_err, EntryExt};

const GROUP: u64 = 1;
const KEY_HARD_STATE: &[u8] = b"raft_hard_state";
const KEY_CONF_STATE: &[u8] = b"raft_conf_state";
const KEY_SNAPSHOT: &[u8] = b"raft_snapshot";
const KEY_TRUNCATED: &[u8] = b"raft_truncated";
const KEY_APPLIED: &[u8] = b"raft_applied";
const KEY_REJOIN: &[u8] = b"raft_rejoin";
const KEY_SEEN: &[u8] = b"raft_seen";

/// Most entries kept in the recent-entry cache.
pub(crate) const RECENT_ENTRIES_MAX: usize = 8192;
/// Most payload bytes kept in the recent-entry cache (at least one entry is kept).
pub(crate) const RECENT_BYTES_MAX: usize = 32 << 20;

/// A batch [`EngineStorage::prepare`] built, to be written (and fsync'd when `sync`) by
/// [`PendingWrite::run`], on any thread.
pub(crate) struct PendingWrite {
    engine: Arc<Engine>,
    batch: LogBatch,
    sync: bool,
}

impl PendingWrite {
    /// Writes the batch.
    pub(crate) fn run(&mut self) -> Result<(), LogError> {
        self.engine
            .write(&mut self.batch, self.sync)
            .map_err(storage_err)?;
        Ok(())
    }
}

/// Raft's durable state in raft-engine, with an in-memory cache of what raft-rs reads often.
pub(crate) struct EngineStorage {
    engine: Arc<Engine>,
    hard_state: HardState,
    hard_state_dirty: bool,
    conf_state: ConfState,
    /// Index and term of the last entry removed by compaction (0, 0 before any).
    trunc_index: u64,
    trunc_term: u64,
    /// Terms of the entries `trunc_index + 1 ..= last_index`.
    terms: VecDeque<u64>,
    /// The latest state-machine snapshot (empty before the first).
    snapshot: Snapshot,
    /// The most recently written entries, contiguous, ending at the last index.
    recent: VecDeque<Entry>,
    /// Payload bytes in `recent`.
    recent_bytes: usize,
    /// `raft_rejoin` is on disk: the store started empty and the node has not yet learned
    /// that it may vote.
    rejoin: bool,
    /// The highest term of a message received from each peer (raft id), pre-votes left out.
    seen: BTreeMap<u64, u64>,
    /// `seen` grew since it was last written.
    seen_dirty: bool,
}

fn pb_err(what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Storage(format!("{what}: {e}"))
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> RaftError {
    RaftError::Store(StorageError::Other(Box::new(e)))
}

impl EngineStorage {
    /// Opens the store in `dir`. A fresh store starts with `voters` (raft ids) as its
    /// configuration, written to disk at once; an existing one recovers everything it holds.
    pub(crate) fn open(dir: &Path, voters: &[u64]) -> Result<Self, LogError> {
        let engine = open_engine(dir)?;
        let hard_state = engine
            .get_message::<HardState>(GROUP, KEY_HARD_STATE)
            .map_err(storage_err)?
            .unwrap_or_default();
        let stored_conf = engine
            .get_message::<ConfState>(GROUP, KEY_CONF_STATE)
            .map_err(storage_err)?;
        let fresh = stored_conf.is_none();
        let conf_state = stored_conf.unwrap_or_else(|| ConfState {
            voters: voters.to_vec(),
            ..ConfState::default()
        });
        let snapshot = engine
            .get_message::<Snapshot>(GROUP, KEY_SNAPSHOT)
            .map_err(storage_err)?
            .unwrap_or_default();
        let (trunc_index, trunc_term): (u64, u64) = match engine.get(GROUP, KEY_TRUNCATED) {
            Some(raw) => postcard::from_bytes(&raw).map_err(|e| pb_err("truncated state", e))?,
            None => (0, 0),
        };
        let mut terms = VecDeque::new();
        if let Some(last) = engine.last_index(GROUP) {
            let first = engine.first_index(GROUP).unwrap_or(trunc_index + 1);
            if first > trunc_index + 1 && last > trunc_index {
                return Err(LogError::Storage(format!(
                    "log starts at {first} but only {trunc_index} is compacted"
                )));
            }
            let begin = trunc_index + 1;
            if last >= begin {
                let entries = read_entries(&engine, GROUP, begin, last + 1)?;
                for (k, e) in entries.iter().enumerate() {
                    if e.index != begin + k as u64 {
                        return Err(LogError::Storage(format!(
                            "entry {} found where {} was expected",
                            e.index,
                            begin + k as u64
                        )));
                    }
                    terms.push_back(e.term);
                }
            }
        }
        let rejoin = fresh || engine.get(GROUP, KEY_REJOIN).is_some();
        let seen: BTreeMap<u64, u64> = match engine.get(GROUP, KEY_SEEN) {
            Some(raw) => postcard::from_bytes(&raw).map_err(|e| pb_err("seen terms", e))?,
            None => BTreeMap::new(),
        };
        let mut store = Self {
            engine: Arc::new(engine),
            hard_state,
            hard_state_dirty: false,
            conf_state,
            trunc_index,
            trunc_term,
            terms,
            snapshot,
            recent: VecDeque::new(),
            recent_bytes: 0,
            rejoin,
            seen,
            seen_dirty: false,
        };
        // raft-rs stops the process on a hard state committing beyond the log; a damaged or
        // foreign store is refused here with an error instead.
        if store.hard_state.commit > store.last() {
            return Err(LogError::Storage(format!(
                "hard state commits {} but the log ends at {}",
                store.hard_state.commit,
                store.last()
            )));
        }
        if fresh {
            // The mark goes with the configuration: a store that has one and not the other
            // was never written by this code.
            let mut batch = LogBatch::default();
            batch
                .put_message(GROUP, KEY_CONF_STATE.to_vec(), &store.conf_state)
                .map_err(storage_err)?;
            batch
                .put(GROUP, KEY_REJOIN.to_vec(), vec![1])
                .map_err(storage_err)?;
            store.write(&mut batch, true)?;
        }
        Ok(store)
    }

    /// Whether this store started empty and its node has not yet learned that it may vote
    /// (kept on disk, so a restart during the catch-up does not forget it).
    pub(crate) fn rejoining(&self) -> bool {
        self.rejoin
    }

    /// The store turned out older than what its node had done: writes the mark (synced),
    /// so that the node does not vote until it has caught up, across restarts too.
    pub(crate) fn begin_rejoin(&mut self) -> Result<(), LogError> {
        if self.rejoin {
            return Ok(());
        }
        let mut batch = LogBatch::default();
        batch
            .put(GROUP, KEY_REJOIN.to_vec(), vec![1])
            .map_err(storage_err)?;
        self.write(&mut batch, true)?;
        self.rejoin = true;
        Ok(())
    }

    /// The node may vote from now on: deletes the mark (synced).
    pub(crate) fn end_rejoin(&mut self) -> Result<(), LogError> {
        if !self.rejoin {
            return Ok(());
        }
        let mut batch = LogBatch::default();
        batch.delete(GROUP, KEY_REJOIN.to_vec());
        self.write(&mut batch, true)?;
        self.rejoin = false;
        Ok(())
    }

    /// The highest term of a message received from each peer (raft id) that this store
    /// knows of, pre-votes left out: what the node tells a starting peer it saw of it.
    pub(crate) fn seen(&self) -> &BTreeMap<u64, u64> {
        &self.seen
    }

    /// A message of `term` arrived from `peer` (raft id): remembers it if it is the highest
    /// yet (written by [`EngineStorage::write_seen`]).
    pub(crate) fn note_seen(&mut self, peer: u64, term: u64) {
        let known = self.seen.entry(peer).or_insert(0);
        if term > *known {
            *known = term;
            self.seen_dirty = true;
        }
    }

    /// Writes the seen terms if they grew, without fsync: they are evidence for a peer's
    /// check, not a promise, so a crash that loses the last of them costs nothing but that.
    pub(crate) fn write_seen(&mut self) -> Result<(), LogError> {
        if !self.seen_dirty {
            return Ok(());
        }
        let raw = postcard::to_stdvec(&self.seen).map_err(|e| pb_err("seen terms", e))?;
        let mut batch = LogBatch::default();
        batch
            .put(GROUP, KEY_SEEN.to_vec(), raw)
            .map_err(storage_err)?;
        self.write(&mut batch, false)?;
        self.seen_dirty = false;
        Ok(())
    }

    /// The vote and term on disk (`HardState::vote`, `HardState::term`).
    pub(crate) fn durable_vote(&self) -> (u64, u64) {
        (self.hard_state.term, self.hard_state.vote)
    }

    fn write(&mut self, batch: &mut LogBatch, sync: bool) -> Result<(), LogError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.engine.write(batch, sync).map_err(storage_err)?;
        Ok(())
    }

    /// The applied index that can be recovered from disk: the snapshot's.
    pub(crate) fn applied_on_disk(&self) -> u64 {
        self.engine
            .get(GROUP, KEY_APPLIED)
            .and_then(|raw| postcard::from_bytes::<u64>(&raw).ok())
            .unwrap_or(0)
            .max(self.snapshot.get_metadata().index)
    }

    /// The latest snapshot (possibly empty).
    pub(crate) fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Index of the last compacted entry.
    pub(crate) fn truncated_index(&self) -> u64 {
        self.trunc_index
    }

    fn last(&self) -> u64 {
        self.trunc_index + self.terms.len() as u64
    }

    /// Index of the first entry in `recent` (meaningless while it is empty).
    fn recent_first(&self) -> u64 {
        self.recent.front().map_or(0, |e| e.index)
    }

    /// Adds freshly written entries (already checked to follow `trunc_index` without a gap)
    /// to the recent-entry cache, dropping a conflicting tail they replace and the oldest
    /// entries beyond the bounds.
    fn remember(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let first_cached = self.recent_first();
        if self.recent.is_empty() || first.index < first_cached {
            self.recent.clear();
            self.recent_bytes = 0;
        } else {
            let keep = (first.index - first_cached) as usize;
            if keep > self.recent.len() {
                // Not adjacent to what is cached: start over from these.
                self.recent.clear();
                self.recent_bytes = 0;
            } else {
                for e in self.recent.drain(keep..) {
                    self.recent_bytes -= e.data.len();
                }
            }
        }
        for e in entries {
            self.recent_bytes += e.data.len();
            self.recent.push_back(e.clone());
        }
        while self.recent.len() > 1
            && (self.recent.len() > RECENT_ENTRIES_MAX || self.recent_bytes > RECENT_BYTES_MAX)
        {
            if let Some(e) = self.recent.pop_front() {
                self.recent_bytes -= e.data.len();
            }
        }
    }

    /// Entries `[low, high)` from the recent-entry cache, if it holds all of them.
    fn cached(&self, low: u64, high: u64) -> Option<Vec<Entry>> {
        let first = self.recent_first();
        if self.recent.is_empty() || low < first || high > first + self.recent.len() as u64 {
            return None;
        }
        let from = (low - first) as usize;
        let to = (high - first) as usize;
        Some(self.recent.range(from..to).cloned().collect())
    }

    /// Records a commit index learned after a Ready (persisted with the next batch).
    pub(crate) fn set_commit(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
            self.hard_state_dirty = true;
        }
    }

    /// Persists one Ready: an incoming snapshot (replacing the whole log), new entries (which
    /// may overwrite a conflicting tail) and the hard state, in one batch; fsync'd when `sync`.
    #[cfg(test)]
    pub(crate) fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), LogError> {
        match self.prepare(snapshot, entries, hard_state, sync)? {
            Some(mut write) => write.run(),
            None => Ok(()),
        }
    }

    /// [`EngineStorage::persist`] without the write: updates what this store keeps in memory
    /// and returns the batch to write (`None` if there is nothing to write), which the caller
    /// must run, off the loop if it likes, before it acts on the Ready's persistence (sends
    /// the messages that wait for it, advances). If the write fails the node must stop.
    pub(crate) fn prepare(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<Option<PendingWrite>, LogError> {
        let mut batch = LogBatch::with_capacity(entries.len() + 4);
        if let Some(snap) = snapshot {
            let md = snap.get_metadata();
            // Drop the whole group (entries and keys), then write the new state in the same
            // batch: raft-engine applies a batch's items in order and atomically.
            batch.add_command(GROUP, EngineCommand::Clean);
            batch
                .put_message(GROUP, KEY_SNAPSHOT.to_vec(), snap)
                .map_err(storage_err)?;
            batch
                .put_message(GROUP, KEY_CONF_STATE.to_vec(), md.get_conf_state())
                .map_err(storage_err)?;
            let trunc =
                postcard::to_stdvec(&(md.index, md.term)).map_err(|e| pb_err("encode", e))?;
            batch
                .put(GROUP, KEY_TRUNCATED.to_vec(), trunc)
                .map_err(storage_err)?;
            let applied = postcard::to_stdvec(&md.index).map_err(|e| pb_err("encode", e))?;
            batch
                .put(GROUP, KEY_APPLIED.to_vec(), applied)
                .map_err(storage_err)?;
            self.snapshot = snap.clone();
            self.conf_state = md.get_conf_state().clone();
            self.trunc_index = md.index;
            self.trunc_term = md.term;
            self.terms.clear();
            self.recent.clear();
            self.recent_bytes = 0;
            if self.hard_state.commit < md.index {
                self.hard_state.commit = md.index;
            }
            self.hard_state_dirty = true;
        }
        if let Some(first) = entries.first() {
            if first.index <= self.trunc_index {
                return Err(LogError::Storage(format!(
                    "append at {} below the compacted index {}",
                    first.index, self.trunc_index
                )));
            }
            let keep = (first.index - self.trunc_index - 1) as usize;
            if keep > self.terms.len() {
                return Err(LogError::Storage(format!(
                    "append at {} leaves a gap after {}",
                    first.index,
                    self.last()
                )));
            }
            batch
                .add_entries::<EntryExt>(GROUP, entries)
                .map_err(storage_err)?;
            self.terms.truncate(keep);
            self.terms.extend(entries.iter().map(|e| e.term));
            self.remember(entries);
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
            self.hard_state_dirty = true;
        }
        if self.hard_state_dirty {
            batch
                .put_message(GROUP, KEY_HARD_STATE.to_vec(), &self.hard_state)
                .map_err(storage_err)?;
            self.hard_state_dirty = false;
        }
        if batch.is_empty() {
            return Ok(None);
        }
        Ok(Some(PendingWrite {
            engine: Arc::clone(&self.engine),
            batch,
            sync: sync || snapshot.is_some(),
        }))
    }

    /// The engine, shared with the writes this store prepared (see
    /// [`crate::storage::wait_for_writes`]).
    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stores a snapshot of the state machine at `applied` and compacts the log up to
    /// `applied - margin` (keeping `margin` entries for followers that are only a little
    /// behind). One fsync'd batch.
    pub(crate) fn snapshot_and_compact(
        &mut self,
        applied: u64,
        data: Vec<u8>,
        margin: u64,
    ) -> Result<(), LogError> {
        let term = self
            .term(applied)
            .map_err(|e| LogError::Storage(format!("term of {applied}: {e}")))?;
        let mut snap = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        {
            let md = snap.mut_metadata();
            md.index = applied;
            md.term = term;
            md.set_conf_state(self.conf_state.clone());
        }
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, KEY_SNAPSHOT.to_vec(), &snap)
            .map_err(storage_err)?;
        let applied_raw = postcard::to_stdvec(&applied).map_err(|e| pb_err("encode", e))?;
        batch
            .put(GROUP, KEY_APPLIED.to_vec(), applied_raw)
            .map_err(storage_err)?;
        let compact_to = applied.saturating_sub(margin);
        let mut new_trunc = None;
        if compact_to > self.trunc_index {
            let t = self
                .term(compact_to)
                .map_err(|e| LogError::Storage(format!("term of {compact_to}: {e}")))?;
            let raw = postcard::to_stdvec(&(compact_to, t)).map_err(|e| pb_err("encode", e))?;
            batch
                .put(GROUP, KEY_TRUNCATED.to_vec(), raw)
                .map_err(storage_err)?;
            batch.add_command(
                GROUP,
                EngineCommand::Compact {
                    index: compact_to + 1,
                },
            );
            new_trunc = Some((compact_to, t));
        }
        if self.hard_state.commit < applied {
            self.hard_state.commit = applied;
        }
        batch
            .put_message(GROUP, KEY_HARD_STATE.to_vec(), &self.hard_state)
            .map_err(storage_err)?;
        self.hard_state_dirty = false;
        self.write(&mut batch, true)?;
        self.snapshot = snap;
        if let Some((index, t)) = new_trunc {
            let drop = (index - self.trunc_index) as usize;
            self.terms.drain(..drop.min(self.terms.len()));
            self.trunc_index = index;
            self.trunc_term = t;
            while self.recent.front().is_some_and(|e| e.index <= index) {
                if let Some(e) = self.recent.pop_front() {
                    self.recent_bytes -= e.data.len();
                }
            }
            let engine = &self.engine;
            if let Err(e) = isolated(|| engine.purge_expired_files()) {
                tracing::warn!(error = %e, "raft-engine purge failed");
            }
        }
        Ok(())
    }
}

impl Storage for EngineStorage {
    fn initial_state(&self) -> ::raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> ::raft::Result<Vec<Entry>> {
        if low <= self.trunc_index {
            return Err(RaftError::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(RaftError::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        if low >= high {
            return Ok(Vec::new());
        }
        if let Some(mut out) = self.cached(low, high) {
            ::raft::util::limit_size(&mut out, max_size);
            return Ok(out);
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let max = max_size.map(|m| m as usize);
        let engine = &self.engine;
        isolated(|| engine.fetch_entries_to::<EntryExt>(GROUP, low, high, max, &mut out))
            .map_err(other)?;
        Ok(out)
    }

    fn term(&self, idx: u64) -> ::raft::Result<u64> {
        if idx == self.trunc_index {
            return Ok(self.trunc_term);
        }
        if idx < self.trunc_index {
            return Err(RaftError::Store(StorageError::Compacted));
        }
        match self.terms.get((idx - self.trunc_index - 1) as usize) {
            Some(t) => Ok(*t),
            None => Err(RaftError::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> ::raft::Result<u64> {
        Ok(self.trunc_index + 1)
    }

    fn last_index(&self) -> ::raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> ::raft::Result<Snapshot> {
        let md = self.snapshot.get_metadata();
        if md.index == 0 || md.index < request_index || md.index < self.trunc_index {
            return Err(RaftError::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ents(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range
            .map(|i| crate::storage::entry(i, term, i.to_be_bytes().to_vec()))
            .collect()
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn fresh_store_has_the_configured_voters() {
        let dir = tempfile::tempdir().unwrap();
        let s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        let st = s.initial_state().unwrap();
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
        assert_eq!(s.term(0).unwrap(), 0);
        drop(s);
        // The configuration is on disk: another voter list is ignored on reopen.
        let s = EngineStorage::open(dir.path(), &[9]).unwrap();
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    }

    #[test]
    fn a_store_started_empty_is_marked_until_its_node_may_vote() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert!(s.rejoining());
        s.persist(None, &ents(1..=3, 1), Some(&hs(1, 0, 3)), true)
            .unwrap();
        drop(s);
        // A restart during the catch-up keeps the mark, although the store is not empty now.
        let mut s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert!(s.rejoining());
        s.end_rejoin().unwrap();
        assert!(!s.rejoining());
        drop(s);
        let s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert!(!s.rejoining());
        assert_eq!(s.last_index().unwrap(), 3);
        drop(s);
        assert_eq!(raw(dir.path(), KEY_REJOIN), None);
    }

    #[test]
    fn entries_and_hard_state_survive_reopen_and_tails_are_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        s.persist(None, &ents(1..=10, 1), Some(&hs(1, 1, 4)), true)
            .unwrap();
        // A new leader overwrites 6.. with a shorter tail of term 2.
        s.persist(None, &ents(6..=8, 2), Some(&hs(2, 2, 5)), true)
            .unwrap();
        assert_eq!(s.last_index().unwrap(), 8);
        drop(s);
        let s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(s.last_index().unwrap(), 8);
        assert_eq!(s.term(5).unwrap(), 1);
        assert_eq!(s.term(6).unwrap(), 2);
        assert!(s.term(9).is_err());
        let st = s.initial_state().unwrap();
        assert_eq!((st.hard_state.term, st.hard_state.vote), (2, 2));
        assert_eq!(st.hard_state.commit, 5);
        let got = s.entries(2, 9, None, ctx()).unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            (2..9).collect::<Vec<_>>()
        );
        assert_eq!(got[5].term, 2);
        // A size limit still returns at least one entry.
        assert_eq!(s.entries(2, 9, 1, ctx()).unwrap().len(), 1);
    }

    #[test]
    fn recent_entries_are_served_from_memory_and_match_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        let n = RECENT_ENTRIES_MAX as u64 + 100;
        s.persist(None, &ents(1..=n, 1), Some(&hs(1, 1, 4)), true)
            .unwrap();
        // A conflicting tail replaces the cached one.
        s.persist(None, &ents(n - 5..=n - 2, 2), Some(&hs(2, 2, 5)), true)
            .unwrap();
        // Full before, two shorter after the overwrite.
        assert_eq!(s.recent.len(), RECENT_ENTRIES_MAX - 2);
        assert_eq!(s.recent.back().map(|e| (e.index, e.term)), Some((n - 2, 2)));
        let first_cached = s.recent_first();
        assert!(first_cached > 1);
        let from_memory = s.cached(n - 20, n - 1).expect("cached");
        // The same range from the engine itself (a store reopened with an empty cache).
        let mut from_engine = Vec::new();
        s.engine
            .fetch_entries_to::<EntryExt>(GROUP, n - 20, n - 1, None, &mut from_engine)
            .unwrap();
        assert_eq!(from_memory, from_engine);
        assert_eq!(s.entries(n - 20, n - 1, None, ctx()).unwrap(), from_engine);
        // Older entries than the cache holds come from the engine.
        assert!(s.cached(first_cached - 1, first_cached + 1).is_none());
        let old = s.entries(1, first_cached + 1, None, ctx()).unwrap();
        assert_eq!(
            old.iter().map(|e| e.index).collect::<Vec<_>>(),
            (1..first_cached + 1).collect::<Vec<_>>()
        );
        // Compaction drops what it removes from the cache too.
        s.snapshot_and_compact(n - 10, b"state".to_vec(), 3)
            .unwrap();
        assert_eq!(s.recent_first(), n - 12);
        assert!(s.cached(n - 13, n - 12).is_none());
        assert_eq!(s.entries(n - 12, n - 1, None, ctx()).unwrap().len(), 11);
    }

    #[test]
    fn compaction_keeps_a_margin_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EngineStorage::open(dir.path(), &[1]).unwrap();
        s.persist(None, &ents(1..=10, 1), Some(&hs(1, 1, 10)), true)
            .unwrap();
        s.snapshot_and_compact(8, b"state@8".to_vec(), 3).unwrap();
        assert_eq!(s.first_index().unwrap(), 6);
        assert_eq!(s.term(5).unwrap(), 1);
        assert!(matches!(
            s.entries(5, 7, None, ctx()),
            Err(RaftError::Store(StorageError::Compacted))
        ));
        drop(s);
        let s = EngineStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (6, 10));
        assert_eq!(s.applied_on_disk(), 8);
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 8);
        assert_eq!(&snap.data[..], b"state@8");
        assert!(s.snapshot(9, 2).is_err());
        assert_eq!(s.entries(6, 11, None, ctx()).unwrap().len(), 5);
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        s.persist(None, &ents(1..=5, 1), Some(&hs(1, 1, 3)), true)
            .unwrap();
        let mut snap = Snapshot {
            data: b"state@20".to_vec().into(),
            ..Snapshot::default()
        };
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.persist(Some(&snap), &[], Some(&hs(3, 0, 20)), true)
            .unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (21, 20)
        );
        s.persist(None, &ents(21..=22, 3), None, true).unwrap();
        drop(s);
        let s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (21, 22)
        );
        assert_eq!(s.term(20).unwrap(), 3);
        assert_eq!(s.applied_on_disk(), 20);
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, 20);
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(&s.latest_snapshot().data[..], b"state@20");
    }

    #[test]
    fn appends_below_the_compacted_index_or_with_a_gap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = EngineStorage::open(dir.path(), &[1]).unwrap();
        s.persist(None, &ents(1..=10, 1), None, true).unwrap();
        s.snapshot_and_compact(10, vec![], 0).unwrap();
        assert!(s.persist(None, &ents(5..=6, 2), None, true).is_err());
        assert!(s.persist(None, &ents(13..=14, 2), None, true).is_err());
        s.persist(None, &ents(11..=11, 2), None, true).unwrap();
    }

    /// The engine's value under `key` (the store must be closed).
    fn raw(dir: &Path, key: &[u8]) -> Option<Vec<u8>> {
        open_engine(dir).unwrap().get(GROUP, key)
    }

    fn put_raw(dir: &Path, key: &[u8], value: &[u8]) {
        let engine = open_engine(dir).unwrap();
        let mut batch = LogBatch::default();
        batch.put(GROUP, key.to_vec(), value.to_vec()).unwrap();
        engine.write(&mut batch, true).unwrap();
    }

    /// A store with entries 1..=20 (term 1), committed to 12, compacted and snapshotted at 10.
    fn written_store(dir: &Path) {
        let mut s = EngineStorage::open(dir, &[1, 2, 3]).unwrap();
        s.persist(None, &ents(1..=20, 1), Some(&hs(1, 1, 12)), true)
            .unwrap();
        s.snapshot_and_compact(10, b"state@10".to_vec(), 0).unwrap();
        s.note_seen(2, 1);
        s.write_seen().unwrap();
    }

    fn assert_intact(dir: &Path) {
        let s = EngineStorage::open(dir, &[1, 2, 3]).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (11, 20)
        );
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 12);
        assert_eq!(&s.latest_snapshot().data[..], b"state@10");
    }

    #[test]
    fn a_store_with_a_damaged_key_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        written_store(dir.path());
        assert_intact(dir.path());
        for key in [
            KEY_HARD_STATE,
            KEY_CONF_STATE,
            KEY_SNAPSHOT,
            KEY_TRUNCATED,
            KEY_SEEN,
        ] {
            let good = raw(dir.path(), key).expect("key written");
            for bad in [&[0xff_u8; 9][..], &[0x08, 0xff][..]] {
                put_raw(dir.path(), key, bad);
                let opened = EngineStorage::open(dir.path(), &[1, 2, 3]);
                assert!(
                    matches!(opened, Err(LogError::Storage(_))),
                    "{} = {bad:?} opened",
                    String::from_utf8_lossy(key)
                );
                // The refused open wrote nothing: the value is still the damaged one.
                assert_eq!(raw(dir.path(), key).as_deref(), Some(bad));
            }
            put_raw(dir.path(), key, &good);
            assert_intact(dir.path());
        }
    }

    /// The terms seen from each peer survive a reopen, only ever grow, and are written only
    /// when they did.
    #[test]
    fn seen_terms_grow_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
            assert!(s.seen().is_empty());
            s.note_seen(2, 4);
            s.note_seen(3, 7);
            s.note_seen(2, 3);
            s.write_seen().unwrap();
            assert!(!s.seen_dirty);
            s.note_seen(3, 7);
            assert!(!s.seen_dirty, "an equal term is not news");
        }
        let s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(
            s.seen().iter().map(|(p, t)| (*p, *t)).collect::<Vec<_>>(),
            vec![(2, 4), (3, 7)]
        );
    }

    #[test]
    fn a_hard_state_committing_beyond_the_log_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        written_store(dir.path());
        let engine = open_engine(dir.path()).unwrap();
        let mut batch = LogBatch::default();
        batch
            .put_message(GROUP, KEY_HARD_STATE.to_vec(), &hs(1, 1, 21))
            .unwrap();
        engine.write(&mut batch, true).unwrap();
        drop(engine);
        match EngineStorage::open(dir.path(), &[1, 2, 3]) {
            Err(LogError::Storage(why)) => assert!(why.contains("commits 21"), "{why}"),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a commit beyond the log was accepted"),
        }
    }

    /// Bytes of the engine's log files cut off or overwritten: the store opens with a prefix
    /// of what was written, or is refused; it never panics and never yields other entries.
    #[test]
    fn damaged_log_files_yield_a_prefix_or_an_error() {
        for damage in 0..6u64 {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut s = EngineStorage::open(dir.path(), &[1, 2, 3]).unwrap();
                for i in 1..=40u64 {
                    s.persist(None, &ents(i..=i, 1), Some(&hs(1, 1, i - 1)), true)
                        .unwrap();
                }
            }
            let mut files: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "raftlog"))
                .collect();
            files.sort();
            let file = files.last().expect("a log file");
            let mut bytes = std::fs::read(file).unwrap();
            let len = bytes.len() as u64;
            match damage {
                // Cut the tail: a torn last write, or more.
                0 => bytes.truncate((len - 7) as usize),
                1 => bytes.truncate((len / 2) as usize),
                // Overwrite bytes near the end, in the middle, near the start.
                d => {
                    let at = [len * 7 / 8, len / 2, len / 8, 32][d as usize - 2] as usize;
                    for b in &mut bytes[at..(at + 16).min(len as usize)] {
                        *b ^= 0x5a;
                    }
                }
            }
            std::fs::write(file, &bytes).unwrap();
            let Ok(s) = EngineStorage::open(dir.path(), &[1, 2, 3]) else {
                continue;
            };
            let last = s.last_index().unwrap();
            assert!(last <= 40, "damage {damage}: last index {last}");
            if last >= 1 {
                let got = s.entries(1, last + 1, None, ctx()).unwrap();
                let want: Vec<_> = ents(1..=last, 1);
                assert_eq!(got, want, "damage {damage}: entries differ");
            }
        }
    }
}
