//! The marketplace's server processes: the seller and buyer HTTP servers (thin wrappers over
//! `marketcore::Market`), the SOAP financial transactions service, and the `market` binary
//! that runs them.

pub mod cluster;
pub mod deploy;
pub mod frontend;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod payments;
pub mod router;
pub mod single;
