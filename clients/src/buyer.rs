//! [`BuyerClient`]: the buyer interface of API.md.

use std::fmt::Write as _;

use hyper::Method;

use crate::api::{
    AddToCart, BuyerCreated, BuyerLoginResponse, Card, Cart, CreateAccount, FeedbackRequest, Item,
    Items, Login, Purchase, PurchaseRequest, Purchases, Rating, SearchQuery, Vote,
};
use crate::core::{client_common, encode, Core, NO_BODY};
use crate::{ClientConfig, ClientError, Replicas};

/// A client of the buyer servers: one method per buyer function of API.md, named as there.
///
/// Session handling is as for [`SellerClient`](crate::SellerClient): `login_buyer` stores the
/// token, `logout_buyer` clears it, [`BuyerClient::token`] / [`BuyerClient::with_token`]
/// persist and restore it. `search_items`, `get_item` and `get_seller_rating` need no session.
#[derive(Debug)]
pub struct BuyerClient {
    core: Core,
}

client_common!(BuyerClient, "buyer");

impl BuyerClient {
    /// `POST /v1/buyers`: creates a buyer account.
    pub async fn create_buyer(&self, account: &CreateAccount) -> Result<BuyerCreated, ClientError> {
        self.core
            .json(Method::POST, "/v1/buyers", Some(account), false)
            .await
    }

    /// `POST /v1/buyers/sessions`: logs in and keeps the token for the following calls.
    pub async fn login_buyer(&self, login: &Login) -> Result<BuyerLoginResponse, ClientError> {
        let resp: BuyerLoginResponse = self
            .core
            .json(Method::POST, "/v1/buyers/sessions", Some(login), false)
            .await?;
        self.core.set_token(Some(&resp.token))?;
        Ok(resp)
    }

    /// `DELETE /v1/buyers/sessions/current`: ends the session. The token is forgotten when the
    /// server confirms, and also when it answers 401 (the session had already ended).
    pub async fn logout_buyer(&self) -> Result<(), ClientError> {
        let result = self
            .core
            .empty(Method::DELETE, "/v1/buyers/sessions/current", NO_BODY, true)
            .await;
        if result.is_ok() || result.as_ref().is_err_and(|e| e.status() == Some(401)) {
            self.core.set_token(None)?;
        }
        result
    }

    /// `GET /v1/items?category=C&keyword=K&limit=N`: items on sale (no session needed).
    pub async fn search_items(&self, query: &SearchQuery) -> Result<Items, ClientError> {
        self.core
            .json(Method::GET, &search_path(query), NO_BODY, false)
            .await
    }

    /// `GET /v1/items/{id}`: one item (no session needed).
    pub async fn get_item(&self, item_id: &str) -> Result<Item, ClientError> {
        let path = format!("/v1/items/{}", encode(item_id));
        self.core.json(Method::GET, &path, NO_BODY, false).await
    }

    /// `GET /v1/buyers/me/cart`: the working cart.
    pub async fn display_cart(&self) -> Result<Cart, ClientError> {
        self.core
            .json(Method::GET, "/v1/buyers/me/cart", NO_BODY, true)
            .await
    }

    /// `POST /v1/buyers/me/cart/items`: adds `quantity` units of an item to the cart.
    pub async fn add_to_cart(&self, item_id: &str, quantity: i64) -> Result<Cart, ClientError> {
        let body = AddToCart {
            item_id: item_id.to_owned(),
            quantity,
        };
        self.core
            .json(Method::POST, "/v1/buyers/me/cart/items", Some(&body), true)
            .await
    }

    /// `DELETE /v1/buyers/me/cart/items/{id}?quantity=N`: removes units from the cart (the
    /// whole line with `None`).
    pub async fn remove_cart(
        &self,
        item_id: &str,
        quantity: Option<i64>,
    ) -> Result<Cart, ClientError> {
        let mut path = format!("/v1/buyers/me/cart/items/{}", encode(item_id));
        if let Some(q) = quantity {
            let _ = write!(path, "?quantity={q}");
        }
        self.core.json(Method::DELETE, &path, NO_BODY, true).await
    }

    /// `DELETE /v1/buyers/me/cart`: empties the working and the saved cart.
    pub async fn clear_cart(&self) -> Result<(), ClientError> {
        self.core
            .empty(Method::DELETE, "/v1/buyers/me/cart", NO_BODY, true)
            .await
    }

    /// `POST /v1/buyers/me/cart/save`: copies the working cart to the saved cart.
    pub async fn save_cart(&self) -> Result<(), ClientError> {
        self.core
            .empty(Method::POST, "/v1/buyers/me/cart/save", NO_BODY, true)
            .await
    }

    /// `POST /v1/buyers/me/purchases`: buys the whole working cart with `card`.
    pub async fn make_purchase(&self, card: &Card) -> Result<Purchase, ClientError> {
        let body = PurchaseRequest { card: card.clone() };
        self.core
            .json(Method::POST, "/v1/buyers/me/purchases", Some(&body), true)
            .await
    }

    /// `GET /v1/buyers/me/purchases`: the buyer's purchases, newest first.
    pub async fn get_purchase_history(&self) -> Result<Purchases, ClientError> {
        self.core
            .json(Method::GET, "/v1/buyers/me/purchases", NO_BODY, true)
            .await
    }

    /// `POST /v1/buyers/me/feedback`: votes on a purchased item, once.
    pub async fn provide_feedback(&self, item_id: &str, vote: Vote) -> Result<(), ClientError> {
        let body = FeedbackRequest {
            item_id: item_id.to_owned(),
            vote,
        };
        self.core
            .empty(Method::POST, "/v1/buyers/me/feedback", Some(&body), true)
            .await
    }

    /// `GET /v1/sellers/{seller_id}/rating`: any seller's rating (no session needed).
    pub async fn get_seller_rating(&self, seller_id: u64) -> Result<Rating, ClientError> {
        let path = format!("/v1/sellers/{seller_id}/rating");
        self.core.json(Method::GET, &path, NO_BODY, false).await
    }
}

/// The path and query of a search: `/v1/items?category=C&keyword=K&keyword=K2&limit=N`.
pub(crate) fn search_path(query: &SearchQuery) -> String {
    let mut path = String::from("/v1/items");
    let mut sep = '?';
    if let Some(c) = query.category {
        let _ = write!(path, "{sep}category={c}");
        sep = '&';
    }
    for k in &query.keywords {
        let _ = write!(path, "{sep}keyword={}", encode(k));
        sep = '&';
    }
    if let Some(l) = query.limit {
        let _ = write!(path, "{sep}limit={l}");
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_query_string() {
        assert_eq!(search_path(&SearchQuery::default()), "/v1/items");
        let q = SearchQuery {
            category: Some(3),
            keywords: vec!["desk".into(), "a b".into()],
            limit: Some(10),
        };
        assert_eq!(
            search_path(&q),
            "/v1/items?category=3&keyword=desk&keyword=a%20b&limit=10"
        );
        let q = SearchQuery {
            keywords: vec!["led".into()],
            ..SearchQuery::default()
        };
        assert_eq!(search_path(&q), "/v1/items?keyword=led");
    }
}
