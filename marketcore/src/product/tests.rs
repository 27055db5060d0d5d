//! Unit tests of the product state machine.

use super::*;

const T0: u64 = 1_795_780_800_000;

fn add(
    m: &mut ProductMachine,
    seller: u64,
    name: &str,
    category: u8,
    keywords: &[&str],
    quantity: u64,
) -> ItemId {
    match m.apply(ProductCommand::AddItem {
        seller: SellerId(seller),
        name: name.into(),
        category,
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
        condition: Condition::New,
        price_cents: 100,
        quantity,
        at_ms: T0,
    }) {
        Ok(ProductOutput::Item(item)) => item.id.parse().unwrap(),
        other => panic!("{other:?}"),
    }
}

fn search(
    m: &ProductMachine,
    category: Option<u8>,
    keywords: &[&str],
    limit: usize,
) -> Vec<String> {
    match m.query(&ProductQuery::Search {
        category,
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
        limit,
    }) {
        ProductAnswer::Items(items) => items.into_iter().map(|i| i.id).collect(),
        other => panic!("{other:?}"),
    }
}

fn units(m: &ProductMachine, id: ItemId) -> Units {
    match m.query(&ProductQuery::Units) {
        ProductAnswer::Units(u) => u.into_iter().find(|(i, _)| *i == id).unwrap().1,
        other => panic!("{other:?}"),
    }
}

fn reserve(
    m: &mut ProductMachine,
    rid: u64,
    lines: Vec<(ItemId, u64)>,
    at_ms: u64,
) -> Result<ProductOutput, MarketError> {
    m.apply(ProductCommand::Reserve {
        reservation_id: rid,
        buyer: BuyerId(1),
        lines,
        at_ms,
        expires_at_ms: at_ms + 1000,
        attempt: 1,
    })
}

fn confirm(m: &mut ProductMachine, rid: u64, at_ms: u64) -> Result<ProductOutput, MarketError> {
    m.apply(ProductCommand::Confirm {
        reservation_id: rid,
        at_ms,
    })
}

fn release(
    m: &mut ProductMachine,
    rid: u64,
    reason: ReleaseReason,
    at_ms: u64,
) -> Result<ProductOutput, MarketError> {
    m.apply(ProductCommand::Release {
        reservation_id: rid,
        reason,
        at_ms,
    })
}

#[test]
fn serials_per_category() {
    let mut m = ProductMachine::default();
    assert_eq!(add(&mut m, 1, "a", 3, &[], 1), ItemId::new(3, 1));
    assert_eq!(add(&mut m, 1, "b", 3, &[], 1), ItemId::new(3, 2));
    assert_eq!(add(&mut m, 2, "c", 0, &[], 1), ItemId::new(0, 1));
    match m.query(&ProductQuery::BySeller(SellerId(1))) {
        ProductAnswer::Items(items) => assert_eq!(items.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn search_ranks_by_distinct_matches_then_id() {
    let mut m = ProductMachine::default();
    let a = add(&mut m, 1, "Desk lamp", 3, &["led", "desk"], 1); // desk, lamp, led
    let b = add(&mut m, 1, "floor lamp", 3, &["tall"], 1); // floor, lamp, tall
    let c = add(&mut m, 1, "LED strip", 2, &["led", "strip"], 1); // led, strip
    let d = add(&mut m, 1, "chair", 3, &[], 1);
    let s = |ids: &[ItemId]| ids.iter().map(|i| i.to_string()).collect::<Vec<_>>();
    assert_eq!(search(&m, None, &["lamp", "led"], 50), s(&[a, c, b]));
    assert_eq!(search(&m, None, &["LED", "led", "strip"], 50), s(&[c, a]));
    assert_eq!(search(&m, Some(3), &["led"], 50), s(&[a]));
    assert_eq!(search(&m, None, &["lamp"], 1), s(&[a]));
    assert_eq!(
        search(&m, None, &["lam"], 50),
        Vec::<String>::new(),
        "exact words only"
    );
    assert_eq!(
        search(&m, None, &[], 50),
        s(&[c, a, b, d]),
        "by id: category 2 first"
    );
    assert_eq!(search(&m, Some(3), &[], 2), s(&[a, b]));
    // Quantity 0 hides an item from search but not from the seller's list.
    m.apply(ProductCommand::RemoveUnits {
        seller: SellerId(1),
        item: a,
        quantity: None,
        at_ms: T0,
    })
    .unwrap();
    assert_eq!(search(&m, None, &["lamp", "led"], 50), s(&[c, b]));
    assert_eq!(search(&m, Some(3), &[], 50), s(&[b, d]));
    match m.query(&ProductQuery::BySeller(SellerId(1))) {
        ProductAnswer::Items(items) => assert_eq!(items.len(), 4),
        other => panic!("{other:?}"),
    }
}

#[test]
fn owners_only_and_removal_limits() {
    let mut m = ProductMachine::default();
    let a = add(&mut m, 1, "a", 1, &[], 5);
    let price = |m: &mut ProductMachine, seller| {
        m.apply(ProductCommand::ChangePrice {
            seller: SellerId(seller),
            item: a,
            price_cents: 7,
            at_ms: T0,
        })
    };
    assert!(matches!(price(&mut m, 2), Err(MarketError::Forbidden(_))));
    assert!(matches!(
        price(&mut m, 1),
        Ok(ProductOutput::Item(Item { price_cents: 7, .. }))
    ));
    let rm = |m: &mut ProductMachine, seller, q| {
        m.apply(ProductCommand::RemoveUnits {
            seller: SellerId(seller),
            item: a,
            quantity: q,
            at_ms: T0,
        })
    };
    assert!(matches!(
        rm(&mut m, 2, Some(1)),
        Err(MarketError::Forbidden(_))
    ));
    assert_eq!(
        rm(&mut m, 1, Some(6)),
        Err(MarketError::InsufficientQuantity {
            item: a.to_string()
        })
    );
    assert!(matches!(
        rm(&mut m, 1, Some(2)),
        Ok(ProductOutput::Item(Item { quantity: 3, .. }))
    ));
    assert!(matches!(
        m.apply(ProductCommand::RemoveUnits {
            seller: SellerId(1),
            item: ItemId::new(9, 9),
            quantity: None,
            at_ms: T0
        }),
        Err(MarketError::NotFound(_))
    ));
    assert_eq!(
        units(&m, a),
        Units {
            listed: 5,
            available: 3,
            sold: 0,
            removed: 2,
            reserved: 0
        }
    );
}

#[test]
fn reservations_all_or_none_confirm_release_expire() {
    let mut m = ProductMachine::default();
    let a = add(&mut m, 1, "a", 1, &[], 5);
    let b = add(&mut m, 2, "b", 1, &[], 1);
    let before = m.snapshot();
    assert_eq!(
        reserve(&mut m, 1, vec![(a, 2), (b, 2)], T0),
        Err(MarketError::InsufficientQuantity {
            item: b.to_string()
        })
    );
    assert_eq!(m.snapshot(), before, "nothing changes");
    assert!(matches!(
        reserve(&mut m, 1, vec![(a, 1), (ItemId::new(5, 5), 1)], T0),
        Err(MarketError::NotFound(_))
    ));
    assert_eq!(reserve(&mut m, 1, vec![], T0), Err(MarketError::CartEmpty));
    let Ok(ProductOutput::Reservation(r)) = reserve(&mut m, 1, vec![(a, 1), (a, 1), (b, 1)], T0)
    else {
        panic!()
    };
    assert_eq!(r.total_cents, 300);
    assert_eq!(r.lines.len(), 2);
    assert_eq!(units(&m, a).reserved, 2);
    // Same id again: the same reservation, nothing more reserved.
    let Ok(ProductOutput::Reservation(r2)) = reserve(&mut m, 1, vec![(a, 3)], T0) else {
        panic!()
    };
    assert_eq!(r2, r);
    m.check_invariants().unwrap();
    confirm(&mut m, 1, T0).unwrap();
    confirm(&mut m, 1, T0).unwrap();
    assert_eq!(
        units(&m, a),
        Units {
            listed: 5,
            available: 3,
            sold: 2,
            removed: 0,
            reserved: 0
        }
    );
    // Release after confirm changes nothing.
    release(&mut m, 1, ReleaseReason::Abandoned, T0).unwrap();
    assert_eq!(units(&m, a).sold, 2);
    // Declined: units come back.
    reserve(&mut m, 2, vec![(a, 3)], T0).unwrap();
    assert_eq!(units(&m, a).available, 0);
    release(&mut m, 2, ReleaseReason::Declined, T0).unwrap();
    assert_eq!(units(&m, a).available, 3);
    assert!(confirm(&mut m, 2, T0).is_err());
    // Expiry by command time.
    reserve(&mut m, 3, vec![(a, 1)], T0).unwrap();
    m.apply(ProductCommand::Tick { at_ms: T0 + 999 }).unwrap();
    assert_eq!(units(&m, a).reserved, 1);
    m.apply(ProductCommand::Tick { at_ms: T0 + 1000 }).unwrap();
    assert_eq!(units(&m, a).reserved, 0);
    assert!(matches!(
        m.query(&ProductQuery::Reservation(3)),
        ProductAnswer::Reservation(Some(Reservation {
            state: ReservationState::Released(ReleaseReason::Expired),
            ..
        }))
    ));
    // Finished reservations are forgotten after the retention time.
    m.apply(ProductCommand::Tick {
        at_ms: T0 + 1000 + 600_000,
    })
    .unwrap();
    assert_eq!(
        m.query(&ProductQuery::Reservation(3)),
        ProductAnswer::Reservation(None)
    );
    m.check_invariants().unwrap();
}

#[test]
fn a_late_confirmation_sells_what_is_still_available() {
    let mut m = ProductMachine::default();
    let a = add(&mut m, 1, "a", 1, &[], 3);
    let b = add(&mut m, 2, "b", 1, &[], 1);
    // Reservation 1 lapses with its units still there: confirming it later sells them.
    reserve(&mut m, 1, vec![(a, 2)], T0).unwrap();
    m.apply(ProductCommand::Tick { at_ms: T0 + 1000 }).unwrap();
    assert_eq!(units(&m, a).available, 3);
    let late = T0 + 5000;
    let Ok(ProductOutput::Reservation(r)) = confirm(&mut m, 1, late) else {
        panic!()
    };
    assert_eq!(r.state, ReservationState::Confirmed);
    assert_eq!(
        units(&m, a),
        Units {
            listed: 3,
            available: 1,
            sold: 2,
            removed: 0,
            reserved: 0
        }
    );
    // Confirming again changes nothing; releasing a confirmed one changes nothing.
    confirm(&mut m, 1, late).unwrap();
    release(&mut m, 1, ReleaseReason::Abandoned, late).unwrap();
    assert_eq!(units(&m, a).sold, 2);
    // Remembered for the full retention time from the late confirmation.
    m.apply(ProductCommand::Tick {
        at_ms: T0 + 1000 + 600_000,
    })
    .unwrap();
    assert!(matches!(
        m.query(&ProductQuery::Reservation(1)),
        ProductAnswer::Reservation(Some(_))
    ));
    m.apply(ProductCommand::Tick {
        at_ms: late + 600_000,
    })
    .unwrap();
    assert_eq!(
        m.query(&ProductQuery::Reservation(1)),
        ProductAnswer::Reservation(None)
    );
    // Reservation 2 lapses and another buyer takes a line's last unit: the late
    // confirmation fails and changes nothing, for any of its lines.
    let now = late + 600_000;
    reserve(&mut m, 2, vec![(a, 1), (b, 1)], now).unwrap();
    m.apply(ProductCommand::Tick { at_ms: now + 1000 }).unwrap();
    reserve(&mut m, 3, vec![(b, 1)], now + 1000).unwrap();
    let before = m.snapshot();
    assert!(matches!(
        confirm(&mut m, 2, now + 1000),
        Err(MarketError::Unavailable(_))
    ));
    assert_eq!(m.snapshot(), before, "nothing changes");
    assert_eq!(units(&m, a).available, 1);
    // Released for a declined payment: never confirmed later.
    reserve(&mut m, 4, vec![(a, 1)], now + 1000).unwrap();
    release(&mut m, 4, ReleaseReason::Declined, now + 1000).unwrap();
    assert!(confirm(&mut m, 4, now + 1000).is_err());
    m.check_invariants().unwrap();
}

#[test]
fn item_feedback_once_per_buyer() {
    let mut m = ProductMachine::default();
    let a = add(&mut m, 1, "a", 1, &[], 5);
    for _ in 0..2 {
        m.apply(ProductCommand::ItemFeedback {
            buyer: BuyerId(1),
            item: a,
            vote: Vote::Up,
            at_ms: T0,
        })
        .unwrap();
    }
    m.apply(ProductCommand::ItemFeedback {
        buyer: BuyerId(2),
        item: a,
        vote: Vote::Down,
        at_ms: T0,
    })
    .unwrap();
    match m.query(&ProductQuery::Item(a)) {
        ProductAnswer::Item(Some(item)) => assert_eq!(item.feedback, Feedback { up: 1, down: 1 }),
        other => panic!("{other:?}"),
    }
}

#[test]
fn snapshot_restore_same_answers() {
    let mut m = ProductMachine::default();
    add(&mut m, 1, "Desk lamp", 3, &["led"], 4);
    add(&mut m, 2, "chair", 1, &["wood"], 2);
    reserve(&mut m, 9, vec![(ItemId::new(3, 1), 1)], T0).unwrap();
    let mut r = ProductMachine::default();
    r.restore(&m.snapshot()).unwrap();
    assert_eq!(r.snapshot(), m.snapshot());
    assert!(m.snapshot().starts_with(b"MKPR\x01\x00"));
    let mut legacy = ProductMachine::default();
    legacy.restore(&postcard::to_stdvec(&m).unwrap()).unwrap();
    assert_eq!(
        legacy.snapshot(),
        m.snapshot(),
        "a snapshot without the header restores"
    );
    let e = ProductMachine::default()
        .restore(&crate::customer::CustomerMachine::default().snapshot())
        .unwrap_err();
    assert!(e.0.contains("not a MKPR snapshot"), "{e}");
    for q in [
        ProductQuery::Search {
            category: None,
            keywords: vec!["led".into()],
            limit: 50,
        },
        ProductQuery::Item(ItemId::new(1, 1)),
        ProductQuery::BySeller(SellerId(2)),
        ProductQuery::Reservation(9),
        ProductQuery::Units,
    ] {
        assert_eq!(r.query(&q), m.query(&q));
    }
    assert!(r.restore(&[1, 2, 3]).is_err());
}

#[test]
fn search_agrees_with_a_scan_of_every_item() {
    // Seeded random catalogues and queries against the definition: items on sale (in the
    // category, if given) matching at least one distinct keyword, by matches (most first)
    // then id, at most `limit`.
    use rand::{Rng, SeedableRng};
    const WORDS: [&str; 6] = ["lamp", "led", "desk", "oak", "red", "strip"];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for round in 0..20 {
        let mut m = ProductMachine::default();
        let mut catalogue = Vec::new();
        for i in 0..rng.gen_range(0..120) {
            let keywords: Vec<&str> = (0..rng.gen_range(0..3))
                .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
                .collect();
            let name = format!("{} thing{i}", WORDS[rng.gen_range(0..WORDS.len())]);
            let category = rng.gen_range(0..3);
            let quantity = rng.gen_range(0..3);
            let id = add(&mut m, 1, &name, category, &keywords, quantity);
            let mut words: BTreeSet<String> = keywords.iter().map(|k| k.to_string()).collect();
            words.extend(name.split(' ').map(str::to_string));
            catalogue.push((id, category, quantity, words));
        }
        for _ in 0..30 {
            let query: Vec<&str> = (0..rng.gen_range(1..4))
                .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
                .collect();
            let category = rng.gen_bool(0.3).then(|| rng.gen_range(0..3));
            let limit = rng.gen_range(0..15);
            let distinct: BTreeSet<&str> = query.iter().copied().collect();
            let mut expected: Vec<(std::cmp::Reverse<usize>, ItemId)> = catalogue
                .iter()
                .filter(|(_, c, q, _)| *q > 0 && category.is_none_or(|want| want == *c))
                .map(|(id, _, _, words)| {
                    let n = distinct.iter().filter(|k| words.contains(**k)).count();
                    (std::cmp::Reverse(n), *id)
                })
                .filter(|(n, _)| n.0 > 0)
                .collect();
            expected.sort();
            expected.truncate(limit);
            let expected: Vec<String> = expected.iter().map(|(_, id)| id.to_string()).collect();
            assert_eq!(
                search(&m, category, &query, limit),
                expected,
                "round {round}: {query:?} in {category:?}, limit {limit}"
            );
        }
    }
}
