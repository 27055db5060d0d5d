//! `market node customer-db|product-db --id N`: one database replica.
//!
//! A replica has two QUIC endpoints, both mutual TLS with the cluster CA:
//!
//! * the **peer** endpoint, where replicas of the same database exchange protocol messages
//!   (atomic broadcast for the customer database, Raft for the product database);
//! * the **client** endpoint, where frontends and `market status` send [`LogRequest`]s
//!   (proposals, reads, status), served by [`replication::remote::serve`].
//!
//! Keeping them apart means a burst of client traffic never queues behind replication
//! traffic in one receive stream, and each network's peer table lists exactly who may talk.
//!
//! [`LogRequest`]: replication::remote::LogRequest

use std::collections::BTreeMap;
use std::sync::Arc;

use marketcore::customer::{CustomerConfig, CustomerMachine};
use marketcore::product::{ProductConfig, ProductMachine};
use replication::abcast::{AbcastConfig, AbcastLog};
use replication::raft::{RaftConfig, RaftLog};
use replication::{ReplicatedLog, StateMachine, Stopped};
use transport::certs;
use transport::quic::{PeerInfo, QuicConfig, QuicError, QuicNetwork};
use transport::Network;

use super::frontend::{client_peers, fast_failure};
use crate::cluster::{Cluster, DbReplica, RoleKind};

/// The customer database's configuration, identical on every replica (it comes from the
/// shared cluster file).
pub fn customer_config(cluster: &Cluster) -> CustomerConfig {
    CustomerConfig {
        session_idle_ms: cluster.session_idle_secs.saturating_mul(1000),
        ..CustomerConfig::default()
    }
}

fn replicas(cluster: &Cluster, db: RoleKind) -> &[DbReplica] {
    match db {
        RoleKind::CustomerDb => &cluster.customer_db,
        _ => &cluster.product_db,
    }
}

fn networks(
    cluster: &Cluster,
    db: RoleKind,
    id: u64,
) -> Result<(Arc<QuicNetwork>, Arc<QuicNetwork>), String> {
    let me = replicas(cluster, db)
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| format!("no {} replica with id {id} in the cluster file", db.name()))?;
    let name = Cluster::cert_name(db, id);
    let identity = certs::load_identity(&cluster.certs_dir, &name)
        .map_err(|e| format!("certificate of {name}: {e}"))?;
    let peers: BTreeMap<u64, PeerInfo> = replicas(cluster, db)
        .iter()
        .map(|r| (r.id, PeerInfo::server(Cluster::cert_name(db, r.id), r.peer)))
        .collect();
    let peer_net = bind(QuicConfig::new(id, identity.clone(), me.peer, peers))
        .map_err(|e| format!("peer endpoint {}: {e}", me.peer))?;
    let client_net = bind(fast_failure(QuicConfig::new(
        Cluster::client_node_id(db, id),
        identity,
        me.client,
        client_peers(cluster),
    )))
    .map_err(|e| format!("client endpoint {}: {e}", me.client))?;
    Ok((Arc::new(peer_net), Arc::new(client_net)))
}

/// Binds a QUIC endpoint, trying again for up to [`BIND_RETRY`] while its address is still in
/// use: a replica started right after its predecessor was killed can find the port still
/// held while the dying process's threads exit (its process is already a zombie by then).
fn bind(config: QuicConfig) -> Result<QuicNetwork, QuicError> {
    let started = std::time::Instant::now();
    loop {
        match QuicNetwork::bind(config.clone()) {
            Err(QuicError::Io(e))
                if e.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < BIND_RETRY =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// How long [`bind`] keeps trying an address in use.
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `log` to the frontends until SIGINT/SIGTERM, or until the log itself stops (a
/// storage error, a panic in its task): then this returns an error, so the process exits and
/// does not linger as a replica that answers nothing useful while its liveness listener
/// tells its peers it is alive and its supervisor sees nothing to restart.
async fn serve_until_signal<S: StateMachine>(
    client_net: Arc<QuicNetwork>,
    log: Arc<dyn ReplicatedLog<S>>,
    stopped: Stopped,
) -> Result<(), String> {
    let serving = replication::remote::serve::<S>(client_net.clone() as Arc<dyn Network>, log);
    let result = tokio::select! {
        _ = serving => Ok(()),
        _ = crate::http::shutdown_signal() => Ok(()),
        () = stopped.wait() => Err(
            "the replicated log stopped (the reason is logged above); exiting so that a \
             supervisor can start this replica again"
                .to_string(),
        ),
    };
    client_net.shutdown();
    result
}

/// Runs one database replica until SIGINT/SIGTERM.
pub async fn run(cluster: Cluster, db: RoleKind, id: u64) -> Result<(), String> {
    let (peer_net, client_net) = networks(&cluster, db, id)?;
    let dir = cluster.replica_dir(db, id);
    let n = replicas(&cluster, db).len() as u64;
    let served = match db {
        RoleKind::CustomerDb => {
            let machine = CustomerMachine::new(customer_config(&cluster));
            let log = AbcastLog::open(
                AbcastConfig::new(id, n),
                &dir,
                peer_net.clone() as Arc<dyn Network>,
                machine,
            )
            .map_err(|e| format!("customer-db {id}: {e}"))?;
            tracing::info!(id, dir = %dir.display(), "customer-db replica up");
            let stopped = log.stopped();
            serve_until_signal::<CustomerMachine>(client_net, Arc::new(log), stopped).await
        }
        RoleKind::ProductDb => {
            let ids: Vec<u64> = cluster.product_db.iter().map(|r| r.id).collect();
            let machine = ProductMachine::new(ProductConfig::default());
            let log = RaftLog::start(
                {
                    let mut config = RaftConfig::new(id, ids, &dir);
                    config.lease_reads = cluster.lease_reads;
                    config
                },
                peer_net.clone() as Arc<dyn Network>,
                machine,
            )
            .map_err(|e| format!("product-db {id}: {e}"))?;
            tracing::info!(id, dir = %dir.display(), "product-db replica up");
            let served =
                serve_until_signal::<ProductMachine>(client_net, log.clone(), log.stopped()).await;
            log.shutdown();
            served
        }
        other => return Err(format!("{} is not a database", other.name())),
    };
    peer_net.shutdown();
    served
}
