//! Market-level tests of every client function of API.md, over in-memory single-node logs
//! with a manual clock.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use marketcore::api::PurchaseLine;
use marketcore::api::{
    AddToCart, FeedbackRequest, Login, PriceChange, PurchaseRequest, SearchQuery, Vote,
};
use marketcore::customer::{CustomerCommand, CustomerMachine, CustomerOutput, CustomerQuery};
use marketcore::ids::{BuyerId, ItemId, Role, UserId};
use marketcore::market::{reservation_id_for, Deferred};
use marketcore::payment::{AlwaysApprove, AlwaysDecline, AlwaysFail};
use marketcore::product::{
    ProductAnswer, ProductCommand, ProductMachine, ProductQuery, ReservationState,
};
use marketcore::{
    with_idempotency_key, with_remembered_lookup, EmbeddedMarket, EmbeddedOptions, Market,
    MarketConfig, MarketError,
};
use replication::{
    LogError, LogStatus, ReadConsistency, ReplicatedLog, RequestId, SingleNodeLog, StateMachine,
};

fn purchase() -> PurchaseRequest {
    PurchaseRequest { card: card() }
}

fn add(item_id: &str, quantity: i64) -> AddToCart {
    AddToCart {
        item_id: item_id.into(),
        quantity,
    }
}

#[tokio::test]
async fn accounts_and_logins() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    assert_eq!(m.create_seller(&account("ada")).await.unwrap().seller_id, 1);
    assert_eq!(
        m.create_seller(&account("Ada")).await.unwrap().seller_id,
        2,
        "case-sensitive"
    );
    assert_eq!(
        code(m.create_seller(&account("ada")).await),
        "username_taken"
    );
    assert_eq!(
        m.create_buyer(&account("ada")).await.unwrap().buyer_id,
        1,
        "separate namespace"
    );
    assert_eq!(
        code(m.create_buyer(&account("ada")).await),
        "username_taken"
    );
    let mut bad = account("x");
    bad.password = "short".into();
    assert_eq!(code(m.create_buyer(&bad).await), "invalid_argument");
    bad = account("has space");
    assert_eq!(code(m.create_seller(&bad).await), "invalid_argument");
    bad = account("y");
    bad.name = " ".into();
    assert_eq!(code(m.create_seller(&bad).await), "invalid_argument");

    let s = m.login_seller(&login("ada")).await.unwrap();
    assert_eq!(s.seller_id, 1);
    assert_eq!(s.token.len(), 64);
    let b = m.login_buyer(&login("ada")).await.unwrap();
    assert_eq!(b.buyer_id, 1);
    assert_ne!(s.token, b.token);
    let wrong = Login {
        username: "ada".into(),
        password: "wrong horse".into(),
    };
    assert_eq!(code(m.login_seller(&wrong).await), "unauthenticated");
    assert_eq!(
        code(m.login_buyer(&login("nobody")).await),
        "unauthenticated"
    );
    assert_eq!(code(m.login_buyer(&login("Ada")).await), "unauthenticated");
    // The stored password is an Argon2id PHC string, never the password.
    let phc = m.customer_log().with_state(|c| {
        c.query(&CustomerQuery::Credentials {
            role: Role::Seller,
            username: "ada".into(),
        })
    });
    let text = format!("{phc:?}");
    assert!(text.contains("$argon2id$") && !text.contains("correct horse"));
}

#[tokio::test]
async fn several_sessions_logout_and_wrong_role() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    let (s1, _) = w.seller("s").await;
    let s2 = m.login_seller(&login("s")).await.unwrap().token;
    let (b1, _) = w.buyer("b").await;
    assert_eq!(
        m.authenticate(&s1, Role::Seller).await.unwrap(),
        UserId::Seller(marketcore::ids::SellerId(1))
    );
    // Role-scoped tokens.
    assert_eq!(code(m.all_items_by_seller(&b1).await), "unauthenticated");
    assert_eq!(code(m.display_cart(&s1).await), "unauthenticated");
    assert_eq!(code(m.logout_buyer(&s1).await), "unauthenticated");
    assert_eq!(code(m.display_cart("").await), "unauthenticated");
    assert_eq!(code(m.display_cart("nonsense").await), "unauthenticated");
    // A bad token outranks a bad field or an unknown item, also where the session is checked
    // inside the cart write.
    assert_eq!(
        code(m.add_to_cart("nonsense", &add("9-999", 1)).await),
        "unauthenticated"
    );
    assert_eq!(
        code(m.add_to_cart("nonsense", &add("bad", 1)).await),
        "unauthenticated"
    );
    assert_eq!(
        code(m.remove_cart("nonsense", "bad", None).await),
        "unauthenticated"
    );
    assert_eq!(
        code(m.add_to_cart(&b1, &add("9-999", 1)).await),
        "not_found"
    );
    assert_eq!(
        code(m.add_to_cart(&s1, &add("9-999", 1)).await),
        "unauthenticated"
    );
    assert_eq!(code(m.clear_cart(&s1).await), "unauthenticated");
    // make_purchase reads the session with the cart: the same answers.
    assert_eq!(
        code(m.make_purchase("nonsense", &purchase(), None).await),
        "unauthenticated"
    );
    assert_eq!(
        code(m.make_purchase(&s1, &purchase(), None).await),
        "unauthenticated"
    );
    assert_eq!(
        code(m.make_purchase(&b1, &purchase(), None).await),
        "cart_empty"
    );
    assert_eq!(
        code(m.display_cart(&"x".repeat(10_000)).await),
        "unauthenticated"
    );
    // A pre-verified user skips the session read but keeps the role check.
    let seller = m.authenticate(&s1, Role::Seller).await.unwrap();
    m.all_items_by_seller(seller).await.unwrap();
    assert_eq!(code(m.display_cart(seller).await), "unauthenticated");
    let buyer = m.authenticate_buyer(&b1).await.unwrap();
    m.display_cart(buyer).await.unwrap();
    assert_eq!(
        code(m.add_item(buyer, &item("x", 1, &[], 1, 1)).await),
        "unauthenticated"
    );
    m.health().await.unwrap();
    // A token seen before lets the item read start while its session is checked; the answer
    // is the same as the sequential one, and an ended session is still refused.
    m.add_item(&s1, &item("lamp", 1, &[], 5, 2)).await.unwrap();
    for token in [&s1, &s1, &s2] {
        let items = m.all_items_by_seller(token).await.unwrap().items;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].seller_id, 1);
    }
    m.logout_seller(&s1).await.unwrap();
    assert_eq!(code(m.all_items_by_seller(&s1).await), "unauthenticated");
    assert_eq!(code(m.logout_seller(&s1).await), "unauthenticated");
    m.all_items_by_seller(&s2).await.unwrap();
    m.logout_buyer(&b1).await.unwrap();
    assert_eq!(code(m.display_cart(&b1).await), "unauthenticated");
}

#[tokio::test]
async fn sessions_expire_after_300_s_idle_and_touch_only_when_stale() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    let (s, _) = w.seller("s").await;
    let applied = || m.customer_status().applied_index;
    // Reads within touch_after_ms do not write.
    let before = applied();
    for _ in 0..10 {
        m.all_items_by_seller(&s).await.unwrap();
    }
    assert_eq!(applied(), before);
    w.clock.advance_ms(5_000);
    m.all_items_by_seller(&s).await.unwrap();
    assert_eq!(applied(), before + 1, "one touch when stale");
    // Activity keeps it alive past 300 s in total.
    w.clock.advance_ms(299_000);
    m.all_items_by_seller(&s).await.unwrap();
    w.clock.advance_ms(299_000);
    m.all_items_by_seller(&s).await.unwrap();
    // 300 s without a request ends it.
    w.clock.advance_ms(300_000);
    assert_eq!(code(m.all_items_by_seller(&s).await), "unauthenticated");
    assert_eq!(code(m.get_my_rating(&s).await), "unauthenticated");
}

#[tokio::test]
async fn items_prices_removal_and_ownership() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    let (s1, id1) = w.seller("s1").await;
    let (s2, _) = w.seller("s2").await;
    let lamp = m
        .add_item(&s1, &item("desk lamp", 3, &["LED", "desk", "led"], 1250, 4))
        .await
        .unwrap();
    assert_eq!(lamp.id, "3-1");
    assert_eq!(lamp.keywords, vec!["led", "desk"]);
    assert_eq!(lamp.seller_id, id1);
    assert_eq!(lamp.quantity, 4);
    assert_eq!(
        m.add_item(&s2, &item("x", 3, &[], 1, 1)).await.unwrap().id,
        "3-2"
    );
    assert_eq!(
        m.add_item(&s2, &item("y", 0, &[], 1, 1)).await.unwrap().id,
        "0-1"
    );
    for bad in [
        item("", 3, &[], 1, 1),
        item("n", 10, &[], 1, 1),
        item("n", -1, &[], 1, 1),
        item("n", 1, &["a", "b", "c", "d", "e", "f"], 1, 1),
        item("n", 1, &["toolongkw"], 1, 1),
        item("n", 1, &["a_b"], 1, 1),
        item("n", 1, &[], 0, 1),
        item("n", 1, &[], 1_000_000_001, 1),
        item("n", 1, &[], 1, 0),
        item("n", 1, &[], 1, 1_000_001),
    ] {
        assert_eq!(
            code(m.add_item(&s1, &bad).await),
            "invalid_argument",
            "{bad:?}"
        );
    }
    let p = m
        .change_price(&s1, "3-1", &PriceChange { price_cents: 999 })
        .await
        .unwrap();
    assert_eq!(p.price_cents, 999);
    assert_eq!(
        code(
            m.change_price(&s2, "3-1", &PriceChange { price_cents: 5 })
                .await
        ),
        "forbidden"
    );
    assert_eq!(
        code(
            m.change_price(&s1, "3-99", &PriceChange { price_cents: 5 })
                .await
        ),
        "not_found"
    );
    assert_eq!(
        code(
            m.change_price(&s1, "junk", &PriceChange { price_cents: 5 })
                .await
        ),
        "not_found"
    );
    assert_eq!(
        code(
            m.change_price(&s1, "3-1", &PriceChange { price_cents: 0 })
                .await
        ),
        "invalid_argument"
    );
    assert_eq!(code(m.remove_item(&s2, "3-1", Some(1)).await), "forbidden");
    assert_eq!(
        code(m.remove_item(&s1, "3-1", Some(5)).await),
        "insufficient_quantity"
    );
    assert_eq!(
        code(m.remove_item(&s1, "3-1", Some(0)).await),
        "invalid_argument"
    );
    assert_eq!(
        m.remove_item(&s1, "3-1", Some(1)).await.unwrap().quantity,
        3
    );
    assert_eq!(m.remove_item(&s1, "3-1", None).await.unwrap().quantity, 0);
    assert_eq!(
        code(m.remove_item(&s1, "3-1", Some(1)).await),
        "insufficient_quantity"
    );
    // Quantity 0: off sale, but still the seller's and still readable.
    let mine = m.all_items_by_seller(&s1).await.unwrap().items;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].quantity, 0);
    assert_eq!(m.get_item("3-1").await.unwrap().quantity, 0);
    let all = m.search_items(&SearchQuery::default()).await.unwrap().items;
    assert_eq!(
        all.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        vec!["0-1", "3-2"]
    );
    let (b, _) = w.buyer("b").await;
    assert_eq!(
        code(m.add_to_cart(&b, &add("3-1", 1)).await),
        "insufficient_quantity"
    );
    assert_eq!(code(m.get_item("4-4").await), "not_found");
    assert_eq!(code(m.get_item("nope").await), "not_found");
    w.check_invariants();
}

#[tokio::test]
async fn search_ranking_filters_and_validation() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    let (s, _) = w.seller("s").await;
    let a = m
        .add_item(&s, &item("Desk lamp", 3, &["led", "desk"], 1, 1))
        .await
        .unwrap()
        .id;
    let b = m
        .add_item(&s, &item("floor lamp", 3, &["tall"], 1, 1))
        .await
        .unwrap()
        .id;
    let c = m
        .add_item(&s, &item("LED strip", 2, &["strip"], 1, 1))
        .await
        .unwrap()
        .id;
    let d = m
        .add_item(&s, &item("Lamp shade", 3, &["lamp", "shade"], 1, 1))
        .await
        .unwrap()
        .id;
    let q = |category: Option<i64>, kw: &[&str], limit: Option<i64>| SearchQuery {
        category,
        keywords: kw.iter().map(|k| k.to_string()).collect(),
        limit,
    };
    let ids =
        |items: Vec<marketcore::api::Item>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let r = ids(m
        .search_items(&q(None, &["LAMP", "led", "Desk"], None))
        .await
        .unwrap()
        .items);
    assert_eq!(
        r,
        vec![a.clone(), c.clone(), b.clone(), d.clone()],
        "3 matches, then 1 match by id"
    );
    let r = ids(m
        .search_items(&q(None, &["shade", "lamp"], None))
        .await
        .unwrap()
        .items);
    assert_eq!(r, vec![d.clone(), a.clone(), b.clone()]);
    let r = ids(m.search_items(&q(Some(2), &[], None)).await.unwrap().items);
    assert_eq!(r, vec![c.clone()]);
    let r = ids(m.search_items(&q(None, &[], Some(2))).await.unwrap().items);
    assert_eq!(r, vec![c.clone(), a.clone()]);
    for bad in [
        q(Some(10), &[], None),
        q(None, &[], Some(0)),
        q(None, &[], Some(501)),
        q(None, &["a", "b", "c", "d", "e", "f"], None),
        q(None, &["way-too-long"], None),
    ] {
        assert_eq!(code(m.search_items(&bad).await), "invalid_argument");
    }
}

#[tokio::test]
async fn cart_rules_save_reset_and_clear() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    let (s, _) = w.seller("s").await;
    let a = m.add_item(&s, &item("a", 1, &[], 100, 3)).await.unwrap().id;
    let b = m.add_item(&s, &item("b", 1, &[], 100, 3)).await.unwrap().id;
    let (t1, _) = w.buyer("bob").await;
    let t2 = m.login_buyer(&login("bob")).await.unwrap().token;
    let cart = m.add_to_cart(&t1, &add(&a, 2)).await.unwrap();
    assert_eq!(cart.items.len(), 1);
    assert!(!cart.saved);
    assert_eq!(
        code(m.add_to_cart(&t1, &add(&a, 2)).await),
        "insufficient_quantity"
    );
    assert_eq!(
        code(m.add_to_cart(&t1, &add(&a, 0)).await),
        "invalid_argument"
    );
    assert_eq!(
        code(m.add_to_cart(&t1, &add("bad", 1)).await),
        "invalid_argument"
    );
    assert_eq!(code(m.add_to_cart(&t1, &add("9-9", 1)).await), "not_found");
    m.add_to_cart(&t1, &add(&a, 1)).await.unwrap();
    // Shared by the buyer's sessions.
    assert_eq!(m.display_cart(&t2).await.unwrap().items[0].quantity, 3);
    m.save_cart(&t2).await.unwrap();
    assert!(m.display_cart(&t1).await.unwrap().saved);
    m.add_to_cart(&t1, &add(&b, 1)).await.unwrap();
    assert!(!m.display_cart(&t1).await.unwrap().saved);
    // Logout resets the working cart to the saved one.
    m.logout_buyer(&t1).await.unwrap();
    let c = m.display_cart(&t2).await.unwrap();
    assert_eq!(c.items.len(), 1);
    assert!(c.saved);
    // remove_cart: part of a line, whole line, unknown line.
    let c = m.remove_cart(&t2, &a, Some(1)).await.unwrap();
    assert_eq!(c.items[0].quantity, 2);
    assert!(!c.saved);
    assert_eq!(code(m.remove_cart(&t2, &b, None).await), "not_found");
    assert_eq!(
        code(m.remove_cart(&t2, &a, Some(0)).await),
        "invalid_argument"
    );
    assert!(m.remove_cart(&t2, &a, None).await.unwrap().items.is_empty());
    // Session expiry resets too.
    m.add_to_cart(&t2, &add(&b, 2)).await.unwrap();
    w.clock.advance_ms(300_000);
    let t3 = m.login_buyer(&login("bob")).await.unwrap().token;
    let c = m.display_cart(&t3).await.unwrap();
    assert_eq!(c.items.len(), 1);
    assert_eq!(c.items[0].item_id, a);
    assert_eq!(c.items[0].quantity, 3);
    // clear_cart empties both carts.
    m.clear_cart(&t3).await.unwrap();
    assert!(m.display_cart(&t3).await.unwrap().items.is_empty());
    m.logout_buyer(&t3).await.unwrap();
    let t4 = m.login_buyer(&login("bob")).await.unwrap().token;
    assert_eq!(
        m.display_cart(&t4).await.unwrap(),
        marketcore::api::Cart::default()
    );
}

#[tokio::test]
async fn purchase_happy_path_history_counters_feedback() {
    let (w, pay) = World::scripted();
    let m = &w.market;
    let (s, sid) = w.seller("s").await;
    let (s2, sid2) = w.seller("s2").await;
    let a = m
        .add_item(&s, &item("lamp", 3, &[], 1250, 4))
        .await
        .unwrap()
        .id;
    let b = m
        .add_item(&s2, &item("chair", 1, &[], 500, 1))
        .await
        .unwrap()
        .id;
    let (t, bid) = w.buyer("b").await;
    assert_eq!(
        code(m.make_purchase(&t, &purchase(), None).await),
        "cart_empty"
    );
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();
    m.add_to_cart(&t, &add(&b, 1)).await.unwrap();
    m.save_cart(&t).await.unwrap();
    let p = m.make_purchase(&t, &purchase(), None).await.unwrap();
    assert_eq!(pay.calls.load(Ordering::SeqCst), 1);
    assert_eq!(p.purchase_id, 1);
    assert_eq!(p.total_cents, 3000);
    assert_eq!(p.created_at, "2026-11-27T12:00:00Z");
    assert_eq!(p.lines.len(), 2);
    assert_eq!(p.lines[1].item_id, a);
    assert_eq!(p.lines[1].name, "lamp");
    assert_eq!(p.lines[1].seller_id, sid);
    assert_eq!(p.lines[1].price_cents, 1250);
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 2);
    assert_eq!(m.get_item(&b).await.unwrap().quantity, 0);
    assert!(m.display_cart(&t).await.unwrap().items.is_empty());
    assert!(
        w.buyer_summary(bid).saved_cart.is_empty(),
        "saved cart emptied too"
    );
    assert_eq!(w.buyer_summary(bid).items_purchased, 3);
    assert_eq!(w.seller_summary(sid).items_sold, 2);
    assert_eq!(w.seller_summary(sid2).items_sold, 1);
    w.clock.advance_ms(1_000);
    m.add_to_cart(&t, &add(&a, 1)).await.unwrap();
    let p2 = m.make_purchase(&t, &purchase(), None).await.unwrap();
    let h = m.get_purchase_history(&t).await.unwrap().purchases;
    assert_eq!(
        h.iter().map(|p| p.purchase_id).collect::<Vec<_>>(),
        vec![p2.purchase_id, p.purchase_id]
    );
    w.check_invariants();

    // Feedback.
    let fb = |item: &str, vote| FeedbackRequest {
        item_id: item.into(),
        vote,
    };
    let (other, _) = w.buyer("other").await;
    assert_eq!(
        code(m.provide_feedback(&other, &fb(&a, Vote::Up)).await),
        "not_purchased"
    );
    assert_eq!(
        code(m.provide_feedback(&t, &fb("1-99", Vote::Up)).await),
        "not_purchased"
    );
    assert_eq!(
        code(m.provide_feedback(&t, &fb("x", Vote::Up)).await),
        "invalid_argument"
    );
    m.provide_feedback(&t, &fb(&a, Vote::Up)).await.unwrap();
    m.provide_feedback(&t, &fb(&b, Vote::Down)).await.unwrap();
    assert_eq!(
        code(m.provide_feedback(&t, &fb(&a, Vote::Down)).await),
        "feedback_exists"
    );
    let item_a = m.get_item(&a).await.unwrap();
    assert_eq!((item_a.feedback.up, item_a.feedback.down), (1, 0));
    let r = m.get_seller_rating(sid).await.unwrap();
    assert_eq!((r.seller_id, r.up, r.down), (sid, 1, 0));
    let r = m.get_my_rating(&s2).await.unwrap();
    assert_eq!((r.up, r.down), (0, 1));
    assert_eq!(code(m.get_seller_rating(999).await), "not_found");
}

#[tokio::test]
async fn declined_or_failed_payment_changes_nothing() {
    let (w, pay) = World::scripted();
    let m = &w.market;
    let (s, sid) = w.seller("s").await;
    let a = m
        .add_item(&s, &item("lamp", 3, &[], 1250, 4))
        .await
        .unwrap()
        .id;
    let (t, bid) = w.buyer("b").await;
    m.add_to_cart(&t, &add(&a, 3)).await.unwrap();
    let units = w.units();
    let cart = m.display_cart(&t).await.unwrap();
    for (mode, expect) in [(1, "payment_declined"), (2, "unavailable")] {
        pay.mode.store(mode, Ordering::SeqCst);
        assert_eq!(code(m.make_purchase(&t, &purchase(), None).await), expect);
        assert_eq!(w.units(), units);
        assert_eq!(m.display_cart(&t).await.unwrap(), cart);
        assert!(m
            .get_purchase_history(&t)
            .await
            .unwrap()
            .purchases
            .is_empty());
        assert_eq!(w.buyer_summary(bid).items_purchased, 0);
        assert_eq!(w.seller_summary(sid).items_sold, 0);
    }
    // An invalid card never reaches the payment service.
    let calls = pay.calls.load(Ordering::SeqCst);
    let mut bad = purchase();
    bad.card.number = "4111111111111112".into();
    assert_eq!(
        code(m.make_purchase(&t, &bad, None).await),
        "invalid_argument"
    );
    bad = purchase();
    bad.card.expiry = "10/26".into();
    assert_eq!(
        code(m.make_purchase(&t, &bad, None).await),
        "invalid_argument"
    );
    assert_eq!(pay.calls.load(Ordering::SeqCst), calls);
    assert_eq!(w.units(), units);
    w.check_invariants();
}

#[tokio::test]
async fn purchase_beyond_current_quantity_is_refused_whole() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    let (s, _) = w.seller("s").await;
    let a = m.add_item(&s, &item("a", 3, &[], 10, 4)).await.unwrap().id;
    let b = m.add_item(&s, &item("b", 3, &[], 10, 4)).await.unwrap().id;
    let (t, _) = w.buyer("b").await;
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();
    m.add_to_cart(&t, &add(&b, 4)).await.unwrap();
    m.remove_item(&s, &b, Some(1)).await.unwrap();
    let units = w.units();
    let err = m.make_purchase(&t, &purchase(), None).await.unwrap_err();
    assert_eq!(err, MarketError::InsufficientQuantity { item: b.clone() });
    assert_eq!(w.units(), units);
    assert_eq!(m.display_cart(&t).await.unwrap().items.len(), 2);
}

#[tokio::test]
async fn two_buyers_race_for_the_last_unit() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    let (s, _) = w.seller("s").await;
    let a = m
        .add_item(&s, &item("last", 3, &[], 10, 1))
        .await
        .unwrap()
        .id;
    let (t1, _) = w.buyer("b1").await;
    let (t2, _) = w.buyer("b2").await;
    m.add_to_cart(&t1, &add(&a, 1)).await.unwrap();
    m.add_to_cart(&t2, &add(&a, 1)).await.unwrap();
    let (m1, m2) = (w.market.market().clone(), w.market.market().clone());
    let (r1, r2) = tokio::join!(
        tokio::spawn(async move { m1.make_purchase(&t1, &purchase(), None).await }),
        tokio::spawn(async move { m2.make_purchase(&t2, &purchase(), None).await }),
    );
    let results = [r1.unwrap(), r2.unwrap()];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(MarketError::InsufficientQuantity { .. }))));
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 0);
    w.check_invariants();
}

#[tokio::test]
async fn purchase_with_idempotency_key_is_done_once() {
    let (w, pay) = World::scripted();
    let m = &w.market;
    let (s, _) = w.seller("s").await;
    let a = m.add_item(&s, &item("a", 3, &[], 10, 5)).await.unwrap().id;
    let (t, bid) = w.buyer("b").await;
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();
    let p1 = m
        .make_purchase(&t, &purchase(), Some("key-1"))
        .await
        .unwrap();
    // The retry (cart now empty) returns the same purchase without paying again.
    let p2 = m
        .make_purchase(&t, &purchase(), Some("key-1"))
        .await
        .unwrap();
    assert_eq!(p1, p2);
    assert_eq!(pay.calls.load(Ordering::SeqCst), 1);
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 3);
    // A new key with the (now empty) cart finds no reservation: nothing reserved or paid.
    assert_eq!(
        code(m.make_purchase(&t, &purchase(), Some("key-0")).await),
        "cart_empty"
    );
    assert_eq!(pay.calls.load(Ordering::SeqCst), 1);
    assert_eq!(w.buyer_summary(bid).purchases, 1);
    // Another Market (another server replica) sees the same.
    let other = Market::new(
        w.market.customer_log().clone(),
        w.market.product_log().clone(),
        pay.clone(),
        w.clock.clone(),
        MarketConfig::for_tests(),
    );
    assert_eq!(
        other
            .make_purchase(&t, &purchase(), Some("key-1"))
            .await
            .unwrap(),
        p1
    );
    assert_eq!(pay.calls.load(Ordering::SeqCst), 1);
    // A declined attempt stays declined on retry, and a new key works.
    m.add_to_cart(&t, &add(&a, 1)).await.unwrap();
    pay.mode.store(1, Ordering::SeqCst);
    assert_eq!(
        code(m.make_purchase(&t, &purchase(), Some("key-2")).await),
        "payment_declined"
    );
    pay.mode.store(0, Ordering::SeqCst);
    assert_eq!(
        code(m.make_purchase(&t, &purchase(), Some("key-2")).await),
        "payment_declined"
    );
    assert_eq!(
        m.make_purchase(&t, &purchase(), Some("key-3"))
            .await
            .unwrap()
            .total_cents,
        10
    );
    assert_eq!(
        code(m.make_purchase(&t, &purchase(), Some("bad key")).await),
        "invalid_argument"
    );
    w.check_invariants();
}

#[tokio::test]
async fn a_call_that_leaves_the_lookup_to_the_market_replays_a_remembered_response() {
    let (w, pay) = World::scripted();
    let m = &w.market;
    let (s, _) = w.seller("s").await;
    let a = m.add_item(&s, &item("a", 3, &[], 10, 5)).await.unwrap().id;
    let (t, _) = w.buyer("b").await;
    m.idempotency_record("t:x", "k1", 201, b"{\"remembered\":true}".to_vec())
        .await
        .unwrap();
    let remembered =
        |found: Option<marketcore::customer::StoredResponse>| found.map(|r| (r.status, r.body));
    let expected = Some((201, b"{\"remembered\":true}".to_vec()));
    // Remembered: every such call answers with it at its session check, changing nothing.
    let (_, found) = with_remembered_lookup("t:x", "k1", m.add_to_cart(&t, &add(&a, 1))).await;
    assert_eq!(remembered(found), expected, "add_to_cart");
    assert!(m.display_cart(&t).await.unwrap().items.is_empty());
    let (_, found) = with_remembered_lookup("t:x", "k1", m.add_to_cart(&t, &add("9-999", 1))).await;
    assert_eq!(
        remembered(found),
        expected,
        "also when the item read before the write fails"
    );
    m.add_to_cart(&t, &add(&a, 1)).await.unwrap();
    let (_, found) =
        with_remembered_lookup("t:x", "k1", m.make_purchase(&t, &purchase(), Some("k1"))).await;
    assert_eq!(remembered(found), expected, "make_purchase");
    assert_eq!(pay.calls.load(Ordering::SeqCst), 0, "nothing paid");
    assert_eq!(
        m.get_item(&a).await.unwrap().quantity,
        5,
        "nothing reserved"
    );
    let feedback = FeedbackRequest {
        item_id: a.clone(),
        vote: Vote::Up,
    };
    let (_, found) = with_remembered_lookup("t:x", "k1", m.provide_feedback(&t, &feedback)).await;
    assert_eq!(remembered(found), expected, "provide_feedback");
    // Another key: the call runs as usual and finds nothing.
    let (out, found) = with_remembered_lookup("t:x", "k2", m.add_to_cart(&t, &add(&a, 1))).await;
    assert_eq!(found, None);
    assert_eq!(out.unwrap().items[0].quantity, 2);
    let (out, found) =
        with_remembered_lookup("t:x", "k3", m.make_purchase(&t, &purchase(), Some("k3"))).await;
    assert_eq!(found, None);
    assert_eq!(out.unwrap().total_cents, 20);
    w.check_invariants();
}

#[tokio::test]
async fn idempotency_record_and_lookup() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    assert_eq!(m.idempotency_lookup("buyer:1", "k").await.unwrap(), None);
    let first = m
        .idempotency_record("buyer:1", "k", 201, b"{\"a\":1}".to_vec())
        .await
        .unwrap();
    assert_eq!(first.status, 201);
    let second = m
        .idempotency_record("buyer:1", "k", 409, b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(second, first, "the first response wins");
    assert_eq!(
        m.idempotency_lookup("buyer:1", "k").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        m.idempotency_lookup("buyer:2", "k").await.unwrap(),
        None,
        "per user"
    );
    w.clock.advance_ms(599_999);
    assert!(m
        .idempotency_lookup("buyer:1", "k")
        .await
        .unwrap()
        .is_some());
    w.clock.advance_ms(1);
    assert_eq!(
        m.idempotency_lookup("buyer:1", "k").await.unwrap(),
        None,
        "10 minutes"
    );
    assert_eq!(
        code(m.idempotency_lookup("buyer:1", "").await),
        "invalid_argument"
    );
    assert_eq!(
        code(m.idempotency_lookup("", "k").await),
        "invalid_argument"
    );
    assert_eq!(
        code(
            m.idempotency_record("buyer:1", &"k".repeat(65), 200, vec![])
                .await
        ),
        "invalid_argument"
    );
    assert_eq!(UserId::Buyer(BuyerId(1)).scope(), "buyer:1");
}

#[tokio::test]
async fn abandoned_reservations_lapse() {
    let w = World::with(Arc::new(AlwaysApprove::default()));
    let m = &w.market;
    let (s, _) = w.seller("s").await;
    let a = m.add_item(&s, &item("a", 3, &[], 10, 5)).await.unwrap().id;
    // A frontend reserves and dies.
    let id: ItemId = a.parse().unwrap();
    w.market
        .product_log()
        .propose(
            RequestId { client: 1, seq: 1 },
            ProductCommand::Reserve {
                reservation_id: 42,
                buyer: BuyerId(1),
                lines: vec![(id, 4)],
                at_ms: T0,
                expires_at_ms: T0 + 120_000,
                attempt: 1,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 1);
    w.clock.advance_ms(120_000);
    m.tick().await.unwrap();
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 5);
    w.check_invariants();
}

/// A payment service that takes longer than a reservation lives (it moves the manual clock
/// past the TTL) and, when told to, lets another reservation take `steal` units meanwhile.
struct OutlastsTheReservation {
    clock: Arc<marketcore::clock::ManualClock>,
    products: Arc<SingleNodeLog<ProductMachine>>,
    steal: std::sync::Mutex<Option<(ItemId, u64)>>,
}

#[async_trait]
impl marketcore::payment::PaymentService for OutlastsTheReservation {
    async fn process(
        &self,
        _request: marketcore::payment::PaymentRequest,
    ) -> Result<marketcore::payment::PaymentOutcome, marketcore::payment::PaymentError> {
        self.clock
            .advance_ms(MarketConfig::default().reservation_ttl_ms + 1);
        let now = marketcore::clock::Clock::now_ms(&*self.clock);
        let steal = self.steal.lock().unwrap().take();
        if let Some((item, units)) = steal {
            self.products
                .propose(
                    RequestId { client: 7, seq: 1 },
                    ProductCommand::Reserve {
                        reservation_id: 7,
                        buyer: BuyerId(99),
                        lines: vec![(item, units)],
                        at_ms: now,
                        expires_at_ms: now + 1_000_000,
                        attempt: 1,
                    },
                )
                .await
                .unwrap()
                .unwrap();
        }
        Ok(marketcore::payment::PaymentOutcome {
            approved: true,
            transaction_id: "slow".into(),
        })
    }
}

/// A Market over these logs (1 ms pauses between retries) where seller "s" sells item "a"
/// (5 units at 10) and buyer "b" is logged in: the market, the buyer's token, the item id.
async fn one_item_market(
    customers: Arc<dyn ReplicatedLog<CustomerMachine>>,
    products: Arc<dyn ReplicatedLog<ProductMachine>>,
    pay: Arc<dyn marketcore::payment::PaymentService>,
    clock: Arc<marketcore::clock::ManualClock>,
) -> (Market, String, String) {
    let mut config = MarketConfig::for_tests();
    config.retry_backoff_ms = 1;
    let m = Market::new(customers, products, pay, clock, config);
    m.create_seller(&account("s")).await.unwrap();
    let s = m.login_seller(&login("s")).await.unwrap().token;
    let a = m.add_item(&s, &item("a", 3, &[], 10, 5)).await.unwrap().id;
    m.create_buyer(&account("b")).await.unwrap();
    let t = m.login_buyer(&login("b")).await.unwrap().token;
    (m, t, a)
}

#[tokio::test]
async fn a_payment_that_outlasts_its_reservation() {
    let clock = Arc::new(marketcore::clock::ManualClock::new(T0));
    let products = Arc::new(SingleNodeLog::in_memory(ProductMachine::default()));
    let customers = Arc::new(SingleNodeLog::in_memory(CustomerMachine::default()));
    let pay = Arc::new(OutlastsTheReservation {
        clock: clock.clone(),
        products: products.clone(),
        steal: Default::default(),
    });
    let (m, t, a) = one_item_market(customers, products.clone(), pay.clone(), clock).await;

    // The reservation lapsed while the payment was decided, but its units are still there:
    // the late confirmation sells them and the purchase goes through.
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();
    let p = m.make_purchase(&t, &purchase(), None).await.unwrap();
    assert_eq!(p.total_cents, 20);
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 3);
    assert!(m.display_cart(&t).await.unwrap().items.is_empty());

    // This time another buyer takes the units meanwhile: the purchase fails (unavailable),
    // the units are the other buyer's, and quantities never go below zero.
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();
    *pay.steal.lock().unwrap() = Some((a.parse().unwrap(), 2));
    assert_eq!(
        code(m.make_purchase(&t, &purchase(), None).await),
        "unavailable"
    );
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 1);
    products.with_state(|p| p.check_invariants()).unwrap();
}

/// A log that fails some proposals with `Unavailable`: while `refusing` is set, those that
/// `refuses` picks are refused before anything is applied (a frontend that died before the
/// step); unless `ack_lost` starts set, the first applied proposal loses its acknowledgement
/// (as if the leader crashed after committing).
struct Faulty<S: StateMachine> {
    inner: SingleNodeLog<S>,
    refusing: std::sync::atomic::AtomicBool,
    refuses: fn(&S::Command) -> bool,
    ack_lost: std::sync::atomic::AtomicBool,
}

impl<S: StateMachine> Faulty<S> {
    /// Loses the acknowledgement of the first proposal it applies.
    fn loses_first_ack(initial: S) -> Self {
        Self {
            inner: SingleNodeLog::in_memory(initial),
            refusing: false.into(),
            refuses: |_| false,
            ack_lost: false.into(),
        }
    }

    /// Refuses the proposals `refuses` picks until `refusing` is cleared.
    fn refusing(initial: S, refuses: fn(&S::Command) -> bool) -> Self {
        Self {
            inner: SingleNodeLog::in_memory(initial),
            refusing: true.into(),
            refuses,
            ack_lost: true.into(),
        }
    }
}

#[async_trait]
impl<S: StateMachine> ReplicatedLog<S> for Faulty<S> {
    async fn propose(&self, id: RequestId, command: S::Command) -> Result<S::Output, LogError> {
        if self.refusing.load(Ordering::SeqCst) && (self.refuses)(&command) {
            return Err(LogError::Unavailable("refused".into()));
        }
        let out = self.inner.propose(id, command).await;
        if !self.ack_lost.swap(true, Ordering::SeqCst) {
            return Err(LogError::Unavailable("ack lost".into()));
        }
        out
    }
    async fn read(&self, q: S::Query, c: ReadConsistency) -> Result<S::Answer, LogError> {
        self.inner.read(q, c).await
    }
    fn status(&self) -> LogStatus {
        self.inner.status()
    }
}

/// A log that holds each proposal `gated` picks until `open` is notified (once per proposal).
struct Gated<S: StateMachine> {
    inner: SingleNodeLog<S>,
    gated: fn(&S::Command) -> bool,
    open: tokio::sync::Notify,
}

impl<S: StateMachine> Gated<S> {
    fn new(initial: S, gated: fn(&S::Command) -> bool) -> Self {
        Self {
            inner: SingleNodeLog::in_memory(initial),
            gated,
            open: tokio::sync::Notify::new(),
        }
    }
}

#[async_trait]
impl<S: StateMachine> ReplicatedLog<S> for Gated<S> {
    async fn propose(&self, id: RequestId, command: S::Command) -> Result<S::Output, LogError> {
        if (self.gated)(&command) {
            self.open.notified().await;
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

#[tokio::test]
async fn retried_steps_reuse_their_request_id_and_apply_once() {
    let customers = Arc::new(Faulty::loses_first_ack(CustomerMachine::default()));
    let products = Arc::new(Faulty::loses_first_ack(ProductMachine::default()));
    let clock = Arc::new(marketcore::clock::ManualClock::new(T0));
    let mut config = MarketConfig::for_tests();
    config.retry_backoff_ms = 1;
    let m = Market::new(
        customers.clone(),
        products.clone(),
        Arc::new(AlwaysApprove::default()),
        clock,
        config,
    );
    // The first customer proposal (create_seller) loses its ack, and is retried.
    assert_eq!(m.create_seller(&account("s")).await.unwrap().seller_id, 1);
    let t = m.login_seller(&login("s")).await.unwrap().token;
    // The first product proposal (add_item) too: still exactly one item.
    assert_eq!(
        m.add_item(&t, &item("a", 1, &[], 1, 1)).await.unwrap().id,
        "1-1"
    );
    assert_eq!(m.all_items_by_seller(&t).await.unwrap().items.len(), 1);
    assert_eq!(
        m.add_item(&t, &item("b", 1, &[], 1, 1)).await.unwrap().id,
        "1-2"
    );

    // A log that is down: Unavailable after the configured attempts.
    struct Down;
    #[async_trait]
    impl ReplicatedLog<CustomerMachine> for Down {
        async fn propose(
            &self,
            _: RequestId,
            _: marketcore::customer::CustomerCommand,
        ) -> Result<<CustomerMachine as StateMachine>::Output, LogError> {
            Err(LogError::Unavailable("no quorum".into()))
        }
        async fn read(
            &self,
            _: CustomerQuery,
            _: ReadConsistency,
        ) -> Result<marketcore::customer::CustomerAnswer, LogError> {
            Err(LogError::Unavailable("no quorum".into()))
        }
        fn status(&self) -> LogStatus {
            LogStatus {
                node_id: 0,
                role: replication::Role::Client,
                term: 0,
                leader: None,
                commit_index: 0,
                applied_index: 0,
                counters: Vec::new(),
            }
        }
    }
    let mut config = MarketConfig::for_tests();
    config.retry_backoff_ms = 1;
    let down = Market::new(
        Arc::new(Down),
        products,
        Arc::new(AlwaysDecline),
        Arc::new(marketcore::clock::ManualClock::new(T0)),
        config,
    );
    assert_eq!(code(down.create_buyer(&account("x")).await), "unavailable");
    assert_eq!(code(down.display_cart("token").await), "unavailable");
    let e = down.get_seller_rating(1).await.unwrap_err();
    assert_eq!(e.http_status(), 503);
}

#[tokio::test]
async fn durable_embedded_market_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || EmbeddedOptions::for_tests(Arc::new(AlwaysFail));
    let id = {
        let m = EmbeddedMarket::open(dir.path(), opts()).unwrap();
        m.create_seller(&account("s")).await.unwrap();
        let t = m.login_seller(&login("s")).await.unwrap().token;
        m.add_item(&t, &item("kept", 2, &["disk"], 5, 2))
            .await
            .unwrap()
            .id
    };
    let m = EmbeddedMarket::open(dir.path(), opts()).unwrap();
    let t = m.login_seller(&login("s")).await.unwrap().token;
    assert_eq!(m.all_items_by_seller(&t).await.unwrap().items[0].id, id);
    assert_eq!(m.get_item(&id).await.unwrap().name, "kept");
}

/// `make_purchase` as the HTTP layer runs it for a request with `Idempotency-Key: k`: every
/// attempt proposes its effect steps with the same ids and reserves under the same
/// reservation id, so a retry's `Reserve` is answered with the reservation as it is now.
async fn keyed_purchase(m: &Market, t: &str) -> Result<marketcore::api::Purchase, MarketError> {
    purchase_with_key(m, t, "k").await
}

async fn purchase_with_key(
    m: &Market,
    t: &str,
    key: &str,
) -> Result<marketcore::api::Purchase, MarketError> {
    with_idempotency_key("buyer:1", key, m.make_purchase(t, &purchase(), Some(key))).await
}

/// The reservation a purchase with `key` made (buyer 1).
async fn reservation_of(
    products: &SingleNodeLog<ProductMachine>,
    key: &str,
) -> marketcore::product::Reservation {
    let rid = reservation_id_for(BuyerId(1), key);
    match products
        .read(
            ProductQuery::Reservation(rid),
            ReadConsistency::Linearizable,
        )
        .await
    {
        Ok(ProductAnswer::Reservation(Some(r))) => r,
        other => panic!("{other:?}"),
    }
}

/// Whether the reservation of buyer 1's purchase with key `key` is still held.
async fn held(products: &SingleNodeLog<ProductMachine>, key: &str) -> bool {
    matches!(
        reservation_of(products, key).await.state,
        ReservationState::Held { .. }
    )
}

/// The record that the attempt which made `r` sent beside its confirmation lands now, late,
/// and is refused.
async fn assert_late_record_refused(
    customers: &SingleNodeLog<CustomerMachine>,
    r: &marketcore::product::Reservation,
    item: &str,
) {
    let late = customers
        .propose(
            RequestId {
                client: 77,
                seq: r.id,
            },
            record_beside(r, item),
        )
        .await
        .unwrap();
    assert_eq!(late, Ok(CustomerOutput::Superseded));
}

/// A purchase record as the attempt that made `r` would send it beside its confirmation.
fn record_beside(r: &marketcore::product::Reservation, item: &str) -> CustomerCommand {
    CustomerCommand::RecordPurchase {
        buyer: r.buyer,
        reservation_id: r.id,
        reserved_at_ms: r.reserved_at_ms,
        lines: vec![PurchaseLine {
            item_id: item.into(),
            name: "a".into(),
            seller_id: 1,
            quantity: r.lines[0].quantity,
            price_cents: 10,
        }],
        attempt: Some(r.attempt),
        at_ms: T0,
    }
}

/// The buyer's purchase history.
async fn purchases(m: &Market, t: &str) -> Vec<marketcore::api::Purchase> {
    m.get_purchase_history(t).await.unwrap().purchases
}

/// The first attempt of a keyed purchase was paid and recorded, and answered, but its
/// confirmation, sent after the answer, never landed: the retry finds the record through its
/// claim, confirms, and answers the same purchase without asking for payment again (a second
/// payment, declined, would have released the units of a recorded purchase).
#[tokio::test]
async fn a_retry_of_a_recorded_but_unconfirmed_purchase_only_confirms() {
    let products = Arc::new(Faulty::refusing(ProductMachine::default(), |c| {
        matches!(c, ProductCommand::Confirm { .. })
    }));
    let customers = Arc::new(SingleNodeLog::in_memory(CustomerMachine::default()));
    let pay = Arc::new(Scripted::default());
    let clock = Arc::new(marketcore::clock::ManualClock::new(T0));
    let (m, t, a) = one_item_market(customers, products.clone(), pay.clone(), clock).await;
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();

    let first = keyed_purchase(&m, &t).await.unwrap();
    m.settle().await;
    assert_eq!(
        m.deferred(),
        Deferred {
            running: 0,
            failed: 1
        }
    );
    assert!(held(&products.inner, "k").await);
    products.refusing.store(false, Ordering::SeqCst);
    pay.mode.store(1, Ordering::SeqCst);
    let p = keyed_purchase(&m, &t).await.unwrap();
    assert_eq!(p, first);
    assert_eq!(pay.calls.load(Ordering::SeqCst), 1, "paid once");
    let history = purchases(&m, &t).await;
    assert_eq!(history, vec![p]);
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 3, "two units sold");
    assert_eq!(
        reservation_of(&products.inner, "k").await.state,
        ReservationState::Confirmed
    );
    products.inner.with_state(|p| p.check_invariants()).unwrap();
}

/// A purchase is answered once it is recorded; its confirmation follows on a task of its own,
/// which `settle` waits for. A Market without a confirmation to send has nothing to wait for.
#[tokio::test]
async fn a_purchase_is_confirmed_after_it_is_answered() {
    let products = Arc::new(Gated::new(ProductMachine::default(), |c| {
        matches!(c, ProductCommand::Confirm { .. })
    }));
    let customers = Arc::new(SingleNodeLog::in_memory(CustomerMachine::default()));
    let pay = Arc::new(Scripted::default());
    let clock = Arc::new(marketcore::clock::ManualClock::new(T0));
    let (m, t, a) = one_item_market(customers, products.clone(), pay, clock).await;
    tokio::time::timeout(Duration::from_secs(5), m.settle())
        .await
        .expect("nothing to wait for");
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();

    // The confirmation is held at the gate: the purchase is answered all the same.
    let p = tokio::time::timeout(Duration::from_secs(5), keyed_purchase(&m, &t))
        .await
        .expect("answered before its confirmation landed")
        .unwrap();
    assert_eq!(p.total_cents, 20);
    assert_eq!(purchases(&m, &t).await, vec![p]);
    assert_eq!(
        m.get_item(&a).await.unwrap().quantity,
        3,
        "reserved: off sale"
    );
    assert_eq!(
        m.deferred(),
        Deferred {
            running: 1,
            failed: 0
        }
    );
    assert!(held(&products.inner, "k").await);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), m.settle())
            .await
            .is_err(),
        "settle waits for the confirmation"
    );

    products.open.notify_one();
    tokio::time::timeout(Duration::from_secs(5), m.settle())
        .await
        .expect("settled once the confirmation landed");
    assert_eq!(
        m.deferred(),
        Deferred {
            running: 0,
            failed: 0
        }
    );
    assert_eq!(
        reservation_of(&products.inner, "k").await.state,
        ReservationState::Confirmed
    );
    products.inner.with_state(|p| p.check_invariants()).unwrap();
}

/// A product log refusing confirmations and a customer log refusing purchase records (both
/// until their `refusing` is cleared): a frontend that dies once the payment said yes.
fn last_writes_refused() -> (Arc<Faulty<ProductMachine>>, Arc<Faulty<CustomerMachine>>) {
    let products = Arc::new(Faulty::refusing(ProductMachine::default(), |c| {
        matches!(c, ProductCommand::Confirm { .. })
    }));
    let customers = Arc::new(Faulty::refusing(CustomerMachine::default(), |c| {
        matches!(c, CustomerCommand::RecordPurchase { .. })
    }));
    (products, customers)
}

/// The first attempt was paid, but neither its confirmation nor its record landed (yet). The
/// retry claims the record, pays again, is declined and releases the units: the first
/// attempt's record, arriving late, is refused, so no purchase is recorded for units that
/// went back on sale.
#[tokio::test]
async fn a_retry_that_pays_again_fences_the_first_attempts_late_record() {
    let (products, customers) = last_writes_refused();
    let pay = Arc::new(Scripted::default());
    let clock = Arc::new(marketcore::clock::ManualClock::new(T0));
    let (m, t, a) = one_item_market(customers.clone(), products.clone(), pay.clone(), clock).await;
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();

    assert_eq!(code(keyed_purchase(&m, &t).await), "unavailable");
    products.refusing.store(false, Ordering::SeqCst);
    customers.refusing.store(false, Ordering::SeqCst);
    pay.mode.store(1, Ordering::SeqCst);
    assert_eq!(code(keyed_purchase(&m, &t).await), "payment_declined");
    assert_eq!(pay.calls.load(Ordering::SeqCst), 2, "the retry paid again");
    assert_eq!(
        m.get_item(&a).await.unwrap().quantity,
        5,
        "units back on sale"
    );

    // The first attempt's record, still in flight, lands now.
    let first = reservation_of(&products.inner, "k").await;
    assert_late_record_refused(&customers.inner, &first, &a).await;
    assert!(purchases(&m, &t).await.is_empty());
}

/// The first attempt was paid and confirmed, but its record never landed: the retry sees the
/// reservation confirmed, records the purchase and answers it without asking for payment.
#[tokio::test]
async fn a_retry_of_a_confirmed_but_unrecorded_purchase_only_records() {
    let products = Arc::new(SingleNodeLog::in_memory(ProductMachine::default()));
    let customers = Arc::new(Faulty::refusing(CustomerMachine::default(), |c| {
        matches!(c, CustomerCommand::RecordPurchase { .. })
    }));
    let pay = Arc::new(Scripted::default());
    let clock = Arc::new(marketcore::clock::ManualClock::new(T0));
    let (m, t, a) = one_item_market(customers.clone(), products, pay.clone(), clock).await;
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();

    assert_eq!(code(keyed_purchase(&m, &t).await), "unavailable");
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 3, "confirmed: sold");
    customers.refusing.store(false, Ordering::SeqCst);
    pay.mode.store(1, Ordering::SeqCst);
    let p = keyed_purchase(&m, &t).await.unwrap();
    assert_eq!(p.total_cents, 20);
    assert_eq!(pay.calls.load(Ordering::SeqCst), 1, "paid once");
    assert_eq!(purchases(&m, &t).await, vec![p]);
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 3);
}

/// A payment service that declines, after letting the first attempt's late confirmation of
/// reservation `id` land in `products` while it decides.
struct ConfirmsWhileDeclining {
    products: Arc<Faulty<ProductMachine>>,
    id: u64,
    calls: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl marketcore::payment::PaymentService for ConfirmsWhileDeclining {
    async fn process(
        &self,
        _r: marketcore::payment::PaymentRequest,
    ) -> Result<marketcore::payment::PaymentOutcome, marketcore::payment::PaymentError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let confirm = ProductCommand::Confirm {
            reservation_id: self.id,
            at_ms: T0,
        };
        let id = RequestId {
            client: 78,
            seq: self.id,
        };
        let confirmed = self.products.inner.propose(id, confirm).await.unwrap();
        assert!(confirmed.is_ok(), "{confirmed:?}");
        Ok(marketcore::payment::PaymentOutcome {
            approved: false,
            transaction_id: "t".into(),
        })
    }
}

/// The first attempt was paid, and its confirmation lands while the retry (which found the
/// reservation held) is paying again and is declined. The retry's release finds the units
/// sold: the first payment stands, so the retry records the purchase and answers it (not
/// `payment_declined` for a sale that happened).
#[tokio::test]
async fn a_declined_retry_whose_release_finds_the_units_sold_records_the_purchase() {
    let (products, customers) = last_writes_refused();
    let pay = Arc::new(ConfirmsWhileDeclining {
        products: products.clone(),
        id: reservation_id_for(BuyerId(1), "k"),
        calls: 0.into(),
    });
    let clock = Arc::new(marketcore::clock::ManualClock::new(T0));
    let first: Arc<dyn marketcore::payment::PaymentService> = Arc::new(AlwaysApprove::default());
    let (m, t, a) =
        one_item_market(customers.clone(), products.clone(), first, clock.clone()).await;
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();
    assert_eq!(code(keyed_purchase(&m, &t).await), "unavailable");
    customers.refusing.store(false, Ordering::SeqCst);

    let retry = Market::new(
        customers.clone(),
        products.clone(),
        pay.clone(),
        clock,
        MarketConfig::for_tests(),
    );
    let p = keyed_purchase(&retry, &t).await.unwrap();
    assert_eq!(p.total_cents, 20);
    assert_eq!(pay.calls.load(Ordering::SeqCst), 1);
    assert_eq!(purchases(&m, &t).await, vec![p]);
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 3);
    products.inner.with_state(|p| p.check_invariants()).unwrap();
}

/// The first attempt of a keyed purchase was declined and released its reservation, but its
/// answer never reached the client (the frontend died just then). Every retry with the same
/// key answers `payment_declined` again without asking for payment: the retry's `Reserve`
/// must show the reservation as it is now, not the first attempt's remembered answer (held),
/// which once sent each retry to pay and then fail to confirm released units.
#[tokio::test]
async fn a_retry_of_a_declined_purchase_is_declined_without_paying_again() {
    let products = Arc::new(SingleNodeLog::in_memory(ProductMachine::default()));
    let customers = Arc::new(SingleNodeLog::in_memory(CustomerMachine::default()));
    let pay = Arc::new(Scripted::default());
    let clock = Arc::new(marketcore::clock::ManualClock::new(T0));
    let (m, t, a) = one_item_market(customers, products.clone(), pay.clone(), clock).await;
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();

    pay.mode.store(1, Ordering::SeqCst);
    assert_eq!(code(keyed_purchase(&m, &t).await), "payment_declined");
    pay.mode.store(0, Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(code(keyed_purchase(&m, &t).await), "payment_declined");
    }
    assert_eq!(
        pay.calls.load(Ordering::SeqCst),
        1,
        "asked for payment once"
    );
    assert_eq!(m.get_item(&a).await.unwrap().quantity, 5, "nothing sold");
    assert!(purchases(&m, &t).await.is_empty());
    products.with_state(|p| p.check_invariants()).unwrap();
}

/// A first attempt recorded its purchase beside a confirmation that never landed, and its
/// client never retried. The sweeper (`tick`) finds the reservation held near its lapse, its
/// claim answers the purchase, and it confirms: the units stay sold. For a purchase with
/// nothing recorded, the sweeper's claim refuses the attempt's late record and the units go
/// back on sale when the reservation lapses.
#[tokio::test]
async fn the_sweeper_confirms_recorded_purchases_before_they_lapse_and_fences_the_rest() {
    let (products, customers) = last_writes_refused();
    customers.refusing.store(false, Ordering::SeqCst);
    let pay = Arc::new(Scripted::default());
    let clock = Arc::new(marketcore::clock::ManualClock::new(T0));
    let (m, t, a) = one_item_market(customers.clone(), products.clone(), pay, clock.clone()).await;
    let ttl = MarketConfig::default().reservation_ttl_ms;
    let quantity = || async { m.get_item(&a).await.unwrap().quantity };

    // Recorded and answered, never confirmed; a tick well before the lapse leaves it alone.
    m.add_to_cart(&t, &add(&a, 2)).await.unwrap();
    purchase_with_key(&m, &t, "k").await.unwrap();
    m.settle().await;
    assert_eq!(m.deferred().failed, 1);
    products.refusing.store(false, Ordering::SeqCst);
    assert_eq!(purchases(&m, &t).await.len(), 1);
    m.tick().await.unwrap();
    assert!(held(&products.inner, "k").await);
    // Near its lapse the sweeper confirms it, and the lapse then changes nothing.
    clock.advance_ms(ttl - 10_000);
    m.tick().await.unwrap();
    assert_eq!(
        reservation_of(&products.inner, "k").await.state,
        ReservationState::Confirmed
    );
    clock.advance_ms(20_000);
    m.tick().await.unwrap();
    assert_eq!(
        quantity().await,
        3,
        "the recorded purchase's units stay sold"
    );

    // Neither written: the sweeper fences the attempt, its late record is refused, and the
    // reservation lapses.
    m.add_to_cart(&t, &add(&a, 1)).await.unwrap();
    products.refusing.store(true, Ordering::SeqCst);
    customers.refusing.store(true, Ordering::SeqCst);
    assert_eq!(code(purchase_with_key(&m, &t, "k2").await), "unavailable");
    products.refusing.store(false, Ordering::SeqCst);
    customers.refusing.store(false, Ordering::SeqCst);
    assert_eq!(quantity().await, 2, "one unit held");
    let held = reservation_of(&products.inner, "k2").await;
    clock.advance_ms(ttl - 10_000);
    m.tick().await.unwrap();
    assert_late_record_refused(&customers.inner, &held, &a).await;
    clock.advance_ms(20_000);
    m.tick().await.unwrap();
    assert_eq!(quantity().await, 3, "the lapsed reservation's unit is back");
    assert_eq!(purchases(&m, &t).await.len(), 1);
    products.inner.with_state(|p| p.check_invariants()).unwrap();
}
