//! Epochs: how the group goes on without a member that is down (reformation).
//!
//! Sequence number `k` belongs to member `k mod n`, so while a member is down nobody may
//! issue its turns and the ring stops at its next one. A *reformation* starts a new epoch
//! whose history is agreed by a majority and in which the dead member's turns are passes
//! that nobody sends: every member of the epoch treats Sequence `k >= base` with
//! `k mod n` excluded as an empty Sequence of its own making. Nobody else's turns move, so
//! the rest of the protocol (ownership, reclaim, early Sequences) is unchanged.
//!
//! # Why not simply pass the dead member's turn
//!
//! `stable` says "I hold *some* Sequence for every number below this", not which. If member
//! 0 sent Sequence `t` to member 1 only and died, and member 2 passed `t` for it with members
//! 3 and 4, member 1 would deliver 0's Sequence on the reports of 1, 2 and 3 while member 3
//! delivered the pass on the same reports. Reports must therefore be tied to one agreed
//! history: an *epoch* whose members hold the same Sequences below its base. Every header
//! carries the sender's epoch, and a member counts only reports of its own epoch.
//!
//! # The protocol (Viewstamped Replication's view change, on the rotating sequencer)
//!
//! 1. **Suspect.** A member suspects `d` when the ring has waited at one of `d`'s turns for
//!    [`CoreConfig::reform_after_ms`](super::CoreConfig::reform_after_ms) while something is
//!    pending, or when the runtime says so ([`Core::suspect`](super::Core::suspect): the
//!    liveness connection to `d` closed). A false suspicion is safe, only slow.
//! 2. **Reform.** The lowest member that is neither excluded nor suspected coordinates. It
//!    picks an epoch number above every one it has seen that is its own (`epoch mod n == id`,
//!    so two coordinators never pick the same one) and asks every member to promise it.
//! 3. **Promise.** A member promises an epoch above every one it promised before: it writes
//!    the promise to disk, then answers with its epoch [`Chain`] and its `stable`, and from
//!    then on sends no message of its old epoch that reports progress (only blank headers),
//!    issues nothing until a newer epoch is installed, and does not count its own later
//!    `stable` (persists still landing) towards its deliveries. Deliveries on reports it saw
//!    before stay safe: whatever they deliver was on the disk of a majority, which meets the
//!    promising one.
//! 4. **Decide.** With promises from a majority, the coordinator takes the answers whose
//!    chain ends in the highest epoch, and the base of the new epoch `g` is the largest of
//!    their `stable` and of that epoch's own base. Everything delivered anywhere lies below
//!    `g`: a delivery needs a majority with `stable` above it, and a member of that majority
//!    promised. (Taking the largest epoch's base too matters: a member of that epoch may not
//!    have fetched its history yet, so its `stable` can be lower than history already agreed.)
//!    The coordinator fetches what it lacks below `g` from the promising members of that
//!    lineage, then appends `Cut { epoch, base: g, excluded }` to the chosen chain, writes
//!    it, and sends it to everyone with the history from the lowest promised `stable` up to
//!    `g` (so that whoever installs the epoch holds it, not only the coordinator). The
//!    excluded set is the chosen lineage's, plus the suspects, minus the readmitted and the
//!    coordinator, as many as leave a majority.
//! 5. **Install.** A member that receives a chain ending in an epoch above its own (and not
//!    below one it promised) drops every Sequence it holds at or above the point where its
//!    chain and the new one part ([`cut_point`]), writes the cut and the chain (a journal
//!    record, so a replay drops what it dropped), and goes on in the new epoch: it fetches
//!    what it lacks below `g` by retransmission (every member of the epoch holds the
//!    same history), and the excluded members' turns from `g` on are passes. Reports of the
//!    old epoch no longer count (peers' `stable` starts again; read probes ask again). An own
//!    Sequence goes out before its write only once the epoch's record is on disk, so a
//!    restart that does not know the epoch never has to reclaim one of its numbers.
//! 6. **Rejoin.** A member that hears of an epoch that excludes it installs it like any
//!    other, catches up, and asks the coordinator to readmit it: a new reformation without
//!    it in the excluded set.
//!
//! A member behind (say, one that restarts) learns the newer chain from the first member it
//! talks to: a message of an older epoch is dropped and answered with the receiver's chain
//! (once the receiver's own epoch is on its disk). A member that promised sends a blank
//! progress message now and then, so that it hears of the epoch too if the announcement was
//! lost. A coordinator that gets no majority, or cannot fetch the history it chose, gives up
//! after a while and a later one tries a higher epoch; a member whose promised epoch never
//! comes suspects its coordinator.

use serde::{Deserialize, Serialize};

use super::message::{MemberId, NUMBER_MAX};

/// One reformation: from Sequence `base` on, the history is that of `epoch`, and the turns
/// of the `excluded` members are passes nobody sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// The epoch this reformation started.
    pub epoch: u64,
    /// Sequences below this are the agreed history of the epochs before.
    pub base: u64,
    /// Members whose turns at or above `base` are passes (down, or not yet readmitted).
    pub excluded: Vec<MemberId>,
}

/// The reformations a member's history went through, oldest first. Empty: the group's
/// first epoch ([`CoreConfig::epoch`](super::CoreConfig::epoch)), nobody excluded.
pub type Chain = Vec<Cut>;

/// What a member stores about epochs: the highest epoch it promised and the chain of the
/// epoch it is in. Written with every [`Record::Epoch`](super::Record::Epoch) (and kept by
/// the runtime under its own key, since journal compaction may drop the record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochState {
    /// The highest epoch this member promised (never answers a lower one again).
    pub promised: u64,
    /// The chain of the epoch it is in.
    pub chain: Chain,
}

impl EpochState {
    /// The state a member takes with a peer's rebuild image whose epoch state is `donor`:
    /// the donor's chain, and the larger of the two promises (what this member promised
    /// stays promised). `Err` (the epochs) if the donor is in an older epoch than this
    /// member: its history may hold what a later cut voided. `first` is the group's first
    /// epoch.
    pub fn adopt(&self, donor: &EpochState, first: u64) -> Result<EpochState, (u64, u64)> {
        let (theirs, ours) = (epoch_of(&donor.chain, first), epoch_of(&self.chain, first));
        if theirs < ours {
            return Err((theirs, ours));
        }
        Ok(EpochState {
            promised: donor.promised.max(self.promised),
            chain: donor.chain.clone(),
        })
    }
}

/// The epoch a chain ends in (`first` if it is empty).
pub fn epoch_of(chain: &[Cut], first: u64) -> u64 {
    chain.last().map_or(first, |c| c.epoch)
}

/// Members excluded in the epoch a chain ends in.
pub fn excluded_of(chain: &[Cut]) -> &[MemberId] {
    chain.last().map_or(&[], |c| c.excluded.as_slice())
}

/// Where a member whose history follows `own` must cut it to follow `new`: the smallest
/// base among the cuts after the last one the two chains share. Sequences below it are the
/// same in both lineages (within an epoch, each number has one Sequence); from it on, the
/// member's may differ. [`NUMBER_MAX`] if the chains are equal.
pub fn cut_point(own: &[Cut], new: &[Cut]) -> u64 {
    let shared = own.iter().zip(new).take_while(|(a, b)| a == b).count();
    own[shared..]
        .iter()
        .chain(&new[shared..])
        .map(|c| c.base)
        .min()
        .unwrap_or(NUMBER_MAX)
}

/// Why a chain received from a peer cannot be a group of `members`' history, if it cannot:
/// epochs not increasing (or not above `first`), bases decreasing or out of range, excluded
/// members out of range, repeated, or so many that the rest is no majority.
pub fn chain_invalid(chain: &[Cut], members: u64, first: u64) -> Option<String> {
    let mut epoch = first;
    let mut base = 0;
    let keep = members / 2 + 1;
    for c in chain {
        if c.epoch <= epoch || c.epoch >= NUMBER_MAX {
            return Some(format!("epoch {} does not follow {epoch}", c.epoch));
        }
        if c.base < base || c.base >= NUMBER_MAX {
            return Some(format!("base {} does not follow {base}", c.base));
        }
        let mut ex = c.excluded.clone();
        ex.sort_unstable();
        ex.dedup();
        if ex.len() != c.excluded.len()
            || ex.iter().any(|m| *m >= members)
            || members - (ex.len() as u64) < keep
        {
            return Some(format!("epoch {} excludes {:?}", c.epoch, c.excluded));
        }
        epoch = c.epoch;
        base = c.base;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(epoch: u64, base: u64) -> Cut {
        Cut {
            epoch,
            base,
            excluded: vec![1],
        }
    }

    #[test]
    fn cut_point_is_where_lineages_part() {
        assert_eq!(cut_point(&[], &[]), NUMBER_MAX);
        assert_eq!(cut_point(&[cut(5, 10)], &[cut(5, 10)]), NUMBER_MAX);
        // A newer epoch on the same lineage: cut at its base.
        assert_eq!(cut_point(&[cut(5, 10)], &[cut(5, 10), cut(7, 20)]), 20);
        assert_eq!(cut_point(&[], &[cut(5, 10), cut(7, 20)]), 10);
        // Lineages that part: the lower of the two bases after the shared prefix.
        assert_eq!(
            cut_point(&[cut(5, 10), cut(6, 15)], &[cut(5, 10), cut(7, 20)]),
            15
        );
        assert_eq!(cut_point(&[cut(6, 30)], &[cut(7, 20)]), 20);
    }

    #[test]
    fn chains_that_no_group_writes_are_refused() {
        assert!(chain_invalid(&[cut(1, 0), cut(2, 5)], 5, 0).is_none());
        assert!(chain_invalid(&[cut(2, 0), cut(2, 5)], 5, 0).is_some());
        assert!(chain_invalid(&[cut(1, 9), cut(2, 5)], 5, 0).is_some());
        assert!(chain_invalid(&[cut(0, 9)], 5, 0).is_some());
        let many = Cut {
            epoch: 1,
            base: 0,
            excluded: vec![0, 1, 2],
        };
        assert!(chain_invalid(&[many], 5, 0).is_some());
        let outside = Cut {
            epoch: 1,
            base: 0,
            excluded: vec![7],
        };
        assert!(chain_invalid(&[outside], 5, 0).is_some());
    }
}
