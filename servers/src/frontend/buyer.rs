//! The buyer server's routes (API.md, "Buyer interface").

use async_trait::async_trait;
use hyper::{Method, StatusCode};
use marketcore::api::{
    AddToCart, CreateAccount, FeedbackRequest, Login, PurchaseRequest, SearchQuery,
};
use marketcore::ids::Role;
use marketcore::{Market, MarketError};

use super::{decode_json, ok_json, Api, Call, Outcome};
use crate::router::Route;

/// The buyer API.
pub struct BuyerApi;

fn param(call: &Call) -> Result<&str, MarketError> {
    call.params
        .first()
        .map(String::as_str)
        .ok_or_else(|| MarketError::NotFound("item".into()))
}

fn search_query(call: &Call) -> Result<SearchQuery, MarketError> {
    let mut q = SearchQuery::default();
    for (k, v) in &call.query {
        match k.as_str() {
            "category" => {
                q.category = Some(v.parse().map_err(|_| {
                    MarketError::invalid("category", format!("{v:?} is not an integer"))
                })?)
            }
            "keyword" => q.keywords.push(v.clone()),
            "limit" => {
                q.limit = Some(v.parse().map_err(|_| {
                    MarketError::invalid("limit", format!("{v:?} is not an integer"))
                })?)
            }
            other => return Err(MarketError::invalid(other, "unknown query parameter")),
        }
    }
    Ok(q)
}

#[async_trait]
impl Api for BuyerApi {
    const NAME: &'static str = "buyer";
    const ROLE: Role = Role::Buyer;

    fn checks_session_itself(route: &str) -> bool {
        matches!(
            route,
            "add_to_cart"
                | "remove_cart"
                | "save_cart"
                | "clear_cart"
                | "make_purchase"
                | "provide_feedback"
        )
    }

    fn needs_session(route: &str) -> bool {
        !matches!(
            route,
            "create_buyer" | "login_buyer" | "search_items" | "get_item" | "get_seller_rating"
        )
    }

    fn routes() -> Vec<Route> {
        vec![
            Route::new(Method::POST, "/v1/buyers", "create_buyer"),
            Route::new(Method::POST, "/v1/buyers/sessions", "login_buyer"),
            Route::new(
                Method::DELETE,
                "/v1/buyers/sessions/current",
                "logout_buyer",
            ),
            Route::new(Method::GET, "/v1/items", "search_items"),
            Route::new(Method::GET, "/v1/items/{id}", "get_item"),
            Route::new(Method::GET, "/v1/buyers/me/cart", "display_cart"),
            Route::new(Method::DELETE, "/v1/buyers/me/cart", "clear_cart"),
            Route::new(Method::POST, "/v1/buyers/me/cart/items", "add_to_cart"),
            Route::new(
                Method::DELETE,
                "/v1/buyers/me/cart/items/{id}",
                "remove_cart",
            ),
            Route::new(Method::POST, "/v1/buyers/me/cart/save", "save_cart"),
            Route::new(Method::POST, "/v1/buyers/me/purchases", "make_purchase"),
            Route::new(
                Method::GET,
                "/v1/buyers/me/purchases",
                "get_purchase_history",
            ),
            Route::new(Method::POST, "/v1/buyers/me/feedback", "provide_feedback"),
            Route::new(
                Method::GET,
                "/v1/sellers/{seller_id}/rating",
                "get_seller_rating",
            ),
        ]
    }

    async fn dispatch(market: &Market, call: &Call) -> Outcome {
        match call.route {
            "create_buyer" => {
                let req: CreateAccount = decode_json(&call.body)?;
                ok_json(StatusCode::CREATED, &market.create_buyer(&req).await?)
            }
            "login_buyer" => {
                let req: Login = decode_json(&call.body)?;
                ok_json(StatusCode::CREATED, &market.login_buyer(&req).await?)
            }
            "logout_buyer" => {
                market.logout_buyer(call.token()?).await?;
                Ok((StatusCode::NO_CONTENT, None))
            }
            "search_items" => ok_json(
                StatusCode::OK,
                &market.search_items(&search_query(call)?).await?,
            ),
            "get_item" => ok_json(StatusCode::OK, &market.get_item(param(call)?).await?),
            "display_cart" => ok_json(StatusCode::OK, &market.display_cart(call.auth()?).await?),
            "clear_cart" => {
                market.clear_cart(call.auth()?).await?;
                Ok((StatusCode::NO_CONTENT, None))
            }
            "add_to_cart" => {
                let auth = call.auth()?;
                let req: AddToCart = decode_json(&call.body)?;
                ok_json(StatusCode::OK, &market.add_to_cart(auth, &req).await?)
            }
            "remove_cart" => {
                let auth = call.auth()?;
                let quantity = call.query_int("quantity")?;
                ok_json(
                    StatusCode::OK,
                    &market.remove_cart(auth, param(call)?, quantity).await?,
                )
            }
            "save_cart" => {
                market.save_cart(call.auth()?).await?;
                Ok((StatusCode::NO_CONTENT, None))
            }
            "make_purchase" => {
                let auth = call.auth()?;
                let req: PurchaseRequest = decode_json(&call.body)?;
                ok_json(
                    StatusCode::CREATED,
                    &market
                        .make_purchase(auth, &req, call.key.as_deref())
                        .await?,
                )
            }
            "get_purchase_history" => ok_json(
                StatusCode::OK,
                &market.get_purchase_history(call.auth()?).await?,
            ),
            "provide_feedback" => {
                let auth = call.auth()?;
                let req: FeedbackRequest = decode_json(&call.body)?;
                market.provide_feedback(auth, &req).await?;
                Ok((StatusCode::NO_CONTENT, None))
            }
            "get_seller_rating" => {
                let raw = param(call)?;
                let id: u64 = raw
                    .parse()
                    .map_err(|_| MarketError::NotFound(format!("seller {raw:?}")))?;
                ok_json(StatusCode::OK, &market.get_seller_rating(id).await?)
            }
            other => Err(MarketError::NotFound(format!("route {other}"))),
        }
    }
}
