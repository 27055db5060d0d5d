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
//! responses still queued (at most one linger plus one write, a few milliseconds) is that
//! longer protection for those requests, never an effect.
//!
//! [`RememberResponses`]: marketcore::customer::CustomerCommand::RememberResponses

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use marketcore::customer::{RememberEntry, StoredResponse};
use marketcore::Market;
use tokio::sync::mpsc;

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RememberConfig {
    /// How long the first queued response waits for company.
    pub linger: Duration,
    /// Most responses in one write.
    pub entries_max: usize,
    /// Most body bytes in one write (a single larger response still goes, alone).
    pub bytes_max: usize,
    /// Responses queued beyond this are written one by one instead (backpressure never blocks
    /// a request).
    pub queue_max: usize,
}

impl Default for RememberConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(10),
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
}

impl Remember {
    /// A queue writing through `market`.
    pub fn new(market: Arc<Market>, config: RememberConfig) -> Self {
        Self {
            market,
            config,
            queue: OnceLock::new(),
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
        if let Err(mpsc::error::TrySendError::Full(entry)) = queue.try_send(entry) {
            // The writer is behind: write this one on its own rather than wait or drop it.
            let market = Arc::clone(&self.market);
            tokio::spawn(async move {
                if let Err(e) = market.idempotency_record_many(vec![entry]).await {
                    tracing::warn!(error = %e, "could not remember an idempotent response");
                }
            });
        }
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
