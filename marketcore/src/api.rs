//! The JSON types of the HTTP API (shared/API.md), shared by the HTTP servers, the HTTP client
//! crate and the [`Market`](crate::market::Market) service.
//!
//! Field names are exactly those of API.md. Request bodies reject unknown fields
//! (`#[serde(deny_unknown_fields)]`), so a misspelt field is a 400 rather than silently
//! ignored. Response bodies accept unknown fields, so an older client keeps working against a
//! newer server. Numbers that a client sends (`category`, `price_cents`, `quantity`, `limit`) are
//! `i64` in requests so that an out-of-range value reaches [`crate::validate`] and is refused
//! with a detail naming the field, instead of failing inside the JSON decoder.

use serde::{Deserialize, Serialize};

/// An item's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// `"new"`.
    New,
    /// `"used"`.
    Used,
}

/// Thumbs up and down given to an item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// Number of up votes.
    pub up: u64,
    /// Number of down votes.
    pub down: u64,
}

/// An item for sale (API.md `Item`). `quantity` is the number of units still available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// `"<category>-<serial>"`, e.g. `"3-17"`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Category 0 to 9.
    pub category: u8,
    /// Lower-case keywords, duplicates collapsed.
    pub keywords: Vec<String>,
    /// New or used.
    pub condition: Condition,
    /// Unit price in cents.
    pub price_cents: u64,
    /// Units available (0: off sale).
    pub quantity: u64,
    /// The seller offering the item.
    pub seller_id: u64,
    /// Buyers' votes on the item.
    pub feedback: Feedback,
}

/// One line of a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    /// The item.
    pub item_id: String,
    /// Units in the cart.
    pub quantity: u64,
}

/// A buyer's working cart (API.md `Cart`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// Lines ordered by item id.
    pub items: Vec<CartLine>,
    /// True when the working cart equals the saved cart and is not empty.
    pub saved: bool,
}

/// One line of a purchase, at the price paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseLine {
    /// The item.
    pub item_id: String,
    /// The item's name at the time of purchase.
    pub name: String,
    /// The seller of the item.
    pub seller_id: u64,
    /// Units bought.
    pub quantity: u64,
    /// Unit price paid, in cents.
    pub price_cents: u64,
}

/// A completed purchase (API.md `Purchase`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    /// System-assigned id, positive.
    pub purchase_id: u64,
    /// RFC 3339 UTC time, e.g. `"2026-11-27T12:00:00Z"`.
    pub created_at: String,
    /// Sum of quantity times price over the lines.
    pub total_cents: u64,
    /// What was bought.
    pub lines: Vec<PurchaseLine>,
}

/// A seller's rating (API.md `Rating`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rating {
    /// The seller.
    pub seller_id: u64,
    /// Up votes received on the seller's items.
    pub up: u64,
    /// Down votes received on the seller's items.
    pub down: u64,
}

/// Body of `POST /v1/sellers` and `POST /v1/buyers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Display name, 1 to 32 characters.
    pub name: String,
    /// Login name, 1 to 32 of `A-Z a-z 0-9 _ . -`.
    pub username: String,
    /// 8 to 128 characters.
    pub password: String,
}

/// Body of `POST /v1/sellers/sessions` and `POST /v1/buyers/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// 201 body of `POST /v1/sellers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellerCreated {
    /// The new seller's id.
    pub seller_id: u64,
}

/// 201 body of `POST /v1/buyers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyerCreated {
    /// The new buyer's id.
    pub buyer_id: u64,
}

/// 201 body of `POST /v1/sellers/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellerLoginResponse {
    /// Bearer token for seller routes.
    pub token: String,
    /// The seller logged in.
    pub seller_id: u64,
}

/// 201 body of `POST /v1/buyers/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyerLoginResponse {
    /// Bearer token for buyer routes.
    pub token: String,
    /// The buyer logged in.
    pub buyer_id: u64,
}

/// Body of `POST /v1/sellers/me/items`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    /// 1 to 32 characters.
    pub name: String,
    /// 0 to 9.
    pub category: i64,
    /// 0 to 5 keywords of 1 to 8 letters or digits. May be omitted (no keywords).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// New or used.
    pub condition: Condition,
    /// 1 to 1,000,000,000.
    pub price_cents: i64,
    /// 1 to 1,000,000.
    pub quantity: i64,
}

/// Body of `PUT /v1/sellers/me/items/{id}/price`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceChange {
    /// The new unit price, 1 to 1,000,000,000.
    pub price_cents: i64,
}

/// Body of `POST /v1/buyers/me/cart/items`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddToCart {
    /// The item to add.
    pub item_id: String,
    /// Units to add, 1 to 1,000,000.
    pub quantity: i64,
}

/// Payment card details.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    /// Card holder, 1 to 64 characters.
    pub name: String,
    /// 12 to 19 digits passing the Luhn check.
    pub number: String,
    /// `"MM/YY"`, not in the past.
    pub expiry: String,
    /// 3 or 4 digits.
    pub cvv: String,
}

impl std::fmt::Debug for Card {
    /// Never prints the card number or the security code.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("name", &self.name)
            .field("number", &"<redacted>")
            .field("expiry", &self.expiry)
            .field("cvv", &"<redacted>")
            .finish()
    }
}

/// Body of `POST /v1/buyers/me/purchases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    /// The card to charge.
    pub card: Card,
}

/// A buyer's vote on a purchased item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    /// `"up"`.
    Up,
    /// `"down"`.
    Down,
}

/// Body of `POST /v1/buyers/me/feedback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// A purchased item.
    pub item_id: String,
    /// Up or down.
    pub vote: Vote,
}

/// The parameters of `GET /v1/items?category=C&keyword=K&keyword=K2&limit=N`, as the HTTP
/// server parsed them from the query string (this is not a JSON body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Optional category, 0 to 9.
    #[serde(default)]
    pub category: Option<i64>,
    /// 0 to 5 keywords (the repeated `keyword` parameter).
    #[serde(default)]
    pub keywords: Vec<String>,
    /// 1 to 500; `None` means 50.
    #[serde(default)]
    pub limit: Option<i64>,
}

/// 200 body of `GET /v1/items` and `GET /v1/sellers/me/items`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Items {
    /// The items.
    pub items: Vec<Item>,
}

/// 200 body of `GET /v1/buyers/me/purchases`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchases {
    /// Newest first.
    pub purchases: Vec<Purchase>,
}

/// An RFC 9457 problem document (`application/problem+json`), the body of every error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Always `"about:blank"`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The HTTP reason phrase of `status`.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// One of API.md's codes, e.g. `"insufficient_quantity"`.
    pub code: String,
    /// Names the offending field or item.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reject_unknown_fields() {
        let bad = r#"{"name":"a","username":"b","password":"cccccccc","admin":true}"#;
        assert!(serde_json::from_str::<CreateAccount>(bad).is_err());
        let ok = r#"{"name":"a","username":"b","password":"cccccccc"}"#;
        assert!(serde_json::from_str::<CreateAccount>(ok).is_ok());
        assert!(serde_json::from_str::<PriceChange>(r#"{"price_cents":"1"}"#).is_err());
        assert!(serde_json::from_str::<AddToCart>(r#"{"item_id":"1-1"}"#).is_err());
    }

    #[test]
    fn field_names_match_the_api() {
        let item = Item {
            id: "3-17".into(),
            name: "lamp".into(),
            category: 3,
            keywords: vec!["desk".into(), "led".into()],
            condition: Condition::Used,
            price_cents: 1250,
            quantity: 4,
            seller_id: 7,
            feedback: Feedback { up: 2, down: 0 },
        };
        let v = serde_json::to_value(&item).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "3-17", "name": "lamp", "category": 3,
                "keywords": ["desk", "led"], "condition": "used", "price_cents": 1250,
                "quantity": 4, "seller_id": 7, "feedback": {"up": 2, "down": 0}})
        );
        let fb: FeedbackRequest =
            serde_json::from_str(r#"{"item_id":"3-17","vote":"down"}"#).unwrap();
        assert_eq!(fb.vote, Vote::Down);
        assert!(
            serde_json::from_str::<FeedbackRequest>(r#"{"item_id":"3-17","vote":"meh"}"#).is_err()
        );
        let p = Problem {
            type_: "about:blank".into(),
            title: "Conflict".into(),
            status: 409,
            code: "cart_empty".into(),
            detail: "x".into(),
        };
        assert_eq!(serde_json::to_value(&p).unwrap()["type"], "about:blank");
        let card = Card {
            name: "A".into(),
            number: "4111111111111111".into(),
            expiry: "12/30".into(),
            cvv: "123".into(),
        };
        assert!(!format!("{card:?}").contains("4111"));
    }
}
