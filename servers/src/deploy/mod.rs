//! Running the marketplace as separate processes: database replicas, HTTP frontends, and the
//! local supervisor behind `market up`.

pub mod frontend;
pub mod node;
pub mod status;
pub mod up;
