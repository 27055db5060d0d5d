//! marketcore
