//! The simulated network: determinism, and that each fault control does what it says.

use std::time::Duration;

use bytes::Bytes;
use transport::sim::{for_each_seed, seeds_from_env, Delivery, LinkConfig, SimHub, SimNet};
use transport::{Incoming, Network, NodeId, TransportError};

/// Sends `n` numbered messages on every link among `nodes` and drains the network.
fn run(net: &mut SimNet<u32>, nodes: &[NodeId], n: u32) -> Vec<Delivery<u32>> {
    for i in 0..n {
        for &a in nodes {
            for &b in nodes {
                if a != b {
                    net.send(a, b, i);
                }
            }
        }
    }
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        match net.next_delivery() {
            Some(d) => out.push(d),
            None => break,
        }
    }
    out
}

fn hostile() -> LinkConfig {
    LinkConfig::faulty(0.2, 0.2, 5_000)
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let trace = |seed| {
        let mut net = SimNet::with_link(seed, hostile());
        run(&mut net, &[1, 2, 3], 50);
        net.trace().to_vec()
    };
    for_each_seed("SIM_SEEDS", 20, |seed| {
        let a = trace(seed);
        assert!(!a.is_empty());
        assert_eq!(a, trace(seed), "same seed, same trace");
        assert_ne!(a, trace(seed + 1_000_000), "another seed, another trace");
    });
}

#[test]
fn deliveries_come_in_virtual_time_order_within_the_delay_range() {
    let mut net = SimNet::with_link(
        7,
        LinkConfig {
            loss: 0.0,
            duplicate: 0.0,
            delay_us_min: 100,
            delay_us_max: 900,
        },
    );
    for i in 0..100u32 {
        net.send(1, 2, i);
    }
    let ds = run(&mut net, &[], 0);
    assert_eq!(ds.len(), 100);
    assert!(ds.windows(2).all(|w| w[0].time_us <= w[1].time_us));
    assert!(ds.iter().all(|d| (100..=900).contains(&d.time_us)));
    // Jitter reorders.
    let order: Vec<u32> = ds.iter().map(|d| d.payload).collect();
    assert!(order.windows(2).any(|w| w[0] > w[1]), "some reordering");
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "each exactly once");
}

#[test]
fn fixed_delay_keeps_fifo_order() {
    let mut net = SimNet::with_link(3, LinkConfig::fixed(50));
    let ds = run(&mut net, &[1, 2], 100);
    let one_to_two: Vec<u32> = ds
        .iter()
        .filter(|d| d.from == 1)
        .map(|d| d.payload)
        .collect();
    assert_eq!(one_to_two, (0..100).collect::<Vec<_>>());
}

#[test]
fn total_loss_delivers_nothing() {
    let mut net = SimNet::with_link(
        1,
        LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        },
    );
    assert!(run(&mut net, &[1, 2, 3], 100).is_empty());
    assert_eq!(net.stats().dropped_loss, 600);
}

#[test]
fn partial_loss_loses_some() {
    let mut net = SimNet::with_link(
        1,
        LinkConfig {
            loss: 0.5,
            ..LinkConfig::default()
        },
    );
    let n = run(&mut net, &[1, 2], 1000).len();
    assert!(n > 0 && n < 2000, "{n}");
}

#[test]
fn per_link_config_overrides_the_default() {
    let mut net = SimNet::new(1);
    net.set_link(
        1,
        2,
        LinkConfig {
            loss: 1.0,
            ..LinkConfig::default()
        },
    );
    let ds = run(&mut net, &[1, 2], 10);
    assert!(ds.iter().all(|d| d.from == 2));
    assert_eq!(ds.len(), 10);
}

#[test]
fn duplication_duplicates() {
    let mut net = SimNet::with_link(
        1,
        LinkConfig {
            duplicate: 1.0,
            ..LinkConfig::default()
        },
    );
    let ds = run(&mut net, &[1, 2], 10);
    assert_eq!(ds.len(), 40);
    for i in 0..10 {
        assert_eq!(
            ds.iter().filter(|d| d.from == 1 && d.payload == i).count(),
            2
        );
    }
}

#[test]
fn partition_blocks_both_directions_and_heal_restores() {
    let mut net = SimNet::new(1);
    net.partition(&[1], &[2, 3]);
    let ds = run(&mut net, &[1, 2, 3], 5);
    assert!(
        ds.iter().all(|d| d.from != 1 && d.to != 1),
        "1 is cut off both ways"
    );
    assert_eq!(ds.len(), 10, "2 <-> 3 unaffected");
    net.heal();
    assert_eq!(run(&mut net, &[1, 2, 3], 5).len(), 30);
}

#[test]
fn partition_drops_traffic_already_in_flight() {
    let mut net = SimNet::new(1);
    net.send(1, 2, 1);
    net.partition(&[1], &[2]);
    assert!(net.next_delivery().is_none());
    assert_eq!(net.stats().dropped_partition, 1);
}

#[test]
fn one_way_block_blocks_one_direction() {
    let mut net = SimNet::new(1);
    net.block(1, 2);
    let ds = run(&mut net, &[1, 2], 5);
    assert!(ds.iter().all(|d| d.from == 2 && d.to == 1));
    assert_eq!(ds.len(), 5);
    net.unblock(1, 2);
    assert_eq!(run(&mut net, &[1, 2], 5).len(), 10);
}

#[test]
fn crash_drops_in_flight_and_future_traffic_until_restart() {
    let mut net = SimNet::new(1);
    net.send(1, 2, 1);
    net.send(2, 1, 2);
    net.send(2, 3, 3);
    net.crash(2);
    assert!(net.is_crashed(2));
    net.send(1, 2, 4);
    net.send(2, 3, 5);
    let ds = run(&mut net, &[], 0);
    assert!(ds.is_empty(), "{ds:?}");
    assert_eq!(net.stats().dropped_crash, 5);
    net.send(1, 3, 6);
    assert_eq!(
        net.next_delivery().map(|d| d.payload),
        Some(6),
        "others unaffected"
    );
    net.restart(2);
    assert_eq!(run(&mut net, &[1, 2], 1).len(), 2);
}

#[test]
fn timers_interleave_with_deliveries() {
    let mut net = SimNet::with_link(1, LinkConfig::fixed(1_000));
    net.send(1, 2, 9);
    assert_eq!(net.next_delivery_time(), Some(1_000));
    assert!(net.next_delivery_until(500).is_none());
    net.advance_to(500);
    assert_eq!(net.now_us(), 500);
    net.send(2, 1, 10); // due at 1500
    assert_eq!(
        net.next_delivery().map(|d| (d.time_us, d.payload)),
        Some((1_000, 9))
    );
    assert_eq!(
        net.next_delivery().map(|d| (d.time_us, d.payload)),
        Some((1_500, 10))
    );
    net.send(1, 2, 11);
    let tuple: Option<(u64, NodeId, NodeId, u32)> = net.next_delivery().map(Into::into);
    assert_eq!(tuple, Some((2_500, 1, 2, 11)));
    net.advance_to(10); // never backwards
    assert_eq!(net.now_us(), 2_500);
}

#[test]
fn seeds_default_when_unset() {
    if std::env::var("SIM_SEED").is_err() {
        assert_eq!(seeds_from_env("TRANSPORT_TEST_UNSET_VAR", 3), vec![0, 1, 2]);
    }
}

// ---------------------------------------------------------------------------------------------
// The tokio adapter

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(10);

fn echo(net: transport::sim::SimNetwork) -> tokio::sync::mpsc::UnboundedReceiver<(NodeId, Bytes)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(inc) = net.recv().await {
            match inc {
                Incoming::Message { from, payload } => {
                    let _ = tx.send((from, payload));
                }
                Incoming::Request {
                    payload, responder, ..
                } => {
                    if payload.as_ref() != b"drop" {
                        responder.respond(payload);
                    }
                }
            }
        }
    });
    rx
}

#[tokio::test]
async fn sim_network_carries_messages_and_rpc() {
    let hub = SimHub::start(1, LinkConfig::fixed(100)).expect("runtime");
    let a = hub.node(1).expect("a");
    assert!(hub.node(1).is_none(), "ids are unique");
    let mut b_msgs = echo(hub.node(2).expect("b"));
    assert_eq!(a.local_id(), 1);
    assert_eq!(
        a.call(2, Bytes::from_static(b"ping"), LONG).await,
        Ok(Bytes::from_static(b"ping"))
    );
    assert_eq!(
        a.call(2, Bytes::from_static(b"drop"), LONG).await,
        Err(TransportError::Dropped(2))
    );
    assert_eq!(
        a.call(3, Bytes::new(), LONG).await,
        Err(TransportError::UnknownPeer(3))
    );
    for i in 0..10u8 {
        a.send(2, Bytes::from(vec![i])).expect("send");
    }
    for i in 0..10u8 {
        let got = tokio::time::timeout(LONG, b_msgs.recv())
            .await
            .expect("timely");
        assert_eq!(got, Some((1, Bytes::from(vec![i]))));
    }
}

#[tokio::test]
async fn sim_network_faults_apply_to_requests_and_responses() {
    let hub = SimHub::start(2, LinkConfig::fixed(100)).expect("runtime");
    let a = hub.node(1).expect("a");
    let _b = echo(hub.node(2).expect("b"));
    // Lost requests and lost responses both look like timeouts to the caller.
    hub.block(1, 2);
    assert_eq!(
        a.call(2, Bytes::new(), SHORT).await,
        Err(TransportError::Timeout(SHORT))
    );
    hub.heal();
    hub.block(2, 1);
    assert_eq!(
        a.call(2, Bytes::new(), SHORT).await,
        Err(TransportError::Timeout(SHORT))
    );
    hub.heal();
    hub.set_link(
        2,
        1,
        LinkConfig {
            loss: 1.0,
            ..LinkConfig::fixed(100)
        },
    );
    assert_eq!(
        a.call(2, Bytes::new(), SHORT).await,
        Err(TransportError::Timeout(SHORT))
    );
    hub.set_link(2, 1, LinkConfig::fixed(100));
    assert!(a.call(2, Bytes::new(), LONG).await.is_ok());
    hub.partition(&[1], &[2]);
    assert_eq!(
        a.call(2, Bytes::new(), SHORT).await,
        Err(TransportError::Timeout(SHORT))
    );
    hub.heal();
    hub.crash(2);
    assert_eq!(
        a.call(2, Bytes::new(), SHORT).await,
        Err(TransportError::Timeout(SHORT))
    );
    hub.restart(2);
    assert!(a.call(2, Bytes::new(), LONG).await.is_ok());
    assert!(hub.stats().dropped_partition >= 3);
}

#[tokio::test]
async fn sim_network_survives_a_hostile_network() {
    let hub = SimHub::start(3, LinkConfig::faulty(0.3, 0.3, 2_000)).expect("runtime");
    let a = hub.node(1).expect("a");
    let _b = echo(hub.node(2).expect("b"));
    let mut ok = 0;
    for i in 0..40u32 {
        match a
            .call(
                2,
                Bytes::from(i.to_be_bytes().to_vec()),
                Duration::from_millis(100),
            )
            .await
        {
            Ok(r) => {
                assert_eq!(
                    r,
                    Bytes::from(i.to_be_bytes().to_vec()),
                    "a duplicate never answers another call"
                );
                ok += 1;
            }
            Err(TransportError::Timeout(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(ok > 0 && ok < 40, "{ok}");
}

#[tokio::test]
async fn dropping_the_hub_ends_recv() {
    let hub = SimHub::start(4, LinkConfig::default()).expect("runtime");
    let a = hub.node(1).expect("a");
    drop(hub);
    assert!(tokio::time::timeout(LONG, a.recv())
        .await
        .expect("timely")
        .is_none());
    assert_eq!(a.send(1, Bytes::new()), Err(TransportError::Shutdown));
}
