//! Prometheus metrics of an HTTP server: request counts by route and status, and a latency
//! histogram per route, rendered in the Prometheus text exposition format at `GET /metrics`.
//!
//! Routes are a fixed, small set of names (the route templates, never raw paths, so the
//! number of series is bounded), registered up front; recording is a few relaxed atomic
//! increments, cheap enough for the hot path.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Status codes tracked per route; anything else is counted as `other`.
const STATUSES: [u16; 12] = [200, 201, 204, 400, 401, 402, 403, 404, 405, 409, 413, 503];

struct RouteMetrics {
    by_status: [AtomicU64; STATUSES.len() + 1],
    buckets: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl RouteMetrics {
    fn new() -> Self {
        Self {
            by_status: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

/// The metrics registry of one server.
pub struct Metrics {
    server: &'static str,
    routes: BTreeMap<&'static str, RouteMetrics>,
    other: RouteMetrics,
}

impl Metrics {
    /// A registry for `server` (a label value, e.g. `"buyer"`) with the given route names.
    pub fn new(server: &'static str, routes: &[&'static str]) -> Self {
        Self {
            server,
            routes: routes.iter().map(|r| (*r, RouteMetrics::new())).collect(),
            other: RouteMetrics::new(),
        }
    }

    /// Records one request to `route` that ended with `status` after `elapsed`.
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let m = self.routes.get(route).unwrap_or(&self.other);
        let slot = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        m.by_status[slot].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(b) = BUCKETS_S.iter().position(|le| secs <= *le) {
            m.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        m.count.fetch_add(1, Ordering::Relaxed);
        m.sum_us.fetch_add(
            elapsed.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Renders every series in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let _ = writeln!(
            out,
            "# HELP http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE http_requests_total counter");
        let all = self
            .routes
            .iter()
            .map(|(r, m)| (*r, m))
            .chain(std::iter::once(("other", &self.other)));
        for (route, m) in all.clone() {
            for (i, counter) in m.by_status.iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(i)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "other".into());
                let _ = writeln!(
                    out,
                    "http_requests_total{{server=\"{}\",route=\"{route}\",status=\"{status}\"}} {n}",
                    self.server
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP http_request_duration_seconds HTTP request latency by route."
        );
        let _ = writeln!(out, "# TYPE http_request_duration_seconds histogram");
        for (route, m) in all {
            let count = m.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let labels = format!("server=\"{}\",route=\"{route}\"", self.server);
            let mut cumulative = 0;
            for (le, bucket) in BUCKETS_S.iter().zip(&m.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let sum = m.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "http_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::new("buyer", &["search_items", "get_item"]);
        m.record("search_items", 200, Duration::from_micros(300));
        m.record("search_items", 200, Duration::from_millis(3));
        m.record("search_items", 400, Duration::from_micros(50));
        m.record("/unknown/path", 404, Duration::from_micros(10));
        let text = m.render();
        assert!(text.contains(
            "http_requests_total{server=\"buyer\",route=\"search_items\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "http_requests_total{server=\"buyer\",route=\"search_items\",status=\"400\"} 1"
        ));
        assert!(
            text.contains("http_requests_total{server=\"buyer\",route=\"other\",status=\"404\"} 1")
        );
        assert!(text.contains("route=\"search_items\",le=\"0.0001\"} 1"));
        assert!(text.contains("route=\"search_items\",le=\"0.0005\"} 2"));
        assert!(text.contains("route=\"search_items\",le=\"+Inf\"} 3"));
        assert!(
            !text.contains("route=\"get_item\""),
            "series with no requests are omitted"
        );
    }
}
