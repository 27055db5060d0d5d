//! What the frontends waited for: every frontend's `/metrics` is read when the mix starts
//! and again when it ends for the time it spent waiting on each kind of database call and on
//! the payment service (`market_db_call_seconds`, `market_payment_call_seconds`: sums and
//! counts since the frontend started), and the report shows the means over the mix next to
//! the client-side times. A purchase, for instance, is one customer-db read, a product-db
//! write (the reservation), one payment and one customer-db write (the record), and then a
//! second product-db write after the answer (the confirmation), so these means say where its
//! time goes without timers of one's own.
//!
//! The means cover the frontends that answered at the end (a killed frontend's calls are
//! lost with it; one that did not answer at the start, or restarted, counts from its start).

use std::time::Duration;

use clients::{ClientConfig, Replicas};
use hyper::Method;
use serde::Serialize;

/// The mean wait of one kind of call, over every frontend that answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Wait {
    /// Calls counted.
    pub calls: u64,
    /// Their mean duration, ms (0 without calls).
    pub mean_ms: f64,
}

/// What the frontends waited for during the mix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FrontendWaits {
    /// Frontends whose `/metrics` answered at the end.
    pub frontends: usize,
    /// Customer-database proposals.
    pub customer_write: Wait,
    /// Customer-database reads.
    pub customer_read: Wait,
    /// Product-database proposals.
    pub product_write: Wait,
    /// Product-database reads.
    pub product_read: Wait,
    /// Payment-service calls.
    pub payment: Wait,
}

/// Sum and count of one series.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Sum {
    seconds: f64,
    count: f64,
}

impl Sum {
    fn wait(self) -> Wait {
        Wait {
            // Counts are whole numbers; the cast drops nothing but a fraction never there.
            calls: self.count.max(0.0) as u64,
            mean_ms: if self.count > 0.0 {
                self.seconds / self.count * 1e3
            } else {
                0.0
            },
        }
    }
}

/// One reading of the frontends: per URL, its five series, if it answered with them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reading(Vec<Option<[Sum; 5]>>);

const SERIES: [&str; 5] = [
    "market_db_call_seconds{db=\"customer-db\",kind=\"propose\"}",
    "market_db_call_seconds{db=\"customer-db\",kind=\"read\"}",
    "market_db_call_seconds{db=\"product-db\",kind=\"propose\"}",
    "market_db_call_seconds{db=\"product-db\",kind=\"read\"}",
    "market_payment_call_seconds",
];

/// The value of `name` + `labels` in a Prometheus text, if present.
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// The five series in one frontend's `/metrics` text, if it holds them all.
fn parse(text: &str) -> Option<[Sum; 5]> {
    let mut sums = [Sum::default(); 5];
    for (sum, series) in sums.iter_mut().zip(SERIES) {
        let (name, labels) = series.split_at(series.find('{').unwrap_or(series.len()));
        sum.seconds = value(text, &format!("{name}_sum"), labels)?;
        sum.count = value(text, &format!("{name}_count"), labels)?;
    }
    Some(sums)
}

/// What the frontends waited for between two readings of the same URLs; `None` if no
/// frontend answered the second.
pub fn between(before: &Reading, after: &Reading) -> Option<FrontendWaits> {
    let mut total = [Sum::default(); 5];
    let mut frontends = 0;
    for (i, end) in after.0.iter().enumerate() {
        let Some(end) = end else { continue };
        // A frontend that did not answer at first, or restarted since (a count fell),
        // counts from its start.
        let start = before
            .0
            .get(i)
            .copied()
            .flatten()
            .filter(|s| s.iter().zip(end).all(|(s, e)| s.count <= e.count))
            .unwrap_or_default();
        for ((t, s), e) in total.iter_mut().zip(start).zip(end) {
            t.seconds += e.seconds - s.seconds;
            t.count += e.count - s.count;
        }
        frontends += 1;
    }
    (frontends > 0).then(|| FrontendWaits {
        frontends,
        customer_write: total[0].wait(),
        customer_read: total[1].wait(),
        product_write: total[2].wait(),
        product_read: total[3].wait(),
        payment: total[4].wait(),
    })
}

/// Reads every frontend's `/metrics` (one attempt each, 2 s at most).
pub async fn read(urls: &[String]) -> Reading {
    let mut reading = Vec::with_capacity(urls.len());
    for url in urls {
        reading.push(read_one(url).await);
    }
    Reading(reading)
}

async fn read_one(url: &str) -> Option<[Sum; 5]> {
    let config = ClientConfig {
        initial_replica: Some(0),
        attempt_timeout: Duration::from_secs(2),
        call_deadline: Duration::from_secs(2),
        rounds_max: 1,
        pool_idle_per_replica_max: 0,
        ..ClientConfig::default()
    };
    let replicas = Replicas::with_config([url], config).ok()?;
    let answer = replicas
        .call(Method::GET, "/metrics", None, None)
        .await
        .ok()?;
    parse(&String::from_utf8_lossy(&answer.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "\
# TYPE market_db_call_seconds summary
market_db_call_seconds_sum{db=\"customer-db\",kind=\"propose\"} 0.5
market_db_call_seconds_count{db=\"customer-db\",kind=\"propose\"} 500
market_db_call_seconds_sum{db=\"customer-db\",kind=\"read\"} 0.3
market_db_call_seconds_count{db=\"customer-db\",kind=\"read\"} 1000
market_db_call_seconds_sum{db=\"product-db\",kind=\"propose\"} 0.9
market_db_call_seconds_count{db=\"product-db\",kind=\"propose\"} 1000
market_db_call_seconds_sum{db=\"product-db\",kind=\"read\"} 0
market_db_call_seconds_count{db=\"product-db\",kind=\"read\"} 0
market_payment_call_seconds_sum 0.03
market_payment_call_seconds_count 100
";

    #[test]
    fn sums_across_frontends_give_means() {
        // A second frontend with three times the calls at the same total time per series.
        let other = ONE
            .replace(" 500\n", " 1500\n")
            .replace(" 1000\n", " 3000\n")
            .replace(" 100\n", " 300\n");
        assert_eq!(parse("http_requests_total{route=\"x\"} 3\n"), None);
        let after = Reading(vec![parse(ONE), parse(&other), None]);
        // Nothing read at first: every frontend counts from its start.
        let w = between(&Reading::default(), &after).expect("two frontends answered");
        assert_eq!(w.frontends, 2);
        assert_eq!(w.customer_write.calls, 2000);
        assert!((w.customer_write.mean_ms - 0.5).abs() < 1e-9);
        assert_eq!(w.customer_read.calls, 4000);
        assert!((w.customer_read.mean_ms - 0.15).abs() < 1e-9);
        assert!((w.product_write.mean_ms - 0.45).abs() < 1e-9);
        assert_eq!(w.product_read, Wait::default());
        assert_eq!(w.payment.calls, 400);
        assert!((w.payment.mean_ms - 0.15).abs() < 1e-9);
        assert_eq!(between(&after, &Reading(vec![None, None, None])), None);
    }

    #[test]
    fn the_mix_is_the_difference_between_two_readings() {
        let before = Reading(vec![parse(ONE), parse(ONE)]);
        // The first frontend made 500 more customer writes taking 1 s in all; the second
        // restarted (its counts fell), so it counts from its start.
        let busier = ONE
            .replace("kind=\"propose\"} 0.5\n", "kind=\"propose\"} 1.5\n")
            .replace("kind=\"propose\"} 500\n", "kind=\"propose\"} 1000\n");
        let restarted = ONE.replace(" 1000\n", " 10\n").replace(" 500\n", " 5\n");
        let after = Reading(vec![parse(&busier), parse(&restarted)]);
        let w = between(&before, &after).expect("both answered");
        assert_eq!(w.customer_write.calls, 500 + 5);
        assert!((w.customer_write.mean_ms - (1.0 + 0.5) / 505.0 * 1e3).abs() < 1e-9);
        // The first frontend's product writes did not change: only the restarted one's count.
        assert_eq!(w.product_write.calls, 10);
    }

    #[test]
    fn a_series_is_matched_by_its_whole_name() {
        assert_eq!(
            value(ONE, "market_payment_call_seconds_sum", ""),
            Some(0.03)
        );
        assert_eq!(value(ONE, "market_payment_call_seconds", ""), None);
        assert_eq!(
            value(
                ONE,
                "market_db_call_seconds_count",
                "{db=\"product-db\",kind=\"read\"}"
            ),
            Some(0.0)
        );
    }
}
