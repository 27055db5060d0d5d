//! The seller server's routes (API.md, "Seller interface").

use async_trait::async_trait;
use hyper::{Method, StatusCode};
use marketcore::api::{CreateAccount, Login, NewItem, PriceChange};
use marketcore::ids::Role;
use marketcore::{Market, MarketError};

use super::{decode_json, ok_json, Api, Call, Outcome};
use crate::router::Route;

/// The seller API.
pub struct SellerApi;

fn param(call: &Call) -> Result<&str, MarketError> {
    call.params
        .first()
        .map(String::as_str)
        .ok_or_else(|| MarketError::NotFound("item".into()))
}

#[async_trait]
impl Api for SellerApi {
    const NAME: &'static str = "seller";
    const ROLE: Role = Role::Seller;

    fn needs_session(route: &str) -> bool {
        !matches!(route, "create_seller" | "login_seller")
    }

    fn routes() -> Vec<Route> {
        vec![
            Route::new(Method::POST, "/v1/sellers", "create_seller"),
            Route::new(Method::POST, "/v1/sellers/sessions", "login_seller"),
            Route::new(
                Method::DELETE,
                "/v1/sellers/sessions/current",
                "logout_seller",
            ),
            Route::new(Method::GET, "/v1/sellers/me/rating", "get_seller_rating"),
            Route::new(Method::POST, "/v1/sellers/me/items", "add_item"),
            Route::new(Method::GET, "/v1/sellers/me/items", "all_items_by_seller"),
            Route::new(
                Method::PUT,
                "/v1/sellers/me/items/{id}/price",
                "change_price",
            ),
            Route::new(Method::DELETE, "/v1/sellers/me/items/{id}", "remove_item"),
        ]
    }

    async fn dispatch(market: &Market, call: &Call) -> Outcome {
        match call.route {
            "create_seller" => {
                let req: CreateAccount = decode_json(&call.body)?;
                ok_json(StatusCode::CREATED, &market.create_seller(&req).await?)
            }
            "login_seller" => {
                let req: Login = decode_json(&call.body)?;
                ok_json(StatusCode::CREATED, &market.login_seller(&req).await?)
            }
            "logout_seller" => {
                market.logout_seller(call.token()?).await?;
                Ok((StatusCode::NO_CONTENT, None))
            }
            "get_seller_rating" => {
                ok_json(StatusCode::OK, &market.get_my_rating(call.auth()?).await?)
            }
            "add_item" => {
                let auth = call.auth()?;
                let req: NewItem = decode_json(&call.body)?;
                ok_json(StatusCode::CREATED, &market.add_item(auth, &req).await?)
            }
            "all_items_by_seller" => ok_json(
                StatusCode::OK,
                &market.all_items_by_seller(call.auth()?).await?,
            ),
            "change_price" => {
                let auth = call.auth()?;
                let req: PriceChange = decode_json(&call.body)?;
                ok_json(
                    StatusCode::OK,
                    &market.change_price(auth, param(call)?, &req).await?,
                )
            }
            "remove_item" => {
                let auth = call.auth()?;
                let quantity = call.query_int("quantity")?;
                ok_json(
                    StatusCode::OK,
                    &market.remove_item(auth, param(call)?, quantity).await?,
                )
            }
            other => Err(MarketError::NotFound(format!("route {other}"))),
        }
    }
}
