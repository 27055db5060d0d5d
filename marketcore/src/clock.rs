//! Time, as the frontend sees it.
//!
//! State machines never read a clock (see `replication::state_machine`); the
//! [`Market`](crate::market::Market) reads a [`Clock`] and puts the time into each command
//! (`at_ms`). Tests use a [`ManualClock`] to make session expiry and reservation expiry exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now, in ms since the epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(now_ms),
        }
    }

    /// Sets the time.
    pub fn set_ms(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `delta_ms`.
    pub fn advance_ms(&self, delta_ms: u64) {
        self.now_ms.fetch_add(delta_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// Formats ms since the epoch as RFC 3339 UTC with second precision, e.g.
/// `"2026-11-27T12:00:00Z"`. Deterministic (safe inside a state machine).
pub fn rfc3339(at_ms: u64) -> String {
    let secs = (at_ms / 1000).min(253_402_300_799) as i64; // 9999-12-31T23:59:59Z
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "1970-01-01T00:00:00Z".into(),
    }
}

/// The (year, month 1-12) of a time in ms since the epoch, UTC.
pub fn year_month(at_ms: u64) -> (i32, u8) {
    let secs = (at_ms / 1000).min(253_402_300_799) as i64;
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => (t.year(), u8::from(t.month())),
        Err(_) => (1970, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_moves() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_780_800_000), "2026-11-27T12:00:00Z");
        assert_eq!(year_month(1_795_780_800_000), (2026, 11));
        let c = ManualClock::new(5);
        c.advance_ms(10);
        assert_eq!(c.now_ms(), 15);
        c.set_ms(1);
        assert_eq!(c.now_ms(), 1);
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
    }
}
