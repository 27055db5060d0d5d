//! The marketplace domain: API types and validation, the customer and product state
//! machines, and the [`Market`] service with every client function of API.md.
//!
//! # Layout
//!
//! * [`api`]: the JSON types of the HTTP API, shared with the servers and the HTTP client.
//! * [`validate`]: every rule of API.md's Limits table.
//! * [`error`]: [`MarketError`], one variant per API.md error code, with its HTTP mapping.
//! * [`ids`]: item ids `"<category>-<serial>"`, seller, buyer and purchase ids, roles.
//! * [`clock`], [`password`], [`payment`]: the frontend's time, Argon2id hashing, and the
//!   financial transactions service seam.
//! * [`customer`]: the customer database state machine (accounts, sessions, carts, history,
//!   ratings, remembered responses for `Idempotency-Key` retries).
//! * [`product`]: the product database state machine (items, search, reservations).
//! * [`snapshot`]: the two machines' snapshot format (a versioned header, then postcard).
//! * [`market`]: the [`Market`], which validates, stamps time, hashes, and drives the two
//!   databases through any `replication::ReplicatedLog`.
//! * [`embedded`]: a whole marketplace in one process (see its example).
//!
//! # Where things happen
//!
//! State machines are deterministic: they never read a clock or a random source and never
//! hash. The Market does all of that before proposing, so a command carries its time
//! (`at_ms`), ids, tokens and password hashes. Both databases are correct under any
//! `ReplicatedLog` — single node, Raft, atomic broadcast, or a remote client of those.

pub mod api;
pub mod clock;
pub mod customer;
pub mod embedded;
pub mod error;
pub mod ids;
pub mod market;
pub mod password;
pub mod payment;
pub mod product;
pub mod snapshot;
pub mod validate;

pub use embedded::{EmbeddedMarket, EmbeddedOptions};
pub use error::MarketError;
pub use market::{with_idempotency_key, with_remembered_lookup, Auth, Market, MarketConfig};
