//! The whole marketplace in one process: seller server, buyer server, payment service, and
//! both databases on durable single-node logs (`market up --single`, and the end-to-end tests).
//!
//! The buyer server reaches the payment service over real SOAP/HTTP, exactly as in the
//! distributed cluster, so the one-process mode exercises the same code paths apart from
//! replication.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use marketcore::clock::Clock;
use marketcore::customer::CustomerConfig;
use marketcore::password::PasswordParams;
use marketcore::{EmbeddedMarket, EmbeddedOptions, MarketError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::frontend::buyer::BuyerApi;
use crate::frontend::seller::SellerApi;
use crate::frontend::ApiServer;
use crate::http::{self, Limits};
use crate::payments::client::SoapPaymentClient;
use crate::payments::{PaymentsConfig, PaymentsService};

/// Settings of a one-process marketplace.
#[derive(Clone)]
pub struct SingleOptions {
    /// Durable data directory; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// Seller server address (port 0 picks one).
    pub seller_addr: SocketAddr,
    /// Buyer server address.
    pub buyer_addr: SocketAddr,
    /// Payment service address.
    pub payments_addr: SocketAddr,
    /// Share of payments approved.
    pub approve_rate: f64,
    /// Seed of the payment decisions.
    pub seed: Option<u64>,
    /// Idle time that ends a session.
    pub session_idle: Duration,
    /// Argon2id cost.
    pub password: PasswordParams,
    /// HTTP limits.
    pub limits: Limits,
    /// The clock commands are stamped with; `None` is the system clock (tests pass a
    /// `ManualClock` to expire sessions without waiting).
    pub clock: Option<Arc<dyn Clock>>,
}

impl SingleOptions {
    /// Everything on loopback with ephemeral ports, in memory, cheap hashing: for tests.
    pub fn for_tests() -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir: None,
            seller_addr: any,
            buyer_addr: any,
            payments_addr: any,
            approve_rate: 1.0,
            seed: Some(1),
            session_idle: Duration::from_secs(300),
            password: PasswordParams::TESTING,
            limits: Limits::default(),
            clock: None,
        }
    }
}

/// Errors starting the marketplace.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The databases could not be opened.
    #[error("cannot open the databases: {0}")]
    Market(#[from] MarketError),
    /// The payment client could not be built.
    #[error("payment client: {0}")]
    Payments(String),
}

/// A running one-process marketplace.
pub struct Running {
    /// Where the seller server listens.
    pub seller_addr: SocketAddr,
    /// Where the buyer server listens.
    pub buyer_addr: SocketAddr,
    /// Where the payment service listens.
    pub payments_addr: SocketAddr,
    /// The embedded marketplace (for inspection in tests).
    pub market: Arc<EmbeddedMarket>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, waits for the servers to end, and
    /// then for the purchase confirmations still on their way ([`marketcore::Market::settle`]).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.market.market().settle().await;
    }
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    http::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Starts the payment service, the databases and both API servers.
pub async fn start(options: SingleOptions) -> Result<Running, StartError> {
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let (pay_listener, payments_addr) = bind(options.payments_addr).await?;
    let payments = Arc::new(PaymentsService::new(PaymentsConfig {
        approve_rate: options.approve_rate,
        seed: options.seed,
        public_url: format!("http://{payments_addr}/soap"),
        delay: Duration::ZERO,
    }));
    tasks.push(tokio::spawn(http::serve(
        pay_listener,
        payments,
        options.limits.clone(),
        stopped(stop_rx.clone()),
    )));

    let client = SoapPaymentClient::new(
        &format!("http://{payments_addr}/soap"),
        Duration::from_secs(5),
    )
    .map_err(|e| StartError::Payments(e.to_string()))?;
    let mut embedded = EmbeddedOptions::new(Arc::new(client));
    embedded.market.password = options.password;
    if let Some(clock) = &options.clock {
        embedded.clock = Arc::clone(clock);
    }
    embedded.customer = CustomerConfig {
        session_idle_ms: options.session_idle.as_millis() as u64,
        ..CustomerConfig::default()
    };
    let market = Arc::new(match &options.data_dir {
        Some(dir) => EmbeddedMarket::open(dir, embedded)?,
        None => EmbeddedMarket::in_memory(embedded),
    });

    let (seller_listener, seller_addr) = bind(options.seller_addr).await?;
    let seller = Arc::new(ApiServer::<SellerApi>::new(
        Arc::clone(market.market()),
        options.limits.clone(),
    ));
    tasks.push(tokio::spawn(http::serve(
        seller_listener,
        seller,
        options.limits.clone(),
        stopped(stop_rx.clone()),
    )));

    let (buyer_listener, buyer_addr) = bind(options.buyer_addr).await?;
    let buyer = Arc::new(ApiServer::<BuyerApi>::new(
        Arc::clone(market.market()),
        options.limits.clone(),
    ));
    tasks.push(tokio::spawn(http::serve(
        buyer_listener,
        buyer,
        options.limits.clone(),
        stopped(stop_rx.clone()),
    )));

    // Lapse stale reservations and idle sessions even when nobody writes.
    let ticker_market = Arc::clone(market.market());
    let tick_stop = stopped(stop_rx.clone());
    tasks.push(tokio::spawn(async move {
        tokio::pin!(tick_stop);
        let mut interval = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    if let Err(e) = ticker_market.tick().await {
                        tracing::debug!(error = %e, "tick failed");
                    }
                }
                _ = &mut tick_stop => return Ok(()),
            }
        }
    }));

    Ok(Running {
        seller_addr,
        buyer_addr,
        payments_addr,
        market,
        stop,
        tasks,
    })
}
