//! `market serve seller|buyer --id N`: one stateless HTTP frontend of the distributed
//! marketplace.
//!
//! The frontend holds no user state. It reaches both databases over QUIC with mutual TLS as a
//! client-only node (identity `seller-N` / `buyer-N`), through [`RemoteLog`]s that send each
//! proposal or read to one replica and fail over to the next, keeping the request id so a
//! retried proposal takes effect once. Any number of frontends serve the same databases.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use marketcore::clock::SystemClock;
use marketcore::customer::CustomerMachine;
use marketcore::product::ProductMachine;
use marketcore::{Market, MarketConfig};
use replication::remote::{RemoteConfig, RemoteLog};
use replication::ReplicatedLog;
use transport::certs;
use transport::quic::{PeerInfo, QuicConfig, QuicNetwork};
use transport::Network;

use crate::cluster::{Cluster, RoleKind};
use crate::frontend::buyer::BuyerApi;
use crate::frontend::seller::SellerApi;
use crate::frontend::ApiServer;
use crate::http::{self, Limits};
use crate::payments::client::SoapPaymentClient;

/// How often every frontend runs [`Market::tick`].
const TICK_EVERY: Duration = Duration::from_secs(5);

/// How long a stopping frontend waits for the purchase confirmations it still has on their
/// way ([`Market::settle`]); the purchase sweeper sends any it leaves behind.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// The client-network peer table: every database replica's client endpoint, plus the
/// identities that may connect to them (all frontends and the admin tool).
pub fn client_peers(cluster: &Cluster) -> BTreeMap<u64, PeerInfo> {
    let mut peers = BTreeMap::new();
    for r in &cluster.customer_db {
        peers.insert(
            Cluster::client_node_id(RoleKind::CustomerDb, r.id),
            PeerInfo::server(Cluster::cert_name(RoleKind::CustomerDb, r.id), r.client),
        );
    }
    for r in &cluster.product_db {
        peers.insert(
            Cluster::client_node_id(RoleKind::ProductDb, r.id),
            PeerInfo::server(Cluster::cert_name(RoleKind::ProductDb, r.id), r.client),
        );
    }
    for f in &cluster.seller {
        peers.insert(
            Cluster::client_node_id(RoleKind::Seller, f.id),
            PeerInfo::client_only(Cluster::cert_name(RoleKind::Seller, f.id)),
        );
    }
    for f in &cluster.buyer {
        peers.insert(
            Cluster::client_node_id(RoleKind::Buyer, f.id),
            PeerInfo::client_only(Cluster::cert_name(RoleKind::Buyer, f.id)),
        );
    }
    peers.insert(
        Cluster::client_node_id(RoleKind::Admin, 0),
        PeerInfo::client_only(Cluster::cert_name(RoleKind::Admin, 0)),
    );
    peers
}

/// Joins the client network as `role`/`id` (a client-only node).
pub fn client_network(
    cluster: &Cluster,
    role: RoleKind,
    id: u64,
) -> Result<Arc<QuicNetwork>, String> {
    let name = Cluster::cert_name(role, id);
    let identity = certs::load_identity(&cluster.certs_dir, &name)
        .map_err(|e| format!("certificate of {name}: {e}"))?;
    let bind: SocketAddr = "0.0.0.0:0".parse().map_err(|e| format!("{e}"))?;
    let config = fast_failure(QuicConfig::new(
        Cluster::client_node_id(role, id),
        identity,
        bind,
        client_peers(cluster),
    ));
    QuicNetwork::bind(config)
        .map(Arc::new)
        .map_err(|e| format!("client network: {e}"))
}

/// Tunes a client-network endpoint to notice a dead peer quickly when nothing else tells it.
/// A killed replica *process* is reported within a millisecond by the network's liveness
/// sentinel (`transport::liveness`), which fails the calls waiting on it at once. A replica
/// whose whole host died, or that a network fault cut off, sends nothing at all; QUIC cannot
/// see ICMP either, so that replica is noticed when its connection goes idle: keep-alives
/// every 50 ms and a 300 ms idle timeout (QUIC uses the smaller of the two sides' values, so
/// replicas set the same) bound how long a call can hang on it before the remote log fails
/// over to the next replica.
///
/// 300 ms is about when the Raft followers' own election timeout (200 to 400 ms) has put a
/// new leader in place in that case. Measured before the sentinels, when this was the only
/// detector: 302 ms at 1+1 and 449 ms at 100+100 after a leader kill (600 ms idle: 600-700
/// ms; 200 ms was slower, the calls found no leader yet and backed off: 617 ms, 1.1 s).
pub fn fast_failure(mut config: QuicConfig) -> QuicConfig {
    config.keep_alive_interval = Duration::from_millis(50);
    config.idle_timeout = Duration::from_millis(300);
    config.connect_timeout = Duration::from_millis(500);
    config
}

/// Remote handles of both databases.
pub fn remote_logs(
    cluster: &Cluster,
    network: Arc<dyn Network>,
) -> (
    Arc<RemoteLog<CustomerMachine>>,
    Arc<RemoteLog<ProductMachine>>,
) {
    let config = RemoteConfig {
        attempt_timeout: Duration::from_millis(1000),
        ..RemoteConfig::default()
    };
    let customers = cluster
        .customer_db
        .iter()
        .map(|r| Cluster::client_node_id(RoleKind::CustomerDb, r.id))
        .collect();
    let products = cluster
        .product_db
        .iter()
        .map(|r| Cluster::client_node_id(RoleKind::ProductDb, r.id))
        .collect();
    (
        Arc::new(RemoteLog::new(
            Arc::clone(&network),
            customers,
            config.clone(),
        )),
        Arc::new(RemoteLog::new(network, products, config)),
    )
}

/// Prometheus text with every database replica's status as this frontend sees it: up, role,
/// term, commit and applied index, and the log's own counters (Raft snapshots and forwards;
/// atomic broadcast sequenced, lag, retransmits, passes). Replicas are asked concurrently;
/// a replica that does not answer within 300 ms is reported down. Then how long this
/// frontend has waited for each kind of database call and for the payment service
/// (`market_db_call_seconds`, `market_payment_call_seconds`: sum and count, so a scrape
/// before and after a run gives the mean; the scenario benchmark reports them).
pub fn frontend_metrics(
    customers: Arc<RemoteLog<CustomerMachine>>,
    products: Arc<RemoteLog<ProductMachine>>,
    payments: Arc<SoapPaymentClient>,
) -> crate::frontend::ExtraMetrics {
    Arc::new(move || {
        let (customers, products) = (Arc::clone(&customers), Arc::clone(&products));
        let payments = Arc::clone(&payments);
        Box::pin(async move {
            let mut asks = tokio::task::JoinSet::new();
            for (i, node) in customers.replicas().iter().copied().enumerate() {
                let log = Arc::clone(&customers);
                asks.spawn(async move {
                    let s =
                        tokio::time::timeout(Duration::from_millis(300), log.status_of(node)).await;
                    ("customer-db", i, s.ok().and_then(Result::ok))
                });
            }
            for (i, node) in products.replicas().iter().copied().enumerate() {
                let log = Arc::clone(&products);
                asks.spawn(async move {
                    let s =
                        tokio::time::timeout(Duration::from_millis(300), log.status_of(node)).await;
                    ("product-db", i, s.ok().and_then(Result::ok))
                });
            }
            let mut rows = Vec::new();
            while let Some(Ok(row)) = asks.join_next().await {
                rows.push(row);
            }
            rows.sort_by_key(|(db, i, _)| (*db, *i));
            let mut out = String::from(
                "# HELP market_replica_up Whether the database replica answered a status request.\n# TYPE market_replica_up gauge\n",
            );
            for (db, i, status) in &rows {
                let labels = format!("db=\"{db}\",replica=\"{i}\"");
                out.push_str(&format!(
                    "market_replica_up{{{labels}}} {}\n",
                    u8::from(status.is_some())
                ));
                if let Some(s) = status {
                    let role = format!("{:?}", s.role).to_lowercase();
                    out.push_str(&format!(
                        "market_replica_role{{{labels},role=\"{role}\"}} 1\n"
                    ));
                    out.push_str(&format!("market_replica_term{{{labels}}} {}\n", s.term));
                    out.push_str(&format!(
                        "market_replica_commit_index{{{labels}}} {}\n",
                        s.commit_index
                    ));
                    out.push_str(&format!(
                        "market_replica_applied_index{{{labels}}} {}\n",
                        s.applied_index
                    ));
                    if let Some(leader) = s.leader {
                        out.push_str(&format!("market_replica_leader{{{labels}}} {leader}\n"));
                    }
                    for (name, value) in &s.counters {
                        out.push_str(&format!(
                            "market_replica_counter{{{labels},name=\"{name}\"}} {value}\n"
                        ));
                    }
                }
            }
            out.push_str(
                "# HELP market_db_call_seconds Time this frontend waited for database calls, failover included.\n\
                 # TYPE market_db_call_seconds summary\n",
            );
            for (db, kind, times) in [
                ("customer-db", "propose", customers.proposal_times()),
                ("customer-db", "read", customers.read_times()),
                ("product-db", "propose", products.proposal_times()),
                ("product-db", "read", products.read_times()),
            ] {
                let labels = format!("db=\"{db}\",kind=\"{kind}\"");
                out.push_str(&format!(
                    "market_db_call_seconds_sum{{{labels}}} {}\nmarket_db_call_seconds_count{{{labels}}} {}\n",
                    times.total.as_secs_f64(),
                    times.count
                ));
            }
            let paid = payments.times();
            out.push_str(&format!(
                "# HELP market_payment_call_seconds Time this frontend waited for the payment service.\n\
                 # TYPE market_payment_call_seconds summary\n\
                 market_payment_call_seconds_sum {}\nmarket_payment_call_seconds_count {}\n",
                paid.total.as_secs_f64(),
                paid.count
            ));
            out
        })
    })
}

/// Runs one frontend until SIGINT/SIGTERM.
pub async fn run(cluster: Cluster, role: RoleKind, id: u64) -> Result<(), String> {
    let listen = match role {
        RoleKind::Seller => cluster.seller.iter().find(|f| f.id == id).map(|f| f.listen),
        RoleKind::Buyer => cluster.buyer.iter().find(|f| f.id == id).map(|f| f.listen),
        _ => None,
    }
    .ok_or_else(|| format!("no {} with id {id} in the cluster file", role.name()))?;
    let network = client_network(&cluster, role, id)?;
    let (customers, products) = remote_logs(&cluster, network.clone() as Arc<dyn Network>);
    let payments = Arc::new(
        SoapPaymentClient::new(
            &format!("http://{}/soap", cluster.payments.listen),
            Duration::from_secs(5),
        )
        .map_err(|e| e.to_string())?,
    );
    let extra = frontend_metrics(
        Arc::clone(&customers),
        Arc::clone(&products),
        Arc::clone(&payments),
    );
    let market = Arc::new(Market::new(
        customers as Arc<dyn ReplicatedLog<CustomerMachine>>,
        products as Arc<dyn ReplicatedLog<ProductMachine>>,
        payments,
        Arc::new(SystemClock),
        MarketConfig {
            reservation_ttl_ms: cluster.reservation_ttl_secs.saturating_mul(1000),
            ..MarketConfig::default()
        },
    ));
    let (listener, addr) = http::bind(listen)
        .await
        .map_err(|e| format!("{listen}: {e}"))?;
    tracing::info!(role = role.name(), id, %addr, "frontend listening");
    let limits = Limits::default();
    // Every frontend ticks: stale reservations lapse while the product database is idle, and
    // the purchase sweeper ([`Market::sweep_purchases`]) runs while any frontend of either
    // kind is up.
    let ticker = Arc::clone(&market);
    let tick = tokio::spawn(async move {
        let mut interval = tokio::time::interval(TICK_EVERY);
        loop {
            interval.tick().await;
            if let Err(e) = ticker.tick().await {
                tracing::debug!(error = %e, "tick failed");
            }
        }
    });
    let result = match role {
        RoleKind::Seller => {
            let server = Arc::new(
                ApiServer::<SellerApi>::new(Arc::clone(&market), limits.clone())
                    .with_extra_metrics(extra),
            );
            http::serve(listener, server, limits, http::shutdown_signal()).await
        }
        _ => {
            let server = Arc::new(
                ApiServer::<BuyerApi>::new(Arc::clone(&market), limits.clone())
                    .with_extra_metrics(extra),
            );
            http::serve(listener, server, limits, http::shutdown_signal()).await
        }
    };
    tick.abort();
    if tokio::time::timeout(SETTLE_LIMIT, market.settle())
        .await
        .is_err()
    {
        let left = market.deferred().running;
        tracing::warn!(
            left,
            "stopping with purchase confirmations unsent; the sweeper will send them"
        );
    }
    network.shutdown();
    result.map_err(|e| e.to_string())
}
