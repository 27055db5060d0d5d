//! `cluster.toml`: one file that describes a whole deployment — every replica's id and
//! addresses, the certificate directory and the data directory — read by every process role
//! of the `market` binary. The same file is copied to every host of a multi-host deployment.
//!
//! ```toml
//! data_dir = "data"          # relative paths are relative to this file's directory
//! certs_dir = "data/certs"
//! session_idle_secs = 300
//! lease_reads = false        # opt-in: product-db reads from the Raft leader's lease
//!
//! [payments]
//! listen = "127.0.0.1:7400"
//! approve_rate = 0.9
//!
//! [[customer_db]]            # atomic broadcast replicas, ids 0..n-1
//! id = 0
//! peer = "127.0.0.1:7500"    # replication traffic between replicas (QUIC, mutual TLS)
//! client = "127.0.0.1:7550"  # requests from the seller and buyer servers (QUIC, mutual TLS)
//!
//! [[product_db]]             # Raft replicas
//! id = 0
//! peer = "127.0.0.1:7600"
//! client = "127.0.0.1:7650"
//!
//! [[seller]]                 # seller HTTP servers
//! id = 0
//! listen = "127.0.0.1:7000"
//!
//! [[buyer]]                  # buyer HTTP servers
//! id = 0
//! listen = "127.0.0.1:7100"
//! ```
//!
//! Identities: every process has a certificate named after its role and id
//! ([`Cluster::cert_name`]), signed by the cluster CA that `market certs` makes. On the client
//! network (frontends ↔ database replicas) node ids are disjoint per role
//! ([`Cluster::client_node_id`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or checking a cluster file.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The file parsed but describes an impossible cluster.
    #[error("invalid cluster: {0}")]
    Invalid(String),
}

/// A process role, as named in certificates, logs and `market status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleKind {
    /// Customer database replica (atomic broadcast).
    CustomerDb,
    /// Product database replica (Raft).
    ProductDb,
    /// Seller HTTP server.
    Seller,
    /// Buyer HTTP server.
    Buyer,
    /// The payment service.
    Payments,
    /// An operator tool (`market status`).
    Admin,
}

impl RoleKind {
    /// The role's name, e.g. `"customer-db"`.
    pub fn name(self) -> &'static str {
        match self {
            RoleKind::CustomerDb => "customer-db",
            RoleKind::ProductDb => "product-db",
            RoleKind::Seller => "seller",
            RoleKind::Buyer => "buyer",
            RoleKind::Payments => "payments",
            RoleKind::Admin => "admin",
        }
    }
}

/// The payment service's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsSection {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Probability of approval.
    #[serde(default = "default_approve_rate")]
    pub approve_rate: f64,
    /// Seed for a repeatable decision sequence.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Extra delay before answering each payment, in ms (for failure tests; default 0).
    #[serde(default)]
    pub delay_ms: u64,
}

fn default_approve_rate() -> f64 {
    0.9
}

/// A database replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbReplica {
    /// Replica id, 0-based, unique within its database.
    pub id: u64,
    /// Address for replication traffic.
    pub peer: SocketAddr,
    /// Address for frontend requests.
    pub client: SocketAddr,
}

/// An HTTP frontend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frontend {
    /// Frontend id, 0-based, unique within its role.
    pub id: u64,
    /// HTTP listen address.
    pub listen: SocketAddr,
}

fn default_session_idle_secs() -> u64 {
    300
}

fn default_reservation_ttl_secs() -> u64 {
    120
}

/// The whole deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Where replicas keep their data (one subdirectory per replica).
    pub data_dir: PathBuf,
    /// The cluster CA and every process's certificate and key.
    pub certs_dir: PathBuf,
    /// Idle time after which a session ends.
    #[serde(default = "default_session_idle_secs")]
    pub session_idle_secs: u64,
    /// A purchase reservation neither confirmed nor released (its frontend died) lapses after
    /// this long and its units return.
    #[serde(default = "default_reservation_ttl_secs")]
    pub reservation_ttl_secs: u64,
    /// Opt-in: the product database answers linearizable reads from its Raft leader's lease
    /// (raft-rs `LeaseBased`: no quorum round per read) instead of a ReadIndex round. Safe
    /// while the clocks of the product database's hosts run at rates that differ by far less
    /// than the election timeout over one timeout (NTP-disciplined hosts; always true on one
    /// host). Default `false`.
    #[serde(default)]
    pub lease_reads: bool,
    /// The payment service.
    pub payments: PaymentsSection,
    /// Customer database replicas.
    pub customer_db: Vec<DbReplica>,
    /// Product database replicas.
    pub product_db: Vec<DbReplica>,
    /// Seller servers.
    pub seller: Vec<Frontend>,
    /// Buyer servers.
    pub buyer: Vec<Frontend>,
}

impl Cluster {
    /// Reads and checks `path`; relative directories become relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cluster: Cluster = toml::from_str(&text).map_err(|e| ClusterError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        if cluster.data_dir.is_relative() {
            cluster.data_dir = base.join(&cluster.data_dir);
        }
        if cluster.certs_dir.is_relative() {
            cluster.certs_dir = base.join(&cluster.certs_dir);
        }
        cluster.check()?;
        Ok(cluster)
    }

    /// Writes the cluster as TOML.
    pub fn save(&self, path: &Path) -> Result<(), ClusterError> {
        let text =
            toml::to_string_pretty(self).map_err(|e| ClusterError::Invalid(e.to_string()))?;
        std::fs::write(path, text).map_err(|source| ClusterError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks ids are unique and dense and addresses are not reused.
    pub fn check(&self) -> Result<(), ClusterError> {
        fn dense(ids: impl Iterator<Item = u64>, what: &str) -> Result<(), ClusterError> {
            let ids: Vec<u64> = ids.collect();
            let set: BTreeSet<u64> = ids.iter().copied().collect();
            if set.len() != ids.len() || set.iter().copied().ne(0..ids.len() as u64) {
                return Err(ClusterError::Invalid(format!(
                    "{what} ids must be 0..{} without gaps or repeats",
                    ids.len()
                )));
            }
            Ok(())
        }
        if self.customer_db.is_empty() || self.product_db.is_empty() {
            return Err(ClusterError::Invalid(
                "both databases need at least one replica".into(),
            ));
        }
        dense(self.customer_db.iter().map(|r| r.id), "customer_db")?;
        dense(self.product_db.iter().map(|r| r.id), "product_db")?;
        dense(self.seller.iter().map(|r| r.id), "seller")?;
        dense(self.buyer.iter().map(|r| r.id), "buyer")?;
        let mut addrs = BTreeSet::new();
        let all = std::iter::once(self.payments.listen)
            .chain(self.customer_db.iter().flat_map(|r| [r.peer, r.client]))
            .chain(self.product_db.iter().flat_map(|r| [r.peer, r.client]))
            .chain(self.seller.iter().map(|f| f.listen))
            .chain(self.buyer.iter().map(|f| f.listen));
        for a in all {
            if a.port() != 0 && !addrs.insert(a) {
                return Err(ClusterError::Invalid(format!("address {a} is used twice")));
            }
        }
        if !(0.0..=1.0).contains(&self.payments.approve_rate) {
            return Err(ClusterError::Invalid(
                "payments.approve_rate must be within 0..1".into(),
            ));
        }
        Ok(())
    }

    /// The reference cluster on loopback: 5 + 5 database replicas, 4 + 4 frontends and the
    /// payment service, on consecutive ports from `base_port`.
    pub fn reference(data_dir: PathBuf, base_port: u16) -> Self {
        let at = |offset: u16| SocketAddr::from(([127, 0, 0, 1], base_port + offset));
        Cluster {
            certs_dir: data_dir.join("certs"),
            data_dir,
            session_idle_secs: 300,
            reservation_ttl_secs: 120,
            lease_reads: false,
            payments: PaymentsSection {
                listen: at(0),
                approve_rate: 0.9,
                seed: None,
                delay_ms: 0,
            },
            seller: (0..4)
                .map(|i| Frontend {
                    id: i,
                    listen: at(10 + i as u16),
                })
                .collect(),
            buyer: (0..4)
                .map(|i| Frontend {
                    id: i,
                    listen: at(20 + i as u16),
                })
                .collect(),
            customer_db: (0..5)
                .map(|i| DbReplica {
                    id: i,
                    peer: at(30 + i as u16),
                    client: at(40 + i as u16),
                })
                .collect(),
            product_db: (0..5)
                .map(|i| DbReplica {
                    id: i,
                    peer: at(50 + i as u16),
                    client: at(60 + i as u16),
                })
                .collect(),
        }
    }

    /// The certificate name of a process, e.g. `"product-db-3"`.
    pub fn cert_name(role: RoleKind, id: u64) -> String {
        format!("{}-{id}", role.name())
    }

    /// Every certificate name the cluster needs.
    pub fn cert_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        names.extend(
            self.customer_db
                .iter()
                .map(|r| Self::cert_name(RoleKind::CustomerDb, r.id)),
        );
        names.extend(
            self.product_db
                .iter()
                .map(|r| Self::cert_name(RoleKind::ProductDb, r.id)),
        );
        names.extend(
            self.seller
                .iter()
                .map(|r| Self::cert_name(RoleKind::Seller, r.id)),
        );
        names.extend(
            self.buyer
                .iter()
                .map(|r| Self::cert_name(RoleKind::Buyer, r.id)),
        );
        names.push(Self::cert_name(RoleKind::Admin, 0));
        names
    }

    /// A process's node id on the client network (frontends and operator tools ↔ database
    /// replicas); disjoint ranges per role.
    pub fn client_node_id(role: RoleKind, id: u64) -> u64 {
        let base = match role {
            RoleKind::CustomerDb => 1_000,
            RoleKind::ProductDb => 2_000,
            RoleKind::Seller => 3_000,
            RoleKind::Buyer => 4_000,
            RoleKind::Payments => 5_000,
            RoleKind::Admin => 6_000,
        };
        base + id
    }

    /// The data directory of one database replica.
    pub fn replica_dir(&self, role: RoleKind, id: u64) -> PathBuf {
        self.data_dir.join(Self::cert_name(role, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_cluster_round_trips_and_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Cluster::reference(PathBuf::from("data"), 17000);
        c.check().expect("valid");
        let path = dir.path().join("cluster.toml");
        c.save(&path).expect("save");
        let loaded = Cluster::load(&path).expect("load");
        assert_eq!(loaded.customer_db.len(), 5);
        assert_eq!(loaded.seller.len(), 4);
        assert_eq!(loaded.data_dir, dir.path().join("data"));
        assert_eq!(loaded.cert_names().len(), 19);
        assert!(!loaded.lease_reads, "ReadIndex unless opted in");
        let mut leased = c.clone();
        leased.lease_reads = true;
        leased.save(&path).expect("save");
        assert!(Cluster::load(&path).expect("load").lease_reads);
    }

    #[test]
    fn refuses_bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.toml");
        let mut c = Cluster::reference(PathBuf::from("data"), 17100);
        c.product_db[1].id = 0;
        assert!(matches!(c.check(), Err(ClusterError::Invalid(_))));
        let mut c = Cluster::reference(PathBuf::from("data"), 17100);
        c.buyer[0].listen = c.seller[0].listen;
        assert!(matches!(c.check(), Err(ClusterError::Invalid(_))));
        std::fs::write(&path, "data_dir = 3").expect("write");
        assert!(matches!(
            Cluster::load(&path),
            Err(ClusterError::Parse { .. })
        ));
        assert!(matches!(
            Cluster::load(&dir.path().join("missing.toml")),
            Err(ClusterError::Io { .. })
        ));
    }
}
