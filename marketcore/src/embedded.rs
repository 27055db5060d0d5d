//! A whole marketplace inside one process, on single-node logs.
//!
//! [`EmbeddedMarket`] builds the customer and product databases on
//! [`SingleNodeLog`]s — memory-only, or durable in a directory (raft-engine, fsync'd, group
//! commit) — and a [`Market`] over them. It has the same API as a replicated deployment,
//! with no HTTP and no network involved. It dereferences to [`Market`].
//!
//! ```
//! use std::sync::Arc;
//! use marketcore::api::{AddToCart, Card, Condition, CreateAccount, Login, NewItem, PurchaseRequest};
//! use marketcore::embedded::{EmbeddedMarket, EmbeddedOptions};
//! use marketcore::payment::AlwaysApprove;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), marketcore::MarketError> {
//! let market = EmbeddedMarket::in_memory(EmbeddedOptions::for_tests(Arc::new(AlwaysApprove::default())));
//!
//! let account = |name: &str| CreateAccount {
//!     name: name.into(), username: name.into(), password: "correct horse".into(),
//! };
//! let login = |name: &str| Login { username: name.into(), password: "correct horse".into() };
//!
//! market.create_seller(&account("ada")).await?;
//! let seller = market.login_seller(&login("ada")).await?;
//! let lamp = market.add_item(&seller.token, &NewItem {
//!     name: "desk lamp".into(), category: 3, keywords: vec!["led".into()],
//!     condition: Condition::Used, price_cents: 1250, quantity: 4,
//! }).await?;
//!
//! market.create_buyer(&account("bob")).await?;
//! let buyer = market.login_buyer(&login("bob")).await?;
//! market.add_to_cart(&buyer.token, &AddToCart { item_id: lamp.id.clone(), quantity: 2 }).await?;
//! let card = Card {
//!     name: "Bob".into(), number: "4111111111111111".into(), expiry: "12/99".into(), cvv: "123".into(),
//! };
//! let purchase = market.make_purchase(&buyer.token, &PurchaseRequest { card }, None).await?;
//!
//! assert_eq!(purchase.total_cents, 2500);
//! assert_eq!(market.get_item(&lamp.id).await?.quantity, 2);
//! assert!(market.display_cart(&buyer.token).await?.items.is_empty());
//! # Ok(())
//! # }
//! ```

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use replication::SingleNodeLog;

use crate::clock::{Clock, SystemClock};
use crate::customer::{CustomerConfig, CustomerMachine};
use crate::error::MarketError;
use crate::market::{Market, MarketConfig};
use crate::payment::PaymentService;
use crate::product::{ProductConfig, ProductMachine};

/// How to build an [`EmbeddedMarket`].
#[derive(Clone)]
pub struct EmbeddedOptions {
    /// The financial transactions service.
    pub payments: Arc<dyn PaymentService>,
    /// The clock commands are stamped with.
    pub clock: Arc<dyn Clock>,
    /// Frontend settings.
    pub market: MarketConfig,
    /// Customer database limits.
    pub customer: CustomerConfig,
    /// Product database limits.
    pub product: ProductConfig,
}

impl EmbeddedOptions {
    /// Production settings (system clock, OWASP Argon2 parameters) with `payments`.
    pub fn new(payments: Arc<dyn PaymentService>) -> Self {
        Self {
            payments,
            clock: Arc::new(SystemClock),
            market: MarketConfig::default(),
            customer: CustomerConfig::default(),
            product: ProductConfig::default(),
        }
    }

    /// Like [`EmbeddedOptions::new`] with the cheapest Argon2 parameters: for tests only.
    pub fn for_tests(payments: Arc<dyn PaymentService>) -> Self {
        Self {
            market: MarketConfig::for_tests(),
            ..Self::new(payments)
        }
    }

    /// Replaces the clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// An in-process marketplace: a [`Market`] over two single-node logs.
pub struct EmbeddedMarket {
    market: Arc<Market>,
    customers: Arc<SingleNodeLog<CustomerMachine>>,
    products: Arc<SingleNodeLog<ProductMachine>>,
}

impl EmbeddedMarket {
    /// Memory-only: nothing survives the process.
    pub fn in_memory(options: EmbeddedOptions) -> Self {
        let customers = Arc::new(SingleNodeLog::in_memory(CustomerMachine::new(
            options.customer.clone(),
        )));
        let products = Arc::new(SingleNodeLog::in_memory(ProductMachine::new(
            options.product.clone(),
        )));
        Self::assemble(customers, products, options)
    }

    /// Durable in `dir` (subdirectories `customers` and `products`, created if missing);
    /// reopening the same directory recovers every acknowledged command.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self, MarketError> {
        let customers = Arc::new(SingleNodeLog::open(
            &dir.join("customers"),
            CustomerMachine::new(options.customer.clone()),
        )?);
        let products = Arc::new(SingleNodeLog::open(
            &dir.join("products"),
            ProductMachine::new(options.product.clone()),
        )?);
        Ok(Self::assemble(customers, products, options))
    }

    fn assemble(
        customers: Arc<SingleNodeLog<CustomerMachine>>,
        products: Arc<SingleNodeLog<ProductMachine>>,
        options: EmbeddedOptions,
    ) -> Self {
        let market = Arc::new(Market::new(
            customers.clone(),
            products.clone(),
            options.payments,
            options.clock,
            options.market,
        ));
        Self {
            market,
            customers,
            products,
        }
    }

    /// The Market (cheap to clone and share between tasks).
    pub fn market(&self) -> &Arc<Market> {
        &self.market
    }

    /// The customer database's log (e.g. for [`SingleNodeLog::with_state`]).
    pub fn customer_log(&self) -> &Arc<SingleNodeLog<CustomerMachine>> {
        &self.customers
    }

    /// The product database's log.
    pub fn product_log(&self) -> &Arc<SingleNodeLog<ProductMachine>> {
        &self.products
    }
}

impl Deref for EmbeddedMarket {
    type Target = Market;

    fn deref(&self) -> &Market {
        &self.market
    }
}
