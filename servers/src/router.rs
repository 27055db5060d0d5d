//! A tiny, allocation-light router: route templates with `{param}` segments, matched segment by
//! segment. A path that matches a template under another method is a 405 with an `Allow`
//! header; a path that matches nothing is a 404.

use hyper::Method;

/// One route: a method, a template like `/v1/items/{id}`, and a stable name used in logs and
/// metrics labels.
#[derive(Debug, Clone)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Template; `{...}` segments capture one path segment.
    pub template: &'static str,
    /// The route's name (the API.md client function).
    pub name: &'static str,
}

impl Route {
    /// Shorthand constructor.
    pub const fn new(method: Method, template: &'static str, name: &'static str) -> Self {
        Self {
            method,
            template,
            name,
        }
    }
}

/// The outcome of matching a request against a table.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<'p> {
    /// A route matched; `params` are the captured segments in order.
    Found {
        /// The route's name.
        name: &'static str,
        /// Captured segments.
        params: Vec<&'p str>,
    },
    /// The path exists under other methods.
    MethodNotAllowed {
        /// Methods the path accepts, for the `Allow` header.
        allow: Vec<Method>,
    },
    /// No route has this path.
    NotFound,
}

fn match_template<'p>(template: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut params = Vec::new();
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with('}') => {
                if ps.is_empty() {
                    return None;
                }
                params.push(ps);
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// Matches `method` and `path` against `table`.
pub fn route<'p>(table: &[Route], method: &Method, path: &'p str) -> Matched<'p> {
    let mut allow = Vec::new();
    for r in table {
        if let Some(params) = match_template(r.template, path) {
            if r.method == *method {
                return Matched::Found {
                    name: r.name,
                    params,
                };
            }
            allow.push(r.method.clone());
        }
    }
    if allow.is_empty() {
        Matched::NotFound
    } else {
        Matched::MethodNotAllowed { allow }
    }
}

/// Parses a query string into decoded `(key, value)` pairs (`+` is a space, `%XX` decoded);
/// malformed escapes are an error naming the key.
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let Some(q) = query else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = percent_decode(k).ok_or_else(|| "query".to_string())?;
        let value = percent_decode(v).ok_or_else(|| key.clone())?;
        out.push((key, value));
    }
    Ok(out)
}

/// Decodes `%XX` escapes and `+`; `None` if an escape is malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: [Route; 3] = [
        Route::new(Method::GET, "/v1/items", "search_items"),
        Route::new(Method::GET, "/v1/items/{id}", "get_item"),
        Route::new(
            Method::PUT,
            "/v1/sellers/me/items/{id}/price",
            "change_price",
        ),
    ];

    #[test]
    fn matches_params_and_methods() {
        assert_eq!(
            route(&TABLE, &Method::GET, "/v1/items"),
            Matched::Found {
                name: "search_items",
                params: vec![]
            }
        );
        assert_eq!(
            route(&TABLE, &Method::GET, "/v1/items/3-17"),
            Matched::Found {
                name: "get_item",
                params: vec!["3-17"]
            }
        );
        assert_eq!(
            route(&TABLE, &Method::PUT, "/v1/sellers/me/items/1-2/price"),
            Matched::Found {
                name: "change_price",
                params: vec!["1-2"]
            }
        );
        assert_eq!(
            route(&TABLE, &Method::POST, "/v1/items/3"),
            Matched::MethodNotAllowed {
                allow: vec![Method::GET]
            }
        );
        assert_eq!(route(&TABLE, &Method::GET, "/v1/items/"), Matched::NotFound);
        assert_eq!(
            route(&TABLE, &Method::GET, "/v1/items/3/extra"),
            Matched::NotFound
        );
        assert_eq!(route(&TABLE, &Method::GET, "/nope"), Matched::NotFound);
    }

    #[test]
    fn decodes_queries() {
        let q = query_pairs(Some("category=3&keyword=desk&keyword=L%45D&limit=5&x=a+b"))
            .expect("parse");
        assert_eq!(q[2], ("keyword".to_string(), "LED".to_string()));
        assert_eq!(q[4], ("x".to_string(), "a b".to_string()));
        assert!(query_pairs(Some("keyword=%zz")).is_err());
        assert!(query_pairs(Some("keyword=%")).is_err());
        assert_eq!(query_pairs(None).expect("empty"), vec![]);
    }
}
