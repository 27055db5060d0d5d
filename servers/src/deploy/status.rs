//! `market status`: every database replica's role, term or epoch, commit and applied index,
//! and health, in a table. It joins the client network as the `admin-0` identity and asks
//! every replica's client endpoint for its [`LogStatus`](replication::LogStatus), all at once.
//! A replica whose liveness port refuses connections ([`transport::liveness::probe`]) is shown
//! down at once, instead of after the QUIC dial's timeout. Below the table, a line says what
//! down replicas mean for each database ([`customer_summary`], [`product_summary`]): where
//! the customer database's ring stops, that a database has lost its majority or its leader,
//! or that a product-db replica is catching up after starting with an empty data directory.

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
    let customers_n = cluster.customer_db.len();
    let mut seen = Vec::with_capacity(rows.len());
    for (name, row) in rows {
        let status = row
            .await
            .unwrap_or_else(|e| Err(format!("status task failed: {e}")));
        print_row(&name, &status);
        seen.push(status.ok());
    }
    let (customer, product) = seen.split_at(customers_n.min(seen.len()));
    for line in customer_summary(customer)
        .into_iter()
        .chain(product_summary(product))
    {
        println!("{line}");
    }
    network.shutdown();
    Ok(())
}

/// What the customer-db rows mean for the marketplace (`statuses[i]`: member `i`, `None`
/// when down): nothing while every member is up, in the group and not being rebuilt.
/// Otherwise: members down that the others have excluded (they go on, passing their turns),
/// members down not excluded yet (the ring waits at the first of their turns until they are
/// excluded or back), members back but not readmitted yet (catching up), members being
/// rebuilt from a peer (their disk lacked history), or that no majority is left.
pub fn customer_summary(statuses: &[Option<replication::LogStatus>]) -> Option<String> {
    let n = statuses.len() as u64;
    let names = |ids: &[u64]| {
        ids.iter()
            .map(|d| format!("customer-db-{d}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let down: Vec<u64> = (0..n).filter(|&i| statuses[i as usize].is_none()).collect();
    let with = |key: &str| -> Vec<u64> {
        (0..n)
            .filter(|&i| {
                statuses[i as usize]
                    .as_ref()
                    .and_then(|s| counter(s, key))
                    .is_some_and(|v| v > 0)
            })
            .collect()
    };
    // The newest epoch a live member is in, and whom it excludes.
    let (epoch, mask) = statuses
        .iter()
        .flatten()
        .map(|s| (s.term, counter(s, "excluded").unwrap_or(0)))
        .max()
        .unwrap_or((0, 0));
    let excluded = |i: u64| i < 64 && mask & (1 << i) != 0;
    let mut lines = Vec::new();
    if down.len() as u64 > n / 2 {
        lines.push(format!(
            "customer database: {} down, no majority left: nothing new is delivered until \
             enough of them are back",
            names(&down)
        ));
    } else {
        let (gone, waited): (Vec<u64>, Vec<u64>) = down.iter().partition(|d| excluded(**d));
        if !gone.is_empty() {
            lines.push(format!(
                "customer database: {} down and excluded (epoch {epoch}): the others go on \
                 without it, passing its turns; it is readmitted once it is back and has \
                 caught up",
                names(&gone)
            ));
        }
        if !waited.is_empty() {
            let next = statuses
                .iter()
                .flatten()
                .map(|s| counter(s, "sequenced").unwrap_or(s.commit_index))
                .min()
                .unwrap_or(0);
            let stop = (next..next.saturating_add(n))
                .find(|k| waited.contains(&(k % n)))
                .unwrap_or(next);
            lines.push(format!(
                "customer database: {} down; the atomic broadcast waits at sequence {stop}, \
                 customer-db-{}'s turn, until the others exclude it (a reformation, within \
                 a second) or it is back",
                names(&waited),
                stop % n.max(1)
            ));
        }
    }
    let back = with("excluded_self");
    if !back.is_empty() {
        lines.push(format!(
            "customer database: {} back, catching up before it is readmitted (the others go \
             on meanwhile)",
            names(&back)
        ));
    }
    let rebuilding = with("rebuilding");
    if !rebuilding.is_empty() {
        lines.push(format!(
            "customer database: {} lacks history its peers hold (its disk was emptied or \
             restored from an older copy, or it was away so long that the others discarded \
             what it missed) and is being rebuilt from a peer's snapshot and journal; the \
             others go on without it",
            names(&rebuilding)
        ));
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// What the product-db rows mean: nothing while a leader is up and every replica votes;
/// otherwise which replicas are catching up after starting with an empty data directory or
/// one older than what their peers saw of them (they vote only once they have), and,
/// without a leader, that too few voting replicas are left or that an election is under way.
pub fn product_summary(statuses: &[Option<replication::LogStatus>]) -> Option<String> {
    let n = statuses.len();
    let role = |i: usize| statuses[i].as_ref().map(|s| s.role);
    let recovering = |i: usize| role(i) == Some(replication::Role::Recovering);
    // The Raft node counts a store found older than what its peers saw (`older_stores`).
    let older = |i: usize| {
        statuses[i]
            .as_ref()
            .and_then(|s| counter(s, "older_stores"))
            .is_some_and(|c| c > 0)
    };
    let (restored, emptied): (Vec<usize>, Vec<usize>) =
        (0..n).filter(|&i| recovering(i)).partition(|&i| older(i));
    let voting = (0..n)
        .filter(|&i| role(i).is_some_and(|r| r != replication::Role::Recovering))
        .count();
    let mut parts = Vec::new();
    for (ids, started) in [
        (emptied, "with an empty data directory"),
        (
            restored,
            "from a data directory older than what its peers saw of it (an older copy, or a \
             disk that lost writes)",
        ),
    ] {
        if !ids.is_empty() {
            let names: Vec<String> = ids.iter().map(|i| format!("product-db-{i}")).collect();
            parts.push(format!(
                "{} started {started}: it catches up from the leader and votes only once it has",
                names.join(", ")
            ));
        }
    }
    if !(0..n).any(|i| role(i) == Some(replication::Role::Leader)) && n > 0 {
        if voting <= n / 2 {
            parts.push(format!(
                "{} of {n} replicas down or not voting yet, no majority left: it is \
                 unavailable until enough of them are back",
                n - voting
            ));
        } else {
            parts.push("no leader right now (an election is under way)".into());
        }
    }
    (!parts.is_empty()).then(|| format!("product database: {}", parts.join("; ")))
}

fn counter(status: &replication::LogStatus, name: &str) -> Option<u64> {
    status
        .counters
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
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

fn print_row(name: &str, status: &Result<replication::LogStatus, String>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use replication::{LogStatus, Role};

    fn member(id: u64, sequenced: u64) -> Option<LogStatus> {
        Some(LogStatus {
            node_id: id,
            role: Role::Member,
            term: 0,
            leader: None,
            commit_index: sequenced,
            applied_index: sequenced,
            counters: vec![("sequenced".into(), sequenced)],
        })
    }

    fn replica(id: u64, role: Role) -> Option<LogStatus> {
        Some(LogStatus {
            node_id: id,
            role,
            term: 3,
            leader: None,
            commit_index: 9,
            applied_index: 9,
            counters: vec![],
        })
    }

    #[test]
    fn the_customer_summary_names_where_the_ring_waits_and_who_is_excluded() {
        let all_up: Vec<_> = (0..5).map(|i| member(i, 40)).collect();
        assert_eq!(customer_summary(&all_up), None);
        // Member 2 down, the slowest live member's next number 40 (owner 0): the ring
        // stops at 42, member 2's next turn.
        let mut one_down = all_up.clone();
        one_down[2] = None;
        one_down[4] = member(4, 41);
        let line = customer_summary(&one_down).expect("a summary");
        assert!(line.contains("customer-db-2 down"), "{line}");
        assert!(
            line.contains("waits at sequence 42, customer-db-2's turn"),
            "{line}"
        );
        // Two down: the first turn either owns.
        let mut two_down = all_up.clone();
        two_down[1] = None;
        two_down[3] = None;
        let line = customer_summary(&two_down).expect("a summary");
        assert!(line.contains("customer-db-1, customer-db-3 down"), "{line}");
        assert!(
            line.contains("waits at sequence 41, customer-db-1's turn"),
            "{line}"
        );
        let mut no_majority = two_down;
        no_majority[0] = None;
        let line = customer_summary(&no_majority).expect("a summary");
        assert!(line.contains("no majority"), "{line}");
        // A member being rebuilt is named, alone or beside a down one.
        let mut rebuilt = all_up.clone();
        if let Some(s) = rebuilt[4].as_mut() {
            s.counters.push(("rebuilding".into(), 1));
        }
        let line = customer_summary(&rebuilt).expect("a summary");
        assert!(
            line.contains("customer-db-4 lacks history its peers hold"),
            "{line}"
        );
        rebuilt[1] = None;
        let line = customer_summary(&rebuilt).expect("a summary");
        assert!(line.contains("customer-db-1 down"), "{line}");
        assert!(line.contains("customer-db-4 lacks"), "{line}");
        // Rebuilt: the counter back at 0.
        if let Some(s) = rebuilt[4].as_mut() {
            s.counters.retain(|(k, _)| k != "rebuilding");
            s.counters.push(("rebuilding".into(), 0));
        }
        let line = customer_summary(&rebuilt).expect("a summary");
        assert!(!line.contains("lacks history"), "{line}");
        // Member 2 down and excluded by the others' epoch 5: they go on.
        let mut excluded = all_up.clone();
        excluded[2] = None;
        for s in excluded.iter_mut().flatten() {
            s.term = 5;
            s.counters.push(("excluded".into(), 1 << 2));
        }
        let line = customer_summary(&excluded).expect("a summary");
        assert!(
            line.contains("customer-db-2 down and excluded (epoch 5)"),
            "{line}"
        );
        assert!(!line.contains("waits at"), "{line}");
        // Back, catching up before it is readmitted.
        let mut back = member(2, 30);
        if let Some(s) = back.as_mut() {
            s.term = 5;
            s.counters.push(("excluded".into(), 1 << 2));
            s.counters.push(("excluded_self".into(), 1));
        }
        excluded[2] = back;
        let line = customer_summary(&excluded).expect("a summary");
        assert!(line.contains("customer-db-2 back, catching up"), "{line}");
        assert!(!line.contains("down"), "{line}");
    }

    #[test]
    fn the_product_summary_speaks_without_a_leader_or_while_a_replica_rejoins() {
        let mut rows: Vec<_> = (0..5).map(|i| replica(i, Role::Follower)).collect();
        rows[3] = replica(3, Role::Leader);
        rows[0] = None;
        assert_eq!(product_summary(&rows), None);
        rows[3] = None;
        let line = product_summary(&rows).expect("a summary");
        assert!(line.contains("election"), "{line}");
        rows[1] = None;
        let line = product_summary(&rows).expect("a summary");
        assert!(
            line.contains("3 of 5 replicas down or not voting yet, no majority"),
            "{line}"
        );
        assert_eq!(product_summary(&[]), None);
        // A replica started with an empty disk does not count as a voter, leader or not.
        let mut rows: Vec<_> = (0..5).map(|i| replica(i, Role::Follower)).collect();
        rows[0] = replica(0, Role::Leader);
        rows[4] = replica(4, Role::Recovering);
        let line = product_summary(&rows).expect("a summary");
        assert!(
            line.contains("product-db-4 started with an empty data directory"),
            "{line}"
        );
        assert!(!line.contains("older"), "{line}");
        // One restored from an older copy says so.
        let mut restored = replica(2, Role::Recovering);
        if let Some(s) = restored.as_mut() {
            s.counters.push(("older_stores".into(), 1));
        }
        rows[2] = restored;
        let line = product_summary(&rows).expect("a summary");
        assert!(
            line.contains("product-db-4 started with an empty data directory")
                && line.contains("product-db-2 started from a data directory older than"),
            "{line}"
        );
        rows[0] = None;
        rows[1] = None;
        let line = product_summary(&rows).expect("a summary");
        assert!(
            line.contains("4 of 5 replicas down or not voting yet"),
            "{line}"
        );
    }
}
