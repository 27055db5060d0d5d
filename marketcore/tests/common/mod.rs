//! Helpers shared by the integration tests: an in-process marketplace on memory-only logs
//! with a manual clock and cheap Argon2 parameters.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use marketcore::api::{Card, Condition, CreateAccount, Login, NewItem};
use marketcore::clock::ManualClock;
use marketcore::customer::{BuyerSummary, CustomerAnswer, CustomerQuery, SellerSummary};
use marketcore::ids::{BuyerId, SellerId};
use marketcore::payment::{PaymentError, PaymentOutcome, PaymentRequest, PaymentService};
use marketcore::product::{ProductAnswer, ProductQuery, Units};
use marketcore::{EmbeddedMarket, EmbeddedOptions, MarketError};
use replication::StateMachine;

/// 2026-11-27T12:00:00Z.
pub const T0: u64 = 1_795_780_800_000;

/// A marketplace and its clock.
pub struct World {
    pub market: EmbeddedMarket,
    pub clock: Arc<ManualClock>,
}

/// A payment service that counts calls and answers as told.
#[derive(Debug, Default)]
pub struct Scripted {
    pub calls: AtomicU64,
    /// 0: approve, 1: decline, 2: fail.
    pub mode: AtomicU64,
}

#[async_trait]
impl PaymentService for Scripted {
    async fn process(&self, _r: PaymentRequest) -> Result<PaymentOutcome, PaymentError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.mode.load(Ordering::SeqCst) {
            0 => Ok(PaymentOutcome {
                approved: true,
                transaction_id: "t".into(),
            }),
            1 => Ok(PaymentOutcome {
                approved: false,
                transaction_id: "t".into(),
            }),
            _ => Err(PaymentError::Unavailable("down".into())),
        }
    }
}

impl World {
    pub fn with(payments: Arc<dyn PaymentService>) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let market = EmbeddedMarket::in_memory(
            EmbeddedOptions::for_tests(payments).with_clock(clock.clone()),
        );
        Self { market, clock }
    }

    pub fn scripted() -> (Self, Arc<Scripted>) {
        let p = Arc::new(Scripted::default());
        (Self::with(p.clone()), p)
    }

    pub async fn seller(&self, username: &str) -> (String, u64) {
        self.market.create_seller(&account(username)).await.unwrap();
        let r = self.market.login_seller(&login(username)).await.unwrap();
        (r.token, r.seller_id)
    }

    pub async fn buyer(&self, username: &str) -> (String, u64) {
        self.market.create_buyer(&account(username)).await.unwrap();
        let r = self.market.login_buyer(&login(username)).await.unwrap();
        (r.token, r.buyer_id)
    }

    pub fn units(&self) -> Vec<(marketcore::ids::ItemId, Units)> {
        match self
            .market
            .product_log()
            .with_state(|s| s.query(&ProductQuery::Units))
        {
            ProductAnswer::Units(u) => u,
            other => panic!("{other:?}"),
        }
    }

    pub fn seller_summary(&self, id: u64) -> SellerSummary {
        match self.market.customer_log().with_state(|s| {
            s.query(&CustomerQuery::Seller {
                seller: SellerId(id),
            })
        }) {
            CustomerAnswer::Seller(Some(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    pub fn buyer_summary(&self, id: u64) -> BuyerSummary {
        match self
            .market
            .customer_log()
            .with_state(|s| s.query(&CustomerQuery::Buyer { buyer: BuyerId(id) }))
        {
            CustomerAnswer::Buyer(Some(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    pub fn check_invariants(&self) {
        self.market
            .product_log()
            .with_state(|s| s.check_invariants())
            .unwrap();
    }
}

pub fn account(username: &str) -> CreateAccount {
    CreateAccount {
        name: format!("Name of {username}"),
        username: username.into(),
        password: "correct horse".into(),
    }
}

pub fn login(username: &str) -> Login {
    Login {
        username: username.into(),
        password: "correct horse".into(),
    }
}

pub fn item(
    name: &str,
    category: i64,
    keywords: &[&str],
    price_cents: i64,
    quantity: i64,
) -> NewItem {
    NewItem {
        name: name.into(),
        category,
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
        condition: Condition::New,
        price_cents,
        quantity,
    }
}

pub fn card() -> Card {
    Card {
        name: "Bob Buyer".into(),
        number: "4111111111111111".into(),
        expiry: "12/30".into(),
        cvv: "123".into(),
    }
}

pub fn code<T: std::fmt::Debug>(r: Result<T, MarketError>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}
