//! The customer database: a deterministic [`StateMachine`] of accounts, sessions, carts,
//! purchase history, ratings and remembered HTTP responses.
//!
//! # What it holds
//!
//! * **Sellers and buyers**, in separate username namespaces (case-sensitive). Ids are assigned
//!   in apply from counters, so every replica assigns the same id. Passwords arrive as
//!   finished Argon2id PHC strings ([`crate::password`]); apply never hashes.
//! * **Sessions**: a token (chosen at random by the frontend) maps to a user. A user may hold
//!   several. A session ends at logout, or when `session_idle_ms` pass without activity. Time
//!   is the `at_ms` carried by commands; the machine keeps `clock_ms`, the highest `at_ms`
//!   seen, and every command first *advances* to it: sessions idle for `session_idle_ms`
//!   are ended then, deterministically. Queries take the reader's `now_ms` so that an expired
//!   session is refused even before a command has swept it. [`CustomerCommand::Touch`]
//!   refreshes a session's activity mark; the Market proposes it only when the mark is older
//!   than a few seconds, so reads do not all become writes.
//! * **Carts**: one working and one saved cart per buyer, shared by all of the buyer's
//!   sessions. Ending any session of the buyer (logout, expiry) resets the working cart to the
//!   saved cart, as API.md says. A cart query made after a session of the buyer has expired
//!   but before the sweep already shows the reset cart.
//! * **Purchases** (history newest first), items-purchased per buyer, items-sold per seller,
//!   the items each buyer bought (with their sellers), and the feedback each buyer gave (once
//!   per item). Recording a purchase is idempotent per product-database reservation id.
//! * **Remembered responses** for `Idempotency-Key` retries: `(scope, key) -> (status, body)`,
//!   kept `idempotency_ttl_ms` by command time, at most `idempotency_entries_max` entries
//!   and `idempotency_total_bytes_max` bytes in total (oldest evicted first), of at most
//!   `idempotency_body_bytes_max` bytes each. The first recorded response for a key wins.
//!
//! Every limit lives in [`CustomerConfig`], which is part of the replicated state (it is in
//! the snapshot), so replicas cannot disagree about it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use replication::{SnapshotError, StateMachine};
use serde::{Deserialize, Serialize};

use crate::api::{Cart, CartLine, Purchase, PurchaseLine, Rating, Vote};
use crate::clock::rfc3339;
use crate::error::MarketError;
use crate::ids::{BuyerId, ItemId, PurchaseId, Role, SellerId, UserId};

/// Limits of the customer database; every replica must use the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerConfig {
    /// A session ends after this long without activity (API.md: 300 s).
    pub session_idle_ms: u64,
    /// Most sessions one user may hold; opening one more ends the least recently active.
    pub sessions_per_user_max: usize,
    /// How long a remembered response is kept (API.md: 10 minutes).
    pub idempotency_ttl_ms: u64,
    /// Most remembered responses; the oldest is evicted first.
    pub idempotency_entries_max: usize,
    /// Largest response body that is remembered.
    pub idempotency_body_bytes_max: usize,
    /// Most bytes of remembered bodies in total; the oldest are evicted first.
    pub idempotency_total_bytes_max: u64,
    /// Most distinct items in one cart.
    pub cart_lines_max: usize,
}

/// How long a claim on a purchase record ([`CustomerCommand::ClaimPurchase`]) is kept: longer
/// than an earlier attempt's record can stay in flight.
pub const PURCHASE_CLAIM_TTL_MS: u64 = 600_000;
/// Most claims kept at once (only retries of held purchases make them); the oldest goes first.
pub const PURCHASE_CLAIMS_MAX: usize = 100_000;

impl Default for CustomerConfig {
    fn default() -> Self {
        Self {
            session_idle_ms: 300_000,
            sessions_per_user_max: 64,
            idempotency_ttl_ms: 600_000,
            idempotency_entries_max: 100_000,
            idempotency_body_bytes_max: 256 * 1024,
            idempotency_total_bytes_max: 64 * 1024 * 1024,
            cart_lines_max: 100,
        }
    }
}

/// A remembered HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes exactly as first sent (the content type follows from the status: 204 has
    /// none, 4xx/5xx are `application/problem+json`, the rest `application/json`). Encoded
    /// as one byte string (the same postcard bytes as a sequence, decoded as one copy).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// What [`CustomerCommand::ForSession`] runs for the session's buyer: the cart and feedback
/// commands of the same names, without the buyer (the session names it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionCommand {
    /// As [`CustomerCommand::AddToCart`].
    AddToCart {
        /// The item.
        item: ItemId,
        /// Units to add.
        quantity: u64,
        /// The item's current quantity.
        available: u64,
    },
    /// As [`CustomerCommand::RemoveFromCart`].
    RemoveFromCart {
        /// The item.
        item: ItemId,
        /// Units to remove.
        quantity: Option<u64>,
    },
    /// As [`CustomerCommand::ClearCart`].
    ClearCart,
    /// As [`CustomerCommand::SaveCart`].
    SaveCart,
    /// As [`CustomerCommand::GiveFeedback`]; run through `ForSession` its output is
    /// [`CustomerOutput::BuyerFeedback`], which also names the buyer.
    GiveFeedback {
        /// The item.
        item: ItemId,
        /// Up or down.
        vote: Vote,
    },
}

impl SessionCommand {
    /// The cart command for `buyer` at `at_ms`.
    pub fn for_buyer(self, buyer: BuyerId, at_ms: u64) -> CustomerCommand {
        match self {
            Self::AddToCart {
                item,
                quantity,
                available,
            } => CustomerCommand::AddToCart {
                buyer,
                item,
                quantity,
                available,
                at_ms,
            },
            Self::RemoveFromCart { item, quantity } => CustomerCommand::RemoveFromCart {
                buyer,
                item,
                quantity,
                at_ms,
            },
            Self::ClearCart => CustomerCommand::ClearCart { buyer, at_ms },
            Self::SaveCart => CustomerCommand::SaveCart { buyer, at_ms },
            Self::GiveFeedback { item, vote } => CustomerCommand::GiveFeedback {
                buyer,
                item,
                vote,
                at_ms,
            },
        }
    }
}

/// One response to remember, in [`CustomerCommand::RememberResponses`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberEntry {
    /// Whose key.
    pub scope: String,
    /// The `Idempotency-Key`.
    pub key: String,
    /// The response.
    pub response: StoredResponse,
}

/// Commands of the customer database. Times, ids of sessions (tokens) and password hashes
/// are chosen by the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerCommand {
    /// Creates a seller. Output: [`CustomerOutput::SellerCreated`] or `username_taken`.
    CreateSeller {
        /// Validated name.
        name: String,
        /// Validated username.
        username: String,
        /// Argon2id PHC string.
        password_hash: String,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Creates a buyer. Output: [`CustomerOutput::BuyerCreated`] or `username_taken`.
    CreateBuyer {
        /// Validated name.
        name: String,
        /// Validated username.
        username: String,
        /// Argon2id PHC string.
        password_hash: String,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Opens a session for a user whose password the proposer verified.
    /// Output: [`CustomerOutput::Done`].
    OpenSession {
        /// The user.
        user: UserId,
        /// A fresh random token.
        token: String,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Ends a session (logout). Output: [`CustomerOutput::Done`]; unknown token: unauthenticated.
    CloseSession {
        /// The session's token.
        token: String,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Refreshes a session's activity mark. Output: [`CustomerOutput::Done`].
    Touch {
        /// The session's token.
        token: String,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Adds units to the working cart if the cart's new quantity does not exceed `available`
    /// (the item's quantity the proposer just read). Output: [`CustomerOutput::Cart`].
    AddToCart {
        /// The buyer.
        buyer: BuyerId,
        /// The item.
        item: ItemId,
        /// Units to add.
        quantity: u64,
        /// The item's current quantity.
        available: u64,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Removes units (all of the line when `None` or more than in the cart) from the working
    /// cart. Output: [`CustomerOutput::Cart`]; item not in the cart: not_found.
    RemoveFromCart {
        /// The buyer.
        buyer: BuyerId,
        /// The item.
        item: ItemId,
        /// Units to remove.
        quantity: Option<u64>,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Empties the working and the saved cart. Output: [`CustomerOutput::Done`].
    ClearCart {
        /// The buyer.
        buyer: BuyerId,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Copies the working cart to the saved cart. Output: [`CustomerOutput::Done`].
    SaveCart {
        /// The buyer.
        buyer: BuyerId,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Records a paid purchase (idempotent per (`reservation_id`, `reserved_at_ms`)): history,
    /// counters, and the
    /// working and saved carts emptied. Output: [`CustomerOutput::Purchase`], or
    /// [`CustomerOutput::Superseded`] for a record sent before its confirmation that a later
    /// attempt has fenced off.
    RecordPurchase {
        /// The buyer.
        buyer: BuyerId,
        /// The product database reservation that was paid for (confirmed, or confirmed once
        /// this is recorded).
        reservation_id: u64,
        /// When that reservation was made (see `product::Reservation::reserved_at_ms`).
        reserved_at_ms: u64,
        /// What was bought, at the prices paid.
        lines: Vec<PurchaseLine>,
        /// `None`: the reservation is known to be confirmed, so the purchase is recorded in
        /// any case. `Some(attempt)`: sent before the confirmation (the Market confirms once
        /// the purchase is recorded): refused if another attempt of the purchase has claimed it since
        /// ([`CustomerCommand::ClaimPurchase`]), because that attempt may pay again and, on a
        /// decline, release the units.
        attempt: Option<u64>,
        /// Proposer's time (the purchase's `created_at`).
        at_ms: u64,
    },
    /// A retry of a purchase whose reservation an earlier attempt made and left held: answers
    /// the purchase if an earlier attempt already recorded it (it was paid: the retry only has
    /// to confirm), and otherwise claims the record for `attempt`, so any earlier attempt's
    /// record sent before its confirmation is refused from now on. Output:
    /// [`CustomerOutput::Purchase`] or [`CustomerOutput::Done`] (claimed).
    ClaimPurchase {
        /// The buyer.
        buyer: BuyerId,
        /// The reservation.
        reservation_id: u64,
        /// When that reservation was made.
        reserved_at_ms: u64,
        /// The retrying attempt.
        attempt: u64,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Records feedback on a purchased item and updates its seller's rating.
    /// Output: [`CustomerOutput::Feedback`] (`fresh: false` when feedback was already given:
    /// nothing changed), or `not_purchased`.
    GiveFeedback {
        /// The buyer.
        buyer: BuyerId,
        /// The item.
        item: ItemId,
        /// Up or down.
        vote: Vote,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Remembers a response for `(scope, key)` unless one is already remembered.
    /// Output: [`CustomerOutput::Remembered`] with the response now remembered (the first).
    RememberResponse {
        /// Whose key: e.g. `"buyer:3"`.
        scope: String,
        /// The `Idempotency-Key`.
        key: String,
        /// The response.
        response: StoredResponse,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Remembers several responses at once, each as [`CustomerCommand::RememberResponse`]
    /// would (the first response for a key wins; a body over the size limit is skipped): one
    /// replicated write for a batch. Output: [`CustomerOutput::Done`].
    RememberResponses {
        /// The responses.
        entries: Vec<RememberEntry>,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Checks a session and runs `command` for its buyer, in one replicated write instead of
    /// a session read and a write: the session must be live at the command's time and of
    /// `role`, else `unauthenticated` and nothing changes. Refreshes the session's activity
    /// mark. Output: that of the command run ([`CustomerOutput::Cart`] or
    /// [`CustomerOutput::Done`]), or [`CustomerOutput::BuyerFeedback`] for feedback.
    ForSession {
        /// The session's token.
        token: String,
        /// The role the request needs.
        role: Role,
        /// What to do for the session's buyer.
        command: SessionCommand,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Only advances time (expires sessions and remembered responses).
    /// Output: [`CustomerOutput::Done`].
    Tick {
        /// Proposer's time.
        at_ms: u64,
    },
    /// [`CustomerCommand::ForSession`] for an HTTP request with an idempotency key, whose
    /// remembered response is looked up in the same write: when one is remembered for
    /// `(scope, key)`, nothing changes and the output is [`CustomerOutput::Remembered`] (it
    /// wins over an ended session, as in [`CustomerQuery::ForSession`]); otherwise exactly
    /// `ForSession`. Saves the server a lookup round trip before the write.
    ForKeyedSession {
        /// Scope of the remembered response.
        scope: String,
        /// The request's idempotency key.
        key: String,
        /// The session's token.
        token: String,
        /// The role the request needs.
        role: Role,
        /// What to do for the session's buyer.
        command: SessionCommand,
        /// Proposer's time.
        at_ms: u64,
    },
}

impl CustomerCommand {
    /// The time the command carries.
    pub fn at_ms(&self) -> u64 {
        match self {
            Self::CreateSeller { at_ms, .. }
            | Self::CreateBuyer { at_ms, .. }
            | Self::OpenSession { at_ms, .. }
            | Self::CloseSession { at_ms, .. }
            | Self::Touch { at_ms, .. }
            | Self::AddToCart { at_ms, .. }
            | Self::RemoveFromCart { at_ms, .. }
            | Self::ClearCart { at_ms, .. }
            | Self::SaveCart { at_ms, .. }
            | Self::RecordPurchase { at_ms, .. }
            | Self::ClaimPurchase { at_ms, .. }
            | Self::GiveFeedback { at_ms, .. }
            | Self::RememberResponse { at_ms, .. }
            | Self::RememberResponses { at_ms, .. }
            | Self::ForSession { at_ms, .. }
            | Self::ForKeyedSession { at_ms, .. }
            | Self::Tick { at_ms } => *at_ms,
        }
    }

    /// The command's step number within one client request, for request ids derived from an
    /// idempotency key (see `crate::with_idempotency_key`): each effect of a request has its
    /// own number, so a retried request proposes the same ids. `None` for commands that are not
    /// an effect of the request itself (touches, remembered responses, ticks), which keep
    /// fresh ids.
    pub fn step(&self) -> Option<u64> {
        match self {
            Self::CreateSeller { .. } => Some(1),
            Self::CreateBuyer { .. } => Some(2),
            Self::OpenSession { .. } => Some(3),
            Self::CloseSession { .. } => Some(4),
            Self::AddToCart { .. } => Some(5),
            Self::RemoveFromCart { .. } => Some(6),
            Self::ClearCart { .. } => Some(7),
            Self::SaveCart { .. } => Some(8),
            // A record before the confirmation and one after it have different ids: a retry
            // must not be answered with a refusal the first kind got.
            Self::RecordPurchase {
                attempt: Some(_), ..
            } => Some(9),
            Self::RecordPurchase { attempt: None, .. } => Some(11),
            Self::GiveFeedback { .. } => Some(10),
            // The step of the command it runs: a retry proposes the same id either way.
            Self::ForSession { command, .. } | Self::ForKeyedSession { command, .. } => {
                Some(match command {
                    SessionCommand::AddToCart { .. } => 5,
                    SessionCommand::RemoveFromCart { .. } => 6,
                    SessionCommand::ClearCart => 7,
                    SessionCommand::SaveCart => 8,
                    SessionCommand::GiveFeedback { .. } => 10,
                })
            }
            // Each attempt claims afresh (a retry of the claim must fence the attempt before it).
            Self::Touch { .. }
            | Self::ClaimPurchase { .. }
            | Self::RememberResponse { .. }
            | Self::RememberResponses { .. }
            | Self::Tick { .. } => None,
        }
    }
}

/// Successful outputs of customer commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerOutput {
    /// A seller was created.
    SellerCreated(SellerId),
    /// A buyer was created.
    BuyerCreated(BuyerId),
    /// The command took effect.
    Done,
    /// The working cart after the command.
    Cart(Cart),
    /// The recorded purchase.
    Purchase(Purchase),
    /// A [`CustomerCommand::RecordPurchase`] sent before its confirmation was refused: a later
    /// attempt of the purchase claimed the record. Nothing changed.
    Superseded,
    /// Feedback outcome.
    Feedback {
        /// The item's seller.
        seller: SellerId,
        /// The vote recorded (the first one, when `fresh` is false).
        vote: Vote,
        /// False when feedback had already been given (nothing changed).
        fresh: bool,
    },
    /// The response remembered for the key.
    Remembered(StoredResponse),
    /// [`CustomerCommand::ForSession`] ran [`SessionCommand::GiveFeedback`]: as
    /// [`CustomerOutput::Feedback`], with the session's buyer (the product database's half of
    /// the feedback needs it).
    BuyerFeedback {
        /// The session's buyer.
        buyer: BuyerId,
        /// The item's seller.
        seller: SellerId,
        /// The vote recorded (the first one, when `fresh` is false).
        vote: Vote,
        /// False when feedback had already been given (nothing changed).
        fresh: bool,
    },
}

/// Queries of the customer database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerQuery {
    /// The id and password hash of a username. Answer: [`CustomerAnswer::Credentials`].
    Credentials {
        /// Seller or buyer namespace.
        role: Role,
        /// The username.
        username: String,
    },
    /// The user of a live session at `now_ms`. Answer: [`CustomerAnswer::Session`].
    Session {
        /// The token.
        token: String,
        /// The reader's time.
        now_ms: u64,
    },
    /// A buyer's working cart at `now_ms`. Answer: [`CustomerAnswer::Cart`].
    Cart {
        /// The buyer.
        buyer: BuyerId,
        /// The reader's time.
        now_ms: u64,
    },
    /// A buyer's purchases, newest first. Answer: [`CustomerAnswer::Purchases`].
    Purchases {
        /// The buyer.
        buyer: BuyerId,
    },
    /// A seller's rating. Answer: [`CustomerAnswer::Rating`].
    Rating {
        /// The seller.
        seller: SellerId,
    },
    /// A seller's account summary. Answer: [`CustomerAnswer::Seller`].
    Seller {
        /// The seller.
        seller: SellerId,
    },
    /// A buyer's account summary. Answer: [`CustomerAnswer::Buyer`].
    Buyer {
        /// The buyer.
        buyer: BuyerId,
    },
    /// A remembered response, if still kept at `now_ms`. Answer: [`CustomerAnswer::Remembered`].
    Remembered {
        /// Whose key.
        scope: String,
        /// The `Idempotency-Key`.
        key: String,
        /// The reader's time.
        now_ms: u64,
    },
    /// Several things a request needs, read from the same state in one round instead of one
    /// round each: the user of a session, optionally something about that user, and
    /// optionally a remembered response. Answer: [`CustomerAnswer::ForSession`].
    ForSession {
        /// The session's token.
        token: String,
        /// The role the request needs: `about` is answered only for a session of this role.
        role: Role,
        /// The reader's time.
        now_ms: u64,
        /// What to read about the session's user.
        about: Option<UserQuery>,
        /// `(scope, key)` of a remembered response to look up (whatever the session's state:
        /// a retry after logout still gets its original answer).
        remembered: Option<(String, String)>,
    },
}

/// What [`CustomerQuery::ForSession`] can read about the session's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserQuery {
    /// The buyer's working cart ([`CustomerQuery::Cart`]).
    Cart,
    /// The buyer's purchases ([`CustomerQuery::Purchases`]).
    Purchases,
    /// The seller's rating ([`CustomerQuery::Rating`]).
    Rating,
}

impl UserQuery {
    /// The query this asks about `user` at `now_ms`; `None` when it does not fit the user's
    /// role (a cart or purchases of a seller, a rating of a buyer).
    pub fn for_user(self, user: UserId, now_ms: u64) -> Option<CustomerQuery> {
        match (user, self) {
            (UserId::Buyer(buyer), Self::Cart) => Some(CustomerQuery::Cart { buyer, now_ms }),
            (UserId::Buyer(buyer), Self::Purchases) => Some(CustomerQuery::Purchases { buyer }),
            (UserId::Seller(seller), Self::Rating) => Some(CustomerQuery::Rating { seller }),
            _ => None,
        }
    }
}

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Its user.
    pub user: UserId,
    /// Last activity mark (ms since the epoch).
    pub last_active_ms: u64,
}

/// A seller's account summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellerSummary {
    /// Display name.
    pub name: String,
    /// Username.
    pub username: String,
    /// Units sold.
    pub items_sold: u64,
    /// Rating.
    pub rating: Rating,
    /// Live or not-yet-swept sessions.
    pub sessions: usize,
}

/// A buyer's account summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyerSummary {
    /// Display name.
    pub name: String,
    /// Username.
    pub username: String,
    /// Units bought.
    pub items_purchased: u64,
    /// Number of purchases.
    pub purchases: usize,
    /// Items bought (ids), with their sellers.
    pub purchased_items: Vec<(ItemId, SellerId)>,
    /// Feedback given, per item.
    pub feedback_given: Vec<(ItemId, Vote)>,
    /// The saved cart.
    pub saved_cart: Vec<CartLine>,
    /// Live or not-yet-swept sessions.
    pub sessions: usize,
}

/// Answers of the customer database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerAnswer {
    /// `None`: no such username.
    Credentials(Option<(UserId, String)>),
    /// `None`: unknown, ended or expired.
    Session(Option<SessionInfo>),
    /// The working cart (`None`: no such buyer).
    Cart(Option<Cart>),
    /// Newest first (`None`: no such buyer). Shared with the state, so a read of a long
    /// history copies no purchase (an `Arc` is encoded as what it points to).
    Purchases(Option<Vec<Arc<Purchase>>>),
    /// `None`: no such seller.
    Rating(Option<Rating>),
    /// `None`: no such seller.
    Seller(Option<SellerSummary>),
    /// `None`: no such buyer.
    Buyer(Option<BuyerSummary>),
    /// `None`: nothing remembered (or expired).
    Remembered(Option<StoredResponse>),
    /// Answer to [`CustomerQuery::ForSession`].
    ForSession {
        /// The live session (`None`: unknown, ended or expired), whatever its role.
        session: Option<SessionInfo>,
        /// The answer about its user; `None` when no `about` was asked, the session is not
        /// live, or it belongs to the other role (or the query does not fit the role).
        about: Option<Box<CustomerAnswer>>,
        /// The remembered response, if one was asked for and is kept.
        remembered: Option<StoredResponse>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seller {
    name: String,
    username: String,
    password_hash: String,
    items_sold: u64,
    up: u64,
    down: u64,
    sessions: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Buyer {
    name: String,
    username: String,
    password_hash: String,
    items_purchased: u64,
    working: BTreeMap<ItemId, u64>,
    saved: BTreeMap<ItemId, u64>,
    purchases: Vec<PurchaseId>,
    purchased_items: BTreeMap<ItemId, SellerId>,
    feedback_given: BTreeMap<ItemId, Vote>,
    sessions: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    user: UserId,
    last_active_ms: u64,
}

/// The customer database state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerMachine {
    config: CustomerConfig,
    clock_ms: u64,
    next_seller: u64,
    next_buyer: u64,
    next_purchase: u64,
    sellers: BTreeMap<SellerId, Seller>,
    seller_usernames: BTreeMap<String, SellerId>,
    buyers: BTreeMap<BuyerId, Buyer>,
    buyer_usernames: BTreeMap<String, BuyerId>,
    sessions: BTreeMap<String, Session>,
    /// `(last_active_ms, token)`, to end idle sessions in order.
    session_idle: BTreeSet<(u64, String)>,
    purchases: BTreeMap<PurchaseId, (BuyerId, Arc<Purchase>)>,
    /// (reservation id, reserved at) -> the purchase recorded for it.
    purchase_by_reservation: BTreeMap<(u64, u64), PurchaseId>,
    /// Reservation id -> (attempt, claimed at): the attempt that may record it before its
    /// confirmation ([`CustomerCommand::ClaimPurchase`]).
    purchase_claims: BTreeMap<u64, (u64, u64)>,
    /// `(claimed at, reservation id)`, to forget claims in order.
    claim_order: BTreeSet<(u64, u64)>,
    /// Remembered responses and their eviction order (serialized as the two fields
    /// `(scope, key) -> response` and `(at_ms, scope, key)` it replaced).
    remembered: Remembered,
    /// Sum of remembered body sizes (also kept by `remembered`; stays for the format).
    remembered_bytes: u64,
}

impl Default for CustomerMachine {
    fn default() -> Self {
        Self::new(CustomerConfig::default())
    }
}

fn cart_view(working: &BTreeMap<ItemId, u64>, saved: &BTreeMap<ItemId, u64>) -> Cart {
    Cart {
        items: working
            .iter()
            .map(|(id, q)| CartLine {
                item_id: id.to_string(),
                quantity: *q,
            })
            .collect(),
        saved: !working.is_empty() && working == saved,
    }
}

impl CustomerMachine {
    /// An empty database with the given limits.
    pub fn new(config: CustomerConfig) -> Self {
        Self {
            config,
            clock_ms: 0,
            next_seller: 1,
            next_buyer: 1,
            next_purchase: 1,
            sellers: BTreeMap::new(),
            seller_usernames: BTreeMap::new(),
            buyers: BTreeMap::new(),
            buyer_usernames: BTreeMap::new(),
            sessions: BTreeMap::new(),
            session_idle: BTreeSet::new(),
            purchases: BTreeMap::new(),
            purchase_by_reservation: BTreeMap::new(),
            purchase_claims: BTreeMap::new(),
            claim_order: BTreeSet::new(),
            remembered: Remembered::default(),
            remembered_bytes: 0,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &CustomerConfig {
        &self.config
    }

    /// The highest command time applied so far.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Number of sessions not yet ended (some may be idle past expiry until the next command).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn session_live(&self, s: &Session, now_ms: u64) -> bool {
        now_ms < s.last_active_ms.saturating_add(self.config.session_idle_ms)
    }

    /// Moves time forward to `at_ms` (never backward) and ends whatever expired.
    fn advance(&mut self, at_ms: u64) {
        self.clock_ms = self.clock_ms.max(at_ms);
        let now = self.clock_ms;
        let idle = self.config.session_idle_ms;
        while let Some((last, token)) = self.session_idle.first().cloned() {
            if now < last.saturating_add(idle) {
                break;
            }
            self.end_session(&token);
        }
        while let Some(&(at, rid)) = self.claim_order.first() {
            if now < at.saturating_add(PURCHASE_CLAIM_TTL_MS) {
                break;
            }
            self.forget_claim(rid);
        }
        let ttl = self.config.idempotency_ttl_ms;
        while let Some(at) = self.remembered.oldest_ms() {
            if now < at.saturating_add(ttl) {
                break;
            }
            self.forget_oldest_response();
        }
    }

    /// Forgets the claim on a reservation's record.
    fn forget_claim(&mut self, reservation_id: u64) {
        if let Some((_, at)) = self.purchase_claims.remove(&reservation_id) {
            self.claim_order.remove(&(at, reservation_id));
        }
    }

    /// Forgets the oldest remembered response.
    fn forget_oldest_response(&mut self) {
        self.remembered.forget_oldest();
        self.remembered_bytes = self.remembered.bytes();
    }

    /// Ends a session; a buyer's working cart goes back to the saved cart.
    fn end_session(&mut self, token: &str) -> bool {
        let Some(session) = self.sessions.remove(token) else {
            return false;
        };
        self.session_idle
            .remove(&(session.last_active_ms, token.to_string()));
        match session.user {
            UserId::Seller(id) => {
                if let Some(s) = self.sellers.get_mut(&id) {
                    s.sessions.remove(token);
                }
            }
            UserId::Buyer(id) => {
                if let Some(b) = self.buyers.get_mut(&id) {
                    b.sessions.remove(token);
                    b.working = b.saved.clone();
                }
            }
        }
        true
    }

    /// Moves a session's activity mark to the current time; false if there is no session.
    fn touch(&mut self, token: &str) -> bool {
        let now = self.clock_ms;
        let Some(session) = self.sessions.get_mut(token) else {
            return false;
        };
        let old = session.last_active_ms;
        if now > old {
            session.last_active_ms = now;
            self.session_idle.remove(&(old, token.to_string()));
            self.session_idle.insert((now, token.to_string()));
        }
        true
    }

    fn buyer_mut(&mut self, buyer: BuyerId) -> Result<&mut Buyer, MarketError> {
        self.buyers
            .get_mut(&buyer)
            .ok_or_else(|| MarketError::NotFound(format!("buyer {buyer}")))
    }

    fn apply_command(&mut self, command: CustomerCommand) -> Result<CustomerOutput, MarketError> {
        self.advance(command.at_ms());
        match command {
            CustomerCommand::CreateSeller {
                name,
                username,
                password_hash,
                ..
            } => {
                if self.seller_usernames.contains_key(&username) {
                    return Err(MarketError::UsernameTaken(username));
                }
                let id = SellerId(self.next_seller);
                self.next_seller += 1;
                self.seller_usernames.insert(username.clone(), id);
                self.sellers.insert(
                    id,
                    Seller {
                        name,
                        username,
                        password_hash,
                        items_sold: 0,
                        up: 0,
                        down: 0,
                        sessions: BTreeSet::new(),
                    },
                );
                Ok(CustomerOutput::SellerCreated(id))
            }
            CustomerCommand::CreateBuyer {
                name,
                username,
                password_hash,
                ..
            } => {
                if self.buyer_usernames.contains_key(&username) {
                    return Err(MarketError::UsernameTaken(username));
                }
                let id = BuyerId(self.next_buyer);
                self.next_buyer += 1;
                self.buyer_usernames.insert(username.clone(), id);
                self.buyers.insert(
                    id,
                    Buyer {
                        name,
                        username,
                        password_hash,
                        items_purchased: 0,
                        working: BTreeMap::new(),
                        saved: BTreeMap::new(),
                        purchases: Vec::new(),
                        purchased_items: BTreeMap::new(),
                        feedback_given: BTreeMap::new(),
                        sessions: BTreeSet::new(),
                    },
                );
                Ok(CustomerOutput::BuyerCreated(id))
            }
            CustomerCommand::OpenSession { user, token, at_ms } => {
                if self.sessions.contains_key(&token) {
                    return Err(MarketError::Unavailable("session token collision".into()));
                }
                let user_sessions = match user {
                    UserId::Seller(id) => self.sellers.get(&id).map(|s| s.sessions.clone()),
                    UserId::Buyer(id) => self.buyers.get(&id).map(|b| b.sessions.clone()),
                }
                .ok_or_else(|| MarketError::Unauthenticated("no such user".into()))?;
                if user_sessions.len() >= self.config.sessions_per_user_max.max(1) {
                    let oldest = user_sessions
                        .iter()
                        .filter_map(|t| self.sessions.get(t).map(|s| (s.last_active_ms, t.clone())))
                        .min();
                    if let Some((_, t)) = oldest {
                        self.end_session(&t);
                    }
                }
                let last_active_ms = at_ms.max(self.clock_ms);
                self.sessions.insert(
                    token.clone(),
                    Session {
                        user,
                        last_active_ms,
                    },
                );
                self.session_idle.insert((last_active_ms, token.clone()));
                match user {
                    UserId::Seller(id) => {
                        if let Some(s) = self.sellers.get_mut(&id) {
                            s.sessions.insert(token);
                        }
                    }
                    UserId::Buyer(id) => {
                        if let Some(b) = self.buyers.get_mut(&id) {
                            b.sessions.insert(token);
                        }
                    }
                }
                Ok(CustomerOutput::Done)
            }
            CustomerCommand::CloseSession { token, .. } => {
                if self.end_session(&token) {
                    Ok(CustomerOutput::Done)
                } else {
                    Err(MarketError::Unauthenticated(
                        "unknown or ended session".into(),
                    ))
                }
            }
            CustomerCommand::Touch { token, .. } => {
                if self.touch(&token) {
                    Ok(CustomerOutput::Done)
                } else {
                    Err(MarketError::Unauthenticated(
                        "unknown or ended session".into(),
                    ))
                }
            }
            CustomerCommand::AddToCart {
                buyer,
                item,
                quantity,
                available,
                ..
            } => {
                let lines_max = self.config.cart_lines_max;
                let b = self.buyer_mut(buyer)?;
                if !b.working.contains_key(&item) && b.working.len() >= lines_max {
                    return Err(MarketError::invalid(
                        "item_id",
                        format!("a cart holds at most {lines_max} different items"),
                    ));
                }
                let current = b.working.get(&item).copied().unwrap_or(0);
                let new = current.saturating_add(quantity);
                if quantity == 0 || new > available {
                    return Err(MarketError::InsufficientQuantity {
                        item: item.to_string(),
                    });
                }
                b.working.insert(item, new);
                Ok(CustomerOutput::Cart(cart_view(&b.working, &b.saved)))
            }
            CustomerCommand::RemoveFromCart {
                buyer,
                item,
                quantity,
                ..
            } => {
                let b = self.buyer_mut(buyer)?;
                let Some(current) = b.working.get(&item).copied() else {
                    return Err(MarketError::NotFound(format!(
                        "item {item} is not in the cart"
                    )));
                };
                match quantity {
                    Some(q) if q < current => {
                        b.working.insert(item, current - q);
                    }
                    _ => {
                        b.working.remove(&item);
                    }
                }
                Ok(CustomerOutput::Cart(cart_view(&b.working, &b.saved)))
            }
            CustomerCommand::ClearCart { buyer, .. } => {
                let b = self.buyer_mut(buyer)?;
                b.working.clear();
                b.saved.clear();
                Ok(CustomerOutput::Done)
            }
            CustomerCommand::SaveCart { buyer, .. } => {
                let b = self.buyer_mut(buyer)?;
                b.saved = b.working.clone();
                Ok(CustomerOutput::Done)
            }
            CustomerCommand::RecordPurchase {
                buyer,
                reservation_id,
                reserved_at_ms,
                lines,
                attempt,
                at_ms,
            } => {
                let reservation = (reservation_id, reserved_at_ms);
                if let Some(p) = self.recorded_purchase(buyer, reservation)? {
                    return Ok(CustomerOutput::Purchase(p));
                }
                let claimed = self.purchase_claims.get(&reservation_id).map(|c| c.0);
                if matches!((attempt, claimed), (Some(a), Some(c)) if a != c) {
                    return Ok(CustomerOutput::Superseded);
                }
                self.record_purchase(buyer, reservation, lines, at_ms)
            }
            CustomerCommand::ClaimPurchase {
                buyer,
                reservation_id,
                reserved_at_ms,
                attempt,
                at_ms,
            } => {
                if let Some(p) = self.recorded_purchase(buyer, (reservation_id, reserved_at_ms))? {
                    return Ok(CustomerOutput::Purchase(p));
                }
                self.buyer_mut(buyer)?;
                self.forget_claim(reservation_id);
                if self.purchase_claims.len() >= PURCHASE_CLAIMS_MAX {
                    if let Some(&(_, oldest)) = self.claim_order.first() {
                        self.forget_claim(oldest);
                    }
                }
                let at = at_ms.max(self.clock_ms);
                self.purchase_claims.insert(reservation_id, (attempt, at));
                self.claim_order.insert((at, reservation_id));
                Ok(CustomerOutput::Done)
            }
            CustomerCommand::GiveFeedback {
                buyer, item, vote, ..
            } => {
                let b = self.buyer_mut(buyer)?;
                let Some(seller) = b.purchased_items.get(&item).copied() else {
                    return Err(MarketError::NotPurchased {
                        item: item.to_string(),
                    });
                };
                if let Some(first) = b.feedback_given.get(&item) {
                    return Ok(CustomerOutput::Feedback {
                        seller,
                        vote: *first,
                        fresh: false,
                    });
                }
                b.feedback_given.insert(item, vote);
                if let Some(s) = self.sellers.get_mut(&seller) {
                    match vote {
                        Vote::Up => s.up += 1,
                        Vote::Down => s.down += 1,
                    }
                }
                Ok(CustomerOutput::Feedback {
                    seller,
                    vote,
                    fresh: true,
                })
            }
            CustomerCommand::RememberResponse {
                scope,
                key,
                response,
                at_ms,
            } => self
                .remember(scope, key, response, at_ms)
                .map(CustomerOutput::Remembered),
            CustomerCommand::RememberResponses { entries, at_ms } => {
                for e in entries {
                    // A body over the limit is skipped; the others are still remembered.
                    let _ = self.remember_new(e.scope, e.key, e.response, at_ms);
                }
                Ok(CustomerOutput::Done)
            }
            CustomerCommand::ForSession {
                token,
                role,
                command,
                at_ms,
            } => {
                // `advance` above has ended every session idle past its limit.
                let user = match self.sessions.get(&token) {
                    Some(s) if s.user.role() == role => s.user,
                    Some(_) => {
                        return Err(MarketError::Unauthenticated(
                            "this token belongs to the other role".into(),
                        ))
                    }
                    None => {
                        return Err(MarketError::Unauthenticated(
                            "unknown, ended or expired session".into(),
                        ))
                    }
                };
                let UserId::Buyer(buyer) = user else {
                    return Err(MarketError::Unauthenticated("not a buyer".into()));
                };
                self.touch(&token);
                match self.apply_command(command.for_buyer(buyer, at_ms))? {
                    CustomerOutput::Feedback {
                        seller,
                        vote,
                        fresh,
                    } => Ok(CustomerOutput::BuyerFeedback {
                        buyer,
                        seller,
                        vote,
                        fresh,
                    }),
                    output => Ok(output),
                }
            }
            CustomerCommand::Tick { .. } => Ok(CustomerOutput::Done),
            CustomerCommand::ForKeyedSession {
                scope,
                key,
                token,
                role,
                command,
                at_ms,
            } => match self.remembered_at(&scope, &key, at_ms) {
                Some(response) => Ok(CustomerOutput::Remembered(response)),
                None => self.apply_command(CustomerCommand::ForSession {
                    token,
                    role,
                    command,
                    at_ms,
                }),
            },
        }
    }

    /// Remembers `response` for `(scope, key)` unless one is already remembered; returns the
    /// response remembered now (the first).
    fn remember(
        &mut self,
        scope: String,
        key: String,
        response: StoredResponse,
        at_ms: u64,
    ) -> Result<StoredResponse, MarketError> {
        if let Some((first, _)) = self.remembered.get(&scope, &key) {
            return Ok(first.clone());
        }
        let kept = response.clone();
        self.remember_new(scope, key, response, at_ms)?;
        Ok(kept)
    }

    /// Remembers `response` for `(scope, key)` unless one is already remembered (then nothing
    /// changes); refuses a body over the limit. Evicts the oldest to stay within the limits.
    fn remember_new(
        &mut self,
        scope: String,
        key: String,
        response: StoredResponse,
        at_ms: u64,
    ) -> Result<(), MarketError> {
        let d = remembered::digest(&scope, &key);
        if self.remembered.taken(d) {
            return Ok(());
        }
        if response.body.len() > self.config.idempotency_body_bytes_max {
            return Err(MarketError::invalid(
                "body",
                "response too large to remember",
            ));
        }
        let at = at_ms.max(self.clock_ms);
        let size = response.body.len() as u64;
        while self.remembered.len() > 0
            && (self.remembered.len() >= self.config.idempotency_entries_max.max(1)
                || self.remembered.bytes().saturating_add(size)
                    > self.config.idempotency_total_bytes_max)
        {
            self.forget_oldest_response();
        }
        self.remembered.insert(d, scope, key, response, at);
        self.remembered_bytes = self.remembered.bytes();
        Ok(())
    }

    /// The purchase recorded for `reservation`, if any (another buyer's: invalid).
    fn recorded_purchase(
        &self,
        buyer: BuyerId,
        reservation: (u64, u64),
    ) -> Result<Option<Purchase>, MarketError> {
        let Some(pid) = self.purchase_by_reservation.get(&reservation) else {
            return Ok(None);
        };
        match self.purchases.get(pid) {
            Some((owner, p)) if *owner == buyer => Ok(Some(Purchase::clone(p))),
            _ => Err(MarketError::invalid(
                "reservation_id",
                "belongs to another purchase",
            )),
        }
    }

    /// Records a purchase not recorded yet.
    fn record_purchase(
        &mut self,
        buyer: BuyerId,
        reservation: (u64, u64),
        lines: Vec<PurchaseLine>,
        at_ms: u64,
    ) -> Result<CustomerOutput, MarketError> {
        if lines.is_empty() {
            return Err(MarketError::CartEmpty);
        }
        let mut parsed = Vec::with_capacity(lines.len());
        for l in &lines {
            let id: ItemId = l
                .item_id
                .parse()
                .map_err(|_| MarketError::invalid("item_id", "not an item id"))?;
            parsed.push((id, SellerId(l.seller_id), l.quantity));
        }
        let next = self.next_purchase;
        let b = self.buyer_mut(buyer)?;
        let id = PurchaseId(next);
        let total_cents = lines.iter().fold(0u64, |acc, l| {
            acc.saturating_add(l.quantity.saturating_mul(l.price_cents))
        });
        let units = lines
            .iter()
            .fold(0u64, |acc, l| acc.saturating_add(l.quantity));
        b.items_purchased = b.items_purchased.saturating_add(units);
        b.purchases.push(id);
        b.working.clear();
        b.saved.clear();
        for (item, seller, _) in &parsed {
            b.purchased_items.insert(*item, *seller);
        }
        for (_, seller, q) in &parsed {
            if let Some(s) = self.sellers.get_mut(seller) {
                s.items_sold = s.items_sold.saturating_add(*q);
            }
        }
        self.next_purchase += 1;
        let purchase = Purchase {
            purchase_id: id.0,
            created_at: rfc3339(at_ms.max(self.clock_ms)),
            total_cents,
            lines,
        };
        self.purchases
            .insert(id, (buyer, Arc::new(purchase.clone())));
        self.purchase_by_reservation.insert(reservation, id);
        Ok(CustomerOutput::Purchase(purchase))
    }

    fn answer(&self, query: &CustomerQuery) -> CustomerAnswer {
        match query {
            CustomerQuery::Credentials { role, username } => {
                CustomerAnswer::Credentials(match role {
                    Role::Seller => self.seller_usernames.get(username).and_then(|id| {
                        self.sellers
                            .get(id)
                            .map(|s| (UserId::Seller(*id), s.password_hash.clone()))
                    }),
                    Role::Buyer => self.buyer_usernames.get(username).and_then(|id| {
                        self.buyers
                            .get(id)
                            .map(|b| (UserId::Buyer(*id), b.password_hash.clone()))
                    }),
                })
            }
            CustomerQuery::Session { token, now_ms } => {
                let now = (*now_ms).max(self.clock_ms);
                CustomerAnswer::Session(
                    self.sessions
                        .get(token)
                        .filter(|s| self.session_live(s, now))
                        .map(|s| SessionInfo {
                            user: s.user,
                            last_active_ms: s.last_active_ms,
                        }),
                )
            }
            CustomerQuery::Cart { buyer, now_ms } => {
                let now = (*now_ms).max(self.clock_ms);
                CustomerAnswer::Cart(self.buyers.get(buyer).map(|b| {
                    let some_session_expired = b.sessions.iter().any(|t| {
                        self.sessions
                            .get(t)
                            .is_some_and(|s| !self.session_live(s, now))
                    });
                    if some_session_expired {
                        cart_view(&b.saved, &b.saved)
                    } else {
                        cart_view(&b.working, &b.saved)
                    }
                }))
            }
            CustomerQuery::Purchases { buyer } => {
                CustomerAnswer::Purchases(self.buyers.get(buyer).map(|b| {
                    b.purchases
                        .iter()
                        .rev()
                        .filter_map(|id| self.purchases.get(id).map(|(_, p)| p.clone()))
                        .collect()
                }))
            }
            CustomerQuery::Rating { seller } => {
                CustomerAnswer::Rating(self.sellers.get(seller).map(|s| Rating {
                    seller_id: seller.0,
                    up: s.up,
                    down: s.down,
                }))
            }
            CustomerQuery::Seller { seller } => {
                CustomerAnswer::Seller(self.sellers.get(seller).map(|s| SellerSummary {
                    name: s.name.clone(),
                    username: s.username.clone(),
                    items_sold: s.items_sold,
                    rating: Rating {
                        seller_id: seller.0,
                        up: s.up,
                        down: s.down,
                    },
                    sessions: s.sessions.len(),
                }))
            }
            CustomerQuery::Buyer { buyer } => {
                CustomerAnswer::Buyer(self.buyers.get(buyer).map(|b| BuyerSummary {
                    name: b.name.clone(),
                    username: b.username.clone(),
                    items_purchased: b.items_purchased,
                    purchases: b.purchases.len(),
                    purchased_items: b.purchased_items.iter().map(|(i, s)| (*i, *s)).collect(),
                    feedback_given: b.feedback_given.iter().map(|(i, v)| (*i, *v)).collect(),
                    saved_cart: cart_view(&b.saved, &b.saved).items,
                    sessions: b.sessions.len(),
                }))
            }
            CustomerQuery::Remembered { scope, key, now_ms } => {
                CustomerAnswer::Remembered(self.remembered_at(scope, key, *now_ms))
            }
            CustomerQuery::ForSession {
                token,
                role,
                now_ms,
                about,
                remembered,
            } => {
                let now = (*now_ms).max(self.clock_ms);
                let session = self
                    .sessions
                    .get(token)
                    .filter(|s| self.session_live(s, now))
                    .map(|s| SessionInfo {
                        user: s.user,
                        last_active_ms: s.last_active_ms,
                    });
                let inner = session
                    .as_ref()
                    .filter(|s| s.user.role() == *role)
                    .and_then(|s| about.and_then(|a| a.for_user(s.user, now)));
                CustomerAnswer::ForSession {
                    session,
                    about: inner.map(|q| Box::new(self.answer(&q))),
                    remembered: remembered
                        .as_ref()
                        .and_then(|(scope, key)| self.remembered_at(scope, key, *now_ms)),
                }
            }
        }
    }

    /// The response remembered for `(scope, key)`, if still kept at `now_ms`.
    fn remembered_at(&self, scope: &str, key: &str, now_ms: u64) -> Option<StoredResponse> {
        let now = now_ms.max(self.clock_ms);
        self.remembered
            .get(scope, key)
            .filter(|&(_, at)| now < at.saturating_add(self.config.idempotency_ttl_ms))
            .map(|(r, _)| r.clone())
    }
}

/// The customer machine's snapshot format (see [`crate::snapshot`]). Bump `version` whenever
/// the serialized state changes shape.
pub const SNAPSHOT_FORMAT: crate::snapshot::Format = crate::snapshot::Format {
    magic: *b"MKCU",
    version: crate::snapshot::UNHEADED_VERSION,
};

impl StateMachine for CustomerMachine {
    type Command = CustomerCommand;
    type Output = Result<CustomerOutput, MarketError>;
    type Query = CustomerQuery;
    type Answer = CustomerAnswer;

    fn apply(&mut self, command: CustomerCommand) -> Self::Output {
        self.apply_command(command)
    }

    fn query(&self, query: &CustomerQuery) -> CustomerAnswer {
        self.answer(query)
    }

    fn snapshot(&self) -> Vec<u8> {
        crate::snapshot::encode(SNAPSHOT_FORMAT, self)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        *self = crate::snapshot::decode(SNAPSHOT_FORMAT, snapshot)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

mod remembered;
use remembered::Remembered;
