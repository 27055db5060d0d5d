//! Identifiers: item ids `"<category>-<serial>"` and the numeric seller, buyer and purchase ids.
//!
//! Item ids order by category, then serial, numerically (`"3-2"` before `"3-17"`); this is the
//! "ordered by id" of API.md's search. Serials start at 1 in each category.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An item id: the assignment's `<item category, integer>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItemId {
    /// 0 to 9.
    pub category: u8,
    /// Assigned per category, from 1.
    pub serial: u64,
}

impl ItemId {
    /// Makes an id.
    pub fn new(category: u8, serial: u64) -> Self {
        Self { category, serial }
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.category, self.serial)
    }
}

/// Why a string is not an item id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an item id (expected \"<category 0-9>-<serial>\"): {0:?}")]
pub struct ParseItemIdError(pub String);

impl FromStr for ItemId {
    type Err = ParseItemIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseItemIdError(s.chars().take(40).collect());
        let (c, n) = s.split_once('-').ok_or_else(err)?;
        let digits =
            |x: &str| !x.is_empty() && x.len() <= 20 && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(c) || !digits(n) || (n.len() > 1 && n.starts_with('0')) || c.len() != 1 {
            return Err(err());
        }
        let category: u8 = c.parse().map_err(|_| err())?;
        let serial: u64 = n.parse().map_err(|_| err())?;
        if serial == 0 {
            return Err(err());
        }
        Ok(Self { category, serial })
    }
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

numeric_id!(
    /// A seller, assigned from 1 by the customer database.
    SellerId
);
numeric_id!(
    /// A buyer, assigned from 1 by the customer database.
    BuyerId
);
numeric_id!(
    /// A purchase, assigned from 1 by the customer database.
    PurchaseId
);

/// Which kind of user a session (and a token) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// A seller.
    Seller,
    /// A buyer.
    Buyer,
}

/// An authenticated user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UserId {
    /// A seller.
    Seller(SellerId),
    /// A buyer.
    Buyer(BuyerId),
}

impl UserId {
    /// The role of this user.
    pub fn role(&self) -> Role {
        match self {
            UserId::Seller(_) => Role::Seller,
            UserId::Buyer(_) => Role::Buyer,
        }
    }

    /// The numeric id.
    pub fn number(&self) -> u64 {
        match self {
            UserId::Seller(s) => s.0,
            UserId::Buyer(b) => b.0,
        }
    }

    /// The idempotency scope of this user: `"seller:7"` or `"buyer:3"` (see
    /// [`Market::idempotency_lookup`](crate::market::Market::idempotency_lookup)).
    pub fn scope(&self) -> String {
        match self {
            UserId::Seller(s) => format!("seller:{}", s.0),
            UserId::Buyer(b) => format!("buyer:{}", b.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_round_trip_and_order_numerically() {
        let id: ItemId = "3-17".parse().unwrap();
        assert_eq!(id, ItemId::new(3, 17));
        assert_eq!(id.to_string(), "3-17");
        assert!(ItemId::new(3, 2) < ItemId::new(3, 17));
        assert!(ItemId::new(2, 99) < ItemId::new(3, 1));
        for bad in [
            "", "3", "3-", "-1", "10-1", "a-1", "3-x", "3-0", "3-01", "3-1-2", " 3-1", "3-+1",
        ] {
            assert!(bad.parse::<ItemId>().is_err(), "{bad}");
        }
        assert!("3-99999999999999999999999".parse::<ItemId>().is_err());
        assert_eq!(UserId::Buyer(BuyerId(3)).scope(), "buyer:3");
        assert_eq!(UserId::Seller(SellerId(7)).role(), Role::Seller);
    }
}
