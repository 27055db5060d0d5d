//! raft-rs logs through `slog`; this drain forwards its records to `tracing` (target
//! `raft_rs`), so one subscriber sees everything. raft-rs's `info` (elections, role changes)
//! becomes `debug`, its `debug` and `trace` become `trace`.

use std::fmt::Write as _;

use slog::{Drain, Level, OwnedKVList, Record, KV};

/// Forwards slog records to tracing.
pub(crate) struct TracingDrain {
    /// This node's transport id, attached to every event.
    pub(crate) node: u64,
}

struct Collect(String);

impl slog::Serializer for Collect {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let enabled = match record.level() {
            Level::Critical | Level::Error => {
                tracing::enabled!(target: "raft_rs", tracing::Level::ERROR)
            }
            Level::Warning => tracing::enabled!(target: "raft_rs", tracing::Level::WARN),
            Level::Info => tracing::enabled!(target: "raft_rs", tracing::Level::DEBUG),
            Level::Debug | Level::Trace => {
                tracing::enabled!(target: "raft_rs", tracing::Level::TRACE)
            }
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = Collect(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let (node, msg, kv) = (self.node, record.msg(), kv.0);
        match record.level() {
            Level::Critical | Level::Error => {
                tracing::error!(target: "raft_rs", node, "{msg}{kv}")
            }
            Level::Warning => tracing::warn!(target: "raft_rs", node, "{msg}{kv}"),
            Level::Info => tracing::debug!(target: "raft_rs", node, "{msg}{kv}"),
            Level::Debug | Level::Trace => tracing::trace!(target: "raft_rs", node, "{msg}{kv}"),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that ends in tracing.
pub(crate) fn logger(node: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain { node }.fuse(), slog::o!())
}
