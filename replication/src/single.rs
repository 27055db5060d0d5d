//! A single-node replicated log, for embedded use and tests.
//!
//! It keeps every promise of [`crate::log`] for a cluster of one: commands are applied in the
//! order they are accepted, each request id at most once, and — when opened on a directory —
//! a command is acknowledged only after it is fsync'd to a raft-engine log. Proposals that
//! arrive together share one fsync (group commit): a writer thread drains everything queued,
//! writes it as one batch, applies it, then answers every proposer.
//!
//! Reads take a shared lock on the applied state; since a proposal is answered only after it is
//! applied, every read sees every acknowledged write (linearizable).
//!
//! Every `snapshot_every` entries the state is snapshotted into the engine and the log is
//! compacted, so restart replays at most that many entries.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;

use async_trait::async_trait;
use raft_engine::{Engine, LogBatch};
use tokio::sync::{mpsc, oneshot};

use crate::dedup::{Applied, Deduped};
use crate::log::{Envelope, LogError, LogStatus, ReadConsistency, ReplicatedLog, RequestId, Role};
use crate::state_machine::StateMachine;
use crate::storage;

const GROUP: u64 = 1;
const SNAPSHOT_KEY: &[u8] = b"snapshot";
/// Default number of entries between snapshots.
pub const SNAPSHOT_EVERY_DEFAULT: u64 = 10_000;
const BATCH_MAX: usize = 4096;
const QUEUE_MAX: usize = 65_536;

type Reply<S> = oneshot::Sender<Result<<S as StateMachine>::Output, LogError>>;
type Op<S> = (Envelope<<S as StateMachine>::Command>, Reply<S>);

struct Shared<S: StateMachine> {
    state: RwLock<Deduped<S>>,
    applied_index: Mutex<u64>,
}

/// A replicated log of one node. Cheap to share behind an `Arc`.
pub struct SingleNodeLog<S: StateMachine> {
    shared: Arc<Shared<S>>,
    /// `None` in memory-only mode.
    writer: Option<mpsc::Sender<Op<S>>>,
    writer_thread: Option<thread::JoinHandle<()>>,
}

impl<S: StateMachine> Drop for SingleNodeLog<S> {
    /// Closes the queue and waits for the writer to finish its batch and release the engine,
    /// so the directory can be reopened at once.
    fn drop(&mut self) {
        self.writer = None;
        if let Some(handle) = self.writer_thread.take() {
            let _ = handle.join();
        }
    }
}

impl<S: StateMachine> SingleNodeLog<S> {
    /// A memory-only log: nothing survives the process. Proposals apply at once.
    pub fn in_memory(state_machine: S) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: RwLock::new(Deduped::new(state_machine)),
                applied_index: Mutex::new(0),
            }),
            writer: None,
            writer_thread: None,
        }
    }

    /// A durable log in `dir`: recovers the snapshot and the entries after it, then accepts
    /// proposals. `initial` is the empty state machine that recovery starts from.
    pub fn open(dir: &Path, initial: S) -> Result<Self, LogError> {
        Self::open_with(dir, initial, SNAPSHOT_EVERY_DEFAULT)
    }

    /// Like [`SingleNodeLog::open`] with an explicit snapshot interval.
    pub fn open_with(dir: &Path, initial: S, snapshot_every: u64) -> Result<Self, LogError> {
        let engine = storage::open_engine(dir)?;
        let mut state = Deduped::new(initial);
        let mut applied = 0u64;
        if let Some(raw) = engine.get(GROUP, SNAPSHOT_KEY) {
            let (index, bytes): (u64, Vec<u8>) = postcard::from_bytes(&raw)
                .map_err(|e| LogError::Storage(format!("snapshot header: {e}")))?;
            state
                .restore(&bytes)
                .map_err(|e| LogError::Storage(e.to_string()))?;
            applied = index;
        }
        if let Some(last) = engine.last_index(GROUP) {
            let first = engine
                .first_index(GROUP)
                .unwrap_or(applied + 1)
                .max(applied + 1);
            for e in storage::read_entries(&engine, GROUP, first, last + 1)? {
                let env: Envelope<S::Command> = postcard::from_bytes(&e.data)
                    .map_err(|err| LogError::Storage(format!("entry {}: {err}", e.index)))?;
                state.apply(env);
                applied = e.index;
            }
        }
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            applied_index: Mutex::new(applied),
        });
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let worker_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("single-log-writer".into())
            .spawn(move || writer_loop(engine, worker_shared, rx, applied, snapshot_every.max(1)))
            .map_err(|e| LogError::Storage(format!("spawn writer: {e}")))?;
        Ok(Self {
            shared,
            writer: Some(tx),
            writer_thread: Some(handle),
        })
    }

    /// Runs `f` on the current applied state (for tests and embedding).
    pub fn with_state<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        let guard = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        f(guard.inner())
    }

    /// A snapshot of the whole replicated state (duplicate table included).
    pub fn snapshot(&self) -> Vec<u8> {
        self.shared
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot()
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

fn writer_loop<S: StateMachine>(
    engine: Engine,
    shared: Arc<Shared<S>>,
    mut rx: mpsc::Receiver<Op<S>>,
    mut last_index: u64,
    snapshot_every: u64,
) {
    let mut since_snapshot = 0u64;
    let mut batch: Vec<Op<S>> = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut entries = Vec::with_capacity(batch.len());
        let mut encode_failed = Vec::new();
        for (i, (env, _)) in batch.iter().enumerate() {
            match postcard::to_stdvec(env) {
                Ok(data) => entries.push(storage::entry(
                    last_index + 1 + entries.len() as u64,
                    0,
                    data,
                )),
                Err(e) => encode_failed.push((i, e.to_string())),
            }
        }
        let write = storage::append(&engine, GROUP, &entries, true);
        if let Err(e) = write {
            tracing::error!(error = %e, "single-node log cannot write; stopping");
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
            return;
        }
        let mut outputs = Vec::with_capacity(batch.len());
        {
            let mut state = shared.state.write().unwrap_or_else(|p| p.into_inner());
            let mut failed = encode_failed.into_iter().peekable();
            for (i, (env, reply)) in batch.drain(..).enumerate() {
                if failed.peek().map(|(fi, _)| *fi) == Some(i) {
                    let (_, msg) = failed.next().unwrap_or_default();
                    outputs.push((reply, Err(LogError::Rejected(msg))));
                    continue;
                }
                outputs.push((reply, applied_to_result(state.apply(env))));
            }
            last_index += entries.len() as u64;
            *shared
                .applied_index
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = last_index;
            since_snapshot += entries.len() as u64;
            if since_snapshot >= snapshot_every {
                since_snapshot = 0;
                let snap = state.snapshot();
                if let Err(e) = write_snapshot(&engine, last_index, snap) {
                    tracing::warn!(error = %e, "snapshot failed; the log keeps growing");
                }
            }
        }
        for (reply, out) in outputs {
            let _ = reply.send(out);
        }
    }
}

fn write_snapshot(engine: &Engine, index: u64, snap: Vec<u8>) -> Result<(), LogError> {
    let value =
        postcard::to_stdvec(&(index, snap)).map_err(|e| LogError::Storage(e.to_string()))?;
    let mut batch = LogBatch::default();
    batch
        .put(GROUP, SNAPSHOT_KEY.to_vec(), value)
        .map_err(storage::storage_err)?;
    engine
        .write(&mut batch, true)
        .map_err(storage::storage_err)?;
    engine.compact_to(GROUP, index + 1);
    let _ = engine.purge_expired_files();
    Ok(())
}

#[async_trait]
impl<S: StateMachine> ReplicatedLog<S> for SingleNodeLog<S> {
    async fn propose(&self, id: RequestId, command: S::Command) -> Result<S::Output, LogError> {
        let envelope = Envelope { id, command };
        match &self.writer {
            None => {
                let mut state = self.shared.state.write().unwrap_or_else(|p| p.into_inner());
                let out = state.apply(envelope);
                *self
                    .shared
                    .applied_index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) += 1;
                applied_to_result(out)
            }
            Some(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send((envelope, reply))
                    .await
                    .map_err(|_| LogError::Shutdown)?;
                rx.await.map_err(|_| LogError::Shutdown)?
            }
        }
    }

    async fn read(
        &self,
        query: S::Query,
        _consistency: ReadConsistency,
    ) -> Result<S::Answer, LogError> {
        let state = self.shared.state.read().unwrap_or_else(|p| p.into_inner());
        Ok(state.query(&query))
    }

    fn status(&self) -> LogStatus {
        let applied = *self
            .shared
            .applied_index
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        LogStatus {
            node_id: 0,
            role: Role::Single,
            term: 0,
            leader: Some(0),
            commit_index: applied,
            applied_index: applied,
            counters: Vec::new(),
        }
    }
}
