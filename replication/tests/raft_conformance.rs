//! The shared conformance suite on a five-node Raft cluster over the simulated network
//! (default links: 0.1-1 ms delay with reordering), real raft-engine storage in temp
//! directories. Snapshots every 16 entries, so the durability check (every node killed and
//! restarted from disk) also recovers from snapshots and compacted logs.

mod raft_support;

use raft_support::Cluster;
use transport::sim::LinkConfig;

async fn five() -> Cluster {
    Cluster::start(5, 1, LinkConfig::default(), |c| {
        c.snapshot_every = 16;
        c.compact_margin = 4;
    })
    .await
}

replication::conformance_suite!(five);

async fn five_lease() -> Cluster {
    Cluster::start(5, 2, LinkConfig::default(), |c| c.lease_reads = true).await
}

/// Lease-based ReadIndex (opt-in) still serves acknowledged writes from every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_see_acknowledged_writes() {
    replication::conformance::linearizable_reads(five_lease().await).await;
}

/// A replica's `stopped` signal stays unresolved while its Ready loop runs and resolves once
/// it has ended (here by `shutdown`; a storage error or a panic end it the same way, see
/// `replication::stopped`), so a process serving the replica can exit with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_says_when_its_loop_has_stopped() {
    let cluster = five().await;
    let (leader, _) = cluster.wait_leader(200).await.expect("a leader");
    let log = cluster.node(leader);
    let stopped = log.stopped();
    assert!(!stopped.has_stopped(), "running");
    cluster.crash(leader);
    tokio::time::timeout(std::time::Duration::from_secs(5), stopped.wait())
        .await
        .expect("stopped after shutdown");
    assert!(stopped.has_stopped());
}
