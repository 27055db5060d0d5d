//! The [`Market`]: every client function of API.md, written against two replicated logs.
//!
//! The Market is the frontend half of the domain. It validates requests, reads the clock,
//! chooses random tokens and salts, hashes passwords — everything that must not happen inside
//! a state machine — and then proposes deterministic commands to the customer database and
//! the product database, or reads them. It holds the logs as `Arc<dyn ReplicatedLog<_>>`, so
//! the same Market runs over single-node logs (embedded, tests), over the Raft and atomic
//! broadcast logs in process, or over the remote QUIC client of those logs in a server.
//! It keeps no user state of its own: any number of Markets may serve the same databases.
//!
//! # Request ids and retries
//!
//! Every proposal carries a [`RequestId`]: `client` is a random `u64` chosen when the Market
//! is built, `seq` an atomic counter. When a log answers [`LogError::Unavailable`] the Market
//! retries that same step with the *same* id (the log deduplicates, so the step takes effect
//! once), up to [`MarketConfig::propose_attempts`] times, then answers
//! [`MarketError::Unavailable`].
//!
//! # Authentication
//!
//! [`Market::authenticate`] reads the session (linearizable) with the current time, refuses a
//! missing, unknown, ended, expired or wrong-role token with `unauthenticated`, and proposes a
//! `Touch` only when the session's activity mark is older than
//! [`MarketConfig::touch_after_ms`] — so a burst of reads costs one write, not one each.
//! Every function that needs a logged-in user takes an [`Auth`]: a token (`&str` or
//! `&String` convert into one), or a [`UserId`] checked earlier in the same request.
//!
//! A session check is a linearizable read of the customer database, so the Market folds it
//! into the reads a request needs anyway, one round trip instead of two:
//!
//! * `display_cart`, `get_purchase_history`, the seller's own rating and `make_purchase` (its
//!   working cart) read the session and the answer in one query
//!   ([`CustomerQuery::ForSession`]);
//! * [`Market::authenticate_for_retry`] gives an HTTP server the session and the remembered
//!   response of an `Idempotency-Key` in one read (the server then passes the user as
//!   [`Auth::Verified`]);
//! * the cart writes (`add_to_cart`, `remove_cart`, `save_cart`, `clear_cart`) check the
//!   session inside their one replicated write ([`CustomerCommand::ForSession`]);
//! * `all_items_by_seller` reads the items of the seller a token belonged to when this Market
//!   last checked it (a token never changes owner) while it checks the session, and keeps
//!   them only if the check names the same seller.
//!
//! # The purchase workflow
//!
//! [`Market::make_purchase`]: validate the card; read the working cart (`cart_empty`);
//! `Reserve` every line in the product database (all or none: `insufficient_quantity` names the
//! item); ask the [`PaymentService`]. Declined: `Release`, answer `payment_declined`; nothing
//! else changed. Service error: `Release`, answer `unavailable`. Approved: `RecordPurchase` in
//! the customer database (history, counters, both carts emptied), answer the purchase, and
//! then `Confirm` in the product database on a task of its own. The confirmation moves the
//! units from reserved to sold, which no client function shows (an item's `quantity` counts
//! available units, which the reservation already took; the sold counters are the customer
//! database's), so it is the recorded purchase that makes the sale, and the caller does not
//! wait for a second write to a second database: one round of waiting after the payment.
//! [`Market::settle`] waits for the confirmations still on their way. If the record's outcome
//! is unknown (the customer database failed), the attempt confirms first and records again.
//!
//! Recording before confirming needs a fence. A frontend can die with the record written and the
//! confirmation not; a retry with the same key then finds the reservation still held, and
//! (the payment service takes no key) would pay again and, on a decline, release the units
//! of a recorded purchase (the failover test caught that once, when nothing fenced it). So
//! every attempt marks its `Reserve` with a random `attempt`; a retry answered with a
//! reservation that another attempt made and that was held then (`Reservation::attempt`
//! differs) first writes `ClaimPurchase` to the customer database. The claim answers the
//! purchase if an earlier attempt recorded it (that attempt was paid: the retry confirms and
//! answers it, without a second payment); otherwise it fences every earlier attempt: a
//! `RecordPurchase` sent before its confirmation names its attempt and is refused
//! (`Superseded`) once another attempt holds the claim. An attempt whose record was refused
//! waits for its confirmation and then records with no attempt named, which is never refused
//! (the units are sold). The customer database's total order decides which of a claim and an
//! earlier record came first, so a recorded purchase is never one whose units a declined
//! retry released. Two more cases: a retry whose second payment is declined but whose release
//! finds the reservation confirmed (an earlier attempt paid and confirmed, its record lost)
//! records the purchase and answers it; and when the payment took over half of
//! [`MarketConfig::reservation_ttl_ms`], the record waits for the confirmation, which may
//! come too late to sell the units. First attempts, the common case, pay nothing for the
//! fence: only retries write a claim.
//!
//! A frontend that dies after its record but before its confirmation (it answered the
//! purchase, or was about to), or whose confirmation failed after answering, is covered by
//! the *purchase sweeper* ([`Market::sweep_purchases`], run by every
//! [`Market::tick`]; every seller and buyer server ticks every 5 s): it claims each
//! reservation still held within [`MarketConfig::sweep_ahead_ms`] of its lapse. A claim that
//! answers a purchase means the dead attempt was paid and recorded: the sweeper confirms, so the units stay
//! sold. Otherwise the claim refuses that attempt's record if it is still on its way, and the
//! reservation lapses. What remains: if no server ticks during those last seconds
//! (all eight down), a recorded purchase's reservation can lapse and its units go back on
//! sale.
//!
//! A reservation that is neither confirmed nor released (the frontend died)
//! lapses after [`MarketConfig::reservation_ttl_ms`] and its units return; a `Confirm` that
//! arrives after that still sells them if they are still available.
//!
//! **Idempotency-Key.** When the HTTP request carried a key, the reservation id is derived
//! from (buyer, key) ([`reservation_id_for`]) instead of drawn at random. A retry of the same
//! purchase on any replica then finds the same reservation: its `Reserve` answers with the
//! reservation already made under that id before it looks at the lines, which the first
//! attempt may have emptied (the product database remembers finished reservations for 10
//! minutes), so the workflow needs no read of the reservation. If it was confirmed, the
//! payment is not asked again and `RecordPurchase` — idempotent per (reservation id,
//! reservation time) — returns the same purchase; if it was released after a decline, the
//! retry answers `payment_declined` again; if it lapsed or the payment service failed,
//! `unavailable` (retry with a new key). The HTTP layer additionally remembers whole responses
//! ([`Market::idempotency_lookup`], [`Market::idempotency_record`]), which covers every
//! other mutating route and answers most retries before they reach this code.
//!
//! What is not covered: the payment service takes no idempotency key, so a retry that finds
//! the reservation still *held* and no purchase recorded (the first attempt is still
//! running, or died between the payment and its two writes) asks for payment again. And if the reservation lapses while the
//! payment service is deciding (over [`MarketConfig::reservation_ttl_ms`], 2 minutes by
//! default) and its units are sold to someone else meanwhile, an approved payment is answered
//! `unavailable`: the product database sold nothing and no purchase is recorded, but the
//! payment was taken (there is no refund call in API.md, so someone must settle it by hand).
//! In the same slow case, a
//! retry with the same key that arrives after the lapse but before the first attempt's late
//! confirmation is told the attempt failed (`unavailable`, retry with a new key) although
//! that confirmation may still sell the units.
//!
//! # Feedback
//!
//! The customer database is the gate (purchased? first time?) and updates the seller's
//! rating; then the product database adds the vote to the item, idempotently per
//! (buyer, item). A retry after a failure between the two steps gets `feedback_exists` but
//! also completes the product-side step, so the two databases never stay out of step.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use replication::{LogError, LogStatus, ReadConsistency, ReplicatedLog, RequestId};
use tokio_util::task::TaskTracker;

use crate::api::{
    AddToCart, BuyerCreated, BuyerLoginResponse, Cart, CreateAccount, FeedbackRequest, Item, Items,
    Login, NewItem, PriceChange, Purchase, PurchaseLine, PurchaseRequest, Purchases, Rating,
    SearchQuery, SellerCreated, SellerLoginResponse,
};
use crate::clock::Clock;
use crate::customer::{
    CustomerAnswer, CustomerCommand, CustomerMachine, CustomerOutput, CustomerQuery, RememberEntry,
    SessionCommand, StoredResponse, UserQuery,
};
use crate::error::MarketError;
use crate::ids::{BuyerId, ItemId, Role, SellerId, UserId};
use crate::password::{self, PasswordParams};
use crate::payment::{PaymentRequest, PaymentService};
use crate::product::{
    ProductAnswer, ProductCommand, ProductMachine, ProductOutput, ProductQuery, ReleaseReason,
    Reservation, ReservationState,
};
use crate::validate;

/// Longest bearer token looked up (tokens the Market issues are 64 characters).
pub const TOKEN_CHARS_MAX: usize = 128;
/// Longest idempotency scope.
pub const SCOPE_CHARS_MAX: usize = 128;

/// Who is calling: a bearer token to check, or a user that [`Market::authenticate`] or
/// [`Market::authenticate_for_retry`] already checked for this same request (an HTTP server
/// that looked up a remembered response passes the result, saving a second session read).
/// A `Verified` user of the wrong role is refused with `unauthenticated`, like a wrong-role
/// token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth<'a> {
    /// `Authorization: Bearer <token>`.
    Token(&'a str),
    /// Already authenticated.
    Verified(UserId),
}

impl std::fmt::Debug for Auth<'_> {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::Verified(u) => write!(f, "Verified({u:?})"),
        }
    }
}

impl<'a> From<&'a str> for Auth<'a> {
    fn from(token: &'a str) -> Self {
        Auth::Token(token)
    }
}

impl<'a> From<&'a String> for Auth<'a> {
    fn from(token: &'a String) -> Self {
        Auth::Token(token)
    }
}

impl From<UserId> for Auth<'static> {
    fn from(user: UserId) -> Self {
        Auth::Verified(user)
    }
}

impl From<SellerId> for Auth<'static> {
    fn from(seller: SellerId) -> Self {
        Auth::Verified(UserId::Seller(seller))
    }
}

impl From<BuyerId> for Auth<'static> {
    fn from(buyer: BuyerId) -> Self {
        Auth::Verified(UserId::Buyer(buyer))
    }
}

/// Frontend settings of a [`Market`]. Unlike the state machines' configs these may differ
/// between frontends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketConfig {
    /// Argon2id cost of new password hashes.
    pub password: PasswordParams,
    /// A session's activity mark is refreshed (one write) when older than this. Idle expiry
    /// counts from the last refresh, so a session may end up to this much early.
    pub touch_after_ms: u64,
    /// A purchase reservation lapses after this long if neither confirmed nor released.
    pub reservation_ttl_ms: u64,
    /// The purchase sweeper ([`Market::sweep_purchases`]) looks at held reservations that
    /// lapse within this long (at most a quarter of `reservation_ttl_ms`): more than the
    /// interval between ticks, so each is seen before it lapses.
    pub sweep_ahead_ms: u64,
    /// Attempts per step when the log answers `Unavailable` (same request id each time).
    pub propose_attempts: u32,
    /// Pause before the second attempt; doubles per attempt.
    pub retry_backoff_ms: u64,
    /// Consistency of the public, token-less reads (`search_items`, `get_item`,
    /// `get_seller_rating`). Linearizable by default; `Stale` saves a read barrier per
    /// request at the price of answers that may lag by a few milliseconds. Session,
    /// cart, credential and idempotency reads are always linearizable.
    pub public_reads: ReadConsistency,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            password: PasswordParams::PRODUCTION,
            touch_after_ms: 5_000,
            reservation_ttl_ms: 120_000,
            sweep_ahead_ms: 15_000,
            propose_attempts: 3,
            retry_backoff_ms: 50,
            public_reads: ReadConsistency::Linearizable,
        }
    }
}

impl MarketConfig {
    /// The defaults with the cheapest Argon2 parameters: for tests only.
    pub fn for_tests() -> Self {
        Self {
            password: PasswordParams::TESTING,
            ..Self::default()
        }
    }
}

/// The marketplace service: every seller and buyer function of API.md.
pub struct Market {
    customers: Arc<dyn ReplicatedLog<CustomerMachine>>,
    products: Arc<dyn ReplicatedLog<ProductMachine>>,
    payments: Arc<dyn PaymentService>,
    clock: Arc<dyn Clock>,
    config: MarketConfig,
    client: u64,
    seq: AtomicU64,
    dummy_hash: String,
    /// Which user each recently checked token belongs to (by digest): a token never changes
    /// owner, so this tells who a token *claims* to be, never whether its session is live.
    token_users: Mutex<HashMap<u64, UserId>>,
    /// Confirmations sent after their purchase was answered ([`Market::settle`]). Closed
    /// from the start: spawning still works, and `wait` then ends whenever none is running.
    deferred: TaskTracker,
    /// Deferred confirmations that failed (the purchase sweeper sells their units).
    deferred_failed: Arc<AtomicU64>,
}

/// Work a [`Market`] finishes after it answered: a purchase's confirmation
/// ([`Market::deferred`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deferred {
    /// Confirmations still being sent.
    pub running: usize,
    /// Confirmations that failed since this Market started; the purchase sweeper confirms
    /// each of them before its reservation lapses.
    pub failed: u64,
}

/// Most entries in [`Market`]'s token-to-user memory (it starts over when full).
const TOKEN_USERS_MAX: usize = 65_536;

fn token_digest(token: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

impl std::fmt::Debug for Market {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Market")
            .field("client", &self.client)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What [`Market::read_session`] found.
struct SessionRead {
    /// The session's user, or why the token is refused.
    user: Result<UserId, MarketError>,
    /// The answer about the user, when asked and the session is live and of the right role.
    about: Option<CustomerAnswer>,
    /// The remembered response, when asked and kept.
    remembered: Option<StoredResponse>,
}

fn unexpected(what: &str) -> MarketError {
    MarketError::Unavailable(format!("unexpected answer from the database ({what})"))
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Most reservations one sweep ([`Market::sweep_purchases`]) looks at.
pub const SWEEP_BATCH: usize = 64;

/// How a purchase's payment stands once the payment service has been asked.
enum Paid {
    /// Approved for this attempt.
    Now,
    /// Refused for this attempt, but another attempt was paid and confirmed the reservation.
    Earlier,
}

/// The reservation id of a purchase retried with `key` by `buyer` (FNV-1a, 64 bits): the same
/// on every frontend.
pub fn reservation_id_for(buyer: BuyerId, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for b in b"purchase\0" {
        eat(*b);
    }
    for b in buyer.0.to_le_bytes() {
        eat(b);
    }
    for b in key.bytes() {
        eat(b);
    }
    h
}

tokio::task_local! {
    /// The request-id client derived from the current HTTP request's idempotency key.
    static REQUEST_KEY: u64;
}

/// Runs `f` (one Market call) with request ids derived from `(scope, key)`: each effect step
/// of the call (creating an account, adding an item, changing a cart, recording a purchase,
/// ...) is proposed with `RequestId { client: hash(scope, key), seq: step }`. A retry of the
/// same request — on another frontend, while the first attempt is still running, or after it
/// died mid-way — proposes the same ids, so the logs apply each step once and answer the
/// retry with the first outcome. Session touches, ticks, purchase claims and the reservation
/// commands keep fresh ids: a reservation is idempotent by its own id (derived from the key)
/// and a retry must see its state now, not the first attempt's answer (see
/// [`ProductCommand::step`]).
///
/// The logs remember a bounded number of such request ids (see
/// `replication::dedup::CLIENTS_MAX_DEFAULT`); the HTTP layer's remembered responses cover
/// completed requests for 10 minutes beyond that.
pub async fn with_idempotency_key<F: std::future::Future>(
    scope: &str,
    key: &str,
    f: F,
) -> F::Output {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"request\0"
        .iter()
        .chain(scope.as_bytes())
        .chain(b"\0")
        .chain(key.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    REQUEST_KEY.scope(h, f).await
}

/// The remembered-response lookup a caller left to the Market (see [`with_remembered_lookup`]).
struct RememberedLookup {
    scope: String,
    key: String,
    found: std::sync::Mutex<Option<StoredResponse>>,
}

tokio::task_local! {
    static REMEMBERED_LOOKUP: RememberedLookup;
}

/// Runs `f` (one Market call) with the lookup of the response remembered for `(scope, key)`
/// (see [`Market::idempotency_lookup`]) folded into the call's session check: the read or
/// the write that checks the caller's session (and that the call makes anyway) also looks
/// the response up, so a server needs no lookup round trip of its own before the call.
///
/// Returns the call's output and the remembered response if one was found. When it was, the
/// call stopped at that session check with nothing changed (its output is then an
/// `unavailable` error to be ignored) and the server answers with the remembered response.
/// Applies to calls with a token that check the session themselves: the cart writes,
/// `provide_feedback` and `make_purchase`.
pub async fn with_remembered_lookup<F: std::future::Future>(
    scope: &str,
    key: &str,
    f: F,
) -> (F::Output, Option<StoredResponse>) {
    let lookup = RememberedLookup {
        scope: scope.to_string(),
        key: key.to_string(),
        found: std::sync::Mutex::new(None),
    };
    REMEMBERED_LOOKUP
        .scope(lookup, async move {
            let output = f.await;
            let found = REMEMBERED_LOOKUP
                .try_with(|l| l.found.lock().unwrap_or_else(|p| p.into_inner()).take())
                .ok()
                .flatten();
            (output, found)
        })
        .await
}

/// The `(scope, key)` whose remembered response the running call looks up itself, if any.
fn remembered_lookup() -> Option<(String, String)> {
    REMEMBERED_LOOKUP
        .try_with(|l| (l.scope.clone(), l.key.clone()))
        .ok()
}

/// Hands a found remembered response to [`with_remembered_lookup`]; the error stops the call.
fn answer_remembered(response: StoredResponse) -> MarketError {
    let _ = REMEMBERED_LOOKUP.try_with(|l| {
        *l.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(response);
    });
    MarketError::Unavailable("answered with the remembered response".into())
}

fn path_item(id: &str) -> Result<ItemId, MarketError> {
    id.parse().map_err(|_| {
        MarketError::NotFound(format!(
            "item {:?}",
            id.chars().take(40).collect::<String>()
        ))
    })
}

/// [`Market::with_retries`] without the Market, for work that outlives the call that
/// started it: `attempts` tries at most, the pause doubling from `backoff_ms`.
async fn retrying<T, Fut>(
    attempts: u32,
    backoff_ms: u64,
    mut call: impl FnMut() -> Fut,
) -> Result<T, MarketError>
where
    Fut: std::future::Future<Output = Result<T, LogError>>,
{
    let mut attempt: u32 = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(LogError::Unavailable(_)) if attempt.saturating_add(1) < attempts => {
                let ms = backoff_ms.saturating_mul(1u64 << attempt.min(10));
                tokio::time::sleep(Duration::from_millis(ms)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Market {
    /// A Market over the two databases. `client` ids for request ids are drawn at random.
    pub fn new(
        customers: Arc<dyn ReplicatedLog<CustomerMachine>>,
        products: Arc<dyn ReplicatedLog<ProductMachine>>,
        payments: Arc<dyn PaymentService>,
        clock: Arc<dyn Clock>,
        config: MarketConfig,
    ) -> Self {
        let dummy_hash =
            password::hash("not a password", &password::random_salt(), config.password)
                .unwrap_or_default();
        Self {
            customers,
            products,
            payments,
            clock,
            config,
            client: rand::random(),
            seq: AtomicU64::new(1),
            dummy_hash,
            token_users: Mutex::new(HashMap::new()),
            deferred: {
                let tracker = TaskTracker::new();
                tracker.close();
                tracker
            },
            deferred_failed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waits until every confirmation sent after its purchase was answered is done. A server
    /// calls it when it stops (with a time limit of its own); a test before it counts sold
    /// units. Purchases answered meanwhile are waited for too.
    pub async fn settle(&self) {
        self.deferred.wait().await;
    }

    /// How the work sent after answering stands.
    pub fn deferred(&self) -> Deferred {
        Deferred {
            running: self.deferred.len(),
            failed: self.deferred_failed.load(Ordering::Relaxed),
        }
    }

    /// The random client id in this Market's request ids.
    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// The frontend settings.
    pub fn config(&self) -> &MarketConfig {
        &self.config
    }

    /// The clock commands are stamped with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Progress of the customer database replica this Market talks to.
    pub fn customer_status(&self) -> LogStatus {
        self.customers.status()
    }

    /// Progress of the product database replica this Market talks to.
    pub fn product_status(&self) -> LogStatus {
        self.products.status()
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn next_request_id(&self) -> RequestId {
        RequestId {
            client: self.client,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The request id of an effect step: derived from the caller's idempotency key when the
    /// call runs inside [`with_idempotency_key`], so a retry of the same HTTP request on any
    /// frontend proposes the same ids and the logs apply each step once; otherwise fresh.
    fn step_id(&self, step: Option<u64>) -> RequestId {
        match (step, REQUEST_KEY.try_with(|k| *k)) {
            (Some(step), Ok(client)) => RequestId { client, seq: step },
            _ => self.next_request_id(),
        }
    }

    /// Runs one database call, again while the log answers `Unavailable`, up to
    /// [`MarketConfig::propose_attempts`] times with a doubling pause. A proposal is retried
    /// with the same request id, so it takes effect once.
    async fn with_retries<T, Fut>(&self, call: impl FnMut() -> Fut) -> Result<T, MarketError>
    where
        Fut: std::future::Future<Output = Result<T, LogError>>,
    {
        retrying(
            self.config.propose_attempts,
            self.config.retry_backoff_ms,
            call,
        )
        .await
    }

    /// Proposes one step to the customer database, retrying `Unavailable` with the same id.
    async fn customer(&self, command: CustomerCommand) -> Result<CustomerOutput, MarketError> {
        let id = self.step_id(command.step());
        self.with_retries(|| self.customers.propose(id, command.clone()))
            .await?
    }

    /// Proposes one step to the product database, retrying `Unavailable` with the same id.
    async fn product(&self, command: ProductCommand) -> Result<ProductOutput, MarketError> {
        let id = self.step_id(command.step());
        self.with_retries(|| self.products.propose(id, command.clone()))
            .await?
    }

    async fn read_customer(&self, query: CustomerQuery) -> Result<CustomerAnswer, MarketError> {
        self.read_customer_with(query, ReadConsistency::Linearizable)
            .await
    }

    async fn read_customer_with(
        &self,
        query: CustomerQuery,
        consistency: ReadConsistency,
    ) -> Result<CustomerAnswer, MarketError> {
        self.with_retries(|| self.customers.read(query.clone(), consistency))
            .await
    }

    async fn read_product(&self, query: ProductQuery) -> Result<ProductAnswer, MarketError> {
        self.read_product_with(query, ReadConsistency::Linearizable)
            .await
    }

    async fn read_product_with(
        &self,
        query: ProductQuery,
        consistency: ReadConsistency,
    ) -> Result<ProductAnswer, MarketError> {
        self.with_retries(|| self.products.read(query.clone(), consistency))
            .await
    }

    async fn product_item(&self, command: ProductCommand) -> Result<Item, MarketError> {
        match self.product(command).await? {
            ProductOutput::Item(item) => Ok(item),
            _ => Err(unexpected("item")),
        }
    }

    async fn product_reservation(
        &self,
        command: ProductCommand,
    ) -> Result<Reservation, MarketError> {
        match self.product(command).await? {
            ProductOutput::Reservation(r) => Ok(r),
            _ => Err(unexpected("reservation")),
        }
    }

    /// [`Market::session_command`] for a command whose output is the cart.
    async fn cart_after(
        &self,
        auth: Auth<'_>,
        command: SessionCommand,
    ) -> Result<Cart, MarketError> {
        match self.session_command(auth, command).await? {
            CustomerOutput::Cart(c) => Ok(c),
            _ => Err(unexpected("cart")),
        }
    }

    // ----------------------------------------------------------------------------------
    // Sessions
    // ----------------------------------------------------------------------------------

    /// Checks a bearer token for `role`: the user of a live session, or `unauthenticated`
    /// (missing, unknown, logged out, expired, or the other role's token). Refreshes the
    /// session's activity mark when it is older than [`MarketConfig::touch_after_ms`].
    pub async fn authenticate(&self, token: &str, role: Role) -> Result<UserId, MarketError> {
        self.read_session(token, role, None, None).await?.user
    }

    /// For the HTTP layer's idempotent requests: in **one** linearizable read, the response
    /// remembered for `(scope, key)` (see [`Market::idempotency_lookup`]) and the user of
    /// `token` for `role` (as [`Market::authenticate`] checks it). The outer error is the
    /// database's; the inner result is the token's verdict, given even when a response is
    /// remembered, which wins: a retry after logout still gets its original answer.
    pub async fn authenticate_for_retry(
        &self,
        token: &str,
        role: Role,
        scope: &str,
        key: &str,
    ) -> Result<(Option<StoredResponse>, Result<UserId, MarketError>), MarketError> {
        Self::check_scope(scope, key)?;
        let read = self
            .read_session(token, role, None, Some((scope, key)))
            .await?;
        Ok((read.remembered, read.user))
    }

    /// Reads a session, and in the same round what `about` asks of its user and the response
    /// remembered for `remembered`. Refreshes the activity mark when due (a write, at most
    /// once per [`MarketConfig::touch_after_ms`] per session).
    async fn read_session(
        &self,
        token: &str,
        role: Role,
        about: Option<UserQuery>,
        remembered: Option<(&str, &str)>,
    ) -> Result<SessionRead, MarketError> {
        let malformed = token.is_empty() || token.len() > TOKEN_CHARS_MAX;
        if malformed && remembered.is_none() {
            return Err(MarketError::Unauthenticated(
                "missing or malformed token".into(),
            ));
        }
        let now = self.now();
        // A call that left the remembered-response lookup to the Market has it done here.
        let folded = remembered.is_none().then(remembered_lookup).flatten();
        let remembered = folded
            .as_ref()
            .map(|(scope, key)| (scope.as_str(), key.as_str()))
            .or(remembered);
        let answer = self
            .read_customer(CustomerQuery::ForSession {
                token: if malformed {
                    String::new()
                } else {
                    token.to_string()
                },
                role,
                now_ms: now,
                about,
                remembered: remembered.map(|(s, k)| (s.to_string(), k.to_string())),
            })
            .await?;
        let CustomerAnswer::ForSession {
            session,
            about,
            remembered,
        } = answer
        else {
            return Err(unexpected("session"));
        };
        if folded.is_some() {
            if let Some(response) = remembered {
                return Err(answer_remembered(response));
            }
        }
        let user = match session {
            _ if malformed => Err(MarketError::Unauthenticated(
                "missing or malformed token".into(),
            )),
            None => Err(MarketError::Unauthenticated(
                "unknown, ended or expired session".into(),
            )),
            Some(s) if s.user.role() != role => Err(MarketError::Unauthenticated(
                "this token belongs to the other role".into(),
            )),
            Some(s) => {
                if now.saturating_sub(s.last_active_ms) >= self.config.touch_after_ms {
                    self.customer(CustomerCommand::Touch {
                        token: token.to_string(),
                        at_ms: now,
                    })
                    .await?;
                }
                self.remember_token_user(token, s.user);
                Ok(s.user)
            }
        };
        Ok(SessionRead {
            user,
            about: about.map(|a| *a),
            remembered,
        })
    }

    fn remember_token_user(&self, token: &str, user: UserId) {
        let mut users = self.token_users.lock().unwrap_or_else(|p| p.into_inner());
        if users.len() >= TOKEN_USERS_MAX {
            users.clear();
        }
        users.insert(token_digest(token), user);
    }

    /// The user `token` belonged to when this Market last checked it, if it did: who the
    /// token claims to be, to start a read about that user while its session is checked.
    fn claimed_user(&self, token: &str) -> Option<UserId> {
        self.token_users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token_digest(token))
            .copied()
    }

    /// What `about` says of the calling user, checked for `role`: with a token, the session
    /// and the answer come from one read; with a verified user, only the answer is read.
    async fn read_about(
        &self,
        auth: Auth<'_>,
        role: Role,
        about: UserQuery,
    ) -> Result<(UserId, CustomerAnswer), MarketError> {
        match auth {
            Auth::Token(token) => {
                let read = self.read_session(token, role, Some(about), None).await?;
                let user = read.user?;
                let answer = read
                    .about
                    .ok_or_else(|| unexpected("answer about the user"))?;
                Ok((user, answer))
            }
            Auth::Verified(user) => {
                if user.role() != role {
                    return Err(MarketError::Unauthenticated(
                        "this token belongs to the other role".into(),
                    ));
                }
                let query = about
                    .for_user(user, self.now())
                    .ok_or_else(|| unexpected("query for this role"))?;
                Ok((user, self.read_customer(query).await?))
            }
        }
    }

    /// [`Market::read_about`] for the calling user's own record (`what`, for errors): `pick`
    /// takes the record out of the answer (`None`: an answer of another kind), and a missing
    /// record is `NotFound`.
    async fn read_own<T>(
        &self,
        auth: Auth<'_>,
        role: Role,
        (about, what): (UserQuery, &str),
        pick: impl FnOnce(CustomerAnswer) -> Option<Option<T>>,
    ) -> Result<T, MarketError> {
        let (user, answer) = self.read_about(auth, role, about).await?;
        match pick(answer) {
            Some(Some(record)) => Ok(record),
            Some(None) => Err(MarketError::NotFound(match role {
                Role::Seller => format!("seller {}", user.number()),
                Role::Buyer => format!("buyer {}", user.number()),
            })),
            None => Err(unexpected(what)),
        }
    }

    /// [`Market::authenticate`] for a seller token.
    pub async fn authenticate_seller(&self, token: &str) -> Result<SellerId, MarketError> {
        match self.authenticate(token, Role::Seller).await? {
            UserId::Seller(id) => Ok(id),
            UserId::Buyer(_) => Err(MarketError::Unauthenticated("not a seller".into())),
        }
    }

    /// [`Market::authenticate`] for a buyer token.
    pub async fn authenticate_buyer(&self, token: &str) -> Result<BuyerId, MarketError> {
        match self.authenticate(token, Role::Buyer).await? {
            UserId::Buyer(id) => Ok(id),
            UserId::Seller(_) => Err(MarketError::Unauthenticated("not a buyer".into())),
        }
    }

    /// The seller calling, from a token or an already verified user.
    pub async fn seller_of(&self, auth: Auth<'_>) -> Result<SellerId, MarketError> {
        match auth {
            Auth::Token(token) => self.authenticate_seller(token).await,
            Auth::Verified(UserId::Seller(id)) => Ok(id),
            Auth::Verified(UserId::Buyer(_)) => {
                Err(MarketError::Unauthenticated("not a seller".into()))
            }
        }
    }

    /// The buyer calling, from a token or an already verified user.
    pub async fn buyer_of(&self, auth: Auth<'_>) -> Result<BuyerId, MarketError> {
        match auth {
            Auth::Token(token) => self.authenticate_buyer(token).await,
            Auth::Verified(UserId::Buyer(id)) => Ok(id),
            Auth::Verified(UserId::Seller(_)) => {
                Err(MarketError::Unauthenticated("not a buyer".into()))
            }
        }
    }

    async fn hash_password(&self, password: &str) -> Result<String, MarketError> {
        let password = password.to_string();
        let params = self.config.password;
        let salt = password::random_salt();
        tokio::task::spawn_blocking(move || password::hash(&password, &salt, params))
            .await
            .map_err(|e| MarketError::Unavailable(format!("hashing task: {e}")))?
    }

    async fn verify_password(&self, password: &str, phc: String) -> Result<bool, MarketError> {
        let password = password.to_string();
        tokio::task::spawn_blocking(move || password::verify(&password, &phc))
            .await
            .map_err(|e| MarketError::Unavailable(format!("hashing task: {e}")))
    }

    async fn create_account(&self, role: Role, req: &CreateAccount) -> Result<u64, MarketError> {
        let name = validate::name("name", &req.name)?;
        let username = validate::username(&req.username)?;
        validate::password(&req.password)?;
        let password_hash = self.hash_password(&req.password).await?;
        let at_ms = self.now();
        let command = match role {
            Role::Seller => CustomerCommand::CreateSeller {
                name,
                username,
                password_hash,
                at_ms,
            },
            Role::Buyer => CustomerCommand::CreateBuyer {
                name,
                username,
                password_hash,
                at_ms,
            },
        };
        match self.customer(command).await? {
            CustomerOutput::SellerCreated(id) => Ok(id.0),
            CustomerOutput::BuyerCreated(id) => Ok(id.0),
            _ => Err(unexpected("account")),
        }
    }

    async fn login(&self, role: Role, req: &Login) -> Result<(String, UserId), MarketError> {
        let bad = || MarketError::Unauthenticated("bad username or password".into());
        if req.password.chars().count() > validate::PASSWORD_CHARS_MAX
            || req.username.chars().count() > validate::USERNAME_CHARS_MAX
        {
            return Err(bad());
        }
        let found = match self
            .read_customer(CustomerQuery::Credentials {
                role,
                username: req.username.clone(),
            })
            .await?
        {
            CustomerAnswer::Credentials(c) => c,
            _ => return Err(unexpected("credentials")),
        };
        let Some((user, phc)) = found else {
            // Spend the same time as a real check, so timing does not reveal usernames.
            let _ = self
                .verify_password(&req.password, self.dummy_hash.clone())
                .await;
            return Err(bad());
        };
        if !self.verify_password(&req.password, phc).await? {
            return Err(bad());
        }
        let token = random_token();
        self.customer(CustomerCommand::OpenSession {
            user,
            token: token.clone(),
            at_ms: self.now(),
        })
        .await?;
        Ok((token, user))
    }

    async fn logout(&self, token: &str, role: Role) -> Result<(), MarketError> {
        self.authenticate(token, role).await?;
        self.customer(CustomerCommand::CloseSession {
            token: token.to_string(),
            at_ms: self.now(),
        })
        .await?;
        Ok(())
    }

    async fn rating(
        &self,
        seller: SellerId,
        consistency: ReadConsistency,
    ) -> Result<Rating, MarketError> {
        match self
            .read_customer_with(CustomerQuery::Rating { seller }, consistency)
            .await?
        {
            CustomerAnswer::Rating(Some(r)) => Ok(r),
            CustomerAnswer::Rating(None) => Err(MarketError::NotFound(format!("seller {seller}"))),
            _ => Err(unexpected("rating")),
        }
    }

    // ----------------------------------------------------------------------------------
    // Seller interface
    // ----------------------------------------------------------------------------------

    /// `POST /v1/sellers`: creates a seller (201).
    pub async fn create_seller(&self, req: &CreateAccount) -> Result<SellerCreated, MarketError> {
        Ok(SellerCreated {
            seller_id: self.create_account(Role::Seller, req).await?,
        })
    }

    /// `POST /v1/sellers/sessions`: a new seller session (201).
    pub async fn login_seller(&self, req: &Login) -> Result<SellerLoginResponse, MarketError> {
        let (token, user) = self.login(Role::Seller, req).await?;
        Ok(SellerLoginResponse {
            token,
            seller_id: user.number(),
        })
    }

    /// `DELETE /v1/sellers/sessions/current` (204).
    pub async fn logout_seller(&self, token: &str) -> Result<(), MarketError> {
        self.logout(token, Role::Seller).await
    }

    /// `GET /v1/sellers/me/rating`: the calling seller's rating (200).
    pub async fn get_my_rating(&self, auth: impl Into<Auth<'_>>) -> Result<Rating, MarketError> {
        self.read_own(
            auth.into(),
            Role::Seller,
            (UserQuery::Rating, "rating"),
            |a| match a {
                CustomerAnswer::Rating(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    /// `POST /v1/sellers/me/items`: lists an item (201).
    pub async fn add_item(
        &self,
        auth: impl Into<Auth<'_>>,
        req: &NewItem,
    ) -> Result<Item, MarketError> {
        let seller = self.seller_of(auth.into()).await?;
        let v = validate::new_item(req)?;
        self.product_item(ProductCommand::AddItem {
            seller,
            name: v.name,
            category: v.category,
            keywords: v.keywords,
            condition: req.condition,
            price_cents: v.price_cents,
            quantity: v.quantity,
            at_ms: self.now(),
        })
        .await
    }

    /// `PUT /v1/sellers/me/items/{id}/price` (200). Another seller's item: `forbidden`;
    /// unknown or malformed id: `not_found`.
    pub async fn change_price(
        &self,
        auth: impl Into<Auth<'_>>,
        item_id: &str,
        req: &PriceChange,
    ) -> Result<Item, MarketError> {
        let seller = self.seller_of(auth.into()).await?;
        let item = path_item(item_id)?;
        let price_cents = validate::price_cents(req.price_cents)?;
        self.product_item(ProductCommand::ChangePrice {
            seller,
            item,
            price_cents,
            at_ms: self.now(),
        })
        .await
    }

    /// `DELETE /v1/sellers/me/items/{id}?quantity=N` (200, the item with its remaining
    /// quantity). `None`: all available units. More than available: `insufficient_quantity`.
    pub async fn remove_item(
        &self,
        auth: impl Into<Auth<'_>>,
        item_id: &str,
        quantity: Option<i64>,
    ) -> Result<Item, MarketError> {
        let seller = self.seller_of(auth.into()).await?;
        let item = path_item(item_id)?;
        let quantity = quantity.map(validate::quantity).transpose()?;
        self.product_item(ProductCommand::RemoveUnits {
            seller,
            item,
            quantity,
            at_ms: self.now(),
        })
        .await
    }

    /// `GET /v1/sellers/me/items`: the caller's items, also those with quantity 0, by id (200).
    pub async fn all_items_by_seller(
        &self,
        auth: impl Into<Auth<'_>>,
    ) -> Result<Items, MarketError> {
        let auth = auth.into();
        // A token this Market has seen names its seller: read the items while the session is
        // checked (one round trip, not two), and use them only if the check names the same
        // seller.
        let claimed = match auth {
            Auth::Token(token) => match self.claimed_user(token) {
                Some(UserId::Seller(s)) => Some(s),
                _ => None,
            },
            Auth::Verified(_) => None,
        };
        let (seller, early) = match claimed {
            Some(c) => {
                let (seller, items) = tokio::join!(
                    self.seller_of(auth),
                    self.read_product(ProductQuery::BySeller(c))
                );
                let seller = seller?;
                (seller, (seller == c).then_some(items))
            }
            None => (self.seller_of(auth).await?, None),
        };
        let answer = match early {
            Some(items) => items?,
            None => self.read_product(ProductQuery::BySeller(seller)).await?,
        };
        match answer {
            ProductAnswer::Items(items) => Ok(Items { items }),
            _ => Err(unexpected("items")),
        }
    }

    // ----------------------------------------------------------------------------------
    // Buyer interface
    // ----------------------------------------------------------------------------------

    /// `POST /v1/buyers`: creates a buyer (201).
    pub async fn create_buyer(&self, req: &CreateAccount) -> Result<BuyerCreated, MarketError> {
        Ok(BuyerCreated {
            buyer_id: self.create_account(Role::Buyer, req).await?,
        })
    }

    /// `POST /v1/buyers/sessions`: a new buyer session (201).
    pub async fn login_buyer(&self, req: &Login) -> Result<BuyerLoginResponse, MarketError> {
        let (token, user) = self.login(Role::Buyer, req).await?;
        Ok(BuyerLoginResponse {
            token,
            buyer_id: user.number(),
        })
    }

    /// `DELETE /v1/buyers/sessions/current` (204). The working cart goes back to the saved cart.
    pub async fn logout_buyer(&self, token: &str) -> Result<(), MarketError> {
        self.logout(token, Role::Buyer).await
    }

    /// `GET /v1/items?category=C&keyword=K&limit=N` (200, no token).
    pub async fn search_items(&self, query: &SearchQuery) -> Result<Items, MarketError> {
        let category = query.category.map(validate::category).transpose()?;
        let keywords = validate::keywords("keyword", &query.keywords)?;
        let limit = validate::search_limit(query.limit)?;
        match self
            .read_product_with(
                ProductQuery::Search {
                    category,
                    keywords,
                    limit,
                },
                self.config.public_reads,
            )
            .await?
        {
            ProductAnswer::Items(items) => Ok(Items { items }),
            _ => Err(unexpected("items")),
        }
    }

    /// `GET /v1/items/{id}` (200, no token). Unknown or malformed id: `not_found`.
    pub async fn get_item(&self, item_id: &str) -> Result<Item, MarketError> {
        let id = path_item(item_id)?;
        match self
            .read_product_with(ProductQuery::Item(id), self.config.public_reads)
            .await?
        {
            ProductAnswer::Item(Some(item)) => Ok(item),
            ProductAnswer::Item(None) => Err(MarketError::NotFound(format!("item {id}"))),
            _ => Err(unexpected("item")),
        }
    }

    async fn item(&self, id: ItemId) -> Result<Item, MarketError> {
        match self.read_product(ProductQuery::Item(id)).await? {
            ProductAnswer::Item(Some(item)) => Ok(item),
            ProductAnswer::Item(None) => Err(MarketError::NotFound(format!("item {id}"))),
            _ => Err(unexpected("item")),
        }
    }

    async fn cart_of(&self, buyer: BuyerId) -> Result<Cart, MarketError> {
        match self
            .read_customer(CustomerQuery::Cart {
                buyer,
                now_ms: self.now(),
            })
            .await?
        {
            CustomerAnswer::Cart(Some(c)) => Ok(c),
            CustomerAnswer::Cart(None) => Err(MarketError::NotFound(format!("buyer {buyer}"))),
            _ => Err(unexpected("cart")),
        }
    }

    /// `GET /v1/buyers/me/cart` (200).
    pub async fn display_cart(&self, auth: impl Into<Auth<'_>>) -> Result<Cart, MarketError> {
        self.read_own(
            auth.into(),
            Role::Buyer,
            (UserQuery::Cart, "cart"),
            |a| match a {
                CustomerAnswer::Cart(c) => Some(c),
                _ => None,
            },
        )
        .await
    }

    /// `POST /v1/buyers/me/cart/items` (200, the cart). The cart's quantity of the item after
    /// the add may not exceed the item's current quantity (`insufficient_quantity`).
    pub async fn add_to_cart(
        &self,
        auth: impl Into<Auth<'_>>,
        req: &AddToCart,
    ) -> Result<Cart, MarketError> {
        // Read the item, then check the session inside the cart write (two round trips, not
        // three). A bad token still outranks a bad field or an unknown item: only when the
        // item read fails is the session read on its own, to answer the right error.
        let auth = auth.into();
        let item_read = async {
            let item = validate::item_id("item_id", &req.item_id)?;
            let quantity = validate::quantity(req.quantity)?;
            Ok::<_, MarketError>((item, quantity, self.item(item).await?.quantity))
        };
        let (item, quantity, available) = match item_read.await {
            Ok(read) => read,
            Err(e) => {
                self.buyer_of(auth).await?;
                return Err(e);
            }
        };
        self.cart_after(
            auth,
            SessionCommand::AddToCart {
                item,
                quantity,
                available,
            },
        )
        .await
    }

    /// `DELETE /v1/buyers/me/cart/items/{id}?quantity=N` (200, the cart). `None`, or more than
    /// the line holds: the whole line. Item not in the cart: `not_found`.
    pub async fn remove_cart(
        &self,
        auth: impl Into<Auth<'_>>,
        item_id: &str,
        quantity: Option<i64>,
    ) -> Result<Cart, MarketError> {
        let auth = auth.into();
        let parsed = path_item(item_id).and_then(|item| {
            let quantity = quantity.map(validate::quantity).transpose()?;
            Ok((item, quantity))
        });
        let (item, quantity) = match parsed {
            Ok(p) => p,
            Err(e) => {
                // A bad token outranks a bad field, as in every other function.
                self.buyer_of(auth).await?;
                return Err(e);
            }
        };
        self.cart_after(auth, SessionCommand::RemoveFromCart { item, quantity })
            .await
    }

    /// `DELETE /v1/buyers/me/cart` (204): empties the working and the saved cart.
    pub async fn clear_cart(&self, auth: impl Into<Auth<'_>>) -> Result<(), MarketError> {
        self.session_command(auth.into(), SessionCommand::ClearCart)
            .await?;
        Ok(())
    }

    /// `POST /v1/buyers/me/cart/save` (204): copies the working cart to the saved cart.
    pub async fn save_cart(&self, auth: impl Into<Auth<'_>>) -> Result<(), MarketError> {
        self.session_command(auth.into(), SessionCommand::SaveCart)
            .await?;
        Ok(())
    }

    /// Runs a cart or feedback command for the calling buyer. With a token, the session check
    /// and the command are one replicated write ([`CustomerCommand::ForSession`]) instead of a
    /// session read and a write; with a verified user, the command alone.
    async fn session_command(
        &self,
        auth: Auth<'_>,
        command: SessionCommand,
    ) -> Result<CustomerOutput, MarketError> {
        match auth {
            Auth::Token(token) => {
                if token.is_empty() || token.len() > TOKEN_CHARS_MAX {
                    return Err(MarketError::Unauthenticated(
                        "missing or malformed token".into(),
                    ));
                }
                let (token, role, at_ms) = (token.to_string(), Role::Buyer, self.now());
                let write = match remembered_lookup() {
                    Some((scope, key)) => CustomerCommand::ForKeyedSession {
                        scope,
                        key,
                        token,
                        role,
                        command,
                        at_ms,
                    },
                    None => CustomerCommand::ForSession {
                        token,
                        role,
                        command,
                        at_ms,
                    },
                };
                match self.customer(write).await? {
                    CustomerOutput::Remembered(response) => Err(answer_remembered(response)),
                    output => Ok(output),
                }
            }
            Auth::Verified(_) => {
                let buyer = self.buyer_of(auth).await?;
                self.customer(command.for_buyer(buyer, self.now())).await
            }
        }
    }

    /// `POST /v1/buyers/me/purchases` (201, the purchase). See the module docs for the
    /// workflow and for what `idempotency_key` (the request's `Idempotency-Key`) adds.
    pub async fn make_purchase(
        &self,
        auth: impl Into<Auth<'_>>,
        req: &PurchaseRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Purchase, MarketError> {
        // With a token, the session and the working cart come from one read.
        let (buyer, cart) = match auth.into() {
            Auth::Token(token) => match self
                .read_about(Auth::Token(token), Role::Buyer, UserQuery::Cart)
                .await?
            {
                (UserId::Buyer(buyer), CustomerAnswer::Cart(cart)) => (buyer, cart),
                _ => return Err(unexpected("cart")),
            },
            auth => (self.buyer_of(auth).await?, None),
        };
        let now = self.now();
        validate::card(&req.card, now)?;
        if let Some(key) = idempotency_key {
            validate::idempotency_key(key)?;
        }
        let reservation_id = match idempotency_key {
            Some(key) => reservation_id_for(buyer, key),
            None => rand::random(),
        };
        let cart = match cart {
            Some(cart) => cart,
            None => self.cart_of(buyer).await?,
        };
        // Without a key an empty cart ends here. With one, the cart may have been emptied by
        // an earlier attempt of this purchase: Reserve answers with the reservation already
        // made under this id, if any, before it looks at the lines (and with `cart_empty`
        // otherwise), so a retry needs no separate read of the reservation.
        if cart.items.is_empty() && idempotency_key.is_none() {
            return Err(MarketError::CartEmpty);
        }
        let mut lines: Vec<(ItemId, u64)> = Vec::with_capacity(cart.items.len());
        for l in &cart.items {
            lines.push((validate::item_id("item_id", &l.item_id)?, l.quantity));
        }
        // This attempt's mark on the reservation: a retry whose Reserve is answered with a
        // reservation another attempt made knows it is a retry.
        let attempt: u64 = rand::random();
        let reservation = self
            .product_reservation(ProductCommand::Reserve {
                reservation_id,
                buyer,
                lines,
                at_ms: now,
                expires_at_ms: now.saturating_add(self.config.reservation_ttl_ms),
                attempt,
            })
            .await?;
        if reservation.buyer != buyer {
            return Err(MarketError::invalid(
                "Idempotency-Key",
                "already used for another purchase",
            ));
        }
        let lines: Vec<PurchaseLine> = reservation
            .lines
            .iter()
            .map(|l| PurchaseLine {
                item_id: l.item.to_string(),
                name: l.name.clone(),
                seller_id: l.seller.0,
                quantity: l.quantity,
                price_cents: l.price_cents,
            })
            .collect();
        let record = |attempt: Option<u64>| CustomerCommand::RecordPurchase {
            buyer,
            reservation_id,
            reserved_at_ms: reservation.reserved_at_ms,
            lines: lines.clone(),
            attempt,
            at_ms: self.now(),
        };
        match reservation.state {
            ReservationState::Held { expires_at_ms } => {
                if reservation.attempt != attempt {
                    // A retry, and the reservation was held when the first attempt made it:
                    // fence off the earlier attempts' records, or learn that one of them
                    // was paid and recorded the purchase.
                    if let Some(p) = self.claim_purchase(&reservation, attempt).await? {
                        return Ok(p);
                    }
                }
                let paid = self.pay(&reservation, req).await?;
                // Approved: record the purchase, then confirm the reservation, unless the
                // payment took so long that the confirmation might come too late (then a
                // record must wait for it). The record is refused if a retry of this
                // purchase claimed it meanwhile (that retry pays again and, on a decline,
                // releases the units): then it waits for the confirmation.
                let record_first = self
                    .now()
                    .saturating_add(self.config.reservation_ttl_ms / 2)
                    < expires_at_ms;
                match paid {
                    Paid::Now if record_first => match self.customer(record(Some(attempt))).await {
                        // Paid and recorded, the purchase is made: the confirmation moves
                        // units from reserved to sold, which no answer shows, so it is sent
                        // once the purchase is answered.
                        Ok(CustomerOutput::Purchase(p)) => {
                            self.confirm_after_answer(reservation_id).await;
                            return Ok(p);
                        }
                        // A retry claimed the record (or the record's fate is unknown): the
                        // units are sold first, then the purchase is recorded below, which
                        // is never refused. Confirmed, the reservation tells any retry that
                        // this attempt was paid.
                        Ok(CustomerOutput::Superseded) | Err(_) => {
                            self.confirm(reservation_id).await?;
                        }
                        Ok(_) => return Err(unexpected("purchase")),
                    },
                    Paid::Now => {
                        self.confirm(reservation_id).await?;
                    }
                    Paid::Earlier => {}
                }
            }
            ReservationState::Confirmed => {}
            ReservationState::Released(ReleaseReason::Declined) => {
                return Err(MarketError::PaymentDeclined)
            }
            ReservationState::Released(reason) => {
                return Err(MarketError::Unavailable(format!(
                    "an earlier attempt of this purchase failed ({reason:?}); retry with a new key"
                )))
            }
        }
        // The reservation is confirmed: the purchase is recorded whatever claims say.
        match self.customer(record(None)).await? {
            CustomerOutput::Purchase(p) => Ok(p),
            _ => Err(unexpected("purchase")),
        }
    }

    /// Claims the purchase record of a held reservation for `attempt`
    /// ([`CustomerCommand::ClaimPurchase`]). If an earlier attempt recorded the purchase, it
    /// was paid: confirms the reservation and returns the purchase. Otherwise the claim now
    /// refuses every other attempt's record sent before its confirmation: `None`.
    async fn claim_purchase(
        &self,
        reservation: &Reservation,
        attempt: u64,
    ) -> Result<Option<Purchase>, MarketError> {
        let claim = CustomerCommand::ClaimPurchase {
            buyer: reservation.buyer,
            reservation_id: reservation.id,
            reserved_at_ms: reservation.reserved_at_ms,
            attempt,
            at_ms: self.now(),
        };
        match self.customer(claim).await? {
            CustomerOutput::Purchase(p) => {
                self.confirm(reservation.id).await?;
                Ok(Some(p))
            }
            _ => Ok(None),
        }
    }

    /// Sells a reservation's units.
    async fn confirm(&self, reservation_id: u64) -> Result<Reservation, MarketError> {
        self.product_reservation(ProductCommand::Confirm {
            reservation_id,
            at_ms: self.now(),
        })
        .await
    }

    /// Sends the confirmation of a paid and recorded purchase on a task of its own, so the
    /// purchase is answered without waiting for it ([`Market::settle`] waits for it). It is
    /// retried like any step, with the request id this call would have used; if it still
    /// fails, the purchase sweeper confirms the reservation before it lapses, since the
    /// purchase is recorded. Outside a Tokio runtime it is sent before returning.
    async fn confirm_after_answer(&self, reservation_id: u64) {
        let command = ProductCommand::Confirm {
            reservation_id,
            at_ms: self.now(),
        };
        // The step id comes from the request's idempotency key, which the task cannot see.
        let id = self.step_id(command.step());
        let products = Arc::clone(&self.products);
        let (attempts, backoff_ms) = (self.config.propose_attempts, self.config.retry_backoff_ms);
        let failed = Arc::clone(&self.deferred_failed);
        let confirm = async move {
            let sent = retrying(attempts, backoff_ms, || {
                products.propose(id, command.clone())
            })
            .await;
            if let Err(e) = sent.and_then(|r| r) {
                failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    reservation = reservation_id,
                    error = %e,
                    "confirmation of a recorded purchase failed; the purchase sweeper will send it"
                );
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.deferred.spawn_on(confirm, &runtime);
            }
            Err(_) => confirm.await,
        }
    }

    /// Asks the payment service; on anything but yes, releases the reservation. If the release
    /// finds it confirmed, another attempt of the purchase was paid: [`Paid::Earlier`].
    async fn pay(
        &self,
        reservation: &Reservation,
        req: &PurchaseRequest,
    ) -> Result<Paid, MarketError> {
        let outcome = self
            .payments
            .process(PaymentRequest {
                name: req.card.name.clone(),
                card_number: req.card.number.clone(),
                expiry: req.card.expiry.clone(),
                security_code: req.card.cvv.clone(),
                amount_cents: reservation.total_cents,
            })
            .await;
        let (reason, error) = match outcome {
            Ok(o) if o.approved => {
                tracing::debug!(transaction = %o.transaction_id, "payment approved");
                return Ok(Paid::Now);
            }
            Ok(_) => (ReleaseReason::Declined, MarketError::PaymentDeclined),
            Err(e) => (
                ReleaseReason::PaymentFailed,
                MarketError::Unavailable(e.to_string()),
            ),
        };
        let released = self
            .product(ProductCommand::Release {
                reservation_id: reservation.id,
                reason,
                at_ms: self.now(),
            })
            .await;
        match released {
            Ok(ProductOutput::Reservation(r)) if r.state == ReservationState::Confirmed => {
                Ok(Paid::Earlier)
            }
            Ok(_) => Err(error),
            Err(e) => {
                tracing::warn!(error = %e, "release after a refused payment failed; it will lapse");
                Err(error)
            }
        }
    }

    /// `GET /v1/buyers/me/purchases` (200, newest first).
    pub async fn get_purchase_history(
        &self,
        auth: impl Into<Auth<'_>>,
    ) -> Result<Purchases, MarketError> {
        let purchases = self
            .read_own(
                auth.into(),
                Role::Buyer,
                (UserQuery::Purchases, "purchases"),
                |a| match a {
                    CustomerAnswer::Purchases(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        Ok(Purchases {
            purchases: purchases.into_iter().map(Arc::unwrap_or_clone).collect(),
        })
    }

    /// `POST /v1/buyers/me/feedback` (204). Never bought: `not_purchased`; second time:
    /// `feedback_exists`.
    pub async fn provide_feedback(
        &self,
        auth: impl Into<Auth<'_>>,
        req: &FeedbackRequest,
    ) -> Result<(), MarketError> {
        // With a token, the session check rides in the feedback write itself (one replicated
        // write, not a session read and a write); a bad token still outranks a bad item id.
        let auth = auth.into();
        let item = match validate::item_id("item_id", &req.item_id) {
            Ok(item) => item,
            Err(e) => {
                self.buyer_of(auth).await?;
                return Err(e);
            }
        };
        let command = SessionCommand::GiveFeedback {
            item,
            vote: req.vote,
        };
        let (buyer, vote, fresh) = match auth {
            Auth::Token(_) => match self.session_command(auth, command).await? {
                CustomerOutput::BuyerFeedback {
                    buyer, vote, fresh, ..
                } => (buyer, vote, fresh),
                _ => return Err(unexpected("feedback")),
            },
            Auth::Verified(_) => {
                let buyer = self.buyer_of(auth).await?;
                match self.customer(command.for_buyer(buyer, self.now())).await? {
                    CustomerOutput::Feedback { vote, fresh, .. } => (buyer, vote, fresh),
                    _ => return Err(unexpected("feedback")),
                }
            }
        };
        // Idempotent per (buyer, item): also completes a half-done earlier attempt.
        self.product(ProductCommand::ItemFeedback {
            buyer,
            item,
            vote,
            at_ms: self.now(),
        })
        .await?;
        if fresh {
            Ok(())
        } else {
            Err(MarketError::FeedbackExists {
                item: item.to_string(),
            })
        }
    }

    /// `GET /v1/sellers/{seller_id}/rating` (200, no token). Unknown seller: `not_found`.
    pub async fn get_seller_rating(&self, seller_id: u64) -> Result<Rating, MarketError> {
        self.rating(SellerId(seller_id), self.config.public_reads)
            .await
    }

    // ----------------------------------------------------------------------------------
    // Idempotent retries (for the HTTP layer)
    // ----------------------------------------------------------------------------------

    fn check_scope(scope: &str, key: &str) -> Result<(), MarketError> {
        validate::idempotency_key(key)?;
        if scope.is_empty() || scope.chars().count() > SCOPE_CHARS_MAX {
            return Err(MarketError::invalid("scope", "must be 1 to 128 characters"));
        }
        Ok(())
    }

    /// The response remembered for `(scope, key)` within the last 10 minutes, if any. `scope`
    /// identifies the user ([`UserId::scope`], e.g. `"buyer:3"`); for routes without a token
    /// use a scope of your own, e.g. `"anon:POST /v1/buyers"`. Linearizable: a response
    /// recorded on any replica is seen.
    pub async fn idempotency_lookup(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<Option<StoredResponse>, MarketError> {
        self.idempotency_lookup_with(scope, key, ReadConsistency::Linearizable)
            .await
    }

    /// Like [`Market::idempotency_lookup`] with a chosen read consistency. A `Stale` lookup
    /// costs no quorum round; a miss is safe when the call then runs inside
    /// [`with_idempotency_key`], because its effect steps deduplicate against the first
    /// attempt's anyway.
    pub async fn idempotency_lookup_with(
        &self,
        scope: &str,
        key: &str,
        consistency: ReadConsistency,
    ) -> Result<Option<StoredResponse>, MarketError> {
        Self::check_scope(scope, key)?;
        match self
            .read_customer_with(
                CustomerQuery::Remembered {
                    scope: scope.to_string(),
                    key: key.to_string(),
                    now_ms: self.now(),
                },
                consistency,
            )
            .await?
        {
            CustomerAnswer::Remembered(r) => Ok(r),
            _ => Err(unexpected("remembered")),
        }
    }

    /// Remembers the response to `(scope, key)` for 10 minutes. If another request already
    /// recorded one, that first response is kept and returned (send it instead of yours).
    /// Bodies over the configured limit (256 KiB by default) are refused (`invalid_argument`).
    pub async fn idempotency_record(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: Vec<u8>,
    ) -> Result<StoredResponse, MarketError> {
        Self::check_scope(scope, key)?;
        match self
            .customer(CustomerCommand::RememberResponse {
                scope: scope.to_string(),
                key: key.to_string(),
                response: StoredResponse { status, body },
                at_ms: self.now(),
            })
            .await?
        {
            CustomerOutput::Remembered(r) => Ok(r),
            _ => Err(unexpected("remembered")),
        }
    }

    /// Remembers several responses in one replicated write (see
    /// [`Market::idempotency_record`]); an entry with a bad scope or key, or a body over the
    /// size limit, is skipped. The HTTP servers batch their responses this way.
    pub async fn idempotency_record_many(
        &self,
        entries: Vec<RememberEntry>,
    ) -> Result<(), MarketError> {
        let entries: Vec<RememberEntry> = entries
            .into_iter()
            .filter(|e| Self::check_scope(&e.scope, &e.key).is_ok())
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        self.customer(CustomerCommand::RememberResponses {
            entries,
            at_ms: self.now(),
        })
        .await?;
        Ok(())
    }

    /// Checks that both databases answer a linearizable read (for `GET /healthz`).
    pub async fn health(&self) -> Result<(), MarketError> {
        self.read_customer(CustomerQuery::Rating {
            seller: SellerId(0),
        })
        .await?;
        self.read_product(ProductQuery::Item(ItemId::new(0, 0)))
            .await?;
        Ok(())
    }

    /// Advances both databases' clocks to now: ends idle sessions (resetting carts), lapses
    /// stale reservations, forgets old remembered responses. Optional — any command does the
    /// same — but a server may call it every few seconds so units do not stay reserved
    /// while the product database is idle.
    pub async fn tick(&self) -> Result<(), MarketError> {
        let at_ms = self.now();
        self.customer(CustomerCommand::Tick { at_ms }).await?;
        self.product(ProductCommand::Tick { at_ms }).await?;
        self.sweep_purchases(at_ms).await
    }

    /// The purchase sweeper: for each reservation still held within
    /// [`MarketConfig::sweep_ahead_ms`] of its lapse (at most [`SWEEP_BATCH`] per call), claims
    /// its purchase record ([`CustomerCommand::ClaimPurchase`]). If the attempt that made it
    /// recorded the purchase but its confirmation never landed (its frontend died, or the
    /// product database failed it), the claim answers the purchase and the sweeper confirms
    /// the reservation, so the units of a recorded purchase do not go back on sale; otherwise
    /// the claim refuses that attempt's record from now on, and the reservation lapses as
    /// before. [`Market::tick`] runs it; every seller and buyer server ticks every 5 seconds.
    pub async fn sweep_purchases(&self, now_ms: u64) -> Result<(), MarketError> {
        // A reservation a quarter of its lifetime from lapsing is long past the point (half
        // its lifetime left) up to which its purchase may be recorded before the
        // confirmation, so a claim never sends a live attempt down the slower path.
        let ahead = self
            .config
            .sweep_ahead_ms
            .min(self.config.reservation_ttl_ms / 4);
        let query = ProductQuery::HeldLapsing {
            before_ms: now_ms.saturating_add(ahead),
            limit: SWEEP_BATCH,
        };
        let ProductAnswer::Reservations(held) = self.read_product(query).await? else {
            return Err(unexpected("reservations"));
        };
        for r in held {
            match self.claim_purchase(&r, rand::random()).await {
                Ok(Some(_)) => {
                    tracing::info!(reservation = r.id, "sweeper: confirmed a recorded purchase");
                }
                Ok(None) => {}
                // A buyer that no longer exists: nothing to record or fence.
                Err(MarketError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
