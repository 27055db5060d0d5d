//! Client histories of the whole marketplace, through HTTP and the real processes, checked
//! for linearizability (todc-utils' Wing-Gong-Lowe checker) while replicas die.
//!
//! Two objects, one per database, each driven by concurrent clients spread over the
//! frontends: an item's price in the product database (Raft) is a register (sellers'
//! `change_price` writes, buyers' `get_item` reads), and a buyer's cart in the customer
//! database (atomic broadcast) is a growing set (`add_to_cart` of distinct items, answered
//! with the cart after the add, and `display_cart`). Meanwhile a seller frontend and a buyer
//! frontend are killed, then the product-db leader, then a customer-db member (restarted at
//! once, as a supervisor would). Every call's invocation and answer are recorded in real-time
//! order. A call that fails may or may not have taken effect: a failed write is answered at
//! the very end of the history (it may take effect at any point after it began), a failed
//! read is dropped, and its client goes on as a new process. No call may fail anyway. The
//! checker is shown to refuse a stale read and a lost add, so the test cannot pass vacuously.

mod cluster;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clients::api::{Condition, Login, NewItem};
use clients::{BuyerClient, ClientConfig, SellerClient};
use cluster::{create_accounts, TestCluster, SERIAL};
use todc_utils::specifications::Specification;
use todc_utils::{Action, History, WGLChecker};

/// Calls per client.
const OPS: u64 = 300;
/// Items each cart client adds (distinct per client, so the cart is a growing set; a cart
/// holds at most 100).
const ADDS: u64 = 50;
/// An adder's calls per add (it reads the cart in between): `OPS / ADD_EVERY >= ADDS`.
const ADD_EVERY: u64 = 6;
/// The register item's price when the run starts.
const FIRST_PRICE: u64 = 100;

/// An operation on an item's price, with what it answered.
#[derive(Clone, Debug)]
enum PriceOp {
    /// `change_price`; `None` in the call.
    Write(u64),
    /// `get_item`, with the price it answered (`None` in the call).
    Read(Option<u64>),
}

/// The price as a register.
struct PriceSpec;

impl Specification for PriceSpec {
    type State = u64;
    type Operation = PriceOp;
    fn init() -> u64 {
        FIRST_PRICE
    }
    fn apply(op: &PriceOp, state: &u64) -> (bool, u64) {
        match op {
            PriceOp::Write(v) => (true, *v),
            PriceOp::Read(v) => (*v == Some(*state), *state),
        }
    }
}

/// An operation on a buyer's cart, with what it answered.
#[derive(Clone, Debug)]
enum CartOp {
    /// `add_to_cart(id, 1)` and the cart it answered (`None`: in the call, or no answer).
    Add(String, Option<BTreeSet<String>>),
    /// `display_cart` and the item ids it answered (`None` in the call).
    Read(Option<BTreeSet<String>>),
}

/// The cart as a growing set of item ids.
struct CartSpec;

impl Specification for CartSpec {
    type State = BTreeSet<String>;
    type Operation = CartOp;
    fn init() -> Self::State {
        BTreeSet::new()
    }
    fn apply(op: &CartOp, state: &Self::State) -> (bool, Self::State) {
        match op {
            CartOp::Add(id, answer) => {
                let mut after = state.clone();
                after.insert(id.clone());
                let valid = answer.as_ref().is_none_or(|a| *a == after);
                if valid {
                    (true, after)
                } else {
                    (false, state.clone())
                }
            }
            CartOp::Read(answer) => (answer.as_ref() == Some(state), state.clone()),
        }
    }
}

/// Calls and answers in real-time order, and the writes whose answer never came.
type Recorded<Op> = (Vec<(usize, Action<Op>)>, Vec<(usize, Op)>);

/// A history of calls and answers in real-time order, and the writes whose answer never
/// came (answered at the end).
struct Recorder<Op> {
    actions: Mutex<Recorded<Op>>,
    next_process: AtomicU64,
    /// Calls finished by every client of the run (both objects), for timing the faults.
    done: Arc<AtomicU64>,
    /// Every failed call of the run (both objects).
    failures: Arc<Mutex<Vec<String>>>,
}

impl<Op: Clone> Recorder<Op> {
    fn new(done: &Arc<AtomicU64>, failures: &Arc<Mutex<Vec<String>>>) -> Arc<Self> {
        Arc::new(Self {
            actions: Mutex::new((Vec::new(), Vec::new())),
            next_process: AtomicU64::new(0),
            done: Arc::clone(done),
            failures: Arc::clone(failures),
        })
    }

    /// A new process id (a client, or a client after a failed call).
    fn process(&self) -> usize {
        self.next_process.fetch_add(1, Ordering::Relaxed) as usize
    }

    fn call(&self, process: usize, op: Op) {
        let mut a = self.actions.lock().expect("lock");
        a.0.push((process, Action::Call(op)));
    }

    fn answer(&self, process: usize, op: Op) {
        let mut a = self.actions.lock().expect("lock");
        a.0.push((process, Action::Response(op)));
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    /// The call of `process` failed (`why`): `effect` (the operation with an unknown answer)
    /// may have happened at any time after the call, or not at all (`None`: it changes
    /// nothing, and the call is dropped). The client goes on as a new process.
    fn failed(&self, process: &mut usize, why: String, effect: Option<Op>) {
        self.failures.lock().expect("lock").push(why);
        {
            let mut a = self.actions.lock().expect("lock");
            match effect {
                Some(op) => a.1.push((*process, op)),
                None => {
                    if let Some(at) = a.0.iter().rposition(|(p, _)| p == process) {
                        a.0.remove(at);
                    }
                }
            }
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        *process = self.process();
    }

    /// The history (with its number of calls and answers), or `None` if nothing was called.
    fn history(&self) -> Option<(usize, History<Op>)> {
        let (mut actions, pending) = std::mem::take(&mut *self.actions.lock().expect("lock"));
        actions.extend(pending.into_iter().map(|(p, op)| (p, Action::Response(op))));
        (!actions.is_empty()).then(|| (actions.len(), History::from_actions(actions)))
    }
}

fn on_replica(replica: usize) -> ClientConfig {
    ClientConfig {
        initial_replica: Some(replica),
        ..ClientConfig::default()
    }
}

/// Waits (bounded) until the clients have made `target` calls in all.
async fn wait_for(done: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "the clients made {} of {target} calls in 60 s",
            done.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn the_checker_refuses_a_stale_read_and_a_lost_add() {
    let stale = History::from_actions(vec![
        (0, Action::Call(PriceOp::Write(2))),
        (0, Action::Response(PriceOp::Write(2))),
        (1, Action::Call(PriceOp::Read(None))),
        (1, Action::Response(PriceOp::Read(Some(FIRST_PRICE)))),
    ]);
    assert!(
        !WGLChecker::<PriceSpec>::is_linearizable(stale),
        "a stale read passed"
    );
    let fresh = History::from_actions(vec![
        (0, Action::Call(PriceOp::Write(2))),
        (1, Action::Call(PriceOp::Read(None))),
        (1, Action::Response(PriceOp::Read(Some(FIRST_PRICE)))),
        (0, Action::Response(PriceOp::Write(2))),
    ]);
    assert!(
        WGLChecker::<PriceSpec>::is_linearizable(fresh),
        "a concurrent read failed"
    );
    let one = BTreeSet::from(["1-1".to_string()]);
    let lost = History::from_actions(vec![
        (0, Action::Call(CartOp::Add("1-1".into(), None))),
        (0, Action::Response(CartOp::Add("1-1".into(), Some(one)))),
        (1, Action::Call(CartOp::Read(None))),
        (1, Action::Response(CartOp::Read(Some(BTreeSet::new())))),
    ]);
    assert!(
        !WGLChecker::<CartSpec>::is_linearizable(lost),
        "a lost add passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_through_http_are_linearizable_while_replicas_die() {
    histories_while_replicas_die(&[]).await;
}

/// The same with the product database's opt-in lease reads (the leader answers from its
/// lease, with no quorum round per read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_with_lease_reads_are_linearizable_while_replicas_die() {
    histories_while_replicas_die(&["--lease-reads"]).await;
}

/// Runs the clients and the faults on a cluster started with `market up` and `args`, then
/// checks both histories.
async fn histories_while_replicas_die(args: &[&str]) {
    let _serial = SERIAL.lock().await;
    let mut c = TestCluster::start_with_args(|_| {}, args).await;
    let accounts = create_accounts(&c, 2, "lin").await;
    let (seller_user, seller_password) = accounts.sellers[0].clone();
    let seller = SellerClient::new(c.seller_urls()).expect("client");
    seller
        .login_seller(&Login {
            username: seller_user,
            password: seller_password,
        })
        .await
        .expect("seller login");
    let seller_token = seller.token().expect("a seller token");
    // The register, and the items the cart clients add (two clients, distinct items).
    let new_item = |k: u64| NewItem {
        name: format!("lin {k}"),
        category: 1,
        keywords: vec![],
        condition: Condition::New,
        price_cents: 100,
        quantity: 1_000,
    };
    let register = seller.add_item(&new_item(0)).await.expect("item").id;
    let mut to_add = Vec::new();
    for k in 0..2 * ADDS {
        to_add.push(seller.add_item(&new_item(k + 1)).await.expect("item").id);
    }
    let buyer_token = |i: usize| {
        let (user, password) = accounts.buyers[i].clone();
        let urls = c.buyer_urls();
        async move {
            let b = BuyerClient::new(urls).expect("client");
            b.login_buyer(&Login {
                username: user,
                password,
            })
            .await
            .expect("buyer login");
            b.token().expect("a buyer token")
        }
    };
    let cart_owner = buyer_token(0).await;
    let reader = buyer_token(1).await;

    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let price = Recorder::<PriceOp>::new(&done, &failures);
    let cart = Recorder::<CartOp>::new(&done, &failures);
    let mut tasks = Vec::new();
    // Price writers (unique values, so a read names the write it saw), then price readers
    // on the buyer frontends.
    for w in 0..5u64 {
        let (price, register) = (price.clone(), register.clone());
        let seller = SellerClient::with_config(c.seller_urls(), on_replica(w as usize))
            .expect("client")
            .with_token(&seller_token)
            .expect("token");
        let buyer = BuyerClient::with_config(c.buyer_urls(), on_replica(w as usize % 4))
            .expect("client")
            .with_token(&reader)
            .expect("token");
        tasks.push(tokio::spawn(async move {
            let mut process = price.process();
            for k in 0..OPS {
                if w < 2 {
                    let value = 1_000 * (w + 1) + k;
                    price.call(process, PriceOp::Write(value));
                    match seller.change_price(&register, value as i64).await {
                        Ok(_) => price.answer(process, PriceOp::Write(value)),
                        Err(e) => {
                            let why = format!("change_price: {e}");
                            price.failed(&mut process, why, Some(PriceOp::Write(value)));
                        }
                    }
                } else {
                    price.call(process, PriceOp::Read(None));
                    match buyer.get_item(&register).await {
                        Ok(item) => price.answer(process, PriceOp::Read(Some(item.price_cents))),
                        Err(e) => price.failed(&mut process, format!("get_item: {e}"), None),
                    }
                }
            }
        }));
    }
    // Cart clients: two adders, two readers, all on the same buyer's cart.
    for a in 0..4u64 {
        let client = BuyerClient::with_config(c.buyer_urls(), on_replica(a as usize))
            .expect("client")
            .with_token(&cart_owner)
            .expect("token");
        let cart = cart.clone();
        let mine: Vec<String> = if a < 2 {
            to_add[(a * ADDS) as usize..((a + 1) * ADDS) as usize].to_vec()
        } else {
            Vec::new()
        };
        tasks.push(tokio::spawn(async move {
            let mut process = cart.process();
            for k in 0..OPS {
                // An adder adds every ADD_EVERY-th call and reads in between, so its adds
                // spread over the whole run, through the faults.
                let adds = (k % ADD_EVERY == 0)
                    .then(|| mine.get((k / ADD_EVERY) as usize))
                    .flatten();
                let answer = match adds {
                    Some(id) => {
                        cart.call(process, CartOp::Add(id.clone(), None));
                        client.add_to_cart(id, 1).await
                    }
                    None => {
                        cart.call(process, CartOp::Read(None));
                        client.display_cart().await
                    }
                };
                match answer {
                    Ok(c) => {
                        let items: BTreeSet<String> =
                            c.items.into_iter().map(|l| l.item_id).collect();
                        let op = match adds {
                            Some(id) => CartOp::Add(id.clone(), Some(items)),
                            None => CartOp::Read(Some(items)),
                        };
                        cart.answer(process, op);
                    }
                    Err(e) => {
                        let effect = adds.map(|id| CartOp::Add(id.clone(), None));
                        cart.failed(&mut process, format!("cart {adds:?}: {e}"), effect);
                    }
                }
            }
        }));
    }
    let total = 9 * OPS;
    // The faults, each once the clients have made their share of calls.
    let started = Instant::now();
    let mut faults = Vec::new();
    let mut fault = |what: String| {
        let at = (done.load(Ordering::Relaxed), started.elapsed());
        faults.push(format!("{what} after {} calls ({:?})", at.0, at.1));
    };
    wait_for(&done, total / 6).await;
    c.kill9("seller-0");
    c.kill9("buyer-0");
    fault("seller-0 and buyer-0 killed".into());
    wait_for(&done, 2 * total / 6).await;
    let leader = c.product_leader().await;
    c.kill9(&format!("product-db-{leader}"));
    fault(format!("product-db-{leader} (the leader) killed"));
    wait_for(&done, 3 * total / 6).await;
    c.restart_product_db(leader);
    c.kill9("customer-db-2");
    c.restart_customer_db(2);
    fault("customer-db-2 killed and started again".into());
    for t in tasks {
        t.await.expect("client task");
    }
    eprintln!(
        "{total} calls in {:?}; {}",
        started.elapsed(),
        faults.join("; ")
    );
    let failures = failures.lock().expect("lock").clone();
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    let checked = Instant::now();
    let (price_len, price) = price.history().expect("price calls");
    let (cart_len, cart) = cart.history().expect("cart calls");
    let price_ok = WGLChecker::<PriceSpec>::is_linearizable(price);
    let cart_ok = WGLChecker::<CartSpec>::is_linearizable(cart);
    eprintln!(
        "{} price and {} cart history entries checked in {:?}",
        price_len,
        cart_len,
        checked.elapsed()
    );
    assert!(price_ok, "the price history is not linearizable");
    assert!(cart_ok, "the cart history is not linearizable");
    c.stop().await;
}
