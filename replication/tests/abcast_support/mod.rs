//! Test support for the atomic broadcast: a deterministic simulator for the sans-IO core and a
//! tiny in-process tokio-channel [`Network`] for the runtime.
//!
//! (`transport::sim` was not usable yet when these tests were written.)

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replication::abcast::{
    Action, Body, Core, CoreConfig, EpochState, Message, PersistAck, Record, SnapshotBase,
};
use tokio::sync::mpsc;
use transport::{Incoming, Network, NodeId, Responder, TransportError};

/// Seeds to run: `0..ABCAST_SEEDS` (or `0..default`); `ABCAST_SEED=n` runs seed `n` only.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Some(one) = std::env::var("ABCAST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![one];
    }
    let count = std::env::var("ABCAST_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..count).collect()
}

/// Faults of the simulated network.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub dup: f64,
    /// Delay range (virtual ms); independent delays reorder messages.
    pub delay_min_ms: u64,
    /// Upper bound of the delay.
    pub delay_max_ms: u64,
}

impl Faults {
    pub fn none() -> Self {
        Self {
            loss: 0.0,
            dup: 0.0,
            delay_min_ms: 1,
            delay_max_ms: 3,
        }
    }
    pub fn lossy() -> Self {
        Self {
            loss: 0.1,
            dup: 0.05,
            delay_min_ms: 1,
            delay_max_ms: 25,
        }
    }
}

enum Event {
    Msg {
        from: usize,
        to: usize,
        msg: Message,
    },
    Tick(usize),
    /// Node `i`'s write in flight reaches its disk (if the node has not crashed since:
    /// the incarnation must match).
    Persisted(usize, u64),
}

/// A node's disk at one moment ([`Sim::disk_copy`]).
#[derive(Clone)]
pub struct DiskCopy {
    records: Vec<Record>,
    lease: u64,
    floor: u64,
    epoch: EpochState,
    snapshot: Option<(SnapshotBase, Vec<u64>)>,
}

/// A drain's persist and the actions that wait for it.
type PendingWrite = (Vec<Record>, PersistAck, Vec<Action>);

/// A simulated group of cores in virtual time.
pub struct Sim {
    pub seed: u64,
    rng: ChaCha8Rng,
    pub now_ms: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    cfgs: Vec<CoreConfig>,
    pub nodes: Vec<Option<Core>>,
    disks: Vec<Vec<Record>>,
    /// Each node's stored seq lease.
    leases: Vec<u64>,
    /// Each node's stored sequence floor (written when it is rebuilt after losing its disk).
    floors: Vec<u64>,
    /// Each node's stored epoch state (the runtime's key beside the journal).
    epochs: Vec<EpochState>,
    /// Members rebuilt from a donor's disk after theirs was lost, or after their peers
    /// collected history they lacked.
    pub rebuilds: u64,
    /// Of those, the members rebuilt because their peers collected history they lacked
    /// ([`Core::behind`]).
    pub rebuilds_behind: u64,
    /// Nodes whose disk the test emptied or rolled back (and that were not rebuilt since):
    /// only they may believe their disk lost; any other that does is a violation.
    damaged: Vec<bool>,
    /// Nodes armed to crash in their next persist, after sending what goes before it.
    tear_next_persist: Vec<bool>,
    /// The armed crash waits for a persist with an own Sequence sent before it.
    tear_needs_sequence: bool,
    /// Crashes that lost a persist whose own Requests had already been sent.
    pub torn_crashes: u64,
    /// Payloads in flight at a member when it crashed (issued in a Request, not acknowledged):
    /// the Request may survive at a peer or be voided by the restart, so liveness does not
    /// demand them (their clients would see an error and retry).
    pub maybe_lost: BTreeSet<u64>,
    connected: Vec<Vec<bool>>,
    pub faults: Faults,
    tick_ms: u64,
    /// Payload ids delivered by each node's current incarnation, in order.
    pub delivered: Vec<Vec<u64>>,
    /// Delivery lists of crashed incarnations.
    pub past: Vec<(usize, Vec<u64>)>,
    /// Payload ids proposed at each node, in order.
    pub proposed: Vec<Vec<u64>>,
    /// payload id -> proposer.
    pub proposer: HashMap<u64, usize>,
    /// payload id -> virtual time its proposer delivered it (acknowledged).
    pub acked_at: HashMap<u64, u64>,
    next_payload: u64,
    /// read token -> (node, time issued)
    reads: HashMap<u64, (usize, u64)>,
    next_read: u64,
    pub reads_done: u64,
    pub messages_sent: u64,
    violations: Vec<String>,
    /// Snapshot every this many delivered sequences (`None`: never); the disk is then
    /// compacted like the runtime does.
    pub snapshot_every: Option<u64>,
    snapshots: Vec<Option<(SnapshotBase, Vec<u64>)>>,
    pub snapshots_taken: u64,
    pub restarts_from_snapshot: u64,
    pub records_compacted: u64,
    /// Proposals lost in crashed outboxes.
    pub lost: u64,
    /// Writes take this long (virtual ms, drawn per write), and the node goes on receiving,
    /// sequencing and draining meanwhile, as the runtime does; later drains' persists queue
    /// behind it (merged) and reach the disk in order. `None`: every persist is done within
    /// its drain. Odd seeds write with a delay, even seeds without.
    pub write_delay_ms: Option<(u64, u64)>,
    writing: Vec<Option<PendingWrite>>,
    queued: Vec<Option<PendingWrite>>,
    incarnation: Vec<u64>,
    /// Writes that found another one in flight and queued behind it.
    pub writes_queued: u64,
    /// As the runtime does: a node whose core is [`Core::quiet`] skips its ticks until its
    /// heartbeat is due, and is ticked first when a message or proposal wakes it. Seeds
    /// `2, 3 (mod 4)` do, the others tick every `tick_ms` whatever the core says.
    pub sleep_when_quiet: bool,
    last_tick: Vec<u64>,
    /// Ticks skipped by quiet nodes.
    pub ticks_slept: u64,
}

impl Sim {
    pub fn new(seed: u64, members: usize, faults: Faults) -> Self {
        let cfgs: Vec<CoreConfig> = (0..members)
            .map(|i| {
                let mut c = CoreConfig::new(i as u64, members as u64);
                c.request_payloads_max = 8;
                c.requests_in_flight_max = 8;
                c.sequence_requests_max = 16;
                c.sequence_window = 32;
                c.retransmit_after_ms = 30;
                c.heartbeat_ms = 50;
                c.pass_retry_ms = 20;
                c.reform_after_ms = 200;
                // Small, so that a member down for a while is collected past and rebuilt.
                c.retain_for_excluded = 48;
                c
            })
            .collect();
        let mut sim = Self {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now_ms: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes: cfgs.iter().map(|c| Some(Core::new(c.clone()))).collect(),
            cfgs,
            disks: vec![Vec::new(); members],
            leases: vec![0; members],
            floors: vec![0; members],
            epochs: vec![EpochState::default(); members],
            rebuilds: 0,
            rebuilds_behind: 0,
            damaged: vec![false; members],
            tear_next_persist: vec![false; members],
            tear_needs_sequence: false,
            torn_crashes: 0,
            maybe_lost: BTreeSet::new(),
            connected: vec![vec![true; members]; members],
            faults,
            tick_ms: 5,
            delivered: vec![Vec::new(); members],
            past: Vec::new(),
            proposed: vec![Vec::new(); members],
            proposer: HashMap::new(),
            acked_at: HashMap::new(),
            next_payload: 0,
            reads: HashMap::new(),
            next_read: 0,
            reads_done: 0,
            messages_sent: 0,
            violations: Vec::new(),
            snapshot_every: None,
            snapshots: vec![None; members],
            snapshots_taken: 0,
            restarts_from_snapshot: 0,
            records_compacted: 0,
            lost: 0,
            write_delay_ms: (seed % 2 == 1).then_some((0, 1 + seed % 7 * 5)),
            writing: vec![None; members],
            queued: vec![None; members],
            incarnation: vec![0; members],
            writes_queued: 0,
            sleep_when_quiet: seed % 4 >= 2,
            last_tick: vec![0; members],
            ticks_slept: 0,
        };
        for i in 0..members {
            let offset = sim.rng.gen_range(0..sim.tick_ms);
            sim.push(offset, Event::Tick(i));
        }
        sim
    }

    /// Sets every member's [`CoreConfig::reform_after_ms`] (0: a member that is down is
    /// waited for, never excluded) and starts the group afresh; call before anything runs.
    pub fn set_reform_after_ms(&mut self, ms: u64) {
        for (i, c) in self.cfgs.iter_mut().enumerate() {
            c.reform_after_ms = ms;
            self.nodes[i] = Some(Core::new(c.clone()));
        }
    }

    /// Sets how much history every member keeps for an excluded one: `numbers` Sequence
    /// numbers and `bytes` of held Requests (`CoreConfig::retain_for_excluded` and
    /// `retain_for_excluded_bytes`). Call before anything happens: the cores start afresh.
    pub fn set_retain(&mut self, numbers: u64, bytes: usize) {
        for (i, c) in self.cfgs.iter_mut().enumerate() {
            c.retain_for_excluded = numbers;
            c.retain_for_excluded_bytes = bytes;
            self.nodes[i] = Some(Core::new(c.clone()));
        }
    }

    /// Whether every payload proposed at one of `nodes` (and not lost with a crashed
    /// outbox or in flight at a crash) has been delivered by every one of `nodes`.
    pub fn delivered_at(&self, nodes: &[usize]) -> bool {
        let want: BTreeSet<u64> = nodes
            .iter()
            .flat_map(|i| self.proposed[*i].iter())
            .filter(|id| !self.maybe_lost.contains(id))
            .copied()
            .collect();
        nodes.iter().all(|i| {
            let got: BTreeSet<u64> = self.delivered[*i].iter().copied().collect();
            want.is_subset(&got)
        })
    }

    /// Runs until [`Sim::delivered_at`] holds for `nodes` or `max_ms` pass.
    pub fn run_until_delivered_at(&mut self, nodes: &[usize], max_ms: u64) -> bool {
        let end = self.now_ms + max_ms;
        while self.now_ms < end {
            if self.delivered_at(nodes) {
                return true;
            }
            self.run_for(10);
        }
        self.delivered_at(nodes)
    }

    /// Tells every live node that node `i` died ([`Core::suspect`], as the runtime does
    /// when its liveness connection closes).
    pub fn report_down(&mut self, i: usize) {
        for j in 0..self.members() {
            if let Some(core) = self.nodes[j].as_mut() {
                core.suspect(i as u64);
            }
        }
    }

    pub fn members(&self) -> usize {
        self.nodes.len()
    }

    fn push(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), e);
    }

    /// Connects or disconnects `a` and `b` (both directions).
    pub fn set_link(&mut self, a: usize, b: usize, up: bool) {
        self.connected[a][b] = up;
        self.connected[b][a] = up;
    }

    /// Leaves only `group` connected among itself; everyone else is isolated.
    pub fn isolate_all_but(&mut self, group: &[usize]) {
        let n = self.members();
        for a in 0..n {
            for b in 0..n {
                self.connected[a][b] = a == b || (group.contains(&a) && group.contains(&b));
            }
        }
    }

    pub fn heal(&mut self) {
        let n = self.members();
        self.connected = vec![vec![true; n]; n];
    }

    /// Crashes node `i`: its memory is gone, its disk stays. Proposals still in its outbox
    /// (never issued as a Request, so never acknowledged) are lost with it, as in a real
    /// crash; issued but unacknowledged ones may or may not survive (`maybe_lost`).
    pub fn crash(&mut self, i: usize) {
        let lost = self.nodes[i].as_ref().map_or(0, |c| c.outbox_len());
        for _ in 0..lost {
            if let Some(id) = self.proposed[i].pop() {
                self.proposer.remove(&id);
                self.lost += 1;
            }
        }
        for id in &self.proposed[i] {
            if !self.acked_at.contains_key(id) {
                self.maybe_lost.insert(*id);
            }
        }
        self.nodes[i] = None;
        // Writes in flight never reach the disk.
        self.writing[i] = None;
        self.queued[i] = None;
        self.incarnation[i] += 1;
        // Messages on their way to it die with its connections (a restarted process has new
        // QUIC connections; packets of the old ones are dropped).
        self.events
            .retain(|_, e| !matches!(e, Event::Msg { to, .. } if *to == i));
        let d = std::mem::take(&mut self.delivered[i]);
        self.past.push((i, d));
    }

    /// Arms node `i` to crash during its next persist that has something sent before it: its
    /// own Requests under the lease go out, the persist never reaches the disk.
    pub fn crash_in_next_persist(&mut self, i: usize) {
        self.tear_next_persist[i] = true;
        self.tear_needs_sequence = false;
    }

    /// Like [`Sim::crash_in_next_persist`], in the next persist whose own Sequence already
    /// went out before it.
    pub fn crash_in_next_persist_after_sequence(&mut self, i: usize) {
        self.tear_next_persist[i] = true;
        self.tear_needs_sequence = true;
    }

    /// Whether node `i` is still armed to crash in its next persist.
    pub fn armed(&self, i: usize) -> bool {
        self.tear_next_persist[i]
    }

    /// Empties node `i`'s disk (journal, lease and snapshot), as if its data directory was
    /// lost; crash it first.
    pub fn wipe_disk(&mut self, i: usize) {
        self.damaged[i] = true;
        self.disks[i].clear();
        self.leases[i] = 0;
        self.floors[i] = 0;
        self.epochs[i] = EpochState::default();
        self.snapshots[i] = None;
        self.delivered[i].clear();
    }

    /// A copy of node `i`'s disk as it is now (journal, lease, floor, snapshot), for
    /// [`Sim::roll_back_disk`].
    pub fn disk_copy(&self, i: usize) -> DiskCopy {
        DiskCopy {
            records: self.disks[i].clone(),
            lease: self.leases[i],
            floor: self.floors[i],
            epoch: self.epochs[i].clone(),
            snapshot: self.snapshots[i].clone(),
        }
    }

    /// Puts an earlier copy of node `i`'s disk back, as if its data directory was restored
    /// from a backup or a VM snapshot; crash it first.
    pub fn roll_back_disk(&mut self, i: usize, copy: DiskCopy) {
        self.damaged[i] = true;
        self.disks[i] = copy.records;
        self.leases[i] = copy.lease;
        self.floors[i] = copy.floor;
        self.epochs[i] = copy.epoch;
        self.snapshots[i] = copy.snapshot;
        self.delivered[i].clear();
    }

    /// Restarts node `i` from its disk (and its snapshot, if any).
    pub fn restart(&mut self, i: usize) {
        let core = match &self.snapshots[i] {
            Some((base, state)) => {
                self.restarts_from_snapshot += 1;
                self.delivered[i] = state.clone();
                Core::recover_from(
                    self.cfgs[i].clone(),
                    Some(base.clone()),
                    self.leases[i],
                    self.disks[i].clone(),
                )
            }
            None => Core::recover(self.cfgs[i].clone(), self.leases[i], self.disks[i].clone()),
        };
        self.nodes[i] = Some(
            core.with_sequence_floor(self.floors[i])
                .with_epoch_state(self.epochs[i].clone())
                .with_incarnation_nonce(self.incarnation[i] as u32),
        );
    }

    /// Rebuilds node `i`, whose disk was lost, once its core has a plan, as the runtime
    /// does: its first live donor's snapshot and journal are copied after what its own disk
    /// holds, the plan's lease and floor are stored, and it starts again from that disk. (The
    /// runtime fetches the image over the network; here the copy is instant.)
    fn maybe_rebuild(&mut self, i: usize) {
        let Some(plan) = self.nodes[i].as_ref().and_then(|c| c.rebuild_plan()) else {
            return;
        };
        let Some(&donor) = plan
            .donors
            .iter()
            .find(|d| self.nodes[**d as usize].is_some())
        else {
            return;
        };
        let donor = donor as usize;
        let behind = self.nodes[i].as_ref().is_some_and(|c| c.behind());
        let own = self.nodes[i].as_ref().expect("alive").epoch_state();
        let donor_state = self.epochs[donor].clone();
        // As the runtime: a donor in an older epoch is refused.
        let Ok(state) = own.adopt(&donor_state, self.cfgs[i].epoch) else {
            return;
        };
        self.crash(i);
        // As the runtime's image does: a cut at 0 (the copy replaces this node's Sequences),
        // the donor's journal, the donor's epoch state at its end.
        self.disks[i].push(Record::Epoch {
            cut: 0,
            state: state.clone(),
        });
        let copied = self.disks[donor].clone();
        self.disks[i].extend(copied);
        self.disks[i].push(Record::Epoch {
            cut: replication::abcast::message::NUMBER_MAX,
            state: donor_state,
        });
        self.epochs[i] = state;
        if self.snapshots[donor].is_some() {
            self.snapshots[i] = self.snapshots[donor].clone();
        }
        self.leases[i] = plan.lease.max(self.leases[i]);
        self.floors[i] = plan.sequence_floor;
        self.rebuilds += 1;
        self.rebuilds_behind += u64::from(behind);
        self.damaged[i] = false;
        self.restart(i);
    }

    /// Takes a snapshot of node `i` when due, then compacts its disk's front like the runtime.
    fn maybe_snapshot(&mut self, i: usize) {
        let Some(every) = self.snapshot_every else {
            return;
        };
        // The core counts deliveries still waiting behind a write: snapshot between writes.
        if self.writing[i].is_some() || self.queued[i].is_some() {
            return;
        }
        let Some(core) = self.nodes[i].as_ref() else {
            return;
        };
        let last = self.snapshots[i].as_ref().map_or(0, |(b, _)| b.delivered);
        if core.delivered() < last + every {
            return;
        }
        let base = core.snapshot_base();
        let g = core.collected().min(base.delivered);
        let prefixes: Vec<u64> = core
            .collected_prefixes()
            .iter()
            .zip(&base.prefixes)
            .map(|(a, b)| (*a).min(*b))
            .collect();
        self.snapshots[i] = Some((base, self.delivered[i].clone()));
        self.snapshots_taken += 1;
        let keep_from = self.disks[i]
            .iter()
            .position(|r| match r {
                Record::Sequence(s) => s.number >= g,
                Record::Request(r) => r.key.seq >= prefixes[r.key.sender as usize],
                // Its state is kept beside the journal; what it cut precedes it.
                Record::Epoch { .. } => false,
            })
            .unwrap_or(self.disks[i].len());
        self.disks[i].drain(..keep_from);
        self.records_compacted += keep_from as u64;
    }

    /// A node woken by a message or a proposal after sleeping through ticks (quiet) is
    /// ticked first, as the runtime does: its clock catches up before the event.
    fn wake(&mut self, i: usize) {
        let (at, tick_ms) = (self.now_ms, self.tick_ms);
        if !self.sleep_when_quiet || at < self.last_tick[i] + tick_ms {
            return;
        }
        if let Some(core) = self.nodes[i].as_mut() {
            core.tick(at);
            self.last_tick[i] = at;
            self.drain(i);
        }
    }

    /// Proposes a fresh payload at node `i`; returns its id if accepted.
    pub fn propose(&mut self, i: usize) -> Option<u64> {
        self.wake(i);
        let id = self.next_payload;
        let core = self.nodes[i].as_mut()?;
        core.propose(id.to_le_bytes().to_vec()).ok()?;
        self.next_payload += 1;
        self.proposed[i].push(id);
        self.proposer.insert(id, i);
        self.drain(i);
        Some(id)
    }

    /// Starts a read barrier at node `i`.
    pub fn read(&mut self, i: usize) {
        self.wake(i);
        let token = self.next_read;
        self.next_read += 1;
        if let Some(core) = self.nodes[i].as_mut() {
            core.read_barrier(token);
            self.reads.insert(token, (i, self.now_ms));
            self.drain(i);
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Message) {
        self.messages_sent += 1;
        if !self.connected[from][to] || self.rng.gen_bool(self.faults.loss) {
            return;
        }
        let copies = if self.rng.gen_bool(self.faults.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self
                .rng
                .gen_range(self.faults.delay_min_ms..=self.faults.delay_max_ms);
            self.push(
                self.now_ms + delay,
                Event::Msg {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn drain(&mut self, i: usize) {
        if !self.damaged[i] && self.nodes[i].as_ref().is_some_and(|c| c.disk_lost()) {
            self.violations.push(format!(
                "node {i} believes its disk lost, but the test left it intact"
            ));
        }
        for _ in 0..16 {
            let Some(core) = self.nodes[i].as_mut() else {
                return;
            };
            let mut actions = core.drain();
            if actions.is_empty() {
                self.maybe_snapshot(i);
                return;
            }
            if let Some(at) = actions
                .iter()
                .position(|a| matches!(a, Action::Persist { .. }))
            {
                let mut rest = actions.split_off(at);
                let sent_early = if self.tear_needs_sequence {
                    actions.iter().any(|a| {
                        matches!(a, Action::Broadcast(Message { body: Body::Data { sequences, .. }, .. }) if !sequences.is_empty())
                    })
                } else {
                    !actions.is_empty()
                };
                if self.tear_next_persist[i] && sent_early {
                    self.tear(i, actions);
                    return;
                }
                self.check_one_unwritten_sequence(i, &actions);
                self.perform(i, actions);
                let Action::Persist { records, ack } = rest.remove(0) else {
                    return;
                };
                if let Some((lo, hi)) = self.write_delay_ms {
                    self.start_write(i, (records, ack, rest), lo, hi);
                    continue;
                }
                if !self.land_write(i, records, ack, &mut rest) {
                    return;
                }
                actions = rest;
            }
            self.perform_after_writes(i, actions);
        }
    }

    /// Performs a drain's actions while node `i` may have writes in flight: sends go now,
    /// deliveries and read completions wait behind the last pending write, so they happen in
    /// the order the core produced them.
    fn perform_after_writes(&mut self, i: usize, actions: Vec<Action>) {
        let pending = match self.queued[i].as_mut() {
            Some(q) => Some(&mut q.2),
            None => self.writing[i].as_mut().map(|w| &mut w.2),
        };
        let Some(pending) = pending else {
            self.perform(i, actions);
            return;
        };
        let mut now = Vec::new();
        for a in actions {
            match a {
                Action::Send { .. } | Action::Broadcast(_) => now.push(a),
                other => pending.push(other),
            }
        }
        self.perform(i, now);
    }

    /// The restart protocol reclaims one own Sequence number: an own Sequence may go out
    /// before its write only while no earlier own Sequence is still unwritten (in a write in
    /// flight or queued). Checked on every early send.
    fn check_one_unwritten_sequence(&mut self, i: usize, early: &[Action]) {
        let n = self.members() as u64;
        let own = |number: u64| number % n == i as u64;
        let sends_own = early.iter().any(|a| {
            matches!(a, Action::Broadcast(Message { body: Body::Data { sequences, .. }, .. })
                if sequences.iter().any(|s| own(s.number)))
        });
        let unwritten_own = [&self.writing[i], &self.queued[i]]
            .into_iter()
            .flatten()
            .flat_map(|(records, _, _)| records)
            .any(|r| matches!(r, Record::Sequence(s) if own(s.number)));
        if sends_own && unwritten_own {
            self.violations.push(format!(
                "node {i}: sent an own Sequence while an earlier one was unwritten"
            ));
        }
    }

    /// Hands a drain's persist to node `i`'s disk: written after a delay if nothing is being
    /// written, else merged into the write queued behind the one in flight.
    fn start_write(&mut self, i: usize, write: PendingWrite, lo: u64, hi: u64) {
        if self.writing[i].is_none() {
            self.writing[i] = Some(write);
            let at = self.now_ms + self.rng.gen_range(lo..=hi);
            self.push(at, Event::Persisted(i, self.incarnation[i]));
            return;
        }
        self.writes_queued += 1;
        let (records, ack, rest) = write;
        match self.queued[i].as_mut() {
            Some((q_records, q_ack, q_rest)) => {
                q_records.extend(records);
                *q_ack = q_ack.merge(ack);
                q_rest.extend(rest);
            }
            None => self.queued[i] = Some((records, ack, rest)),
        }
    }

    /// Puts a write's records on node `i`'s disk and acknowledges it to the core, which
    /// re-stamps the actions that waited for it; `false` if the node is down.
    fn land_write(
        &mut self,
        i: usize,
        records: Vec<Record>,
        ack: PersistAck,
        rest: &mut [Action],
    ) -> bool {
        self.write_disk(i, records, ack);
        match self.nodes[i].as_mut() {
            Some(core) => {
                core.persisted_then(ack, rest);
                true
            }
            None => false,
        }
    }

    /// Puts records on node `i`'s disk, with the lease and the epoch state they carry.
    fn write_disk(&mut self, i: usize, records: Vec<Record>, ack: PersistAck) {
        if let Some(state) = records.iter().rev().find_map(|r| match r {
            Record::Epoch { state, .. } => Some(state.clone()),
            _ => None,
        }) {
            self.epochs[i] = state;
        }
        self.disks[i].extend(records);
        self.leases[i] = self.leases[i].max(ack.lease);
    }

    /// Node `i`'s write in flight is on disk: what waited for it is done, the queued write
    /// starts.
    fn write_done(&mut self, i: usize) {
        let Some((records, ack, mut rest)) = self.writing[i].take() else {
            return;
        };
        if !self.land_write(i, records, ack, &mut rest) {
            return;
        }
        self.perform(i, rest);
        if let (Some(next), Some((lo, hi))) = (self.queued[i].take(), self.write_delay_ms) {
            self.start_write(i, next, lo, hi);
        }
        self.drain(i);
    }

    /// Node `i` crashes in the middle of persisting `records`: they never reach its disk.
    /// Node `i` dies while sending `early` (what goes before its persist, which never
    /// happens): its broadcasts reach one peer only, late (up to 400 ms: packets already on the
    /// wire still arrive after the sender died, maybe after it restarted).
    fn tear(&mut self, i: usize, early: Vec<Action>) {
        self.tear_next_persist[i] = false;
        self.torn_crashes += 1;
        let peer = (i + self.rng.gen_range(1..self.members())) % self.members();
        for a in early {
            if let Action::Broadcast(msg) = a {
                let delay = self.rng.gen_range(1..=400);
                self.push(
                    self.now_ms + delay,
                    Event::Msg {
                        from: i,
                        to: peer,
                        msg,
                    },
                );
            }
        }
        self.crash(i);
    }

    fn perform(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Persist { records, ack } => {
                    self.write_disk(i, records, ack);
                    if let Some(core) = self.nodes[i].as_mut() {
                        core.persisted(ack);
                    }
                }
                Action::Send { to, message } => self.send(i, to as usize, message),
                Action::Broadcast(message) => {
                    for to in 0..self.members() {
                        if to != i {
                            self.send(i, to, message.clone());
                        }
                    }
                }
                Action::Deliver(d) => {
                    let bytes: [u8; 8] = match d.payload.as_slice().try_into() {
                        Ok(b) => b,
                        Err(_) => {
                            self.violations
                                .push(format!("node {i}: delivered a malformed payload"));
                            continue;
                        }
                    };
                    let id = u64::from_le_bytes(bytes);
                    if self.proposer.get(&id) == Some(&i) && d.key.sender == i as u64 {
                        self.acked_at.entry(id).or_insert(self.now_ms);
                    }
                    self.delivered[i].push(id);
                }
                Action::ReadReady { token } => {
                    if let Some((node, issued)) = self.reads.remove(&token) {
                        self.reads_done += 1;
                        let have: BTreeSet<u64> = self.delivered[node].iter().copied().collect();
                        for (id, at) in &self.acked_at {
                            if *at < issued && !have.contains(id) {
                                self.violations.push(format!(
                                    "node {node}: read issued at {issued} ms misses payload {id} acknowledged at {at} ms"
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Runs the simulation until virtual time `until_ms`.
    pub fn run_until(&mut self, until_ms: u64) {
        // Bounded by the number of events, which is bounded by virtual time.
        while let Some((&(at, seq), _)) = self.events.first_key_value() {
            if at > until_ms {
                break;
            }
            let Some(event) = self.events.remove(&(at, seq)) else {
                break;
            };
            self.now_ms = at;
            match event {
                Event::Msg { from, to, msg } => {
                    if !self.connected[from][to] {
                        continue;
                    }
                    self.wake(to);
                    if let Some(core) = self.nodes[to].as_mut() {
                        core.handle_message(from as u64, msg);
                        self.drain(to);
                    }
                }
                Event::Tick(i) => {
                    let sleep_when_quiet = self.sleep_when_quiet;
                    if let Some(core) = self.nodes[i].as_mut() {
                        if sleep_when_quiet && core.quiet() && at < core.heartbeat_due_ms() {
                            self.ticks_slept += 1;
                        } else {
                            core.tick(at);
                            self.last_tick[i] = at;
                            self.drain(i);
                        }
                    }
                    self.maybe_rebuild(i);
                    self.push(at + self.tick_ms, Event::Tick(i));
                }
                Event::Persisted(i, incarnation) => {
                    if incarnation == self.incarnation[i] {
                        self.write_done(i);
                    }
                }
            }
        }
        self.now_ms = self.now_ms.max(until_ms);
    }

    /// Runs for `ms` more virtual milliseconds.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now_ms + ms;
        self.run_until(until);
    }

    /// Runs until every live node delivered every proposed payload, at most `max_ms`.
    pub fn run_until_all_delivered(&mut self, max_ms: u64) -> bool {
        let end = self.now_ms + max_ms;
        while self.now_ms < end {
            self.run_for(20);
            if self.check_all_delivered().is_ok() {
                return true;
            }
        }
        false
    }

    pub fn total_delivered(&self) -> usize {
        self.delivered.iter().map(|d| d.len()).sum()
    }

    /// Safety: integrity (no duplicates), validity (only proposed payloads), uniform agreement
    /// and total order (every delivery list, crashed incarnations included, is a prefix of the
    /// longest), per-sender FIFO; plus the read-barrier checks made along the way.
    pub fn check_safety(&self) -> Result<(), String> {
        if let Some(v) = self.violations.first() {
            return Err(v.clone());
        }
        let lists: Vec<(usize, &Vec<u64>)> = self
            .delivered
            .iter()
            .enumerate()
            .chain(self.past.iter().map(|(i, d)| (*i, d)))
            .collect();
        let longest = lists
            .iter()
            .max_by_key(|(_, d)| d.len())
            .map(|(_, d)| (*d).clone())
            .unwrap_or_default();
        for (i, d) in &lists {
            let mut seen = BTreeSet::new();
            for id in d.iter() {
                if !seen.insert(*id) {
                    return Err(format!("node {i}: payload {id} delivered twice"));
                }
                if !self.proposer.contains_key(id) {
                    return Err(format!("node {i}: payload {id} was never proposed"));
                }
            }
            if longest[..d.len()] != d[..] {
                let at = d.iter().zip(&longest).position(|(a, b)| a != b);
                return Err(format!(
                    "node {i}: delivery order diverges at position {at:?}"
                ));
            }
            // Per-sender FIFO: a proposer's payloads are delivered in proposal order.
            let mut last: HashMap<usize, usize> = HashMap::new();
            for id in d.iter() {
                let p = self.proposer[id];
                let pos = self.proposed[p]
                    .iter()
                    .position(|x| x == id)
                    .unwrap_or(usize::MAX);
                if let Some(prev) = last.get(&p) {
                    if pos <= *prev {
                        return Err(format!(
                            "node {i}: FIFO broken for proposer {p} at payload {id}"
                        ));
                    }
                }
                last.insert(p, pos);
            }
        }
        Ok(())
    }

    /// Liveness at the end: every live node delivered every proposed payload.
    pub fn check_all_delivered(&self) -> Result<(), String> {
        let all: BTreeSet<u64> = self
            .proposer
            .keys()
            .filter(|id| !self.maybe_lost.contains(id))
            .copied()
            .collect();
        for (i, d) in self.delivered.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            let got: BTreeSet<u64> = d.iter().copied().collect();
            if !all.is_subset(&got) {
                return Err(format!(
                    "node {i} delivered {} of {} payloads",
                    got.len(),
                    all.len()
                ));
            }
        }
        Ok(())
    }

    /// One line per node: progress, for failure messages.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match n {
                None => out.push_str(&format!("\n  node {i}: down")),
                Some(c) => out.push_str(&(format!(
                    "\n  node {i}: epoch {} delivered {} deliverable {} sequenced {} stable {} known {} recovering {} held {:?} outbox {} payloads {} stats {:?}",
                    c.epoch(),
                    c.delivered(),
                    c.deliverable(),
                    c.sequenced(),
                    c.stable(),
                    c.known(),
                    c.recovering(),
                    c.held(),
                    c.outbox_len(),
                    self.delivered[i].len(),
                    c.stats()
                ) + &format!("\n     {}", c.describe_epoch()))),
            }
        }
        out
    }

    pub fn core(&self, i: usize) -> Option<&Core> {
        self.nodes[i].as_ref()
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

/// Random load: `count` proposals at random live nodes among `at`, spread over `span_ms`,
/// with a read barrier every few proposals.
pub fn random_load(sim: &mut Sim, at: &[usize], count: usize, span_ms: u64) {
    let step = (span_ms / count.max(1) as u64).max(1);
    for _ in 0..count {
        let burst = sim.rng().gen_range(1..=3);
        for _ in 0..burst {
            let i = at[sim.rng().gen_range(0..at.len())];
            sim.propose(i);
        }
        if sim.rng().gen_bool(0.2) {
            let i = at[sim.rng().gen_range(0..at.len())];
            sim.read(i);
        }
        let wait = sim.rng().gen_range(0..=2 * step);
        sim.run_for(wait);
    }
}

// ---------------------------------------------------------------------------------------
// In-process network for the runtime tests.

/// Routes messages between in-process members.
#[derive(Default)]
pub struct Hub {
    routes: Mutex<HashMap<NodeId, mpsc::UnboundedSender<Incoming>>>,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Attaches (or re-attaches) member `id`; messages to it go to the returned network.
    pub fn attach(self: &Arc<Self>, id: NodeId) -> Arc<dyn Network> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        Arc::new(LocalNet {
            id,
            hub: Arc::clone(self),
            rx: tokio::sync::Mutex::new(rx),
        })
    }

    /// Detaches member `id`: messages to it are lost (a crashed process).
    pub fn detach(&self, id: NodeId) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn route(&self, to: NodeId, incoming: Incoming) -> Result<(), TransportError> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let tx = routes
            .get(&to)
            .ok_or_else(|| TransportError::Unreachable(to, "detached".into()))?;
        tx.send(incoming)
            .map_err(|_| TransportError::Unreachable(to, "closed".into()))
    }
}

struct LocalNet {
    id: NodeId,
    hub: Arc<Hub>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>,
}

#[async_trait]
impl Network for LocalNet {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn send(&self, to: NodeId, payload: Bytes) -> Result<(), TransportError> {
        self.hub.route(
            to,
            Incoming::Message {
                from: self.id,
                payload,
            },
        )
    }

    async fn call(
        &self,
        to: NodeId,
        request: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, TransportError> {
        let (responder, rx) = Responder::new();
        self.hub.route(
            to,
            Incoming::Request {
                from: self.id,
                payload: request,
                responder,
            },
        )?;
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(_)) => Err(TransportError::Dropped(to)),
            Err(_) => Err(TransportError::Timeout(deadline)),
        }
    }

    async fn recv(&self) -> Option<Incoming> {
        self.rx.lock().await.recv().await
    }
}
