//! `RemoteLog` over the simulated network. Three independent single-node logs stand in for a
//! database's replicas, so where a command lands shows which replica a client sent it to:
//! every client starts on the first replica (one entry point per log, see the `remote`
//! module docs), and when that replica is down the call moves on to the next one.

use std::sync::Arc;
use std::time::Duration;

use replication::conformance::{stale_history, TestCommand, TestMachine};
use replication::remote::{serve, RemoteConfig, RemoteLog};
use replication::single::SingleNodeLog;
use replication::{ReplicatedLog, RequestId};
use transport::sim::{LinkConfig, SimHub};
use transport::Network;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_share_the_first_replica_and_move_on_when_it_is_down() {
    let hub = SimHub::start(7, LinkConfig::default()).expect("inside a runtime");
    let mut replicas = Vec::new();
    for id in 0..3u64 {
        let network: Arc<dyn Network> = Arc::new(hub.node(id).expect("fresh id"));
        let log = Arc::new(SingleNodeLog::in_memory(TestMachine::default()));
        let served: Arc<dyn ReplicatedLog<TestMachine>> = log.clone();
        tokio::spawn(serve(network, served));
        replicas.push(log);
    }
    let config = RemoteConfig {
        attempt_timeout: Duration::from_millis(300),
        call_timeout: Duration::from_secs(5),
        ..RemoteConfig::default()
    };
    // Client node ids that would have picked three different replicas by id.
    let clients: Vec<RemoteLog<TestMachine>> = (10..13u64)
        .map(|id| {
            let network: Arc<dyn Network> = Arc::new(hub.node(id).expect("fresh id"));
            RemoteLog::new(network, vec![0, 1, 2], config.clone())
        })
        .collect();
    for (i, client) in clients.iter().enumerate() {
        let id = RequestId {
            client: i as u64 + 1,
            seq: 1,
        };
        client
            .propose(id, TestCommand::Append(i as u64))
            .await
            .expect("a proposal with every replica up");
    }
    assert_eq!(stale_history(replicas[0].as_ref()).await, vec![0, 1, 2]);
    assert!(stale_history(replicas[1].as_ref()).await.is_empty());
    assert!(stale_history(replicas[2].as_ref()).await.is_empty());

    hub.crash(0);
    for (i, client) in clients.iter().enumerate() {
        let id = RequestId {
            client: i as u64 + 1,
            seq: 2,
        };
        client
            .propose(id, TestCommand::Append(10 + i as u64))
            .await
            .expect("a proposal with the first replica down");
    }
    assert_eq!(stale_history(replicas[1].as_ref()).await, vec![10, 11, 12]);
    assert!(stale_history(replicas[2].as_ref()).await.is_empty());
}
