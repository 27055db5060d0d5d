//! The client against fake replicas: failover, idempotency keys, problem documents,
//! deadlines.

mod common;

use std::time::Duration;

use clients::api::{Condition, Login, NewItem, SearchQuery};
use clients::{BuyerClient, ClientConfig, ClientError, SellerClient};
use common::{dead_url, spawn, spawn_hangup, Reply, ITEM};

fn new_item() -> NewItem {
    NewItem {
        name: "lamp".into(),
        category: 3,
        keywords: vec!["desk".into()],
        condition: Condition::Used,
        price_cents: 1250,
        quantity: 4,
    }
}

fn fast() -> ClientConfig {
    ClientConfig {
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        initial_replica: Some(0),
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn fails_over_from_a_refused_port_and_remembers_the_replica() {
    let good = spawn(|s| match s.path.as_str() {
        "/v1/sellers/sessions" => Reply::json(201, r#"{"token":"tok-1","seller_id":7}"#),
        "/v1/sellers/me/rating" => Reply::json(200, r#"{"seller_id":7,"up":2,"down":1}"#),
        _ => Reply::problem(404, "not_found", "route"),
    })
    .await;
    let client = SellerClient::with_config([dead_url(), good.url.clone()], fast()).unwrap();
    assert_eq!(client.replicas().preferred(), 0);
    let login = Login {
        username: "sam".into(),
        password: "password1".into(),
    };
    let resp = client.login_seller(&login).await.unwrap();
    assert_eq!(resp.seller_id, 7);
    assert_eq!(client.token().as_deref(), Some("tok-1"));
    assert_eq!(
        client.replicas().preferred(),
        1,
        "the working replica is remembered"
    );

    let rating = client.get_seller_rating().await.unwrap();
    assert_eq!((rating.up, rating.down), (2, 1));
    let seen = good.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "POST");
    assert!(seen[0].key.is_some(), "a POST carries an idempotency key");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&seen[0].body).unwrap(),
        serde_json::json!({"username": "sam", "password": "password1"})
    );
    assert_eq!(seen[1].auth.as_deref(), Some("Bearer tok-1"));
    assert_eq!(seen[1].key, None, "a GET carries no idempotency key");
}

#[tokio::test]
async fn fails_over_on_503_with_the_same_idempotency_key() {
    let sick = spawn(|_| Reply::problem(503, "unavailable", "no quorum")).await;
    let good = spawn(|_| Reply::json(201, ITEM)).await;
    let client = SellerClient::with_config([sick.url.clone(), good.url.clone()], fast())
        .unwrap()
        .with_token("tok")
        .unwrap();

    let item = client.add_item(&new_item()).await.unwrap();
    assert_eq!(item.id, "3-17");
    let (s, g) = (sick.seen(), good.seen());
    assert_eq!((s.len(), g.len()), (1, 1));
    let key = s[0].key.clone().expect("idempotency key");
    assert!((1..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()));
    assert_eq!(
        g[0].key.as_ref(),
        Some(&key),
        "the retry carries the same key"
    );
    assert_eq!(g[0].path, "/v1/sellers/me/items");

    // The next call starts at the replica that worked, with a new key.
    client.add_item(&new_item()).await.unwrap();
    assert_eq!(sick.seen().len(), 1);
    let g = good.seen();
    assert_eq!(g.len(), 2);
    assert_ne!(g[1].key, g[0].key, "each call has its own key");
}

#[tokio::test]
async fn fails_over_when_a_replica_hangs_up_before_answering() {
    let (hangup, accepted) = spawn_hangup().await;
    let good = spawn(|_| Reply::json(200, ITEM)).await;
    let client = SellerClient::with_config([hangup, good.url.clone()], fast())
        .unwrap()
        .with_token("tok")
        .unwrap();
    let item = client.change_price("3-17", 999).await.unwrap();
    assert_eq!(item.id, "3-17");
    assert!(*accepted.lock().unwrap() >= 1);
    let g = good.seen();
    assert_eq!(g[0].method, "PUT");
    assert_eq!(g[0].path, "/v1/sellers/me/items/3-17/price");
    assert_eq!(g[0].body, r#"{"price_cents":999}"#);
    assert!(g[0].key.is_some());
}

#[tokio::test]
async fn every_round_retries_with_one_key_then_unavailable() {
    let sick = spawn(|_| {
        let mut r = Reply::problem(503, "unavailable", "no quorum");
        r.retry_after = Some("0");
        r
    })
    .await;
    let config = ClientConfig {
        rounds_max: 3,
        ..fast()
    };
    let client = BuyerClient::with_config([sick.url.clone(), dead_url()], config)
        .unwrap()
        .with_token("tok")
        .unwrap();
    let err = client.add_to_cart("3-17", 1).await.unwrap_err();
    match &err {
        ClientError::Unavailable { attempts, last } => {
            assert_eq!(*attempts, 6);
            assert!(last.to_lowercase().contains("refused"), "{last}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(err.code(), "unavailable");
    let seen = sick.seen();
    assert_eq!(seen.len(), 3, "one attempt on the live replica per round");
    assert!(seen.iter().all(|s| s.key.is_some() && s.key == seen[0].key));
}

#[tokio::test]
async fn a_problem_document_is_an_api_error_and_is_not_retried() {
    let a = spawn(|_| Reply::problem(409, "insufficient_quantity", "3-17")).await;
    let b = spawn(|_| Reply::json(200, ITEM)).await;
    let client = BuyerClient::with_config([a.url.clone(), b.url.clone()], fast())
        .unwrap()
        .with_token("tok")
        .unwrap();
    let err = client.add_to_cart("3-17", 5).await.unwrap_err();
    let problem = err.problem().expect("an API error");
    assert_eq!(problem.status, 409);
    assert_eq!(problem.code, "insufficient_quantity");
    assert_eq!(problem.detail, "3-17");
    assert_eq!(err.code(), "insufficient_quantity");
    assert!(!err.is_unauthenticated());
    assert!(b.seen().is_empty(), "a refusal is an answer: no failover");

    let unauth = spawn(|_| Reply::problem(401, "unauthenticated", "token")).await;
    let client = BuyerClient::new([unauth.url.clone()])
        .unwrap()
        .with_token("t")
        .unwrap();
    let err = client.display_cart().await.unwrap_err();
    assert!(err.is_unauthenticated());
}

#[tokio::test]
async fn calls_needing_a_session_fail_locally_without_one() {
    let server = spawn(|_| Reply::json(200, r#"{"items":[],"saved":false}"#)).await;
    let client = BuyerClient::new([server.url.clone()]).unwrap();
    assert!(matches!(
        client.display_cart().await,
        Err(ClientError::NotLoggedIn)
    ));
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn buyer_paths_and_query_strings() {
    let server = spawn(|s| {
        if s.path.starts_with("/v1/items?") {
            Reply::json(200, &format!(r#"{{"items":[{ITEM}]}}"#))
        } else if s.path.starts_with("/v1/items/") {
            Reply::json(200, ITEM)
        } else if s.path.starts_with("/v1/sellers/") {
            Reply::json(200, r#"{"seller_id":7,"up":1,"down":0}"#)
        } else if s.method == "DELETE" && s.path == "/v1/buyers/me/cart" {
            Reply::json(204, "")
        } else {
            Reply::json(
                200,
                r#"{"items":[{"item_id":"3-17","quantity":1}],"saved":true}"#,
            )
        }
    })
    .await;
    let client = BuyerClient::new([server.url.clone()])
        .unwrap()
        .with_token("tok")
        .unwrap();
    let q = SearchQuery {
        category: Some(3),
        keywords: vec!["desk".into(), "led".into()],
        limit: Some(5),
    };
    assert_eq!(client.search_items(&q).await.unwrap().items.len(), 1);
    client.get_item("3-17").await.unwrap();
    client.get_seller_rating(7).await.unwrap();
    let cart = client.remove_cart("3-17", Some(2)).await.unwrap();
    assert!(cart.saved);
    client.clear_cart().await.unwrap();
    let seen = server.seen();
    let paths: Vec<_> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            (
                "GET",
                "/v1/items?category=3&keyword=desk&keyword=led&limit=5"
            ),
            ("GET", "/v1/items/3-17"),
            ("GET", "/v1/sellers/7/rating"),
            ("DELETE", "/v1/buyers/me/cart/items/3-17?quantity=2"),
            ("DELETE", "/v1/buyers/me/cart"),
        ]
    );
    assert_eq!(seen[0].auth, None, "search needs no token and sends none");
    assert!(seen[3].key.is_some() && seen[4].key.is_some());
}

#[tokio::test]
async fn the_call_deadline_bounds_a_slow_cluster() {
    let slow = spawn(|_| {
        let mut r = Reply::json(200, ITEM);
        r.delay = Duration::from_secs(5);
        r
    })
    .await;
    let config = ClientConfig {
        attempt_timeout: Duration::from_millis(100),
        call_deadline: Duration::from_millis(350),
        rounds_max: 100,
        ..fast()
    };
    let client = BuyerClient::with_config([slow.url.clone()], config).unwrap();
    let start = std::time::Instant::now();
    let err = client.get_item("3-17").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        slow.seen().len() >= 2,
        "attempts are retried until the deadline"
    );
}

#[tokio::test]
async fn healthz_reports_readiness() {
    let up = spawn(|s| {
        assert_eq!(s.path, "/healthz");
        Reply::json(200, "ok")
    })
    .await;
    let down = spawn(|_| Reply::json(503, "no db")).await;
    let t = Duration::from_secs(1);
    assert!(clients::healthz(&up.url, t).await.unwrap());
    assert!(!clients::healthz(&down.url, t).await.unwrap());
    assert!(clients::healthz(&dead_url(), t).await.is_err());
    assert!(matches!(
        clients::healthz("not a url", t).await,
        Err(ClientError::InvalidUrl { .. })
    ));
}

#[tokio::test]
async fn logout_forgets_the_token() {
    let server = spawn(|_| Reply::json(204, "")).await;
    let client = SellerClient::new([server.url.clone()])
        .unwrap()
        .with_token("tok")
        .unwrap();
    client.logout_seller().await.unwrap();
    assert_eq!(client.token(), None);
    assert_eq!(server.seen()[0].path, "/v1/sellers/sessions/current");
    assert!(server.seen()[0].key.is_some());
}

/// The clients' futures can be spawned on a multi-threaded runtime.
#[test]
fn client_futures_are_send() {
    fn assert_send<T: Send>(_: T) {}
    let buyer = BuyerClient::new(["http://127.0.0.1:1"]).unwrap();
    let seller = SellerClient::new(["http://127.0.0.1:1"]).unwrap();
    let card = clients::api::Card {
        name: "A".into(),
        number: "4111111111111111".into(),
        expiry: "12/30".into(),
        cvv: "123".into(),
    };
    assert_send(buyer.make_purchase(&card));
    assert_send(buyer.search_items(&SearchQuery::default()));
    assert_send(seller.add_item(&new_item()));
    assert_send(seller.logout_seller());
    fn assert_sync<T: Send + Sync + 'static>() {}
    assert_sync::<BuyerClient>();
    assert_sync::<SellerClient>();
    assert_sync::<clients::Replicas>();
}

#[tokio::test]
async fn a_replica_too_slow_for_the_attempt_timeout_is_skipped_with_the_same_key() {
    let slow = spawn(|_| {
        let mut r = Reply::json(200, r#"{"items":[],"saved":false}"#);
        r.delay = Duration::from_secs(5);
        r
    })
    .await;
    let good = spawn(|_| Reply::json(200, r#"{"items":[],"saved":false}"#)).await;
    let config = ClientConfig {
        attempt_timeout: Duration::from_millis(150),
        ..fast()
    };
    let client = BuyerClient::with_config([slow.url.clone(), good.url.clone()], config)
        .unwrap()
        .with_token("tok")
        .unwrap();
    client.remove_cart("3-17", None).await.unwrap();
    let (s, g) = (slow.seen(), good.seen());
    assert_eq!((s.len(), g.len()), (1, 1));
    assert!(s[0].key.is_some());
    assert_eq!(s[0].key, g[0].key);
    assert_eq!(g[0].path, "/v1/buyers/me/cart/items/3-17");
    assert_eq!(client.replicas().preferred(), 1);
}
