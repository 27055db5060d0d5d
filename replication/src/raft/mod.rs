//! Raft-replicated log (in progress).
