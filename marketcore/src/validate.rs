//! Every rule of API.md's Limits table, checked on the frontend before anything is replicated.
//!
//! Each function takes the raw value from a request and returns the value the domain stores
//! (for instance keywords lower-cased and de-duplicated, numbers narrowed to their unsigned
//! type) or [`MarketError::InvalidArgument`] naming the field.

use crate::api::{Card, NewItem};
use crate::clock::year_month;
use crate::error::MarketError;
use crate::ids::ItemId;

/// Longest name of a seller, buyer or item, in Unicode scalar values.
pub const NAME_CHARS_MAX: usize = 32;
/// Longest username.
pub const USERNAME_CHARS_MAX: usize = 32;
/// Shortest password.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password.
pub const PASSWORD_CHARS_MAX: usize = 128;
/// Highest category.
pub const CATEGORY_MAX: i64 = 9;
/// Most keywords per item or per search.
pub const KEYWORDS_MAX: usize = 5;
/// Longest keyword.
pub const KEYWORD_CHARS_MAX: usize = 8;
/// Highest price.
pub const PRICE_CENTS_MAX: i64 = 1_000_000_000;
/// Highest quantity in one request.
pub const QUANTITY_MAX: i64 = 1_000_000;
/// Highest search limit.
pub const SEARCH_LIMIT_MAX: i64 = 500;
/// Search limit when none is given.
pub const SEARCH_LIMIT_DEFAULT: usize = 50;
/// Longest card holder name.
pub const CARD_NAME_CHARS_MAX: usize = 64;
/// Longest `Idempotency-Key`.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 64;

/// A name (seller, buyer, item; `field` says which): 1 to 32 characters, not blank.
pub fn name(field: &str, value: &str) -> Result<String, MarketError> {
    let n = value.chars().count();
    if n == 0 || n > NAME_CHARS_MAX {
        return Err(MarketError::invalid(field, "must be 1 to 32 characters"));
    }
    if value.trim().is_empty() {
        return Err(MarketError::invalid(field, "must not be blank"));
    }
    Ok(value.to_string())
}

/// A username: 1 to 32 of `A-Z a-z 0-9 _ . -` (case-sensitive).
pub fn username(value: &str) -> Result<String, MarketError> {
    let n = value.chars().count();
    if n == 0 || n > USERNAME_CHARS_MAX {
        return Err(MarketError::invalid(
            "username",
            "must be 1 to 32 characters",
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(MarketError::invalid(
            "username",
            "may contain only A-Z a-z 0-9 _ . -",
        ));
    }
    Ok(value.to_string())
}

/// A password: 8 to 128 characters.
pub fn password(value: &str) -> Result<(), MarketError> {
    let n = value.chars().count();
    if !(PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&n) {
        return Err(MarketError::invalid(
            "password",
            "must be 8 to 128 characters",
        ));
    }
    Ok(())
}

/// A category: 0 to 9.
pub fn category(value: i64) -> Result<u8, MarketError> {
    if !(0..=CATEGORY_MAX).contains(&value) {
        return Err(MarketError::invalid("category", "must be 0 to 9"));
    }
    Ok(value as u8)
}

/// Keywords (`field` is `keywords` or `keyword`): 0 to 5 of 1 to 8 letters or digits;
/// returned lower-case with duplicates collapsed (first occurrence kept).
pub fn keywords(field: &str, values: &[String]) -> Result<Vec<String>, MarketError> {
    if values.len() > KEYWORDS_MAX {
        return Err(MarketError::invalid(field, "at most 5 keywords"));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for k in values {
        let n = k.chars().count();
        if n == 0 || n > KEYWORD_CHARS_MAX {
            return Err(MarketError::invalid(
                field,
                "each keyword must be 1 to 8 characters",
            ));
        }
        if !k.chars().all(char::is_alphanumeric) {
            return Err(MarketError::invalid(
                field,
                "keywords may contain only letters and digits",
            ));
        }
        let lower = k.to_lowercase();
        if !out.contains(&lower) {
            out.push(lower);
        }
    }
    Ok(out)
}

/// A price: 1 to 1,000,000,000 cents.
pub fn price_cents(value: i64) -> Result<u64, MarketError> {
    if !(1..=PRICE_CENTS_MAX).contains(&value) {
        return Err(MarketError::invalid(
            "price_cents",
            "must be 1 to 1000000000",
        ));
    }
    Ok(value as u64)
}

/// A quantity: 1 to 1,000,000.
pub fn quantity(value: i64) -> Result<u64, MarketError> {
    if !(1..=QUANTITY_MAX).contains(&value) {
        return Err(MarketError::invalid("quantity", "must be 1 to 1000000"));
    }
    Ok(value as u64)
}

/// A search limit: 1 to 500, default 50.
pub fn search_limit(value: Option<i64>) -> Result<usize, MarketError> {
    match value {
        None => Ok(SEARCH_LIMIT_DEFAULT),
        Some(v) if (1..=SEARCH_LIMIT_MAX).contains(&v) => Ok(v as usize),
        Some(_) => Err(MarketError::invalid("limit", "must be 1 to 500")),
    }
}

/// An item id in a request body (`field` names it): `"<category>-<serial>"`.
pub fn item_id(field: &str, value: &str) -> Result<ItemId, MarketError> {
    value
        .parse()
        .map_err(|_| MarketError::invalid(field, "must be \"<category>-<serial>\""))
}

/// The Luhn check digit test.
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum % 10 == 0
}

/// A card expiry `"MM/YY"` that is not in the past at `now_ms` (a card is valid through the
/// last day of its month, UTC). Years are 2000 + YY.
pub fn expiry(value: &str, now_ms: u64) -> Result<(), MarketError> {
    let bad = || MarketError::invalid("card.expiry", "must be \"MM/YY\"");
    let b = value.as_bytes();
    if b.len() != 5 || b[2] != b'/' || !b[..2].iter().chain(&b[3..]).all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let month: u8 = value[..2].parse().map_err(|_| bad())?;
    let year: i32 = 2000 + value[3..].parse::<i32>().map_err(|_| bad())?;
    if !(1..=12).contains(&month) {
        return Err(bad());
    }
    let (now_year, now_month) = year_month(now_ms);
    if (year, month) < (now_year, now_month) {
        return Err(MarketError::invalid("card.expiry", "the card has expired"));
    }
    Ok(())
}

/// A payment card: holder name 1 to 64 characters, number 12 to 19 digits passing Luhn,
/// expiry not in the past at `now_ms`, cvv 3 or 4 digits.
pub fn card(card: &Card, now_ms: u64) -> Result<(), MarketError> {
    let n = card.name.chars().count();
    if n == 0 || n > CARD_NAME_CHARS_MAX || card.name.trim().is_empty() {
        return Err(MarketError::invalid(
            "card.name",
            "must be 1 to 64 characters",
        ));
    }
    let len = card.number.len();
    if !(12..=19).contains(&len) || !card.number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MarketError::invalid(
            "card.number",
            "must be 12 to 19 digits",
        ));
    }
    if !luhn(&card.number) {
        return Err(MarketError::invalid("card.number", "fails the Luhn check"));
    }
    expiry(&card.expiry, now_ms)?;
    let c = card.cvv.len();
    if !(3..=4).contains(&c) || !card.cvv.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MarketError::invalid("card.cvv", "must be 3 or 4 digits"));
    }
    Ok(())
}

/// An `Idempotency-Key` header: 1 to 64 visible ASCII characters.
pub fn idempotency_key(value: &str) -> Result<(), MarketError> {
    if value.is_empty()
        || value.len() > IDEMPOTENCY_KEY_CHARS_MAX
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(MarketError::invalid(
            "Idempotency-Key",
            "must be 1 to 64 visible ASCII characters",
        ));
    }
    Ok(())
}

/// A validated [`NewItem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidItem {
    /// The name.
    pub name: String,
    /// The category.
    pub category: u8,
    /// Lower-case, de-duplicated keywords.
    pub keywords: Vec<String>,
    /// The unit price.
    pub price_cents: u64,
    /// Units listed.
    pub quantity: u64,
}

/// Validates every field of a [`NewItem`].
pub fn new_item(item: &NewItem) -> Result<ValidItem, MarketError> {
    Ok(ValidItem {
        name: name("name", &item.name)?,
        category: category(item.category)?,
        keywords: keywords("keywords", &item.keywords)?,
        price_cents: price_cents(item.price_cents)?,
        quantity: quantity(item.quantity)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(e: MarketError) -> String {
        match e {
            MarketError::InvalidArgument { field, .. } => field,
            other => panic!("not invalid_argument: {other:?}"),
        }
    }

    #[test]
    fn names() {
        assert!(name("name", "a").is_ok());
        assert!(name("name", &"é".repeat(32)).is_ok());
        assert_eq!(field(name("name", &"é".repeat(33)).unwrap_err()), "name");
        assert!(name("name", "").is_err());
        assert!(name("name", "   ").is_err());
        assert!(name("name", "\t\n").is_err());
    }

    #[test]
    fn usernames() {
        assert!(username("Ab_9.-z").is_ok());
        assert!(username(&"a".repeat(32)).is_ok());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(username("").is_err());
        assert!(username("a b").is_err());
        assert!(username("é").is_err());
        assert_eq!(field(username("a@b").unwrap_err()), "username");
    }

    #[test]
    fn passwords() {
        assert!(password("12345678").is_ok());
        assert!(password(&"x".repeat(128)).is_ok());
        assert!(password("1234567").is_err());
        assert!(password(&"x".repeat(129)).is_err());
        assert!(password("ééééééé").is_err());
        assert!(password("éééééééé").is_ok());
    }

    #[test]
    fn categories_prices_quantities_limits() {
        assert_eq!(category(0).unwrap(), 0);
        assert_eq!(category(9).unwrap(), 9);
        assert!(category(10).is_err());
        assert!(category(-1).is_err());
        assert_eq!(price_cents(1).unwrap(), 1);
        assert_eq!(price_cents(1_000_000_000).unwrap(), 1_000_000_000);
        assert!(price_cents(0).is_err());
        assert!(price_cents(1_000_000_001).is_err());
        assert_eq!(field(price_cents(-5).unwrap_err()), "price_cents");
        assert_eq!(quantity(1_000_000).unwrap(), 1_000_000);
        assert!(quantity(0).is_err());
        assert!(quantity(1_000_001).is_err());
        assert_eq!(search_limit(None).unwrap(), 50);
        assert_eq!(search_limit(Some(1)).unwrap(), 1);
        assert_eq!(search_limit(Some(500)).unwrap(), 500);
        assert!(search_limit(Some(0)).is_err());
        assert!(search_limit(Some(501)).is_err());
    }

    #[test]
    fn keyword_rules() {
        let k = |v: &[&str]| {
            keywords(
                "keywords",
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(k(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(k(&["Desk", "LED", "desk"]).unwrap(), vec!["desk", "led"]);
        assert!(k(&["a", "b", "c", "d", "e"]).is_ok());
        assert!(k(&["a", "b", "c", "d", "e", "f"]).is_err());
        assert!(k(&["12345678"]).is_ok());
        assert!(k(&["123456789"]).is_err());
        assert!(k(&[""]).is_err());
        assert!(k(&["a-b"]).is_err());
        assert!(k(&["a b"]).is_err());
    }

    #[test]
    fn luhn_and_cards() {
        assert!(luhn("4111111111111111"));
        assert!(luhn("79927398713"));
        assert!(!luhn("4111111111111112"));
        assert!(!luhn(""));
        let now = 1_795_780_800_000; // 2026-11-27
        let good = Card {
            name: "Ada".into(),
            number: "4111111111111111".into(),
            expiry: "11/26".into(),
            cvv: "123".into(),
        };
        assert!(card(&good, now).is_ok());
        let with = |f: &dyn Fn(&mut Card)| {
            let mut c = good.clone();
            f(&mut c);
            card(&c, now).map_err(field)
        };
        assert_eq!(
            with(&|c| c.expiry = "10/26".into()),
            Err("card.expiry".into())
        );
        assert_eq!(
            with(&|c| c.expiry = "13/30".into()),
            Err("card.expiry".into())
        );
        assert_eq!(
            with(&|c| c.expiry = "00/30".into()),
            Err("card.expiry".into())
        );
        assert_eq!(
            with(&|c| c.expiry = "1/30".into()),
            Err("card.expiry".into())
        );
        assert_eq!(
            with(&|c| c.expiry = "12-30".into()),
            Err("card.expiry".into())
        );
        assert!(with(&|c| c.expiry = "01/27".into()).is_ok());
        assert_eq!(
            with(&|c| c.number = "4111111111111112".into()),
            Err("card.number".into())
        );
        assert_eq!(
            with(&|c| c.number = "41111111111".into()),
            Err("card.number".into())
        );
        assert_eq!(
            with(&|c| c.number = "4111 1111 1111 1111".into()),
            Err("card.number".into())
        );
        assert!(with(&|c| c.number = "424242424242".into()).is_ok());
        assert_eq!(
            with(&|c| c.number = "42424242424242424242".into()),
            Err("card.number".into())
        );
        assert_eq!(with(&|c| c.cvv = "12".into()), Err("card.cvv".into()));
        assert_eq!(with(&|c| c.cvv = "12345".into()), Err("card.cvv".into()));
        assert_eq!(with(&|c| c.cvv = "12a".into()), Err("card.cvv".into()));
        assert!(with(&|c| c.cvv = "1234".into()).is_ok());
        assert_eq!(with(&|c| c.name = "".into()), Err("card.name".into()));
        assert_eq!(with(&|c| c.name = "x".repeat(65)), Err("card.name".into()));
        assert!(with(&|c| c.name = "x".repeat(64)).is_ok());
    }

    #[test]
    fn idempotency_keys_and_item_ids() {
        assert!(idempotency_key("a").is_ok());
        assert!(idempotency_key(&"k".repeat(64)).is_ok());
        assert!(idempotency_key("").is_err());
        assert!(idempotency_key(&"k".repeat(65)).is_err());
        assert!(idempotency_key("a b").is_err());
        assert!(idempotency_key("é").is_err());
        assert_eq!(item_id("item_id", "3-17").unwrap(), ItemId::new(3, 17));
        assert_eq!(field(item_id("item_id", "x").unwrap_err()), "item_id");
    }

    #[test]
    fn new_items() {
        let item = NewItem {
            name: "lamp".into(),
            category: 3,
            keywords: vec!["Desk".into()],
            condition: crate::api::Condition::New,
            price_cents: 100,
            quantity: 2,
        };
        assert_eq!(new_item(&item).unwrap().keywords, vec!["desk"]);
        let mut bad = item.clone();
        bad.quantity = 0;
        assert_eq!(field(new_item(&bad).unwrap_err()), "quantity");
    }
}
