//! The cluster certificate authority and per-node certificates.
//!
//! Every process in a cluster (database replica, seller or buyer server, frontend) has a
//! *name* such as `customer-db-0`, `product-db-3`, `seller-1` or `buyer-0`, and a certificate
//! whose DNS subject alternative name is exactly that name, signed by one cluster CA made
//! here with rcgen. The QUIC transport ([`crate::quic`]) uses these for mutual TLS: a server
//! only accepts clients whose certificate chains to the cluster CA and names the node the
//! client claims to be; a client only accepts a server whose certificate chains to the CA and
//! names the peer it dialled.
//!
//! On disk a cluster directory holds:
//!
//! | file | content |
//! |---|---|
//! | `ca.pem` | the CA certificate (distributed to every node) |
//! | `ca.key` | the CA private key (PKCS#8 PEM, mode 0600; keep it off the nodes if you can) |
//! | `<name>.pem` | the node certificate |
//! | `<name>.key` | the node private key (PKCS#8 PEM, mode 0600) |
//!
//! [`generate_cluster`] writes a fresh CA and a certificate per name; [`issue_into`] adds a
//! node to an existing directory (it needs `ca.key`); [`load_identity`] reads what one node
//! needs at run time. Certificates are ECDSA P-256 and valid from 1975 to 4096 (rcgen's
//! defaults): rotation is done by regenerating the directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Errors from making, writing or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A node name is not usable (it must be a valid DNS name such as `customer-db-0`).
    #[error("invalid node name {0:?}: must be a DNS name (letters, digits, '-', '.')")]
    InvalidName(String),
    /// Certificate generation or signing failed.
    #[error("certificate generation: {0}")]
    Generate(String),
    /// A PEM file did not contain what was expected.
    #[error("{path}: cannot parse PEM: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A cluster CA: its certificate and private key, in PEM.
#[derive(Clone)]
pub struct ClusterCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA private key, PKCS#8 PEM. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("key_pem", &"<secret>")
            .finish_non_exhaustive()
    }
}

/// A node's certificate and private key, in PEM, as issued by [`ClusterCa::issue`].
#[derive(Clone)]
pub struct NodeCert {
    /// The node name (the certificate's DNS SAN).
    pub name: String,
    /// The node certificate, PEM.
    pub cert_pem: String,
    /// The node private key, PKCS#8 PEM. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What one node needs at run time: the CA certificate to verify peers, and its own
/// certificate and key, in DER, ready for rustls.
#[derive(Debug)]
pub struct NodeIdentity {
    /// The node name (must equal the certificate's DNS SAN).
    pub name: String,
    /// The cluster CA certificate.
    pub ca_cert: CertificateDer<'static>,
    /// This node's certificate.
    pub cert: CertificateDer<'static>,
    /// This node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            ca_cert: self.ca_cert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl NodeIdentity {
    /// Builds an identity from PEM text (a CA certificate and a node certificate and key).
    pub fn from_pem(name: &str, ca_cert_pem: &str, node: &NodeCert) -> Result<Self, CertError> {
        let parse_err = |what: &str, e: rustls_pki_types::pem::Error| CertError::Parse {
            path: PathBuf::from(format!("<{what}>")),
            reason: e.to_string(),
        };
        Ok(Self {
            name: name.to_string(),
            ca_cert: CertificateDer::from_pem_slice(ca_cert_pem.as_bytes())
                .map_err(|e| parse_err("ca", e))?,
            cert: CertificateDer::from_pem_slice(node.cert_pem.as_bytes())
                .map_err(|e| parse_err("cert", e))?,
            key: PrivateKeyDer::from_pem_slice(node.key_pem.as_bytes())
                .map_err(|e| parse_err("key", e))?,
        })
    }
}

/// Checks that `name` is a DNS name usable as a node name and a file stem.
pub fn validate_name(name: &str) -> Result<(), CertError> {
    let ok_chars = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.contains("..");
    if !ok_chars || ServerName::try_from(name.to_string()).is_err() {
        return Err(CertError::InvalidName(name.to_string()));
    }
    Ok(())
}

fn gen_err(e: rcgen::Error) -> CertError {
    CertError::Generate(e.to_string())
}

/// The CA's parameters. They are constant so that an [`Issuer`] can be rebuilt from the
/// CA key alone (the issuer name and key identifier match the CA certificate).
fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "market cluster CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "market");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Makes a fresh cluster CA.
pub fn generate_ca() -> Result<ClusterCa, CertError> {
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = ca_params()?.self_signed(&key).map_err(gen_err)?;
    Ok(ClusterCa {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl ClusterCa {
    /// Issues a certificate for node `name` (DNS SAN = `name`, usable as TLS client and server).
    pub fn issue(&self, name: &str) -> Result<NodeCert, CertError> {
        validate_name(name)?;
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(gen_err)?;
        let issuer = Issuer::new(ca_params()?, ca_key);
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(gen_err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        Ok(NodeCert {
            name: name.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, CertError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| CertError::Parse {
            path: PathBuf::from("<ca>"),
            reason: e.to_string(),
        })
    }

    /// Issues a certificate for `name` and returns it as a ready-to-use [`NodeIdentity`]
    /// (handy for tests and in-process clusters; nothing touches the disk).
    pub fn identity(&self, name: &str) -> Result<NodeIdentity, CertError> {
        let node = self.issue(name)?;
        NodeIdentity::from_pem(name, &self.cert_pem, &node)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), CertError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    // `mode` only applies on creation: tighten an existing file too.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn read_file(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Path of `<dir>/<name>.pem`.
pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

/// Path of `<dir>/<name>.key`.
pub fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

/// Writes a node certificate and key into `dir` (`<name>.pem`, `<name>.key` with mode 0600).
pub fn write_node(dir: &Path, node: &NodeCert) -> Result<(), CertError> {
    validate_name(&node.name)?;
    write_file(&cert_path(dir, &node.name), &node.cert_pem, false)?;
    write_file(&key_path(dir, &node.name), &node.key_pem, true)
}

/// Writes a CA into `dir` (`ca.pem`, `ca.key` with mode 0600).
pub fn write_ca(dir: &Path, ca: &ClusterCa) -> Result<(), CertError> {
    write_file(&dir.join("ca.pem"), &ca.cert_pem, false)?;
    write_file(&dir.join("ca.key"), &ca.key_pem, true)
}

/// Creates `dir` if needed and writes a fresh CA and one certificate per name into it,
/// replacing whatever was there. Returns the CA.
pub fn generate_cluster(dir: &Path, names: &[&str]) -> Result<ClusterCa, CertError> {
    for name in names {
        validate_name(name)?;
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca = generate_ca()?;
    write_ca(dir, &ca)?;
    for name in names {
        write_node(dir, &ca.issue(name)?)?;
    }
    Ok(ca)
}

/// Loads the CA (certificate and key) from `dir`.
pub fn load_ca(dir: &Path) -> Result<ClusterCa, CertError> {
    Ok(ClusterCa {
        cert_pem: read_file(&dir.join("ca.pem"))?,
        key_pem: read_file(&dir.join("ca.key"))?,
    })
}

/// Issues a certificate for `name` with the CA stored in `dir` and writes it there.
pub fn issue_into(dir: &Path, name: &str) -> Result<(), CertError> {
    let ca = load_ca(dir)?;
    write_node(dir, &ca.issue(name)?)
}

/// Loads what node `name` needs at run time from `dir`: `ca.pem`, `<name>.pem`, `<name>.key`
/// (the CA key is not read).
pub fn load_identity(dir: &Path, name: &str) -> Result<NodeIdentity, CertError> {
    validate_name(name)?;
    let parse = |path: PathBuf, e: rustls_pki_types::pem::Error| CertError::Parse {
        path,
        reason: e.to_string(),
    };
    let ca_path = dir.join("ca.pem");
    let ca_cert = CertificateDer::from_pem_slice(read_file(&ca_path)?.as_bytes())
        .map_err(|e| parse(ca_path, e))?;
    let cp = cert_path(dir, name);
    let cert =
        CertificateDer::from_pem_slice(read_file(&cp)?.as_bytes()).map_err(|e| parse(cp, e))?;
    let kp = key_path(dir, name);
    let key =
        PrivateKeyDer::from_pem_slice(read_file(&kp)?.as_bytes()).map_err(|e| parse(kp, e))?;
    Ok(NodeIdentity {
        name: name.to_string(),
        ca_cert,
        cert,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in [
            "customer-db-0",
            "product-db-3",
            "seller-1",
            "buyer-0",
            "a.b",
        ] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/b", "a b", ".x", "x..y", "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generate_write_load_roundtrip() -> Result<(), CertError> {
        let dir = tempfile::tempdir().map_err(io_err(Path::new("tmp")))?;
        let ca = generate_cluster(dir.path(), &["customer-db-0", "buyer-0"])?;
        let id = load_identity(dir.path(), "buyer-0")?;
        assert_eq!(id.name, "buyer-0");
        assert_eq!(id.ca_cert, ca.cert_der()?);
        issue_into(dir.path(), "seller-1")?;
        load_identity(dir.path(), "seller-1")?;
        assert!(load_identity(dir.path(), "seller-2").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca.key", "buyer-0.key", "seller-1.key"] {
                let mode = fs::metadata(dir.path().join(f))
                    .map_err(io_err(dir.path()))?
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        Ok(())
    }
}
