//! A deterministic simulated network for tests.
//!
//! Two layers:
//!
//! * [`SimNet`]: a sans-IO core in **virtual time** (microseconds). Protocol tests written as
//!   sans-IO state machines drive it from a single thread: [`SimNet::send`] schedules the
//!   delivery of a payload, [`SimNet::next_delivery`] pops the earliest one and advances the
//!   clock to it. Nothing reads the wall clock or a global random source: the same seed and
//!   the same sequence of calls produce the same deliveries, which [`SimNet::trace`] records.
//! * [`SimHub`] and [`SimNetwork`]: an adapter implementing [`Network`] for in-process tokio
//!   tests. A driver task maps virtual time to elapsed real time and hands deliveries to
//!   each node's [`Network::recv`]; one-way messages, RPC requests and RPC responses all go
//!   through the same fault model (a lost request or response makes the caller see
//!   [`TransportError::Timeout`]). Because tokio scheduling is real, runs of the adapter are
//!   *not* bit-for-bit reproducible; use [`SimNet`] directly for that.
//!
//! # Fault model
//!
//! Every directed link `(from, to)` has a [`LinkConfig`] (a default for all links, overridable
//! per link with [`SimNet::set_link`]). For each message sent:
//!
//! 1. dropped if the sender or the receiver is crashed, or the link is blocked;
//! 2. dropped with probability `loss`;
//! 3. delivered after a delay drawn uniformly from `delay_us_min..=delay_us_max`;
//!    **reordering** comes from this jitter (two messages on a link swap when the second
//!    draws the shorter delay; a zero-width range keeps per-link FIFO order);
//! 4. with probability `duplicate`, a second copy is scheduled with its own delay.
//!
//! At delivery time the checks of step 1 are made again, so a partition or crash also
//! drops traffic already in flight. Controls: [`SimNet::block`] (one direction),
//! [`SimNet::partition`] (both directions between two sets), [`SimNet::heal`] (remove every
//! block), [`SimNet::crash`] (drops the node's in-flight traffic and everything it sends or
//! is sent until [`SimNet::restart`]). Deliveries at the same virtual time come out in the
//! order they were scheduled (a sequence number breaks ties), so order is deterministic.
//!
//! # Seeds
//!
//! [`seeds_from_env`] chooses which seeds a test runs (`SIM_SEED=1234` replays one,
//! `SIM_SEEDS=200` runs 200), and [`SeedGuard`] prints the seed if the test panics, so a
//! failure is always reproducible:
//!
//! ```
//! use transport::sim::{seeds_from_env, SeedGuard, SimNet};
//! for seed in seeds_from_env("SIM_SEEDS", 10) {
//!     let _guard = SeedGuard::new(seed);
//!     let mut net: SimNet<u32> = SimNet::new(seed);
//!     net.send(1, 2, 7);
//!     assert_eq!(net.next_delivery().map(|d| d.payload), Some(7));
//! }
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::network::{Incoming, Network, NodeId, Responder, TransportError};

/// Behaviour of one directed link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Probability in `[0, 1]` that a message is lost.
    pub loss: f64,
    /// Probability in `[0, 1]` that a message is delivered twice.
    pub duplicate: f64,
    /// Smallest delivery delay, microseconds.
    pub delay_us_min: u64,
    /// Largest delivery delay, microseconds (inclusive).
    pub delay_us_max: u64,
}

impl Default for LinkConfig {
    /// No loss, no duplication, delay 100..=1000 µs (so some reordering).
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            delay_us_min: 100,
            delay_us_max: 1000,
        }
    }
}

impl LinkConfig {
    /// A perfect FIFO link with a fixed delay.
    pub fn fixed(delay_us: u64) -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            delay_us_min: delay_us,
            delay_us_max: delay_us,
        }
    }

    /// A hostile link: the given loss and duplication, delay 0..=`delay_us_max` (reorders).
    pub fn faulty(loss: f64, duplicate: f64, delay_us_max: u64) -> Self {
        Self {
            loss,
            duplicate,
            delay_us_min: 0,
            delay_us_max,
        }
    }
}

/// One delivery: `payload` sent by `from` arrives at `to` at virtual time `time_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<P> {
    /// Virtual time of the delivery, microseconds since the start.
    pub time_us: u64,
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// What was sent.
    pub payload: P,
}

impl<P> From<Delivery<P>> for (u64, NodeId, NodeId, P) {
    /// `(time_us, from, to, payload)`.
    fn from(d: Delivery<P>) -> Self {
        (d.time_us, d.from, d.to, d.payload)
    }
}

/// Counters of what a [`SimNet`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Calls to `send`.
    pub sent: u64,
    /// Deliveries popped.
    pub delivered: u64,
    /// Extra copies scheduled by duplication.
    pub duplicated: u64,
    /// Messages lost to the `loss` probability.
    pub dropped_loss: u64,
    /// Messages dropped by a block or partition.
    pub dropped_partition: u64,
    /// Messages dropped because an endpoint was crashed.
    pub dropped_crash: u64,
    /// Messages dropped because `in_flight_max` was reached.
    pub dropped_overflow: u64,
}

struct Scheduled<P> {
    time_us: u64,
    seq: u64,
    from: NodeId,
    to: NodeId,
    payload: P,
}

impl<P> PartialEq for Scheduled<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.time_us, self.seq) == (other.time_us, other.seq)
    }
}
impl<P> Eq for Scheduled<P> {}
impl<P> PartialOrd for Scheduled<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P> Ord for Scheduled<P> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest `(time_us, seq)` first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time_us, other.seq).cmp(&(self.time_us, self.seq))
    }
}

/// The sans-IO simulated network (see the [module docs](self)). `P` is the payload type:
/// [`Bytes`] by default, or a protocol's own message type (it must be `Clone` for duplication).
pub struct SimNet<P = Bytes> {
    seed: u64,
    rng: ChaCha8Rng,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled<P>>,
    default_link: LinkConfig,
    links: BTreeMap<(NodeId, NodeId), LinkConfig>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    crashed: BTreeSet<NodeId>,
    trace: Vec<Delivery<P>>,
    trace_enabled: bool,
    in_flight_max: usize,
    stats: SimStats,
}

impl<P> std::fmt::Debug for SimNet<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet")
            .field("seed", &self.seed)
            .field("now_us", &self.now_us)
            .field("in_flight", &self.queue.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<P: Clone> SimNet<P> {
    /// A network with the default [`LinkConfig`] on every link, seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_link(seed, LinkConfig::default())
    }

    /// A network with `link` as the default configuration of every link.
    pub fn with_link(seed: u64, link: LinkConfig) -> Self {
        Self {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            default_link: link,
            links: BTreeMap::new(),
            blocked: BTreeSet::new(),
            crashed: BTreeSet::new(),
            trace: Vec::new(),
            trace_enabled: true,
            in_flight_max: 1_000_000,
            stats: SimStats::default(),
        }
    }

    /// The seed this network was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Current virtual time, microseconds.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// The network's random source, for tests that want more seeded choices (which node to
    /// crash, when) from the same seed.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Sets the configuration of every link without its own.
    pub fn set_default_link(&mut self, link: LinkConfig) {
        self.default_link = link;
    }

    /// Sets the configuration of the directed link `from -> to`.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, link: LinkConfig) {
        self.links.insert((from, to), link);
    }

    /// Limits the number of messages in flight (default 1,000,000); beyond it sends are dropped.
    pub fn set_in_flight_max(&mut self, n: usize) {
        self.in_flight_max = n;
    }

    /// Turns recording of the delivery trace on or off (on by default).
    pub fn set_trace(&mut self, enabled: bool) {
        self.trace_enabled = enabled;
    }

    /// Blocks the directed link `from -> to` (a one-way partition).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Unblocks the directed link `from -> to`.
    pub fn unblock(&mut self, from: NodeId, to: NodeId) {
        self.blocked.remove(&(from, to));
    }

    /// Blocks both directions between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                self.blocked.insert((y, x));
            }
        }
    }

    /// Removes every block and partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether `from -> to` is blocked.
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Crashes `id`: its in-flight traffic (both directions) is dropped, and so is everything
    /// it sends or is sent until [`SimNet::restart`].
    pub fn crash(&mut self, id: NodeId) {
        self.crashed.insert(id);
        let before = self.queue.len();
        self.queue.retain(|m| m.from != id && m.to != id);
        self.stats.dropped_crash += (before - self.queue.len()) as u64;
    }

    /// Brings a crashed node back (with no traffic in flight).
    pub fn restart(&mut self, id: NodeId) {
        self.crashed.remove(&id);
    }

    /// Whether `id` is crashed.
    pub fn is_crashed(&self, id: NodeId) -> bool {
        self.crashed.contains(&id)
    }

    fn link(&self, from: NodeId, to: NodeId) -> LinkConfig {
        self.links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_link)
    }

    /// Why a message on `from -> to` would be dropped now, if it would.
    fn check_path(&mut self, from: NodeId, to: NodeId) -> bool {
        if self.crashed.contains(&from) || self.crashed.contains(&to) {
            self.stats.dropped_crash += 1;
            return false;
        }
        if self.blocked.contains(&(from, to)) {
            self.stats.dropped_partition += 1;
            return false;
        }
        true
    }

    fn delay(&mut self, link: &LinkConfig) -> u64 {
        let (lo, hi) = if link.delay_us_min <= link.delay_us_max {
            (link.delay_us_min, link.delay_us_max)
        } else {
            (link.delay_us_max, link.delay_us_min)
        };
        self.rng.gen_range(lo..=hi)
    }

    fn schedule(&mut self, from: NodeId, to: NodeId, payload: P, delay_us: u64) {
        if self.queue.len() >= self.in_flight_max {
            self.stats.dropped_overflow += 1;
            return;
        }
        self.seq += 1;
        let time_us = self.now_us.saturating_add(delay_us);
        self.queue.push(Scheduled {
            time_us,
            seq: self.seq,
            from,
            to,
            payload,
        });
    }

    /// Sends `payload` from `from` to `to` at the current virtual time, subject to the fault
    /// model. Returns how many copies were scheduled (0, 1 or 2).
    pub fn send(&mut self, from: NodeId, to: NodeId, payload: P) -> usize {
        self.stats.sent += 1;
        if !self.check_path(from, to) {
            return 0;
        }
        let link = self.link(from, to);
        // Always draw the same number of random values per send, so that a fault on one
        // message does not shift the random choices of every later one.
        let lost = self.rng.gen::<f64>() < link.loss;
        let dup = self.rng.gen::<f64>() < link.duplicate;
        let d1 = self.delay(&link);
        let d2 = self.delay(&link);
        if lost {
            self.stats.dropped_loss += 1;
            return 0;
        }
        if dup {
            self.stats.duplicated += 1;
            self.schedule(from, to, payload.clone(), d2);
            self.schedule(from, to, payload, d1);
            2
        } else {
            self.schedule(from, to, payload, d1);
            1
        }
    }

    /// Virtual time of the next scheduled delivery, if any (it may still be dropped when
    /// popped, if a partition or crash happened since).
    pub fn next_delivery_time(&self) -> Option<u64> {
        self.queue.peek().map(|m| m.time_us)
    }

    /// Number of messages in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Advances virtual time to `time_us` (never backwards). Use it to fire timers when no
    /// delivery is due earlier.
    pub fn advance_to(&mut self, time_us: u64) {
        self.now_us = self.now_us.max(time_us);
    }

    /// Pops the earliest delivery, advancing virtual time to it; `None` when nothing is in
    /// flight. Messages dropped by a partition or crash since they were sent are skipped.
    pub fn next_delivery(&mut self) -> Option<Delivery<P>> {
        self.next_delivery_until(u64::MAX)
    }

    /// Like [`SimNet::next_delivery`], but only a delivery due at or before `deadline_us`.
    pub fn next_delivery_until(&mut self, deadline_us: u64) -> Option<Delivery<P>> {
        loop {
            if self.queue.peek()?.time_us > deadline_us {
                return None;
            }
            let m = self.queue.pop()?;
            self.now_us = self.now_us.max(m.time_us);
            if !self.check_path(m.from, m.to) {
                continue;
            }
            self.stats.delivered += 1;
            let d = Delivery {
                time_us: self.now_us,
                from: m.from,
                to: m.to,
                payload: m.payload,
            };
            if self.trace_enabled {
                self.trace.push(d.clone());
            }
            return Some(d);
        }
    }

    /// Every delivery so far, in order.
    pub fn trace(&self) -> &[Delivery<P>] {
        &self.trace
    }

    /// Takes the trace recorded so far, leaving it empty.
    pub fn take_trace(&mut self) -> Vec<Delivery<P>> {
        std::mem::take(&mut self.trace)
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds

/// The seeds a simulation test should run: `SIM_SEED=<n>` replays that one seed; otherwise
/// `<count_var>=<n>` (e.g. `SIM_SEEDS=200`) runs seeds `0..n`; otherwise `0..default_count`.
/// Unparsable values fall back to the default.
pub fn seeds_from_env(count_var: &str, default_count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        return vec![seed];
    }
    let n = std::env::var(count_var)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(default_count);
    (0..n).collect()
}

/// Prints the seed (and how to replay it) if dropped while the thread panics. Keep one alive
/// for the duration of each seeded run.
#[derive(Debug)]
pub struct SeedGuard {
    seed: u64,
}

impl SeedGuard {
    /// Guards a run with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The guarded seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed with seed {0}; replay with SIM_SEED={0}",
                self.seed
            );
        }
    }
}

/// Runs `f` once per seed of [`seeds_from_env`], each under a [`SeedGuard`].
pub fn for_each_seed(count_var: &str, default_count: u64, mut f: impl FnMut(u64)) {
    for seed in seeds_from_env(count_var, default_count) {
        let _guard = SeedGuard::new(seed);
        f(seed);
    }
}

// ---------------------------------------------------------------------------------------------
// Tokio adapter

#[derive(Debug, Clone)]
enum Envelope {
    Message(Bytes),
    Request { id: u64, payload: Bytes },
    Response { id: u64, payload: Bytes },
    Dropped { id: u64 },
}

type Pending = oneshot::Sender<Result<Bytes, TransportError>>;

struct HubInner {
    net: Mutex<SimNet<Envelope>>,
    start: Instant,
    inboxes: Mutex<HashMap<NodeId, mpsc::Sender<Incoming>>>,
    pending: Mutex<HashMap<u64, (NodeId, Pending)>>,
    next_id: AtomicU64,
    wake: Notify,
    shut_down: AtomicBool,
    inbox_len_max: usize,
    /// Crashes reported to every node, as the QUIC network's liveness sentinels would.
    peer_down: Mutex<HashMap<NodeId, tokio::sync::broadcast::Sender<NodeId>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// In-process simulated cluster for tokio tests: owns a [`SimNet`] and a driver task, and
/// hands out one [`SimNetwork`] per node. Dropping it stops the driver; nodes' `recv` then
/// returns `None`.
pub struct SimHub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for SimHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHub").finish_non_exhaustive()
    }
}

impl SimHub {
    /// Starts a hub whose links default to `link`, seeded with `seed`. Virtual time is real
    /// time elapsed since this call. Must be called inside a tokio runtime (the driver task
    /// is spawned on it); returns `None` otherwise.
    pub fn start(seed: u64, link: LinkConfig) -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let inner = Arc::new(HubInner {
            net: Mutex::new(SimNet::with_link(seed, link)),
            start: Instant::now(),
            inboxes: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            wake: Notify::new(),
            shut_down: AtomicBool::new(false),
            inbox_len_max: 65_536,
            peer_down: Mutex::new(HashMap::new()),
        });
        handle.spawn(drive(inner.clone()));
        Some(Self { inner })
    }

    /// Attaches node `id` and returns its network handle, or `None` if `id` is already attached.
    pub fn node(&self, id: NodeId) -> Option<SimNetwork> {
        let mut inboxes = lock(&self.inner.inboxes);
        if inboxes.contains_key(&id) {
            return None;
        }
        let (tx, rx) = mpsc::channel(self.inner.inbox_len_max);
        inboxes.insert(id, tx);
        Some(SimNetwork {
            id,
            hub: self.inner.clone(),
            rx: tokio::sync::Mutex::new(rx),
        })
    }

    /// Crashes node `id` (see [`SimNet::crash`]).
    /// Every node's [`Network::subscribe_peer_down`] hears of it, as a node on the QUIC
    /// network would through its liveness sentinels (a partition is not reported).
    pub fn crash(&self, id: NodeId) {
        lock(&self.inner.net).crash(id);
        for tx in lock(&self.inner.peer_down).values() {
            let _ = tx.send(id);
        }
    }

    /// Reports node `id` dead to node `observer` only, without crashing it: a false alarm,
    /// as a liveness sentinel might raise if only its TCP connection broke.
    pub fn report_down_to(&self, observer: NodeId, id: NodeId) {
        if let Some(tx) = lock(&self.inner.peer_down).get(&observer) {
            let _ = tx.send(id);
        }
    }

    /// Restarts node `id` (see [`SimNet::restart`]).
    pub fn restart(&self, id: NodeId) {
        lock(&self.inner.net).restart(id);
    }

    /// Blocks both directions between the sets `a` and `b`.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        lock(&self.inner.net).partition(a, b);
    }

    /// Blocks `from -> to` only.
    pub fn block(&self, from: NodeId, to: NodeId) {
        lock(&self.inner.net).block(from, to);
    }

    /// Unblocks `from -> to`.
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        lock(&self.inner.net).unblock(from, to);
    }

    /// Removes every block and partition.
    pub fn heal(&self) {
        lock(&self.inner.net).heal();
    }

    /// Sets the configuration of every link without its own.
    pub fn set_default_link(&self, link: LinkConfig) {
        lock(&self.inner.net).set_default_link(link);
    }

    /// Sets the configuration of the directed link `from -> to`.
    pub fn set_link(&self, from: NodeId, to: NodeId, link: LinkConfig) {
        lock(&self.inner.net).set_link(from, to, link);
    }

    /// Counters of the underlying network.
    pub fn stats(&self) -> SimStats {
        lock(&self.inner.net).stats()
    }
}

impl Drop for SimHub {
    fn drop(&mut self) {
        self.inner.shut_down.store(true, AtomicOrdering::SeqCst);
        lock(&self.inner.inboxes).clear();
        lock(&self.inner.pending).clear();
        self.inner.wake.notify_one();
    }
}

impl HubInner {
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn post(&self, from: NodeId, to: NodeId, env: Envelope) -> Result<(), TransportError> {
        if self.shut_down.load(AtomicOrdering::SeqCst) {
            return Err(TransportError::Shutdown);
        }
        if !lock(&self.inboxes).contains_key(&to) {
            return Err(TransportError::UnknownPeer(to));
        }
        let now = self.now_us();
        {
            let mut net = lock(&self.net);
            if net.in_flight() >= net.in_flight_max {
                return Err(TransportError::QueueFull(to));
            }
            net.advance_to(now);
            net.send(from, to, env);
        }
        self.wake.notify_one();
        Ok(())
    }

    fn dispatch(self: &Arc<Self>, d: Delivery<Envelope>) {
        let inbox = lock(&self.inboxes).get(&d.to).cloned();
        match d.payload {
            Envelope::Message(payload) => {
                if let Some(inbox) = inbox {
                    let _ = inbox.try_send(Incoming::Message {
                        from: d.from,
                        payload,
                    });
                }
            }
            Envelope::Request { id, payload } => {
                let Some(inbox) = inbox else { return };
                let (responder, answer) = Responder::new();
                if inbox
                    .try_send(Incoming::Request {
                        from: d.from,
                        payload,
                        responder,
                    })
                    .is_err()
                {
                    return;
                }
                let hub = self.clone();
                let (server, caller) = (d.to, d.from);
                tokio::spawn(async move {
                    let env = match answer.await {
                        Ok(payload) => Envelope::Response { id, payload },
                        Err(_) => Envelope::Dropped { id },
                    };
                    let _ = hub.post(server, caller, env);
                });
            }
            Envelope::Response { id, payload } => {
                if let Some((_, tx)) = self.take_pending(id, d.to) {
                    let _ = tx.send(Ok(payload));
                }
            }
            Envelope::Dropped { id } => {
                if let Some((_, tx)) = self.take_pending(id, d.to) {
                    let _ = tx.send(Err(TransportError::Dropped(d.from)));
                }
            }
        }
    }

    fn take_pending(&self, id: u64, caller: NodeId) -> Option<(NodeId, Pending)> {
        let mut pending = lock(&self.pending);
        match pending.get(&id) {
            Some((c, _)) if *c == caller => pending.remove(&id),
            _ => None,
        }
    }
}

async fn drive(hub: Arc<HubInner>) {
    loop {
        if hub.shut_down.load(AtomicOrdering::SeqCst) {
            return;
        }
        let now = hub.now_us();
        let mut due = Vec::new();
        let next = {
            let mut net = lock(&hub.net);
            net.advance_to(now);
            while let Some(d) = net.next_delivery_until(now) {
                due.push(d);
            }
            net.next_delivery_time()
        };
        for d in due {
            hub.dispatch(d);
        }
        match next {
            Some(t) => {
                let wait = Duration::from_micros(t.saturating_sub(hub.now_us()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = hub.wake.notified() => {}
                }
            }
            None => hub.wake.notified().await,
        }
    }
}

/// One node's attachment to a [`SimHub`]; implements [`Network`].
pub struct SimNetwork {
    id: NodeId,
    hub: Arc<HubInner>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
}

impl std::fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNetwork")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Network for SimNetwork {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn send(&self, to: NodeId, payload: Bytes) -> Result<(), TransportError> {
        self.hub.post(self.id, to, Envelope::Message(payload))
    }

    async fn call(
        &self,
        to: NodeId,
        request: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, TransportError> {
        let id = self.hub.next_id.fetch_add(1, AtomicOrdering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.hub.pending).insert(id, (self.id, tx));
        if let Err(e) = self.hub.post(
            self.id,
            to,
            Envelope::Request {
                id,
                payload: request,
            },
        ) {
            lock(&self.hub.pending).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(TransportError::Shutdown),
            Err(_) => {
                lock(&self.hub.pending).remove(&id);
                Err(TransportError::Timeout(deadline))
            }
        }
    }

    fn subscribe_peer_down(&self) -> Option<tokio::sync::broadcast::Receiver<NodeId>> {
        Some(
            lock(&self.hub.peer_down)
                .entry(self.id)
                .or_insert_with(|| tokio::sync::broadcast::channel(64).0)
                .subscribe(),
        )
    }

    async fn recv(&self) -> Option<Incoming> {
        self.rx.lock().await.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_break_in_send_order() {
        let mut net: SimNet<u32> = SimNet::with_link(1, LinkConfig::fixed(10));
        for i in 0..5 {
            net.send(1, 2, i);
        }
        let got: Vec<u32> = std::iter::from_fn(|| net.next_delivery().map(|d| d.payload)).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(net.now_us(), 10);
    }
}
