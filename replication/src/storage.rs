//! Durable storage shared by the log implementations: a thin layer over `raft-engine`.
//!
//! raft-engine is TiKV's append-only log store for Raft groups: entries are appended in
//! batches, a batch written with `sync = true` is fsync'd before `write` returns (one fsync
//! covers every entry of the batch: group commit), old entries are dropped with `compact_to`,
//! and small key-values (hard state, snapshots, applied index) live beside the entries.
//! Entries are `raft::eraftpb::Entry` protobuf messages; implementations that are not Raft put
//! their payload in `data` and a monotonically increasing `index`.

use std::path::Path;

use raft::eraftpb::Entry;
use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize};

use crate::log::LogError;

/// Tells raft-engine how to find an entry's index.
#[derive(Debug, Clone, Copy)]
pub struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// Opens (or creates) a raft-engine instance in `dir`.
pub fn open_engine(dir: &Path) -> Result<Engine, LogError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LogError::Storage(format!("create {}: {e}", dir.display())))?;
    let cfg = Config {
        dir: dir.to_string_lossy().into_owned(),
        target_file_size: ReadableSize::mb(32),
        purge_threshold: ReadableSize::mb(256),
        ..Config::default()
    };
    Engine::open(cfg).map_err(storage_err)
}

/// Maps a raft-engine error to [`LogError::Storage`].
pub fn storage_err(e: raft_engine::Error) -> LogError {
    LogError::Storage(e.to_string())
}

/// Builds an entry holding `data` at `index`.
pub fn entry(index: u64, term: u64, data: Vec<u8>) -> Entry {
    Entry {
        index,
        term,
        data: data.into(),
        ..Entry::default()
    }
}

/// Appends entries to `group` and writes them, fsync'd when `sync`.
pub fn append(engine: &Engine, group: u64, entries: &[Entry], sync: bool) -> Result<(), LogError> {
    let mut batch = LogBatch::with_capacity(entries.len());
    batch
        .add_entries::<EntryExt>(group, entries)
        .map_err(storage_err)?;
    engine.write(&mut batch, sync).map_err(storage_err)?;
    Ok(())
}

/// Runs `f` on a thread of its own and returns its result.
///
/// raft-engine keeps the last entry block it decoded in a *thread-local* cache keyed by file
/// position, not by engine: two engines read from one thread (several replicas on one tokio
/// worker, as in the tests or `market up --single`) can be served each other's block, and
/// raft-engine then asserts. Every read of entry bodies from an engine whose thread may be
/// shared (recovery, catch-up reads that miss the Raft entry cache, file purges that rewrite
/// entries) goes through here: a fresh thread starts with an empty cache.
pub fn isolated<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// Runs blocking storage work (an fsync'd write, a snapshot) from a task: in place on a
/// current-thread runtime (nothing else could run meanwhile anyway), through
/// `block_in_place` on a multi-thread one so the worker's other tasks move to another thread.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Runs a storage write on tokio's blocking pool and awaits it, so the runtime that called it
/// keeps serving meanwhile; a write task that died is a storage error naming `what`.
pub async fn off_loop<R: Send + 'static>(
    what: &str,
    write: impl FnOnce() -> Result<R, LogError> + Send + 'static,
) -> Result<R, LogError> {
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|e| LogError::Storage(format!("{what}: {e}")))?
}

/// Waits (at most about two seconds, in 1 ms sleeps) until `engine` has no other owner than
/// the caller: a write handed to [`off_loop`] holds a clone until its fsync is done. A log
/// shutting down calls this before dropping its engine, so that the engine is closed when
/// the shutdown returns and the directory can be opened again at once.
pub fn wait_for_writes(engine: &std::sync::Arc<Engine>) {
    for _ in 0..2_000 {
        if std::sync::Arc::strong_count(engine) == 1 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Reads entries `[begin, end)` of `group`.
pub fn read_entries(
    engine: &Engine,
    group: u64,
    begin: u64,
    end: u64,
) -> Result<Vec<Entry>, LogError> {
    let mut out = Vec::new();
    if begin < end {
        isolated(|| engine.fetch_entries_to::<EntryExt>(group, begin, end, None, &mut out))
            .map_err(storage_err)?;
    }
    Ok(out)
}
