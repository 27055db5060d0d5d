//! End-to-end tests over real HTTP on loopback: every endpoint and every error code of
//! API.md, against the one-process marketplace (real SOAP payment service included).

mod support;

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use marketcore::clock::{Clock, ManualClock};
use serde_json::{json, Value};
use servers::single::{self, Running, SingleOptions};
use support::{Http, Resp};

const CARD: &str =
    r#"{"card": {"name": "Ada", "number": "4111111111111111", "expiry": "12/39", "cvv": "123"}}"#;

struct Env {
    running: Running,
    seller: Http,
    buyer: Http,
    clock: Arc<ManualClock>,
}

async fn env_with(approve_rate: f64, session_idle: Duration) -> Env {
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let mut options = SingleOptions::for_tests();
    options.approve_rate = approve_rate;
    options.session_idle = session_idle;
    options.clock = Some(clock.clone() as Arc<dyn Clock>);
    let running = single::start(options).await.expect("start");
    let seller = Http::new(running.seller_addr);
    let buyer = Http::new(running.buyer_addr);
    Env {
        running,
        seller,
        buyer,
        clock,
    }
}

async fn env() -> Env {
    env_with(1.0, Duration::from_secs(300)).await
}

fn purchase_body() -> Vec<u8> {
    CARD.as_bytes().to_vec()
}

async fn seller_session(e: &Env, username: &str) -> (String, u64) {
    let r = e
        .seller
        .post(
            "/v1/sellers",
            None,
            json!({"name": "Sam", "username": username, "password": "correct horse"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["seller_id"].as_u64().expect("seller_id");
    let r = e
        .seller
        .post(
            "/v1/sellers/sessions",
            None,
            json!({"username": username, "password": "correct horse"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["seller_id"].as_u64(), Some(id));
    (r.json()["token"].as_str().expect("token").to_string(), id)
}

async fn buyer_session(e: &Env, username: &str) -> (String, u64) {
    let r = e
        .buyer
        .post(
            "/v1/buyers",
            None,
            json!({"name": "Bea", "username": username, "password": "battery staple"}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["buyer_id"].as_u64().expect("buyer_id");
    let r = e
        .buyer
        .post(
            "/v1/buyers/sessions",
            None,
            json!({"username": username, "password": "battery staple"}),
        )
        .await;
    assert_eq!(r.status, 201);
    (r.json()["token"].as_str().expect("token").to_string(), id)
}

async fn add_item(
    e: &Env,
    token: &str,
    name: &str,
    category: u8,
    keywords: &[&str],
    quantity: u64,
) -> Value {
    let r = e
        .seller
        .post(
            "/v1/sellers/me/items",
            Some(token),
            json!({"name": name, "category": category, "keywords": keywords, "condition": "new", "price_cents": 1250, "quantity": quantity}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    r.json()
}

/// Repeats `send` while it is refused with 401, until the response remembered for its key
/// (written off the response path) is replayed with `status`: bounded, 100 tries 20 ms apart.
async fn until_replayed<F, Fut>(status: u16, mut send: F) -> Resp
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    for _ in 0..100 {
        let r = send().await;
        if r.status == status {
            return r;
        }
        assert_problem(&r, 401, "unauthenticated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the remembered response was not replayed within 2 s");
}

fn assert_problem(r: &Resp, status: u16, code: &str) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.code(), code);
    assert_eq!(r.content_type(), "application/problem+json");
    let p = r.json();
    assert_eq!(p["type"], "about:blank");
    assert_eq!(p["status"].as_u64(), Some(u64::from(status)));
    assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(p["detail"].as_str().is_some());
}

#[tokio::test]
async fn seller_functions_end_to_end() {
    let e = env().await;
    let (token, seller_id) = seller_session(&e, "sam").await;
    let item = add_item(&e, &token, "desk lamp", 3, &["LED", "desk", "led"], 4).await;
    let id = item["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("3-"));
    assert_eq!(
        item["keywords"],
        json!(["led", "desk"]),
        "lower-cased, duplicates collapsed, order kept"
    );
    assert_eq!(item["seller_id"].as_u64(), Some(seller_id));
    assert_eq!(item["feedback"], json!({"up": 0, "down": 0}));

    let r = e
        .seller
        .put(
            &format!("/v1/sellers/me/items/{id}/price"),
            Some(&token),
            json!({"price_cents": 999}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["price_cents"], 999);

    let r = e
        .seller
        .delete(
            &format!("/v1/sellers/me/items/{id}?quantity=3"),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["quantity"], 1);
    assert_problem(
        &e.seller
            .delete(
                &format!("/v1/sellers/me/items/{id}?quantity=2"),
                Some(&token),
            )
            .await,
        409,
        "insufficient_quantity",
    );
    let r = e
        .seller
        .delete(&format!("/v1/sellers/me/items/{id}"), Some(&token))
        .await;
    assert_eq!(r.json()["quantity"], 0);

    let r = e.seller.get("/v1/sellers/me/items", Some(&token)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["items"].as_array().map(Vec::len),
        Some(1),
        "items with quantity 0 stay listed"
    );
    // Off sale: not in search.
    let r = e.buyer.get("/v1/items?category=3", None).await;
    assert_eq!(r.json()["items"], json!([]));

    let r = e.seller.get("/v1/sellers/me/rating", Some(&token)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"seller_id": seller_id, "up": 0, "down": 0})
    );

    let r = e
        .seller
        .delete("/v1/sellers/sessions/current", Some(&token))
        .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_problem(
        &e.seller.get("/v1/sellers/me/items", Some(&token)).await,
        401,
        "unauthenticated",
    );
    e.running.shutdown().await;
}

#[tokio::test]
async fn buyer_functions_end_to_end() {
    let e = env().await;
    let (seller, seller_id) = seller_session(&e, "sam").await;
    let lamp = add_item(&e, &seller, "desk lamp", 3, &["led", "desk"], 5).await;
    let chair = add_item(&e, &seller, "office chair", 3, &["desk"], 2).await;
    let _other = add_item(&e, &seller, "bike", 4, &["red"], 1).await;
    let lamp_id = lamp["id"].as_str().expect("id").to_string();
    let chair_id = chair["id"].as_str().expect("id").to_string();
    let (token, _buyer_id) = buyer_session(&e, "bea").await;

    // Search: ranking by number of matched keywords, then id; case-insensitive.
    let r = e
        .buyer
        .get("/v1/items?keyword=DESK&keyword=led", None)
        .await;
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids, vec![lamp_id.clone(), chair_id.clone()]);
    let r = e.buyer.get("/v1/items?category=4&limit=1", None).await;
    assert_eq!(r.json()["items"].as_array().map(Vec::len), Some(1));
    assert_problem(
        &e.buyer.get("/v1/items?limit=0", None).await,
        400,
        "invalid_argument",
    );
    assert_problem(
        &e.buyer.get("/v1/items?category=ten", None).await,
        400,
        "invalid_argument",
    );

    let r = e.buyer.get(&format!("/v1/items/{lamp_id}"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"], "desk lamp");
    assert_problem(
        &e.buyer.get("/v1/items/9-999", None).await,
        404,
        "not_found",
    );

    // Cart.
    let r = e.buyer.get("/v1/buyers/me/cart", Some(&token)).await;
    assert_eq!(r.json(), json!({"items": [], "saved": false}));
    let r = e
        .buyer
        .post(
            "/v1/buyers/me/cart/items",
            Some(&token),
            json!({"item_id": lamp_id, "quantity": 2}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["items"],
        json!([{"item_id": lamp_id, "quantity": 2}])
    );
    assert_problem(
        &e.buyer
            .post(
                "/v1/buyers/me/cart/items",
                Some(&token),
                json!({"item_id": chair_id, "quantity": 3}),
            )
            .await,
        409,
        "insufficient_quantity",
    );
    let r = e
        .buyer
        .post(
            "/v1/buyers/me/cart/items",
            Some(&token),
            json!({"item_id": chair_id, "quantity": 2}),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = e
        .buyer
        .delete(
            &format!("/v1/buyers/me/cart/items/{chair_id}?quantity=1"),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["items"][1],
        json!({"item_id": chair_id, "quantity": 1})
    );
    let r = e
        .buyer
        .send(
            Method::POST,
            "/v1/buyers/me/cart/save",
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        e.buyer.get("/v1/buyers/me/cart", Some(&token)).await.json()["saved"],
        true
    );

    // Purchase.
    let r = e
        .buyer
        .send(
            Method::POST,
            "/v1/buyers/me/purchases",
            Some(&token),
            None,
            Some(purchase_body()),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let p = r.json();
    assert_eq!(p["total_cents"], 3 * 1250);
    assert_eq!(p["lines"].as_array().map(Vec::len), Some(2));
    assert!(p["created_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(
        e.buyer
            .get(&format!("/v1/items/{lamp_id}"), None)
            .await
            .json()["quantity"],
        3
    );
    assert_eq!(
        e.buyer.get("/v1/buyers/me/cart", Some(&token)).await.json(),
        json!({"items": [], "saved": false})
    );
    assert_problem(
        &e.buyer
            .send(
                Method::POST,
                "/v1/buyers/me/purchases",
                Some(&token),
                None,
                Some(purchase_body()),
            )
            .await,
        409,
        "cart_empty",
    );
    let r = e.buyer.get("/v1/buyers/me/purchases", Some(&token)).await;
    assert_eq!(r.json()["purchases"].as_array().map(Vec::len), Some(1));

    // Feedback.
    let r = e
        .buyer
        .post(
            "/v1/buyers/me/feedback",
            Some(&token),
            json!({"item_id": lamp_id, "vote": "up"}),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_problem(
        &e.buyer
            .post(
                "/v1/buyers/me/feedback",
                Some(&token),
                json!({"item_id": lamp_id, "vote": "down"}),
            )
            .await,
        409,
        "feedback_exists",
    );
    let bike = _other["id"].as_str().expect("id");
    assert_problem(
        &e.buyer
            .post(
                "/v1/buyers/me/feedback",
                Some(&token),
                json!({"item_id": bike, "vote": "up"}),
            )
            .await,
        409,
        "not_purchased",
    );
    let r = e
        .buyer
        .get(&format!("/v1/sellers/{seller_id}/rating"), None)
        .await;
    assert_eq!(
        r.json(),
        json!({"seller_id": seller_id, "up": 1, "down": 0})
    );
    assert_eq!(
        e.buyer
            .get(&format!("/v1/items/{lamp_id}"), None)
            .await
            .json()["feedback"],
        json!({"up": 1, "down": 0})
    );
    assert_problem(
        &e.buyer.get("/v1/sellers/999/rating", None).await,
        404,
        "not_found",
    );

    // Clear cart empties both carts.
    e.buyer
        .post(
            "/v1/buyers/me/cart/items",
            Some(&token),
            json!({"item_id": lamp_id, "quantity": 1}),
        )
        .await;
    e.buyer
        .send(
            Method::POST,
            "/v1/buyers/me/cart/save",
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(
        e.buyer
            .delete("/v1/buyers/me/cart", Some(&token))
            .await
            .status,
        204
    );
    assert_eq!(
        e.buyer
            .delete("/v1/buyers/sessions/current", Some(&token))
            .await
            .status,
        204
    );
    let (token, _) = {
        let r = e
            .buyer
            .post(
                "/v1/buyers/sessions",
                None,
                json!({"username": "bea", "password": "battery staple"}),
            )
            .await;
        (r.json()["token"].as_str().expect("token").to_string(), ())
    };
    assert_eq!(
        e.buyer.get("/v1/buyers/me/cart", Some(&token)).await.json()["items"],
        json!([])
    );
    e.running.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_right_codes() {
    let e = env().await;
    let (seller, _) = seller_session(&e, "sam").await;
    let bad_bodies: [&[u8]; 5] = [
        b"{not json",
        br#"{"name": 1, "username": "x", "password": "12345678"}"#,
        br#"{"name": "a", "username": "x"}"#,
        br#"{"name": "a", "username": "x", "password": "12345678", "admin": true}"#,
        b"",
    ];
    for body in bad_bodies {
        let r = e
            .buyer
            .send(Method::POST, "/v1/buyers", None, None, Some(body.to_vec()))
            .await;
        assert_problem(&r, 400, "invalid_argument");
    }
    let r = e
        .buyer
        .post(
            "/v1/buyers",
            None,
            json!({"name": "a", "username": "bad name!", "password": "12345678"}),
        )
        .await;
    assert_problem(&r, 400, "invalid_argument");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("username")
            || r.json()["detail"].as_str().is_some()
    );
    let r = e.seller.post("/v1/sellers/me/items", Some(&seller), json!({"name": "x", "category": 10, "condition": "new", "price_cents": 1, "quantity": 1})).await;
    assert_problem(&r, 400, "invalid_argument");
    let r = e.seller.post("/v1/sellers/me/items", Some(&seller), json!({"name": "x", "category": 1, "condition": "mint", "price_cents": 1, "quantity": 1})).await;
    assert_problem(&r, 400, "invalid_argument");

    // Oversized body.
    let huge = vec![b' '; 70 * 1024];
    assert_problem(
        &e.buyer
            .send(Method::POST, "/v1/buyers", None, None, Some(huge))
            .await,
        413,
        "payload_too_large",
    );

    // Routes.
    assert_problem(&e.buyer.get("/v1/nothing", None).await, 404, "not_found");
    let r = e
        .buyer
        .send(Method::PUT, "/v1/items", None, None, None)
        .await;
    assert_problem(&r, 405, "method_not_allowed");
    assert_eq!(
        r.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("GET")
    );

    // Username taken (separately per role).
    e.buyer
        .post(
            "/v1/buyers",
            None,
            json!({"name": "a", "username": "dup", "password": "12345678"}),
        )
        .await;
    let r = e
        .buyer
        .post(
            "/v1/buyers",
            None,
            json!({"name": "a", "username": "dup", "password": "12345678"}),
        )
        .await;
    assert_problem(&r, 409, "username_taken");
    let r = e
        .seller
        .post(
            "/v1/sellers",
            None,
            json!({"name": "a", "username": "dup", "password": "12345678"}),
        )
        .await;
    assert_eq!(r.status, 201);

    // Bad credentials.
    let r = e
        .buyer
        .post(
            "/v1/buyers/sessions",
            None,
            json!({"username": "dup", "password": "wrong password"}),
        )
        .await;
    assert_problem(&r, 401, "unauthenticated");
    let r = e
        .buyer
        .post(
            "/v1/buyers/sessions",
            None,
            json!({"username": "nobody", "password": "12345678"}),
        )
        .await;
    assert_problem(&r, 401, "unauthenticated");

    // Bad Idempotency-Key.
    let r = e
        .buyer
        .send(
            Method::POST,
            "/v1/buyers",
            None,
            Some("has space"),
            Some(b"{}".to_vec()),
        )
        .await;
    assert_problem(&r, 400, "invalid_argument");
    e.running.shutdown().await;
}

#[tokio::test]
async fn tokens_are_checked_and_role_scoped() {
    let e = env().await;
    let (seller, _) = seller_session(&e, "sam").await;
    let (buyer, _) = buyer_session(&e, "bea").await;
    assert_problem(
        &e.buyer.get("/v1/buyers/me/cart", None).await,
        401,
        "unauthenticated",
    );
    assert_problem(
        &e.buyer.get("/v1/buyers/me/cart", Some("not-a-token")).await,
        401,
        "unauthenticated",
    );
    assert_problem(
        &e.buyer.get("/v1/buyers/me/cart", Some(&seller)).await,
        401,
        "unauthenticated",
    );
    assert_problem(
        &e.seller.get("/v1/sellers/me/items", Some(&buyer)).await,
        401,
        "unauthenticated",
    );
    let r = e
        .buyer
        .send(Method::GET, "/v1/buyers/me/cart", None, None, None)
        .await;
    assert_problem(&r, 401, "unauthenticated");
    e.running.shutdown().await;
}

#[tokio::test]
async fn another_sellers_item_is_forbidden() {
    let e = env().await;
    let (sam, _) = seller_session(&e, "sam").await;
    let (kim, _) = seller_session(&e, "kim").await;
    let item = add_item(&e, &sam, "lamp", 1, &[], 3).await;
    let id = item["id"].as_str().expect("id");
    assert_problem(
        &e.seller
            .put(
                &format!("/v1/sellers/me/items/{id}/price"),
                Some(&kim),
                json!({"price_cents": 5}),
            )
            .await,
        403,
        "forbidden",
    );
    assert_problem(
        &e.seller
            .delete(&format!("/v1/sellers/me/items/{id}"), Some(&kim))
            .await,
        403,
        "forbidden",
    );
    assert_problem(
        &e.seller
            .delete("/v1/sellers/me/items/7-77", Some(&kim))
            .await,
        404,
        "not_found",
    );
    e.running.shutdown().await;
}

#[tokio::test]
async fn racing_buyers_for_the_last_unit_exactly_one_wins() {
    let e = env().await;
    let (seller, _) = seller_session(&e, "sam").await;
    let item = add_item(&e, &seller, "last one", 2, &[], 1).await;
    let id = item["id"].as_str().expect("id").to_string();
    let mut tokens = Vec::new();
    for i in 0..6 {
        let (t, _) = buyer_session(&e, &format!("racer{i}")).await;
        let r = e
            .buyer
            .post(
                "/v1/buyers/me/cart/items",
                Some(&t),
                json!({"item_id": id, "quantity": 1}),
            )
            .await;
        assert_eq!(r.status, 200);
        tokens.push(t);
    }
    let mut tasks = Vec::new();
    for t in tokens {
        let http = e.buyer.clone();
        tasks.push(tokio::spawn(async move {
            http.send(
                Method::POST,
                "/v1/buyers/me/purchases",
                Some(&t),
                None,
                Some(purchase_body()),
            )
            .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            201 => won += 1,
            409 => assert_eq!(r.code(), "insufficient_quantity"),
            other => panic!("unexpected status {other}: {:?}", r.json()),
        }
    }
    assert_eq!(won, 1, "exactly one buyer gets the last unit");
    assert_eq!(
        e.buyer.get(&format!("/v1/items/{id}"), None).await.json()["quantity"],
        0
    );
    e.running.shutdown().await;
}

#[tokio::test]
async fn a_declined_payment_changes_nothing() {
    let e = env_with(0.0, Duration::from_secs(300)).await;
    let (seller, seller_id) = seller_session(&e, "sam").await;
    let item = add_item(&e, &seller, "lamp", 2, &[], 3).await;
    let id = item["id"].as_str().expect("id").to_string();
    let (token, _) = buyer_session(&e, "bea").await;
    e.buyer
        .post(
            "/v1/buyers/me/cart/items",
            Some(&token),
            json!({"item_id": id, "quantity": 2}),
        )
        .await;
    let cart_before = e.buyer.get("/v1/buyers/me/cart", Some(&token)).await.json();
    let r = e
        .buyer
        .send(
            Method::POST,
            "/v1/buyers/me/purchases",
            Some(&token),
            None,
            Some(purchase_body()),
        )
        .await;
    assert_problem(&r, 402, "payment_declined");
    assert_eq!(
        e.buyer.get(&format!("/v1/items/{id}"), None).await.json()["quantity"],
        3
    );
    assert_eq!(
        e.buyer.get("/v1/buyers/me/cart", Some(&token)).await.json(),
        cart_before
    );
    assert_eq!(
        e.buyer
            .get("/v1/buyers/me/purchases", Some(&token))
            .await
            .json()["purchases"],
        json!([])
    );
    assert_eq!(
        e.buyer
            .get(&format!("/v1/sellers/{seller_id}/rating"), None)
            .await
            .json()["up"],
        0
    );
    e.running.shutdown().await;
}

#[tokio::test]
async fn an_idempotent_retry_returns_the_first_response() {
    let e = env().await;
    let (seller, _) = seller_session(&e, "sam").await;
    let body = serde_json::to_vec(&json!({"name": "lamp", "category": 1, "condition": "used", "price_cents": 5, "quantity": 1})).expect("json");
    // Lists the same item with `token` under `key`.
    let post_item = |token: String, key: &'static str| {
        let body = body.clone();
        let seller_server = &e.seller;
        async move {
            seller_server
                .send(
                    Method::POST,
                    "/v1/sellers/me/items",
                    Some(&token),
                    Some(key),
                    Some(body),
                )
                .await
        }
    };
    let first = post_item(seller.clone(), "key-1").await;
    assert_eq!(first.status, 201);
    let again = post_item(seller.clone(), "key-1").await;
    assert_eq!(again.status, 201);
    assert_eq!(
        again.body, first.body,
        "the retry returns the original body"
    );
    let items = e
        .seller
        .get("/v1/sellers/me/items", Some(&seller))
        .await
        .json();
    assert_eq!(
        items["items"].as_array().map(Vec::len),
        Some(1),
        "executed once"
    );
    let other = post_item(seller.clone(), "key-2").await;
    assert_ne!(other.json()["id"], first.json()["id"]);

    // A purchase retried with its key is charged and recorded once.
    let (buyer, _) = buyer_session(&e, "bea").await;
    // Buys the cart with `buyer`'s token under `key`.
    let buy = |key: &'static str| {
        let token = buyer.clone();
        let buyer_server = &e.buyer;
        async move {
            buyer_server
                .send(
                    Method::POST,
                    "/v1/buyers/me/purchases",
                    Some(&token),
                    Some(key),
                    Some(purchase_body()),
                )
                .await
        }
    };
    let id = first.json()["id"].as_str().expect("id").to_string();
    e.buyer
        .post(
            "/v1/buyers/me/cart/items",
            Some(&buyer),
            json!({"item_id": id, "quantity": 1}),
        )
        .await;
    let p1 = buy("buy-1").await;
    assert_eq!(p1.status, 201);
    let p2 = buy("buy-1").await;
    assert_eq!((p2.status, p2.body.clone()), (201, p1.body.clone()));
    assert_eq!(
        e.buyer
            .get("/v1/buyers/me/purchases", Some(&buyer))
            .await
            .json()["purchases"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // Errors are remembered too.
    let r1 = buy("buy-2").await;
    assert_problem(&r1, 409, "cart_empty");

    // A retry after logout still gets its original answer: the remembered response wins over
    // the ended session. (It is remembered off the response path: poll, bounded, until it
    // lands.) A new request with the ended token is refused, and so is the other role's token.
    let logout = e
        .seller
        .send(
            Method::DELETE,
            "/v1/sellers/sessions/current",
            Some(&seller),
            None,
            None,
        )
        .await;
    assert_eq!(logout.status, 204);
    let replayed = until_replayed(201, || post_item(seller.clone(), "key-1")).await;
    assert_eq!(replayed.body, first.body);
    let fresh = post_item(seller.clone(), "key-3").await;
    assert_problem(&fresh, 401, "unauthenticated");
    let wrong_role = post_item(buyer.clone(), "key-4").await;
    assert_problem(&wrong_role, 401, "unauthenticated");

    // The buyer's purchase, retried after logout, is answered from the remembered response
    // that the purchase's own session read looks up (no separate lookup on these routes).
    let logout = e
        .buyer
        .send(
            Method::DELETE,
            "/v1/buyers/sessions/current",
            Some(&buyer),
            None,
            None,
        )
        .await;
    assert_eq!(logout.status, 204);
    let replayed = until_replayed(201, || buy("buy-1")).await;
    assert_eq!(replayed.body, p1.body);
    let fresh = buy("buy-3").await;
    assert_problem(&fresh, 401, "unauthenticated");
    e.running.shutdown().await;
}

#[tokio::test]
async fn sessions_expire_after_the_idle_time_and_reset_the_cart() {
    let e = env_with(1.0, Duration::from_secs(60)).await;
    let (seller, _) = seller_session(&e, "sam").await;
    let item = add_item(&e, &seller, "lamp", 2, &[], 5).await;
    let id = item["id"].as_str().expect("id").to_string();
    let (token, _) = buyer_session(&e, "bea").await;
    e.buyer
        .post(
            "/v1/buyers/me/cart/items",
            Some(&token),
            json!({"item_id": id, "quantity": 1}),
        )
        .await;
    e.buyer
        .send(
            Method::POST,
            "/v1/buyers/me/cart/save",
            Some(&token),
            None,
            None,
        )
        .await;
    e.buyer
        .post(
            "/v1/buyers/me/cart/items",
            Some(&token),
            json!({"item_id": id, "quantity": 2}),
        )
        .await;
    // Activity keeps a session alive.
    e.clock.advance_ms(50_000);
    assert_eq!(
        e.buyer.get("/v1/buyers/me/cart", Some(&token)).await.status,
        200
    );
    e.clock.advance_ms(50_000);
    assert_eq!(
        e.buyer.get("/v1/buyers/me/cart", Some(&token)).await.status,
        200
    );
    // Idle past the limit: 401, and the working cart is back to the saved one.
    e.clock.advance_ms(61_000);
    assert_problem(
        &e.buyer.get("/v1/buyers/me/cart", Some(&token)).await,
        401,
        "unauthenticated",
    );
    let r = e
        .buyer
        .post(
            "/v1/buyers/sessions",
            None,
            json!({"username": "bea", "password": "battery staple"}),
        )
        .await;
    let token = r.json()["token"].as_str().expect("token").to_string();
    let cart = e.buyer.get("/v1/buyers/me/cart", Some(&token)).await.json();
    assert_eq!(
        cart,
        json!({"items": [{"item_id": id, "quantity": 1}], "saved": true})
    );
    // Logout without saving resets the working cart to the saved cart.
    e.buyer
        .post(
            "/v1/buyers/me/cart/items",
            Some(&token),
            json!({"item_id": id, "quantity": 3}),
        )
        .await;
    e.buyer
        .delete("/v1/buyers/sessions/current", Some(&token))
        .await;
    let r = e
        .buyer
        .post(
            "/v1/buyers/sessions",
            None,
            json!({"username": "bea", "password": "battery staple"}),
        )
        .await;
    let token = r.json()["token"].as_str().expect("token").to_string();
    assert_eq!(
        e.buyer.get("/v1/buyers/me/cart", Some(&token)).await.json()["items"],
        json!([{"item_id": id, "quantity": 1}])
    );
    e.running.shutdown().await;
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let e = env().await;
    let r = e.buyer.get("/healthz", None).await;
    assert_eq!(r.status, 200);
    e.buyer.get("/v1/items", None).await;
    let r = e.buyer.get("/metrics", None).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains(
            "http_requests_total{server=\"buyer\",route=\"search_items\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text
        .contains("http_request_duration_seconds_bucket{server=\"buyer\",route=\"search_items\""));
    assert!(
        text.contains("remembered_responses_dropped_total{server=\"buyer\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("purchase_confirmations_failed_total{server=\"buyer\"} 0"),
        "{text}"
    );
    let r = e.seller.get("/openapi.json", None).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/sellers",
        "/v1/buyers/me/purchases",
        "/v1/items/{id}",
        "/v1/sellers/{seller_id}/rating",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    e.running.shutdown().await;
}
