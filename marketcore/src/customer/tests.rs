//! Unit tests of the customer state machine, command by command.

use super::*;

const T0: u64 = 1_795_780_800_000;

fn m() -> CustomerMachine {
    CustomerMachine::default()
}

fn ok(m: &mut CustomerMachine, c: CustomerCommand) -> CustomerOutput {
    m.apply(c).expect("command should succeed")
}

fn buyer(m: &mut CustomerMachine, username: &str, at_ms: u64) -> BuyerId {
    match ok(
        m,
        CustomerCommand::CreateBuyer {
            name: "B".into(),
            username: username.into(),
            password_hash: "$h".into(),
            at_ms,
        },
    ) {
        CustomerOutput::BuyerCreated(id) => id,
        other => panic!("{other:?}"),
    }
}

fn seller(m: &mut CustomerMachine, username: &str, at_ms: u64) -> SellerId {
    match ok(
        m,
        CustomerCommand::CreateSeller {
            name: "S".into(),
            username: username.into(),
            password_hash: "$h".into(),
            at_ms,
        },
    ) {
        CustomerOutput::SellerCreated(id) => id,
        other => panic!("{other:?}"),
    }
}

fn open(m: &mut CustomerMachine, user: UserId, token: &str, at_ms: u64) {
    ok(
        m,
        CustomerCommand::OpenSession {
            user,
            token: token.into(),
            at_ms,
        },
    );
}

fn session(m: &CustomerMachine, token: &str, now_ms: u64) -> Option<SessionInfo> {
    match m.query(&CustomerQuery::Session {
        token: token.into(),
        now_ms,
    }) {
        CustomerAnswer::Session(s) => s,
        other => panic!("{other:?}"),
    }
}

fn cart(m: &CustomerMachine, b: BuyerId, now_ms: u64) -> Cart {
    match m.query(&CustomerQuery::Cart { buyer: b, now_ms }) {
        CustomerAnswer::Cart(Some(c)) => c,
        other => panic!("{other:?}"),
    }
}

fn add(
    m: &mut CustomerMachine,
    b: BuyerId,
    item: ItemId,
    q: u64,
    available: u64,
    at_ms: u64,
) -> Result<CustomerOutput, MarketError> {
    m.apply(CustomerCommand::AddToCart {
        buyer: b,
        item,
        quantity: q,
        available,
        at_ms,
    })
}

#[test]
fn ids_and_username_namespaces() {
    let mut m = m();
    assert_eq!(seller(&mut m, "ada", T0), SellerId(1));
    assert_eq!(seller(&mut m, "Ada", T0), SellerId(2));
    assert_eq!(buyer(&mut m, "ada", T0), BuyerId(1));
    let again = m.apply(CustomerCommand::CreateSeller {
        name: "x".into(),
        username: "ada".into(),
        password_hash: "$h".into(),
        at_ms: T0,
    });
    assert_eq!(again, Err(MarketError::UsernameTaken("ada".into())));
    assert!(matches!(
        m.query(&CustomerQuery::Credentials {
            role: Role::Buyer,
            username: "ada".into()
        }),
        CustomerAnswer::Credentials(Some((UserId::Buyer(BuyerId(1)), _)))
    ));
    assert_eq!(
        m.query(&CustomerQuery::Credentials {
            role: Role::Buyer,
            username: "Ada".into()
        }),
        CustomerAnswer::Credentials(None)
    );
}

#[test]
fn sessions_expire_by_command_time_and_reset_the_cart() {
    let mut m = m();
    let b = buyer(&mut m, "b", T0);
    open(&mut m, UserId::Buyer(b), "t1", T0);
    let item = ItemId::new(1, 1);
    add(&mut m, b, item, 2, 5, T0).unwrap();
    ok(
        &mut m,
        CustomerCommand::SaveCart {
            buyer: b,
            at_ms: T0,
        },
    );
    add(&mut m, b, item, 1, 5, T0).unwrap();
    assert_eq!(cart(&m, b, T0).items[0].quantity, 3);
    assert!(!cart(&m, b, T0).saved);
    // Alive at 299.999 s, gone at 300 s, even before any command sweeps it.
    assert!(session(&m, "t1", T0 + 299_999).is_some());
    assert!(session(&m, "t1", T0 + 300_000).is_none());
    assert_eq!(cart(&m, b, T0 + 300_000).items[0].quantity, 2);
    assert!(cart(&m, b, T0 + 300_000).saved);
    // A touch keeps it alive.
    ok(
        &mut m,
        CustomerCommand::Touch {
            token: "t1".into(),
            at_ms: T0 + 200_000,
        },
    );
    assert!(session(&m, "t1", T0 + 499_999).is_some());
    // Any later command sweeps it.
    ok(
        &mut m,
        CustomerCommand::Tick {
            at_ms: T0 + 500_000,
        },
    );
    assert_eq!(m.session_count(), 0);
    assert_eq!(cart(&m, b, T0 + 500_000).items[0].quantity, 2);
    assert_eq!(
        m.apply(CustomerCommand::Touch {
            token: "t1".into(),
            at_ms: T0 + 500_001
        }),
        Err(MarketError::Unauthenticated(
            "unknown or ended session".into()
        ))
    );
}

#[test]
fn logout_resets_cart_and_clear_empties_both() {
    let mut m = m();
    let b = buyer(&mut m, "b", T0);
    open(&mut m, UserId::Buyer(b), "t1", T0);
    open(&mut m, UserId::Buyer(b), "t2", T0);
    let i1 = ItemId::new(1, 1);
    add(&mut m, b, i1, 1, 1, T0).unwrap();
    assert_eq!(
        add(&mut m, b, i1, 1, 1, T0),
        Err(MarketError::InsufficientQuantity { item: "1-1".into() })
    );
    ok(
        &mut m,
        CustomerCommand::CloseSession {
            token: "t1".into(),
            at_ms: T0,
        },
    );
    assert!(cart(&m, b, T0).items.is_empty());
    assert!(session(&m, "t2", T0).is_some());
    add(&mut m, b, i1, 1, 1, T0).unwrap();
    ok(
        &mut m,
        CustomerCommand::SaveCart {
            buyer: b,
            at_ms: T0,
        },
    );
    ok(
        &mut m,
        CustomerCommand::CloseSession {
            token: "t2".into(),
            at_ms: T0,
        },
    );
    assert_eq!(cart(&m, b, T0).items.len(), 1);
    ok(
        &mut m,
        CustomerCommand::ClearCart {
            buyer: b,
            at_ms: T0,
        },
    );
    assert_eq!(cart(&m, b, T0), Cart::default());
    assert!(m
        .apply(CustomerCommand::CloseSession {
            token: "t2".into(),
            at_ms: T0
        })
        .is_err());
}

#[test]
fn sessions_per_user_are_bounded() {
    let mut m = CustomerMachine::new(CustomerConfig {
        sessions_per_user_max: 2,
        ..CustomerConfig::default()
    });
    let s = seller(&mut m, "s", T0);
    open(&mut m, UserId::Seller(s), "a", T0);
    open(&mut m, UserId::Seller(s), "b", T0 + 1);
    open(&mut m, UserId::Seller(s), "c", T0 + 2);
    assert!(session(&m, "a", T0 + 3).is_none());
    assert!(session(&m, "b", T0 + 3).is_some());
    assert!(session(&m, "c", T0 + 3).is_some());
    assert!(m
        .apply(CustomerCommand::OpenSession {
            user: UserId::Seller(SellerId(99)),
            token: "z".into(),
            at_ms: T0
        })
        .is_err());
}

fn line(item: &str, seller: u64, q: u64, p: u64) -> PurchaseLine {
    PurchaseLine {
        item_id: item.into(),
        name: "n".into(),
        seller_id: seller,
        quantity: q,
        price_cents: p,
    }
}

#[test]
fn purchases_are_recorded_once_per_reservation_and_gate_feedback() {
    let mut m = m();
    let s = seller(&mut m, "s", T0);
    let b = buyer(&mut m, "b", T0);
    let record = |m: &mut CustomerMachine, rid, at_ms| {
        m.apply(CustomerCommand::RecordPurchase {
            buyer: b,
            reservation_id: rid,
            reserved_at_ms: T0,
            lines: vec![line("1-1", s.0, 2, 100), line("2-1", s.0, 1, 50)],
            attempt: None,
            at_ms,
        })
    };
    let p1 = record(&mut m, 77, T0).unwrap();
    assert_eq!(record(&mut m, 77, T0 + 5).unwrap(), p1);
    let CustomerOutput::Purchase(p1) = p1 else {
        panic!()
    };
    assert_eq!(p1.purchase_id, 1);
    assert_eq!(p1.total_cents, 250);
    assert_eq!(p1.created_at, "2026-11-27T12:00:00Z");
    record(&mut m, 78, T0 + 1000).unwrap();
    // The same reservation id made again later (after the product database forgot the
    // first one) is another purchase.
    let again = m.apply(CustomerCommand::RecordPurchase {
        buyer: b,
        reservation_id: 77,
        reserved_at_ms: T0 + 700_000,
        lines: vec![line("1-1", s.0, 1, 100)],
        attempt: None,
        at_ms: T0 + 700_000,
    });
    assert!(matches!(
        again,
        Ok(CustomerOutput::Purchase(Purchase { purchase_id: 3, .. }))
    ));
    match m.query(&CustomerQuery::Purchases { buyer: b }) {
        CustomerAnswer::Purchases(Some(ps)) => {
            assert_eq!(
                ps.iter().map(|p| p.purchase_id).collect::<Vec<_>>(),
                vec![3, 2, 1]
            )
        }
        other => panic!("{other:?}"),
    }
    // A read shares the recorded purchases instead of copying them (a long history is read
    // often), and they travel as the plain purchases they are.
    let (CustomerAnswer::Purchases(Some(a)), CustomerAnswer::Purchases(Some(b2))) = (
        m.query(&CustomerQuery::Purchases { buyer: b }),
        m.query(&CustomerQuery::Purchases { buyer: b }),
    ) else {
        panic!("no history")
    };
    assert!(a.iter().zip(&b2).all(|(x, y)| Arc::ptr_eq(x, y)));
    assert_eq!(
        postcard::to_stdvec(&a).unwrap(),
        postcard::to_stdvec(&a.iter().map(|p| Purchase::clone(p)).collect::<Vec<_>>()).unwrap()
    );
    match m.query(&CustomerQuery::Seller { seller: s }) {
        CustomerAnswer::Seller(Some(sum)) => assert_eq!(sum.items_sold, 7),
        other => panic!("{other:?}"),
    }
    match m.query(&CustomerQuery::Buyer { buyer: b }) {
        CustomerAnswer::Buyer(Some(sum)) => assert_eq!(sum.items_purchased, 7),
        other => panic!("{other:?}"),
    }
    let fb = |m: &mut CustomerMachine, item: ItemId, vote| {
        m.apply(CustomerCommand::GiveFeedback {
            buyer: b,
            item,
            vote,
            at_ms: T0,
        })
    };
    assert_eq!(
        fb(&mut m, ItemId::new(3, 1), Vote::Up),
        Err(MarketError::NotPurchased { item: "3-1".into() })
    );
    assert_eq!(
        fb(&mut m, ItemId::new(1, 1), Vote::Up),
        Ok(CustomerOutput::Feedback {
            seller: s,
            vote: Vote::Up,
            fresh: true
        })
    );
    assert_eq!(
        fb(&mut m, ItemId::new(1, 1), Vote::Down),
        Ok(CustomerOutput::Feedback {
            seller: s,
            vote: Vote::Up,
            fresh: false
        })
    );
    fb(&mut m, ItemId::new(2, 1), Vote::Down).unwrap();
    assert_eq!(
        m.query(&CustomerQuery::Rating { seller: s }),
        CustomerAnswer::Rating(Some(Rating {
            seller_id: s.0,
            up: 1,
            down: 1
        }))
    );
    assert_eq!(
        m.apply(CustomerCommand::RecordPurchase {
            buyer: b,
            reservation_id: 99,
            reserved_at_ms: T0,
            lines: vec![],
            attempt: None,
            at_ms: T0
        }),
        Err(MarketError::CartEmpty)
    );
}

#[test]
fn remembered_responses_expire_and_are_bounded() {
    let mut m = CustomerMachine::new(CustomerConfig {
        idempotency_entries_max: 2,
        idempotency_body_bytes_max: 10,
        ..CustomerConfig::default()
    });
    let remember = |m: &mut CustomerMachine, key: &str, status, at_ms| {
        m.apply(CustomerCommand::RememberResponse {
            scope: "buyer:1".into(),
            key: key.into(),
            response: StoredResponse {
                status,
                body: b"{}".to_vec(),
            },
            at_ms,
        })
    };
    let lookup =
        |m: &CustomerMachine, key: &str, now_ms| match m.query(&CustomerQuery::Remembered {
            scope: "buyer:1".into(),
            key: key.into(),
            now_ms,
        }) {
            CustomerAnswer::Remembered(r) => r.map(|r| r.status),
            other => panic!("{other:?}"),
        };
    remember(&mut m, "k1", 201, T0).unwrap();
    // The first response wins.
    assert_eq!(
        remember(&mut m, "k1", 409, T0 + 1),
        Ok(CustomerOutput::Remembered(StoredResponse {
            status: 201,
            body: b"{}".to_vec()
        }))
    );
    assert_eq!(lookup(&m, "k1", T0 + 599_999), Some(201));
    assert_eq!(lookup(&m, "k1", T0 + 600_000), None);
    remember(&mut m, "k2", 200, T0 + 2).unwrap();
    remember(&mut m, "k3", 200, T0 + 3).unwrap();
    assert_eq!(lookup(&m, "k1", T0 + 3), None, "evicted as the oldest");
    assert_eq!(lookup(&m, "k3", T0 + 3), Some(200));
    assert!(m
        .apply(CustomerCommand::RememberResponse {
            scope: "s".into(),
            key: "big".into(),
            response: StoredResponse {
                status: 200,
                body: vec![0; 11]
            },
            at_ms: T0
        })
        .is_err());
    ok(
        &mut m,
        CustomerCommand::Tick {
            at_ms: T0 + 700_000,
        },
    );
    assert_eq!(lookup(&m, "k3", T0 + 3), None, "swept by time");
    assert_eq!(m.remembered_bytes, 0);
}

#[test]
fn remembered_bytes_are_bounded() {
    let mut m = CustomerMachine::new(CustomerConfig {
        idempotency_total_bytes_max: 10,
        ..CustomerConfig::default()
    });
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        m.apply(CustomerCommand::RememberResponse {
            scope: "s".into(),
            key: key.to_string(),
            response: StoredResponse {
                status: 200,
                body: vec![0; 4],
            },
            at_ms: T0 + i as u64,
        })
        .unwrap();
    }
    assert_eq!(m.remembered.len(), 2);
    assert_eq!(m.remembered_bytes, 8);
}

#[test]
fn carts_are_bounded() {
    let mut m = CustomerMachine::new(CustomerConfig {
        cart_lines_max: 2,
        ..CustomerConfig::default()
    });
    let b = buyer(&mut m, "b", T0);
    add(&mut m, b, ItemId::new(1, 1), 1, 9, T0).unwrap();
    add(&mut m, b, ItemId::new(1, 2), 1, 9, T0).unwrap();
    add(&mut m, b, ItemId::new(1, 2), 1, 9, T0).unwrap();
    assert!(matches!(
        add(&mut m, b, ItemId::new(1, 3), 1, 9, T0),
        Err(MarketError::InvalidArgument { .. })
    ));
}

#[test]
fn cart_lines_remove_and_saved_flag() {
    let mut m = m();
    let b = buyer(&mut m, "b", T0);
    let i1 = ItemId::new(1, 1);
    let i2 = ItemId::new(1, 2);
    add(&mut m, b, i2, 3, 9, T0).unwrap();
    add(&mut m, b, i1, 1, 9, T0).unwrap();
    let c = cart(&m, b, T0);
    assert_eq!(c.items[0].item_id, "1-1", "ordered by id");
    assert!(!c.saved);
    ok(
        &mut m,
        CustomerCommand::SaveCart {
            buyer: b,
            at_ms: T0,
        },
    );
    assert!(cart(&m, b, T0).saved);
    let rm = |m: &mut CustomerMachine, item, quantity| {
        m.apply(CustomerCommand::RemoveFromCart {
            buyer: b,
            item,
            quantity,
            at_ms: T0,
        })
    };
    match rm(&mut m, i2, Some(2)).unwrap() {
        CustomerOutput::Cart(c) => {
            assert_eq!(c.items[1].quantity, 1);
            assert!(!c.saved);
        }
        other => panic!("{other:?}"),
    }
    rm(&mut m, i2, Some(5)).unwrap();
    rm(&mut m, i1, None).unwrap();
    assert!(cart(&m, b, T0).items.is_empty());
    assert!(!cart(&m, b, T0).saved, "an empty cart is never saved");
    assert!(matches!(
        rm(&mut m, i1, None),
        Err(MarketError::NotFound(_))
    ));
    assert!(matches!(
        m.apply(CustomerCommand::SaveCart {
            buyer: BuyerId(9),
            at_ms: T0
        }),
        Err(MarketError::NotFound(_))
    ));
}

#[test]
fn snapshot_restore_and_determinism() {
    let script = |m: &mut CustomerMachine| {
        let s = seller(m, "s", T0);
        let b = buyer(m, "b", T0);
        open(m, UserId::Buyer(b), "tok", T0);
        add(m, b, ItemId::new(4, 1), 2, 3, T0 + 1).unwrap();
        let _ = m.apply(CustomerCommand::RecordPurchase {
            buyer: b,
            reservation_id: 5,
            reserved_at_ms: T0,
            lines: vec![line("4-1", s.0, 2, 10)],
            attempt: None,
            at_ms: T0 + 2,
        });
        let _ = m.apply(CustomerCommand::GiveFeedback {
            buyer: b,
            item: ItemId::new(4, 1),
            vote: Vote::Up,
            at_ms: T0 + 3,
        });
    };
    let mut a = m();
    let mut b = m();
    script(&mut a);
    script(&mut b);
    assert_eq!(a.snapshot(), b.snapshot());
    let mut c = m();
    c.restore(&a.snapshot()).unwrap();
    assert_eq!(c, a);
    // Versioned: the header names the machine and the layout; a snapshot written before the
    // header existed still restores; another layout version is refused, saying so.
    assert!(a.snapshot().starts_with(b"MKCU\x01\x00"));
    let mut d = m();
    d.restore(&postcard::to_stdvec(&a).unwrap()).unwrap();
    assert_eq!(d, a);
    let mut newer = a.snapshot();
    newer[4] = 2;
    let e = m().restore(&newer).unwrap_err();
    assert!(e.0.contains("format version 2"), "{e}");
    assert_eq!(
        c.query(&CustomerQuery::Purchases { buyer: BuyerId(1) }),
        a.query(&CustomerQuery::Purchases { buyer: BuyerId(1) })
    );
    assert!(c.restore(b"garbage").is_err());
}

/// A buyer "bea" logged in as "tb", a seller "sam" as "ts", and an item id.
fn buyer_and_seller_logged_in() -> (CustomerMachine, BuyerId, SellerId, ItemId) {
    let mut m = m();
    let b = buyer(&mut m, "bea", T0);
    let s = seller(&mut m, "sam", T0);
    open(&mut m, UserId::Buyer(b), "tb", T0);
    open(&mut m, UserId::Seller(s), "ts", T0);
    (m, b, s, "1-1".parse().expect("item id"))
}

#[test]
fn one_read_answers_for_a_session_and_a_remembered_response() {
    let (mut m, b, s, item) = buyer_and_seller_logged_in();
    add(&mut m, b, item, 2, 5, T0 + 1).expect("add");
    ok(
        &mut m,
        CustomerCommand::RememberResponse {
            scope: "t:1".into(),
            key: "k".into(),
            response: StoredResponse {
                status: 201,
                body: b"{}".to_vec(),
            },
            at_ms: T0 + 2,
        },
    );
    let read = |m: &CustomerMachine, token: &str, role: Role, about, now_ms| match m.query(
        &CustomerQuery::ForSession {
            token: token.into(),
            role,
            now_ms,
            about,
            remembered: Some(("t:1".into(), "k".into())),
        },
    ) {
        CustomerAnswer::ForSession {
            session,
            about,
            remembered,
        } => (session.map(|s| s.user), about.map(|a| *a), remembered),
        other => panic!("{other:?}"),
    };
    // The buyer's session, its cart, and the remembered response, in one answer.
    let (user, about, remembered) = read(&m, "tb", Role::Buyer, Some(UserQuery::Cart), T0 + 3);
    assert_eq!(user, Some(UserId::Buyer(b)));
    assert_eq!(about, Some(CustomerAnswer::Cart(Some(cart(&m, b, T0 + 3)))));
    assert_eq!(remembered.map(|r| r.status), Some(201));
    let (_, about, _) = read(&m, "tb", Role::Buyer, Some(UserQuery::Purchases), T0 + 3);
    assert_eq!(about, Some(CustomerAnswer::Purchases(Some(Vec::new()))));
    // The seller's rating; a query that does not fit the role answers nothing about the user.
    let (user, about, _) = read(&m, "ts", Role::Seller, Some(UserQuery::Rating), T0 + 3);
    assert_eq!(user, Some(UserId::Seller(s)));
    assert!(matches!(about, Some(CustomerAnswer::Rating(Some(_)))));
    assert_eq!(
        read(&m, "ts", Role::Seller, Some(UserQuery::Cart), T0 + 3).1,
        None
    );
    // The other role's token: the session is reported (the Market names the mistake), but
    // nothing about its user is read.
    let (user, about, _) = read(&m, "tb", Role::Seller, Some(UserQuery::Rating), T0 + 3);
    assert_eq!((user, about), (Some(UserId::Buyer(b)), None));
    // Unknown and expired sessions: no user, no answer, but the remembered response still.
    let (user, about, remembered) = read(&m, "nope", Role::Buyer, Some(UserQuery::Cart), T0 + 3);
    assert_eq!((user, about), (None, None));
    assert!(remembered.is_some());
    let later = T0 + m.config().session_idle_ms + 10;
    let (user, about, remembered) = read(&m, "tb", Role::Buyer, Some(UserQuery::Cart), later);
    assert_eq!((user, about), (None, None));
    assert!(
        remembered.is_some(),
        "kept 10 minutes, longer than the session"
    );
}

#[test]
fn responses_are_remembered_in_batches() {
    let mut m = m();
    let entry = |key: &str, status: u16, body: &[u8]| RememberEntry {
        scope: "t:1".into(),
        key: key.into(),
        response: StoredResponse {
            status,
            body: body.to_vec(),
        },
    };
    let too_large = vec![b'x'; m.config().idempotency_body_bytes_max + 1];
    ok(
        &mut m,
        CustomerCommand::RememberResponses {
            entries: vec![
                entry("a", 201, b"first"),
                entry("big", 200, &too_large),
                entry("a", 200, b"second"),
                entry("b", 204, b""),
            ],
            at_ms: T0,
        },
    );
    let lookup = |m: &CustomerMachine, key: &str| match m.query(&CustomerQuery::Remembered {
        scope: "t:1".into(),
        key: key.into(),
        now_ms: T0,
    }) {
        CustomerAnswer::Remembered(r) => r,
        other => panic!("{other:?}"),
    };
    // The first response for a key wins, within a batch as across commands; an oversized
    // body is skipped without losing the rest of the batch.
    assert_eq!(lookup(&m, "a").map(|r| r.body), Some(b"first".to_vec()));
    assert_eq!(lookup(&m, "b").map(|r| r.status), Some(204));
    assert_eq!(lookup(&m, "big"), None);
}

#[test]
fn a_cart_command_checks_its_session_in_the_same_write() {
    let (mut m, b, _, item) = buyer_and_seller_logged_in();
    add(&mut m, b, item, 3, 5, T0 + 1).expect("add");
    let for_session = |token: &str, role: Role, command: SessionCommand, at_ms: u64| {
        CustomerCommand::ForSession {
            token: token.into(),
            role,
            command,
            at_ms,
        }
    };
    let remove = SessionCommand::RemoveFromCart {
        item,
        quantity: Some(1),
    };
    // A live buyer session: the command runs for its buyer and refreshes the session.
    let later = T0 + 60_000;
    match m.apply(for_session("tb", Role::Buyer, remove.clone(), later)) {
        Ok(CustomerOutput::Cart(c)) => assert_eq!(c.items[0].quantity, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        session(&m, "tb", later).map(|s| s.last_active_ms),
        Some(later)
    );
    assert_eq!(
        m.apply(for_session(
            "tb",
            Role::Buyer,
            SessionCommand::SaveCart,
            later
        )),
        Ok(CustomerOutput::Done)
    );
    // Unknown token, the other role's token, a buyer token on a seller route: refused,
    // nothing changes.
    let before = m.clone();
    for (token, role) in [
        ("nope", Role::Buyer),
        ("ts", Role::Buyer),
        ("tb", Role::Seller),
    ] {
        let out = m.apply(for_session(token, role, SessionCommand::ClearCart, later));
        assert!(
            matches!(out, Err(MarketError::Unauthenticated(_))),
            "{token} as {role:?}: {out:?}"
        );
    }
    assert_eq!(cart(&m, b, later), cart(&before, b, later));
    // Idle past the limit: the session ended (the cart went back to the saved one), refused.
    let expired = later + m.config().session_idle_ms;
    let out = m.apply(for_session(
        "tb",
        Role::Buyer,
        SessionCommand::ClearCart,
        expired,
    ));
    assert!(
        matches!(out, Err(MarketError::Unauthenticated(_))),
        "{out:?}"
    );
    assert_eq!(cart(&m, b, expired).items[0].quantity, 2, "saved cart kept");
}

/// A retry's claim fences earlier attempts' records sent beside their confirmations, tells
/// a retry about a record that landed first, never stops a record made after the
/// confirmation, and is forgotten after its time.
#[test]
fn purchase_claims_fence_records_sent_beside_the_confirmation() {
    let mut m = m();
    let s = seller(&mut m, "s", T0);
    let b = buyer(&mut m, "b", T0);
    let record = |rid, attempt, at_ms| CustomerCommand::RecordPurchase {
        buyer: b,
        reservation_id: rid,
        reserved_at_ms: T0,
        lines: vec![line("1-1", s.0, 1, 100)],
        attempt,
        at_ms,
    };
    let claim = |rid, attempt, at_ms| CustomerCommand::ClaimPurchase {
        buyer: b,
        reservation_id: rid,
        reserved_at_ms: T0,
        attempt,
        at_ms,
    };
    let history = |m: &CustomerMachine| match m.query(&CustomerQuery::Purchases { buyer: b }) {
        CustomerAnswer::Purchases(Some(ps)) => ps.len(),
        other => panic!("{other:?}"),
    };

    // Attempt 2 claims reservation 7: attempt 1's record beside its confirmation is refused
    // (nothing changes), attempt 2's own is taken.
    assert_eq!(m.apply(claim(7, 2, T0 + 1)), Ok(CustomerOutput::Done));
    assert_eq!(
        m.apply(record(7, Some(1), T0 + 2)),
        Ok(CustomerOutput::Superseded)
    );
    assert_eq!(history(&m), 0);
    let Ok(CustomerOutput::Purchase(p)) = m.apply(record(7, Some(2), T0 + 3)) else {
        panic!("the claiming attempt records")
    };
    // Once recorded, a claim answers the purchase (the retry only confirms), and every kind
    // of record answers it again.
    assert_eq!(
        m.apply(claim(7, 3, T0 + 4)),
        Ok(CustomerOutput::Purchase(p.clone()))
    );
    assert_eq!(
        m.apply(record(7, Some(1), T0 + 5)),
        Ok(CustomerOutput::Purchase(p.clone()))
    );
    assert_eq!(history(&m), 1);

    // A record made after the confirmation is never refused.
    m.apply(claim(8, 5, T0 + 6)).unwrap();
    assert!(matches!(
        m.apply(record(8, None, T0 + 7)),
        Ok(CustomerOutput::Purchase(_))
    ));
    assert_eq!(history(&m), 2);

    // A claim is forgotten after its time: a later record beside a confirmation is taken.
    m.apply(claim(9, 5, T0 + 8)).unwrap();
    let survives = m.clone();
    let later = T0 + 8 + PURCHASE_CLAIM_TTL_MS;
    m.apply(CustomerCommand::Tick { at_ms: later }).unwrap();
    assert!(matches!(
        m.apply(record(9, Some(1), later)),
        Ok(CustomerOutput::Purchase(_))
    ));
    // ... and it survives a snapshot until then.
    let mut restored = CustomerMachine::default();
    restored.restore(&survives.snapshot()).unwrap();
    assert_eq!(
        restored.apply(record(9, Some(1), later - 1)),
        Ok(CustomerOutput::Superseded)
    );
    // An unknown buyer cannot claim.
    assert!(m
        .apply(CustomerCommand::ClaimPurchase {
            buyer: BuyerId(99),
            reservation_id: 10,
            reserved_at_ms: T0,
            attempt: 1,
            at_ms: later,
        })
        .is_err());
}

#[test]
fn feedback_checks_its_session_in_the_same_write_and_names_the_buyer() {
    let (mut m, b, s, item) = buyer_and_seller_logged_in();
    m.apply(CustomerCommand::RecordPurchase {
        buyer: b,
        reservation_id: 5,
        reserved_at_ms: T0,
        lines: vec![line("1-1", s.0, 1, 100)],
        attempt: None,
        at_ms: T0 + 1,
    })
    .expect("purchase");
    let give = |token: &str, role: Role, vote| CustomerCommand::ForSession {
        token: token.into(),
        role,
        command: SessionCommand::GiveFeedback { item, vote },
        at_ms: T0 + 2,
    };
    // Refused for a token that is unknown or of the other role: no feedback recorded.
    let before = m.clone();
    for (token, role) in [
        ("nope", Role::Buyer),
        ("ts", Role::Buyer),
        ("tb", Role::Seller),
    ] {
        let out = m.apply(give(token, role, Vote::Down));
        assert!(
            matches!(out, Err(MarketError::Unauthenticated(_))),
            "{token} as {role:?}: {out:?}"
        );
    }
    let seller_summary = |m: &CustomerMachine| m.query(&CustomerQuery::Seller { seller: s });
    assert_eq!(
        seller_summary(&m),
        seller_summary(&before),
        "a refused feedback changes no rating"
    );
    // A live session: recorded for its buyer, who is named in the output.
    assert_eq!(
        m.apply(give("tb", Role::Buyer, Vote::Up)),
        Ok(CustomerOutput::BuyerFeedback {
            buyer: b,
            seller: s,
            vote: Vote::Up,
            fresh: true,
        })
    );
    // Again: the first vote stands.
    assert_eq!(
        m.apply(give("tb", Role::Buyer, Vote::Down)),
        Ok(CustomerOutput::BuyerFeedback {
            buyer: b,
            seller: s,
            vote: Vote::Up,
            fresh: false,
        })
    );
}

#[test]
fn a_keyed_session_write_answers_with_the_remembered_response_and_changes_nothing() {
    let (mut m, b, _, item) = buyer_and_seller_logged_in();
    add(&mut m, b, item, 3, 5, T0 + 1).expect("add");
    let stored = StoredResponse {
        status: 200,
        body: b"{\"items\":[]}".to_vec(),
    };
    ok(
        &mut m,
        CustomerCommand::RememberResponse {
            scope: "t:1".into(),
            key: "done".into(),
            response: stored.clone(),
            at_ms: T0 + 2,
        },
    );
    let keyed = |key: &str, token: &str, at_ms: u64| CustomerCommand::ForKeyedSession {
        scope: "t:1".into(),
        key: key.into(),
        token: token.into(),
        role: Role::Buyer,
        command: SessionCommand::ClearCart,
        at_ms,
    };
    // Remembered: that response, the cart untouched; it wins over an unknown token too.
    let before = m.clone();
    for token in ["tb", "nope"] {
        assert_eq!(
            m.apply(keyed("done", token, T0 + 3)),
            Ok(CustomerOutput::Remembered(stored.clone())),
            "{token}"
        );
    }
    assert_eq!(cart(&m, b, T0 + 3), cart(&before, b, T0 + 3));
    // Another key: exactly ForSession (refused for a bad token, run for a live one).
    assert!(matches!(
        m.apply(keyed("new", "nope", T0 + 3)),
        Err(MarketError::Unauthenticated(_))
    ));
    assert_eq!(
        m.apply(keyed("new", "tb", T0 + 3)),
        Ok(CustomerOutput::Done)
    );
    assert!(cart(&m, b, T0 + 3).items.is_empty());
    // Past the remembered response's lifetime the key runs the command again.
    let late = T0 + 2 + m.config().idempotency_ttl_ms;
    assert!(
        matches!(
            m.apply(keyed("done", "tb", late)),
            Err(MarketError::Unauthenticated(_))
        ),
        "the session also ended by then: refused, not replayed"
    );
}
