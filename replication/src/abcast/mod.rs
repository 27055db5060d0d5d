//! Rotating-sequencer atomic broadcast: the customer database's replicated log.
//!
//! # The protocol
//!
//! A group has `n` members with ids `0..n`. Every message carries a [`Header`] with the epoch
//! (view number) and the sender's progress metadata.
//!
//! * **Requests.** A member that receives client proposals batches them into one Request with
//!   id `<sender id, local seq>` (local seqs count `0, 1, 2, ...` per member) and broadcasts
//!   it. Up to [`CoreConfig::requests_in_flight_max`] of a member's Requests may be waiting
//!   for a global number at once; more proposals wait in its outbox (bounded; backpressure).
//! * **Sequences.** Global sequence number `k` is owned by member `k mod n`. The owner issues
//!   Sequence `k` once (1) it holds every Sequence below `k` and every Request they name, and
//!   (2) the Requests it assigns respect per-sender FIFO: a Request is eligible only if every
//!   Request from the same sender with a lower local seq already has a global number (or is
//!   earlier in the same Sequence). One Sequence assigns one number to a *batch* of Requests
//!   (in the listed order), so a single ring hop orders everything that is pending. Because an
//!   owner needs only the Sequences below `k` (not their delivery), many numbers are in flight
//!   at once, up to [`CoreConfig::sequence_window`] beyond what the owner has delivered.
//! * **Passing.** An owner with nothing eligible, while some Request is known to be waiting
//!   (received unsequenced, or announced by its sender's `issued` metadata), passes its turn at
//!   once with an empty Sequence, so an idle member never stalls the ring. When nothing is
//!   pending anywhere nobody passes: an idle group sends only heartbeats. A member passes
//!   again without intervening progress only after [`CoreConfig::pass_retry_ms`] (no busy
//!   spin while, say, a Request is being retransmitted).
//! * **Durability before report.** Every member persists each Sequence it receives or issues,
//!   and every Request such a Sequence names, (one fsync per batch of work: group commit)
//!   *before* it reports them in its metadata (`stable`). A Request waits in memory until the first persist that claims
//!   a Sequence naming it, and is written together with that Sequence: a Request that is never
//!   sequenced needs no disk, and a member does one write per Sequence batch instead of one
//!   for the Requests and one for the Sequence. (A sequenced Request is always on the disk of
//!   its sequencer, which writes it with its Sequence.)
//! * **Requests go out before any fsync (seq lease).** A member's own Request is broadcast
//!   at once; what makes a write durable is that a majority has it on disk, and the origin's
//!   copy is not needed for that. What the origin's disk used to guard is the id: a restarted
//!   member must never reuse a seq it may have sent. So each member stores a *lease*, a seq
//!   bound it may use, granted ahead in steps of half the receive window (written every few
//!   hundred Requests, in a write that happens anyway). A restarted member starts at its lease
//!   with an empty *restart Request* that names the seqs it recovered
//!   (`RequestMsg::restart`). Its Requests between those and the lease may exist at some
//!   peers or nowhere: a sequencer assigns the restart Request once every recovered Request
//!   has a number, voiding whatever of the gap has none (never acknowledged: not delivered
//!   anywhere). Every member sees the same Sequence, so all void the same ones. Its proposal
//!   numbers skip every number the gap could hold.
//! * **A first start is told from a restart.** A new member's first write carries a lease,
//!   and nothing of it (no Request, no Sequence) goes out before that write is on disk: a
//!   member that sent anything always restarts with something on disk, so it recovers (restart
//!   Request, reclaim) instead of starting fresh and reusing ids. At every start a member
//!   issues nothing (no Request, not even its restart Request, no Sequence) until every peer
//!   has answered its history query (`HistoryQuery`: what do you know of my Requests and
//!   Sequences?). A member that started with nothing on disk and hears of any (or a header
//!   says that Sequence `id`, its first turn, exists) lost its data directory. A restarted
//!   member that hears of an own Request at or above its stored lease, or of an own Sequence
//!   beyond the one it reclaims, restarted from an *older copy* of its disk (a backup, a VM
//!   snapshot, a storage layer that dropped acknowledged writes): no incarnation that wrote
//!   this disk can have issued them, and reusing those ids and numbers would hand peers two
//!   different Requests, or two Sequences, under one name. Either way its disk lacks history
//!   ([`Core::disk_lost`]) and it is rebuilt (below). The wait costs a restart one round
//!   trip and no availability (its reclaim already waits for every peer).
//! * **A member whose disk was lost is rebuilt from a peer.** From the answers
//!   ([`Core::rebuild_plan`]): a seq lease above every Request id its peers know it used, plus
//!   the receive window and twice its in-flight bound (what an earlier incarnation can have
//!   issued that nobody saw: its unsequenced Requests are bounded by the in-flight limit, and
//!   at most one own Sequence, its last, can be held by nobody), and a *sequence floor* above
//!   every own Sequence number its peers hold or know exists. The runtime copies a donor's
//!   store (its snapshot and journal, read journal first so that it reaches back to the
//!   snapshot's base, fetched in 1 MiB chunks over the peer RPC), writes it with the lease and
//!   the floor in one synced write, and starts the member again from it: an ordinary restart
//!   (restart Request at the lease, catch-up by retransmission), except that own numbers below
//!   the floor are never issued afresh (they exist at some peer: the member waits for a copy)
//!   and the number it reclaims from every peer is its first own number at or above the
//!   floor. New members of a new group answer each other "nothing" and start as before.
//! * **One own Sequence may go out before its fsync (reclaim).** A sequencer sends its
//!   Sequence at once and writes it in parallel, as long as the own Sequence it issued before
//!   this one is on disk (its `stable` is past it, so no other own Sequence is unwritten:
//!   this also holds for a runtime that lets later drains run while earlier writes are
//!   still in flight, which the simulator does) and the own Requests it names are under
//!   the lease; the message also carries
//!   every Request the Sequence names that the sequencer holds, so whoever holds the Sequence
//!   holds its Requests. The hazard is a restarted owner issuing a *different* Sequence for a
//!   number its crashed incarnation sent. Since own Sequences are written in order with at
//!   most one unwritten, that number can only be its first own number above everything it
//!   wrote. A restarted member asks **every** peer about it (`Reclaim`) before it sequences
//!   anything: a peer that holds it hands it over (the owner adopts it and sends it again
//!   marked `reissued`); a peer that does not promises to refuse any unmarked copy that still
//!   arrives (a packet the dead process sent). Only when every peer said no does the owner
//!   issue that number afresh, marked `reissued`, even before it has caught up. A member that
//!   is down cannot answer, so this needs every member in the group; when some member is
//!   excluded (and may be alive, holding that Sequence), the restarted member asks for a new
//!   epoch instead (see the failure model). (A peer that restarts loses its promise but also
//!   the connections the old packets travelled on.)
//!   Headers never announce an own Sequence before it is on disk (`known` advances on the
//!   persist acknowledgement).
//! * **Delivery rule.** A member delivers `k` once it has delivered everything below `k`, holds
//!   Sequence `k` and its Requests, and knows that a majority of members have Sequences `0..=k`
//!   and every Request they name *on disk*: the `(n/2+1)`-th largest `stable` value it has
//!   seen (its own included) exceeds `k`. Within `k`, Requests are delivered in the listed
//!   order and each Request's payloads in order. Every member thus delivers the same sequence
//!   (total order, agreement); a per-sender delivered prefix makes delivery at most once
//!   (integrity) and FIFO even if a faulty Sequence named a Request twice.
//! * **A member that is down is excluded (reformation, [`epoch`]).** Its turns cannot be
//!   taken by anyone else without a new *epoch*: when the ring has waited at a member's turn
//!   for [`CoreConfig::reform_after_ms`] (300 ms in the runtime) while something is pending,
//!   or at once when the runtime sees its process die ([`Core::suspect`]: the liveness
//!   connection closed), the lowest member still in the group collects promises from a
//!   majority, fixes the history they hold (Viewstamped Replication's view change: the
//!   newest lineage, up to the largest `stable` among its promises), and announces an epoch
//!   from whose base the excluded member's turns are passes nobody sends. Every header
//!   carries its sender's epoch and only reports of one's own epoch count, so no report about
//!   an old history can complete a delivery in the new one. A member that comes back learns
//!   the epoch from the first peer it talks to, catches up, and asks to be readmitted (another
//!   reformation). Up to `n - (n/2+1)` members may be excluded at once (two of five).
//! * **Progress news.** When a member's `stable` advances it tells the proposers of the newly
//!   stable Requests at once (they wait to deliver and answer their clients); the others hear
//!   it with its next broadcast, or from a Progress broadcast after
//!   [`CoreConfig::progress_spread_ms`]. A read barrier does not depend on it: probe answers
//!   carry the answerers' `stable`.
//! * **Retransmission (negative acknowledgement).** A member that learns that something exists
//!   which it lacks — a Sequence below `known`, a Request named by a held Sequence, a Request
//!   below a sender's `issued` — asks for it with a Retransmit message after
//!   [`CoreConfig::retransmit_after_ms`], first from its original sender (`k mod n` for a
//!   Sequence), then from the other members in turn. Any member answers from what it holds.
//! * **Garbage collection.** What every member of the epoch reports delivered (and on disk)
//!   is dropped from memory, and what every excluded member reports too, unless one lags by
//!   more than [`CoreConfig::retain_for_excluded`] numbers (4,096 by default) or the
//!   Requests held exceed [`CoreConfig::retain_for_excluded_bytes`] (64 MiB: numbers alone
//!   would hold however much the Sequences name): that one is collected past, nothing more
//!   is kept for it, and when it is back and asks for what it missed it is told so
//!   ([`Body::Collected`]) and rebuilt from a peer's image like a member whose disk was lost
//!   ([`Core::behind`]). On disk, the runtime snapshots the applied state every
//!   [`AbcastConfig::snapshot_every`] payloads (more as the state grows:
//!   [`AbcastConfig::snapshot_bytes_per_payload`]) and compacts its journal up to the first record
//!   that is not both below its snapshot and delivered by every member (so a lagging member
//!   can still be served by retransmission). The snapshot is serialized and written off the
//!   member's loop, which keeps taking its turns meanwhile (only applying waits), so a
//!   member's snapshot never stalls the ring (see `runtime`).
//! * **Limits.** Payloads per Request, bytes per Request, own Requests in flight, Requests per
//!   Sequence, sequence numbers in flight, buffered Sequences and Requests per sender, outbox
//!   length (backpressure), open read probes, items per retransmit, and bytes per Data message
//!   (larger batches are split) are all bounded ([`CoreConfig`]).
//!
//! # The metadata ([`Header`])
//!
//! | field | meaning |
//! |---|---|
//! | `epoch` | the sender's epoch ([`epoch`]); a message of another epoch is dropped, one of an older epoch answered with the receiver's chain |
//! | `stable` | the sender has Sequences `0..stable` and every Request they name on disk: drives delivery and read barriers |
//! | `delivered` | the sender has delivered `0..delivered` (capped at `stable`): garbage when everyone reports it |
//! | `known` | the sender knows Sequences `0..known` exist: drives retransmission and catch-up |
//! | `issued` | the sender issued its Requests `0..issued`: drives retransmission and turn passing |
//!
//! Wire bodies ([`Body`]): `Data { requests, sequences }` (originals and retransmissions),
//! `Retransmit { sequences, requests }`, `Progress` (heartbeat; also sent at once to the
//! proposers of newly stable Requests, so delivery never waits for a heartbeat), `Reclaim {
//! number, nonce }` and `ReclaimReply { number, nonce, sequence }` (a restart, see above; the
//! nonce is the asking incarnation's, so an answer made for an earlier one does not count), `ReadProbe { probe }` and
//! `ReadProbeReply { probe }`, `HistoryQuery` and `HistoryReply { issued, request_max,
//! sequence_max }` (a member started with nothing on disk, see above). Besides these one-way
//! messages, members answer one request: a rebuilt member's fetch of a donor's image
//! (`runtime`).
//!
//! # Reads
//!
//! A linearizable read runs a barrier: the member asks peers for their progress
//! (`ReadProbe`): enough of them to make a majority with itself plus
//! [`CoreConfig::read_probe_spare`] (one), in turn among those it heard from lately (every
//! peer if too few were heard from; every unanswered peer again after
//! [`CoreConfig::retransmit_after_ms`]): three of four peers in a group of five, so the
//! barrier waits for the faster two answers rather than for both of two peers asked. Once a majority (itself included) has answered, the target is the largest
//! `stable` among the answers; the member waits until it has delivered up to the target, then
//! reads its local state. Why it is enough: a write acknowledged before the read began was
//! delivered at its proposer, so a majority had it on disk (`stable > k`); that majority meets
//! the answering majority, and `stable` only grows, so some answer has `stable > k` — provided
//! every answer was made after the read began: probe ids carry a random per-incarnation nonce
//! ([`Core::with_incarnation_nonce`]), so an answer to an earlier incarnation's probe (after a
//! restart, or a rebuild over the same connections) never completes a new one. (Taking
//! `stable` rather than `known` spares the read from waiting for Sequences that are still in
//! flight and that no acknowledged write can depend on.) Reads arriving together share one
//! probe.
//! Stale reads read the local state directly.
//!
//! # Failure model (honest)
//!
//! * Messages may be lost, duplicated, delayed and reordered: retransmission recovers them and
//!   every handler is idempotent.
//! * A member may crash and restart from its disk: it restores its latest state snapshot,
//!   recovers the Requests and Sequences of its journal, replays delivery from the snapshot on,
//!   catches up from its peers by retransmission, and stays [`Role::Recovering`](crate::Role) (not sequencing)
//!   until it has heard from a majority and delivered everything they knew of; then it rejoins
//!   the ring. Its Requests that were sent but not yet on its disk when it crashed are
//!   delivered if a peer holds them in time, or voided by its restart Request; either way they
//!   were never acknowledged, so their proposers saw an error and retry.
//! * **A member that is down is excluded; the group goes on.** The ring waits at the dead
//!   member's next turn until the others have reformed without it: at once when its process
//!   is seen to die (a few round trips and fsyncs), after
//!   [`CoreConfig::reform_after_ms`] when a whole host vanishes. Then its turns are passes
//!   and nothing waits for it. With up to two of five excluded the other three go on; a
//!   third failure leaves no majority: delivery stops, it never diverges (delivery needs a
//!   majority on disk, and a reformation needs a majority's promises). A false suspicion
//!   (a member cut off but alive) costs two reformations and nothing else: the cut-off
//!   member delivers nothing new meanwhile, then drops what it held beyond the new epoch's
//!   base and rejoins. While a member is excluded the others keep at most
//!   [`CoreConfig::retain_for_excluded`] numbers and
//!   [`CoreConfig::retain_for_excluded_bytes`] of history it has not delivered (a member
//!   restarted within that catches up by retransmission); beyond, they collect and compact
//!   past it, and back, it is rebuilt from a peer's snapshot and journal, catches up and is
//!   readmitted. So a member down for good costs its peers bounded memory and disk. It asks
//!   to be readmitted only once it is within two Sequence windows of what its peers know, and
//!   the coordinator refuses one that lags behind its collection (it would stall the ring at
//!   its turns).
//! * A restarted member whose epoch excludes someone does not reclaim its one possibly
//!   unwritten own Sequence (the excluded member, perhaps alive, cannot be asked): it asks
//!   for a new epoch instead, whose cut settles that number for everyone, and sequences
//!   nothing until it is installed.
//! * A member started again under its id with an emptied data directory (a replaced disk or
//!   host), or with an older copy of it that lacks Request ids or own Sequences a later
//!   incarnation used, is rebuilt from a peer (above) and rejoins; meanwhile the others
//!   exclude it, as any member that is down. An older copy that lacks only other members'
//!   records (the later incarnation issued nothing new) is safe to run: the member catches up
//!   by retransmission. Not covered: the `stable` reports such a member, or one whose disk
//!   silently lost part of what it had fsync'd, made before the loss counted towards
//!   majorities it no longer backs (a second such loss could then lose a delivered write);
//!   and a member losing its disk in the same moment as peers crash between sending a
//!   Sequence and writing it (the rebuilt member may then wait for good for an own Sequence
//!   that nobody kept: the ring stops rather than diverging). A
//!   damaged store that can be told damaged is refused at open ([`AbcastLog::open`] checks
//!   that the snapshot's base fits the group and that every journal record names members of
//!   it); a torn last write is dropped by raft-engine, as after any crash.
//!
//! # Layers
//!
//! * [`message`]: wire messages and durable records.
//! * [`core`]: the sans-IO protocol core ([`Core`]): messages, ticks and proposals in;
//!   [`Action`]s (persist, send, deliver, read ready) out. Deterministic and trivially
//!   simulated.
//! * [`runtime`]: [`AbcastLog`], the [`ReplicatedLog`](crate::ReplicatedLog) over a
//!   [`transport::Network`] and raft-engine: one task on the network's runtime drives the
//!   core, writes each batch of
//!   records with one fsync, applies deliveries through [`Deduped`](crate::dedup::Deduped)
//!   and answers proposers and readers.
//!
//! # Tests
//!
//! * `tests/abcast_sim.rs`: the core in a deterministic simulator (five members, virtual time,
//!   seeded loss, duplication, delay, reordering, partitions, crashes with and without
//!   snapshots, crashes in the middle of a persist whose Requests were already sent); odd
//!   seeds write with a delay of a few ms, during which the member goes on receiving,
//!   sequencing and draining (later persists queue behind, merged; what waits for a write,
//!   deliveries included, happens after it, in order). Every run asserts validity, uniform
//!   agreement, integrity, total order, per-sender FIFO, read-barrier freshness and that
//!   no own Sequence goes out while an earlier one is unwritten; one test pins a lone
//!   proposer's write at three message delays at most (two when it owns the next turn).
//!   `ABCAST_SEEDS=n` runs seeds `0..n`,
//!   `ABCAST_SEED=s` one seed; a failure names its seed.
//! * `tests/abcast_conformance.rs`: the replicated-log conformance suite on five
//!   [`AbcastLog`]s with raft-engine in tempdirs, and client histories through stateright's
//!   linearizability tester.
//! * `tests/abcast_lossy.rs`: the same over `transport::sim` with lossy, duplicating,
//!   reordering links.
//! * `tests/abcast_restart.rs`: a member killed mid-load, excluded, restarted and readmitted
//!   (caught up by retransmission; and, with peers that keep only 16 numbers for it, rebuilt
//!   from a peer's image); a whole group restarted from snapshots and compacted journals.
//! * `tests/abcast_disk.rs`: a member's snapshot, journal and lease damaged on disk (bytes
//!   that do not decode, records that decode but name members or numbers no member of the
//!   group could have written): the open is refused with a storage error, and nothing is
//!   rewritten. A member reopened on an emptied directory is rebuilt from a peer's image and
//!   serves again (a restart after that is an ordinary one); image requests that do not
//!   decode or come from outside the group are refused.
//! * `tests/abcast_sim.rs` also excludes members that die (a member for good, then back and
//!   readmitted; two at once, then a third: delivery stops; one reported dead by the
//!   runtime, excluded without the timeout; the coordinator killed mid-reformation; a
//!   member cut off but alive; an owner dead after sending its Sequence to one peer only; a
//!   member away, dead or cut off, for longer than its peers keep history for it: their
//!   memory stays bounded, and back, it is rebuilt from an image and readmitted),
//!   and every other case runs with reformations on (a crash or a partition longer than
//!   `reform_after_ms` reforms), with the same invariants; with `reform_after_ms` 0 the ring
//!   waits for a dead member, as the seed's protocol does.
//! * `tests/abcast_sim.rs` also rebuilds a member whose disk was lost (after a quiet spell,
//!   mid-load with loss and snapshots, and before its first turn, when only its Requests give
//!   it away), with every invariant asserted.
//!
//! # Not done yet
//!
//! State transfer is a whole image of a peer's store (snapshot and journal), not an incremental
//! catch-up: a member excluded for longer than its peers keep history for it
//! ([`CoreConfig::retain_for_excluded`]) fetches the whole state even if it missed little more than that. A member of the epoch
//! that falls behind without being excluded is still waited for (the ring stops at its turns
//! anyway until it is excluded).

pub mod core;
pub mod epoch;
pub mod message;
pub mod runtime;

pub use self::core::{
    Action, Core, CoreConfig, CoreStats, Delivery, PersistAck, ProposeError, RebuildPlan,
    SnapshotBase,
};
pub use self::epoch::{Chain, Cut, EpochState};
pub use self::message::{
    Body, Header, MemberId, Message, Record, RequestKey, RequestMsg, SequenceMsg,
};
pub use self::runtime::{AbcastConfig, AbcastLog, AbcastStats};
