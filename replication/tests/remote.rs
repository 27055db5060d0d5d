//! `RemoteLog` over the simulated network. Three independent single-node logs stand in for a
//! database's replicas, so where a command lands shows which replica a client sent it to:
//! every client starts on the first replica (one entry point per log, see the `remote`
//! module docs), and when that replica is down the call moves on to the next one. Hostile
//! frames at a replica's endpoint are answered with an error and change nothing.

use std::sync::Arc;
use std::time::Duration;

use replication::conformance::{stale_history, TestCommand, TestMachine};
use replication::remote::{serve, CallTimes, LogRequest, LogResponse, RemoteConfig, RemoteLog};
use replication::single::SingleNodeLog;
use replication::{LogError, ReadConsistency, ReplicatedLog, RequestId};
use transport::sim::{LinkConfig, SimHub};
use transport::{decode, encode, Network};

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

    // Each client timed its two proposals, failover included, and no read yet.
    for client in &clients {
        let proposals = client.proposal_times();
        assert_eq!(proposals.count, 2);
        assert!(proposals.mean().is_some_and(|m| m > Duration::ZERO));
        assert_eq!(client.read_times(), CallTimes::default());
        assert_eq!(client.read_times().mean(), None);
    }
    assert_eq!(
        stale_history(&clients[0]).await,
        vec![10, 11, 12],
        "a read through the client lands on the replica that answered last"
    );
    assert_eq!(clients[0].read_times().count, 1);
    assert_eq!(clients[0].proposal_times().count, 2);
}

/// Hostile frames at a replica's client endpoint: bytes that are no request, requests whose
/// command or query does not decode, and random bytes. Each is answered with a `Rejected`
/// error, nothing is applied, and the replica goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_answered_with_an_error_and_change_nothing() {
    let hub = SimHub::start(8, LinkConfig::default()).expect("inside a runtime");
    let network: Arc<dyn Network> = Arc::new(hub.node(0).expect("fresh id"));
    let log = Arc::new(SingleNodeLog::in_memory(TestMachine::default()));
    let served: Arc<dyn ReplicatedLog<TestMachine>> = log.clone();
    tokio::spawn(serve(network, served));
    let client: Arc<dyn Network> = Arc::new(hub.node(1).expect("fresh id"));

    let mut frames: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 64],
        encode(&LogRequest::Propose {
            id: RequestId { client: 1, seq: 1 },
            command: vec![0xff; 12],
        })
        .expect("encode")
        .to_vec(),
        encode(&LogRequest::Read {
            query: vec![0xee; 3],
            consistency: ReadConsistency::Linearizable,
        })
        .expect("encode")
        .to_vec(),
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for len in 1..200usize {
        frames.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect(),
        );
    }
    let mut rejected = 0;
    for frame in &frames {
        let answer = client
            .call(0, frame.clone().into(), Duration::from_secs(5))
            .await
            .expect("the replica answers");
        match decode::<LogResponse>(&answer).expect("a response") {
            LogResponse::Error(LogError::Rejected(_)) => rejected += 1,
            // Random bytes may happen to spell a status request or a stale read of a query
            // that decodes; whatever they spell, nothing may be applied.
            LogResponse::Status(_) | LogResponse::Answer(..) => {}
            other => panic!("{frame:?} answered {other:?}"),
        }
    }
    assert!(rejected >= 4, "only {rejected} frames were rejected");
    assert!(
        stale_history(log.as_ref()).await.is_empty(),
        "something was applied"
    );
    // The replica still serves a well-formed client.
    let remote = RemoteLog::<TestMachine>::new(client, vec![0], RemoteConfig::default());
    remote
        .propose(RequestId { client: 2, seq: 1 }, TestCommand::Append(5))
        .await
        .expect("a valid proposal after the hostile ones");
    assert_eq!(stale_history(log.as_ref()).await, vec![5]);
}
