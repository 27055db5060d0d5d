//! `market status`: every database replica's role, term or epoch, commit and applied index,
//! and health, in a table. It joins the client network as the `admin-0` identity and asks
//! every replica's client endpoint for its [`LogStatus`](replication::LogStatus), all at once.
//! A replica whose liveness port refuses connections ([`transport::liveness::probe`]) is shown
//! down at once, instead of after the QUIC dial's timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use replication::remote::RemoteLog;
use replication::StateMachine;
use transport::liveness::{probe, Probe};
use transport::{Network, NodeId};

use super::frontend::{client_network, remote_logs};
use crate::cluster::{Cluster, RoleKind};

/// Prints the status table.
pub async fn run(cluster: Cluster) -> Result<(), String> {
    let network = client_network(&cluster, RoleKind::Admin, 0)?;
    let (customers, products) = remote_logs(&cluster, network.clone() as Arc<dyn Network>);
    println!(
        "{:<14} {:<10} {:>6} {:>8} {:>10} {:>10}  health",
        "replica", "role", "term", "leader", "commit", "applied"
    );
    let mut rows = Vec::new();
    for r in &cluster.customer_db {
        let name = Cluster::cert_name(RoleKind::CustomerDb, r.id);
        let node = Cluster::client_node_id(RoleKind::CustomerDb, r.id);
        rows.push((
            name,
            tokio::spawn(status_of(customers.clone(), node, r.client)),
        ));
    }
    for r in &cluster.product_db {
        let name = Cluster::cert_name(RoleKind::ProductDb, r.id);
        let node = Cluster::client_node_id(RoleKind::ProductDb, r.id);
        rows.push((
            name,
            tokio::spawn(status_of(products.clone(), node, r.client)),
        ));
    }
    for (name, row) in rows {
        let status = row
            .await
            .unwrap_or_else(|e| Err(format!("status task failed: {e}")));
        print_row(&name, status);
    }
    network.shutdown();
    Ok(())
}

/// A replica's status, or why it is down: whichever of its status answer and a refused
/// liveness probe comes first.
async fn status_of<S: StateMachine>(
    log: Arc<RemoteLog<S>>,
    node: NodeId,
    addr: SocketAddr,
) -> Result<replication::LogStatus, String> {
    let refused = async {
        if probe(addr, node, Duration::from_millis(500)).await == Probe::Refused {
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        status = log.status_of(node) => status.map_err(|e| e.to_string()),
        () = refused => Err("not running: its liveness port refuses connections".into()),
    }
}

fn print_row(name: &str, status: Result<replication::LogStatus, String>) {
    match status {
        Ok(s) => println!(
            "{:<14} {:<10} {:>6} {:>8} {:>10} {:>10}  up",
            name,
            format!("{:?}", s.role).to_lowercase(),
            s.term,
            s.leader
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into()),
            s.commit_index,
            s.applied_index
        ),
        Err(e) => println!(
            "{name:<14} {:<10} {:>6} {:>8} {:>10} {:>10}  DOWN ({e})",
            "-", "-", "-", "-", "-"
        ),
    }
}
