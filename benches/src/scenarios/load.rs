//! The load: closed-loop seller and buyer clients over HTTP (the `clients` library), each
//! timing every call it makes.
//!
//! A client's session: create its account, log in once (at most 4 clients at a time do
//! this, retrying up to 3 times; a client that cannot log in sits the mix out), wait for every other client (a
//! barrier, so the measured mix starts together), make `calls_per_client` calls of a weighted
//! mix of its functions back to back, log out. Client `i` starts on server replica `i mod 4`
//! (`ClientConfig::initial_replica`), so replica 0 of each kind always has clients connected.
//!
//! Seller mix: add_item 15% (at most 40 items), change_price 25%, remove_item 10% (one unit),
//! all_items_by_seller 25%, get_seller_rating 25%.
//! Buyer mix: search_items 18%, get_item 14%, add_to_cart 16%, display_cart 10%, remove_cart
//! 5%, save_cart 5%, clear_cart 2%, make_purchase 8%, get_purchase_history 8%,
//! provide_feedback 6% (on a purchased, not yet rated item; else get_seller_rating),
//! get_seller_rating 6%. A buyer with nothing found yet searches; an empty cart turns
//! remove_cart and make_purchase into add_to_cart; a cart of 5 lines is bought.
//!
//! Outcomes: success; an expected domain answer (402 payment_declined, 404, 409: the
//! workload races other clients and the payment service declines 10%); or a failed call
//! (transport error, timeout, 5xx, 401 or any other status), which should never happen.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clients::api::{Card, CreateAccount, Login, NewItem, SearchQuery, Vote};
use clients::{BuyerClient, ClientConfig, ClientError, SellerClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::waits::{self, FrontendWaits};

/// Every client function measured, sellers' first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[allow(missing_docs)]
pub enum Func {
    CreateSeller,
    LoginSeller,
    AddItem,
    ChangePrice,
    RemoveItem,
    AllItemsBySeller,
    SellerGetRating,
    LogoutSeller,
    CreateBuyer,
    LoginBuyer,
    SearchItems,
    GetItem,
    AddToCart,
    DisplayCart,
    RemoveCart,
    SaveCart,
    ClearCart,
    MakePurchase,
    GetPurchaseHistory,
    ProvideFeedback,
    BuyerGetSellerRating,
    LogoutBuyer,
}

impl Func {
    /// Seller functions, in table order.
    pub const SELLER: [Func; 8] = [
        Func::CreateSeller,
        Func::LoginSeller,
        Func::AddItem,
        Func::ChangePrice,
        Func::RemoveItem,
        Func::AllItemsBySeller,
        Func::SellerGetRating,
        Func::LogoutSeller,
    ];
    /// Buyer functions, in table order.
    pub const BUYER: [Func; 14] = [
        Func::CreateBuyer,
        Func::LoginBuyer,
        Func::SearchItems,
        Func::GetItem,
        Func::AddToCart,
        Func::DisplayCart,
        Func::RemoveCart,
        Func::SaveCart,
        Func::ClearCart,
        Func::MakePurchase,
        Func::GetPurchaseHistory,
        Func::ProvideFeedback,
        Func::BuyerGetSellerRating,
        Func::LogoutBuyer,
    ];

    /// The API.md name.
    pub fn name(self) -> &'static str {
        match self {
            Func::CreateSeller => "create_seller",
            Func::LoginSeller => "login_seller",
            Func::AddItem => "add_item",
            Func::ChangePrice => "change_price",
            Func::RemoveItem => "remove_item",
            Func::AllItemsBySeller => "all_items_by_seller",
            Func::SellerGetRating | Func::BuyerGetSellerRating => "get_seller_rating",
            Func::LogoutSeller => "logout_seller",
            Func::CreateBuyer => "create_buyer",
            Func::LoginBuyer => "login_buyer",
            Func::SearchItems => "search_items",
            Func::GetItem => "get_item",
            Func::AddToCart => "add_to_cart",
            Func::DisplayCart => "display_cart",
            Func::RemoveCart => "remove_cart",
            Func::SaveCart => "save_cart",
            Func::ClearCart => "clear_cart",
            Func::MakePurchase => "make_purchase",
            Func::GetPurchaseHistory => "get_purchase_history",
            Func::ProvideFeedback => "provide_feedback",
            Func::LogoutBuyer => "logout_buyer",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// An expected domain answer: 402, 404 or 409.
    Domain,
    /// Anything else: a failed call.
    Failed,
}

/// One timed call.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Which function.
    pub func: Func,
    /// Start, microseconds after the run's origin.
    pub start_us: u64,
    /// Response time in microseconds.
    pub latency_us: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// A failure injected during the run.
#[derive(Debug, Clone, Serialize)]
pub struct Injection {
    /// What was done, e.g. "kill -9 product-db leader".
    pub what: String,
    /// The victim's process name.
    pub victim: String,
    /// Its pid.
    pub pid: u32,
    /// When, ms after the run's origin.
    pub at_ms: f64,
    /// For a leader kill: when `market status` first showed a new leader, ms after the kill
    /// (an upper bound: the query itself waits on the dead replica).
    pub new_leader_after_ms: Option<f64>,
    /// How long that `market status` query took, ms (the bound's coarseness).
    pub status_query_ms: Option<f64>,
    /// For a replica restarted after its kill: when `market status` first showed it up again
    /// and at least as far as the slowest other member was one poll before, ms after the
    /// kill (an upper bound).
    pub back_after_ms: Option<f64>,
}

/// The failure injector: runs on a blocking thread when half the calls are done; gets the
/// run's origin and returns what it did.
pub type Injector = Box<dyn FnOnce(Instant) -> Result<Vec<Injection>, String> + Send>;

/// The size of one run.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Concurrent sellers.
    pub sellers: usize,
    /// Concurrent buyers.
    pub buyers: usize,
    /// Calls per client in the measured mix (create, login and logout come on top).
    pub calls_per_client: u64,
    /// A client stops its mix early after this long (a safety net for a stalled cluster).
    pub mix_time_max: Duration,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct RunData {
    /// Every call.
    pub samples: Vec<Sample>,
    /// A description of the first failed calls.
    pub failures: Vec<String>,
    /// When the mix started (the barrier opened), µs after the origin.
    pub mix_start_us: u64,
    /// When the last client finished its mix, µs after the origin.
    pub mix_end_us: u64,
    /// Injected failures.
    pub injections: Vec<Injection>,
    /// The injector's error, if it failed.
    pub injector_error: Option<String>,
    /// What the frontends waited for during the mix ([`waits`]).
    pub frontend_waits: Option<FrontendWaits>,
}

const PASSWORD: &str = "scenario-bench-pw";
const FAILURES_KEPT: usize = 20;
/// Clients creating their account and logging in at once. Sign-ups are spread out in
/// reality; 200 simultaneous Argon2id hashes (19 MiB each) on 2 cores only measure a queue.
const SETUP_CONCURRENCY: usize = 4;
/// Attempts at create + login before a client gives up its session.
const SETUP_ATTEMPTS: usize = 3;
const KEYWORDS: [&str; 8] = [
    "lamp", "desk", "chair", "book", "phone", "bike", "shoe", "watch",
];

struct Shared {
    origin: Instant,
    mix_done: AtomicU64,
    barrier: tokio::sync::Barrier,
    mix_start: OnceLock<Instant>,
    /// Told once the mix starts (its one waiter reads the frontends' waits then).
    mix_started: tokio::sync::Notify,
    /// Bounds concurrent account creations and logins (Argon2id, 19 MiB each).
    setup_gate: tokio::sync::Semaphore,
}

struct Recorder {
    shared: Arc<Shared>,
    samples: Vec<Sample>,
    failures: Vec<String>,
    in_mix: bool,
    who: String,
}

impl Recorder {
    /// Times `fut`; `Ok` on success, else the error's code.
    async fn call<T>(
        &mut self,
        func: Func,
        fut: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, String> {
        let start = Instant::now();
        let result = fut.await;
        let latency = start.elapsed();
        let (outcome, answer) = match result {
            Ok(v) => (Outcome::Ok, Ok(v)),
            Err(e) => {
                let expected =
                    matches!(e, ClientError::Api(_)) && matches!(e.status(), Some(402 | 404 | 409));
                if !expected && self.failures.len() < FAILURES_KEPT {
                    self.failures.push(format!(
                        "{} {} at {:.3} s after {:.1} ms: {e}",
                        self.who,
                        func.name(),
                        start.duration_since(self.shared.origin).as_secs_f64(),
                        latency.as_secs_f64() * 1e3
                    ));
                }
                let outcome = if expected {
                    Outcome::Domain
                } else {
                    Outcome::Failed
                };
                (outcome, Err(e.code().to_string()))
            }
        };
        self.samples.push(Sample {
            func,
            start_us: start.duration_since(self.shared.origin).as_micros() as u64,
            latency_us: latency.as_micros() as u64,
            outcome,
        });
        if self.in_mix {
            self.shared.mix_done.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// Waits for every client, then starts counting calls as part of the mix.
    async fn start_mix(&mut self) {
        if self.shared.barrier.wait().await.is_leader() {
            let _ = self.shared.mix_start.set(Instant::now());
            self.shared.mix_started.notify_one();
        }
        self.in_mix = true;
    }
}

struct ClientDone {
    samples: Vec<Sample>,
    failures: Vec<String>,
    mix_end: Instant,
}

fn client_config(i: usize) -> ClientConfig {
    ClientConfig {
        initial_replica: Some(i),
        ..ClientConfig::default()
    }
}

/// Creates the account (an earlier attempt that timed out may already have) and logs in, at
/// most `SETUP_ATTEMPTS` times, while at most `SETUP_CONCURRENCY` clients do this at once.
/// True once logged in.
async fn sign_up<CF, LF, A, B>(
    rec: &mut Recorder,
    shared: &Shared,
    name: &str,
    username: &str,
    (create_func, create): (Func, impl Fn(CreateAccount) -> CF),
    (login_func, login): (Func, impl Fn(Login) -> LF),
) -> bool
where
    CF: Future<Output = Result<A, ClientError>>,
    LF: Future<Output = Result<B, ClientError>>,
{
    let _permit = shared.setup_gate.acquire().await;
    let account = CreateAccount {
        name: name.to_string(),
        username: username.to_string(),
        password: PASSWORD.into(),
    };
    let credentials = Login {
        username: username.to_string(),
        password: PASSWORD.into(),
    };
    let mut created = false;
    for _ in 0..SETUP_ATTEMPTS {
        if !created {
            match rec.call(create_func, create(account.clone())).await {
                Ok(_) => created = true,
                // An earlier attempt that timed out did create it.
                Err(code) if code == "username_taken" => created = true,
                Err(_) => continue,
            }
        }
        if rec
            .call(login_func, login(credentials.clone()))
            .await
            .is_ok()
        {
            return true;
        }
    }
    false
}

async fn seller(
    i: usize,
    urls: Vec<String>,
    spec: LoadSpec,
    shared: Arc<Shared>,
) -> Result<ClientDone, String> {
    let client = SellerClient::with_config(&urls, client_config(i)).map_err(|e| e.to_string())?;
    let mut rec = Recorder {
        shared: shared.clone(),
        samples: Vec::with_capacity(spec.calls_per_client as usize + 4),
        failures: Vec::new(),
        in_mix: false,
        who: format!("seller {i}"),
    };
    let mut rng = StdRng::seed_from_u64(1000 + i as u64);
    let username = format!("seller{i}");
    let c = &client;
    let logged_in = sign_up(
        &mut rec,
        &shared,
        &format!("Seller {i}"),
        &username,
        (
            Func::CreateSeller,
            |a| async move { c.create_seller(&a).await },
        ),
        (
            Func::LoginSeller,
            |l| async move { c.login_seller(&l).await },
        ),
    )
    .await;
    rec.start_mix().await;
    let calls = if logged_in { spec.calls_per_client } else { 0 };
    let deadline = Instant::now() + spec.mix_time_max;
    let mut items: Vec<String> = Vec::new();
    for _ in 0..calls {
        if Instant::now() > deadline {
            break;
        }
        let roll = rng.gen_range(0..100);
        let func = match roll {
            _ if items.is_empty() => Func::AddItem,
            0..15 if items.len() < 40 => Func::AddItem,
            0..40 => Func::ChangePrice,
            40..50 => Func::RemoveItem,
            50..75 => Func::AllItemsBySeller,
            _ => Func::SellerGetRating,
        };
        match func {
            Func::AddItem => {
                let kw = KEYWORDS[rng.gen_range(0..KEYWORDS.len())];
                let kw2 = KEYWORDS[rng.gen_range(0..KEYWORDS.len())];
                let item = NewItem {
                    name: format!("{kw} {}", items.len()),
                    category: rng.gen_range(0..10),
                    keywords: vec![kw.into(), kw2.into()],
                    condition: if rng.gen_bool(0.5) {
                        clients::api::Condition::New
                    } else {
                        clients::api::Condition::Used
                    },
                    price_cents: rng.gen_range(100..100_000),
                    quantity: 100_000,
                };
                if let Ok(it) = rec.call(func, client.add_item(&item)).await {
                    items.push(it.id);
                }
            }
            Func::ChangePrice => {
                let id = &items[rng.gen_range(0..items.len())];
                let price = rng.gen_range(100..100_000);
                let _ = rec.call(func, client.change_price(id, price)).await;
            }
            Func::RemoveItem => {
                let id = &items[rng.gen_range(0..items.len())];
                let _ = rec.call(func, client.remove_item(id, Some(1))).await;
            }
            Func::AllItemsBySeller => {
                let _ = rec.call(func, client.all_items_by_seller()).await;
            }
            _ => {
                let _ = rec.call(func, client.get_seller_rating()).await;
            }
        }
    }
    let mix_end = Instant::now();
    rec.in_mix = false;
    if logged_in {
        let _ = rec.call(Func::LogoutSeller, client.logout_seller()).await;
    }
    Ok(ClientDone {
        samples: rec.samples,
        failures: rec.failures,
        mix_end,
    })
}

async fn buyer(
    i: usize,
    urls: Vec<String>,
    spec: LoadSpec,
    shared: Arc<Shared>,
) -> Result<ClientDone, String> {
    let client = BuyerClient::with_config(&urls, client_config(i)).map_err(|e| e.to_string())?;
    let mut rec = Recorder {
        shared: shared.clone(),
        samples: Vec::with_capacity(spec.calls_per_client as usize + 4),
        failures: Vec::new(),
        in_mix: false,
        who: format!("buyer {i}"),
    };
    let mut rng = StdRng::seed_from_u64(2000 + i as u64);
    let username = format!("buyer{i}");
    let c = &client;
    let logged_in = sign_up(
        &mut rec,
        &shared,
        &format!("Buyer {i}"),
        &username,
        (
            Func::CreateBuyer,
            |a| async move { c.create_buyer(&a).await },
        ),
        (Func::LoginBuyer, |l| async move { c.login_buyer(&l).await }),
    )
    .await;
    rec.start_mix().await;
    let card = Card {
        name: format!("Buyer {i}"),
        number: "4111111111111111".into(),
        expiry: "12/39".into(),
        cvv: "123".into(),
    };
    let calls = if logged_in { spec.calls_per_client } else { 0 };
    let deadline = Instant::now() + spec.mix_time_max;
    // (item id, seller id) from the last search that found something.
    let mut known: Vec<(String, u64)> = Vec::new();
    let mut cart: Vec<String> = Vec::new();
    let mut unrated: Vec<String> = Vec::new();
    let mut rated: std::collections::HashSet<String> = Default::default();
    let mut must_clear = false;
    for _ in 0..calls {
        if Instant::now() > deadline {
            break;
        }
        let roll = rng.gen_range(0..100);
        let mut func = match roll {
            _ if must_clear => Func::ClearCart,
            _ if known.is_empty() => Func::SearchItems,
            0..18 => Func::SearchItems,
            18..32 => Func::GetItem,
            32..48 => Func::AddToCart,
            48..58 => Func::DisplayCart,
            58..63 => Func::RemoveCart,
            63..68 => Func::SaveCart,
            68..70 => Func::ClearCart,
            70..78 => Func::MakePurchase,
            78..86 => Func::GetPurchaseHistory,
            86..92 => Func::ProvideFeedback,
            _ => Func::BuyerGetSellerRating,
        };
        func = match func {
            Func::RemoveCart | Func::MakePurchase if cart.is_empty() => Func::AddToCart,
            Func::AddToCart if cart.len() >= 5 => Func::MakePurchase,
            Func::ProvideFeedback if unrated.is_empty() => Func::BuyerGetSellerRating,
            f => f,
        };
        match func {
            Func::SearchItems => {
                let query = if rng.gen_bool(0.5) {
                    SearchQuery {
                        category: Some(rng.gen_range(0..10)),
                        keywords: Vec::new(),
                        limit: Some(20),
                    }
                } else {
                    SearchQuery {
                        category: None,
                        keywords: vec![KEYWORDS[rng.gen_range(0..KEYWORDS.len())].into()],
                        limit: Some(20),
                    }
                };
                if let Ok(found) = rec.call(func, client.search_items(&query)).await {
                    if !found.items.is_empty() {
                        known = found
                            .items
                            .into_iter()
                            .map(|it| (it.id, it.seller_id))
                            .collect();
                    }
                }
            }
            Func::GetItem => {
                let id = &known[rng.gen_range(0..known.len())].0;
                let _ = rec.call(func, client.get_item(id)).await;
            }
            Func::AddToCart => {
                let id = &known[rng.gen_range(0..known.len())].0;
                if let Ok(c) = rec.call(func, client.add_to_cart(id, 1)).await {
                    cart = c.items.into_iter().map(|l| l.item_id).collect();
                }
            }
            Func::DisplayCart => {
                if let Ok(c) = rec.call(func, client.display_cart()).await {
                    cart = c.items.into_iter().map(|l| l.item_id).collect();
                }
            }
            Func::RemoveCart => {
                let id = cart[rng.gen_range(0..cart.len())].clone();
                if let Ok(c) = rec.call(func, client.remove_cart(&id, None)).await {
                    cart = c.items.into_iter().map(|l| l.item_id).collect();
                }
            }
            Func::SaveCart => {
                let _ = rec.call(func, client.save_cart()).await;
            }
            Func::ClearCart => {
                if rec.call(func, client.clear_cart()).await.is_ok() {
                    cart.clear();
                    must_clear = false;
                }
            }
            Func::MakePurchase => match rec.call(func, client.make_purchase(&card)).await {
                Ok(p) => {
                    cart.clear();
                    for line in p.lines {
                        if !rated.contains(&line.item_id) && !unrated.contains(&line.item_id) {
                            unrated.push(line.item_id);
                        }
                    }
                }
                Err(code) if code == "insufficient_quantity" || code == "not_found" => {
                    must_clear = true;
                }
                Err(_) => {}
            },
            Func::GetPurchaseHistory => {
                let _ = rec.call(func, client.get_purchase_history()).await;
            }
            Func::ProvideFeedback => {
                let id = unrated.swap_remove(rng.gen_range(0..unrated.len()));
                let vote = if rng.gen_bool(0.8) {
                    Vote::Up
                } else {
                    Vote::Down
                };
                let _ = rec.call(func, client.provide_feedback(&id, vote)).await;
                rated.insert(id);
            }
            _ => {
                let seller = known[rng.gen_range(0..known.len())].1;
                let _ = rec.call(func, client.get_seller_rating(seller)).await;
            }
        }
    }
    let mix_end = Instant::now();
    rec.in_mix = false;
    if logged_in {
        let _ = rec.call(Func::LogoutBuyer, client.logout_buyer()).await;
    }
    Ok(ClientDone {
        samples: rec.samples,
        failures: rec.failures,
        mix_end,
    })
}

/// Runs one load against the servers at `seller_urls` / `buyer_urls`; `injector` (if any)
/// runs once half of the mix's calls are done.
pub async fn run(
    spec: LoadSpec,
    seller_urls: &[String],
    buyer_urls: &[String],
    injector: Option<Injector>,
) -> Result<RunData, String> {
    let clients = spec.sellers + spec.buyers;
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        mix_done: AtomicU64::new(0),
        barrier: tokio::sync::Barrier::new(clients),
        mix_start: OnceLock::new(),
        mix_started: tokio::sync::Notify::new(),
        setup_gate: tokio::sync::Semaphore::new(SETUP_CONCURRENCY),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..spec.sellers {
        tasks.spawn(seller(i, seller_urls.to_vec(), spec, shared.clone()));
    }
    for i in 0..spec.buyers {
        tasks.spawn(buyer(i, buyer_urls.to_vec(), spec, shared.clone()));
    }
    let inject = injector.map(|inj| {
        let shared = shared.clone();
        let half = spec.calls_per_client * clients as u64 / 2;
        tokio::spawn(async move {
            let started = Instant::now();
            while shared.mix_done.load(Ordering::Relaxed) < half {
                if started.elapsed() > spec.mix_time_max * 2 {
                    return Err("the run never reached half of its calls".to_string());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let origin = shared.origin;
            tokio::task::spawn_blocking(move || inj(origin))
                .await
                .map_err(|e| format!("injector panicked: {e}"))?
        })
    });
    // The frontends' waits are read as the mix starts and once it is over.
    let frontends: Vec<String> = seller_urls.iter().chain(buyer_urls).cloned().collect();
    let at_start = {
        let (shared, frontends) = (shared.clone(), frontends.clone());
        tokio::spawn(async move {
            shared.mix_started.notified().await;
            waits::read(&frontends).await
        })
    };
    let mut data = RunData::default();
    let mut mix_end = shared.origin;
    while let Some(done) = tasks.join_next().await {
        let done = done.map_err(|e| format!("a client task panicked: {e}"))??;
        data.samples.extend(done.samples);
        data.failures.extend(done.failures);
        mix_end = mix_end.max(done.mix_end);
    }
    if let Some(inject) = inject {
        match inject.await {
            Ok(Ok(list)) => data.injections = list,
            Ok(Err(e)) => data.injector_error = Some(e),
            Err(e) => data.injector_error = Some(format!("injector task: {e}")),
        }
    }
    // The clients are done: a start reading not taken by now never will be (no mix).
    if !at_start.is_finished() {
        at_start.abort();
    }
    let before = at_start.await.unwrap_or_default();
    data.frontend_waits = waits::between(&before, &waits::read(&frontends).await);
    let mix_start = shared.mix_start.get().copied().unwrap_or(shared.origin);
    data.mix_start_us = mix_start.duration_since(shared.origin).as_micros() as u64;
    data.mix_end_us = mix_end.duration_since(shared.origin).as_micros() as u64;
    data.samples.sort_by_key(|s| s.start_us);
    data.failures.truncate(FAILURES_KEPT);
    Ok(data)
}
