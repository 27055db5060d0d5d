//! The product database: a deterministic [`StateMachine`] of items, their search index, their
//! feedback, and purchase reservations.
//!
//! # Items and units
//!
//! An item id is `"<category>-<serial>"`; serials are counted per category from 1, in apply,
//! so every replica assigns the same ids. Every unit ever listed is in exactly one of four
//! states, and the machine keeps, per item,
//!
//! ```text
//! listed = available + sold + removed + reserved        (nothing below zero)
//! ```
//!
//! `available` is the `quantity` API.md shows. Only the owning seller may change the price
//! or remove units (else `forbidden`); removing more units than are available is
//! `insufficient_quantity`.
//!
//! # Search
//!
//! An inverted index maps each word to the items that carry it: the item's keywords (stored
//! lower-case) and the lower-cased words of its name (split at anything that is not a letter
//! or digit). A search with keywords counts, per item, how many distinct query keywords it
//! carries; it returns items with at least one match and quantity > 0, ordered by that count
//! (most first) then by id, at most `limit`. Without keywords it returns all items of the
//! category (or all items) with quantity > 0, by id.
//!
//! # Reservations
//!
//! A purchase first reserves units: [`ProductCommand::Reserve`] moves the units of every line
//! from available to reserved, or — if any line is short — changes nothing and names the
//! item (`insufficient_quantity`). It records names, prices and sellers at that moment (the
//! purchase is at current prices). [`ProductCommand::Confirm`] moves them to sold;
//! [`ProductCommand::Release`] back to available. A reservation still held when a command
//! with `at_ms >= expires_at_ms` is applied is released then (any command advances time, so
//! expiry is deterministic). A `Confirm` that comes after its reservation lapsed (the payment
//! service outlasted it) still sells the units if every line's are still available, taking
//! them from available directly; otherwise it fails and nothing changes. Reserving with an existing reservation id returns that
//! reservation unchanged (domain-level idempotency: the Market derives the id from the
//! buyer's `Idempotency-Key`). Finished reservations are remembered for
//! `reservation_retain_ms` after they finish, then forgotten.

use std::collections::{BTreeMap, BTreeSet};

use replication::{SnapshotError, StateMachine};
use serde::{Deserialize, Serialize};

use crate::api::{Condition, Feedback, Item, Vote};
use crate::error::MarketError;
use crate::ids::{BuyerId, ItemId, SellerId};

/// Limits of the product database; every replica must use the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductConfig {
    /// How long a confirmed or released reservation is remembered (for idempotent retries).
    pub reservation_retain_ms: u64,
    /// Most lines in one reservation.
    pub reservation_lines_max: usize,
}

impl Default for ProductConfig {
    fn default() -> Self {
        Self {
            reservation_retain_ms: 600_000,
            reservation_lines_max: 1000,
        }
    }
}

/// Why a reservation was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseReason {
    /// The payment was declined.
    Declined,
    /// The payment service failed.
    PaymentFailed,
    /// It expired before it was confirmed.
    Expired,
    /// The frontend gave up for another reason.
    Abandoned,
}

/// The state of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationState {
    /// Units are reserved until `expires_at_ms`.
    Held {
        /// Expiry time.
        expires_at_ms: u64,
    },
    /// Units are sold.
    Confirmed,
    /// Units went back to available.
    Released(ReleaseReason),
}

/// One reserved line, with the item's name, price and seller when reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLine {
    /// The item.
    pub item: ItemId,
    /// Its name.
    pub name: String,
    /// Its seller.
    pub seller: SellerId,
    /// Units.
    pub quantity: u64,
    /// Unit price.
    pub price_cents: u64,
}

/// A reservation as the proposer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Its id (chosen by the proposer).
    pub id: u64,
    /// The buyer.
    pub buyer: BuyerId,
    /// When it was made (the machine's clock then). With `id` it names this reservation
    /// uniquely, even if the id is reused after the reservation was forgotten.
    pub reserved_at_ms: u64,
    /// The purchase attempt that made it (see [`ProductCommand::Reserve`]).
    pub attempt: u64,
    /// Lines in item id order.
    pub lines: Vec<ReservedLine>,
    /// Sum of quantity times price.
    pub total_cents: u64,
    /// Held, confirmed or released.
    pub state: ReservationState,
}

/// Per-item unit accounting (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Units {
    /// Units ever listed.
    pub listed: u64,
    /// Units on sale now (API.md's `quantity`).
    pub available: u64,
    /// Units sold.
    pub sold: u64,
    /// Units removed by the seller.
    pub removed: u64,
    /// Units held by reservations.
    pub reserved: u64,
}

impl Units {
    /// True when `listed = available + sold + removed + reserved`.
    pub fn conserved(&self) -> bool {
        self.available
            .checked_add(self.sold)
            .and_then(|x| x.checked_add(self.removed))
            .and_then(|x| x.checked_add(self.reserved))
            == Some(self.listed)
    }
}

/// Commands of the product database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductCommand {
    /// Lists a new item. Output: [`ProductOutput::Item`].
    AddItem {
        /// The seller.
        seller: SellerId,
        /// Validated name.
        name: String,
        /// 0 to 9.
        category: u8,
        /// Validated, lower-case keywords.
        keywords: Vec<String>,
        /// New or used.
        condition: Condition,
        /// Unit price.
        price_cents: u64,
        /// Units listed.
        quantity: u64,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Changes the price (owner only). Output: [`ProductOutput::Item`].
    ChangePrice {
        /// The acting seller.
        seller: SellerId,
        /// The item.
        item: ItemId,
        /// New unit price.
        price_cents: u64,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Removes available units (owner only; `None`: all). Output: [`ProductOutput::Item`].
    RemoveUnits {
        /// The acting seller.
        seller: SellerId,
        /// The item.
        item: ItemId,
        /// Units to remove.
        quantity: Option<u64>,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Reserves every line or none. Output: [`ProductOutput::Reservation`].
    Reserve {
        /// Chosen by the proposer; an existing id returns the existing reservation.
        reservation_id: u64,
        /// The buyer.
        buyer: BuyerId,
        /// (item, units); duplicates are merged.
        lines: Vec<(ItemId, u64)>,
        /// Proposer's time.
        at_ms: u64,
        /// When the reservation lapses if neither confirmed nor released.
        expires_at_ms: u64,
        /// The proposer's purchase attempt (random): kept with the reservation, so a retry
        /// whose `Reserve` is answered with an existing reservation sees that an earlier
        /// attempt made it ([`Reservation::attempt`]).
        attempt: u64,
    },
    /// Sells the reserved units. Output: [`ProductOutput::Reservation`] (also when already
    /// confirmed); released already: unavailable.
    Confirm {
        /// The reservation.
        reservation_id: u64,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Returns the reserved units. Output: [`ProductOutput::Reservation`] (unchanged when
    /// already confirmed or released).
    Release {
        /// The reservation.
        reservation_id: u64,
        /// Why.
        reason: ReleaseReason,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Adds a buyer's vote to an item's feedback, once per (buyer, item).
    /// Output: [`ProductOutput::Done`].
    ItemFeedback {
        /// The buyer.
        buyer: BuyerId,
        /// The item.
        item: ItemId,
        /// Up or down.
        vote: Vote,
        /// Proposer's time.
        at_ms: u64,
    },
    /// Only advances time (expires reservations). Output: [`ProductOutput::Done`].
    Tick {
        /// Proposer's time.
        at_ms: u64,
    },
}

impl ProductCommand {
    /// The time the command carries.
    pub fn at_ms(&self) -> u64 {
        match self {
            Self::AddItem { at_ms, .. }
            | Self::ChangePrice { at_ms, .. }
            | Self::RemoveUnits { at_ms, .. }
            | Self::Reserve { at_ms, .. }
            | Self::Confirm { at_ms, .. }
            | Self::Release { at_ms, .. }
            | Self::ItemFeedback { at_ms, .. }
            | Self::Tick { at_ms } => *at_ms,
        }
    }

    /// The command's step number within one client request (see
    /// [`CustomerCommand::step`](crate::customer::CustomerCommand::step)); `None` for ticks
    /// and for the reservation commands. `Reserve`, `Confirm` and `Release` are idempotent by
    /// reservation id in the machine itself, and the purchase workflow branches on the
    /// reservation they answer with, so a retry must see it as it is now: with an id derived
    /// from the key, the log would answer a retry's `Reserve` with the first attempt's
    /// remembered "held" after that attempt's decline had released it, and send the retry to
    /// pay again.
    pub fn step(&self) -> Option<u64> {
        match self {
            Self::AddItem { .. } => Some(1),
            Self::ChangePrice { .. } => Some(2),
            Self::RemoveUnits { .. } => Some(3),
            Self::ItemFeedback { .. } => Some(7),
            Self::Reserve { .. }
            | Self::Confirm { .. }
            | Self::Release { .. }
            | Self::Tick { .. } => None,
        }
    }
}

/// Successful outputs of product commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductOutput {
    /// The item after the command.
    Item(Item),
    /// The reservation after the command.
    Reservation(Reservation),
    /// The command took effect (or had nothing to do).
    Done,
}

/// Queries of the product database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductQuery {
    /// One item. Answer: [`ProductAnswer::Item`].
    Item(ItemId),
    /// A seller's items, also those with quantity 0, by id. Answer: [`ProductAnswer::Items`].
    BySeller(SellerId),
    /// A search (see the module docs). Answer: [`ProductAnswer::Items`].
    Search {
        /// Optional category.
        category: Option<u8>,
        /// Lower-case keywords (0 to 5).
        keywords: Vec<String>,
        /// At most this many results.
        limit: usize,
    },
    /// A reservation. Answer: [`ProductAnswer::Reservation`].
    Reservation(u64),
    /// Held reservations that lapse before `before_ms`, soonest first, at most `limit`
    /// (the purchase sweeper's look at reservations a dead frontend may have left).
    /// Answer: [`ProductAnswer::Reservations`].
    HeldLapsing {
        /// Lapse time bound (exclusive).
        before_ms: u64,
        /// At most this many.
        limit: usize,
    },
    /// Unit accounting of every item. Answer: [`ProductAnswer::Units`].
    Units,
}

/// Answers of the product database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductAnswer {
    /// `None`: no such item.
    Item(Option<Item>),
    /// Items.
    Items(Vec<Item>),
    /// `None`: unknown or forgotten.
    Reservation(Option<Reservation>),
    /// Reservations.
    Reservations(Vec<Reservation>),
    /// Every item's units, by id.
    Units(Vec<(ItemId, Units)>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ItemRecord {
    seller: SellerId,
    name: String,
    keywords: Vec<String>,
    condition: Condition,
    price_cents: u64,
    units: Units,
    feedback: Feedback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ReservationRecord {
    buyer: BuyerId,
    reserved_at_ms: u64,
    attempt: u64,
    lines: Vec<ReservedLine>,
    state: ReservationState,
}

/// The product database state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductMachine {
    config: ProductConfig,
    clock_ms: u64,
    /// Last serial assigned, per category.
    serials: [u64; 10],
    items: BTreeMap<ItemId, ItemRecord>,
    by_seller: BTreeMap<SellerId, BTreeSet<ItemId>>,
    /// word -> items carrying it (keywords and name words, lower-case).
    index: BTreeMap<String, BTreeSet<ItemId>>,
    reservations: BTreeMap<u64, ReservationRecord>,
    /// `(expires_at_ms, id)` of held reservations.
    held: BTreeSet<(u64, u64)>,
    /// `(forget_at_ms, id)` of finished reservations.
    finished: BTreeSet<(u64, u64)>,
    /// (buyer, item) pairs whose feedback was added.
    feedback_applied: BTreeSet<(BuyerId, ItemId)>,
}

impl Default for ProductMachine {
    fn default() -> Self {
        Self::new(ProductConfig::default())
    }
}

/// The lower-case words of an item name (split at anything not a letter or digit).
pub fn name_words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn item_view(id: ItemId, r: &ItemRecord) -> Item {
    Item {
        id: id.to_string(),
        name: r.name.clone(),
        category: id.category,
        keywords: r.keywords.clone(),
        condition: r.condition,
        price_cents: r.price_cents,
        quantity: r.units.available,
        seller_id: r.seller.0,
        feedback: r.feedback,
    }
}

fn not_found(item: ItemId) -> MarketError {
    MarketError::NotFound(format!("item {item}"))
}

impl ProductMachine {
    /// An empty database with the given limits.
    pub fn new(config: ProductConfig) -> Self {
        Self {
            config,
            clock_ms: 0,
            serials: [0; 10],
            items: BTreeMap::new(),
            by_seller: BTreeMap::new(),
            index: BTreeMap::new(),
            reservations: BTreeMap::new(),
            held: BTreeSet::new(),
            finished: BTreeSet::new(),
            feedback_applied: BTreeSet::new(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &ProductConfig {
        &self.config
    }

    /// The highest command time applied so far.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Checks the unit invariant of every item and the reservation bookkeeping; returns a
    /// description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut reserved: BTreeMap<ItemId, u64> = BTreeMap::new();
        for (id, r) in &self.reservations {
            if let ReservationState::Held { expires_at_ms } = r.state {
                if !self.held.contains(&(expires_at_ms, *id)) {
                    return Err(format!("reservation {id} held but not indexed"));
                }
                for l in &r.lines {
                    *reserved.entry(l.item).or_default() += l.quantity;
                }
            }
        }
        for (id, it) in &self.items {
            if !it.units.conserved() {
                return Err(format!("item {id}: units not conserved: {:?}", it.units));
            }
            if it.units.reserved != reserved.get(id).copied().unwrap_or(0) {
                return Err(format!(
                    "item {id}: reserved count differs from reservations"
                ));
            }
        }
        Ok(())
    }

    fn advance(&mut self, at_ms: u64) {
        self.clock_ms = self.clock_ms.max(at_ms);
        let now = self.clock_ms;
        while let Some(&(expires, id)) = self.held.first() {
            if now < expires {
                break;
            }
            self.release(id, ReleaseReason::Expired);
        }
        while let Some(&(forget, id)) = self.finished.first() {
            if now < forget {
                break;
            }
            self.finished.pop_first();
            self.reservations.remove(&id);
        }
    }

    /// Releases a held reservation (no-op otherwise).
    fn release(&mut self, id: u64, reason: ReleaseReason) {
        let Some(r) = self.reservations.get_mut(&id) else {
            return;
        };
        let ReservationState::Held { expires_at_ms } = r.state else {
            return;
        };
        self.held.remove(&(expires_at_ms, id));
        r.state = ReservationState::Released(reason);
        for l in &r.lines {
            if let Some(it) = self.items.get_mut(&l.item) {
                it.units.reserved = it.units.reserved.saturating_sub(l.quantity);
                it.units.available = it.units.available.saturating_add(l.quantity);
            }
        }
        let forget = self
            .clock_ms
            .saturating_add(self.config.reservation_retain_ms);
        self.finished.insert((forget, id));
    }

    fn reservation_view(&self, id: u64) -> Option<Reservation> {
        self.reservations.get(&id).map(|r| Reservation {
            id,
            buyer: r.buyer,
            reserved_at_ms: r.reserved_at_ms,
            attempt: r.attempt,
            lines: r.lines.clone(),
            total_cents: r.lines.iter().fold(0u64, |acc, l| {
                acc.saturating_add(l.quantity.saturating_mul(l.price_cents))
            }),
            state: r.state,
        })
    }

    fn owned_mut(
        &mut self,
        seller: SellerId,
        item: ItemId,
    ) -> Result<&mut ItemRecord, MarketError> {
        let it = self.items.get_mut(&item).ok_or_else(|| not_found(item))?;
        if it.seller != seller {
            return Err(MarketError::Forbidden(format!(
                "item {item} belongs to another seller"
            )));
        }
        Ok(it)
    }

    fn apply_command(&mut self, command: ProductCommand) -> Result<ProductOutput, MarketError> {
        self.advance(command.at_ms());
        match command {
            ProductCommand::AddItem {
                seller,
                name,
                category,
                keywords,
                condition,
                price_cents,
                quantity,
                ..
            } => {
                let c = usize::from(category);
                if c >= self.serials.len() {
                    return Err(MarketError::invalid("category", "must be 0 to 9"));
                }
                self.serials[c] += 1;
                let id = ItemId::new(category, self.serials[c]);
                let mut words: BTreeSet<String> =
                    keywords.iter().map(|k| k.to_lowercase()).collect();
                words.extend(name_words(&name));
                for w in words {
                    self.index.entry(w).or_default().insert(id);
                }
                self.by_seller.entry(seller).or_default().insert(id);
                let record = ItemRecord {
                    seller,
                    name,
                    keywords,
                    condition,
                    price_cents,
                    units: Units {
                        listed: quantity,
                        available: quantity,
                        ..Units::default()
                    },
                    feedback: Feedback::default(),
                };
                let view = item_view(id, &record);
                self.items.insert(id, record);
                Ok(ProductOutput::Item(view))
            }
            ProductCommand::ChangePrice {
                seller,
                item,
                price_cents,
                ..
            } => {
                let it = self.owned_mut(seller, item)?;
                it.price_cents = price_cents;
                Ok(ProductOutput::Item(item_view(item, it)))
            }
            ProductCommand::RemoveUnits {
                seller,
                item,
                quantity,
                ..
            } => {
                let it = self.owned_mut(seller, item)?;
                let q = quantity.unwrap_or(it.units.available);
                if q > it.units.available {
                    return Err(MarketError::InsufficientQuantity {
                        item: item.to_string(),
                    });
                }
                it.units.available -= q;
                it.units.removed += q;
                Ok(ProductOutput::Item(item_view(item, it)))
            }
            ProductCommand::Reserve {
                reservation_id,
                buyer,
                lines,
                expires_at_ms,
                attempt,
                ..
            } => {
                if let Some(existing) = self.reservation_view(reservation_id) {
                    return Ok(ProductOutput::Reservation(existing));
                }
                let mut merged: BTreeMap<ItemId, u64> = BTreeMap::new();
                for (item, q) in lines {
                    let e = merged.entry(item).or_default();
                    *e = e.saturating_add(q);
                }
                if merged.is_empty() {
                    return Err(MarketError::CartEmpty);
                }
                if merged.len() > self.config.reservation_lines_max {
                    return Err(MarketError::invalid("cart", "too many lines"));
                }
                let mut reserved = Vec::with_capacity(merged.len());
                for (&item, &q) in &merged {
                    let it = self.items.get(&item).ok_or_else(|| not_found(item))?;
                    if q == 0 || q > it.units.available {
                        return Err(MarketError::InsufficientQuantity {
                            item: item.to_string(),
                        });
                    }
                    reserved.push(ReservedLine {
                        item,
                        name: it.name.clone(),
                        seller: it.seller,
                        quantity: q,
                        price_cents: it.price_cents,
                    });
                }
                for l in &reserved {
                    if let Some(it) = self.items.get_mut(&l.item) {
                        it.units.available -= l.quantity;
                        it.units.reserved += l.quantity;
                    }
                }
                // A reservation that is already due lapses at the next command.
                let expires_at_ms = expires_at_ms.max(self.clock_ms);
                self.held.insert((expires_at_ms, reservation_id));
                self.reservations.insert(
                    reservation_id,
                    ReservationRecord {
                        buyer,
                        reserved_at_ms: self.clock_ms,
                        attempt,
                        lines: reserved,
                        state: ReservationState::Held { expires_at_ms },
                    },
                );
                Ok(ProductOutput::Reservation(
                    self.reservation_view(reservation_id)
                        .ok_or_else(|| MarketError::Unavailable("reservation lost".into()))?,
                ))
            }
            ProductCommand::Confirm { reservation_id, .. } => {
                let Some(r) = self.reservations.get_mut(&reservation_id) else {
                    return Err(MarketError::Unavailable(format!(
                        "reservation {reservation_id} is unknown or forgotten"
                    )));
                };
                match r.state {
                    ReservationState::Held { expires_at_ms } => {
                        self.held.remove(&(expires_at_ms, reservation_id));
                        r.state = ReservationState::Confirmed;
                        for l in &r.lines {
                            if let Some(it) = self.items.get_mut(&l.item) {
                                it.units.reserved = it.units.reserved.saturating_sub(l.quantity);
                                it.units.sold = it.units.sold.saturating_add(l.quantity);
                            }
                        }
                        let forget = self
                            .clock_ms
                            .saturating_add(self.config.reservation_retain_ms);
                        self.finished.insert((forget, reservation_id));
                    }
                    ReservationState::Confirmed => {}
                    ReservationState::Released(ReleaseReason::Expired) => {
                        // A late confirmation (the payment outlasted the reservation): the
                        // sale stands if every line's units are still available.
                        for l in &r.lines {
                            let available = self.items.get(&l.item).map(|it| it.units.available);
                            if available.is_none_or(|a| a < l.quantity) {
                                return Err(MarketError::Unavailable(format!(
                                    "reservation {reservation_id} lapsed and item {} has \
                                     fewer than {} units left",
                                    l.item, l.quantity
                                )));
                            }
                        }
                        r.state = ReservationState::Confirmed;
                        for l in &r.lines {
                            if let Some(it) = self.items.get_mut(&l.item) {
                                it.units.available -= l.quantity;
                                it.units.sold = it.units.sold.saturating_add(l.quantity);
                            }
                        }
                        // Remembered for the full retention time from now.
                        self.finished.retain(|&(_, id)| id != reservation_id);
                        let forget = self
                            .clock_ms
                            .saturating_add(self.config.reservation_retain_ms);
                        self.finished.insert((forget, reservation_id));
                    }
                    ReservationState::Released(reason) => {
                        return Err(MarketError::Unavailable(format!(
                            "reservation {reservation_id} was released ({reason:?})"
                        )));
                    }
                }
                Ok(ProductOutput::Reservation(
                    self.reservation_view(reservation_id)
                        .ok_or_else(|| MarketError::Unavailable("reservation lost".into()))?,
                ))
            }
            ProductCommand::Release {
                reservation_id,
                reason,
                ..
            } => {
                self.release(reservation_id, reason);
                match self.reservation_view(reservation_id) {
                    Some(r) => Ok(ProductOutput::Reservation(r)),
                    None => Ok(ProductOutput::Done),
                }
            }
            ProductCommand::ItemFeedback {
                buyer, item, vote, ..
            } => {
                let it = self.items.get_mut(&item).ok_or_else(|| not_found(item))?;
                if self.feedback_applied.insert((buyer, item)) {
                    match vote {
                        Vote::Up => it.feedback.up += 1,
                        Vote::Down => it.feedback.down += 1,
                    }
                }
                Ok(ProductOutput::Done)
            }
            ProductCommand::Tick { .. } => Ok(ProductOutput::Done),
        }
    }

    fn search(&self, category: Option<u8>, keywords: &[String], limit: usize) -> Vec<Item> {
        let on_sale = |id: &ItemId| {
            category.is_none_or(|c| c == id.category)
                && self.items.get(id).is_some_and(|it| it.units.available > 0)
        };
        if keywords.is_empty() {
            let range = match category {
                Some(c) => ItemId::new(c, 0)..=ItemId::new(c, u64::MAX),
                None => ItemId::new(0, 0)..=ItemId::new(u8::MAX, u64::MAX),
            };
            return self
                .items
                .range(range)
                .filter(|(_, it)| it.units.available > 0)
                .take(limit)
                .map(|(id, it)| item_view(*id, it))
                .collect();
        }
        let distinct: BTreeSet<String> = keywords.iter().map(|k| k.to_lowercase()).collect();
        let view = |id: &ItemId| self.items.get(id).map(|it| item_view(*id, it));
        let sets: Vec<&BTreeSet<ItemId>> =
            distinct.iter().filter_map(|k| self.index.get(k)).collect();
        if let [only] = sets[..] {
            // Every match counts one: the ranking is the id order the set already has, so
            // the first `limit` items on sale are the answer (no count of every match).
            return only
                .iter()
                .filter(|id| on_sale(id))
                .take(limit)
                .filter_map(view)
                .collect();
        }
        // Several keywords: count the distinct keywords each item on sale matches, then
        // the `limit` best by (count, most first; id).
        let mut matches: Vec<ItemId> = sets
            .iter()
            .flat_map(|ids| ids.iter().filter(|id| on_sale(id)).copied())
            .collect();
        matches.sort_unstable();
        let mut ranked: Vec<(std::cmp::Reverse<usize>, ItemId)> = Vec::new();
        for id in matches {
            match ranked.last_mut() {
                Some((n, last)) if *last == id => n.0 += 1,
                _ => ranked.push((std::cmp::Reverse(1), id)),
            }
        }
        if ranked.len() > limit && limit > 0 {
            ranked.select_nth_unstable(limit - 1);
        }
        ranked.truncate(limit);
        ranked.sort_unstable();
        ranked.iter().filter_map(|(_, id)| view(id)).collect()
    }

    fn answer(&self, query: &ProductQuery) -> ProductAnswer {
        match query {
            ProductQuery::Item(id) => {
                ProductAnswer::Item(self.items.get(id).map(|it| item_view(*id, it)))
            }
            ProductQuery::BySeller(seller) => ProductAnswer::Items(
                self.by_seller
                    .get(seller)
                    .map(|ids| {
                        ids.iter()
                            .filter_map(|id| self.items.get(id).map(|it| item_view(*id, it)))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            ProductQuery::Search {
                category,
                keywords,
                limit,
            } => ProductAnswer::Items(self.search(*category, keywords, *limit)),
            ProductQuery::Reservation(id) => ProductAnswer::Reservation(self.reservation_view(*id)),
            ProductQuery::HeldLapsing { before_ms, limit } => ProductAnswer::Reservations(
                self.held
                    .iter()
                    .take_while(|(expires, _)| expires < before_ms)
                    .take(*limit)
                    .filter_map(|(_, id)| self.reservation_view(*id))
                    .collect(),
            ),
            ProductQuery::Units => {
                ProductAnswer::Units(self.items.iter().map(|(id, it)| (*id, it.units)).collect())
            }
        }
    }
}

/// The product machine's snapshot format (see [`crate::snapshot`]). Bump `version` whenever
/// the serialized state changes shape.
pub const SNAPSHOT_FORMAT: crate::snapshot::Format = crate::snapshot::Format {
    magic: *b"MKPR",
    version: crate::snapshot::UNHEADED_VERSION,
};

impl StateMachine for ProductMachine {
    type Command = ProductCommand;
    type Output = Result<ProductOutput, MarketError>;
    type Query = ProductQuery;
    type Answer = ProductAnswer;

    fn apply(&mut self, command: ProductCommand) -> Self::Output {
        self.apply_command(command)
    }

    fn query(&self, query: &ProductQuery) -> ProductAnswer {
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
