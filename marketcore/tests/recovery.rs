//! Failures between the steps of multi-step operations, and their recovery by retrying.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use marketcore::api::{AddToCart, FeedbackRequest, PurchaseRequest, Vote};
use marketcore::customer::CustomerMachine;
use marketcore::product::ProductMachine;
use marketcore::{Market, MarketConfig};
use replication::{
    LogError, LogStatus, ReadConsistency, ReplicatedLog, RequestId, SingleNodeLog, StateMachine,
};

/// A log that can be switched off: proposals then fail with `Unavailable` without applying.
struct Switchable<S: StateMachine> {
    inner: SingleNodeLog<S>,
    down: AtomicBool,
}

impl<S: StateMachine> Switchable<S> {
    fn new(s: S) -> Arc<Self> {
        Arc::new(Self {
            inner: SingleNodeLog::in_memory(s),
            down: AtomicBool::new(false),
        })
    }
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

#[async_trait]
impl<S: StateMachine> ReplicatedLog<S> for Switchable<S> {
    async fn propose(&self, id: RequestId, command: S::Command) -> Result<S::Output, LogError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(LogError::Unavailable("switched off".into()));
        }
        self.inner.propose(id, command).await
    }
    async fn read(&self, q: S::Query, c: ReadConsistency) -> Result<S::Answer, LogError> {
        self.inner.read(q, c).await
    }
    fn status(&self) -> LogStatus {
        self.inner.status()
    }
}

struct Rig {
    market: Market,
    customers: Arc<Switchable<CustomerMachine>>,
    products: Arc<Switchable<ProductMachine>>,
    payments: Arc<Scripted>,
}

fn rig() -> Rig {
    let customers = Switchable::new(CustomerMachine::default());
    let products = Switchable::new(ProductMachine::default());
    let payments = Arc::new(Scripted::default());
    let mut config = MarketConfig::for_tests();
    config.retry_backoff_ms = 1;
    let market = Market::new(
        customers.clone(),
        products.clone(),
        payments.clone(),
        Arc::new(marketcore::clock::ManualClock::new(T0)),
        config,
    );
    Rig {
        market,
        customers,
        products,
        payments,
    }
}

async fn setup(r: &Rig) -> (String, String) {
    let m = &r.market;
    m.create_seller(&account("s")).await.unwrap();
    let s = m.login_seller(&login("s")).await.unwrap().token;
    let id = m
        .add_item(&s, &item("lamp", 3, &[], 100, 5))
        .await
        .unwrap()
        .id;
    m.create_buyer(&account("b")).await.unwrap();
    let b = m.login_buyer(&login("b")).await.unwrap().token;
    m.add_to_cart(
        &b,
        &AddToCart {
            item_id: id.clone(),
            quantity: 2,
        },
    )
    .await
    .unwrap();
    (b, id)
}

#[tokio::test]
async fn purchase_interrupted_before_recording_completes_on_retry_without_paying_twice() {
    let r = rig();
    let (b, id) = setup(&r).await;
    let req = PurchaseRequest { card: card() };
    // Paid and confirmed, but the customer database is unreachable for the last step.
    r.customers.set_down(true);
    assert_eq!(
        code(r.market.make_purchase(&b, &req, Some("k")).await),
        "unavailable"
    );
    assert_eq!(r.payments.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        r.market.get_item(&id).await.unwrap().quantity,
        3,
        "units are sold"
    );
    r.customers.set_down(false);
    let p = r.market.make_purchase(&b, &req, Some("k")).await.unwrap();
    assert_eq!(p.total_cents, 200);
    assert_eq!(r.payments.calls.load(Ordering::SeqCst), 1, "not paid twice");
    assert_eq!(r.market.get_item(&id).await.unwrap().quantity, 3);
    assert_eq!(
        r.market
            .get_purchase_history(&b)
            .await
            .unwrap()
            .purchases
            .len(),
        1
    );
    assert!(r.market.display_cart(&b).await.unwrap().items.is_empty());
    r.products
        .inner
        .with_state(|s| s.check_invariants())
        .unwrap();
}

#[tokio::test]
async fn product_database_down_at_reservation_changes_nothing() {
    let r = rig();
    let (b, id) = setup(&r).await;
    r.products.set_down(true);
    let req = PurchaseRequest { card: card() };
    assert_eq!(
        code(r.market.make_purchase(&b, &req, None).await),
        "unavailable"
    );
    r.products.set_down(false);
    assert_eq!(r.payments.calls.load(Ordering::SeqCst), 0);
    assert_eq!(r.market.get_item(&id).await.unwrap().quantity, 5);
    assert_eq!(r.market.display_cart(&b).await.unwrap().items.len(), 1);
}

#[tokio::test]
async fn feedback_interrupted_between_databases_is_completed_by_a_retry() {
    let r = rig();
    let (b, id) = setup(&r).await;
    r.market
        .make_purchase(&b, &PurchaseRequest { card: card() }, None)
        .await
        .unwrap();
    let fb = FeedbackRequest {
        item_id: id.clone(),
        vote: Vote::Up,
    };
    r.products.set_down(true);
    assert_eq!(
        code(r.market.provide_feedback(&b, &fb).await),
        "unavailable"
    );
    r.products.set_down(false);
    assert_eq!(
        r.market.get_item(&id).await.unwrap().feedback.up,
        0,
        "half done"
    );
    assert_eq!(r.market.get_seller_rating(1).await.unwrap().up, 1);
    // The retry reports the feedback as given and completes the item side, once.
    assert_eq!(
        code(r.market.provide_feedback(&b, &fb).await),
        "feedback_exists"
    );
    assert_eq!(
        code(r.market.provide_feedback(&b, &fb).await),
        "feedback_exists"
    );
    assert_eq!(r.market.get_item(&id).await.unwrap().feedback.up, 1);
    assert_eq!(r.market.get_seller_rating(1).await.unwrap().up, 1);
}

#[tokio::test]
async fn durable_logs_recover_through_snapshots_with_sessions_carts_and_history() {
    use marketcore::clock::ManualClock;
    use marketcore::payment::AlwaysApprove;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let build = || {
        // A snapshot every 3 entries: recovery goes through restore, then replay.
        let c = Arc::new(
            SingleNodeLog::open_with(&dir.path().join("c"), CustomerMachine::default(), 3).unwrap(),
        );
        let p = Arc::new(
            SingleNodeLog::open_with(&dir.path().join("p"), ProductMachine::default(), 3).unwrap(),
        );
        let m = Market::new(
            c.clone(),
            p.clone(),
            Arc::new(AlwaysApprove::default()),
            clock.clone(),
            MarketConfig::for_tests(),
        );
        (c, p, m)
    };
    let (c, p, m) = build();
    m.create_seller(&account("s")).await.unwrap();
    let s = m.login_seller(&login("s")).await.unwrap().token;
    let a = m
        .add_item(&s, &item("lamp", 3, &["led"], 100, 5))
        .await
        .unwrap()
        .id;
    let b2 = m
        .add_item(&s, &item("desk", 3, &[], 300, 5))
        .await
        .unwrap()
        .id;
    m.create_buyer(&account("b")).await.unwrap();
    let b = m.login_buyer(&login("b")).await.unwrap().token;
    m.add_to_cart(
        &b,
        &AddToCart {
            item_id: a.clone(),
            quantity: 2,
        },
    )
    .await
    .unwrap();
    m.make_purchase(&b, &PurchaseRequest { card: card() }, None)
        .await
        .unwrap();
    m.provide_feedback(
        &b,
        &FeedbackRequest {
            item_id: a.clone(),
            vote: Vote::Up,
        },
    )
    .await
    .unwrap();
    m.add_to_cart(
        &b,
        &AddToCart {
            item_id: b2.clone(),
            quantity: 1,
        },
    )
    .await
    .unwrap();
    m.save_cart(&b).await.unwrap();
    let customers = c.with_state(|s| s.snapshot());
    let products = p.with_state(|s| s.snapshot());
    let cart = m.display_cart(&b).await.unwrap();
    drop((c, p, m));

    let (c, p, m) = build();
    assert_eq!(c.with_state(|s| s.snapshot()), customers);
    assert_eq!(p.with_state(|s| s.snapshot()), products);
    // The old tokens still work: sessions live in the database, not in the frontend.
    assert_eq!(m.display_cart(&b).await.unwrap(), cart);
    assert_eq!(m.get_purchase_history(&b).await.unwrap().purchases.len(), 1);
    assert_eq!(m.get_item(&a).await.unwrap().feedback.up, 1);
    assert_eq!(m.all_items_by_seller(&s).await.unwrap().items.len(), 2);
    p.with_state(|s| s.check_invariants()).unwrap();
}
