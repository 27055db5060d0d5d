//! Client side of the marketplace: a typed async HTTP client for every endpoint of API.md
//! (`shared/API.md`), with replica failover and idempotent retries, plus the pieces of the
//! `market-seller` and `market-buyer` command-line interfaces.
//!
//! - [`SellerClient`] and [`BuyerClient`]: one method per client function of API.md, named as
//!   there (`login_seller`, `add_item`, `make_purchase`, ...), taking and returning the JSON
//!   types of [`api`] (re-exported from `marketcore::api`).
//! - [`Replicas`]: the connection pool and failover under both (see [`replicas`] for the
//!   rules: which failures move to the next replica, why retrying a write is safe).
//! - [`ClientError`]: the one error type.
//! - [`ClusterFile`]: the `cluster.json` that `market up` writes and the CLIs read.
//! - [`state`]: where the CLIs keep session tokens between invocations.
//! - [`cli`]: the CLIs themselves (the binaries are thin wrappers).
//!
//! ```no_run
//! # async fn demo() -> Result<(), clients::ClientError> {
//! use clients::api::{Login, SearchQuery};
//! let buyer = clients::BuyerClient::new(["http://127.0.0.1:7100", "http://127.0.0.1:7101"])?;
//! buyer
//!     .login_buyer(&Login { username: "ann".into(), password: "secret-pw".into() })
//!     .await?;
//! let found = buyer.search_items(&SearchQuery { category: Some(3), ..Default::default() }).await?;
//! if let Some(item) = found.items.first() {
//!     buyer.add_to_cart(&item.id, 1).await?;
//! }
//! # Ok(()) }
//! ```

pub use marketcore::api;

pub mod cli;
pub mod cluster;
mod core;
mod error;
pub mod replicas;
pub mod state;

mod buyer;
mod seller;

pub use buyer::BuyerClient;
pub use cluster::{ClusterFile, ClusterFileError, ClusterProcess};
pub use error::ClientError;
pub use replicas::{healthz, Answer, ClientConfig, Replicas};
pub use seller::SellerClient;
