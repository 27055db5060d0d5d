//! Exactly-once effects for retried requests (the Raft dissertation's client sessions, §6.3).
//!
//! [`Deduped`] wraps a [`StateMachine`] and applies [`Envelope`]s. It remembers, per client,
//! the outcomes of that client's recent requests. A duplicate request id is answered with the
//! remembered outcome and not applied again. Everything here is deterministic: the table is
//! part of the replicated state, is included in snapshots, and is trimmed by rules that depend
//! only on the applied commands (never on time or local configuration).
//!
//! Trimming: per client, outcomes are kept for the `window` highest sequence numbers seen; a
//! request older than that window whose outcome is gone is refused with
//! [`Applied::Expired`] rather than applied twice. At most `clients_max` clients are
//! remembered; the least recently active is forgotten first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::log::{Envelope, RequestId};
use crate::state_machine::{Payload, SnapshotError, StateMachine};

/// Default number of recent outcomes remembered per client.
pub const WINDOW_DEFAULT: u64 = 4096;
/// Default number of clients remembered. Frontends are few, but a retried HTTP request
/// carries a client id derived from its idempotency key (see `marketcore::with_idempotency_key`),
/// so this bounds how many recent keyed requests stay deduplicated.
pub const CLIENTS_MAX_DEFAULT: usize = 16_384;

/// The result of applying an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied<O> {
    /// Applied now, or a duplicate answered with the first outcome.
    Output(O),
    /// A duplicate too old for its outcome to be remembered: not applied again.
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "O: Payload")]
struct ClientSession<O> {
    last_active: u64,
    seq_max: u64,
    /// `(seq, outcome)` in seq order. Most sessions hold one outcome (a keyed HTTP request is
    /// a client of its own), where a B-tree took a whole leaf node (eleven outcomes' room,
    /// over a kilobyte, times 16,384 sessions per replica); a frontend's own session adds at
    /// the back and trims at the front. postcard writes this exactly as the map it replaced
    /// (a length, then the pairs), so older snapshots restore.
    outcomes: VecDeque<(u64, O)>,
}

impl<O> ClientSession<O> {
    fn outcome(&self, seq: u64) -> Option<&O> {
        self.outcomes
            .binary_search_by_key(&seq, |(s, _)| *s)
            .ok()
            .and_then(|i| self.outcomes.get(i))
            .map(|(_, o)| o)
    }

    /// Keeps `output` for `seq` (not kept yet: a duplicate is answered before applying).
    fn keep(&mut self, seq: u64, output: O) {
        match self.outcomes.back() {
            Some(&(last, _)) if last >= seq => {
                if let Err(i) = self.outcomes.binary_search_by_key(&seq, |(s, _)| *s) {
                    self.outcomes.insert(i, (seq, output));
                }
            }
            _ => self.outcomes.push_back((seq, output)),
        }
    }
}

/// A state machine wrapped with a deterministic duplicate-request table.
#[derive(Debug)]
pub struct Deduped<S: StateMachine> {
    inner: S,
    sessions: BTreeMap<u64, ClientSession<S::Output>>,
    /// `(last_active, client)` of every session: the least recently active is first.
    by_activity: BTreeSet<(u64, u64)>,
    applied_count: u64,
    window: u64,
    clients_max: usize,
}

/// A snapshot as restored. The wrapped state's bytes are written as one byte string
/// (`serde_bytes`): postcard encodes that exactly as it encodes a sequence of `u8`, but
/// without a serializer call per byte.
#[derive(Deserialize)]
#[serde(bound = "O: Payload")]
struct DedupSnapshot<O> {
    #[serde(with = "serde_bytes")]
    inner: Vec<u8>,
    sessions: BTreeMap<u64, ClientSession<O>>,
    applied_count: u64,
}

/// [`DedupSnapshot`] as written: borrows the duplicate table instead of cloning it (a clone
/// of every session's outcomes cost more than serializing them).
#[derive(Serialize)]
#[serde(bound = "O: Payload")]
struct DedupSnapshotRef<'a, O> {
    #[serde(with = "serde_bytes")]
    inner: Vec<u8>,
    sessions: &'a BTreeMap<u64, ClientSession<O>>,
    applied_count: u64,
}

impl<S: StateMachine> Deduped<S> {
    /// Wraps `inner` with the default limits.
    pub fn new(inner: S) -> Self {
        Self::with_limits(inner, WINDOW_DEFAULT, CLIENTS_MAX_DEFAULT)
    }

    /// Wraps `inner` with explicit limits (every replica must use the same ones).
    pub fn with_limits(inner: S, window: u64, clients_max: usize) -> Self {
        Self {
            inner,
            sessions: BTreeMap::new(),
            by_activity: BTreeSet::new(),
            applied_count: 0,
            window: window.max(1),
            clients_max: clients_max.max(1),
        }
    }

    /// The wrapped state machine.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Number of envelopes applied (duplicates included).
    pub fn applied_count(&self) -> u64 {
        self.applied_count
    }

    /// Applies an envelope exactly once per request id.
    pub fn apply(&mut self, envelope: Envelope<S::Command>) -> Applied<S::Output> {
        self.applied_count += 1;
        let RequestId { client, seq } = envelope.id;
        let now = self.applied_count;
        if let Some(session) = self.sessions.get_mut(&client) {
            self.by_activity.remove(&(session.last_active, client));
            self.by_activity.insert((now, client));
            session.last_active = now;
            if let Some(out) = session.outcome(seq) {
                return Applied::Output(out.clone());
            }
            if seq.saturating_add(self.window) <= session.seq_max {
                return Applied::Expired;
            }
        }
        let output = self.inner.apply(envelope.command);
        self.remember(client, seq, now, output.clone());
        Applied::Output(output)
    }

    fn remember(&mut self, client: u64, seq: u64, now: u64, output: S::Output) {
        if !self.sessions.contains_key(&client) {
            // The least recently active session is the first of the activity index: O(log n),
            // where a scan of every session made each new client cost O(clients_max).
            if self.sessions.len() >= self.clients_max {
                if let Some((_, oldest)) = self.by_activity.pop_first() {
                    self.sessions.remove(&oldest);
                }
            }
            self.by_activity.insert((now, client));
        }
        let window = self.window;
        let session = self
            .sessions
            .entry(client)
            .or_insert_with(|| ClientSession {
                last_active: now,
                seq_max: 0,
                outcomes: VecDeque::with_capacity(1),
            });
        session.seq_max = session.seq_max.max(seq);
        session.keep(seq, output);
        let floor = session.seq_max.saturating_sub(window);
        while session
            .outcomes
            .front()
            .is_some_and(|&(lowest, _)| lowest <= floor)
        {
            session.outcomes.pop_front();
        }
    }

    /// Answers a query from the wrapped state machine.
    pub fn query(&self, query: &S::Query) -> S::Answer {
        self.inner.query(query)
    }

    /// Serializes the wrapped state and the duplicate table.
    pub fn snapshot(&self) -> Vec<u8> {
        let snap = DedupSnapshotRef {
            inner: self.inner.snapshot(),
            sessions: &self.sessions,
            applied_count: self.applied_count,
        };
        postcard::to_stdvec(&snap).unwrap_or_default()
    }

    /// Restores from [`Deduped::snapshot`] output.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let snap: DedupSnapshot<S::Output> =
            postcard::from_bytes(bytes).map_err(|e| SnapshotError(e.to_string()))?;
        self.inner.restore(&snap.inner)?;
        self.by_activity = snap
            .sessions
            .iter()
            .map(|(client, s)| (s.last_active, *client))
            .collect();
        self.sessions = snap.sessions;
        self.applied_count = snap.applied_count;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{TestCommand, TestMachine};

    fn env(client: u64, seq: u64) -> Envelope<TestCommand> {
        Envelope {
            id: RequestId { client, seq },
            command: TestCommand::Incr,
        }
    }

    #[test]
    fn duplicates_get_the_first_outcome_and_old_ones_expire() {
        let mut d = Deduped::with_limits(TestMachine::default(), 4, 8);
        assert_eq!(d.apply(env(1, 1)), Applied::Output(1));
        assert_eq!(d.apply(env(1, 1)), Applied::Output(1));
        for seq in 2..=10 {
            d.apply(env(1, seq));
        }
        assert_eq!(
            d.apply(env(1, 1)),
            Applied::Expired,
            "outside the window: refused, not applied again"
        );
        assert_eq!(d.apply(env(1, 10)), Applied::Output(10));
    }

    #[test]
    fn eviction_follows_a_naive_least_recently_active_model() {
        // A seeded random mix of new and returning clients against a model that scans every
        // remembered client for the least recently active (what the activity index replaces).
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut d = Deduped::with_limits(TestMachine::default(), 4, 8);
        let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // client -> last active
        for step in 1..=2_000u64 {
            let client = rng.gen_range(0..40);
            d.apply(env(client, step));
            if !model.contains_key(&client) && model.len() >= 8 {
                let (&oldest, _) = model
                    .iter()
                    .min_by_key(|(id, last)| (**last, **id))
                    .expect("full");
                model.remove(&oldest);
            }
            model.insert(client, step);
            let remembered: Vec<u64> = d.sessions.keys().copied().collect();
            assert_eq!(
                remembered,
                model.keys().copied().collect::<Vec<_>>(),
                "step {step}"
            );
            assert_eq!(
                d.by_activity.len(),
                d.sessions.len(),
                "index covers every session"
            );
        }
    }

    #[test]
    fn the_least_recently_active_client_is_forgotten_first() {
        let mut d = Deduped::with_limits(TestMachine::default(), 16, 2);
        d.apply(env(1, 1)); // counter 1
        d.apply(env(2, 1)); // counter 2
        d.apply(env(1, 1)); // duplicate: client 1 is now the most recently active
        d.apply(env(3, 1)); // counter 3; evicts client 2
        assert_eq!(
            d.apply(env(1, 1)),
            Applied::Output(1),
            "client 1 is still remembered"
        );
        assert_eq!(
            d.apply(env(2, 1)),
            Applied::Output(4),
            "client 2 was forgotten, so it applies again"
        );
        let snap = d.snapshot();
        let mut restored = Deduped::with_limits(TestMachine::default(), 16, 2);
        restored.restore(&snap).expect("restore");
        assert_eq!(restored.snapshot(), snap);
        // The activity index is rebuilt on restore: the same client is evicted next on both.
        assert_eq!(d.apply(env(9, 1)), restored.apply(env(9, 1)));
        assert_eq!(d.snapshot(), restored.snapshot());
    }

    #[test]
    fn snapshots_keep_the_encoding_of_a_plain_byte_vector_and_an_owned_table() {
        // Data directories written before the byte-string encoding and the outcome lists must
        // still restore: the snapshot has to be byte for byte what the plain derive of the
        // owned form with a map of outcomes wrote.
        #[derive(Serialize)]
        struct OldSession {
            last_active: u64,
            seq_max: u64,
            outcomes: BTreeMap<u64, u64>,
        }
        #[derive(Serialize)]
        struct Plain {
            inner: Vec<u8>,
            sessions: BTreeMap<u64, OldSession>,
            applied_count: u64,
        }
        let mut d = Deduped::with_limits(TestMachine::default(), 4, 8);
        // Client 1 out of order (3 before 2) and a duplicate; client 4 past its window.
        for (client, seq) in [(1, 1), (2, 1), (1, 3), (1, 2), (3, 7), (1, 1)]
            .into_iter()
            .chain((1..=7).map(|seq| (4, seq)))
        {
            d.apply(env(client, seq));
        }
        let plain = Plain {
            inner: d.inner.snapshot(),
            sessions: d
                .sessions
                .iter()
                .map(|(c, s)| {
                    (
                        *c,
                        OldSession {
                            last_active: s.last_active,
                            seq_max: s.seq_max,
                            outcomes: s.outcomes.iter().copied().collect(),
                        },
                    )
                })
                .collect(),
            applied_count: d.applied_count,
        };
        assert!(!plain.inner.is_empty() && plain.sessions.len() == 4);
        assert_eq!(
            plain.sessions[&1]
                .outcomes
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(
            plain.sessions[&4]
                .outcomes
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![4, 5, 6, 7],
            "the window keeps the 4 highest"
        );
        assert_eq!(d.snapshot(), postcard::to_stdvec(&plain).expect("encode"));
        let mut restored = Deduped::with_limits(TestMachine::default(), 4, 8);
        restored
            .restore(&postcard::to_stdvec(&plain).expect("encode"))
            .expect("an old-style snapshot restores");
        assert_eq!(restored.snapshot(), d.snapshot());
        // The restored table answers duplicates as the original does.
        for (client, seq) in [(1, 2), (1, 3), (4, 5), (4, 1), (3, 7)] {
            assert_eq!(restored.apply(env(client, seq)), d.apply(env(client, seq)));
        }
    }
}
