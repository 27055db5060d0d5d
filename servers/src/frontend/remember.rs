//! Remembering the responses of idempotent requests off the response path, in batches.
//!
//! Every answered request that carried an `Idempotency-Key` is remembered in the customer
//! database (see the [frontend docs](super)). One replicated write per response would make
//! that bookkeeping cost as much as the requests themselves, so a server queues the responses
//! and one task writes them as one [`RememberResponses`] command per batch: it waits up to
//! [`RememberConfig::linger`] after the first queued response for more, and while a batch is
//! being written the next one fills up. The batch is bounded by entries and bytes.
//!
//! Why a short delay is safe: until a response is remembered, a retry of its request runs
//! again with the same key-derived request ids, and the logs' duplicate tables answer it with
//! the first outcome (they remember the last 16,384 keyed requests). The remembered copy only
//! matters for retries that come later than that. What is lost if the server dies with
//! responses still queued (at most one linger plus one write, some 50 ms) is that
//! longer protection for those requests, never an effect.
//!
//! [`RememberResponses`]: marketcore::customer::CustomerCommand::RememberResponses

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use marketcore::customer::{RememberEntry, StoredResponse};
use marketcore::Market;
use tokio::sync::mpsc;

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RememberConfig {
    /// How long the first queued response waits for company (default 50 ms: at 100+100
    /// about 9% more calls per second than 10 ms, since fewer, larger batches are
    /// replicated; the duplicate tables cover a retry for seconds meanwhile).
    pub linger: Duration,
    /// Most responses in one write.
    pub entries_max: usize,
    /// Most body bytes in one write (a single larger response still goes, alone).
    pub bytes_max: usize,
    /// Responses queued beyond this are not remembered (counted and logged): the queue is
    /// bounded and never blocks a request. It only fills when the customer database has
    /// been unreachable for a while, and then those requests keep the shorter protection of
    /// the duplicate tables.
    pub queue_max: usize,
}

impl Default for RememberConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(50),
            entries_max: 512,
            bytes_max: 256 * 1024,
            queue_max: 65_536,
        }
    }
}

/// The queue of responses to remember, and the task that writes them (started on first use,
/// inside the server's runtime).
pub struct Remember {
    market: Arc<Market>,
    config: RememberConfig,
    queue: OnceLock<mpsc::Sender<RememberEntry>>,
    dropped: AtomicU64,
}

impl Remember {
    /// A queue writing through `market`.
    pub fn new(market: Arc<Market>, config: RememberConfig) -> Self {
        Self {
            market,
            config,
            queue: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a response to remember for `(scope, key)`. Must be called inside a tokio runtime.
    pub fn push(&self, scope: String, key: String, status: u16, body: Vec<u8>) {
        let entry = RememberEntry {
            scope,
            key,
            response: StoredResponse { status, body },
        };
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.config.queue_max.max(1));
            tokio::spawn(writer(Arc::clone(&self.market), self.config, rx));
            tx
        });
        if queue.try_send(entry).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "response queue full: idempotent responses not remembered"
                );
            }
        }
    }

    /// Responses not remembered because the queue was full, since the server started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Writes queued responses in batches until every sender is gone.
async fn writer(
    market: Arc<Market>,
    config: RememberConfig,
    mut rx: mpsc::Receiver<RememberEntry>,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.response.body.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.entries_max.max(1) && bytes < config.bytes_max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(entry)) => {
                    bytes += entry.response.body.len();
                    batch.push(entry);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len();
        if let Err(e) = market.idempotency_record_many(batch).await {
            tracing::warn!(error = %e, responses = n, "could not remember idempotent responses");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marketcore::payment::AlwaysApprove;
    use marketcore::{EmbeddedMarket, EmbeddedOptions};
    use replication::ReplicatedLog;

    fn embedded() -> EmbeddedMarket {
        EmbeddedMarket::in_memory(EmbeddedOptions::for_tests(Arc::new(
            AlwaysApprove::default(),
        )))
    }

    #[tokio::test]
    async fn many_responses_take_few_writes() {
        let db = embedded();
        let remember = Remember::new(Arc::clone(db.market()), RememberConfig::default());
        let before = db.customer_log().status().applied_index;
        for i in 0..100 {
            remember.push("t:1".into(), format!("k{i}"), 201, b"{}".to_vec());
        }
        // Bounded wait until the last one is remembered.
        let mut found = None;
        for _ in 0..200 {
            found = db
                .market()
                .idempotency_lookup("t:1", "k99")
                .await
                .expect("lookup");
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(found.map(|r| r.status), Some(201));
        for i in 0..100 {
            let r = db
                .market()
                .idempotency_lookup("t:1", &format!("k{i}"))
                .await
                .expect("lookup");
            assert!(r.is_some(), "k{i} remembered");
        }
        let writes = db.customer_log().status().applied_index - before;
        assert!(writes < 10, "100 responses took {writes} writes");
        assert_eq!(remember.dropped(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let db = embedded();
        let config = RememberConfig {
            queue_max: 1,
            ..RememberConfig::default()
        };
        let remember = Remember::new(Arc::clone(db.market()), config);
        // On this single-threaded runtime the writer cannot run before the next await, so
        // the first response fills the queue and the other nine find it full.
        for i in 0..10 {
            remember.push("t:1".into(), format!("k{i}"), 204, Vec::new());
        }
        assert_eq!(remember.dropped(), 9);
    }
}
