//! The OpenAPI 3.1 description of the API, served at `GET /openapi.json` by both servers.
//!
//! Built once from `serde_json::json!` so it stays next to the code that implements the routes;
//! a test checks that every route of the seller and buyer tables appears in it.

use serde_json::{json, Value};

fn problem_responses(codes: &[u16]) -> Value {
    let mut map = serde_json::Map::new();
    for code in codes {
        map.insert(
            code.to_string(),
            json!({"description": "error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
        );
    }
    Value::Object(map)
}

fn op(
    summary: &str,
    ok: u16,
    ok_schema: Option<&str>,
    body: Option<&str>,
    errors: &[u16],
    auth: bool,
) -> Value {
    let mut responses = problem_responses(errors);
    let ok_resp = match ok_schema {
        Some(s) => {
            json!({"description": "success", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}}})
        }
        None => json!({"description": "success, no body"}),
    };
    if let Value::Object(m) = &mut responses {
        m.insert(ok.to_string(), ok_resp);
    }
    let mut o = json!({"summary": summary, "responses": responses});
    if let Some(b) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}}}});
    }
    if auth {
        o["security"] = json!([{"bearer": []}]);
    }
    if body.is_some() || ok == 204 || summary.starts_with("remove") || summary.starts_with("logout")
    {
        o["parameters"] = json!([{"$ref": "#/components/parameters/IdempotencyKey"}]);
    }
    o
}

fn id_param(name: &str, desc: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": desc, "schema": {"type": "string"}})
}

fn with_params(mut o: Value, extra: Vec<Value>) -> Value {
    let mut params = o
        .get("parameters")
        .and_then(|p| p.as_array().cloned())
        .unwrap_or_default();
    params.extend(extra);
    o["parameters"] = Value::Array(params);
    o
}

/// The whole OpenAPI document.
pub fn document() -> Value {
    let string = |min: u32, max: u32| json!({"type": "string", "minLength": min, "maxLength": max});
    let int = |min: i64, max: i64| json!({"type": "integer", "minimum": min, "maximum": max});
    let quantity_param =
        json!({"name": "quantity", "in": "query", "required": false, "schema": int(1, 1_000_000)});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Replicated marketplace API",
            "version": "1.0.0",
            "description": "Seller and buyer interfaces of the marketplace. Errors are RFC 9457 problem documents. Every mutating request accepts an Idempotency-Key header: a retry with the same key by the same user within 10 minutes returns the original status and body without executing again, on any replica."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "The token returned at login; role-scoped (seller or buyer); ends at logout or after 300 s idle."}},
            "parameters": {"IdempotencyKey": {"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[!-~]+$"}}},
            "schemas": {
                "Problem": {"type": "object", "required": ["type", "title", "status", "code", "detail"], "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "code": {"enum": ["invalid_argument", "unauthenticated", "payment_declined", "forbidden", "not_found", "method_not_allowed", "username_taken", "insufficient_quantity", "cart_empty", "not_purchased", "feedback_exists", "payload_too_large", "unavailable"]},
                    "detail": {"type": "string"}}},
                "CreateAccount": {"type": "object", "additionalProperties": false, "required": ["name", "username", "password"], "properties": {
                    "name": string(1, 32), "username": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,32}$"}, "password": string(8, 128)}},
                "Login": {"type": "object", "additionalProperties": false, "required": ["username", "password"], "properties": {"username": {"type": "string"}, "password": {"type": "string"}}},
                "SellerCreated": {"type": "object", "properties": {"seller_id": {"type": "integer"}}},
                "BuyerCreated": {"type": "object", "properties": {"buyer_id": {"type": "integer"}}},
                "SellerSession": {"type": "object", "properties": {"token": {"type": "string"}, "seller_id": {"type": "integer"}}},
                "BuyerSession": {"type": "object", "properties": {"token": {"type": "string"}, "buyer_id": {"type": "integer"}}},
                "Feedback": {"type": "object", "properties": {"up": {"type": "integer"}, "down": {"type": "integer"}}},
                "Item": {"type": "object", "properties": {
                    "id": {"type": "string", "pattern": "^[0-9]-[0-9]+$"}, "name": {"type": "string"}, "category": int(0, 9),
                    "keywords": {"type": "array", "items": {"type": "string"}}, "condition": {"enum": ["new", "used"]},
                    "price_cents": {"type": "integer"}, "quantity": {"type": "integer"}, "seller_id": {"type": "integer"},
                    "feedback": {"$ref": "#/components/schemas/Feedback"}}},
                "Items": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}},
                "NewItem": {"type": "object", "additionalProperties": false, "required": ["name", "category", "condition", "price_cents", "quantity"], "properties": {
                    "name": string(1, 32), "category": int(0, 9),
                    "keywords": {"type": "array", "maxItems": 5, "items": {"type": "string", "pattern": "^[A-Za-z0-9]{1,8}$"}},
                    "condition": {"enum": ["new", "used"]}, "price_cents": int(1, 1_000_000_000), "quantity": int(1, 1_000_000)}},
                "PriceChange": {"type": "object", "additionalProperties": false, "required": ["price_cents"], "properties": {"price_cents": int(1, 1_000_000_000)}},
                "Rating": {"type": "object", "properties": {"seller_id": {"type": "integer"}, "up": {"type": "integer"}, "down": {"type": "integer"}}},
                "CartLine": {"type": "object", "properties": {"item_id": {"type": "string"}, "quantity": {"type": "integer"}}},
                "Cart": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/CartLine"}}, "saved": {"type": "boolean"}}},
                "AddToCart": {"type": "object", "additionalProperties": false, "required": ["item_id", "quantity"], "properties": {"item_id": {"type": "string"}, "quantity": int(1, 1_000_000)}},
                "Card": {"type": "object", "additionalProperties": false, "required": ["name", "number", "expiry", "cvv"], "properties": {
                    "name": string(1, 64), "number": {"type": "string", "pattern": "^[0-9]{12,19}$"},
                    "expiry": {"type": "string", "pattern": "^(0[1-9]|1[0-2])/[0-9]{2}$"}, "cvv": {"type": "string", "pattern": "^[0-9]{3,4}$"}}},
                "PurchaseRequest": {"type": "object", "additionalProperties": false, "required": ["card"], "properties": {"card": {"$ref": "#/components/schemas/Card"}}},
                "PurchaseLine": {"type": "object", "properties": {"item_id": {"type": "string"}, "name": {"type": "string"}, "seller_id": {"type": "integer"}, "quantity": {"type": "integer"}, "price_cents": {"type": "integer"}}},
                "Purchase": {"type": "object", "properties": {"purchase_id": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"}, "total_cents": {"type": "integer"}, "lines": {"type": "array", "items": {"$ref": "#/components/schemas/PurchaseLine"}}}},
                "Purchases": {"type": "object", "properties": {"purchases": {"type": "array", "items": {"$ref": "#/components/schemas/Purchase"}}}},
                "FeedbackRequest": {"type": "object", "additionalProperties": false, "required": ["item_id", "vote"], "properties": {"item_id": {"type": "string"}, "vote": {"enum": ["up", "down"]}}}
            }
        },
        "paths": {
            "/v1/sellers": {"post": op("create_seller", 201, Some("SellerCreated"), Some("CreateAccount"), &[400, 409, 413, 503], false)},
            "/v1/sellers/sessions": {"post": op("login_seller", 201, Some("SellerSession"), Some("Login"), &[400, 401, 413, 503], false)},
            "/v1/sellers/sessions/current": {"delete": op("logout_seller", 204, None, None, &[401, 503], true)},
            "/v1/sellers/me/rating": {"get": op("get_seller_rating (own)", 200, Some("Rating"), None, &[401, 503], true)},
            "/v1/sellers/me/items": {
                "post": op("add_item", 201, Some("Item"), Some("NewItem"), &[400, 401, 413, 503], true),
                "get": op("all_items_by_seller", 200, Some("Items"), None, &[401, 503], true)},
            "/v1/sellers/me/items/{id}/price": {"put": with_params(op("change_price", 200, Some("Item"), Some("PriceChange"), &[400, 401, 403, 404, 413, 503], true), vec![id_param("id", "item id <category>-<serial>")])},
            "/v1/sellers/me/items/{id}": {"delete": with_params(op("remove_item", 200, Some("Item"), None, &[400, 401, 403, 404, 409, 503], true), vec![id_param("id", "item id"), quantity_param.clone()])},
            "/v1/buyers": {"post": op("create_buyer", 201, Some("BuyerCreated"), Some("CreateAccount"), &[400, 409, 413, 503], false)},
            "/v1/buyers/sessions": {"post": op("login_buyer", 201, Some("BuyerSession"), Some("Login"), &[400, 401, 413, 503], false)},
            "/v1/buyers/sessions/current": {"delete": op("logout_buyer", 204, None, None, &[401, 503], true)},
            "/v1/items": {"get": with_params(op("search_items", 200, Some("Items"), None, &[400, 503], false), vec![
                json!({"name": "category", "in": "query", "schema": int(0, 9)}),
                json!({"name": "keyword", "in": "query", "style": "form", "explode": true, "schema": {"type": "array", "maxItems": 5, "items": {"type": "string"}}}),
                json!({"name": "limit", "in": "query", "schema": int(1, 500)})])},
            "/v1/items/{id}": {"get": with_params(op("get_item", 200, Some("Item"), None, &[400, 404, 503], false), vec![id_param("id", "item id")])},
            "/v1/buyers/me/cart": {
                "get": op("display_cart", 200, Some("Cart"), None, &[401, 503], true),
                "delete": op("clear_cart", 204, None, None, &[401, 503], true)},
            "/v1/buyers/me/cart/items": {"post": op("add_to_cart", 200, Some("Cart"), Some("AddToCart"), &[400, 401, 404, 409, 413, 503], true)},
            "/v1/buyers/me/cart/items/{id}": {"delete": with_params(op("remove_cart", 200, Some("Cart"), None, &[400, 401, 404, 503], true), vec![id_param("id", "item id"), quantity_param])},
            "/v1/buyers/me/cart/save": {"post": op("save_cart", 204, None, None, &[401, 503], true)},
            "/v1/buyers/me/purchases": {
                "post": op("make_purchase", 201, Some("Purchase"), Some("PurchaseRequest"), &[400, 401, 402, 409, 413, 503], true),
                "get": op("get_purchase_history", 200, Some("Purchases"), None, &[401, 503], true)},
            "/v1/buyers/me/feedback": {"post": op("provide_feedback", 204, None, Some("FeedbackRequest"), &[400, 401, 404, 409, 413, 503], true)},
            "/v1/sellers/{seller_id}/rating": {"get": with_params(op("get_seller_rating", 200, Some("Rating"), None, &[400, 404, 503], false), vec![id_param("seller_id", "seller id")])},
            "/healthz": {"get": {"summary": "200 when the databases are reachable, else 503", "responses": {"200": {"description": "healthy"}, "503": {"description": "a database is unreachable"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        }
    })
}
