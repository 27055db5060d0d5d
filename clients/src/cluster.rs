//! `cluster.json`: where a running cluster's servers listen.
//!
//! `market up` writes this file when the whole local cluster is up; the CLIs read it to find
//! the seller and buyer servers. Both sides use [`ClusterFile`], so the format is defined once.
//!
//! ```json
//! {
//!   "seller_servers": ["http://127.0.0.1:7000", "http://127.0.0.1:7001"],
//!   "buyer_servers": ["http://127.0.0.1:7100", "http://127.0.0.1:7101"],
//!   "payments": "http://127.0.0.1:7200",
//!   "processes": [
//!     {"name": "seller-0", "pid": 1234, "role": "seller", "addr": "127.0.0.1:7000"}
//!   ]
//! }
//! ```
//!
//! - `seller_servers`, `buyer_servers`: base URLs (`http://IP:port`, no path) of the seller and
//!   buyer server replicas, in replica-id order. A missing list reads as empty.
//! - `payments`: URL of the financial transactions (SOAP) service, e.g.
//!   `http://127.0.0.1:7200/soap`; may be absent.
//! - `processes`: every process `market up` started (may be empty or absent): `name` (unique,
//!   e.g. `"seller-0"`, `"product-db-3"`), operating-system `pid`, `role` (`"seller"`,
//!   `"buyer"`, `"payments"`, `"customer-db"`, `"product-db"`) and `addr` (`IP:port` it listens
//!   on).
//!
//! Unknown fields are ignored, so the file can grow without breaking older readers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The contents of `cluster.json` (see the [module docs](self) for the format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Base URLs of the seller server replicas.
    #[serde(default)]
    pub seller_servers: Vec<String>,
    /// Base URLs of the buyer server replicas.
    #[serde(default)]
    pub buyer_servers: Vec<String>,
    /// URL of the payment (SOAP) service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payments: Option<String>,
    /// The processes of the cluster.
    #[serde(default)]
    pub processes: Vec<ClusterProcess>,
}

/// One process of a running cluster, as listed in `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterProcess {
    /// Unique name, e.g. `"seller-0"`.
    pub name: String,
    /// Operating-system process id.
    pub pid: u32,
    /// `"seller"`, `"buyer"`, `"payments"`, `"customer-db"` or `"product-db"`.
    pub role: String,
    /// `IP:port` the process listens on.
    pub addr: String,
}

/// Why `cluster.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    /// The file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid cluster file.
    #[error("{}: {source}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl ClusterFile {
    /// The default file name, relative to the working directory.
    pub const DEFAULT_PATH: &'static str = "cluster.json";

    /// Parses the JSON text of a cluster file.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Reads and parses the cluster file at `path`.
    pub fn load(path: &Path) -> Result<Self, ClusterFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text).map_err(|source| ClusterFileError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Pretty-printed JSON, ending with a newline.
    pub fn to_json_pretty(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Writes the file atomically: to a temporary file next to `path`, then renamed over it, so
    /// a reader never sees half a file.
    pub fn save(&self, path: &Path) -> Result<(), ClusterFileError> {
        let io = |source| ClusterFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, self.to_json_pretty()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_format() {
        let text = r#"{
            "seller_servers": ["http://127.0.0.1:7000", "http://127.0.0.1:7001"],
            "buyer_servers": ["http://127.0.0.1:7100"],
            "payments": "http://127.0.0.1:7200",
            "processes": [{"name": "seller-0", "pid": 1234, "role": "seller",
                           "addr": "127.0.0.1:7000", "started_at": "whenever"}],
            "future_field": {"x": 1}
        }"#;
        let c = ClusterFile::from_json(text).unwrap();
        assert_eq!(c.seller_servers.len(), 2);
        assert_eq!(c.buyer_servers, ["http://127.0.0.1:7100"]);
        assert_eq!(c.payments.as_deref(), Some("http://127.0.0.1:7200"));
        assert_eq!(c.processes[0].pid, 1234);
        assert_eq!(c.processes[0].role, "seller");
    }

    #[test]
    fn missing_lists_read_as_empty() {
        let c = ClusterFile::from_json(r#"{"buyer_servers": ["http://127.0.0.1:1"]}"#).unwrap();
        assert!(c.seller_servers.is_empty() && c.processes.is_empty() && c.payments.is_none());
        assert!(ClusterFile::from_json(r#"{"seller_servers": "x"}"#).is_err());
        assert!(ClusterFile::from_json("not json").is_err());
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        let c = ClusterFile {
            seller_servers: vec!["http://127.0.0.1:7000".into()],
            buyer_servers: vec!["http://127.0.0.1:7100".into()],
            payments: Some("http://127.0.0.1:7200".into()),
            processes: vec![ClusterProcess {
                name: "buyer-0".into(),
                pid: 42,
                role: "buyer".into(),
                addr: "127.0.0.1:7100".into(),
            }],
        };
        c.save(&path).unwrap();
        assert_eq!(ClusterFile::load(&path).unwrap(), c);
        let missing = ClusterFile::load(&dir.path().join("nope.json")).unwrap_err();
        assert!(matches!(missing, ClusterFileError::Io { .. }));
    }
}
