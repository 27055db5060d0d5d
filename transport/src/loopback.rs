//! A group of nodes on 127.0.0.1, for tests, benchmarks and examples: a cluster CA and a
//! certificate per node, a UDP socket per node on a free loopback port, and each node's
//! [`QuicConfig`] with the same peer table. The sockets are bound before the configurations
//! name their ports, so no other process can take a port in between; hand each pair to
//! [`QuicNetwork::bind_socket`](crate::QuicNetwork::bind_socket).

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::path::Path;

use crate::certs::{self, CertError};
use crate::quic::{PeerInfo, QuicConfig};

/// Why a loopback group could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// The certificates could not be made or read.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A loopback socket could not be bound.
    #[error("binding a loopback socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Makes the group: node `i` is `names[i]`, with id `i`. Certificates go to `certs_dir`.
pub fn group(
    certs_dir: &Path,
    names: &[&str],
) -> Result<Vec<(QuicConfig, UdpSocket)>, LoopbackError> {
    certs::generate_cluster(certs_dir, names)?;
    let mut sockets = Vec::with_capacity(names.len());
    let mut peers = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        peers.insert(i as u64, PeerInfo::server(*name, socket.local_addr()?));
        sockets.push(socket);
    }
    let mut nodes = Vec::with_capacity(names.len());
    for (i, (name, socket)) in names.iter().zip(sockets).enumerate() {
        let identity = certs::load_identity(certs_dir, name)?;
        let bind = socket.local_addr()?;
        nodes.push((
            QuicConfig::new(i as u64, identity, bind, peers.clone()),
            socket,
        ));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_gets_its_socket_and_the_same_peer_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes = group(dir.path(), &["a-0", "a-1", "a-2"]).expect("group");
        assert_eq!(nodes.len(), 3);
        for (i, (config, socket)) in nodes.iter().enumerate() {
            assert_eq!(config.local_id, i as u64);
            assert_eq!(config.bind_addr, socket.local_addr().expect("addr"));
            assert_eq!(config.peers, nodes[0].0.peers);
            assert_eq!(config.peers[&(i as u64)].addr, Some(config.bind_addr));
        }
        assert!(matches!(
            group(dir.path(), &["not a dns name"]),
            Err(LoopbackError::Cert(_))
        ));
    }
}
