//! Property tests over random operation sequences.
//!
//! * The product database never lets a quantity go below zero and conserves units
//!   (listed = available + sold + removed + reserved); a refused reservation changes nothing.
//! * Through the Market: feedback only for purchased items and at most once; a declined
//!   payment changes nothing; the invariants hold after every step.
//! * A command proposed again with the same request id has one effect.
//! * Two state machines fed the same commands end in byte-identical snapshots, and a
//!   restored snapshot answers queries the same.
//!
//! Case counts default to 64; set `PROPTEST_CASES` to change them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;
use marketcore::api::{AddToCart, Condition, FeedbackRequest, PurchaseLine, PurchaseRequest, Vote};
use marketcore::customer::{CustomerCommand, CustomerMachine, CustomerQuery, StoredResponse};
use marketcore::ids::{BuyerId, ItemId, Role, SellerId, UserId};
use marketcore::payment::SeededApproveRate;
use marketcore::product::{
    ProductAnswer, ProductCommand, ProductMachine, ProductQuery, ReleaseReason, ReservationState,
};
use marketcore::MarketError;
use proptest::prelude::*;
use replication::{ReplicatedLog, RequestId, SingleNodeLog, StateMachine};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

// ------------------------------------------------------------------------------------------
// Product machine
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum POp {
    Add {
        seller: u64,
        category: u8,
        quantity: u64,
    },
    Price {
        seller: u64,
        item: usize,
        price: u64,
    },
    Remove {
        seller: u64,
        item: usize,
        quantity: Option<u64>,
    },
    Reserve {
        rid: u64,
        buyer: u64,
        lines: Vec<(usize, u64)>,
        ttl_ms: u64,
    },
    Confirm {
        rid: u64,
    },
    Release {
        rid: u64,
    },
    Feedback {
        buyer: u64,
        item: usize,
        up: bool,
    },
    Advance {
        ms: u64,
    },
}

fn pop() -> impl Strategy<Value = POp> {
    prop_oneof![
        (1..4u64, 0..3u8, 1..6u64).prop_map(|(seller, category, quantity)| POp::Add {
            seller,
            category,
            quantity
        }),
        (1..4u64, 0..8usize, 1..1000u64).prop_map(|(seller, item, price)| POp::Price {
            seller,
            item,
            price
        }),
        (1..4u64, 0..8usize, proptest::option::of(1..7u64)).prop_map(|(seller, item, quantity)| {
            POp::Remove {
                seller,
                item,
                quantity,
            }
        }),
        (
            0..6u64,
            1..3u64,
            proptest::collection::vec((0..8usize, 1..4u64), 0..4),
            1..5000u64
        )
            .prop_map(|(rid, buyer, lines, ttl_ms)| POp::Reserve {
                rid,
                buyer,
                lines,
                ttl_ms
            }),
        (0..6u64).prop_map(|rid| POp::Confirm { rid }),
        (0..6u64).prop_map(|rid| POp::Release { rid }),
        (1..3u64, 0..8usize, any::<bool>()).prop_map(|(buyer, item, up)| POp::Feedback {
            buyer,
            item,
            up
        }),
        (0..3000u64).prop_map(|ms| POp::Advance { ms }),
    ]
}

/// Turns abstract ops into product commands, tracking item ids and time.
fn product_commands(ops: &[POp]) -> Vec<ProductCommand> {
    let mut ids: Vec<ItemId> = Vec::new();
    let mut serials = [0u64; 10];
    let mut at_ms = T0;
    let pick = |ids: &Vec<ItemId>, i: usize| {
        ids.get(i % ids.len().max(1))
            .copied()
            .unwrap_or(ItemId::new(0, 1))
    };
    let mut out = Vec::new();
    for op in ops {
        at_ms += 10;
        out.push(match op {
            POp::Add {
                seller,
                category,
                quantity,
            } => {
                serials[usize::from(*category)] += 1;
                ids.push(ItemId::new(*category, serials[usize::from(*category)]));
                ProductCommand::AddItem {
                    seller: SellerId(*seller),
                    name: format!("item {}", ids.len()),
                    category: *category,
                    keywords: vec!["kw".into()],
                    condition: Condition::New,
                    price_cents: 100,
                    quantity: *quantity,
                    at_ms,
                }
            }
            POp::Price {
                seller,
                item,
                price,
            } => ProductCommand::ChangePrice {
                seller: SellerId(*seller),
                item: pick(&ids, *item),
                price_cents: *price,
                at_ms,
            },
            POp::Remove {
                seller,
                item,
                quantity,
            } => ProductCommand::RemoveUnits {
                seller: SellerId(*seller),
                item: pick(&ids, *item),
                quantity: *quantity,
                at_ms,
            },
            POp::Reserve {
                rid,
                buyer,
                lines,
                ttl_ms,
            } => ProductCommand::Reserve {
                reservation_id: *rid,
                buyer: BuyerId(*buyer),
                lines: lines.iter().map(|(i, q)| (pick(&ids, *i), *q)).collect(),
                at_ms,
                expires_at_ms: at_ms + ttl_ms,
                attempt: *rid,
            },
            POp::Confirm { rid } => ProductCommand::Confirm {
                reservation_id: *rid,
                at_ms,
            },
            POp::Release { rid } => ProductCommand::Release {
                reservation_id: *rid,
                reason: ReleaseReason::Declined,
                at_ms,
            },
            POp::Feedback { buyer, item, up } => ProductCommand::ItemFeedback {
                buyer: BuyerId(*buyer),
                item: pick(&ids, *item),
                vote: if *up { Vote::Up } else { Vote::Down },
                at_ms,
            },
            POp::Advance { ms } => {
                at_ms += ms;
                ProductCommand::Tick { at_ms }
            }
        });
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn product_units_are_conserved_and_never_negative(ops in proptest::collection::vec(pop(), 1..80)) {
        let mut m = ProductMachine::default();
        for cmd in product_commands(&ops) {
            if let ProductCommand::Reserve { at_ms, .. } = &cmd {
                // Let expiry happen first, so a refused reservation must leave no trace.
                m.apply(ProductCommand::Tick { at_ms: *at_ms }).unwrap();
                let before = m.snapshot();
                if m.apply(cmd.clone()).is_err() {
                    prop_assert_eq!(m.snapshot(), before, "a refused reservation changed state");
                }
            } else {
                let _ = m.apply(cmd);
            }
            prop_assert_eq!(m.check_invariants(), Ok(()));
        }
    }

    #[test]
    fn same_product_commands_same_snapshot_and_answers(ops in proptest::collection::vec(pop(), 1..60)) {
        let cmds = product_commands(&ops);
        let (mut a, mut b) = (ProductMachine::default(), ProductMachine::default());
        for c in &cmds {
            prop_assert_eq!(a.apply(c.clone()), b.apply(c.clone()));
        }
        prop_assert_eq!(a.snapshot(), b.snapshot());
        let mut r = ProductMachine::default();
        r.restore(&a.snapshot()).unwrap();
        prop_assert_eq!(r.snapshot(), a.snapshot());
        let mut queries = vec![ProductQuery::Units];
        queries.push(ProductQuery::Search { category: None, keywords: vec!["kw".into()], limit: 500 });
        queries.push(ProductQuery::Search { category: Some(1), keywords: vec![], limit: 3 });
        for s in 1..4 { queries.push(ProductQuery::BySeller(SellerId(s))); }
        for rid in 0..6 { queries.push(ProductQuery::Reservation(rid)); }
        for before_ms in [T0 + 2_000, u64::MAX] {
            queries.push(ProductQuery::HeldLapsing { before_ms, limit: 100 });
            // The sweeper's query lists held reservations lapsing before the bound, soonest first.
            let ProductAnswer::Reservations(held) = a.query(&ProductQuery::HeldLapsing { before_ms, limit: 100 }) else {
                panic!("reservations");
            };
            let mut last = 0;
            for h in &held {
                let ReservationState::Held { expires_at_ms } = h.state else {
                    panic!("not held: {h:?}");
                };
                prop_assert!(expires_at_ms < before_ms && expires_at_ms >= last);
                last = expires_at_ms;
            }
        }
        for q in &queries {
            prop_assert_eq!(r.query(q), a.query(q));
        }
        let next = ProductCommand::Tick { at_ms: T0 + 10_000_000 };
        prop_assert_eq!(r.apply(next.clone()), a.apply(next));
        prop_assert_eq!(r.snapshot(), a.snapshot());
    }
}

// ------------------------------------------------------------------------------------------
// Customer machine
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum COp {
    Seller(u8),
    Buyer(u8),
    Open {
        buyer: bool,
        user: u64,
        token: u8,
    },
    Close {
        token: u8,
    },
    Touch {
        token: u8,
    },
    Add {
        buyer: u64,
        item: u64,
        quantity: u64,
        available: u64,
    },
    Remove {
        buyer: u64,
        item: u64,
        quantity: Option<u64>,
    },
    Save {
        buyer: u64,
    },
    Clear {
        buyer: u64,
    },
    Record {
        buyer: u64,
        rid: u64,
        item: u64,
        seller: u64,
        attempt: Option<u64>,
    },
    Claim {
        buyer: u64,
        rid: u64,
        attempt: u64,
    },
    Feedback {
        buyer: u64,
        item: u64,
        up: bool,
    },
    Remember {
        scope: u8,
        key: u8,
        status: u16,
    },
    Advance {
        ms: u64,
    },
}

fn cop() -> impl Strategy<Value = COp> {
    prop_oneof![
        (0..4u8).prop_map(COp::Seller),
        (0..4u8).prop_map(COp::Buyer),
        (any::<bool>(), 1..4u64, 0..6u8).prop_map(|(buyer, user, token)| COp::Open {
            buyer,
            user,
            token
        }),
        (0..6u8).prop_map(|token| COp::Close { token }),
        (0..6u8).prop_map(|token| COp::Touch { token }),
        (1..4u64, 1..4u64, 1..4u64, 0..6u64).prop_map(|(buyer, item, quantity, available)| {
            COp::Add {
                buyer,
                item,
                quantity,
                available,
            }
        }),
        (1..4u64, 1..4u64, proptest::option::of(1..3u64)).prop_map(|(buyer, item, quantity)| {
            COp::Remove {
                buyer,
                item,
                quantity,
            }
        }),
        (1..4u64).prop_map(|buyer| COp::Save { buyer }),
        (1..4u64).prop_map(|buyer| COp::Clear { buyer }),
        (
            1..4u64,
            0..5u64,
            1..4u64,
            1..4u64,
            proptest::option::of(0..3u64)
        )
            .prop_map(|(buyer, rid, item, seller, attempt)| COp::Record {
                buyer,
                rid,
                item,
                seller,
                attempt
            }),
        (1..4u64, 0..5u64, 0..3u64).prop_map(|(buyer, rid, attempt)| COp::Claim {
            buyer,
            rid,
            attempt
        }),
        (1..4u64, 1..4u64, any::<bool>()).prop_map(|(buyer, item, up)| COp::Feedback {
            buyer,
            item,
            up
        }),
        (0..3u8, 0..3u8, 200..210u16).prop_map(|(scope, key, status)| COp::Remember {
            scope,
            key,
            status
        }),
        (0..200_000u64).prop_map(|ms| COp::Advance { ms }),
    ]
}

fn customer_commands(ops: &[COp]) -> Vec<CustomerCommand> {
    let mut at_ms = T0;
    let mut out = Vec::new();
    for op in ops {
        at_ms += 7;
        out.push(match op {
            COp::Seller(u) => CustomerCommand::CreateSeller {
                name: "s".into(),
                username: format!("u{u}"),
                password_hash: "$x".into(),
                at_ms,
            },
            COp::Buyer(u) => CustomerCommand::CreateBuyer {
                name: "b".into(),
                username: format!("u{u}"),
                password_hash: "$x".into(),
                at_ms,
            },
            COp::Open { buyer, user, token } => CustomerCommand::OpenSession {
                user: if *buyer {
                    UserId::Buyer(BuyerId(*user))
                } else {
                    UserId::Seller(SellerId(*user))
                },
                token: format!("t{token}"),
                at_ms,
            },
            COp::Close { token } => CustomerCommand::CloseSession {
                token: format!("t{token}"),
                at_ms,
            },
            COp::Touch { token } => CustomerCommand::Touch {
                token: format!("t{token}"),
                at_ms,
            },
            COp::Add {
                buyer,
                item,
                quantity,
                available,
            } => CustomerCommand::AddToCart {
                buyer: BuyerId(*buyer),
                item: ItemId::new(1, *item),
                quantity: *quantity,
                available: *available,
                at_ms,
            },
            COp::Remove {
                buyer,
                item,
                quantity,
            } => CustomerCommand::RemoveFromCart {
                buyer: BuyerId(*buyer),
                item: ItemId::new(1, *item),
                quantity: *quantity,
                at_ms,
            },
            COp::Save { buyer } => CustomerCommand::SaveCart {
                buyer: BuyerId(*buyer),
                at_ms,
            },
            COp::Clear { buyer } => CustomerCommand::ClearCart {
                buyer: BuyerId(*buyer),
                at_ms,
            },
            COp::Record {
                buyer,
                rid,
                item,
                seller,
                attempt,
            } => CustomerCommand::RecordPurchase {
                buyer: BuyerId(*buyer),
                reservation_id: *rid,
                reserved_at_ms: T0,
                lines: vec![PurchaseLine {
                    item_id: format!("1-{item}"),
                    name: "n".into(),
                    seller_id: *seller,
                    quantity: 1,
                    price_cents: 10,
                }],
                attempt: *attempt,
                at_ms,
            },
            COp::Claim {
                buyer,
                rid,
                attempt,
            } => CustomerCommand::ClaimPurchase {
                buyer: BuyerId(*buyer),
                reservation_id: *rid,
                reserved_at_ms: T0,
                attempt: *attempt,
                at_ms,
            },
            COp::Feedback { buyer, item, up } => CustomerCommand::GiveFeedback {
                buyer: BuyerId(*buyer),
                item: ItemId::new(1, *item),
                vote: if *up { Vote::Up } else { Vote::Down },
                at_ms,
            },
            COp::Remember { scope, key, status } => CustomerCommand::RememberResponse {
                scope: format!("buyer:{scope}"),
                key: format!("k{key}"),
                response: StoredResponse {
                    status: *status,
                    body: vec![*key; 3],
                },
                at_ms,
            },
            COp::Advance { ms } => {
                at_ms += ms;
                CustomerCommand::Tick { at_ms }
            }
        });
    }
    out
}

fn customer_queries(now_ms: u64) -> Vec<CustomerQuery> {
    let mut q = Vec::new();
    for i in 1..4 {
        q.push(CustomerQuery::Cart {
            buyer: BuyerId(i),
            now_ms,
        });
        q.push(CustomerQuery::Purchases { buyer: BuyerId(i) });
        q.push(CustomerQuery::Buyer { buyer: BuyerId(i) });
        q.push(CustomerQuery::Seller {
            seller: SellerId(i),
        });
        q.push(CustomerQuery::Rating {
            seller: SellerId(i),
        });
    }
    for t in 0..6 {
        q.push(CustomerQuery::Session {
            token: format!("t{t}"),
            now_ms,
        });
    }
    for u in 0..4 {
        q.push(CustomerQuery::Credentials {
            role: Role::Buyer,
            username: format!("u{u}"),
        });
    }
    for k in 0..3 {
        q.push(CustomerQuery::Remembered {
            scope: "buyer:0".into(),
            key: format!("k{k}"),
            now_ms,
        });
    }
    q
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn same_customer_commands_same_snapshot_and_answers(ops in proptest::collection::vec(cop(), 1..80)) {
        let cmds = customer_commands(&ops);
        let (mut a, mut b) = (CustomerMachine::default(), CustomerMachine::default());
        for c in &cmds {
            prop_assert_eq!(a.apply(c.clone()), b.apply(c.clone()));
        }
        prop_assert_eq!(a.snapshot(), b.snapshot());
        let mut r = CustomerMachine::default();
        r.restore(&a.snapshot()).unwrap();
        prop_assert_eq!(r.snapshot(), a.snapshot());
        let now = a.clock_ms();
        for q in customer_queries(now).iter().chain(customer_queries(now + 300_000).iter()) {
            prop_assert_eq!(r.query(q), a.query(q));
        }
    }

    /// Feeds every command once to one log, and once, twice or three times (sometimes
    /// later) with the same request id to another: same outputs, same final state.
    #[test]
    fn duplicate_request_ids_have_one_effect(
        cops in proptest::collection::vec(cop(), 1..50),
        pops in proptest::collection::vec(pop(), 1..50),
        dups in proptest::collection::vec(0..3usize, 50),
        late in proptest::collection::vec(any::<bool>(), 50),
    ) {
        runtime().block_on(async {
            let once = SingleNodeLog::in_memory(CustomerMachine::default());
            let many = SingleNodeLog::in_memory(CustomerMachine::default());
            let mut pending = Vec::new();
            for (i, c) in customer_commands(&cops).into_iter().enumerate() {
                let id = RequestId { client: 9, seq: i as u64 + 1 };
                let first = once.propose(id, c.clone()).await.unwrap();
                prop_assert_eq!(&many.propose(id, c.clone()).await.unwrap(), &first);
                for _ in 0..dups[i % dups.len()] {
                    if late[i % late.len()] {
                        pending.push((id, c.clone(), first.clone()));
                    } else {
                        prop_assert_eq!(&many.propose(id, c.clone()).await.unwrap(), &first);
                    }
                }
            }
            for (id, c, first) in pending {
                prop_assert_eq!(many.propose(id, c).await.unwrap(), first);
            }
            prop_assert_eq!(once.with_state(|s| s.snapshot()), many.with_state(|s| s.snapshot()));

            let once = SingleNodeLog::in_memory(ProductMachine::default());
            let many = SingleNodeLog::in_memory(ProductMachine::default());
            for (i, c) in product_commands(&pops).into_iter().enumerate() {
                let id = RequestId { client: 3, seq: i as u64 + 1 };
                let first = once.propose(id, c.clone()).await.unwrap();
                for _ in 0..=dups[i % dups.len()] {
                    prop_assert_eq!(&many.propose(id, c.clone()).await.unwrap(), &first);
                }
            }
            prop_assert_eq!(once.with_state(|s| s.snapshot()), many.with_state(|s| s.snapshot()));
            Ok(())
        })?;
    }
}

// ------------------------------------------------------------------------------------------
// Whole Market
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum MOp {
    AddItem {
        seller: usize,
        quantity: i64,
    },
    RemoveUnits {
        seller: usize,
        item: usize,
        quantity: Option<i64>,
    },
    AddToCart {
        buyer: usize,
        item: usize,
        quantity: i64,
    },
    Save {
        buyer: usize,
    },
    Clear {
        buyer: usize,
    },
    Purchase {
        buyer: usize,
    },
    Feedback {
        buyer: usize,
        item: usize,
        up: bool,
    },
    Advance {
        ms: u64,
    },
}

fn mop() -> impl Strategy<Value = MOp> {
    prop_oneof![
        1 => (0..2usize, 1..5i64).prop_map(|(seller, quantity)| MOp::AddItem { seller, quantity }),
        1 => (0..2usize, 0..6usize, proptest::option::of(1..4i64))
            .prop_map(|(seller, item, quantity)| MOp::RemoveUnits { seller, item, quantity }),
        3 => (0..3usize, 0..6usize, 1..4i64).prop_map(|(buyer, item, quantity)| MOp::AddToCart { buyer, item, quantity }),
        1 => (0..3usize).prop_map(|buyer| MOp::Save { buyer }),
        1 => (0..3usize).prop_map(|buyer| MOp::Clear { buyer }),
        3 => (0..3usize).prop_map(|buyer| MOp::Purchase { buyer }),
        2 => (0..3usize, 0..6usize, any::<bool>()).prop_map(|(buyer, item, up)| MOp::Feedback { buyer, item, up }),
        1 => (0..3000u64).prop_map(|ms| MOp::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn market_keeps_its_promises(ops in proptest::collection::vec(mop(), 1..60), seed in any::<u64>()) {
        runtime().block_on(async {
            let w = World::with(Arc::new(SeededApproveRate::new(0.7, seed)));
            let m = &w.market;
            let mut sellers = Vec::new();
            for s in ["s0", "s1"] {
                sellers.push(w.seller(s).await);
            }
            let mut buyers = Vec::new();
            for b in ["b0", "b1", "b2"] {
                buyers.push(w.buyer(b).await);
            }
            let mut items: Vec<String> = Vec::new();
            for (i, (token, _)) in sellers.iter().chain(sellers.iter()).take(3).enumerate() {
                let it = m.add_item(token, &item("thing", 2, &["kw"], 100 + i as i64, 4)).await.unwrap();
                items.push(it.id);
            }
            let mut bought: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
            let mut given: BTreeSet<(usize, String)> = BTreeSet::new();
            let pick = |items: &Vec<String>, i: usize| items.get(i % items.len().max(1)).cloned().unwrap_or_else(|| "0-1".into());
            for op in ops {
                match op {
                    MOp::AddItem { seller, quantity } => {
                        let it = m.add_item(&sellers[seller].0, &item("thing", 1, &["kw"], 100, quantity)).await.unwrap();
                        items.push(it.id);
                    }
                    MOp::RemoveUnits { seller, item, quantity } => {
                        let _ = m.remove_item(&sellers[seller].0, &pick(&items, item), quantity).await;
                    }
                    MOp::AddToCart { buyer, item, quantity } => {
                        let _ = m.add_to_cart(&buyers[buyer].0, &AddToCart { item_id: pick(&items, item), quantity }).await;
                    }
                    MOp::Save { buyer } => m.save_cart(&buyers[buyer].0).await.unwrap(),
                    MOp::Clear { buyer } => m.clear_cart(&buyers[buyer].0).await.unwrap(),
                    MOp::Purchase { buyer } => {
                        let (token, bid) = &buyers[buyer];
                        let units = w.units();
                        let cart = m.display_cart(token).await.unwrap();
                        let summary = w.buyer_summary(*bid);
                        match m.make_purchase(token, &PurchaseRequest { card: card() }, None).await {
                            Ok(p) => {
                                // The confirmation follows the answer, within the
                                // reservation's life (the manual clock moves only between
                                // operations): let it land before time moves.
                                m.settle().await;
                                let ids: BTreeSet<String> = p.lines.iter().map(|l| l.item_id.clone()).collect();
                                let in_cart: BTreeSet<String> = cart.items.iter().map(|l| l.item_id.clone()).collect();
                                prop_assert_eq!(&ids, &in_cart);
                                bought.entry(buyer).or_default().extend(ids);
                                prop_assert!(m.display_cart(token).await.unwrap().items.is_empty());
                            }
                            Err(MarketError::PaymentDeclined)
                            | Err(MarketError::CartEmpty)
                            | Err(MarketError::InsufficientQuantity { .. }) => {
                                prop_assert_eq!(w.units(), units, "a failed purchase changed units");
                                prop_assert_eq!(m.display_cart(token).await.unwrap(), cart);
                                prop_assert_eq!(w.buyer_summary(*bid), summary);
                            }
                            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
                        }
                    }
                    MOp::Feedback { buyer, item, up } => {
                        let id = pick(&items, item);
                        let r = m.provide_feedback(&buyers[buyer].0, &FeedbackRequest {
                            item_id: id.clone(),
                            vote: if up { Vote::Up } else { Vote::Down },
                        }).await;
                        let purchased = bought.get(&buyer).is_some_and(|b| b.contains(&id));
                        if !purchased {
                            prop_assert_eq!(r, Err(MarketError::NotPurchased { item: id }));
                        } else if given.contains(&(buyer, id.clone())) {
                            prop_assert_eq!(r, Err(MarketError::FeedbackExists { item: id }));
                        } else {
                            prop_assert_eq!(r, Ok(()));
                            given.insert((buyer, id));
                        }
                    }
                    MOp::Advance { ms } => w.clock.advance_ms(ms),
                }
                w.check_invariants();
            }
            // Every feedback counted once on its item and once on its seller.
            let mut on_items = 0;
            for id in &items {
                let it = m.get_item(id).await.unwrap();
                on_items += it.feedback.up + it.feedback.down;
            }
            let mut on_sellers = 0;
            for (_, sid) in &sellers {
                let r = m.get_seller_rating(*sid).await.unwrap();
                on_sellers += r.up + r.down;
            }
            prop_assert_eq!(on_items, given.len() as u64);
            prop_assert_eq!(on_sellers, given.len() as u64);
            // Sold units equal units purchased by buyers and sold by sellers.
            let sold: u64 = w.units().iter().map(|(_, u)| u.sold).sum();
            let purchased: u64 = buyers.iter().map(|(_, b)| w.buyer_summary(*b).items_purchased).sum();
            let by_sellers: u64 = sellers.iter().map(|(_, s)| w.seller_summary(*s).items_sold).sum();
            prop_assert_eq!(sold, purchased);
            prop_assert_eq!(sold, by_sellers);
            Ok(())
        })?;
    }
}
