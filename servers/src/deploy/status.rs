//! `market status`: every database replica's role, term or epoch, commit and applied index,
//! and health, in a table. It joins the client network as the `admin-0` identity and asks
//! each replica's client endpoint for its [`LogStatus`](replication::LogStatus).

use std::sync::Arc;

use transport::Network;

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
    for r in &cluster.customer_db {
        let name = Cluster::cert_name(RoleKind::CustomerDb, r.id);
        let node = Cluster::client_node_id(RoleKind::CustomerDb, r.id);
        print_row(&name, customers.status_of(node).await);
    }
    for r in &cluster.product_db {
        let name = Cluster::cert_name(RoleKind::ProductDb, r.id);
        let node = Cluster::client_node_id(RoleKind::ProductDb, r.id);
        print_row(&name, products.status_of(node).await);
    }
    network.shutdown();
    Ok(())
}

fn print_row(name: &str, status: Result<replication::LogStatus, replication::LogError>) {
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
