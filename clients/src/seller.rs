//! [`SellerClient`]: the seller interface of API.md.

use std::fmt::Write as _;

use hyper::Method;

use crate::api::{
    CreateAccount, Item, Items, Login, NewItem, PriceChange, Rating, SellerCreated,
    SellerLoginResponse,
};
use crate::core::{client_common, encode, Core, NO_BODY};
use crate::{ClientConfig, ClientError, Replicas};

/// A client of the seller servers: one method per seller function of API.md, named as there.
///
/// Holds at most one session token: [`SellerClient::login_seller`] stores it,
/// [`SellerClient::logout_seller`] clears it, [`SellerClient::token`] and
/// [`SellerClient::with_token`] persist and restore it. Methods take `&self`, so one client can
/// be shared between tasks (e.g. in an `Arc`). Every method fails over between replicas as
/// described in [`crate::replicas`].
#[derive(Debug)]
pub struct SellerClient {
    core: Core,
}

client_common!(SellerClient, "seller");

impl SellerClient {
    /// `POST /v1/sellers`: creates a seller account.
    pub async fn create_seller(
        &self,
        account: &CreateAccount,
    ) -> Result<SellerCreated, ClientError> {
        self.core
            .json(Method::POST, "/v1/sellers", Some(account), false)
            .await
    }

    /// `POST /v1/sellers/sessions`: logs in and keeps the token for the following calls.
    pub async fn login_seller(&self, login: &Login) -> Result<SellerLoginResponse, ClientError> {
        let resp: SellerLoginResponse = self
            .core
            .json(Method::POST, "/v1/sellers/sessions", Some(login), false)
            .await?;
        self.core.set_token(Some(&resp.token))?;
        Ok(resp)
    }

    /// `DELETE /v1/sellers/sessions/current`: ends the session. The token is forgotten when
    /// the server confirms, and also when it answers 401 (the session had already ended).
    pub async fn logout_seller(&self) -> Result<(), ClientError> {
        let result = self
            .core
            .empty(
                Method::DELETE,
                "/v1/sellers/sessions/current",
                NO_BODY,
                true,
            )
            .await;
        if result.is_ok() || result.as_ref().is_err_and(|e| e.status() == Some(401)) {
            self.core.set_token(None)?;
        }
        result
    }

    /// `GET /v1/sellers/me/rating`: the logged-in seller's rating.
    pub async fn get_seller_rating(&self) -> Result<Rating, ClientError> {
        self.core
            .json(Method::GET, "/v1/sellers/me/rating", NO_BODY, true)
            .await
    }

    /// `POST /v1/sellers/me/items`: puts an item up for sale.
    pub async fn add_item(&self, item: &NewItem) -> Result<Item, ClientError> {
        self.core
            .json(Method::POST, "/v1/sellers/me/items", Some(item), true)
            .await
    }

    /// `PUT /v1/sellers/me/items/{id}/price`: changes an item's unit price.
    pub async fn change_price(&self, item_id: &str, price_cents: i64) -> Result<Item, ClientError> {
        let path = format!("/v1/sellers/me/items/{}/price", encode(item_id));
        self.core
            .json(Method::PUT, &path, Some(&PriceChange { price_cents }), true)
            .await
    }

    /// `DELETE /v1/sellers/me/items/{id}?quantity=N`: removes `quantity` units, or all units
    /// with `None`. Returns the item with its remaining quantity.
    pub async fn remove_item(
        &self,
        item_id: &str,
        quantity: Option<i64>,
    ) -> Result<Item, ClientError> {
        let mut path = format!("/v1/sellers/me/items/{}", encode(item_id));
        if let Some(q) = quantity {
            let _ = write!(path, "?quantity={q}");
        }
        self.core.json(Method::DELETE, &path, NO_BODY, true).await
    }

    /// `GET /v1/sellers/me/items`: every item of the logged-in seller, sold out ones included.
    pub async fn all_items_by_seller(&self) -> Result<Items, ClientError> {
        self.core
            .json(Method::GET, "/v1/sellers/me/items", NO_BODY, true)
            .await
    }
}
